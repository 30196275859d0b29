//! The real ICMP prober against loopback (127.0.0.0/8 and ::1 only).

#[path = "common/netns.rs"]
mod netns;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use route_failover::config::Config;
use route_failover::probe::icmp::IcmpProber;
use route_failover::probe::{summarize, Prober};

fn config(targets: &str) -> Config {
    let text = format!(
        r#"
[probe]
targets = [{targets}]
interval = "500ms"
timeout = "200ms"
count = 3

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    );
    Config::parse(&text, Path::new("icmp-test.toml")).unwrap()
}

#[tokio::test]
async fn loopback_targets_answer_every_echo_over_v4_and_v6() {
    if !netns::is_root() {
        eprintln!(
            "SKIPPED loopback_targets_answer...: needs root (or CAP_NET_RAW) for ICMP sockets"
        );
        return;
    }
    let config = config(r#""127.0.0.1", "127.0.0.2", "::1""#);
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
