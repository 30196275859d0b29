//! `route-failover demo`: the real agent (state machine, planner, reconciler)
//! against the in-memory EC2 backend, driven by a scripted, labelled probe
//! source. No AWS account, no root, no packets.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::cloud::dry_run::aws_cli;
use crate::cloud::memory::{MemoryRouteApi, SEED_VGW};
use crate::config::Config;
use crate::events::{Event, Outcome};
use crate::fsm::Via;
use crate::model::{Origin, RouteTable};
use crate::plan::Finding;
use crate::probe::scripted::{Phase, Reply, ScriptedProber};

/// The demo's configuration, embedded in the binary.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// The demo gives up if the story has not finished by then.
const DEADLINE: Duration = Duration::from_secs(25);

/// The story: a short loss burst that must not fail over, a real cut that
/// must — but only once the VPN answers, for it is down when DX is cut —
/// a recovery interrupted by one bad round, then a clean recovery whose
/// failback waits for the DX route to come back.
fn script() -> Vec<Phase> {
    vec![
        Phase::new("DX healthy", 6, Reply::All),
        Phase::new(
            "loss burst: 2 silent rounds, fewer than fall",
            2,
            Reply::None,
        ),
        Phase::new("DX healthy", 4, Reply::All),
        Phase::new(
            "one on-prem host down, the other answers",
            3,
            Reply::Targets(vec![false, true]),
        ),
        Phase::new("DX cut: both targets silent", 14, Reply::None),
        Phase::new("DX restored", 3, Reply::All),
        Phase::new("one bad round while recovering", 1, Reply::None),
        Phase::new("DX restored", 1, Reply::All),
    ]
}

/// The VPN's side of the story, round by round beside [`script`]: it
/// fails three rounds before DX is cut and returns six rounds into the cut.
fn backup_script() -> Vec<Phase> {
    vec![
        Phase::new("VPN up", 12, Reply::All),
        Phase::new("VPN DOWN: tunnel lost", 9, Reply::None),
        Phase::new("VPN up", 1, Reply::All),
    ]
}

/// Rounds the demo waits, after the failback guard holds, before BGP
/// advertises the DX routes again.
const BGP_RETURNS_AFTER: u32 = 8;

/// What the demo saw, for its closing lines and for tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    pub rounds: u64,
    pub failovers: u32,
    pub failbacks: u32,
    pub route_calls: usize,
    pub repaired_drift: bool,
    /// DX failed while the VPN was down: the failover was held, the alarm raised.
    pub held_failover: bool,
    /// The failback was held while no DX route was left in the tables.
    pub held_failback: bool,
}

