//! Operator actions on a running agent (what `route-failover ctl` sends):
//! pause, maintenance failover, hold, release, and their survival across a
//! restart. In-memory EC2, paused clock.

mod common;

use std::sync::Arc;

use common::*;
use route_failover::agent::OperatorAction;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::RouteApi;
use route_failover::decide::Operator;
use route_failover::events::Event;
use route_failover::fsm::{Reason, Via};
use route_failover::probe::scripted::Reply;
use route_failover::state::{OperatorRecord, OperatorStore};

#[tokio::test(start_paused = true)]
async fn pause_makes_no_route_call_while_the_probes_go_down() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    let answer = h.control.operate(OperatorAction::Pause, Some(1000)).await;
    assert!(answer.unwrap().starts_with("paused"));
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    h.wait_for(
        "intended creates",
        secs(5),
        |e| matches!(e, Event::Intended { path: Via::Backup, actions } if actions.len() == 4),
    )
    .await;
    h.run_for(secs(120)).await;
    assert!(api.mutating_calls().is_empty(), "paused, yet it called");
    let after_pause = h
        .events
        .iter()
        .skip_while(|(_, e)| !matches!(e, Event::Operator { .. }));
    assert!(
        !after_pause
            .clone()
            .any(|(_, e)| matches!(e, Event::Converged { .. } | Event::RouteChange { .. })),
        "paused, yet it reported a change or a convergence"
    );
    assert!(h.events.iter().any(|(_, e)| matches!(
        e,
        Event::Operator {
            action: OperatorAction::Pause,
            uid: Some(1000),
            paused: true,
            ..
        }
    )));
    h.control
        .operate(OperatorAction::Resume, None)
        .await
        .unwrap();
    h.converged(Via::Backup, secs(5)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn maintenance_failover_holds_backup_until_released() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.control
        .operate(OperatorAction::FailoverHold, None)
        .await
        .unwrap();
    let t = h.transition(Via::Backup, secs(1)).await;
    assert!(matches!(
        t.reason,
        Reason::OperatorHold { path: Via::Backup }
    ));
    h.converged(Via::Backup, secs(5)).await;
    // DX is healthy all along: held anyway.
    h.run_for(secs(300)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.control
        .operate(OperatorAction::Release, None)
        .await
        .unwrap();
    let t = h.transition(Via::Primary, secs(1)).await;
    assert!(matches!(t.reason, Reason::Released));
    h.converged(Via::Primary, secs(5)).await;
    assert!(our_routes(&api.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hold_on_primary_overrules_a_dx_cut_until_released() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    let answer = h.control.operate(OperatorAction::Hold, None).await.unwrap();
    assert!(answer.contains("holding Primary"), "{answer}");
    h.script.set("DX cut", Reply::None);
    h.run_for(secs(30)).await;
    assert!(api.mutating_calls().is_empty());
    assert!(!h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Transition(_))));
    // Released with DX still down: the probes' verdict applies at once.
    h.control
        .operate(OperatorAction::Release, None)
        .await
        .unwrap();
    h.transition(Via::Backup, secs(1)).await;
    h.converged(Via::Backup, secs(5)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hold_and_a_pause_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = OperatorStore::at(&dir.path().join("operator.json"));
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let s = store.clone();
    let mut h = Harness::start_with(&config, api.clone(), Reply::All, |a| {
        a.with_operator_store(s).unwrap()
    });
    h.converged(Via::Primary, secs(5)).await;
    h.control
        .operate(OperatorAction::FailoverHold, None)
        .await
        .unwrap();
    h.converged(Via::Backup, secs(5)).await;
    h.control
        .operate(OperatorAction::Pause, None)
        .await
        .unwrap();
    h.stop().await;
    assert_eq!(
        store.load().unwrap(),
        OperatorRecord {
            operator: Operator::Hold(Via::Backup),
            paused: true
        }
    );

    // Restarted with DX healthy: still held on Backup, still paused.
    let calls = api.mutating_calls().len();
    let s = store.clone();
    let mut h = Harness::start_with(&config, api.clone(), Reply::All, |a| {
        a.with_operator_store(s).unwrap()
    });
    h.run_for(secs(120)).await;
    assert_eq!(api.mutating_calls().len(), calls);
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.control
        .operate(OperatorAction::Resume, None)
        .await
        .unwrap();
    h.control
        .operate(OperatorAction::Release, None)
        .await
        .unwrap();
    h.converged(Via::Primary, secs(30)).await;
    assert!(our_routes(&api.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn hold_is_refused_until_the_path_is_decided() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    for r in &config.routes {
        world.create_route(r).await.unwrap();
    }
    let api = Arc::new(common::apis::Knobs::new(world.clone()));
    api.fail_reads(Some(route_failover::cloud::CloudError::new(
        route_failover::cloud::ErrorKind::Transient,
        None,
        "connection refused",
    )));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.run_for(secs(5)).await;
    // The tables are unread: "the current path" is not known.
    let answer = h.control.operate(OperatorAction::Hold, None).await.unwrap();
    assert!(answer.starts_with("not held"), "{answer}");
    api.fail_reads(None);
    h.converged(Via::Backup, secs(40)).await;
    // Adopted Backup: holding it now is meaningful, and nothing is deleted.
    let answer = h.control.operate(OperatorAction::Hold, None).await.unwrap();
    assert!(answer.contains("holding Backup"), "{answer}");
    h.script.set("DX restored", Reply::All);
    h.run_for(secs(120)).await;
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    h.stop().await;
}
