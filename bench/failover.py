#!/usr/bin/env python3
"""Failover and failback latency, live noise, footprint and scale of
route-failover against the original loop (bench/baseline-loop.sh).

Everything runs on this machine: LocalStack on 127.0.0.1, probe targets in
network namespaces this script creates (198.19.N.2 and fd00:ef:N::2, with
`unreachable` routes beneath so a cut link never leaks to the default
route), and loopback addresses for the scale run. Needs root.

Prints tables and writes bench/results/*.json. Run through bench/run.sh.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import botocore.session

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("ROUTE_FAILOVER_BIN", os.path.join(ROOT, "target/release/route-failover"))
BASELINE = os.path.join(ROOT, "bench/baseline-loop.sh")
ECHO_DELAY = os.path.join(ROOT, "bench/echo_delay.py")
ENDPOINT = os.environ.get("ROUTE_FAILOVER_LOCALSTACK", "http://127.0.0.1:4566")
RESULTS = os.path.join(ROOT, "bench/results")
POLL = 0.02  # seconds between reads of the route tables
CIDR = "10.1.0.0/16"

ENV = dict(
    os.environ,
    AWS_ACCESS_KEY_ID="test",
    AWS_SECRET_ACCESS_KEY="test",
    AWS_REGION="us-east-1",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_CONFIG_FILE="/dev/null",
    AWS_SHARED_CREDENTIALS_FILE="/dev/null",
    AWS_EC2_METADATA_DISABLED="true",
    AWS_ENDPOINT_URL=ENDPOINT,
    PATH=os.path.join(ROOT, "bench/.venv/bin") + ":" + os.environ["PATH"],
)


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{args}: {r.stderr.strip()}")
    return r


def ec2():
    return botocore.session.get_session().create_client(
        "ec2",
        region_name="us-east-1",
        endpoint_url=ENDPOINT,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


class Net:
    """A probe target in its own namespace (same recipe as tests/common/netns.rs)."""

    def __init__(self, n):
        self.n, self.ns, self.host_if, ns_if = n, f"rf-bench-{n}", f"rfb{n}", f"rfc{n}"
        self.v4, self.v6 = f"198.19.{n}.2", f"fd00:ef:{n}::2"
        self.v4_prefix, self.v6_prefix = f"198.19.{n}.0/24", f"fd00:ef:{n}::/64"
        self.remove()
        sh("ip", "route", "add", "unreachable", self.v4_prefix, "metric", "4000")
        sh("ip", "-6", "route", "add", "unreachable", self.v6_prefix, "metric", "4000")
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", self.ns)
        sh("sysctl", "-qw", f"net.ipv6.conf.{self.host_if}.keep_addr_on_down=1")
        self.exec("sysctl", "-qw", f"net.ipv6.conf.{ns_if}.keep_addr_on_down=1")
        sh("ip", "addr", "add", f"198.19.{n}.1/24", "dev", self.host_if)
        sh("ip", "-6", "addr", "add", f"fd00:ef:{n}::1/64", "dev", self.host_if, "nodad")
        sh("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.v4}/24", "dev", ns_if)
        self.exec("ip", "-6", "addr", "add", f"{self.v6}/64", "dev", ns_if, "nodad")
        self.exec("ip", "link", "set", ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *args):
        return sh("ip", "netns", "exec", self.ns, *args)

    def blackhole(self, on):
        v = int(on)
        self.exec("sysctl", "-qw", f"net.ipv4.icmp_echo_ignore_all={v}", f"net.ipv6.icmp.echo_ignore_all={v}")

    def random_loss(self, percent):
        """Drops `percent` % of ICMP arriving in the namespace at random."""
        sh("ip", "netns", "exec", self.ns, "nft", "delete", "table", "inet", "rfloss", check=False)
        if percent is not None:
            rules = (
                "table inet rfloss { chain input { type filter hook input priority 0; policy accept; "
                f"meta l4proto {{ icmp, ipv6-icmp }} numgen random mod 100 < {percent} drop; }}; }}"
            )
            self.exec("nft", rules)

    def jitter(self, mean_ms, sd_ms):
        """Replies come from bench/echo_delay.py, each delayed by
        max(0, normal(mean_ms, sd_ms)); the kernel's echo reply is off."""
        self.blackhole(True)
        self.responder = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, ECHO_DELAY,
             "--mean-ms", str(mean_ms), "--sd-ms", str(sd_ms), "--seed", str(self.n)],
            stdout=subprocess.PIPE, text=True,
        )
        assert self.responder.stdout.readline().strip() == "echo_delay: ready"

    def remove(self):
        responder = getattr(self, "responder", None)
        if responder:
            responder.kill()
            responder.wait()
            self.responder = None
        sh("ip", "netns", "del", self.ns, check=False)
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "route", "del", "unreachable", self.v4_prefix, "metric", "4000", check=False)
        sh("ip", "-6", "route", "del", "unreachable", self.v6_prefix, "metric", "4000", check=False)


