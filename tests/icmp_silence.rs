//! The silence detector's prober against loopback (127.0.0.0/8 and ::1) and
//! a target in a namespace this test creates.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/netns.rs"]
mod netns;

use std::path::Path;
use std::time::{Duration, Instant};

use route_failover::config::Config;
use route_failover::probe::silence::SilenceProber;
use route_failover::probe::Prober;

fn config(targets: &str) -> Config {
    let text = format!(
        r#"
[probe]
targets = [{targets}]
interval = "500ms"
timeout = "400ms"
count = 3
detector = "silence"
silence = "300ms"

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    );
    Config::parse(&text, Path::new("icmp-silence-test.toml")).unwrap()
}

#[tokio::test]
async fn loopback_targets_keep_every_round_up_at_the_steady_rate() {
    if !gate::require_root(
        "loopback_targets_keep_every_round_up_at_the_steady_rate",
        "ICMP sockets need root or CAP_NET_RAW",
    ) {
        return;
    }
    let config = config(r#""127.0.0.1", "127.0.0.2", "::1""#);
    let mut prober = SilenceProber::icmp(&config.probe, &config.detect).expect("ICMP sockets");
    let mut sent = 0;
    for _ in 0..6 {
        let started = Instant::now();
        prober.set_on_primary(true);
        let report = prober.round().await;
        let elapsed = started.elapsed();
        // Until 20 ms before the next tick, so that the agent's bound of
        // one interval does not cut it even when a timer fires late.
        let margin = route_failover::detect::round_margin(config.probe.interval);
        assert!(
            elapsed >= config.probe.interval - margin && elapsed < config.probe.interval,
            "round took {elapsed:?}"
        );
        let verdict = prober
            .verdict()
            .expect("the silence prober judges its rounds");
        assert!(verdict.up, "{verdict}");
        // Asked again (as after a round the agent cut short), it answers
        // with the detector's judgement now, never with nothing.
        assert!(prober.verdict().is_some_and(|v| v.up));
        for t in &report.targets {
            assert_eq!(t.received(), t.sent, "{}: every echo answered", t.target);
            assert!(t.error.is_none());
            sent += t.sent;
        }
    }
    // 3 targets × 3 echoes per 500 ms for 3 s, give or take the window
    // edges: no suspicion probing on a clean path.
    assert!((48..=57).contains(&sent), "{sent} echoes");
}

#[tokio::test]
async fn a_blackholed_path_ends_the_round_within_the_worst_case() {
    let test = "a_blackholed_path_ends_the_round_within_the_worst_case";
    if !gate::require_root(test, "network namespaces and ICMP sockets")
        || !gate::require_tool(test, "ip")
    {
        return;
    }
    let net = netns::TargetNet::create(231);
    let config = config(&format!(r#""{}", "{}""#, net.target_v4, net.target_v6));
    let mut prober = SilenceProber::icmp(&config.probe, &config.detect).expect("ICMP sockets");
    for _ in 0..4 {
        prober.round().await;
        assert!(prober.verdict().unwrap().up);
    }
    net.blackhole(true);
    let cut = Instant::now();
    let mut rounds = 0;
    let verdict = loop {
        prober.round().await;
        rounds += 1;
        let v = prober.verdict().unwrap();
        if !v.up || rounds == 10 {
            break v;
        }
    };
    let took = cut.elapsed();
    assert!(!verdict.up, "still up after {rounds} rounds: {verdict}");
    // Silence counts from the newest answered echo, which left up to one
    // path period (500 ms / 3 / 2 targets = 83 ms) before the cut; at most
    // 300 ms of silence + one 50 ms suspect period + the 20 ms floor after
    // the cut, plus the 20 ms round margin and scheduling on a shared machine.
    assert!(
        took <= Duration::from_millis(370 + 20 + 60),
        "took {took:?}"
    );
    assert!(took >= Duration::from_millis(300 - 83), "took {took:?}");

    // Back on the backup path the rounds are judged by the round rule:
    // down while silent, up as soon as a window's echoes are answered.
    prober.set_on_primary(false);
    prober.round().await;
    assert!(!prober.verdict().unwrap().up);
    net.blackhole(false);
    prober.round().await;
    prober.round().await;
    assert!(prober.verdict().unwrap().up);
}
