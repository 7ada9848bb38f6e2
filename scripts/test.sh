#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need, then runs them.
# Everything the tests use beyond the Rust toolchain and a C compiler (aws-lc-rs builds C) is
# installed here, never by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)
command -v kill >/dev/null 2>&1 || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
  else
    echo "scripts/test.sh: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

cargo test --locked