class World:
    """One VPC and subnet; a route table and an ENI per run."""

    def __init__(self, client):
        self.c = client
        vpc = client.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        self.vpc = vpc
        # The DX route failback needs (failback_requires_dx_route): LocalStack
        # cannot propagate from a VGW, so a covering static route to one
        # stands for the propagated route.
        self.vgw = client.create_vpn_gateway(Type="ipsec.1")["VpnGateway"]["VpnGatewayId"]
        client.attach_vpn_gateway(VpcId=vpc, VpnGatewayId=self.vgw)

    def table(self):
        table = self.c.create_route_table(VpcId=self.vpc)["RouteTable"]["RouteTableId"]
        self.c.create_route(RouteTableId=table, DestinationCidrBlock="10.0.0.0/8", GatewayId=self.vgw)
        return table

    def eni(self):
        return self.c.create_network_interface(SubnetId=self.subnet)["NetworkInterface"]["NetworkInterfaceId"]


PROFILES = {
    # The round rule, as before issue 13.
    "fast": dict(interval="100ms", timeout="80ms", count=1, fall=3, rise=5, hold_down="1s"),
    "default": dict(interval="1s", timeout="800ms", count=3, fall=3, rise=10, hold_down="60s"),
    # The silence detector: the shipped defaults (3 s of silence), the
    # sub-second setting that replaces "fast", and one echo per target per
    # second for the idle-CPU goal.
    "silence": dict(interval="1s", timeout="800ms", count=3, fall=3, rise=10, hold_down="60s", detector="silence"),
    "silence-fast": dict(interval="1s", timeout="800ms", count=3, fall=3, rise=5, hold_down="1s", detector="silence", silence="300ms"),
    "silence-eco": dict(interval="1s", timeout="800ms", count=1, fall=3, rise=10, hold_down="60s", detector="silence"),
}


def agent_config(profile, targets, routes, extra=""):
    p = PROFILES[profile]
    text = f"""[aws]
region = "us-east-1"
endpoint_url = "{ENDPOINT}"
{extra}
[probe]
targets = [{", ".join(f'"{t}"' for t in targets)}]
interval = "{p['interval']}"
timeout = "{p['timeout']}"
count = {p['count']}
{f'detector = "{p["detector"]}"' if "detector" in p else ""}
{f'silence = "{p["silence"]}"' if "silence" in p else ""}

[failover]
fall = {p['fall']}
rise = {p['rise']}
hold_down = "{p['hold_down']}"
"""
    for table, cidr, eni in routes:
        text += f'\n[[routes]]\nroute_table_id = "{table}"\ndestination = "{cidr}"\ntarget_eni = "{eni}"\n'
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(text)
    f.close()
    return f.name


