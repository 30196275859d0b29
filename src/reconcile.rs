//! The reconciler: compares the desired path with the route tables and
//! makes the calls needed, level-triggered. It runs in a task of its own,
//! so a slow or failing API never delays probing.
//!
//! - At startup it reads the tables (retrying for as long as it takes) and
//!   tells the probe loop what it found, to adopt; until then, and until the
//!   probe loop has evidence, it changes nothing.
//! - Each pass reads every table it may touch in one call (missing tables
//!   are reported, the others still converged), plans, records in the
//!   ownership ledger what it is about to create, and acts. Before removing
//!   a route of ours it re-reads that table, since EC2's DeleteRoute names
//!   no target and would delete whatever sits there.
//! - Between passes, and right before acting, it checks whether the desired
//!   path changed: it never finishes converging a path that is no longer
//!   wanted, and announces convergence only for the path wanted now.
//! - It starts no call once stopped; calls in flight finish (or are
//!   abandoned by the agent after its grace period).
//!
//! Submodules: `pair` (with `[ha]`: the heartbeat and its writes beside
//! a pass's calls, publishing our verdict, assessing the pair, forgetting
//! retired verdicts, judging removals), `pass` (one reconcile: read, plan,
//! act, re-check removals; how it ends), `facts` (the backup facts: the
//! appliance check every resync, the blackhole count).

mod facts;
mod pair;
mod pass;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::backoff;
use crate::backup::{Appliance, BackupFact};
use crate::cloud::{ErrorKind, RouteApi};
use crate::config::{Config, ReconcileConfig};
use crate::events::{Event, Events};
use crate::fsm::Via;
use crate::ha::Ha;
use crate::model::{eni_ids, table_ids, Action, Adoption, ManagedRoute, RouteTable};
use crate::plan;
use crate::state::Ledger;

use facts::ApplianceWatch;
use pair::BeatCall;
use pass::Pass;

/// Longest wait between startup reads of the tables.
const STARTUP_RETRY_CAP: Duration = Duration::from_secs(30);
/// Credentials that are refused do not fix themselves in seconds: retry
/// slowly, starting about a minute apart, up to five minutes.
const AUTH_RETRY_CAP: Duration = Duration::from_secs(300);
const AUTH_RETRY_SKIP: u32 = 6;

/// The path the probe loop wants, with the instant of the transition that
/// asked for it; `None` until there is probe evidence and an adopted path.
pub(crate) type Desired = Option<(Via, Option<Instant>)>;

/// Why a startup check did not pass.
#[derive(Debug, Clone)]
pub enum CheckFailure {
    /// May pass later (the API is unreachable, throttled, …): retried
    /// while probing goes on.
    Retry { kind: ErrorKind, message: String },
    /// Will not pass without an operator (say, the agent's own subnet uses
    /// a managed table): the agent stops.
    Refuse(String),
}

/// A check the reconciler runs before it first reads the tables; no route
/// is touched until it passes.
pub type StartupCheck =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), CheckFailure>> + Send + Sync>;

/// What the tables showed at startup.
#[derive(Debug, Clone)]
pub(crate) struct Adopted {
    pub(crate) adoption: Adoption,
    pub(crate) ours: Vec<ManagedRoute>,
    /// The appliance check made before adopting (with `[backup]`), so that
    /// a start during a DX outage never fails over onto an unchecked ENI.
    pub(crate) appliance: Option<Appliance>,
}

/// What the reconciler manages; replaced whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) routes: Vec<ManagedRoute>,
    pub(crate) table_ids: BTreeSet<String>,
    pub(crate) settings: ReconcileConfig,
    /// The appliance ENIs to check on every resync; empty without `[backup]`.
    pub(crate) appliance_enis: Vec<String>,
}

impl Spec {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            routes: config.routes.clone(),
            table_ids: table_ids(&config.routes).into_iter().collect(),
            settings: config.reconcile.clone(),
            appliance_enis: if config.backup.is_some() {
                eni_ids(&config.routes)
            } else {
                Vec::new()
            },
        }
    }

    /// The ENI the config names for a slot, if it is managed.
    fn current_eni(&self, table: &str, destination: ipnet::IpNet) -> Option<String> {
        self.routes
            .iter()
            .find(|r| r.route_table_id == table && r.destination == destination)
            .map(|r| r.target_eni.clone())
    }
}

