//! The backup gate and the failback guard, end to end through the agent
//! on the in-memory EC2 backend, with the scripted prober (both groups)
//! on tokio's paused clock.

mod common;

use std::sync::Arc;

use common::apis::Knobs;
use common::*;
use route_failover::backup::{Appliance, EniProblem};
use route_failover::cloud::memory::{MemoryRouteApi, SEED_VGW};
use route_failover::cloud::{CloudError, ErrorKind};
use route_failover::config::Config;
use route_failover::decide::{Alarms, BackupState};
use route_failover::events::Event;
use route_failover::fsm::Via;
use route_failover::plan::Finding;
use route_failover::probe::scripted::Reply;
use tokio::time::Instant;

/// The harness's config (1 s rounds, fall 3, rise 5, hold-down 10 s,
/// resync 30 s, two tables × two destinations) with `[backup]` = `backup`.
fn config_backup(backup: &str) -> Config {
    config_backup_with(backup, "")
}

/// As [`config_backup`], with `failover` appended to `[failover]`.
fn config_backup_with(backup: &str, failover: &str) -> Config {
    config_with_section(&format!("[backup]\n{backup}\n"), failover)
}

/// Two targets over the VPN, backup fall 2 and rise 2.
fn probed() -> Config {
    config_backup("targets = [\"198.19.0.1\", \"198.19.0.2\"]\nfall = 2\nrise = 2")
}

fn alarms(events: &[(Instant, Event)]) -> Vec<Alarms> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Alarms(a) => Some(*a),
            _ => None,
        })
        .collect()
}

fn transitions(events: &[(Instant, Event)]) -> Vec<(Via, Via)> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Transition(t) => Some((t.from, t.to)),
            _ => None,
        })
        .collect()
}

fn raised(what: &str) -> impl Fn(&Event) -> bool + '_ {
    move |e| match e {
        Event::Alarms(a) => match what {
            "both_down" => a.both_down,
            "no_redundancy" => a.no_redundancy,
            _ => !a.both_down && !a.no_redundancy,
        },
        _ => false,
    }
}

