//! The real ICMP prober against loopback (127.0.0.0/8 and ::1 only).

#[path = "common/gate.rs"]
mod gate;
#[path = "common/netns.rs"]
mod netns;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use route_failover::config::Config;
use route_failover::probe::icmp::IcmpProber;
use route_failover::probe::socket::{EchoSocket, Family, Kind};
use route_failover::probe::{summarize, Prober};

fn config(targets: &str) -> Config {
    config_with(targets, "500ms", "200ms")
}

fn config_with(targets: &str, interval: &str, timeout: &str) -> Config {
    let text = format!(
        r#"
[probe]
targets = [{targets}]
interval = "{interval}"
timeout = "{timeout}"
count = 3

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    );
    Config::parse(&text, Path::new("icmp-test.toml")).unwrap()
}

/// Every echo of every round, as with `early_stop = false`.
fn full_rounds(mut config: Config) -> Config {
    config.probe.early_stop = false;
    config
}

#[tokio::test]
async fn loopback_targets_answer_every_echo_over_v4_and_v6() {
    if !gate::require_root(
        "loopback_targets_answer_every_echo_over_v4_and_v6",
        "ICMP sockets need root or CAP_NET_RAW",
    ) {
        return;
    }
    let config = full_rounds(config(r#""127.0.0.1", "127.0.0.2", "::1""#));
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let report = prober.round().await;
        let elapsed = started.elapsed();
        assert!(elapsed < config.probe.interval, "round took {elapsed:?}");
        let got: Vec<(IpAddr, u32, u32)> = report
            .targets
            .iter()
            .map(|t| (t.target, t.sent, t.received()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("127.0.0.1".parse().unwrap(), 3, 3),
                ("127.0.0.2".parse().unwrap(), 3, 3),
                ("::1".parse().unwrap(), 3, 3),
            ]
        );
        assert!(report.targets.iter().all(|t| t.error.is_none()));
        assert!(report
            .targets
            .iter()
            .flat_map(|t| &t.rtts)
            .all(|rtt| *rtt < Duration::from_millis(200)));
        let summary = summarize(&report, config.probe.round);
        assert!(summary.up);
        assert_eq!(summary.loss(), 0.0);
    }
}

#[tokio::test]
async fn a_silent_target_is_lost_by_the_deadline_and_answers_again_after() {
    let test = "a_silent_target_is_lost_by_the_deadline_and_answers_again_after";
    if !gate::require_root(test, "network namespaces and ICMP sockets")
        || !gate::require_tool(test, "ip")
    {
        return;
    }
    let net = netns::TargetNet::create(210);
    let config = config(&format!(
        r#""127.0.0.1", "{}", "{}""#,
        net.target_v4, net.target_v6
    ));
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    let received = |report: &route_failover::probe::RoundReport| -> Vec<(u32, u32)> {
        report
            .targets
            .iter()
            .map(|t| (t.sent, t.received()))
            .collect()
    };
    // Early stop: a target that answered its first echo gets no other.
    assert_eq!(received(&prober.round().await), vec![(1, 1); 3]);

    net.blackhole(true);
    let started = std::time::Instant::now();
    let report = prober.round().await;
    let elapsed = started.elapsed();
    // The silent targets get every echo of the round and wait out each.
    assert_eq!(received(&report), vec![(1, 1), (3, 0), (3, 0)]);
    assert!(report.targets.iter().all(|t| t.error.is_none()));
    // The last echo leaves two spacings in and is waited for one timeout.
    let last_deadline = config.probe.spacing() * 2 + config.probe.timeout;
    assert!(
        elapsed >= last_deadline && elapsed < config.probe.interval,
        "round took {elapsed:?}"
    );
    // Quorum defaults to every target: one answering keeps the round up.
    let summary = summarize(&report, config.probe.round);
    assert!(summary.up, "{summary}");

    net.blackhole(false);
    assert_eq!(received(&prober.round().await), vec![(1, 1); 3]);
}

#[tokio::test]
async fn a_round_cut_short_keeps_the_replies_it_got() {
    if !gate::require_root(
        "a_round_cut_short_keeps_the_replies_it_got",
        "ICMP sockets need root or CAP_NET_RAW",
    ) {
        return;
    }
    let config = full_rounds(config(r#""127.0.0.1", "::1""#));
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    // The first wave leaves at once and loopback answers in microseconds;
    // the second leaves 100 ms in. Cut the round at 50 ms, as the agent
    // does with one that overruns its interval.
    let cut = tokio::time::timeout(Duration::from_millis(50), prober.round()).await;
    assert!(cut.is_err(), "the round finished in 50 ms");
    let salvaged = prober.salvage().expect("what the round had gathered");
    for t in &salvaged.targets {
        assert_eq!(t.received(), 1, "{t:?}");
    }
    assert!(summarize(&salvaged, config.probe.round).up);
    // Taken once; the next full round is whole again.
    assert!(prober.salvage().is_none());
    let next = prober.round().await;
    assert!(next.targets.iter().all(|t| t.received() == 3), "{next:?}");
}

/// `bench/echo_delay.py` answering every echo in the namespace 100 ms
/// late (the kernel's own replies off); killed on drop.
struct SlowResponder(std::process::Child);

impl SlowResponder {
    fn start(net: &netns::TargetNet, delay_ms: u32) -> Self {
        use std::io::BufRead;
        net.blackhole(true);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/echo_delay.py");
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &net.ns, "python3", script, "--mean-ms"])
            .arg(delay_ms.to_string())
            .args(["--sd-ms", "0"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("echo_delay.py");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "echo_delay: ready");
        Self(child)
    }
}

impl Drop for SlowResponder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A namespace of the test's own (`id`) whose IPv4 and IPv6 targets answer
/// every echo 100 ms late, and the `targets` list for a config; `None`
/// when the test cannot run here (it says why, or fails under `CI`).
fn slow_path(test: &str, id: u8) -> Option<(netns::TargetNet, SlowResponder, String)> {
    if !gate::require_root(test, "network namespaces and ICMP sockets")
        || !gate::require_tool(test, "ip")
        || !gate::require_tool(test, "python3")
    {
        return None;
    }
    // This kernel has no netem: a userspace responder holds each reply.
    let net = netns::TargetNet::create(id);
    let responder = SlowResponder::start(&net, 100);
    let targets = format!(r#""{}", "{}""#, net.target_v4, net.target_v6);
    Some((net, responder, targets))
}

#[tokio::test]
async fn late_replies_count_by_their_kernel_stamps_within_the_timeout_only() {
    let Some((_net, _responder, targets)) = slow_path(
        "late_replies_count_by_their_kernel_stamps_within_the_timeout_only",
        213,
    ) else {
        return;
    };

    // Timeout 300 ms: every reply counts, with its own ~100 ms RTT, though
    // the prober reads them all at once, long after some of them arrived.
    let config = full_rounds(config_with(&targets, "1s", "300ms"));
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    for _ in 0..2 {
        let started = std::time::Instant::now();
        let report = prober.round().await;
        let elapsed = started.elapsed();
        for t in &report.targets {
            assert_eq!((t.sent, t.received()), (3, 3), "{t:?}");
            for rtt in &t.rtts {
                assert!(
                    (Duration::from_millis(90)..Duration::from_millis(160)).contains(rtt),
                    "{}: rtt {rtt:?}",
                    t.target
                );
            }
        }
        // The round ends once the last echo is answered (two spacings of
        // 233 ms, then its 100 ms): never by waiting out every timeout.
        assert!(elapsed < config.probe.interval, "round took {elapsed:?}");
    }

    // Timeout 60 ms: the same replies come too late and none counts.
    let config = config_with(&targets, "1s", "60ms");
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    let report = prober.round().await;
    for t in &report.targets {
        assert_eq!((t.sent, t.received()), (3, 0), "{t:?}");
        assert!(t.error.is_none());
    }
    assert!(!summarize(&report, config.probe.round).up);
}

/// Floods a fresh socket's receive queue from loopback (v4: the kernel
/// does not rate-limit echo replies) and checks that the next drain
/// reports the drops as the start of an episode, and the one after does
/// not start another. Only inside a namespace of the test's own.
fn overflow_is_counted(kind: Kind) {
    let socket = EchoSocket::open(Family::V4, None, 0).expect("ICMPv4 socket");
    assert_eq!(socket.kind(), kind);
    let target = "127.0.0.1".parse().unwrap();
    // Well within the queue: nothing is dropped (the raw socket's filter
    // drops our own requests; those are not counted).
    for seq in 0..10 {
        socket.send(target, 7, seq).unwrap();
    }
    let mut replies = Vec::new();
    let few = socket.drain(&mut replies);
    assert_eq!((replies.len(), few.dropped), (10, 0), "{few:?}");
    let echoes = socket.capacity() * 20;
    let sent = (0..echoes)
        .filter(|&seq| socket.send(target, 7, seq as u16).is_ok())
        .count();
    assert!(sent > socket.capacity() * 4, "only {sent} echoes sent");
    replies.clear();
    let first = socket.drain(&mut replies);
    eprintln!(
        "{kind:?}: {sent} sent, capacity {}, {} read, {} dropped",
        socket.capacity(),
        replies.len(),
        first.dropped
    );
    assert!(first.dropped > 0 && first.started_dropping, "{first:?}");
    // A raw socket also queues (and drops) other processes' echo replies
    // on this host, so the drops are not bounded by ours; the episode is.
    let second = socket.drain(&mut replies);
    assert!(!second.started_dropping, "{second:?}");
}

#[test]
fn receive_queue_overflow_is_reported_on_raw_sockets() {
    let test = "receive_queue_overflow_is_reported_on_raw_sockets";
    if std::env::var_os(NAMESPACE_CHILD).is_some() {
        overflow_is_counted(Kind::Raw);
        return;
    }
    if !gate::require_root(test, "network namespaces and raw ICMP sockets")
        || !gate::require_tool(test, "ip")
    {
        return;
    }
    // Flooded in a namespace of its own: on the host, every raw ICMP
    // socket (other tests', other processes') would queue the flood too.
    rerun_in_namespace("rf-flood-214", test, false);
}

#[test]
fn a_raw_socket_queues_only_replies_with_our_identifier() {
    let test = "a_raw_socket_queues_only_replies_with_our_identifier";
    if std::env::var_os(NAMESPACE_CHILD).is_some() {
        let target = "127.0.0.1".parse().unwrap();
        for family in [Family::V4, Family::V6] {
            let target = match family {
                Family::V4 => target,
                Family::V6 => "::1".parse().unwrap(),
            };
            let socket = EchoSocket::open(family, None, 0).expect("ICMP socket");
            assert_eq!(socket.kind(), Kind::Raw);
            socket.only_ident(0x1111).unwrap();
            // Another process's echo (its identifier) and ours.
            socket.send(target, 0x2222, 1).unwrap();
            socket.send(target, 0x1111, 2).unwrap();
            let mut replies = Vec::new();
            let stats = socket.drain(&mut replies);
            let got: Vec<_> = replies.iter().map(|r| (r.ident, r.seq)).collect();
            assert_eq!(got, vec![(Some(0x1111), 2)], "{family:?}");
            assert_eq!(stats.ignored, 0, "{family:?}");
        }
        return;
    }
    if !gate::require_root(test, "network namespaces and raw ICMP sockets")
        || !gate::require_tool(test, "ip")
    {
        return;
    }
    rerun_in_namespace("rf-ident-216", test, false);
}

/// Set in the child run of a test rerun in a namespace of its own.
const NAMESPACE_CHILD: &str = "ROUTE_FAILOVER_TEST_NAMESPACE_CHILD";

/// A namespace of the test's own with only `lo`, removed on drop.
struct LoopbackOnly(&'static str);

impl Drop for LoopbackOnly {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .status();
    }
}

#[tokio::test]
async fn unprivileged_datagram_sockets_answer_like_raw_ones() {
    let test = "unprivileged_datagram_sockets_answer_like_raw_ones";
    if std::env::var_os(NAMESPACE_CHILD).is_some() {
        // The child, in the namespace: the kernel gives datagram sockets,
        // whose identifiers it rewrites, and the round is whole.
        let config = full_rounds(config(r#""127.0.0.1", "::1""#));
        let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
        assert_eq!(prober.socket_kinds(), vec![Kind::Datagram; 2]);
        for _ in 0..2 {
            let report = prober.round().await;
            assert!(
                report.targets.iter().all(|t| t.received() == 3),
                "{report:?}"
            );
        }
        // Ping sockets never attach SO_RXQ_OVFL: the drops are still seen.
        overflow_is_counted(Kind::Datagram);
        return;
    }
    if !gate::require_root(test, "network namespaces") || !gate::require_tool(test, "ip") {
        return;
    }
    // ping_group_range is per namespace: admit every group in one of our
    // own, and run this test again in it.
    rerun_in_namespace("rf-dgram-213", test, true);
}

/// Runs `test` again in a namespace of its own with only `lo` (where
/// `ping_groups` admits every group to ICMP datagram sockets), and checks
/// that it passed there.
fn rerun_in_namespace(name: &'static str, test: &str, ping_groups: bool) {
    let ns = LoopbackOnly(name);
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(ok.success(), "ip {args:?}");
    };
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", ns.0])
        .output();
    ip(&["netns", "add", ns.0]);
    ip(&["netns", "exec", ns.0, "ip", "link", "set", "lo", "up"]);
    if ping_groups {
        ip(&[
            "netns",
            "exec",
            ns.0,
            "sysctl",
            "-qw",
            "net.ipv4.ping_group_range=0 2147483647",
        ]);
    }
    let me = std::env::current_exe().unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns.0])
        .arg(&me)
        .args(["--exact", test, "--nocapture"])
        .env(NAMESPACE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This thread's voluntary context switches: printed for the benchmark
/// only (the host's load makes them vary: softirq-deferred loopback
/// replies, page faults, lock contention).
fn voluntary_switches() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn replies_do_not_wake_the_runtime() {
    if !gate::require_root(
        "replies_do_not_wake_the_runtime",
        "ICMP sockets need root or CAP_NET_RAW",
    ) {
        return;
    }
    // 3 targets × 3 echoes: 9 replies a round. The prober sleeps before
    // the 2nd and 3rd waves, once more for the replies to the last, and at
    // most once again at the last deadline if one is still out: at most 4
    // sleeps and 5 reads, however many replies there are. Counted by the
    // prober itself, so the host's load cannot make this fail.
    let config = full_rounds(config(r#""127.0.0.1", "127.0.0.2", "::1""#));
    let switches = count_wakes(&config, 3, 3..=4).await;
    eprintln!(
        "full rounds: voluntary context switches per round (benchmark figure): at most {switches}"
    );
}

#[tokio::test]
async fn a_healthy_round_with_early_stop_sends_one_wave_and_reads_once() {
    let test = "a_healthy_round_with_early_stop_sends_one_wave_and_reads_once";
    if !gate::require_root(test, "ICMP sockets need root or CAP_NET_RAW") {
        return;
    }
    // Every target answers its first echo long before the second wave is
    // due (loopback, 100 ms apart): that read ends the round. One sleep,
    // two reads (the round's start and that one), one echo per target.
    let config = config(r#""127.0.0.1", "127.0.0.2", "::1""#);
    let switches = count_wakes(&config, 1, 1..=1).await;
    eprintln!(
        "early stop: voluntary context switches per round (benchmark figure): at most {switches}"
    );
}

/// Runs five rounds on loopback and checks each: `echoes` sent to and
/// answered by every target, `sleeps` in range, one read per wave and one
/// after each sleep past the last, the timer woken at most once a sleep.
/// Returns the most voluntary context switches a round took.
async fn count_wakes(
    config: &Config,
    echoes: u32,
    sleeps_in: std::ops::RangeInclusive<u64>,
) -> u64 {
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    prober.round().await;
    let mut switches = 0;
    for _ in 0..5 {
        let before = prober.activity();
        let cs = voluntary_switches();
        let report = prober.round().await;
        switches = switches.max(voluntary_switches() - cs);
        let after = prober.activity();
        let (sleeps, drains, wakes) = (
            after.sleeps - before.sleeps,
            after.drains - before.drains,
            after.timer_wakes - before.timer_wakes,
        );
        assert!(
            report
                .targets
                .iter()
                .all(|t| (t.sent, t.received()) == (echoes, echoes)),
            "{report:?}"
        );
        assert!(sleeps_in.contains(&sleeps), "{sleeps} sleeps in a round");
        assert_eq!(drains, sleeps + 1, "{drains} reads after {sleeps} sleeps");
        // The timerfd wakes a sleep once (tokio's wheel would take two).
        assert!(
            wakes <= sleeps,
            "{wakes} timer wake-ups for {sleeps} sleeps"
        );
        // Stamped before the send: a loopback reply, received inside
        // sendto, still has a round-trip time.
        assert!(report
            .targets
            .iter()
            .flat_map(|t| &t.rtts)
            .all(|rtt| !rtt.is_zero()));
    }
    switches
}

/// A path slower than the spacing (100 ms against 66 ms on the default
/// profile): each target is sent a second echo before its first reply is
/// read, and early stop ends the round with that echo still out. It has
/// no fate yet, so it counts neither as sent nor as lost: a lossless path
/// shows no loss, in the round and in the counters built on it.
#[tokio::test]
async fn an_echo_still_out_when_early_stop_ends_the_round_is_not_counted_lost() {
    let Some((_net, _responder, targets)) = slow_path(
        "an_echo_still_out_when_early_stop_ends_the_round_is_not_counted_lost",
        214,
    ) else {
        return;
    };
    let config = config_with(&targets, "1s", "800ms");
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let report = prober.round().await;
        let elapsed = started.elapsed();
        for t in &report.targets {
            assert_eq!((t.sent, t.received()), (1, 1), "{t:?}");
        }
        let summary = summarize(&report, config.probe.round);
        assert!(summary.up && summary.loss() == 0.0, "{summary}");
        // Ended at the third wave's read (2 spacings), not by waiting out
        // the second echo.
        assert!(
            elapsed < config.probe.spacing() * 2 + Duration::from_millis(50),
            "round took {elapsed:?}"
        );
    }
}

/// The other side of the same rule: a first echo lost, a second answered.
/// Early stop ends the round at the third wave's read with the first one
/// still short of its `timeout`, but passed by the second one's reply:
/// lost, and the round shows it. Whatever the spacing: the default's 66 ms,
/// and 5 ms, where the lost echo is younger than any learned deadline.
#[tokio::test]
async fn a_first_echo_lost_beside_an_answered_one_counts_as_lost() {
    let test = "a_first_echo_lost_beside_an_answered_one_counts_as_lost";
    if !gate::require_root(test, "network namespaces and ICMP sockets")
        || !gate::require_tool(test, "ip")
        || !gate::require_tool(test, "nft")
    {
        return;
    }
    let net = netns::TargetNet::create(216);
    for (interval, timeout, count) in [("1s", "800ms", 3), ("100ms", "80ms", 4)] {
        let mut config = config_with(&format!(r#""{}""#, net.target_v4), interval, timeout);
        config.probe.count = count;
        let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
        for _ in 0..3 {
            assert_eq!(prober.round().await.targets[0].received(), 1);
        }
        net.drop_every_other_v4_echo(true);
        // The rule may take a few rounds to bite, and which echo it drops
        // first depends on where the kernel starts its counter: wait for a
        // round that lost one (never, if the lost echo went uncounted).
        // From then on the drops fall on each round's first echo.
        let mut bitten = false;
        for _ in 0..50 {
            if prober.round().await.targets[0].sent == 2 {
                bitten = true;
                break;
            }
        }
        assert!(
            bitten,
            "{interval}/{timeout}: no round counted its lost echo"
        );
        for _ in 0..3 {
            // Every round: echo 1 dropped, echo 2 answered, round over.
            let report = prober.round().await;
            let t = &report.targets[0];
            assert_eq!(
                (t.sent, t.received()),
                (2, 1),
                "{interval}/{timeout}: {t:?}"
            );
            let summary = summarize(&report, config.probe.round);
            assert!(
                summary.up && (summary.loss() - 0.5).abs() < 1e-9,
                "{summary}"
            );
        }
        net.drop_every_other_v4_echo(false);
    }
}

/// `min_replies = 2`: a target is up after two answered echoes, and only
/// then is it sent no more.
#[tokio::test]
async fn early_stop_waits_for_min_replies() {
    let test = "early_stop_waits_for_min_replies";
    if !gate::require_root(test, "ICMP sockets need root or CAP_NET_RAW") {
        return;
    }
    let mut config = config(r#""127.0.0.1", "::1""#);
    config.probe.round.min_replies = 2;
    let mut prober = IcmpProber::new(&config.probe).expect("ICMP sockets");
    for _ in 0..3 {
        let report = prober.round().await;
        for t in &report.targets {
            assert_eq!((t.sent, t.received()), (2, 2), "{t:?}");
        }
        assert!(summarize(&report, config.probe.round).up);
    }
}
