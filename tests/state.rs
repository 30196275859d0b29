//! The agent under partial, changing and missing state: partial route sets
//! at startup, missing tables, a replaced VPN ENI, routes dropped from the
//! config, undone takeovers, stale decisions, an unreachable API at
//! startup, shutdown in the middle of a pass, and a route swapped in
//! between our read and our delete. In-memory EC2, paused clock.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::apis::Knobs;
use common::*;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::{CloudError, ErrorKind, RouteApi};
use route_failover::config::Config;
use route_failover::events::Event;
use route_failover::fsm::{Reason, Via};
use route_failover::model::{Adoption, ManagedRoute, Origin, Route, RouteState, Target};
use route_failover::plan::Finding;
use route_failover::probe::scripted::Reply;
use route_failover::state::Ledger;

const NEW_ENI: &str = "eni-0d44dd44dd44dd440";
const TGW: &str = "tgw-0123456789abcdef0";

fn count(events: &[(tokio::time::Instant, Event)], pred: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|(_, e)| pred(e)).count()
}

fn ops(api: &MemoryRouteApi, op: &str) -> usize {
    api.mutating_calls().iter().filter(|c| c.op == op).count()
}

/// The same routes, pointing at `eni`.
fn with_eni(config: &Config, eni: &str) -> Config {
    let mut c = config.clone();
    for r in &mut c.routes {
        r.target_eni = eni.to_string();
    }
    c
}

/// A world that knows both ENIs.
fn world_for(configs: &[&Config]) -> Arc<MemoryRouteApi> {
    let routes: Vec<ManagedRoute> = configs.iter().flat_map(|c| c.routes.clone()).collect();
    Arc::new(MemoryRouteApi::seeded(&routes))
}

