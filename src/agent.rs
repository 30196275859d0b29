//! The agent: probe → state machine → planner → route API.
//!
//! Two tasks. The probe loop starts at once and runs one round per
//! `interval` on a monotonic ticker, feeds the state machine and publishes
//! the desired path. The reconciler reads the route tables (whenever the API
//! answers), reports what they show for the state machine to adopt, then
//! compares the desired path with the tables and makes the calls needed. A
//! slow, failing or unreachable API therefore never delays probing, and a
//! failed call is simply retried: the desired path is kept until the tables
//! match it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backup::{Appliance, BackupFact};
use crate::cloud::RouteApi;
use crate::config::{BackupConfig, Config};
use crate::decide::{Alarms, BackupState, Operator};
use crate::events::{Event, Events, Sink};
use crate::fsm::Via;
use crate::ha::{Ha, WallClock};
use crate::judge::{Judge, Verdict};
use crate::probe::{summarize, summarize_targets, Prober, RoundReport, RoundSummary, TargetReport};
use crate::reconcile::{Adopted, Desired, Reconciler, Spec, StartupCheck};
use crate::state::{Ledger, OperatorRecord, OperatorStore, StateError};

/// How long shutdown waits for an in-flight API call to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the agent stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A startup check refused to let the agent manage the routes.
    #[error("{0}")]
    Refused(String),
    #[error("the reconciler task failed: {0}")]
    Reconciler(String),
}

/// Why the probe loop ended.
enum Ended {
    Shutdown,
    Refused(String),
    ReconcilerDied(String),
}

/// What an operator can ask of a running agent (`route-failover ctl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorAction {
    /// Move to Backup now and stay there until released (planned DX maintenance).
    FailoverHold,
    /// Stay on the current path whatever the probes say.
    Hold,
    /// Back to automatic.
    Release,
    /// As SIGUSR1: fail back once `rise` good rounds are in hand.
    Failback,
    /// Make no route call at all (probing, deciding and reporting go on).
    Pause,
    Resume,
}

impl OperatorAction {
    /// Its name as `ctl`, logs, metrics and notices spell it (`failover-hold`).
    pub fn name(self) -> &'static str {
        match self {
            OperatorAction::FailoverHold => "failover-hold",
            OperatorAction::Hold => "hold",
            OperatorAction::Release => "release",
            OperatorAction::Failback => "failback",
            OperatorAction::Pause => "pause",
            OperatorAction::Resume => "resume",
        }
    }
}

/// Requests to a running agent.
pub enum Request {
    /// Allow failback to Primary once `rise` good rounds are in hand.
    Failback,
    /// An operator's action; `uid` is the caller's (SO_PEERCRED), the
    /// answer says what it did.
    Operate {
        action: OperatorAction,
        uid: Option<u32>,
        reply: oneshot::Sender<String>,
    },
    /// Switch to a new, already validated configuration. `prober` is set
    /// when the probe settings changed and new sockets were opened.
    Reload {
        config: Box<Config>,
        prober: Option<Box<dyn Prober>>,
    },
}

/// A cheap handle to send [`Request`]s to a running agent.
#[derive(Debug, Clone)]
pub struct Control(mpsc::UnboundedSender<Request>);

impl Control {
    pub fn request_failback(&self) {
        // The agent may have stopped; then there is nothing to fail back.
        let _ = self.0.send(Request::Failback);
    }

    /// Asks the agent to carry out an operator's action; the answer says
    /// what it did (`None` if the agent has stopped).
    pub async fn operate(&self, action: OperatorAction, uid: Option<u32>) -> Option<String> {
        let (reply, answer) = oneshot::channel();
        self.0.send(Request::Operate { action, uid, reply }).ok()?;
        answer.await.ok()
    }

    /// Hands a new configuration to the agent (see [`Request::Reload`]).
    pub fn reload(&self, config: Config, prober: Option<Box<dyn Prober>>) {
        let _ = self.0.send(Request::Reload {
            config: Box::new(config),
            prober,
        });
    }
}

