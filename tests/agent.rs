//! The whole agent (fsm, planner, reconciler) on the in-memory EC2 backend,
//! driven by a scripted prober on tokio's paused clock: no real sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::{CloudError, RouteApi};
use route_failover::events::{Event, Outcome};
use route_failover::fsm::{Reason, Via};
use route_failover::model::{Adoption, Origin, Route, RouteState, Target};
use route_failover::plan::Finding;
use route_failover::probe::scripted::Reply;

fn route_changes(events: &[(tokio::time::Instant, Event)]) -> Vec<String> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::RouteChange { action, .. } => Some(action.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fails_over_after_fall_rounds_and_back_after_rise_and_hold_down() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.run_for(secs(5)).await;
    assert!(
        api.mutating_calls().is_empty(),
        "a healthy primary changed routes"
    );

    h.script.set("DX cut", Reply::None);
    let failover = h.transition(Via::Backup, secs(10)).await;
    // The third down round fails over, not earlier.
    let down_rounds = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Round { summary, .. } if !summary.up))
        .count();
    assert_eq!(down_rounds, 3);
    assert!(matches!(failover.reason, Reason::Fall { rounds: 3, .. }));
    h.converged(Via::Backup, secs(1)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));

    h.script.set("DX restored", Reply::All);
    let restored_at = tokio::time::Instant::now();
    let failback = h.transition(Via::Primary, secs(60)).await;
    // rise = 5 rounds, but hold-down (10 s after the failover) is longer.
    assert!(
        failback.at - failover.at >= secs(10),
        "failback inside hold-down"
    );
    assert!(failback.at - restored_at >= secs(4));
    h.converged(Via::Primary, secs(1)).await;
    assert!(our_routes(&api.tables()).is_empty());

    let ops: Vec<&str> = api.mutating_calls().iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        ["CreateRoute"; 4]
            .iter()
            .chain(&["DeleteRoute"; 4])
            .copied()
            .collect::<Vec<_>>()
    );
    // Propagated DX routes were never touched.
    for t in api.tables() {
        assert_eq!(
            t.routes
                .iter()
                .filter(|r| r.origin == Origin::Propagated)
                .count(),
            2
        );
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_loss_burst_shorter_than_fall_changes_nothing() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    for _ in 0..20 {
        // 1.5 s of silence spans at most 2 rounds of 1 s: fewer than fall.
        h.script.set("burst", Reply::None);
        h.run_for(Duration::from_millis(1500)).await;
        h.script.set("ok", Reply::All);
        h.run_for(Duration::from_millis(1500)).await;
    }
    // One of two hosts down is not a DX failure with the default quorum.
    h.script
        .set("one host down", Reply::Targets(vec![true, false]));
    h.run_for(secs(30)).await;
    let events = h.stop().await;
    assert!(api.mutating_calls().is_empty());
    assert!(!events
        .iter()
        .any(|(_, e)| matches!(e, Event::Transition(_))));
}