/// Delay before retrying after a failure of `kind`.
fn retry_delay(kind: ErrorKind, failures: u32, cap: Duration) -> Duration {
    if kind == ErrorKind::Auth {
        backoff(failures + AUTH_RETRY_SKIP, AUTH_RETRY_CAP)
    } else {
        backoff(failures, cap)
    }
}

pub(crate) struct Reconciler {
    api: Arc<dyn RouteApi>,
    spec: watch::Receiver<Spec>,
    events: Events,
    ledger: Ledger,
    stop: CancellationToken,
    startup_check: Option<StartupCheck>,
    /// No route calls while set (`ctl pause`).
    paused: watch::Receiver<bool>,
    /// The plan last reported as intended (paused or dry run), so each is logged once.
    intended: Vec<Action>,
    /// Findings already reported, so each is logged once while it lasts.
    reported: HashSet<String>,
    /// When the transition now being converged happened.
    transition_at: Option<Instant>,
    /// Where the backup facts (appliance check, blackholes) go: the probe loop.
    facts: Option<mpsc::UnboundedSender<BackupFact>>,
    /// The blackhole count last sent.
    blackholes: Option<usize>,
    /// With `[ha]`: our verdict's publication and the peers' verdicts.
    ha: Option<Ha>,
    /// The reason given with our published verdict.
    verdict_reason: Option<watch::Receiver<String>>,
    /// The path the tables are converged on: our own, or the pair's.
    effective: Option<Via>,
    /// A heartbeat's write in flight, polled by whichever wait runs.
    beat_call: Option<BeatCall>,
    /// Our own path, as the probe loop last asked for it.
    ours: Option<Via>,
}

impl Reconciler {
    pub(crate) fn new(
        api: Arc<dyn RouteApi>,
        spec: watch::Receiver<Spec>,
        events: Events,
        ledger: Ledger,
        stop: CancellationToken,
        startup_check: Option<StartupCheck>,
        paused: watch::Receiver<bool>,
    ) -> Self {
        Self {
            api,
            spec,
            events,
            ledger,
            stop,
            startup_check,
            paused,
            intended: Vec::new(),
            reported: HashSet::new(),
            transition_at: None,
            facts: None,
            blackholes: None,
            ha: None,
            verdict_reason: None,
            effective: None,
            beat_call: None,
            ours: None,
        }
    }

    /// Sends what it learns of the backup (appliance check, blackholed
    /// routes) to `facts`, for the probe loop's judge to decide on.
    pub(crate) fn with_facts(mut self, facts: mpsc::UnboundedSender<BackupFact>) -> Self {
        self.facts = Some(facts);
        self
    }

    /// Converges on the pair's combined path instead of our own, publishing
    /// our verdict (with the latest reason from `reason`) as the anchor's tag.
    pub(crate) fn with_ha(mut self, ha: Ha, reason: watch::Receiver<String>) -> Self {
        self.ha = Some(ha);
        self.verdict_reason = Some(reason);
        self
    }

