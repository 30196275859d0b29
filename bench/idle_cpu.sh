# Sourced by bench/cpu.sh and bench/cpu_ns.sh: one agent's idle CPU and
# wake-ups, measured the same way for both.

# measure_agent BINARY CONFIG WORKDIR SECONDS: runs the agent, lets it get
# past startup, and prints "CPU WAKEUPS": CPU from schedstat (ns, every
# thread) as % of one core, wake-ups as voluntary context switches a second.
measure_agent() {
    local bin=$1 config=$2 work=$3 s=$4 pid ns0 cs0 ns1 cs1
    RUNTIME_DIRECTORY=$work STATE_DIRECTORY=$work RUST_LOG=info "$bin" run --config "$config" > "$work/agent.log" 2>&1 &
    pid=$!
    sleep 5 # past startup
    ns0=$(on_cpu_ns $pid); cs0=$(switches $pid)
    sleep "$s"
    ns1=$(on_cpu_ns $pid); cs1=$(switches $pid)
    kill $pid; wait $pid 2>/dev/null || true
    python3 -c "print(f'{($ns1 - $ns0) / 1e9 / $s * 100:.3f} {($cs1 - $cs0) / $s:.1f}')"
}

# agent_config FILE TARGETS [PROBE_KEYS]: the agent's config for these
# runs: the memory backend (no API calls to count), TARGETS (a TOML list's
# inside) and any extra [probe] keys.
agent_config() {
    cat > "$1" <<TOML
[aws]
backend = "memory"
[probe]
targets = [$2]
${3:-}
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
TOML
}

on_cpu_ns() { local t=0 f; for f in /proc/"$1"/task/*/schedstat; do t=$((t + $(cut -d' ' -f1 "$f"))); done; echo "$t"; }
switches() { grep -h "^voluntary_ctxt_switches" /proc/"$1"/task/*/status | awk '{s += $2} END {print s}'; }
