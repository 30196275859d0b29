#!/usr/bin/env bash
# The whole benchmark suite, as root: setup (first run only), LocalStack,
# the simulated false-failover study and its plot, then the live runs
# (latency, footprint, noise, scale) and the idle CPU of one agent alone
# (bench/cpu.sh on loopback, bench/cpu_ns.sh against a target 2 ms away in
# a namespace of its own). Figures go to stdout and bench/results/.
# Extra arguments go to bench/failover.py (e.g. --reps 5, --only latency).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bench/setup.sh
started=0
cleanup() { if ((started)); then scripts/localstack.sh stop || true; fi; }
trap cleanup EXIT
if ! scripts/localstack.sh status >/dev/null 2>&1; then
    scripts/localstack.sh start
    started=1
fi

echo "== machine"
echo "$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(rustc --version)"

echo
echo "== simulated false failovers, next to the oracle"
# The release profile, not `bench`: a second profile would build every dependency again.
# 10 seeded days per cell, 8 per sweep point, 100 per goal cell (FF_* to change).
cargo bench --quiet --profile release --bench false_failover
bench/.venv/bin/python bench/plot.py
# The Markdown tables of BENCHMARKS.md, from the CSVs.
bench/.venv/bin/python bench/tables.py > bench/results/false_failover_tables.md

echo
bench/.venv/bin/python bench/failover.py "$@"

echo
echo "== idle CPU, one agent alone (memory backend, 2 loopback targets)"
bench/cpu.sh

echo
echo "== idle CPU, one agent alone, targets answering after 2 ms (namespace)"
bench/cpu_ns.sh 60 | tee bench/results/cpu_ns.txt
