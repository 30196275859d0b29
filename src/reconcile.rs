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

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::backoff;
use crate::backup::{check_appliance, Appliance, BackupFact};
use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::config::{Config, ReconcileConfig};
use crate::events::{Event, Events, Outcome};
use crate::fsm::Via;
use crate::ha::{Ha, RouteKey, Write};
use crate::model::{eni_ids, table_ids, Action, Adoption, ManagedRoute, RouteTable};
use crate::plan::{self, Finding, Inputs, Plan, Status};
use crate::state::Ledger;

/// Route calls in flight at once during one reconcile pass. Enough to switch
/// many tables quickly, well under EC2's mutating-call burst.
const CONCURRENT_CALLS: usize = 8;
/// Passes (read, act, read again) per reconcile before waiting for a tick.
const MAX_PASSES: usize = 4;
/// Longest wait between startup reads of the tables.
const STARTUP_RETRY_CAP: Duration = Duration::from_secs(30);
/// Credentials that are refused do not fix themselves in seconds: retry
/// slowly, starting about a minute apart, up to five minutes.
const AUTH_RETRY_CAP: Duration = Duration::from_secs(300);
const AUTH_RETRY_SKIP: u32 = 6;
/// Longest wait for one appliance check: the startup check holds the
/// adoption, and a hung call must be reported rather than waited on.
const APPLIANCE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The path the probe loop wants, with the instant of the transition that
/// asked for it; `None` until there is probe evidence and an adopted path.
pub(crate) type Desired = Option<(Via, Option<Instant>)>;

/// A heartbeat's CreateTags, owning what it needs so it can be dropped.
type BeatCall =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Write, Result<(), CloudError>)> + Send>>;

/// Stands in for "no beat due" in a `select!` branch that is disabled.
const NO_BEAT: Duration = Duration::from_secs(86_400);

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

/// Checks the appliance ENIs with one DescribeNetworkInterfaces per
/// resync, and at once when the spec changes. A failed or hung call keeps
/// the last verdict: the API being unreachable says nothing about the
/// appliance.
struct ApplianceWatch {
    api: Arc<dyn RouteApi>,
    events: Events,
    /// Whether the last check failed to run (logged once).
    unread: bool,
}

impl ApplianceWatch {
    /// One check of `enis`; `None` when there is none to check or the call
    /// failed or timed out.
    async fn check(&mut self, enis: &[String]) -> Option<Appliance> {
        if enis.is_empty() {
            return None;
        }
        let call = self.api.describe_network_interfaces(enis);
        let error = match tokio::time::timeout(APPLIANCE_CHECK_TIMEOUT, call).await {
            Ok(Ok(found)) => {
                if self.unread {
                    info!("the appliance ENIs can be read again");
                    self.unread = false;
                }
                return Some(check_appliance(enis, &found));
            }
            Ok(Err(e)) => e,
            Err(_) => CloudError::new(
                ErrorKind::Transient,
                None,
                format!("no answer within {APPLIANCE_CHECK_TIMEOUT:?}"),
            ),
        };
        if !self.unread {
            warn!(error = %error, "cannot check the appliance ENIs; keeping the last verdict, retrying every resync");
            self.unread = true;
        }
        self.events.emit(Event::ApiError {
            op: "DescribeNetworkInterfaces",
            error,
        });
        None
    }

    /// Checks every resync (the first at `first`, `None`: at once) until
    /// `stop`, sending each verdict to `facts`.
    async fn run(
        mut self,
        mut spec: watch::Receiver<Spec>,
        facts: mpsc::UnboundedSender<BackupFact>,
        stop: CancellationToken,
        first: Option<Instant>,
    ) {
        let mut due = first.unwrap_or_else(Instant::now);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = spec.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A reload may add ENIs or the section itself: check now.
                }
                () = tokio::time::sleep_until(due) => {}
            }
            let current = spec.borrow_and_update().clone();
            let checked = tokio::select! {
                () = stop.cancelled() => return,
                checked = self.check(&current.appliance_enis) => checked,
            };
            if let Some(appliance) = checked {
                if facts.send(BackupFact::Appliance(appliance)).is_err() {
                    // The probe loop stopped first: nobody left to tell.
                    return;
                }
            }
            due = Instant::now() + current.settings.resync_interval;
        }
    }
}