    /// Passes the startup check and reads the tables, retrying until it
    /// can; reports what it found (or why it must stop) on `adopted`, then
    /// converges the tables on the desired path until stopped.
    pub(crate) async fn run(
        mut self,
        mut desired: watch::Receiver<Desired>,
        adopted: oneshot::Sender<Result<Adopted, String>>,
    ) {
        match self.pass_startup_check().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(refusal) => {
                let _ = adopted.send(Err(refusal));
                return;
            }
        }
        let Some(observed) = self.read_until_ok().await else {
            return;
        };
        if let Some(ha) = self.ha.as_mut() {
            ha.observe(&observed);
        }
        let spec = self.spec.borrow().clone();
        self.tidy_ledger(&spec, &observed);
        let record = self.ledger.record();
        let mut watcher = ApplianceWatch {
            api: Arc::clone(&self.api),
            events: self.events.clone(),
            unread: false,
        };
        let appliance = if self.facts.is_some() {
            watcher.check(&spec.appliance_enis).await
        } else {
            None
        };
        let mut adoption = plan::adopt(&spec.routes, record, &observed);
        if let Some(ha) = &self.ha {
            // Routes a peer's Backup verdict explains are the pair's, not
            // evidence of our own. Adopted as Backup, our verdict would
            // say so without our probes (and with failback = "manual" pin
            // the pair there); adopted as Primary, it would count toward a
            // failback before our probes judged (two agents restarting in
            // an outage would delete every route). So we start undecided,
            // as on a partial set: no verdict published, no route call,
            // until `fall` down rounds (Backup) or `rise` up rounds
            // (Primary). Meanwhile our last verdict ages out as if we were
            // down, and the pair's rule keeps the routes while the peer
            // says Backup. Unless our previous run said Backup too: that
            // failover is ours as much as the peer's, and its failback
            // keeps its rules (hold-down from now, failback = "manual"),
            // as on a lone agent's restart; undecided, two agents
            // restarted together would fail back by themselves.
            if adoption != Adoption::Primary {
                if let Some(why) = ha.explaining_backup() {
                    if adoption == Adoption::Backup && ha.previous() == Some(Via::Backup) {
                        info!(%why, "our previous run's verdict was Backup too: adopted as Backup (hold-down and failback = \"manual\" apply, as after a lone agent's restart)");
                    } else {
                        let ours = plan::ours(&spec.routes, record, &observed).count();
                        let of = spec.routes.len().max(ours);
                        info!(tables = %adoption, %why, "a peer's Backup verdict explains the routes: undecided (no verdict published, no route call) until our probes judge");
                        adoption = Adoption::Partial {
                            ours,
                            of,
                            peer: true,
                        };
                    }
                }
            }
        }
        let found = Adopted {
            adoption,
            ours: plan::ours(&spec.routes, record, &observed)
                .cloned()
                .collect(),
            appliance: appliance.clone(),
        };
        if adopted.send(Ok(found)).is_err() {
            return;
        }
        if let Some(facts) = self.facts.clone() {
            // Its own task: a slow or throttled DescribeNetworkInterfaces
            // must never delay a pass, a failover or a heartbeat.
            let first = appliance.map(|_| Instant::now() + spec.settings.resync_interval);
            tokio::spawn(watcher.run(self.spec.clone(), facts, self.stop.clone(), first));
        }

