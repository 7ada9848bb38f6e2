#!/usr/bin/env bash
# The mutation pass: cargo-mutants (pinned, installed here) over the decision rules, the outbox
# and the CRM mapping, each with the tests that cover it. Not part of CI: on 2 cores the three
# take hours (about 600 mutants, each a rebuild). Reports go to target/mutants/<name>/mutants.out/; the
# survivors and what was done about them are in bench/MUTANTS.md.
#
# Usage: scripts/mutants.sh [mapping|outbox|rules]...   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

version=27.1.0
if ! cargo mutants --version 2>/dev/null | grep -q "$version"; then
  cargo install cargo-mutants --version "$version" --locked
fi

run() {
  local name="$1" files="$2"
  shift 2
  # Each mutant runs the unit tests and the integration modules named after `--` (the real
  # client libraries are not needed for these).
  # Exit 2 (mutants missed) and 3 (timeouts) are findings, not failures of the run.
  local status=0
  mkdir -p "target/mutants/$name"
  cargo mutants --no-shuffle -f "$files" -o "target/mutants/$name" \
    -- --lib --test tests -- "$@" || status=$?
  case "$status" in
    0 | 2 | 3) ;;
    *) echo "scripts/mutants.sh: cargo mutants failed on $name (exit $status)" >&2; exit "$status" ;;
  esac
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(mapping outbox rules)
for target in "${targets[@]}"; do
  case "$target" in
    mapping) run mapping 'src/crm/mapping.rs' crm:: delivery:: dataverse_strict:: directory_source:: ;;
    outbox) run outbox 'src/outbox/*.rs' outbox:: delivery:: signals:: admin:: ;;
    rules) run rules 'src/rules/**/*.rs' rules:: rules_pipeline:: directory_source:: ;;
    *) echo "scripts/mutants.sh: unknown target $target (mapping, outbox or rules)" >&2; exit 2 ;;
  esac
done
