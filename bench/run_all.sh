#!/usr/bin/env bash
# Runs every benchmark one after another (never two at once: they would measure each other) and
# keeps each one's output in bench/results/. Extra arguments go to every script, e.g. --db sqlite.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/results
for script in ingest e2e_latency throughput duplicate_storm log_scale memory; do
  echo "=== $script" >&2
  .venv/bin/python "bench/$script.py" "$@" | tee "bench/results/$script.txt"
done