class Run:
    """One agent (or baseline loop) guarding one route table."""

    def __init__(self, kind, net, table, eni, log_dir, extra=""):
        self.kind, self.net, self.table, self.eni = kind, net, table, eni
        self.cut_at = self.restored_at = self.failover = self.failback = None
        self.log = open(os.path.join(log_dir, f"{kind}-{net.n}.log"), "w")
        env = dict(ENV, RUNTIME_DIRECTORY=log_dir)
        if kind == "baseline":
            args = [BASELINE, net.v4, table, CIDR, eni]
        else:
            cfg = agent_config(kind, [net.v4, net.v6], [(table, CIDR, eni)], extra)
            args = [BIN, "--log-format", "json", "run", "--config", cfg]
            env["RUST_LOG"] = "info"
            env["RUNTIME_DIRECTORY"] = tempfile.mkdtemp()
        self.proc = subprocess.Popen(args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self):
        try:
            os.killpg(self.proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def side_by_side(kinds, first_net, world, log_dir):
    """One run per kind, each with its own target namespace (first_net,
    first_net + 1, ...) and route table; all stopped and removed on exit."""
    runs = []
    try:
        for i, kind in enumerate(kinds):
            net = Net(first_net + i)
            try:
                runs.append(Run(kind, net, world.table(), world.eni(), log_dir))
            except BaseException:
                net.remove()
                raise
        yield runs
    finally:
        for r in runs:
            r.stop()
            r.net.remove()


def has_route(table):
    return any(
        r.get("NetworkInterfaceId") and r.get("DestinationCidrBlock") == CIDR for r in table["Routes"]
    )


def measure(runs, client, stagger, settle, deadline):
    """Cuts each run's path in turn, heals it as soon as the route is seen,
    and times both switches by reading all tables every POLL seconds."""
    time.sleep(settle)
    ids = [r.table for r in runs]
    by_id = {r.table: r for r in runs}
    start = time.monotonic()
    for i, r in enumerate(runs):
        r.planned_cut = start + i * stagger
    while time.monotonic() - start < deadline:
        now = time.monotonic()
        for r in runs:
            if r.cut_at is None and now >= r.planned_cut:
                r.net.blackhole(True)
                r.cut_at = time.monotonic()
        tables = client.describe_route_tables(RouteTableIds=ids)["RouteTables"]
        seen = time.monotonic()
        for t in tables:
            r = by_id[t["RouteTableId"]]
            if r.cut_at is not None and r.failover is None and has_route(t):
                r.failover = seen - r.cut_at
                r.net.blackhole(False)
                r.restored_at = time.monotonic()
            elif r.restored_at is not None and r.failback is None and not has_route(t):
                r.failback = seen - r.restored_at
        if all(r.failback is not None for r in runs):
            break
        time.sleep(POLL)
    return runs


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(values):
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
    }


def latency(args, client, world, log_dir):
    plans = [
        # kind, stagger between cuts (s), settle before the first cut, deadline
        ("fast", 0.5, 3, 60),
        ("default", 0.5, 6, 150),
        ("silence-fast", 0.5, 3, 60),
        ("silence", 0.5, 6, 150),
        # The baseline forks the AWS CLI (about 0.7 s of CPU) on each
        # switch: cuts 3 s apart keep those calls from queueing on 2 cores.
        ("baseline", 3.0, 6, 150),
    ]
    results = {}
    for kind, stagger, settle, deadline in plans:
        if not wanted(args, kind):
            continue
        with side_by_side([kind] * args.reps, 10, world, log_dir) as runs:
            measure(runs, client, stagger, settle, deadline)
        over = [r.failover for r in runs if r.failover is not None]
        back = [r.failback for r in runs if r.failback is not None]
        results[kind] = {"failover": summary(over), "failback": summary(back), "missed": args.reps - len(back)}
        print(f"  {kind:<12} failover {fmt(results[kind]['failover'])}   failback {fmt(results[kind]['failback'])}", flush=True)
    return results


def wanted(args, kind):
    return not args.kinds or kind in args.kinds.split(",")


def fmt(s):
    return f"p50 {s['p50']:.2f}s p90 {s['p90']:.2f}s p99 {s['p99']:.2f}s max {s['max']:.2f}s (n={s['n']})"


def tree_usage(pid):
    """CPU seconds (own + reaped children) of pid, and RSS of pid and its live descendants (KiB)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    cpu = (utime + stime + cutime + cstime) / tick
    rss = 0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except FileNotFoundError:
            pass
    return cpu, rss


def on_cpu_ns(pid):
    """Nanoseconds on CPU of every thread of pid (schedstat): finer than the
    10 ms ticks of /proc/PID/stat, which matter at 0.05 % (60 ms in 120 s)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def sample(pids, seconds, every):
    """CPU (% of one core) and peak tree RSS of each pid over the same
    `seconds`, sampling RSS every `every` s. The agents' CPU also in
    nanoseconds (schedstat); the baseline's tree only has ticks (its pings
    and CLI calls are reaped children)."""
    ns0 = [on_cpu_ns(p) for p in pids]
    cpu0 = [tree_usage(p)[0] for p in pids]
    t0 = time.monotonic()
    peak = [0] * len(pids)
    while time.monotonic() - t0 < seconds:
        peak = [max(m, tree_usage(p)[1]) for m, p in zip(peak, pids)]
        time.sleep(every)
    cpu1 = [tree_usage(p)[0] for p in pids]
    ns1 = [on_cpu_ns(p) for p in pids]
    elapsed = time.monotonic() - t0
    return [
        {
            "seconds": elapsed,
            "cpu_percent_of_a_core": 100 * (b - a) / elapsed,
            "own_cpu_percent_of_a_core_schedstat": 100 * (d - c) / 1e9 / elapsed,
            "peak_rss_mib": m / 1024,
        }
        for a, b, c, d, m in zip(cpu0, cpu1, ns0, ns1, peak)
    ]


