//! The real ICMP prober with a `[backup]` group: both groups in one round,
//! the backup's own count, and its optional source address. Loopback and
//! the test's own namespaces only.

#[path = "common/gate.rs"]
mod gate;
#[path = "common/netns.rs"]
mod netns;

use std::net::IpAddr;
use std::path::Path;

use route_failover::config::Config;
use route_failover::probe::icmp::IcmpProber;
use route_failover::probe::{summarize, summarize_targets, Prober, RoundReport};

fn config(targets: &str, backup: &str) -> Config {
    let text = format!(
        r#"
[probe]
targets = [{targets}]
interval = "500ms"
timeout = "200ms"
count = 3

[backup]
{backup}

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#
    );
    Config::parse(&text, Path::new("icmp-test.toml")).unwrap()
}

fn received(targets: &[route_failover::probe::TargetReport]) -> Vec<(IpAddr, u32, u32)> {
    targets
        .iter()
        .map(|t| (t.target, t.sent, t.received()))
        .collect()
}

#[tokio::test]
async fn both_groups_are_probed_in_one_round_from_the_source_address() {
    let test = "both_groups_are_probed_in_one_round_from_the_source_address";
    if !gate::require_root(test, "ICMP sockets need root or CAP_NET_RAW") {
        return;
    }
    // 127.0.0.3 is a local address (all of 127/8 is on lo): a valid source.
    let config = config(
        r#""127.0.0.1", "::1""#,
        r#"targets = ["127.0.0.2", "127.0.0.4"]
count = 2
timeout = "150ms"
source = "127.0.0.3""#,
    );
    let backup = config.backup.as_ref().unwrap();
    // Early stop (the default): every target answers its first echo, so
    // none is sent another. Without it: every echo of both groups.
    for (early_stop, primary_echoes, backup_echoes) in [(true, 1, 1), (false, 3, 2)] {
        let mut probe = config.probe.clone();
        probe.early_stop = early_stop;
        let mut prober = IcmpProber::with_backup(&probe, Some(backup)).expect("ICMP sockets");
        assert!(prober.describe().contains("2 backup targets"));
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let report = prober.round().await;
            assert!(started.elapsed() < config.probe.interval);
            let (p, b) = (primary_echoes, backup_echoes);
            assert_eq!(
                received(&report.targets),
                [
                    ("127.0.0.1".parse().unwrap(), p, p),
                    ("::1".parse().unwrap(), p, p)
                ]
            );
            assert_eq!(
                received(&report.backup),
                [
                    ("127.0.0.2".parse().unwrap(), b, b),
                    ("127.0.0.4".parse().unwrap(), b, b)
                ]
            );
            assert!(summarize_targets(&report.backup, backup.round).up);
        }
    }
}

#[tokio::test]
async fn a_source_that_is_not_ours_is_refused_by_name() {
    let test = "a_source_that_is_not_ours_is_refused_by_name";
    if !gate::require_root(test, "ICMP sockets need root or CAP_NET_RAW") {
        return;
    }
    // TEST-NET-2: never an address of this host; bind() fails, nothing is sent.
    let config = config(
        r#""127.0.0.1""#,
        "targets = [\"127.0.0.2\"]\nsource = \"198.51.100.7\"",
    );
    let Err(e) = IcmpProber::with_backup(&config.probe, config.backup.as_ref()) else {
        panic!("bound to an address this host does not have");
    };
    assert!(e.to_string().contains("backup.source 198.51.100.7"), "{e}");
}

#[tokio::test]
async fn cutting_the_backup_path_leaves_the_primary_group_alone() {
    let test = "cutting_the_backup_path_leaves_the_primary_group_alone";
    if !gate::require_root(test, "network namespaces and ICMP sockets")
        || !gate::require_tool(test, "ip")
    {
        return;
    }
    let dx = netns::TargetNet::create(221);
    let vpn = netns::TargetNet::create(222);
    let config = config(
        &format!(r#""{}", "{}""#, dx.target_v4, dx.target_v6),
        &format!(r#"targets = ["{}", "{}"]"#, vpn.target_v4, vpn.target_v6),
    );
    let backup = config.backup.clone().unwrap();
    let mut prober = IcmpProber::with_backup(&config.probe, Some(&backup)).expect("ICMP sockets");
    let ups = |r: &RoundReport| {
        (
            summarize(r, config.probe.round).up,
            summarize_targets(&r.backup, backup.round).up,
        )
    };
    assert_eq!(ups(&prober.round().await), (true, true));
    vpn.blackhole(true);
    let r = prober.round().await;
    assert_eq!(ups(&r), (true, false));
    // The silent group gets every echo; the answering one only its first.
    assert!(r.backup.iter().all(|t| (t.sent, t.received()) == (3, 0)));
    assert!(r.targets.iter().all(|t| (t.sent, t.received()) == (1, 1)));
    dx.blackhole(true);
    vpn.blackhole(false);
    assert_eq!(ups(&prober.round().await), (false, true));
}
