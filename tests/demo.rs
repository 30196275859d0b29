//! The demo's story, checked on the paused clock.

use route_failover::demo;

#[tokio::test(start_paused = true)]
async fn the_demo_tells_the_whole_story() {
    let mut out = Vec::new();
    let summary = demo::run(&mut out).await.expect("demo finishes");
    let text = String::from_utf8(out).unwrap();
    assert_eq!((summary.failovers, summary.failbacks), (1, 1), "{text}");
    assert!(summary.repaired_drift, "{text}");
    // 3 creates, 1 repair, 3 deletes.
    assert_eq!(summary.route_calls, 7, "{text}");
    // The loss burst (2 rounds) and the one-host outage must not fail over:
    // the only failover is on the third round of the real cut.
    let first_cut = text.lines().position(|l| l.contains("[DX cut")).unwrap();
    let failover = text
        .lines()
        .position(|l| l.contains(">>> TRANSITION Primary -> Backup"))
        .unwrap();
    assert_eq!(failover - first_cut, 3, "{text}");
}
