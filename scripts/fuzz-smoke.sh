#!/usr/bin/env bash
# A bounded fuzzing smoke for the parsers on the request path: the EWS scanner (alone and
# against the reference tree), the Graph reader and $batch. Installs cargo-fuzz (pinned) and
# runs each target for FUZZ_SECONDS (default 20) from its committed corpus; new inputs go to a
# scratch directory, so the repository's corpora do not grow. Any crash or disagreement fails.
#
# cargo-fuzz wants a nightly compiler for its sanitizer flags; without a sanitizer
# (`--sanitizer none`) the stable toolchain builds the targets once RUSTC_BOOTSTRAP allows the
# one unstable flag it passes.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$version"; then
  cargo install cargo-fuzz --version "$version" --locked
fi

seconds="${FUZZ_SECONDS:-20}"
# Instrumented builds get their own target directory (FUZZ_TARGET_DIR), so they never replace
# the suite's artifacts in a shared CARGO_TARGET_DIR.
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$(pwd)/fuzz/target}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cd fuzz
for target in ews_differential ews graph batch; do
  mkdir -p "$scratch/$target"
  if ! RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" --sanitizer none \
    "$scratch/$target" "corpus/$target" -- -max_total_time="$seconds" \
    >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz-smoke: $target failed; the input is in fuzz/artifacts/$target" >&2
    exit 1
  fi
  echo "fuzz-smoke: $target: $(grep -E '^Done' "$scratch/$target.log")"
done
