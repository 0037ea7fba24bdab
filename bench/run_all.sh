#!/usr/bin/env bash
# Runs every benchmark at the size issue 6 asks for, one after another (never two at once: they
# would measure each other), and keeps each one's output in bench/results/. Extra arguments go to
# every script, e.g. --db sqlite. The machine probe goes first, while the machine is idle.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
declare -A FULL_SIZE=(
  [e2e_latency]="--samples 200 --pairs 100"
  [throughput]="--backlog 5000"
  [log_scale]="--rows 1000000"
  [memory]="--events 50000 --checkpoint 10000"
)
status=0
for script in machine ingest e2e_latency throughput duplicate_storm log_scale memory drain_latency; do
  echo "=== $script ${FULL_SIZE[$script]:-}" >&2
  # shellcheck disable=SC2086  # the sizes are several words on purpose
  .venv/bin/python "bench/$script.py" ${FULL_SIZE[$script]:-} "$@" | tee "bench/results/$script.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
done
exit $status