/// Every managed destination of every table, as the memory world names them.
fn destinations(config: &Config) -> Vec<(String, ipnet::IpNet)> {
    config
        .routes
        .iter()
        .map(|r| (r.route_table_id.clone(), r.destination))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn an_eni_detached_on_primary_holds_the_failover_until_it_is_back() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    assert!(
        h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::ApplianceChecked(Appliance::Ok))),
        "the appliance is checked as soon as the tables are read"
    );

    // The appliance loses its ENI; the VPN probes still answer (say, the
    // tunnel is up from another interface): the ENI check alone sees it.
    api.detach_network_interface(ENI).unwrap();
    let detached = Instant::now();
    h.wait_for("no redundancy", secs(31), raised("no_redundancy"))
        .await;
    assert!(Instant::now() - detached <= secs(30), "within one resync");
    let checked = h.events.iter().rev().find_map(|(_, e)| match e {
        Event::ApplianceChecked(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(
        checked,
        Some(Appliance::Failed(vec![(
            ENI.to_string(),
            EniProblem::NotInUse {
                status: "available".into()
            }
        )]))
    );

    // DX fails: the state machine says Backup, the decision stays.
    h.script.set("DX cut", Reply::None);
    h.wait_for("both paths down", secs(5), raised("both_down"))
        .await;
    h.run_for(secs(20)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a dead ENI"
    );
    assert!(api.mutating_calls().is_empty());

    // The ENI is attached again: failover at the next appliance check.
    api.attach_network_interface(ENI).unwrap();
    let t = h.transition(Via::Backup, secs(31)).await;
    h.converged(Via::Backup, secs(2)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    assert!(!alarms(&h.events).last().unwrap().both_down);
    assert!(t.at - detached > secs(30));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn both_down_no_failover_then_the_backup_returns_within_its_rise() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;

    // The VPN goes first: after backup.fall (2) rounds, no redundancy.
    h.script.set_backup("VPN cut", Reply::None);
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    let state = h.events.iter().rev().find_map(|(_, e)| match e {
        Event::BackupRound { state, .. } => Some(*state),
        _ => None,
    });
    assert_eq!(state, Some(BackupState::Down));

    // Then DX: no failover, "both paths down".
    h.script.set("DX cut", Reply::None);
    h.wait_for("both paths down", secs(4), raised("both_down"))
        .await;
    h.run_for(secs(30)).await;
    assert!(transitions(&h.events).is_empty());
    assert!(
        api.mutating_calls().is_empty(),
        "a route changed while both paths were down"
    );
    // The alarm is raised once, not every round.
    let both = alarms(&h.events).iter().filter(|a| a.both_down).count();
    assert_eq!(both, 1);

    // The VPN comes back while DX is still cut: failover after exactly
    // backup.rise (2) up rounds, not the primary's fall again.
    h.script.set_backup("VPN back", Reply::All);
    let back = Instant::now();
    let seen = h.events.len();
    let t = h.transition(Via::Backup, secs(3)).await;
    let waited = t.at - back;
    assert!(
        waited <= secs(2),
        "failover {waited:?} after the backup returned"
    );
    let up_rounds = h.events[seen..]
        .iter()
        .filter(|(_, e)| matches!(e, Event::BackupRound { summary, .. } if summary.up))
        .count();
    assert_eq!(up_rounds, 2, "failover after backup.rise up rounds");
    h.converged(Via::Backup, secs(2)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn on_backup_a_dying_backup_only_raises_the_alarm() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(5)).await;
    h.converged(Via::Backup, secs(2)).await;
    let calls = api.mutating_calls().len();

    // The appliance is terminated with its ENI: our routes turn blackhole.
    api.delete_network_interface(ENI).unwrap();
    h.wait_for("both paths down", secs(31), raised("both_down"))
        .await;
    h.run_for(secs(40)).await;
    assert!(h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Finding(Finding::Blackhole { .. }))));
    // Traffic is dropped: not "converged".
    assert!(h.events.iter().any(|(_, e)| matches!(
        e,
        Event::Diverged {
            path: Via::Backup,
            ..
        }
    )));
    // Nothing better exists: stay (moving back onto a dead DX helps no one).
    assert_eq!(transitions(&h.events), [(Via::Primary, Via::Backup)]);
    assert_eq!(api.mutating_calls().len(), calls);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_dx_route_holds_the_failback_until_it_reappears() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(5)).await;
    h.converged(Via::Backup, secs(2)).await;

    // While on Backup, BGP withdraws every DX route (say, the VGW detached).
    for (table, dest) in destinations(&config) {
        api.withdraw_propagated(&table, dest).unwrap();
    }
    // The probes see DX healthy again: the decision is Primary...
    h.script.set("DX back", Reply::All);
    h.transition(Via::Primary, secs(15)).await;
    // ...but deleting our routes would leave no route at all: held.
    h.wait_for("the failback guard", secs(2), |e| {
        matches!(e, Event::Finding(Finding::FailbackHeld { .. }))
    })
    .await;
    h.run_for(secs(65)).await;
    assert_eq!(our_routes(&api.tables()), all_managed(&config));
    assert!(
        !api.mutating_calls().iter().any(|c| c.op == "DeleteRoute"),
        "deleted a route with no DX route behind it"
    );

    // BGP comes back for table A only: A fails back at the next resync, B stays held.
    for (table, dest) in destinations(&config) {
        if table == TABLE_A {
            api.propagate(&table, dest, SEED_VGW).unwrap();
        }
    }
    h.run_for(secs(31)).await;
    let left: Vec<String> = our_routes(&api.tables());
    assert!(left.iter().all(|r| r.starts_with(TABLE_B)), "{left:?}");
    assert_eq!(left.len(), 2);

    for (table, dest) in destinations(&config) {
        if table == TABLE_B {
            api.propagate(&table, dest, SEED_VGW).unwrap();
        }
    }
    h.converged(Via::Primary, secs(31)).await;
    assert!(our_routes(&api.tables()).is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn not_required_fails_over_onto_a_dead_backup_and_says_so() {
    let config = probed();
    let mut config = config;
    config.backup.as_mut().unwrap().required = false;
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::None);
    h.converged(Via::Primary, secs(5)).await;
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(5)).await;
    assert!(alarms(&h.events).last().unwrap().both_down);
    h.converged(Via::Backup, secs(2)).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn appliance_only_watching_probes_nothing_over_the_vpn() {
    let config = config_backup("");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.run_for(secs(5)).await;
    assert!(!h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::BackupRound { .. })));
    let standing = h.events.iter().rev().find_map(|(_, e)| match e {
        Event::Round { standing, .. } => Some(standing.backup),
        _ => None,
    });
    assert_eq!(
        standing,
        Some(BackupState::Up),
        "the ENI check alone decides"
    );
    // Noticed at the next resync; DX fails after that.
    api.detach_network_interface(ENI).unwrap();
    h.wait_for("no redundancy", secs(31), raised("no_redundancy"))
        .await;
    h.script.set("DX cut", Reply::None);
    h.run_for(secs(10)).await;
    assert!(transitions(&h.events).is_empty());
    assert!(alarms(&h.events).last().unwrap().both_down);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_the_section_nothing_is_checked_and_failover_is_as_before() {
    let config = config();
    assert!(config.backup.is_none());
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    // Even a detached ENI does not hold the failover: nothing watches it.
    api.detach_network_interface(ENI).unwrap();
    h.run_for(secs(35)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(5)).await;
    let events = h.stop().await;
    assert!(!api
        .calls()
        .iter()
        .any(|c| c.op == "DescribeNetworkInterfaces"));
    assert!(alarms(&events).is_empty());
}