#[tokio::test(start_paused = true)]
async fn restart_while_on_backup_adopts_without_duplicate_calls() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    // A previous run failed over, then was killed.
    for r in &config.routes {
        api.create_route(r).await.unwrap();
    }
    let before = api.mutating_calls().len();

    let mut h = Harness::start(&config, api.clone(), Reply::None);
    let adopted = h
        .wait_for("adoption", secs(5), |e| matches!(e, Event::Adopted { .. }))
        .await;
    let Event::Adopted { adoption, ours } = adopted else {
        unreachable!()
    };
    assert_eq!(adoption, Adoption::Backup);
    assert_eq!(ours.len(), 4);
    h.run_for(secs(60)).await;
    assert_eq!(api.mutating_calls().len(), before, "adoption made calls");

    // DX heals: failback needs rise rounds and the hold-down counted from
    // the restart, not an instant delete.
    h.script.set("DX restored", Reply::All);
    let healed = tokio::time::Instant::now();
    h.transition(Via::Primary, secs(60)).await;
    assert!(healed.elapsed() >= secs(4));
    h.converged(Via::Primary, secs(1)).await;
    assert!(our_routes(&api.tables()).is_empty());
    assert_eq!(api.mutating_calls().len(), before + 4);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn restart_on_healthy_dx_waits_for_hold_down_before_failing_back() {
    let config = config_with("hold_down = \"45s\"");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    for r in &config.routes {
        api.create_route(r).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.run_for(secs(40)).await;
    assert_eq!(
        our_routes(&api.tables()).len(),
        4,
        "failed back inside hold-down"
    );
    h.converged(Via::Primary, secs(10)).await;
    assert!(started.elapsed() >= secs(45));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_route_deleted_by_hand_is_put_back_at_the_next_resync() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    let r = &config.routes[2];
    api.remove_static_route(&r.route_table_id, r.destination);
    assert_eq!(our_routes(&api.tables()).len(), 3);
    // resync_interval is 30 s.
    h.wait_for("repair", secs(31), |e| {
        matches!(e, Event::RouteChange { action, result: Ok(Outcome::Done), .. } if action.route() == r)
    })
    .await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn duplicate_create_and_missing_delete_count_as_converged() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    // Someone else made one of our routes between our read and our create.
    api.inject_fault(
        "CreateRoute",
        CloudError::from_code(
            "RouteAlreadyExists",
            "The route identified by 10.1.0.0/16 already exists.",
        ),
    );
    api.inject_fault(
        "DeleteRoute",
        CloudError::from_code("InvalidRoute.NotFound", "There is no route defined"),
    );
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.wait_for("create seen as converged", secs(10), |e| {
        matches!(
            e,
            Event::RouteChange {
                result: Ok(Outcome::AlreadyConverged),
                ..
            }
        )
    })
    .await;
    h.converged(Via::Backup, secs(10)).await;
    // The re-read found the route still missing and created it.
    assert_eq!(our_routes(&api.tables()), all_managed(&config));

    h.script.set("DX restored", Reply::All);
    h.wait_for("delete seen as converged", secs(60), |e| {
        matches!(e, Event::RouteChange { action, result: Ok(Outcome::AlreadyConverged), .. } if action.op() == "DeleteRoute")
    })
    .await;
    h.converged(Via::Primary, secs(10)).await;
    assert!(our_routes(&api.tables()).is_empty());
    let events = h.stop().await;
    assert!(!events
        .iter()
        .any(|(_, e)| matches!(e, Event::RouteChange { result: Err(_), .. })));
}

#[tokio::test(start_paused = true)]
async fn no_route_change_before_the_first_round() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    let first_round = h
        .events
        .iter()
        .position(|(_, e)| matches!(e, Event::Round { .. }));
    let first_change = h
        .events
        .iter()
        .position(|(_, e)| matches!(e, Event::RouteChange { .. }));
    assert!(first_round.unwrap() < first_change.unwrap());
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_leaves_routes_as_they_are() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    let calls = api.mutating_calls().len();
    h.stop().await;
    assert_eq!(api.mutating_calls().len(), calls);
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
}

#[tokio::test(start_paused = true)]
async fn foreign_routes_are_reported_and_never_touched() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let foreign = Route {
        destination: "fd00:1::/48".parse().unwrap(),
        target: Target::Other("tgw-0123456789abcdef0".into()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    };
    api.insert_route(TABLE_B, foreign.clone()).unwrap();
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.wait_for("foreign finding", secs(10), |e| {
        matches!(e, Event::Finding(Finding::Foreign { .. }))
    })
    .await;
    // That traffic stays off the VPN: never "converged" on Backup.
    h.wait_for(
        "not converged",
        secs(10),
        |e| matches!(e, Event::Diverged { path: Via::Backup, why } if why.contains("foreign")),
    )
    .await;
    h.run_for(secs(30)).await;
    assert!(!h.events.iter().any(|(_, e)| matches!(
        e,
        Event::Converged {
            path: Via::Backup,
            ..
        }
    )));
    assert_eq!(our_routes(&api.tables()).len(), 3);
    h.script.set("DX restored", Reply::All);
    h.converged(Via::Primary, secs(60)).await;
    let events = h.stop().await;
    let changes = route_changes(&events);
    assert_eq!(changes.len(), 6, "{changes:#?}");
    assert!(changes
        .iter()
        .all(|c| !c.contains(&format!("{TABLE_B} fd00:1::/48"))));
    let b = api.tables().into_iter().find(|t| t.id == TABLE_B).unwrap();
    assert!(b.routes.contains(&foreign), "the foreign route was touched");
}

