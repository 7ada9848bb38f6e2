#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
# Everything the tests use beyond the Rust toolchain and a C compiler (aws-lc-rs builds C) is
# installed here, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v kill >/dev/null 2>&1 || need_apt+=(procps)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3 python3-venv)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
# The options page's browser test (tests/options_page.rs): Debian's Chromium and its driver.
{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || need_apt+=(chromium chromium-driver)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    echo "scripts/test.sh: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

# The real client libraries the suite drives through the gateway (tests/real_clients.rs),
# pinned with every dependency in tests/clients/requirements.txt, in a venv under target/.
tools="${TRACKGATE_TEST_TOOLS:-$PWD/target/test-tools}"
export TRACKGATE_TEST_TOOLS="$tools"
python="${PYTHON:-python3}"
stamp="$tools/py/.requirements"
if ! cmp -s tests/clients/requirements.txt "$stamp" 2>/dev/null; then
  rm -rf "$tools/py"
  "$python" -m venv "$tools/py"
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check \
    -r tests/clients/requirements.txt
  cp tests/clients/requirements.txt "$stamp"
fi

# ews-javascript-api with @ewsjs/xhr, exactly as tests/clients/package-lock.json pins them.
node_dir="$tools/node"
if ! cmp -s tests/clients/package-lock.json "$node_dir/package-lock.json" 2>/dev/null; then
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp tests/clients/package.json tests/clients/package-lock.json "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

cargo test --locked