/// How one reconcile ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pass {
    /// The tables carry traffic the way the path says.
    Converged,
    /// Nothing the agent may do would converge them (a missing table, a
    /// foreign route): reported, retried at the next resync.
    Blocked(String),
    /// A call failed; retry after a backoff.
    Failed { kind: ErrorKind, why: String },
    /// The desired path changed meanwhile: start over at once.
    Superseded,
    /// With `[ha]`: removals wait for a read at this instant to confirm
    /// that no peer's verdict explains the routes.
    Settling(Instant),
    /// Paused by an operator: nothing called, what would be is reported.
    Paused,
    /// Shutdown: no further call.
    Stopped,
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

    fn send_fact(&self, fact: BackupFact) {
        if let Some(tx) = &self.facts {
            // The probe loop stopped first: nobody left to tell.
            let _ = tx.send(fact);
        }
    }

    /// Sends how many of our routes are blackholes, when that changed.
    fn count_blackholes(&mut self, findings: &[Finding]) {
        let n = findings
            .iter()
            .filter(|f| matches!(f, Finding::Blackhole { .. }))
            .count();
        if self.blackholes != Some(n) {
            self.blackholes = Some(n);
            self.send_fact(BackupFact::Blackholes(n));
        }
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
            // Routes a live peer's Backup verdict explains are the pair's,
            // not evidence of our own. Adopted as Backup, our verdict would
            // say so without our probes (and with failback = "manual" pin
            // the pair there); adopted as Primary, it would count toward a
            // failback before our probes judged (two agents restarting in
            // an outage would delete every route). So we start undecided,
            // as on a partial set: no verdict published, no route call,
            // until `fall` down rounds (Backup) or `rise` up rounds
            // (Primary). Meanwhile our last verdict ages out as if we were
            // down, and the pair's rule keeps the routes while the peer
            // says Backup.
            let pair = ha.combined(Via::Primary);
            if adoption != Adoption::Primary && pair.path == Via::Backup {
                let ours = plan::ours(&spec.routes, record, &observed).count();
                let of = spec.routes.len().max(ours);
                info!(tables = %adoption, why = %pair, "a live peer's Backup verdict explains the routes: undecided (no verdict published, no route call) until our probes judge");
                adoption = Adoption::Partial { ours, of };
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
                            Duration::ZERO
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
            // A heartbeat's write in flight: dropped (cancelled) when
            // anything wakes a pass, so a slow CreateTags never delays a
            // new verdict, which the pass publishes before its route calls.
            let mut beat_call = self.beat_call.take();
            loop {
                // Heartbeats fall between passes (and go on during them:
                // see `beating`).
                let beat = wanted.and_then(|_| self.ha.as_ref()?.next_beat());
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
                    () = tokio::time::sleep_until(until), if beat_call.is_none() => {
                        if Instant::now() >= deadline {
                            break;
                        }
                        if let Some((local, _)) = wanted {
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

    /// Starts one heartbeat: our verdict's write, as a future that owns
    /// what it needs, so the caller can drop it. No read: peers' liveness
    /// only matters for deletions, which always re-read the anchor first,
    /// and is judged at the reads the reconciler makes anyway.
    fn begin_beat(&mut self, local: Via) -> Option<BeatCall> {
        let reason = self.verdict_reason_now();
        let write = self.ha.as_mut()?.begin_write(local, &reason);
        let api = Arc::clone(&self.api);
        Some(Box::pin(async move {
            let result = api
                .create_tags(&write.anchor, std::slice::from_ref(&write.tag))
                .await;
            (write, result)
        }))
    }

    /// Ends a heartbeat: notes the write (a failed beat is logged; the
    /// next one retries) and shows the pair again (a status view computes
    /// ages from it).
    fn end_beat(&mut self, local: Via, write: &Write, result: Result<(), CloudError>) {
        self.finish_write(local, write, result);
        self.assess_pair(local);
    }

    /// Notes how a heartbeat's write went; a failure is logged and emitted.
    fn finish_write(&mut self, local: Via, write: &Write, result: Result<(), CloudError>) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let changed = ha.changed(local);
        if let Err(e) = ha.end_write(write, result) {
            self.publish_failed(local, changed, &e);
        }
    }

    /// Our verdict's reason as it stands.
    fn verdict_reason_now(&self) -> String {
        self.verdict_reason
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default()
    }

    /// Awaits `call` (an API call of a pass), publishing our verdict on
    /// every heartbeat due meanwhile: one call may take 50 s (timeouts
    /// and retries), and a peer must not take us for dead while it runs.
    /// Our writes stay in order: this task makes all of them, one at a time.
    /// The beat's write runs beside the call, never holding it up; one
    /// still in flight when the call ends is kept for the next wait.
    async fn beating<T>(&mut self, call: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(call);
        let mut beat_call = self.beat_call.take();
        loop {
            let beat = self.ha.as_ref().and_then(Ha::next_beat).zip(self.ours);
            if beat.is_none() && beat_call.is_none() {
                return call.await;
            }
            // Only polled while a beat is due and none is in flight.
            let due = beat.map_or_else(|| Instant::now() + NO_BEAT, |(due, _)| due);
            tokio::select! {
                biased;
                out = &mut call => {
                    self.beat_call = beat_call;
                    return out;
                }
                (write, result) = async { beat_call.as_mut().expect("guarded").await }, if beat_call.is_some() => {
                    beat_call = None;
                    if let Some(local) = self.ours {
                        // A failed beat is logged; the next one retries.
                        self.finish_write(local, &write, result);
                    }
                }
                () = tokio::time::sleep_until(due), if beat.is_some() && beat_call.is_none() => {
                    if let Some((_, local)) = beat {
                        beat_call = self.begin_beat(local);
                    }
                }
            }
        }
    }

    /// Assesses the pair and tells the sinks, every time (a status view
    /// computes ages from it); logged only when it changed.
    fn assess_pair(&mut self, local: Via) -> Option<crate::peers::Combined> {
        let ha = self.ha.as_mut()?;
        let (combined, view, changed) = ha.assess(local, Instant::now());
        if changed {
            info!(pair = %view, "the pair");
        }
        self.events.emit(Event::Peers(view));
        self.emit_pair_findings();
        Some(combined)
    }

    /// Tells the sinks (hooks among them) of the pair's findings that just
    /// started: each once, as it starts.
    fn emit_pair_findings(&mut self) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        let anchor = ha.anchor().to_string();
        for (kind, text) in ha.take_started() {
            self.events.emit(Event::PairFinding {
                kind,
                anchor: anchor.clone(),
                text,
            });
        }
    }

    /// Deletes retired peers' verdicts found by the last read, each only if
    /// it still holds the value read (EC2's conditional DeleteTags), so a
    /// peer that came back meanwhile keeps its fresh verdict.
    async fn forget(&mut self) {
        let Some(ha) = self.ha.as_mut() else {
            return;
        };
        for (key, value) in ha.take_forget() {
            let anchor = ha.anchor().to_string();
            let tag = [(key.clone(), Some(value.clone()))];
            let result = self.api.delete_tags(&anchor, &tag).await;
            if let Err(e) = &result {
                self.events.emit(Event::ApiError {
                    op: "DeleteTags",
                    error: e.clone(),
                });
            }
            ha.forget_result((key, value), &result);
        }
    }

    /// Writes our verdict to the anchor (one CreateTags). A failure is
    /// logged and emitted; the caller decides whether it holds route calls.
    async fn publish(&mut self, local: Via) -> Result<(), CloudError> {
        let Some(ha) = self.ha.as_mut() else {
            return Ok(());
        };
        let changed = ha.changed(local);
        let reason = self
            .verdict_reason
            .as_ref()
            .map(|r| r.borrow().clone())
            .unwrap_or_default();
        let result = ha.publish(self.api.as_ref(), local, &reason).await;
        if let Err(e) = &result {
            self.publish_failed(local, changed, e);
        }
        result
    }

    /// Logs and emits a failed write of our verdict (`changed`: a new one).
    fn publish_failed(&mut self, local: Via, changed: bool, e: &CloudError) {
        let anchor = self.ha.as_ref().map(|h| h.anchor().to_string());
        let anchor = anchor.unwrap_or_default();
        if changed {
            error!(error = %e, verdict = %local, %anchor, "cannot publish our new verdict to the pair: no route call until it is (see iam-policy.example.json for CreateTags)");
        } else {
            warn!(error = %e, %anchor, "heartbeat not published; peers take us for dead after ha.peer_timeout");
        }
        self.events.emit(Event::ApiError {
            op: "CreateTags",
            error: e.clone(),
        });
    }

    /// The path to converge on after a read: ours, or with `[ha]` the
    /// pair's, from the verdicts in `observed`.
    fn effective_path(&mut self, local: Via, observed: &[RouteTable]) -> Via {
        let Some(ha) = self.ha.as_mut() else {
            self.effective = Some(local);
            return local;
        };
        ha.observe(observed);
        ha.check_split(observed);
        let combined = self.assess_pair(local).expect("[ha] is set: checked above");
        if combined.path != local && self.effective != Some(combined.path) {
            warn!(ours = %local, pair = %combined.path, why = %combined, "following the pair");
        }
        self.effective = Some(combined.path);
        combined.path
    }

    /// Every table a pass may touch: the configured ones and any the
    /// ledger still has routes of ours in.
    fn tables_to_read(&self, spec: &Spec) -> Vec<String> {
        let mut ids = spec.table_ids.clone();
        ids.extend(self.ledger.record().table_ids());
        // The peers' verdicts, even if a reload stopped managing it.
        ids.extend(self.ha.as_ref().map(|h| h.anchor().to_string()));
        ids.into_iter().collect()
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

    /// Brings the ledger in line with the tables: forgets what they no
    /// longer bear out, and claims routes that are ours by the config's
    /// ENI but not yet recorded (say, made by an older version), so that a
    /// later config change still knows them.
    fn tidy_ledger(&mut self, spec: &Spec, observed: &[RouteTable]) {
        let stale = self
            .ledger
            .record()
            .stale(observed, &spec.table_ids, |t, d| spec.current_eni(t, d));
        let claim: Vec<ManagedRoute> = spec
            .routes
            .iter()
            .filter(|r| {
                matches!(
                    plan::status(r, self.ledger.record(), observed),
                    Status::Ours { stale: false, .. }
                ) && !self.ledger.record().created_with(
                    &r.route_table_id,
                    r.destination,
                    &r.target_eni,
                )
            })
            .cloned()
            .collect();
        let result = self
            .ledger
            .forget_all(&stale)
            .and_then(|()| claim.iter().try_for_each(|r| self.ledger.will_create(r)));
        if let Err(e) = result {
            error!(error = %e, "cannot update the ownership ledger");
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

    /// Reads, plans and acts until the tables match `path`, the path
    /// changes, or a call fails.
    async fn reconcile(&mut self, local: Via, desired: &watch::Receiver<Desired>) -> Pass {
        let spec = self.spec.borrow().clone();
        let superseded = || desired.has_changed().unwrap_or(true);
        self.ours = Some(local);
        // Peers hear of a new verdict before any route call it causes, and
        // of an unchanged one if our last write is nearly peer_timeout old
        // (back from losing the API). Otherwise it is left to the
        // heartbeat: the pass reads first, so a read a beat after our last
        // write can show another process writing under our id.
        if self
            .ha
            .as_ref()
            .is_some_and(|h| h.publish_first(local, Instant::now()))
        {
            let changed = self.ha.as_ref().is_some_and(|h| h.changed(local));
            // This write supersedes a heartbeat's still in flight: dropped,
            // and should it land late anyway, its lower counter makes peers
            // ignore it.
            self.beat_call = None;
            if let Err(e) = self.publish(local).await {
                let act = self
                    .ha
                    .as_ref()
                    .is_some_and(|h| h.act_unpublished(local, &e, Instant::now()));
                if !changed {
                    // An unchanged verdict peers saw before was only
                    // refreshed: its failure (logged) holds nothing.
                } else if !act {
                    return Pass::Failed {
                        kind: e.kind,
                        why: format!("CreateTags (our verdict) failed: {e}"),
                    };
                } else {
                    // Loud, every pass while it lasts: peers cannot see why
                    // our routes are there. The publication is retried with
                    // every pass and heartbeat.
                    error!(error = %e, verdict = %local, "CRITICAL: failing over although our Backup verdict cannot be published to the pair (failover is the safe direction); peers may delete our routes once, we put them back; fix CreateTags on the anchor table");
                    self.events.emit(Event::Diverged {
                        path: local,
                        why: format!(
                            "acting on an unpublished Backup verdict: CreateTags failed: {e}"
                        ),
                    });
                }
            }
        }
        for _ in 0..MAX_PASSES {
            if self.stop.is_cancelled() {
                return Pass::Stopped;
            }
            if superseded() {
                return Pass::Superseded;
            }
            let ids = self.tables_to_read(&spec);
            let api = Arc::clone(&self.api);
            let read = async move { api.describe_route_tables(&ids).await };
            let observed = match self.beating(read).await {
                Ok(t) => t,
                Err(e) => return self.read_failed(e),
            };
            self.tidy_ledger(&spec, &observed);
            let path = self.effective_path(local, &observed);
            self.forget().await;
            let mut plan = plan::plan(
                path,
                Inputs {
                    managed: &spec.routes,
                    ledger: self.ledger.record(),
                    takeover: spec.settings.takeover,
                    failback_requires_dx_route: spec.settings.failback_requires_dx_route,
                },
                &observed,
            );
            // With [ha]: a pair that cannot be trusted to agree keeps our
            // routes; failing over stays allowed (the safe direction).
            if let Some(why) = self
                .ha
                .as_ref()
                .and_then(|h| h.failback_hold(Instant::now()))
            {
                plan.hold_removals(&why);
            }
            let settle = self.judge_removals(path, &mut plan);
            self.report(&plan.findings);
            self.count_blackholes(&plan.findings);
            if *self.paused.borrow() {
                self.intend(path, &plan.actions, "paused");
                return Pass::Paused;
            }
            if plan.actions.is_empty() {
                if let Some(due) = settle {
                    debug!(
                        ?due,
                        "failback waits for a read a heartbeat later: tags can lag routes"
                    );
                    return Pass::Settling(due);
                }
                return if plan.converged(path) {
                    Pass::Converged
                } else {
                    Pass::Blocked(blocking(&plan, path))
                };
            }
            if superseded() {
                return Pass::Superseded;
            }
            if let Err(pass) = self.act(path, plan.actions).await {
                return pass;
            }
        }
        Pass::Failed {
            kind: ErrorKind::Other,
            why: format!("not converged after {MAX_PASSES} passes"),
        }
    }

    /// With `[ha]`: keeps in `plan` only the removals a read a heartbeat
    /// earlier already called for, holds those of routes we deleted once
    /// that came back (a fight), and says when to read again for the rest.
    fn judge_removals(&mut self, path: Via, plan: &mut Plan) -> Option<Instant> {
        let ha = self.ha.as_mut()?;
        if path == Via::Backup {
            ha.explained();
            return None;
        }
        let key = |r: &ManagedRoute| (r.route_table_id.clone(), r.destination);
        let removals: Vec<RouteKey> = plan
            .actions
            .iter()
            .filter(|a| a.removes_ours())
            .map(|a| key(a.route()))
            .collect();
        let resync = self.spec.borrow().settings.resync_interval;
        let judged = ha.judge_removals(&removals, Instant::now(), resync);
        plan.hold_removals_where(&judged.why, |r| judged.held.contains(&key(r)));
        plan.actions
            .retain(|a| !a.removes_ours() || judged.ready.contains(&key(a.route())));
        self.emit_pair_findings();
        judged.settle_until
    }

    /// Reports the calls a pass would make without making them (paused,
    /// or a dry run), each distinct plan once.
    fn intend(&mut self, path: Via, actions: &[Action], mode: &str) {
        if actions == self.intended.as_slice() {
            return;
        }
        self.intended = actions.to_vec();
        for action in actions {
            info!(%mode, action = %action, "would {action}");
        }
        self.events.emit(Event::Intended {
            path,
            actions: actions.to_vec(),
        });
    }

    fn read_failed(&self, e: CloudError) -> Pass {
        if e.kind == ErrorKind::Auth {
            error!(error = %e, "not authorized to read the route tables: fix the instance role or credentials; retrying slowly");
        } else {
            warn!(error = %e, "DescribeRouteTables failed; will retry");
        }
        let pass = Pass::Failed {
            kind: e.kind,
            why: format!("DescribeRouteTables failed: {e}"),
        };
        self.events.emit(Event::ApiError {
            op: "DescribeRouteTables",
            error: e,
        });
        pass
    }

    /// Makes the calls: records what it is about to create, re-checks what
    /// it is about to remove, then calls, a few at a time, starting none
    /// once stopped. `Err` carries how the pass ends.
    async fn act(&mut self, path: Via, actions: Vec<Action>) -> Result<(), Pass> {
        let mut failed: Option<(ErrorKind, String)> = None;
        let recheck = self.recheck_removals(&actions).await?;
        let mut ready: Vec<Action> = actions
            .into_iter()
            .filter(|a| !a.removes_ours() || recheck.contains(a))
            .collect();
        // One synced write for the whole pass, not one per route: the
        // runtime that probes waits on it.
        if let Err(e) = self.ledger.will_apply(&ready) {
            // Never make a route we could not remember making.
            error!(error = %e, "not creating: cannot record ownership first");
            failed = Some((ErrorKind::Other, e.to_string()));
            ready.retain(Action::removes_ours);
        }
        let api = Arc::clone(&self.api);
        let stop = self.stop.clone();
        let paused = self.paused.clone();
        let calls = stream::iter(ready)
            // Checked as each call is about to start: none starts once
            // stopped or paused by an operator.
            .take_while(move |_| std::future::ready(!stop.is_cancelled() && !*paused.borrow()))
            .map(move |action| {
                let api = Arc::clone(&api);
                async move {
                    let started = Instant::now();
                    let result = execute(api.as_ref(), &action).await;
                    (action, result, started.elapsed())
                }
            })
            .buffer_unordered(CONCURRENT_CALLS)
            .collect::<Vec<(Action, Result<Outcome, CloudError>, Duration)>>();
        let results = self.beating(calls).await;
        let dry_run = self.api.is_dry_run();
        if dry_run {
            let actions: Vec<Action> = results.iter().map(|(a, _, _)| a.clone()).collect();
            // Say "would", never "changed": nothing was.
            self.intend(path, &actions, "dry run");
            return Ok(());
        }
        let mut gone = Vec::new();
        let mut deleted = Vec::new();
        for (action, result, latency) in results {
            match &result {
                Ok(outcome) => {
                    info!(
                        op = action.op(),
                        action = %action,
                        ?outcome,
                        latency_ms = latency.as_millis(),
                        "route changed"
                    );
                    if action.removes_ours() {
                        let r = action.route();
                        gone.push((r.route_table_id.clone(), r.destination));
                        if *outcome == Outcome::Done {
                            deleted.push((r.route_table_id.clone(), r.destination));
                        }
                    }
                }
                Err(e) => {
                    error!(op = action.op(), action = %action, error = %e, "route change failed; will retry");
                    failed.get_or_insert((e.kind, format!("{} failed: {e}", action.op())));
                }
            }
            self.events.emit(Event::RouteChange {
                action,
                result,
                latency,
            });
        }
        if let Err(e) = self.ledger.forget_all(&gone) {
            error!(error = %e, "cannot update the ownership ledger");
        }
        if let Some(ha) = self.ha.as_mut() {
            ha.note_deleted(deleted, Instant::now());
        }
        if self.stop.is_cancelled() {
            return Err(Pass::Stopped);
        }
        if failed.is_none() && *self.paused.borrow() {
            // The next pass reads the tables and says what it would do.
            return Err(Pass::Superseded);
        }
        match failed {
            Some((kind, why)) => Err(Pass::Failed { kind, why }),
            None => Ok(()),
        }
    }

    /// Re-reads each table we are about to remove a route of ours from and
    /// keeps the removals whose slot still holds that very route. What is
    /// left is the window between this read and the call itself (one round
    /// trip to EC2), which its API cannot close.
    async fn recheck_removals(&mut self, actions: &[Action]) -> Result<Vec<Action>, Pass> {
        let removals: Vec<&Action> = actions.iter().filter(|a| a.removes_ours()).collect();
        let mut tables: Vec<String> = removals
            .iter()
            .map(|a| a.route().route_table_id.clone())
            .collect();
        tables.sort();
        tables.dedup();
        // With peers, the anchor first: a Backup verdict there stops every removal.
        let anchor = match &self.ha {
            Some(ha) if !removals.is_empty() => Some(ha.anchor().to_string()),
            _ => None,
        };
        if let Some(anchor) = &anchor {
            tables.retain(|t| t != anchor);
            tables.insert(0, anchor.clone());
        }
        let mut confirmed = Vec::with_capacity(removals.len());
        for table in tables {
            if self.stop.is_cancelled() {
                return Err(Pass::Stopped);
            }
            let api = Arc::clone(&self.api);
            let ids = vec![table.clone()];
            let read = async move { api.describe_route_tables(&ids).await };
            let fresh = match self.beating(read).await {
                Ok(t) => t,
                Err(e) => return Err(self.read_failed(e)),
            };
            if anchor.as_ref() == Some(&table) {
                if let Some((local, ha)) = self.ours.zip(self.ha.as_mut()) {
                    ha.observe(&fresh);
                    let combined = ha.combined(local);
                    if combined.path == Via::Backup {
                        warn!(why = %combined, "a peer's verdict changed since the tables were read: removing nothing");
                        return Err(Pass::Superseded);
                    }
                    if let Some(why) = ha.failback_hold(Instant::now()) {
                        warn!(%why, "the pair cannot be trusted to agree since the tables were read: removing nothing");
                        return Err(Pass::Superseded);
                    }
                }
            }
            for action in removals
                .iter()
                .filter(|a| a.route().route_table_id == table)
            {
                let route = action.route();
                let still_ours = matches!(
                    plan::status(route, self.ledger.record(), &fresh),
                    Status::Ours { eni, .. } if eni == route.target_eni
                );
                if still_ours {
                    confirmed.push((*action).clone());
                } else {
                    warn!(action = %action, "the route changed since it was read: left alone");
                }
            }
        }
        Ok(confirmed)
    }

    fn report(&mut self, findings: &[Finding]) {
        let current: HashSet<String> = findings.iter().map(ToString::to_string).collect();
        for finding in findings {
            let text = finding.to_string();
            if !self.reported.contains(&text) {
                warn!(finding = %text, "attention");
                self.events.emit(Event::Finding(finding.clone()));
            }
        }
        self.reported = current;
    }
}

/// Why a plan with nothing to do is not converged, in one line.
fn blocking(plan: &Plan, path: Via) -> String {
    plan.findings
        .iter()
        .filter(|f| f.blocks(path))
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Makes one call; "already there" and "already gone" count as converged.
async fn execute(api: &dyn RouteApi, action: &Action) -> Result<Outcome, CloudError> {
    let result = match action {
        Action::Create(r) => api.create_route(r).await,
        Action::Replace { route, .. } | Action::Retarget { route, .. } => {
            api.replace_route(route).await
        }
        Action::Restore { route, original } => {
            api.restore_route(&route.route_table_id, route.destination, original)
                .await
        }
        Action::Delete(r) => api.delete_route(&r.route_table_id, r.destination).await,
    };
    match (action, result) {
        (_, Ok(())) => Ok(Outcome::Done),
        (Action::Create(_), Err(e)) if e.kind == ErrorKind::RouteAlreadyExists => {
            Ok(Outcome::AlreadyConverged)
        }
        (Action::Delete(_), Err(e)) if e.kind == ErrorKind::RouteNotFound => {
            Ok(Outcome::AlreadyConverged)
        }
        (_, Err(e)) => Err(e),
    }
}