#[tokio::test(start_paused = true)]
async fn a_partial_set_is_completed_only_after_fall_down_rounds() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    api.create_route(&config.routes[0]).await.unwrap();
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    let adopted = h
        .wait_for("adoption", secs(5), |e| matches!(e, Event::Adopted { .. }))
        .await;
    assert!(matches!(
        adopted,
        Event::Adopted {
            adoption: Adoption::Partial {
                ours: 1,
                of: 4,
                peer: false
            },
            ..
        }
    ));
    h.wait_for("settled", secs(10), |e| matches!(e, Event::Settled { .. }))
        .await;
    h.converged(Via::Backup, secs(5)).await;
    let first_change = h
        .events
        .iter()
        .position(|(_, e)| matches!(e, Event::RouteChange { .. }))
        .unwrap();
    let down_before = count(
        &h.events[..first_change],
        |e| matches!(e, Event::Round { summary, .. } if !summary.up),
    );
    assert!(
        down_before >= 3,
        "completed after {down_before} down rounds"
    );
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_partial_set_with_dx_healthy_is_removed_after_rise_and_never_completed() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    api.create_route(&config.routes[3]).await.unwrap();
    let before = api.mutating_calls().len();
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    let t = h.transition(Via::Primary, secs(10)).await;
    assert!(
        matches!(
            t.reason,
            Reason::Partial {
                rounds: 5,
                up: true,
                ..
            }
        ),
        "{:?}",
        t.reason
    );
    h.converged(Via::Primary, secs(5)).await;
    h.run_for(secs(60)).await;
    assert!(our_routes(&api.tables()).is_empty());
    let calls: Vec<&str> = api.mutating_calls()[before..]
        .iter()
        .map(|c| c.op)
        .collect();
    // No failover spread while DX was healthy: one delete, no create.
    assert_eq!(calls, ["DeleteRoute"]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn one_missing_table_does_not_block_the_others_and_denies_convergence() {
    let config = config();
    // Table B does not exist (deleted, or a typo that passed the format check).
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes[..2]));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.wait_for("missing table", secs(10), |e| {
        matches!(e, Event::Finding(Finding::TableMissing { route_table_id }) if route_table_id == TABLE_B)
    })
    .await;
    h.run_for(secs(65)).await;
    // Table A switched all the same...
    let mut a_routes = all_managed(&config);
    a_routes.retain(|r| r.starts_with(TABLE_A));
    assert_eq!(our_routes(&api.tables()), a_routes);
    // ...but the agent never claimed convergence, and said why on each pass.
    assert_eq!(
        count(&h.events, |e| matches!(e, Event::Converged { .. })),
        0
    );
    let diverged = count(
        &h.events,
        |e| matches!(e, Event::Diverged { path: Via::Backup, why } if why.contains(TABLE_B)),
    );
    assert!(diverged >= 2, "{diverged} diverged events");

    // The table comes (back): converged on the next resync.
    let full = MemoryRouteApi::seeded(&config.routes);
    let b = full.tables().into_iter().find(|t| t.id == TABLE_B).unwrap();
    api.add_table(b);
    h.converged(Via::Backup, secs(31)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

/// Fails over with `old`'s ENI, recording ownership in a ledger on disk,
/// and stops: the VPN appliance is then replaced.
async fn fail_over_with(old: &Config, api: &Arc<MemoryRouteApi>, ledger: &std::path::Path) {
    let l = Ledger::open(ledger).unwrap();
    let mut h = Harness::start_with(old, api.clone(), Reply::None, |a| a.with_ledger(l));
    h.converged(Via::Backup, secs(10)).await;
    h.stop().await;
    assert_eq!(routes_to(&api.tables(), ENI), all_managed(old));
}

/// The VPN appliance was replaced after a failover: the ledger on disk
/// (`ledger.json` in the returned directory) knows our routes to the old
/// ENI, and the returned config names the new one.
async fn after_eni_replaced() -> (tempfile::TempDir, Config, Arc<MemoryRouteApi>) {
    let dir = tempfile::tempdir().unwrap();
    let old = config();
    let new = with_eni(&old, NEW_ENI);
    let api = world_for(&[&old, &new]);
    fail_over_with(&old, &api, &dir.path().join("ledger.json")).await;
    (dir, new, api)
}

#[tokio::test(start_paused = true)]
async fn a_replaced_vpn_eni_gets_our_routes_moved_on_backup() {
    let (dir, new, api) = after_eni_replaced().await;
    let ledger = dir.path().join("ledger.json");
    let before = api.mutating_calls().len();

    let l = Ledger::open(&ledger).unwrap();
    let mut h = Harness::start_with(&new, api.clone(), Reply::None, |a| a.with_ledger(l));
    let adopted = h
        .wait_for("adoption", secs(5), |e| matches!(e, Event::Adopted { .. }))
        .await;
    assert!(matches!(
        adopted,
        Event::Adopted {
            adoption: Adoption::Backup,
            ..
        }
    ));
    h.converged(Via::Backup, secs(10)).await;
    assert_eq!(routes_to(&api.tables(), NEW_ENI), all_managed(&new));
    assert!(routes_to(&api.tables(), ENI).is_empty());
    let calls: Vec<&str> = api.mutating_calls()[before..]
        .iter()
        .map(|c| c.op)
        .collect();
    assert_eq!(calls, ["ReplaceRoute"; 4]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_retarget_keeps_the_old_route_ours_and_is_retried() {
    let (dir, new, api) = after_eni_replaced().await;
    let ledger = dir.path().join("ledger.json");
    // The first ReplaceRoute fails: the ledger already names the new ENI,
    // and must still know the old one, or the route turns foreign for good.
    api.inject_fault(
        "ReplaceRoute",
        CloudError::new(ErrorKind::Transient, None, "connection reset"),
    );
    let l = Ledger::open(&ledger).unwrap();
    let mut h = Harness::start_with(&new, api.clone(), Reply::None, |a| a.with_ledger(l));
    h.converged(Via::Backup, secs(60)).await;
    assert_eq!(routes_to(&api.tables(), NEW_ENI), all_managed(&new));
    assert!(routes_to(&api.tables(), ENI).is_empty());
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Finding(Finding::Foreign { .. }))),
        "our old route was taken for a foreign one"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_replaced_vpn_eni_on_healthy_dx_lets_traffic_return() {
    let (dir, new, api) = after_eni_replaced().await;
    let ledger = dir.path().join("ledger.json");

    let l = Ledger::open(&ledger).unwrap();
    let mut h = Harness::start_with(&new, api.clone(), Reply::All, |a| a.with_ledger(l));
    h.transition(Via::Primary, secs(30)).await;
    h.converged(Via::Primary, secs(5)).await;
    assert!(
        routes_to(&api.tables(), ENI).is_empty(),
        "old routes stranded"
    );
    assert!(routes_to(&api.tables(), NEW_ENI).is_empty());
    h.stop().await;
    // Nothing of ours is left to remember.
    assert!(Ledger::open(&ledger).unwrap().record().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_route_of_ours_dropped_from_the_config_is_deleted_after_saying_so() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    let mut smaller = config.clone();
    smaller.routes.retain(|r| r.route_table_id == TABLE_A);
    h.control.reload(smaller.clone(), None);
    h.wait_for("unmanaged finding", secs(5), |e| {
        matches!(e, Event::Finding(Finding::Unmanaged { route }) if route.route_table_id == TABLE_B)
    })
    .await;
    h.converged(Via::Backup, secs(5)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&smaller));
    assert_eq!(ops(&api, "DeleteRoute"), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_takeover_is_undone_on_failback() {
    let config = config_with("takeover = true");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let destination = "fd00:1::/48".parse().unwrap();
    let transit = Route {
        destination,
        target: Target::Other(TGW.into()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    };
    api.insert_route(TABLE_B, transit.clone()).unwrap();
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.script.set("DX restored", Reply::All);
    h.transition(Via::Primary, secs(30)).await;
    h.converged(Via::Primary, secs(5)).await;
    assert!(our_routes(&api.tables()).is_empty());
    let b = api.tables().into_iter().find(|t| t.id == TABLE_B).unwrap();
    assert!(
        b.routes.contains(&transit),
        "the transit gateway route was not given back: {:?}",
        b.routes
    );
    assert_eq!(ops(&api, "DeleteRoute"), 3);
    assert_eq!(ops(&api, "ReplaceRoute"), 2);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pass_never_announces_a_path_that_is_no_longer_wanted() {
    let config = config_with("fall = 1\nrise = 1\nhold_down = \"0s\"");
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()).slow_writes(secs(3)));
    let mut h = Harness::start(&config, api, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(3)).await;
    // The creates take 3 s; DX is back after one.
    h.script.set("DX restored", Reply::All);
    let back = h.transition(Via::Primary, secs(3)).await;
    h.converged(Via::Primary, secs(20)).await;
    let after_back = h
        .events
        .iter()
        .skip_while(|(_, e)| !matches!(e, Event::Transition(t) if t.at == back.at))
        .collect::<Vec<_>>();
    assert!(
        !after_back.iter().any(|(_, e)| matches!(
            e,
            Event::Converged {
                path: Via::Backup,
                ..
            }
        )),
        "announced Backup after the path became Primary"
    );
    assert!(our_routes(&world.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ec2_unreachable_at_startup_never_stops_probing() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()));
    api.fail_reads(Some(CloudError::new(
        ErrorKind::Transient,
        None,
        "dispatch failure: connection refused",
    )));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.wait_for("start", secs(1), |e| matches!(e, Event::Started { .. }))
        .await;
    h.run_for(secs(120)).await;
    assert!(h.rounds() >= 119, "only {} rounds", h.rounds());
    assert_eq!(count(&h.events, |e| matches!(e, Event::Adopted { .. })), 0);
    assert_eq!(api.writes_started(), 0, "acted before reading the tables");
    // DX has been down all along: once the tables can be read, that
    // evidence fails over at once.
    api.fail_reads(None);
    h.wait_for("adoption", secs(31), |e| matches!(e, Event::Adopted { .. }))
        .await;
    let adopted_at = tokio::time::Instant::now();
    let t = h.transition(Via::Backup, secs(2)).await;
    assert!(t.at - adopted_at <= secs(1));
    h.converged(Via::Backup, secs(5)).await;
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_are_retried_slowly_not_in_a_fast_loop() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world));
    api.fail_reads(Some(CloudError::from_code(
        "UnauthorizedOperation",
        "You are not authorized to perform this operation.",
    )));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.run_for(secs(600)).await;
    let reads = api.reads();
    // About a minute apart at first, then up to five: never a fast loop.
    assert!((2..=25).contains(&reads), "{reads} reads in 10 minutes");
    assert!(h.rounds() >= 599);
    h.stop().await;
}

/// Five tables × four destinations: more routes than calls in flight.
fn wide_config() -> Config {
    let mut config = config();
    let template = config.routes.clone();
    config.routes.clear();
    for t in 0..5 {
        for (i, dest) in ["10.1.0.0/16", "10.2.0.0/16", "fd00:1::/48", "fd00:2::/48"]
            .iter()
            .enumerate()
        {
            config.routes.push(ManagedRoute {
                route_table_id: format!("rtb-0{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}{t}"),
                destination: dest.parse().unwrap(),
                target_eni: template[i % template.len()].target_eni.clone(),
            });
        }
    }
    config
}

#[tokio::test(start_paused = true)]
async fn shutdown_in_the_middle_of_a_pass_starts_no_new_call() {
    let config = wide_config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()).slow_writes(secs(2)));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    h.run_for(std::time::Duration::from_millis(500)).await;
    let in_flight = api.writes_started();
    assert!(in_flight > 0 && in_flight < 20, "{in_flight} calls started");
    let reads = api.reads();
    h.stop().await;
    assert_eq!(
        api.writes_started(),
        in_flight,
        "a call started after shutdown"
    );
    assert_eq!(api.reads(), reads, "a read started after shutdown");
    // The calls in flight finished; nothing else changed.
    assert_eq!(our_routes(&world.tables()).len(), in_flight);
}

