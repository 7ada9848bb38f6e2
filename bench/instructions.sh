#!/usr/bin/env bash
# User-space instructions per forwarded request, counted by callgrind: trackgate (and a baseline
# binary, side by side in one run) in pass-through mode in front of an nginx that answers every
# request itself, driven by a keep-alive Python client. Instruction counts do not move with the
# host's noise the way CPU time does (two runs of one build differ by about 0.1 %), so a
# change of one or two per cent on the request path shows here when the load harness cannot
# tell it from noise. Counted: every poll of every task (the client connections with hyper's
# server, the request path and the upstream exchange; an upstream connection's own task where
# a build has one; the few housekeeping tasks), not the runtime's scheduler, its I/O driver
# nor the kernel.
#
# Usage: bench/instructions.sh [REQUESTS]   (default 2000)
# Environment: TRACKGATE_BENCH_BASELINE (an older `trackgate` binary, counted the same way);
# TRACKGATE_BENCH_PROFILE (a directory: each run's callgrind file is kept there, to read with
# callgrind_annotate); TRACKGATE_BENCH_INSPECT=1 (inspection on, one worker, no directory: what
# an inspection copy costs the proxy's side, its tasks only — the inspection thread is not
# counted).
# Installs nginx and valgrind from Debian's packages when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-2000}"
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
if [ -z "$(find_nginx)" ] || ! command -v valgrind >/dev/null || ! command -v python3 >/dev/null; then
    $sudo apt-get update -qq
    [ -n "$(find_nginx)" ] || $sudo apt-get install -y -qq nginx-light >/dev/null
    command -v valgrind >/dev/null || $sudo apt-get install -y -qq valgrind >/dev/null
    command -v python3 >/dev/null || $sudo apt-get install -y -qq python3 >/dev/null
fi
nginx_bin="$(find_nginx)"
cargo build --release --locked
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
upstream_port="$(free_port)"
mkdir -p "$work/tmp"
cat > "$work/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $work/nginx-error.log warn;
pid $work/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/tmp;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$upstream_port;
        location / {
            default_type text/xml;
            return 200 '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetItemResponse xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"><m:ResponseMessages><m:GetItemResponseMessage ResponseClass="Success"><m:ResponseCode>NoError</m:ResponseCode></m:GetItemResponseMessage></m:ResponseMessages></m:GetItemResponse></s:Body></s:Envelope>';
        }
    }
}
EOF
"$nginx_bin" -c "$work/nginx.conf" -p "$work" &
# The client: four keep-alive connections in turn, each request's head and body in one write
# (so nginx never answers before the body), every answer checked.
cat > "$work/drive.py" <<'EOF'
import http.client, socket, sys, time
upstream, port, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def wait_listening(port, what):
    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            if time.time() > deadline:
                sys.exit(f"{what} did not start listening within 60 s")
            time.sleep(0.2)
wait_listening(upstream, "nginx")
wait_listening(port, "the gateway")
body = b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><GetItem xmlns="http://schemas.microsoft.com/exchange/services/2006/messages"><ItemShape/><ItemIds/></GetItem></s:Body></s:Envelope>'
head = (b"POST /EWS/Exchange.asmx HTTP/1.1\r\nHost: mail.contoso.example\r\nContent-Type: text/xml; charset=utf-8\r\n"
        b"Connection: keep-alive\r\nContent-Length: %d\r\n\r\n" % len(body))
connections = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(4)]
for c in connections:
    c.connect()
for i in range(n):
    c = connections[i % len(connections)]
    c.sock.sendall(head + body)
    response = http.client.HTTPResponse(c.sock)
    response.begin()
    answer = response.read()
    if response.status != 200 or not answer.startswith(b"<s:Envelope"):
        sys.exit(f"request {i}: {response.status}")
EOF
if [ "${TRACKGATE_BENCH_INSPECT:-0}" = 1 ]; then
    inspect=$'[inspect]\nenabled = true\nworkers = 1'
else
    inspect=$'[inspect]\nenabled = false'
fi
count() {
    local binary="$1" label="$2" port
    port="$(free_port)"
    mkdir -p "$work/$label"
    cat > "$work/$label.toml" <<EOF
[listener]
address = "127.0.0.1:$port"
plaintext = true
[admin]
address = "127.0.0.1:0"
[upstreams]
ews = "http://127.0.0.1:$upstream_port"
[runtime]
worker_threads = 1
[logging]
level = "warn"
[storage]
data_dir = "$work/$label"
$inspect
EOF
    valgrind --tool=callgrind --toggle-collect='tokio::runtime::task::raw::poll*' \
        --callgrind-out-file="$work/$label.out" "$binary" serve --config "$work/$label.toml" \
        >"$work/$label.log" 2>&1 &
    local gateway=$!
    if ! python3 "$work/drive.py" "$upstream_port" "$port" "$requests"; then
        echo "$label: the run failed; its log:" >&2
        cat "$work/$label.log" "$work/nginx-error.log" >&2 || true
        exit 1
    fi
    kill -TERM "$gateway"
    wait "$gateway" || true
    local total
    total="$(callgrind_annotate "$work/$label.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' || true)"
    if [ -z "$total" ]; then
        echo "$label: callgrind wrote no totals; its log:" >&2
        cat "$work/$label.log" >&2 || true
        exit 1
    fi
    echo "$label: $((total / requests)) instructions per request ($total over $requests requests)"
    if [ -n "${TRACKGATE_BENCH_PROFILE:-}" ]; then
        mkdir -p "$TRACKGATE_BENCH_PROFILE"
        cp "$work/$label.out" "$TRACKGATE_BENCH_PROFILE/callgrind.$label.out"
    fi
}
count target/release/trackgate trackgate
if [ -n "${TRACKGATE_BENCH_BASELINE:-}" ]; then
    count "$TRACKGATE_BENCH_BASELINE" baseline
fi
