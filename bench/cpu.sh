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
    "round rule, count 1|count = 1"
    "silence detector, count 3|detector = \"silence\""
    "silence detector, count 1|detector = \"silence\"
count = 1"
)

on_cpu_ns() { local t=0 f; for f in /proc/"$1"/task/*/schedstat; do t=$((t + $(cut -d' ' -f1 "$f"))); done; echo "$t"; }
switches() { grep -h "^voluntary_ctxt_switches" /proc/"$1"/task/*/status | awk '{s += $2} END {print s}'; }

echo "[" > "$work/out.json"
first=1
for p in "${profiles[@]}"; do
    name=${p%%|*}
    keys=${p#*|}
    cat > "$work/config.toml" <<TOML
[aws]
backend = "memory"
[probe]
targets = ["127.0.0.1", "127.0.0.2"]
$keys
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
TOML
    RUNTIME_DIRECTORY=$work STATE_DIRECTORY=$work RUST_LOG=info "$BIN" run --config "$work/config.toml" > "$work/agent.log" 2>&1 &
    pid=$!
    sleep 5 # past startup
    ns0=$(on_cpu_ns $pid); cs0=$(switches $pid)
    sleep "$SECONDS_PER"
    ns1=$(on_cpu_ns $pid); cs1=$(switches $pid)
    kill $pid; wait $pid 2>/dev/null || true
    cpu=$(python3 -c "print(f'{($ns1 - $ns0) / 1e9 / $SECONDS_PER * 100:.3f}')")
    cs=$(python3 -c "print(f'{($cs1 - $cs0) / $SECONDS_PER:.1f}')")
    printf '  %-32s CPU %s%% of a core, %s wake-ups/s over %s s\n' "$name" "$cpu" "$cs" "$SECONDS_PER"
    ((first)) || echo "," >> "$work/out.json"
    first=0
    printf '  {"profile": "%s", "cpu_percent_of_a_core": %s, "wakeups_per_second": %s, "seconds": %s}' \
        "$name" "$cpu" "$cs" "$SECONDS_PER" >> "$work/out.json"
done
printf '\n]\n' >> "$work/out.json"
mkdir -p bench/results
cp "$work/out.json" bench/results/cpu.json