#[tokio::test(start_paused = true)]
async fn one_describe_per_resync_covers_every_eni() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.run_for(secs(95)).await;
    let describes = api
        .calls()
        .iter()
        .filter(|c| c.op == "DescribeNetworkInterfaces")
        .count();
    // At start, then every 30 s: 0, 30, 60, 90.
    assert_eq!(describes, 4);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_adds_the_section_checks_the_appliance_at_once() {
    let config = config();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start(&config, api.clone(), Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    api.detach_network_interface(ENI).unwrap();
    h.run_for(secs(5)).await;
    assert!(alarms(&h.events).is_empty(), "nothing watched yet");

    // [backup] with the ENI check alone: checked right after the reload,
    // not a resync later.
    h.control.reload(config_backup(""), None);
    h.wait_for("no redundancy", secs(2), raised("no_redundancy"))
        .await;
    h.script.set("DX cut", Reply::None);
    h.run_for(secs(10)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a dead ENI"
    );

    // And a reload that drops it again lets the failover go ahead.
    h.control.reload(config, None);
    h.transition(Via::Backup, secs(2)).await;
    h.stop().await;
}

/// The VPN dies, then DX for longer than `fall`: held. DX recovers, then
/// the VPN: the held failover must have left no trace (no hold-down, no
/// manual wait, no flap count), so nothing moves and the alarm clears.
async fn held_failover_leaves_no_trace(failover: &str) {
    let config = config_backup_with(
        "targets = [\"198.19.0.1\", \"198.19.0.2\"]\nfall = 2\nrise = 2",
        failover,
    );
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set_backup("VPN cut", Reply::None);
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    // Several DX blips, each longer than fall (3): every one held.
    for _ in 0..3 {
        h.script.set("DX cut", Reply::None);
        h.wait_for("both paths down", secs(5), raised("both_down"))
            .await;
        h.run_for(secs(3)).await;
        h.script.set("DX back", Reply::All);
        h.wait_for(
            "DX healthy again",
            secs(3),
            |e| matches!(e, Event::Alarms(a) if !a.both_down),
        )
        .await;
        h.run_for(secs(5)).await;
    }
    let last = alarms(&h.events).last().copied();
    assert_eq!(
        last.map(|a| (a.both_down, a.no_redundancy)),
        Some((false, true)),
        "DX carries the traffic again: no redundancy, not both down"
    );
    // The VPN returns while DX is healthy: nothing to fail over for.
    h.script.set_backup("VPN back", Reply::All);
    h.run_for(secs(30)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over with DX healthy: {:?}",
        transitions(&h.events)
    );
    assert!(
        !h.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Pinned(true))),
        "held failovers counted as flaps"
    );
    assert!(api.mutating_calls().is_empty());
    assert_eq!(
        alarms(&h.events)
            .last()
            .map(|a| (a.both_down, a.no_redundancy)),
        Some((false, false))
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_held_failover_starts_no_hold_down() {
    held_failover_leaves_no_trace("hold_down = \"600s\"").await;
}

#[tokio::test(start_paused = true)]
async fn a_held_failover_waits_for_no_manual_failback() {
    held_failover_leaves_no_trace("failback = \"manual\"").await;
}

#[tokio::test(start_paused = true)]
async fn held_failovers_do_not_count_as_flaps() {
    held_failover_leaves_no_trace("max_failovers = 1\nflap_window = \"1h\"").await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_of_the_backup_section_keeps_a_known_down_backup_down() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set_backup("VPN cut", Reply::None);
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    // Only `required`'s neighbour changes: the same targets, a new rise.
    let reloaded = config_backup("targets = [\"198.19.0.1\", \"198.19.0.2\"]\nfall = 2\nrise = 3");
    h.script.set("DX cut", Reply::None);
    h.wait_for("both paths down", secs(5), raised("both_down"))
        .await;
    h.control.reload(reloaded, None);
    h.run_for(secs(10)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a backup known down before the reload"
    );
    assert_eq!(alarms(&h.events).last().map(|a| a.both_down), Some(true));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_reload_with_new_backup_targets_starts_a_down_backup_down() {
    let config = probed();
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set_backup("VPN cut", Reply::None);
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    // Other targets: no evidence for them yet, but the backup was down.
    h.script.set("DX cut", Reply::None);
    h.wait_for("both paths down", secs(5), raised("both_down"))
        .await;
    h.control.reload(
        config_backup("targets = [\"198.19.0.3\"]\nfall = 2\nrise = 2"),
        None,
    );
    h.run_for(secs(10)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a backup known down before the reload"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_backup_failing_as_long_as_dx_holds_the_failover_despite_a_longer_fall() {
    // backup.fall 5 > failover.fall 3: a common cause (the site is gone)
    // takes both at once, and DX is judged first.
    let config = config_backup("targets = [\"198.19.0.1\", \"198.19.0.2\"]\nfall = 5\nrise = 2");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set_backup("VPN cut", Reply::None);
    h.script.set("DX cut", Reply::None);
    h.run_for(secs(10)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a VPN that had failed as many rounds as DX"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn blackholed_routes_alone_make_the_backup_down_while_describe_hangs() {
    let config = probed();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set("DX cut", Reply::None);
    h.transition(Via::Backup, secs(5)).await;
    h.converged(Via::Backup, secs(2)).await;
    // DescribeNetworkInterfaces now hangs (the last verdict, ok, stays)
    // and the ENI is deleted: only the blackholed routes tell.
    api.slow_describes(secs(3600));
    world.delete_network_interface(ENI).unwrap();
    h.wait_for("both paths down", secs(31), raised("both_down"))
        .await;
    let failed = h
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::ApplianceChecked(a) if *a != Appliance::Ok));
    assert!(
        !failed,
        "the appliance check could not run: the blackholes alone decide"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_appliance_check_does_not_delay_a_failover() {
    let config = probed();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let api = Arc::new(Knobs::new(world.clone()));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    // The next check (at the resync, 30 s) hangs for two minutes.
    api.slow_describes(secs(120));
    h.run_for(secs(32)).await;
    h.script.set("DX cut", Reply::None);
    let cut = Instant::now();
    h.transition(Via::Backup, secs(5)).await;
    h.converged(Via::Backup, secs(5)).await;
    let took = Instant::now() - cut;
    assert!(took <= secs(5), "converged {took:?} after the cut");
    assert_eq!(our_routes(&world.tables()), all_managed(&config));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_start_during_a_dx_outage_checks_the_appliance_before_any_failover() {
    let config = probed();
    let world = Arc::new(MemoryRouteApi::seeded(&config.routes));
    world.detach_network_interface(ENI).unwrap();
    let api = Arc::new(Knobs::new(world.clone()));
    // EC2 unreachable at first while DX is down: fall rounds pile up.
    api.fail_reads(Some(CloudError::new(
        ErrorKind::Transient,
        None,
        "connection refused",
    )));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::None, Reply::All);
    h.run_for(secs(6)).await;
    api.fail_reads(None);
    h.wait_for("adopted", secs(40), |e| matches!(e, Event::Adopted { .. }))
        .await;
    h.run_for(secs(10)).await;
    assert!(
        transitions(&h.events).is_empty(),
        "failed over onto a detached ENI never checked"
    );
    assert!(world.mutating_calls().is_empty());
    assert!(alarms(&h.events).iter().any(|a| a.both_down));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn ipv6_backup_targets_hold_a_failover_like_ipv4_ones() {
    let config = config_backup("targets = [\"fd00:9::1\", \"fd00:9::2\"]\nfall = 2\nrise = 2");
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let mut h = Harness::start_backup(&config, api.clone(), Reply::All, Reply::All);
    h.converged(Via::Primary, secs(5)).await;
    h.script.set_backup("VPN cut", Reply::None);
    h.wait_for("no redundancy", secs(3), raised("no_redundancy"))
        .await;
    h.script.set("DX cut", Reply::None);
    h.wait_for("both paths down", secs(5), raised("both_down"))
        .await;
    h.run_for(secs(10)).await;
    assert!(transitions(&h.events).is_empty());
    h.script.set_backup("VPN back", Reply::All);
    h.transition(Via::Backup, secs(3)).await;
    h.stop().await;
}