/// The agent, built from a validated config, a prober and a route API.
pub struct Agent {
    config: Config,
    prober: Box<dyn Prober>,
    api: Arc<dyn RouteApi>,
    events: Events,
    ledger: Ledger,
    startup_check: Option<StartupCheck>,
    /// The operator's hold, as restored at startup and set since.
    operator: Operator,
    /// No route calls while set (`ctl pause`).
    paused: watch::Sender<bool>,
    operator_store: OperatorStore,
    requests: mpsc::UnboundedReceiver<Request>,
    control: Control,
    /// With `[ha]`: the clock verdicts are stamped and aged with.
    wall_clock: WallClock,
    /// The reason of the last decided transition, published with our verdict.
    verdict_reason: watch::Sender<String>,
    /// Rounds paced by a timerfd ([`crate::alarm::Ticker`]) instead of
    /// tokio's timer, which the paused-clock tests need.
    exact_ticks: bool,
}

impl Agent {
    pub fn new(config: Config, prober: Box<dyn Prober>, api: Arc<dyn RouteApi>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            config,
            prober,
            api,
            events: Events::none(),
            ledger: Ledger::in_memory(),
            startup_check: None,
            operator: Operator::Auto,
            paused: watch::channel(false).0,
            operator_store: OperatorStore::in_memory(),
            requests: rx,
            control: Control(tx),
            wall_clock: crate::ha::system_clock(),
            verdict_reason: watch::channel(String::new()).0,
            exact_ticks: false,
        }
    }

    /// Paces rounds on a timerfd: one wake-up per tick, where tokio's
    /// timer wheel takes two for a 1 s interval (see [`crate::alarm`]).
    /// Real clock only: not for tests on tokio's paused clock.
    pub fn with_exact_ticks(mut self) -> Self {
        self.exact_ticks = true;
        self
    }

    /// Stamps and ages `[ha]` verdicts with `clock` (tests: the paused clock).
    pub fn with_wall_clock(mut self, clock: WallClock) -> Self {
        self.wall_clock = clock;
        self
    }

    /// Keeps the record of the routes it creates in `ledger` (by default,
    /// in memory only).
    pub fn with_ledger(mut self, ledger: Ledger) -> Self {
        self.ledger = ledger;
        self
    }

    /// Runs `check` (say, the self-subnet guard) before the route tables
    /// are first read; probing does not wait for it.
    pub fn with_startup_check(mut self, check: StartupCheck) -> Self {
        self.startup_check = Some(check);
        self
    }

    /// Keeps the operator's hold and pause in `store`, and starts with what
    /// it holds (they survive a restart).
    pub fn with_operator_store(mut self, store: OperatorStore) -> Result<Self, StateError> {
        let record = store.load()?;
        self.operator = record.operator;
        self.paused.send_replace(record.paused);
        if record != OperatorRecord::default() {
            warn!(operator = ?record.operator, paused = record.paused, "restored an operator's hold or pause: `route-failover ctl release` / `ctl resume` to undo");
        }
        self.operator_store = store;
        Ok(self)
    }

    /// Sends every [`Event`] to `tx` as well.
    pub fn with_events(self, tx: mpsc::UnboundedSender<Event>) -> Self {
        self.with_sink(Arc::new(tx))
    }

    /// Adds a sink that every [`Event`] goes to.
    pub fn with_sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.events = self.events.with(sink);
        self
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until `shutdown` is cancelled. Probing starts at once; the
    /// route tables are read (and adopted) whenever the API answers. Routes
    /// are left as they are on exit: stopping the agent never moves traffic.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let prober = self.prober.describe();
        info!(%prober, "started: probing; the route tables are read when the EC2 API answers");
        self.events.emit(Event::Started {
            prober,
            operator: self.operator,
            paused: *self.paused.borrow(),
        });

        let (desired_tx, desired_rx) = watch::channel(None);
        let (spec_tx, spec_rx) = watch::channel(Spec::of(&self.config));
        let (adopted_tx, adopted_rx) = oneshot::channel();
        let (facts_tx, facts_rx) = mpsc::unbounded_channel();
        let stop_reconciler = CancellationToken::new();
        let mut reconciler = Reconciler::new(
            Arc::clone(&self.api),
            spec_rx,
            self.events.clone(),
            std::mem::take(&mut self.ledger),
            stop_reconciler.clone(),
            self.startup_check.take(),
            self.paused.subscribe(),
        )
        .with_facts(facts_tx);
        if let Some(ha) = &self.config.ha {
            let Some(id) = ha.agent_id.clone() else {
                return Err(AgentError::Refused(
                    "ha.agent_id: unknown (not set, and not resolved from instance metadata)"
                        .to_string(),
                ));
            };
            let anchor = ha.anchor.clone();
            info!(agent_id = %id, %anchor, anchor_from = ha.anchor_source(), heartbeat = ?ha.heartbeat, peer_timeout = ?ha.peer_timeout, forget_after = ?ha.forget_after, "[ha]: sharing verdicts with peers through the anchor table's tags");
            let ha = Ha::new(id, ha, anchor, Arc::clone(&self.wall_clock));
            reconciler = reconciler.with_ha(ha, self.verdict_reason.subscribe());
        }
        // None once the probe loop has seen it end.
        let mut reconciler = Some(tokio::spawn(reconciler.run(desired_rx, adopted_tx)));

        let refused = match self
            .probe_loop(
                adopted_rx,
                facts_rx,
                &desired_tx,
                &spec_tx,
                &shutdown,
                &mut reconciler,
            )
            .await
        {
            Ended::Shutdown => None,
            Ended::Refused(why) => Some(why),
            Ended::ReconcilerDied(why) => {
                // Probing on while nothing acts would look healthy and be
                // useless: exit, so that systemd restarts the whole agent.
                error!(error = %why, "the reconciler task died; exiting so that systemd restarts the agent; routes left as they are");
                crate::systemd::stopping();
                return Err(AgentError::Reconciler(why));
            }
        };

        crate::systemd::stopping();
        stop_reconciler.cancel();
        let result = match reconciler.as_mut() {
            None => Ok(()),
            Some(handle) => match tokio::time::timeout(SHUTDOWN_GRACE, &mut *handle).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(AgentError::Reconciler(e.to_string())),
                Err(_) => {
                    handle.abort();
                    warn!("an API call was still in flight after {SHUTDOWN_GRACE:?}; abandoned it");
                    Ok(())
                }
            },
        };
        info!("stopped; routes left as they are");
        match refused {
            Some(why) => Err(AgentError::Refused(why)),
            None => result,
        }
    }

    /// Probes until shutdown, a startup check refuses, or the reconciler
    /// task dies.
    async fn probe_loop(
        &mut self,
        mut adopted: oneshot::Receiver<Result<Adopted, String>>,
        mut facts: mpsc::UnboundedReceiver<BackupFact>,
        desired: &watch::Sender<Desired>,
        spec: &watch::Sender<Spec>,
        shutdown: &CancellationToken,
        reconciler: &mut Option<tokio::task::JoinHandle<()>>,
    ) -> Ended {
        let mut judge = Judge::new(
            self.fsm_policy(),
            self.config.backup.as_ref().map(BackupConfig::policy),
            self.operator,
        );
        let exact = self.exact_ticks;
        let ticker_for = |interval| Ticker::new(interval, exact);
        let mut ticker = ticker_for(self.config.probe.interval);
        let mut number = 0u64;
        let mut last_summary: Option<RoundSummary> = None;
        let mut adopting = true;
        // Logged when it changes, not every round.
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Shutdown,
                // It returns by itself only after a refusal, which `adopted`
                // carries; anything else is a panic.
                ended = async { reconciler.as_mut().expect("guarded").await }, if reconciler.is_some() => {
                    *reconciler = None;
                    if let Err(died) = ended {
                        return Ended::ReconcilerDied(died.to_string());
                    }
                }
                found = &mut adopted, if adopting => {
                    adopting = false;
                    let found = match found {
                        Ok(Ok(found)) => found,
                        Ok(Err(refusal)) => {
                            error!(error = %refusal, "refusing to manage the routes");
                            return Ended::Refused(refusal);
                        }
                        // The reconciler stopped first: so are we.
                        Err(_) => continue,
                    };
                    let now = Instant::now();
                    info!(
                        adoption = %found.adoption,
                        ours = found.ours.len(),
                        "adopted the path the route tables show"
                    );
                    self.verdict_reason.send_replace(format!("adopted: {}", found.adoption));
                    if let Some(appliance) = found.appliance {
                        // Checked before adopting: known before any failover.
                        let verdict = self.note_appliance(&mut judge, now, appliance);
                        self.after(&judge, verdict, desired, number > 0);
                    }
                    let verdict = judge.adopt(found.adoption, now, last_summary.as_ref());
                    self.events.emit(Event::Adopted {
                        adoption: found.adoption,
                        ours: found.ours,
                    });
                    self.after(&judge, verdict, desired, number > 0);
                }
                Some(fact) = facts.recv() => {
                    let now = Instant::now();
                    let verdict = match fact {
                        BackupFact::Appliance(appliance) => self.note_appliance(&mut judge, now, appliance),
                        BackupFact::Blackholes(n) => judge.set_blackholes(now, n),
                    };
                    self.after(&judge, verdict, desired, number > 0);
                }
                Some(request) = self.requests.recv() => match request {
                    Request::Failback => {
                        info!("operator asked for failback");
                        judge.request_failback();
                    }
                    Request::Operate { action, uid, reply } => {
                        let (verdict, answer) = self.operate(&mut judge, action, uid);
                        let _ = reply.send(answer);
                        self.after(&judge, verdict, desired, number > 0);
                    }
                    Request::Reload { config, prober } => {
                        if let Some(prober) = prober {
                            self.prober = prober;
                        }
                        if config.probe.interval != self.config.probe.interval {
                            ticker = ticker_for(config.probe.interval);
                        }
                        if config.backup != self.config.backup {
                            let same_probes = match (&self.config.backup, &config.backup) {
                                (Some(old), Some(new)) => old.same_probes(new),
                                _ => false,
                            };
                            let verdict = judge.set_backup_policy(
                                config.backup.as_ref().map(BackupConfig::policy),
                                same_probes,
                                Instant::now(),
                            );
                            self.after(&judge, verdict, desired, number > 0);
                        }
                        let new_spec = Spec::of(&config);
                        for gone in spec.borrow().routes.iter().filter(|r| !new_spec.routes.contains(r)) {
                            warn!(route = %gone, "no longer managed: removed from its table if it is ours (ownership ledger), else left alone");
                        }
                        spec.send_replace(new_spec);
                        self.config = *config;
                        judge.set_policy(self.fsm_policy());
                        info!(config = %self.config.source.display(), "configuration reloaded");
                        self.events.emit(Event::Reloaded);
                    }
                },
                _ = ticker.tick() => {
                    number += 1;
                    let probe = &self.config.probe;
                    self.prober.set_on_primary(judge.path() == Via::Primary);
                    let report = match tokio::time::timeout(probe.interval, self.prober.round()).await {
                        Ok(report) => report,
                        Err(_) => {
                            self.events.emit(Event::Overran);
                            // Judged by the replies it did get, like any round.
                            self.prober.salvage().unwrap_or_else(|| {
                                overran(&probe.targets, probe.count, self.config.backup.as_ref())
                            })
                        }
                    };
                    let now = Instant::now();
                    let error = report
                        .targets
                        .iter()
                        .chain(&report.backup)
                        .find_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target)));
                    if error != last_error {
                        match &error {
                            Some(e) => warn!(error = %e, "probes are failing to send"),
                            None => info!("probes are sending again"),
                        }
                        last_error = error;
                    }
                    // The silence detector judges the path itself; the
                    // round rule is applied to everyone else's report.
                    let summary = self
                        .prober
                        .verdict()
                        .unwrap_or_else(|| summarize(&report, probe.round));
                    // The backup group, when probed, by its own round rule.
                    let backup = self
                        .config
                        .backup
                        .as_ref()
                        .filter(|b| !b.targets.is_empty())
                        .map(|b| (summarize_targets(&report.backup, b.round), b.round));
                    let verdict = judge.observe(now, &summary, backup.as_ref().map(|(s, _)| s.up));
                    debug!(round = number, up = summary.up, %summary, "round");
                    self.events.emit(Event::Round {
                        number,
                        at: now,
                        summary: summary.clone(),
                        targets: report.targets,
                        policy: probe.round,
                        label: report.label,
                        path: judge.path(),
                        standing: judge.standing(now),
                    });
                    if let Some((backup_summary, policy)) = backup {
                        debug!(round = number, up = backup_summary.up, summary = %backup_summary, "backup round");
                        self.events.emit(Event::BackupRound {
                            number,
                            summary: backup_summary,
                            targets: report.backup,
                            policy,
                            state: judge.backup(),
                        });
                    }
                    last_summary = Some(summary);
                    self.after(&judge, verdict, desired, true);
                }
            }
        }
    }

    /// Logs an appliance check when its verdict changed, and tells the judge.
    fn note_appliance(&self, judge: &mut Judge, now: Instant, appliance: Appliance) -> Verdict {
        if judge
            .backup_health()
            .is_some_and(|h| *h.appliance() != appliance)
        {
            match &appliance {
                Appliance::Failed(_) => {
                    warn!(%appliance, "appliance check failed: the backup path is down");
                }
                _ => info!(%appliance, "appliance check"),
            }
        }
        self.events.emit(Event::ApplianceChecked(appliance.clone()));
        judge.set_appliance(now, appliance)
    }

    /// The state machine's policy: the config's, with `fall = 1` when the
    /// prober judges the path itself (the silence detector).
    fn fsm_policy(&self) -> crate::fsm::Policy {
        if self.prober.judges_path() {
            self.config.detect.fsm_policy(&self.config.policy)
        } else {
            self.config.policy.clone()
        }
    }

    /// Carries out an operator's action; returns what changed and the answer.
    fn operate(
        &mut self,
        judge: &mut Judge,
        action: OperatorAction,
        uid: Option<u32>,
    ) -> (Verdict, String) {
        let now = Instant::now();
        let who = uid.map_or_else(|| "an operator".to_string(), |u| format!("uid {u}"));
        let (verdict, answer) = match action {
            OperatorAction::FailoverHold => (
                judge.set_operator(now, Operator::Hold(Via::Backup)),
                "holding Backup until `ctl release`".to_string(),
            ),
            // Holding "the current path" needs one: not before the tables
            // are read, nor while a partial start awaits probe evidence.
            OperatorAction::Hold if judge.desired().is_none() => (
                Verdict::default(),
                "not held: the path is not decided yet (the route tables are unread, or a partial \
                 set awaits probe evidence); `ctl pause` freezes the tables as they are"
                    .to_string(),
            ),
            OperatorAction::Hold => {
                let path = judge.path();
                (
                    judge.set_operator(now, Operator::Hold(path)),
                    format!("holding {path} until `ctl release`"),
                )
            }
            OperatorAction::Release => (
                judge.set_operator(now, Operator::Auto),
                "released: the probes decide".to_string(),
            ),
            OperatorAction::Failback => {
                judge.request_failback();
                (
                    Verdict::default(),
                    format!(
                        "failback allowed once {} consecutive up rounds are in hand",
                        judge.fsm().policy().rise
                    ),
                )
            }
            OperatorAction::Pause | OperatorAction::Resume => {
                let paused = action == OperatorAction::Pause;
                self.paused.send_replace(paused);
                let answer = if paused {
                    "paused: no route call until `ctl resume`; what would be done is logged"
                } else {
                    "resumed: route calls allowed"
                };
                (Verdict::default(), answer.to_string())
            }
        };
        self.operator = judge.operator();
        let record = OperatorRecord {
            operator: self.operator,
            paused: *self.paused.borrow(),
        };
        let answer = match self.operator_store.save(record) {
            Ok(()) => answer,
            Err(e) => {
                error!(error = %e, "cannot record the operator's action: it will not survive a restart");
                format!("{answer} (NOT recorded, will not survive a restart: {e})")
            }
        };
        warn!(?action, by = %who, answer = %answer, "operator action");
        self.events.emit(Event::Operator {
            action,
            uid,
            operator: self.operator,
            paused: *self.paused.borrow(),
        });
        (verdict, answer)
    }

    /// Reports what a verdict changed and publishes the desired path: only
    /// once it is decided and some round has been seen, so no route
    /// changes without probe evidence.
    fn after(
        &self,
        judge: &Judge,
        verdict: Verdict,
        desired: &watch::Sender<Desired>,
        evidence: bool,
    ) {
        if let Some(pinned) = verdict.pinned_changed {
            if pinned {
                error!(
                    max_failovers = judge.fsm().policy().max_failovers,
                    "flapping: pinned on Backup until the flap window clears or an operator asks for failback"
                );
            } else {
                info!("flap window cleared: automatic failback allowed again");
            }
            self.events.emit(Event::Pinned(pinned));
        }
        if let Some(reason) = verdict.settled {
            warn!(%reason, "settled on Backup: completing the failover");
            self.events.emit(Event::Settled { reason });
        }
        if let Some(alarms) = verdict.alarms_changed {
            report_alarms(alarms, judge);
            self.events.emit(Event::Alarms(alarms));
        }
        if let Some((t, why)) = &verdict.overruled {
            warn!(from = %t.from, to = %t.to, reason = %t.reason, %why, "the state machine's verdict is overruled");
        }
        let at = match verdict.transition {
            Some(t) => {
                warn!(from = %t.from, to = %t.to, reason = %t.reason, "transition");
                self.verdict_reason.send_replace(t.reason.to_string());
                let at = t.at;
                self.events.emit(Event::Transition(t));
                Some(at)
            }
            None => desired.borrow().and_then(|(_, at)| at),
        };
        if !evidence {
            return;
        }
        let new = judge.desired().map(|path| (path, at));
        desired.send_if_modified(|d| {
            let changed = *d != new;
            *d = new;
            changed
        });
    }
}