#[tokio::test(start_paused = true)]
async fn a_foreign_route_swapped_in_before_our_delete_is_left_alone() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let fired = Arc::new(AtomicBool::new(false));
    let f = fired.clone();
    let slot = config.routes[0].clone();
    let transit = Route {
        destination: slot.destination,
        target: Target::Other(TGW.into()),
        origin: Origin::CreateRoute,
        state: RouteState::Active,
    };
    let t = transit.clone();
    // A single-table read is the re-read just before a delete: somebody
    // swaps our route for theirs right between our plan and our delete.
    let api = Arc::new(Knobs::new(world.clone()).before_read(move |ids, w| {
        if ids == [TABLE_A.to_string()] && !f.swap(true, Ordering::SeqCst) {
            w.remove_static_route(&slot.route_table_id, slot.destination);
            w.insert_route(&slot.route_table_id, t.clone()).unwrap();
        }
    }));
    let mut h = Harness::start(&config, api, Reply::None);
    h.converged(Via::Backup, secs(10)).await;
    h.script.set("DX restored", Reply::All);
    h.converged(Via::Primary, secs(30)).await;
    assert!(fired.load(Ordering::SeqCst), "the re-read never happened");
    let a = world
        .tables()
        .into_iter()
        .find(|t| t.id == TABLE_A)
        .unwrap();
    assert!(a.routes.contains(&transit), "deleted a foreign route");
    assert_eq!(ops(&world, "DeleteRoute"), 3);
    assert!(our_routes(&world.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_pause_in_the_middle_of_a_pass_starts_no_new_call() {
    let config = wide_config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()).slow_writes(secs(2)));
    let mut h = Harness::start(&config, api.clone(), Reply::None);
    h.transition(Via::Backup, secs(10)).await;
    h.run_for(std::time::Duration::from_millis(500)).await;
    let in_flight = api.writes_started();
    assert!(in_flight > 0 && in_flight < 20, "{in_flight} calls started");
    let answer = h
        .control
        .operate(route_failover::agent::OperatorAction::Pause, None)
        .await;
    assert!(answer.is_some_and(|a| a.starts_with("paused")));
    h.run_for(secs(30)).await;
    assert_eq!(
        api.writes_started(),
        in_flight,
        "a call started after the pause"
    );
    // The calls in flight finished; nothing else changed.
    assert_eq!(our_routes(&world.tables()).len(), in_flight);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_dead_reconciler_ends_the_agent_instead_of_probing_on_uselessly() {
    let config = config();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = reads.clone();
    // A bug in the reconciler, simulated: its second read panics.
    let api = Arc::new(Knobs::new(world.clone()).before_read(move |_, _| {
        if r.fetch_add(1, Ordering::SeqCst) == 1 {
            panic!("a bug in the reconciler");
        }
    }));
    let h = Harness::start(&config, api, Reply::All);
    let error = h.stop_with_error().await;
    assert!(error.contains("reconciler task failed"), "{error}");
    assert!(our_routes(&world.tables()).is_empty(), "routes touched");
}

#[tokio::test(start_paused = true)]
async fn no_route_is_created_that_the_ledger_could_not_record() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let ledger = Ledger::open(&state.join("routes.json")).unwrap();
    // The state directory turns into a file under the running agent: no
    // write can succeed there, even as root.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, b"").unwrap();
    let mut h = Harness::start_with(&config, api.clone(), Reply::None, |a| a.with_ledger(ledger));
    h.transition(Via::Backup, secs(10)).await;
    h.wait_for(
        "diverged",
        secs(10),
        |e| matches!(e, Event::Diverged { why, .. } if why.contains("routes.json")),
    )
    .await;
    assert!(
        api.mutating_calls().is_empty(),
        "{:?}",
        api.mutating_calls()
    );
    h.stop().await;
}
