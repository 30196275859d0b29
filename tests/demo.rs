//! The demo's story, checked on the paused clock.

use route_failover::demo;

#[tokio::test(start_paused = true)]
async fn the_demo_tells_the_whole_story() {
    let mut out = Vec::new();
    let summary = demo::run(&mut out).await.expect("demo finishes");
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first = |pred: &dyn Fn(&str) -> bool| {
        lines
            .iter()
            .position(|l| pred(l))
            .unwrap_or_else(|| panic!("line missing in:\n{text}"))
    };
    let is_round = |l: &str| l.contains("  round ");
    assert_eq!((summary.failovers, summary.failbacks), (1, 1), "{text}");
    assert!(summary.repaired_drift, "{text}");
    assert!(summary.held_failover && summary.held_failback, "{text}");
    // 3 creates, 1 repair, 3 deletes: nothing while either act holds.
    assert_eq!(summary.route_calls, 7, "{text}");

    // The loss burst (2 rounds) and the one-host outage must not fail over;
    // the real cut comes while the VPN is down: after `fall` rounds, the
    // alarm instead of a failover.
    let first_cut = first(&|l| l.contains("[DX cut"));
    let alarm = first(&|l| l.contains("ALARM both paths down"));
    let failover = first(&|l| l.contains(">>> TRANSITION Primary -> Backup"));
    let rounds = |from: usize, to: usize| lines[from..to].iter().filter(|l| is_round(l)).count();
    assert_eq!(rounds(first_cut, alarm), 3, "{text}");
    assert!(alarm < failover, "{text}");
    // The VPN answers again: failover after backup.rise (2) rounds.
    let vpn_back = first(&|l| l.contains("[DX cut") && l.contains("backup: VPN up]"));
    assert_eq!(rounds(vpn_back, failover), 2, "{text}");
    assert!(
        lines[failover].contains("backup path is up again"),
        "{text}"
    );

    // Failback is decided, but held while no DX route is left...
    let failback = first(&|l| l.contains(">>> TRANSITION Backup -> Primary"));
    let held = first(&|l| l.contains("note     failback would blackhole"));
    let bgp_back = first(&|l| l.contains("DX routes are propagated again"));
    let first_delete = first(&|l| l.contains("delete-route"));
    assert!(failback < held && held < bgp_back, "{text}");
    // ...and released once the DX routes are back.
    assert!(bgp_back < first_delete, "{text}");
}