/// Logs the alarms as they are raised and cleared.
fn report_alarms(alarms: Alarms, judge: &Judge) {
    let why = judge
        .backup_health()
        .map(|h| h.why_down().join("; "))
        .unwrap_or_default();
    if alarms.both_down {
        error!(backup = %why, "both paths down: DX is down and so is the backup; staying put, failing over as soon as the backup is up");
    } else if alarms.no_redundancy {
        // Said of DX's health, not of the tables: a held failback can
        // still have traffic on the VPN.
        warn!(backup = %why, "no redundancy: the backup path is down while DX is up");
    } else {
        match judge.backup() {
            BackupState::Up => info!("the backup path is healthy again"),
            BackupState::Unknown => {
                info!("backup alarms cleared: the backup's state is unknown until it is checked again");
            }
            BackupState::Unwatched => info!("backup alarms cleared: [backup] is no longer watched"),
            // Only both_down cleared (DX is back) while the backup stays down
            // lands in no_redundancy above; nothing else reaches here.
            BackupState::Down => info!("backup alarms cleared"),
        }
    }
}

/// What paces the rounds: tokio's interval (the paused clock in tests), or
/// a timerfd in production. A late round skips ticks rather than bunching
/// rounds up, either way.
enum Ticker {
    Tokio(tokio::time::Interval),
    Exact(crate::alarm::Ticker),
}

impl Ticker {
    fn new(interval: Duration, exact: bool) -> Self {
        if exact {
            match crate::alarm::Ticker::new(interval) {
                Ok(ticker) => return Self::Exact(ticker),
                Err(e) => warn!(error = %e, "no timerfd: rounds paced by tokio's timer"),
            }
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Self::Tokio(ticker)
    }

    async fn tick(&mut self) {
        match self {
            Self::Tokio(ticker) => {
                ticker.tick().await;
            }
            Self::Exact(ticker) => {
                ticker.tick().await;
            }
        }
    }
}

/// A round that did not finish in its interval and whose prober kept
/// nothing of it: no reply is known to have come.
fn overran(targets: &[std::net::IpAddr], count: u32, backup: Option<&BackupConfig>) -> RoundReport {
    let lost = |targets: &[std::net::IpAddr], count: u32| {
        targets
            .iter()
            .map(|&target| TargetReport {
                target,
                sent: count,
                rtts: Vec::new(),
                error: Some("round overran its interval".to_string()),
            })
            .collect()
    };
    RoundReport {
        targets: lost(targets, count),
        backup: backup.map_or_else(Vec::new, |b| lost(&b.targets, b.count)),
        label: None,
    }
}
