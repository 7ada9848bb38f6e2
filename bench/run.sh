#!/usr/bin/env bash
# Runs the first-light load measurement with the driver and simulator on core 0 and the gateway
# on core 1 (the bench pins the gateway itself). Usage: bench/run.sh [seconds-per-round]
set -euo pipefail
cd "$(dirname "$0")/.."
export TRACKGATE_BENCH_SECONDS="${1:-5}"
exec taskset -c 0 cargo bench --bench passthrough