def footprint(args, world, log_dir):
    """Steady state at about 1 round/s, the agent and the baseline side by
    side (each well under 1 % of a core, so they hardly disturb each other);
    the baseline's tree includes its pings. CPU comes in 10 ms ticks, hence
    the long default run."""
    kinds = ("default", "silence", "silence-eco", "baseline")
    with side_by_side(kinds, 200, world, log_dir) as runs:
        time.sleep(5)  # past startup
        figures = sample([r.proc.pid for r in runs], args.footprint_seconds, 0.1)
    results = dict(zip(kinds, figures))
    for kind, r in results.items():
        print(f"  {kind:<12} CPU {r['cpu_percent_of_a_core']:.3f}% of a core (own threads, schedstat: {r['own_cpu_percent_of_a_core_schedstat']:.3f}%), peak RSS {r['peak_rss_mib']:.1f} MiB over {r['seconds']:.0f} s", flush=True)
    # What one switch costs the baseline: one AWS CLI call.
    t0 = time.monotonic()
    r = subprocess.run(["bash", "-c", "time -p aws ec2 describe-route-tables --region us-east-1 >/dev/null"], env=ENV, capture_output=True, text=True)
    fields = dict(line.split() for line in r.stderr.strip().splitlines() if line.split()[0] in ("real", "user", "sys"))
    results["aws_cli_call"] = {"wall_s": float(fields["real"]), "cpu_s": float(fields["user"]) + float(fields["sys"])}
    print(f"  one AWS CLI call (the baseline's cost per switch): {results['aws_cli_call']['cpu_s']:.2f} s CPU, {results['aws_cli_call']['wall_s']:.2f} s wall", flush=True)
    return results