        let mut failures = 0u32;
        // Passes superseded in a row while the desired path stood still.
        let mut superseded = 0u32;
        let mut converged_on = None;
        loop {
            let wanted = *desired.borrow_and_update();
            let spec = self.spec.borrow_and_update().clone();
            let resync = spec.settings.resync_interval;
            let wait = match wanted {
                // No evidence yet: no route changes.
                None => resync,
                Some((path, at)) => {
                    if at != self.transition_at {
                        self.transition_at = at;
                        converged_on = None;
                    }
                    let pass = self.reconcile(path, &desired).await;
                    if pass != Pass::Superseded {
                        superseded = 0;
                    }
                    // What the tables are converged on: ours, or the pair's.
                    let path = self.effective.unwrap_or(path);
                    match pass {
                        Pass::Converged => {
                            failures = 0;
                            if converged_on != Some(path) {
                                converged_on = Some(path);
                                self.announce_converged(path);
                            }
                            resync
                        }
                        Pass::Paused => {
                            converged_on = None;
                            self.events.emit(Event::Diverged {
                                path,
                                why: "paused by an operator: no route calls".to_string(),
                            });
                            resync
                        }
                        Pass::Blocked(why) => {
                            failures = 0;
                            converged_on = None;
                            self.events.emit(Event::Diverged { path, why });
                            resync
                        }
                        Pass::Failed { kind, why } => {
                            failures += 1;
                            converged_on = None;
                            self.events.emit(Event::Diverged { path, why });
                            retry_delay(kind, failures, resync)
                        }
                        Pass::Superseded => {
                            converged_on = None;
                            // At once for a new desired path, and the first
                            // time without one (a re-read found the pair
                            // moved); again and again without one, it backs
                            // off: no pass loop spins with time standing still.
                            if desired.has_changed().unwrap_or(true) {
                                superseded = 0;
                            } else {
                                superseded += 1;
                            }
                            if superseded > 1 {
                                retry_delay(ErrorKind::Other, superseded - 1, resync)
                            } else {
                                Duration::ZERO
                            }
                        }
                        Pass::Settling(due) => {
                            converged_on = None;
                            due.saturating_duration_since(Instant::now()).min(resync)
                        }
                        Pass::Stopped => return,
                    }
                }
            };
            // A peer's Backup verdict that holds us may expire before the
            // next resync: read then, not a resync later.
            let expiry = self
                .ours
                .filter(|_| wanted.is_some())
                .and_then(|local| self.ha.as_ref()?.next_expiry(local));
            let wait = expiry.map_or(wait, |e| {
                wait.min(e.saturating_duration_since(Instant::now()))
            });
            let deadline = Instant::now() + wait;
            // A heartbeat's write in flight is polled here; whatever wakes
            // a pass (the deadline among them: a slow CreateTags must not
            // delay a settle, expiry or resync read) hands it on to the
            // pass, which polls it beside its calls, or drops it if it
            // publishes a new verdict first.
            let mut beat_call = self.beat_call.take();
            loop {
                // Heartbeats fall between passes (and go on during them:
                // see `beating`); none starts while one is in flight.
                let beat = wanted
                    .filter(|_| beat_call.is_none())
                    .and_then(|_| self.ha.as_ref()?.next_beat());
                let until = beat.map_or(deadline, |b| b.min(deadline));
                tokio::select! {
                    (write, result) = async { beat_call.as_mut().expect("guarded").await }, if beat_call.is_some() => {
                        beat_call = None;
                        if let Some((local, _)) = wanted {
                            self.end_beat(local, &write, result);
                        }
                    }
                    () = self.stop.cancelled() => return,
                    changed = desired.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                    changed = self.spec.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        // New routes to converge: say so again once they are.
                        converged_on = None;
                        // The judge may have a new backup: tell it the count again.
                        self.blackholes = None;
                        break;
                    }
                    changed = self.paused.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        converged_on = None;
                        break;
                    }
                    () = tokio::time::sleep_until(until) => {
                        if Instant::now() >= deadline {
                            break;
                        }
                        if let Some((local, _)) = wanted.filter(|_| beat_call.is_none()) {
                            beat_call = self.begin_beat(local);
                        }
                    }
                }
            }
            // Still in flight: the pass polls it on (see `beating`), or
            // drops it if it publishes a new verdict first.
            self.beat_call = beat_call;
        }
    }

    /// Runs the startup check until it passes (`Ok(true)`), the agent stops
    /// (`Ok(false)`) or it refuses (`Err`).
    async fn pass_startup_check(&mut self) -> Result<bool, String> {
        let Some(check) = self.startup_check.take() else {
            return Ok(true);
        };
        let mut failures = 0;
        loop {
            if self.stop.is_cancelled() {
                return Ok(false);
            }
            let kind = match check().await {
                Ok(()) => return Ok(true),
                Err(CheckFailure::Refuse(why)) => return Err(why),
                Err(CheckFailure::Retry { kind, message }) => {
                    failures += 1;
                    warn!(error = %message, "startup check cannot run yet; retrying, probing goes on");
                    kind
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(retry_delay(kind, failures, STARTUP_RETRY_CAP)) => {}
            }
        }
    }

    /// Reads the tables at startup, retrying what may pass; `None` if
    /// stopped first. Probing runs meanwhile.
    async fn read_until_ok(&mut self) -> Option<Vec<RouteTable>> {
        let mut failures = 0;
        loop {
            if self.stop.is_cancelled() {
                return None;
            }
            let ids = self.tables_to_read(&self.spec.borrow().clone());
            let kind = match self.api.describe_route_tables(&ids).await {
                Ok(tables) => return Some(tables),
                Err(e) => {
                    failures += 1;
                    if e.kind == ErrorKind::Auth {
                        error!(error = %e, "not authorized to read the route tables: fix the instance role or credentials (see iam-policy.example.json); retrying slowly, probing goes on");
                    } else {
                        warn!(error = %e, "cannot read the route tables yet; retrying, probing goes on");
                    }
                    let kind = e.kind;
                    self.events.emit(Event::ApiError {
                        op: "DescribeRouteTables",
                        error: e,
                    });
                    kind
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return None,
                () = tokio::time::sleep(retry_delay(kind, failures, STARTUP_RETRY_CAP)) => {}
            }
        }
    }

    /// Logs and emits that the tables match `path`, with the time since the
    /// transition that asked for it. A dry run only says nothing more would
    /// change: it has changed nothing.
    fn announce_converged(&self, path: Via) {
        if self.api.is_dry_run() {
            info!(%path, "dry run: nothing more would change (no route was changed)");
            return;
        }
        let since = self.transition_at.map(|t| t.elapsed());
        match since {
            Some(d) => info!(
                %path,
                since_transition_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "route tables converged"
            ),
            None => info!(%path, "route tables converged"),
        }
        self.events.emit(Event::Converged {
            path,
            since_transition: since,
        });
    }
}
