#!/usr/bin/env bash
# The load harness: trackgate against nginx, side by side (bench/load.rs says what is measured).
# Installs nginx, strace and perf from Debian's packages when missing (the last two for the
# per-request cost phase), raises the open-files limit for the idle connections, builds
# unpinned, then pins the driver (and the simulators) to core 0; the proxies pin themselves to
# core 1.
#
# Usage: bench/harness.sh [--smoke]
#   --smoke   a few seconds, few idle connections, debug build: CI checks it runs and that
#             every response matches (no numbers judged).
# Environment: TRACKGATE_BENCH_SECONDS, TRACKGATE_BENCH_ROUNDS, TRACKGATE_BENCH_IDLE.
set -euo pipefail
cd "$(dirname "$0")/.."
find_nginx() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }
export DEBIAN_FRONTEND=noninteractive
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo -n"; fi
updated=""
apt_update() { [ -n "$updated" ] || { $sudo apt-get update -qq; updated=1; }; }
if [ -z "$(find_nginx)" ]; then
    apt_update
    $sudo apt-get install -y -qq nginx-light >/dev/null || $sudo apt-get install -y -qq nginx >/dev/null
    # A package may start a system nginx on port 80; the harness runs its own.
    $sudo systemctl stop nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true
fi
if ! command -v strace >/dev/null; then apt_update; $sudo apt-get install -y -qq strace >/dev/null; fi
if ! command -v perf >/dev/null; then apt_update; $sudo apt-get install -y -qq linux-perf >/dev/null; fi
TRACKGATE_NGINX="$(find_nginx)"
export TRACKGATE_NGINX
[ -n "$TRACKGATE_NGINX" ] || { echo "nginx is not installed and could not be installed" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "${1:-}" = "--smoke" ]; then
    export TRACKGATE_BENCH_SECONDS="${TRACKGATE_BENCH_SECONDS:-0.5}"
    export TRACKGATE_BENCH_ROUNDS="${TRACKGATE_BENCH_ROUNDS:-1}"
    export TRACKGATE_BENCH_IDLE="${TRACKGATE_BENCH_IDLE:-200}"
    cargo test --locked --bench load --no-run
    exec taskset -c 0 cargo test --locked --bench load -- --nocapture
fi
cargo bench --bench load --no-run
exec taskset -c 0 cargo bench --bench load