def scale(args, client, world, log_dir):
    results = {}
    # 1,000 loopback targets at 1 round/s, in-memory backend.
    targets = [f"127.{1 + i // 250}.0.{1 + i % 250}" for i in range(args.scale_targets)]
    cfg = agent_config("default", targets, [("rtb-0123456789abcdef0", CIDR, "eni-0123456789abcdef0")], 'backend = "memory"')
    with open(cfg, "a") as f:
        f.write('\n[metrics]\nlisten = "127.0.0.1:19108"\n')
    env = dict(ENV, RUST_LOG="warn", RUNTIME_DIRECTORY=tempfile.mkdtemp())
    proc = subprocess.Popen([BIN, "run", "--config", cfg], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)
        usage = sample([proc.pid], args.scale_seconds, 0.2)[0]
        with urllib.request.urlopen("http://127.0.0.1:19108/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        def metric(name):
            total = 0.0
            for line in metrics.splitlines():
                if line.startswith(name):
                    total += float(line.rsplit(" ", 1)[1])
            return total
        results["targets_1000"] = {
            "targets": len(targets),
            "cpu_percent_of_a_core": usage["cpu_percent_of_a_core"],
            "peak_rss_mib": usage["peak_rss_mib"],
            "rounds": metric("route_failover_rounds_total"),
            "rounds_down": metric('route_failover_rounds_total{result="down"}'),
            "rounds_overrun": metric("route_failover_rounds_overrun_total"),
        }
    finally:
        proc.terminate()
        proc.wait()
    r = results["targets_1000"]
    print(f"  {r['targets']} loopback targets at 1 round/s: CPU {r['cpu_percent_of_a_core']:.1f}% of a core, peak RSS {r['peak_rss_mib']:.1f} MiB, "
          f"{r['rounds']:.0f} rounds, {r['rounds_down']:.0f} down, {r['rounds_overrun']:.0f} overran", flush=True)

    # 50 tables x 4 CIDRs switched on one failover, against LocalStack.
    tables = [world.table() for _ in range(50)]
    eni = world.eni()
    cidrs = ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "fd00:1::/48"]
    net = Net(201)
    cfg = agent_config("fast", [net.v4, net.v6], [(t, c, eni) for t in tables for c in cidrs])
    log_path = os.path.join(log_dir, "scale-200-routes.log")
    env = dict(ENV, RUST_LOG="info", RUNTIME_DIRECTORY=tempfile.mkdtemp())
    with open(log_path, "w") as log:
        proc = subprocess.Popen([BIN, "--log-format", "json", "run", "--config", cfg], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(4)
            net.blackhole(True)
            deadline = time.monotonic() + 60
            converged = None
            while time.monotonic() < deadline and converged is None:
                time.sleep(0.2)
                with open(log_path) as f:
                    for line in f:
                        e = json.loads(line)
                        if e.get("message") == "route tables converged" and e.get("path") == "Backup":
                            converged = e
        finally:
            proc.terminate()
            proc.wait()
            net.remove()
    with open(log_path) as f:
        events = [json.loads(l) for l in f]
    calls = [e for e in events if e.get("message") == "route changed"]
    results["routes_200"] = {
        "routes": len(tables) * len(cidrs),
        "converged_ms_after_transition": converged.get("since_transition_ms") if converged else None,
        "route_calls": len(calls),
        "failed_calls": len([e for e in events if e.get("message", "").startswith("route change failed")]),
    }
    r = results["routes_200"]
    print(f"  {r['routes']} routes (50 tables x 4 CIDRs): converged {r['converged_ms_after_transition']} ms after the transition, "
          f"{r['route_calls']} CreateRoute calls, {r['failed_calls']} failed", flush=True)
    return results


NOISE = [
    # (name, how to apply it, which runs)
    ("5 % loss", lambda net: net.random_loss(5), ("default", "silence", "silence-fast", "baseline")),
    ("20 % loss", lambda net: net.random_loss(20), ("default", "silence", "silence-fast", "baseline")),
    ("jitter 100±100 ms", lambda net: net.jitter(100, 100), ("default", "fast", "silence", "silence-fast", "baseline")),
    ("jitter 400±300 ms", lambda net: net.jitter(400, 300), ("default", "silence", "silence-fast", "baseline")),
]


def noise(args, client, world, log_dir):
    """Live loss and jitter for a bounded time, every setting and run at
    once, each in its own namespace: route changes made by each (all of
    them false: the path never goes down)."""
    cases = [(name, apply, kind) for name, apply, kinds in NOISE for kind in kinds if wanted(args, kind)]
    with side_by_side([kind for _, _, kind in cases], 210, world, log_dir) as runs:
        time.sleep(5)
        for (_, apply, _), run in zip(cases, runs):
            apply(run.net)
        time.sleep(args.noise_seconds)
    results = {}
    for (name, _, kind), run in zip(cases, runs):
        with open(run.log.name) as f:
            text = f.read()
        if kind == "baseline":
            changes = text.count("switching to VPN") + text.count("switching back")
        else:
            changes = text.count('"route changed"')
        results[f"{kind} {name}"] = {"noise": name, "run": kind, "seconds": args.noise_seconds, "route_changes": changes}
        print(f"  {kind:<12} {name:<18} for {args.noise_seconds} s: {changes} route changes", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--footprint-seconds", type=int, default=120)
    ap.add_argument("--noise-seconds", type=int, default=60)
    ap.add_argument("--scale-targets", type=int, default=1000)
    ap.add_argument("--scale-seconds", type=int, default=60)
    ap.add_argument("--only", choices=["latency", "footprint", "noise", "scale"], action="append")
    ap.add_argument("--kinds", help="comma-separated profiles to run in latency and noise (default: all)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/failover.py: needs root (network namespaces, ICMP)")
    os.makedirs(RESULTS, exist_ok=True)
    client = ec2()
    world = World(client)
    log_dir = tempfile.mkdtemp(prefix="rf-bench-")
    print(f"logs in {log_dir}")
    steps = args.only or ["latency", "footprint", "noise", "scale"]
    for step in steps:
        print(f"\n== {step}", flush=True)
        fn = {"latency": latency, "footprint": lambda a, c, w, l: footprint(a, w, l), "noise": noise, "scale": scale}[step]
        out = fn(args, client, world, log_dir)
        path = os.path.join(RESULTS, f"{step}.json")
        if args.kinds and os.path.exists(path):
            # Some profiles only: the others' figures stay.
            with open(path) as f:
                out = {**json.load(f), **out}
        with open(path, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