#[tokio::test(start_paused = true)]
async fn takeover_replaces_a_foreign_route_on_failover() {
    let config = config_with("takeover = true");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    api.insert_route(
        TABLE_B,
        Route {
            destination: "fd00:1::/48".parse().unwrap(),
            target: Target::NetworkInterface("eni-0999999999999999f".into()),
            origin: Origin::CreateRoute,
            state: RouteState::Active,
        },
    )
    .unwrap();
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    let ops: Vec<&str> = api.mutating_calls().iter().map(|c| c.op).collect();
    assert_eq!(ops.iter().filter(|o| **o == "ReplaceRoute").count(), 1);
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn manual_failback_waits_for_the_operator() {
    let config = config_with("failback = \"manual\"");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    h.script.set("DX restored", Reply::All);
    h.run_for(secs(300)).await;
    assert_eq!(
        our_routes(&api.tables()).len(),
        4,
        "manual mode failed back by itself"
    );
    h.control.request_failback();
    let t = h.transition(Via::Primary, secs(5)).await;
    assert!(matches!(t.reason, Reason::Operator { .. }));
    h.converged(Via::Primary, secs(5)).await;
    assert!(our_routes(&api.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_applies_new_settings_without_losing_the_path() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;

    // fall 3 -> 1, and stop managing table B.
    let mut new = config_with("fall = 1");
    new.routes.retain(|r| r.route_table_id == TABLE_A);
    h.control.reload(new.clone(), None);
    h.wait_for("reload", secs(5), |e| matches!(e, Event::Reloaded))
        .await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(2)).await;
    let down = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Round { summary, .. } if !summary.up))
        .count();
    assert_eq!(down, 1, "the reloaded fall = 1 did not apply");
    h.converged(Via::Backup, secs(5)).await;
    // Only the routes still managed were created.
    assert_eq!(our_routes(&api.tables()), all_managed(&new));

    // A reload on Backup keeps Backup: no failback, no deletes.
    let seen = h.events.len();
    h.control.reload(new.clone(), None);
    h.run_for(secs(30)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&new));
    let after = &h.events[seen..];
    assert!(
        after.iter().any(|(_, e)| matches!(e, Event::Reloaded)),
        "the second reload was not applied"
    );
    assert!(
        !after.iter().any(|(_, e)| matches!(e, Event::Transition(_))),
        "a reload on Backup caused a transition"
    );
    assert!(
        !api.mutating_calls().iter().any(|c| c.op == "DeleteRoute"),
        "a reload on Backup deleted a route"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn steady_state_reads_all_tables_in_one_call_per_resync() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    let before = api.calls().len();
    // Ten resync intervals of 30 s.
    h.run_for(secs(300)).await;
    let reads: Vec<_> = api.calls()[before..].to_vec();
    assert!(
        (9..=11).contains(&reads.len()),
        "{} calls in 10 resyncs: {reads:?}",
        reads.len()
    );
    for call in reads {
        assert_eq!(call.op, "DescribeRouteTables");
        // Both managed tables in one call.
        assert_eq!(call.subject, format!("{TABLE_A},{TABLE_B}"));
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_overrun_round_is_judged_by_the_replies_it_got() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    // Every round answers one echo per target, then hangs past its interval.
    h.script.set("stuck after one reply", Reply::Overrun(1));
    h.run_for(secs(20)).await;
    let overruns = h
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Overran))
        .count();
    assert!(overruns >= 5, "only {overruns} rounds overran");
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Round { summary, .. } if !summary.up)),
        "an overrun round with replies counted as down"
    );
    // Silent and overrunning is down, as any silent round.
    h.script.set("stuck, silent", Reply::Overrun(0));
    h.transition(Via::Backup, secs(15)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_prober_that_does_not_judge_the_path_keeps_fall_rounds_under_the_silence_detector() {
    let mut config = config();
    // The silence detector's fall = 1 is for its own verdicts only; a
    // prober whose rounds the round rule judges keeps the config's fall.
    config.detect.kind = route_failover::detect::DetectorKind::Silence;
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    let failover = h.transition(Via::Backup, secs(10)).await;
    assert!(
        matches!(failover.reason, Reason::Fall { rounds: 3, .. }),
        "{:?}",
        failover.reason
    );
    h.stop().await;
}