/// Runs the demo, writing its timeline to `out`.
pub async fn run(out: &mut (impl Write + Send)) -> anyhow::Result<DemoSummary> {
    let config = Config::parse(DEMO_CONFIG, Path::new("<embedded demo config>"))
        .context("the embedded demo config is invalid")?;
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let (prober, _) =
        ScriptedProber::new(config.probe.targets.clone(), config.probe.count, script());
    let backup = config
        .backup
        .as_ref()
        .context("the embedded demo config has no [backup]")?;
    let prober = prober.with_backup(backup.targets.clone(), backup.count, backup_script());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let agent = Agent::new(config.clone(), Box::new(prober), api.clone()).with_events(tx);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));

    let p = &config.probe;
    let f = &config.policy;
    writeln!(out, "route-failover demo")?;
    writeln!(
        out,
        "  real agent loop, in-memory EC2 backend, SCRIPTED probe source (synthetic: no packets are sent)"
    )?;
    writeln!(
        out,
        "  profile: interval {}, {} targets x {} echoes, fall {}, rise {}, hold_down {}, resync {}",
        humantime::format_duration(p.interval),
        p.targets.len(),
        p.count,
        f.fall,
        f.rise,
        humantime::format_duration(f.hold_down),
        humantime::format_duration(config.reconcile.resync_interval),
    )?;
    writeln!(out, "  managed routes:")?;
    for r in &config.routes {
        writeln!(out, "    {r}")?;
    }
    writeln!(out)?;

    let start = Instant::now();
    let stamp = |at: Instant| format!("t=+{:>5.2}s", at.duration_since(start).as_secs_f64());
    let mut summary = DemoSummary::default();
    let mut broke_by_hand = false;
    let mut bgp_withdrawn = false;
    let mut bgp_returns_in: Option<u32> = None;
    let mut last_backup: Option<(bool, crate::decide::BackupState)> = None;
    let mut last_appliance = None;
    let deadline = tokio::time::sleep(DEADLINE);
    tokio::pin!(deadline);
    let finished = loop {
        let event = tokio::select! {
            () = &mut deadline => break false,
            e = rx.recv() => match e { Some(e) => e, None => break false },
        };
        let now = Instant::now();
        match event {
            Event::Started { .. } => writeln!(out, "{}  start     probing", stamp(now))?,
            Event::Adopted { adoption, ours } => writeln!(
                out,
                "{}  adopted   path {adoption} ({} of our routes found in the tables)",
                stamp(now),
                ours.len()
            )?,
            Event::Settled { reason } => {
                writeln!(out, "{}  settled   on Backup: {reason}", stamp(now))?;
            }
            Event::Diverged { path, why } => {
                writeln!(out, "{}      not converged on {path}: {why}", stamp(now))?;
            }
            Event::Round {
                number,
                at,
                summary: s,
                label,
                path,
                ..
            } => {
                summary.rounds = number;
                if let Some(left) = bgp_returns_in.as_mut() {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        bgp_returns_in = None;
                        for r in &config.routes {
                            let _ = api.propagate(&r.route_table_id, r.destination, SEED_VGW);
                        }
                        writeln!(
                            out,
                            "{}  !!! simulated BGP: the DX routes are propagated again",
                            stamp(now)
                        )?;
                    }
                }
                writeln!(
                    out,
                    "{}  round {number:>2}  {:<4}  {:<40} path {path:<7}  [{}]",
                    stamp(at),
                    if s.up { "up" } else { "DOWN" },
                    s.to_string(),
                    label.as_deref().unwrap_or("icmp")
                )?;
            }
            Event::Transition(t) => {
                if t.to == Via::Backup {
                    summary.failovers += 1;
                } else {
                    summary.failbacks += 1;
                }
                if t.to == Via::Backup && !bgp_withdrawn {
                    // DX is cut: BGP withdraws its routes, and (to show the
                    // guard) they stay away after DX answers again.
                    bgp_withdrawn = true;
                    for r in &config.routes {
                        let _ = api.withdraw_propagated(&r.route_table_id, r.destination);
                    }
                    writeln!(
                        out,
                        "{}  !!! simulated BGP: the DX routes are withdrawn and will stay away past the failback",
                        stamp(now)
                    )?;
                }
                writeln!(
                    out,
                    "{}  >>> TRANSITION {} -> {}: {}",
                    stamp(t.at),
                    t.from,
                    t.to,
                    t.reason
                )?;
            }
            Event::RouteChange {
                action,
                result,
                latency,
            } => {
                summary.route_calls += 1;
                let result = match result {
                    Ok(Outcome::Done) => "ok".to_string(),
                    Ok(Outcome::AlreadyConverged) => "already converged".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                };
                writeln!(
                    out,
                    "{}      route  {} -> {result} ({:.1}ms)",
                    stamp(now),
                    aws_cli(&action, None),
                    latency.as_secs_f64() * 1000.0
                )?;
            }
            Event::Converged {
                path,
                since_transition,
            } => {
                match since_transition {
                    Some(d) => writeln!(
                        out,
                        "{}      converged on {path}, {:.0}ms after the transition",
                        stamp(now),
                        d.as_secs_f64() * 1000.0
                    )?,
                    None => writeln!(out, "{}      converged on {path}", stamp(now))?,
                }
                if path == Via::Backup && !broke_by_hand {
                    // Show drift repair: somebody deletes one of our routes by hand.
                    broke_by_hand = true;
                    let r = &config.routes[0];
                    api.remove_static_route(&r.route_table_id, r.destination);
                    writeln!(
                        out,
                        "{}  !!! simulated hand edit: {} {} deleted outside the agent",
                        stamp(now),
                        r.route_table_id,
                        r.destination
                    )?;
                }
                if path == Via::Primary && summary.failbacks > 0 {
                    break true;
                }
            }
            Event::Finding(finding) => {
                if matches!(finding, Finding::FailbackHeld { .. }) && !summary.held_failback {
                    summary.held_failback = true;
                    bgp_returns_in = Some(BGP_RETURNS_AFTER);
                }
                writeln!(out, "{}  note     {finding}", stamp(now))?;
            }
            Event::Pinned(pinned) => writeln!(out, "{}  flap damping pinned={pinned}", stamp(now))?,
            Event::ApiError { op, error } => {
                writeln!(out, "{}  api error {op}: {error}", stamp(now))?;
            }
            Event::Overran => writeln!(out, "{}  round overran its interval", stamp(now))?,
            Event::BackupRound {
                summary: s, state, ..
            } => {
                // Only when it changes: one line per round is enough.
                if last_backup != Some((s.up, state)) {
                    last_backup = Some((s.up, state));
                    writeln!(
                        out,
                        "{}            backup round {:<4}  {:<32} backup path {state}",
                        stamp(now),
                        if s.up { "up" } else { "DOWN" },
                        s.to_string()
                    )?;
                }
            }
            Event::ApplianceChecked(appliance) => {
                if last_appliance.as_ref() != Some(&appliance) {
                    writeln!(out, "{}  appliance ENI check: {appliance}", stamp(now))?;
                    last_appliance = Some(appliance);
                }
            }
            Event::Reloaded => writeln!(out, "{}  configuration reloaded", stamp(now))?,
            Event::Peers(view) => writeln!(out, "{}  pair      {view}", stamp(now))?,
            Event::PairFinding { text, .. } => {
                writeln!(out, "{}  pair      !! {text}", stamp(now))?
            }
            Event::Alarms(alarms) => {
                if alarms.both_down && summary.failovers == 0 {
                    summary.held_failover = true;
                }
                let text = if alarms.both_down {
                    "ALARM both paths down: DX is down and so is the VPN; staying put"
                } else if alarms.no_redundancy {
                    "ALARM no redundancy: the VPN path is down"
                } else {
                    "alarm cleared: the VPN path is up"
                };
                writeln!(out, "{}  {text}", stamp(now))?;
            }
            Event::Operator { action, .. } => {
                writeln!(out, "{}  operator  {action:?}", stamp(now))?;
            }
            Event::Intended { actions, .. } => {
                for action in actions {
                    writeln!(out, "{}      would {}", stamp(now), aws_cli(&action, None))?;
                }
            }
        }
    };
    shutdown.cancel();
    task.await.context("agent task panicked")??;
    summary.repaired_drift = broke_by_hand
        && api
            .mutating_calls()
            .iter()
            .filter(|c| c.op == "CreateRoute" && c.ok)
            .count()
            > config.routes.len();

    writeln!(out)?;
    writeln!(out, "final route tables (in-memory EC2):")?;
    for table in api.tables() {
        print_table(out, &table)?;
    }
    writeln!(
        out,
        "\n{} rounds, {} failover(s), {} failback(s), {} route calls, drift repaired: {}, \
         failover held while the VPN was down: {}, failback held while no DX route was left: {}",
        summary.rounds,
        summary.failovers,
        summary.failbacks,
        summary.route_calls,
        yes(summary.repaired_drift),
        yes(summary.held_failover),
        yes(summary.held_failback)
    )?;
    if !finished {
        bail!("the demo did not finish within {DEADLINE:?}");
    }
    Ok(summary)
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn print_table(out: &mut impl Write, table: &RouteTable) -> std::io::Result<()> {
    writeln!(out, "  {}", table.id)?;
    for r in &table.routes {
        let origin = match r.origin {
            Origin::CreateRouteTable => "local",
            Origin::CreateRoute => "static",
            Origin::Propagated => "propagated",
        };
        writeln!(
            out,
            "    {:<18} -> {:<24} {origin}",
            r.destination.to_string(),
            r.target.to_string()
        )?;
    }
    Ok(())
}
