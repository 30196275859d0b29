#!/usr/bin/env bash
# Idle CPU of one agent (default profile) against 2 targets (IPv4, IPv6) in
# a namespace this script creates, answered by bench/echo_delay.py after
# 2±0.5 ms, as a DX target answers: unlike loopback, each reply arrives
# after the send has returned. Same measures as bench/cpu.sh, with early
# stop (the default) and without (every echo of every round), alternating.
#   bench/cpu_ns.sh [SECONDS] [BINARY...]   (default 60, target/release/route-failover; as root)
# Several binaries (say, a build of an older commit) are measured in turn
# against the same responder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
S=${1:-60}
shift || true
bins=("$@")
((${#bins[@]})) || bins=(target/release/route-failover)
ns=rf-cpu-215
cleanup() {
    [[ -n ${rpid:-} ]] && kill "$rpid" 2>/dev/null || true
    ip netns del $ns 2>/dev/null || true
    ip route del unreachable 198.18.215.0/24 metric 4000 2>/dev/null || true
    ip -6 route del unreachable fd00:ee:215::/64 metric 4000 2>/dev/null || true
    rm -rf "${work:-/nonexistent}"
}
trap cleanup EXIT
cleanup
# Nothing leaves the machine: unreachable routes under the veth's own.
ip route add unreachable 198.18.215.0/24 metric 4000
ip -6 route add unreachable fd00:ee:215::/64 metric 4000
ip netns add $ns
ip link add rfh215 type veth peer name rft215
ip link set rft215 netns $ns
ip addr add 198.18.215.1/24 dev rfh215
ip -6 addr add fd00:ee:215::1/64 dev rfh215 nodad
ip link set rfh215 up
ip netns exec $ns ip addr add 198.18.215.2/24 dev rft215
ip netns exec $ns ip -6 addr add fd00:ee:215::2/64 dev rft215 nodad
ip netns exec $ns ip link set rft215 up
ip netns exec $ns ip link set lo up
ip netns exec $ns sysctl -qw net.ipv4.icmp_echo_ignore_all=1 net.ipv6.icmp.echo_ignore_all=1
work=$(mktemp -d)
ip netns exec $ns python3 bench/echo_delay.py --mean-ms 2 --sd-ms 0.5 > "$work/echo.log" 2>&1 &
rpid=$!
sleep 1
# The default config (early stop) leaves the key out, so a build from
# before it runs it too; such a build refuses the other one.
. bench/idle_cpu.sh
for stop in true false; do
    key=""
    [[ $stop == false ]] && key="early_stop = false"
    agent_config "$work/config-$stop.toml" '"198.18.215.2", "fd00:ee:215::2"' "$key"
done
for bin in "${bins[@]}"; do
    for stop in true false; do
        read -r cpu cs < <(measure_agent "$bin" "$work/config-$stop.toml" "$work" "$S")
        printf '  %-40s early_stop = %-5s CPU %s%% of a core, %s wake-ups/s over %s s (load %s)\n' \
            "$bin" "$stop" "$cpu" "$cs" "$S" "$(cut -d' ' -f1 /proc/loadavg)"
    done
done
