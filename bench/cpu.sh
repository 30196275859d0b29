#!/usr/bin/env bash
# Idle CPU of one agent alone, profile by profile, on a quiet machine: the
# memory backend (no API calls to count) and 2 loopback targets, so what is
# measured is the probing itself. CPU from schedstat (ns, all threads) and
# voluntary context switches per second (each one a wake-up of the runtime).
#   bench/cpu.sh [SECONDS]      (default 60 per profile; as root)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER=${1:-60}
BIN=target/release/route-failover
[[ -x $BIN ]] || cargo build --release --quiet --bins
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# name | [probe] keys beyond the 2 targets
profiles=(
    "default (round rule, count 3)|"
    "round rule, count 3, no early stop|early_stop = false"
    "round rule, count 1|count = 1"
    "silence detector, count 3|detector = \"silence\""
    "silence detector, count 1|detector = \"silence\"
count = 1"
)

. bench/idle_cpu.sh

echo "[" > "$work/out.json"
first=1
for p in "${profiles[@]}"; do
    name=${p%%|*}
    keys=${p#*|}
    agent_config "$work/config.toml" '"127.0.0.1", "127.0.0.2"' "$keys"
    read -r cpu cs < <(measure_agent "$BIN" "$work/config.toml" "$work" "$SECONDS_PER")
    printf '  %-32s CPU %s%% of a core, %s wake-ups/s over %s s\n' "$name" "$cpu" "$cs" "$SECONDS_PER"
    ((first)) || echo "," >> "$work/out.json"
    first=0
    printf '  {"profile": "%s", "cpu_percent_of_a_core": %s, "wakeups_per_second": %s, "seconds": %s}' \
        "$name" "$cpu" "$cs" "$SECONDS_PER" >> "$work/out.json"
done
printf '\n]\n' >> "$work/out.json"
mkdir -p bench/results
cp "$work/out.json" bench/results/cpu.json
