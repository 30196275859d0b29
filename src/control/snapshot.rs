//! The agent's live view, kept up to date from its events.
//!
//! [`StatusSink`] is an events sink: it files each event into a small board
//! behind a mutex held for a few field updates, so it never holds up the
//! probe loop or the reconciler. [`StatusView`] is the read side the control
//! server answers `status` from. Nothing flows back: the view only reads.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::protocol::{
    ActionView, AgentView, ApiErrorView, BackupView, FindingView, MachineView, OperatorView,
    ProbesView, RoundView, RoutesView, Status, TargetView, TransitionView,
};
use crate::agent::OperatorAction;
use crate::config::Config;
use crate::decide::{Alarms, BackupState, Operator, Why};
use crate::events::{Event, Sink, Standing};
use crate::fsm::{Failback, Phase, Transition, Via};
use crate::model::Adoption;
use crate::peers::Liveness;
use crate::probe::{RoundSummary, TargetReport};
use crate::state::OperatorRecord;

/// Per-target figures cover this many of the last rounds.
pub const WINDOW: usize = 10;

/// Findings kept, newest first.
const FINDINGS_KEPT: usize = 10;

/// Writes events into the board. Cheap to clone.
#[derive(Clone)]
pub struct StatusSink {
    board: Arc<Mutex<Board>>,
}

/// Reads the board. Cheap to clone.
#[derive(Clone)]
pub struct StatusView {
    board: Arc<Mutex<Board>>,
}

/// A sink and its view over one board, for the agent running `config`;
/// `restored` is the operator's hold and pause it starts with (they are
/// restored silently, so no event says so).
pub fn channel(
    config: &Config,
    dry_run: bool,
    restored: OperatorRecord,
) -> (StatusSink, StatusView) {
    let board = Arc::new(Mutex::new(Board::new(config, dry_run, restored)));
    (
        StatusSink {
            board: Arc::clone(&board),
        },
        StatusView { board },
    )
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    // A panic elsewhere while holding it leaves plain data behind: still readable.
    board
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatusSink {
    /// The settings a reload put in effect (`fall`, `rise`, targets…).
    pub fn set_config(&self, config: &Config) {
        lock(&self.board).settings = Settings::of(config);
    }
}

impl Sink for StatusSink {
    fn record(&self, event: &Event) {
        lock(&self.board).record(event, Instant::now(), SystemTime::now());
    }
}

impl StatusView {
    /// The live view as of now.
    pub fn status(&self) -> Status {
        lock(&self.board).status(Instant::now())
    }
}

/// Something that happened, and when (monotonic for ages, wall for display).
#[derive(Debug, Clone)]
struct Stamped<T> {
    value: T,
    at: Instant,
    wall: SystemTime,
}

impl<T> Stamped<T> {
    fn new(at: Instant, wall: SystemTime, value: T) -> Self {
        Self { value, at, wall }
    }

    fn age(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_secs_f64()
    }

    fn wall(&self) -> String {
        humantime::format_rfc3339_seconds(self.wall).to_string()
    }
}

#[derive(Debug, Clone)]
struct Settings {
    fall: u32,
    rise: u32,
    failback: Failback,
    interval: Duration,
    /// `Some(required)` with `[backup]`.
    backup: Option<bool>,
    backup_targets: Vec<IpAddr>,
    failback_guard: bool,
}

impl Settings {
    fn of(config: &Config) -> Self {
        Self {
            fall: config.policy.fall,
            rise: config.policy.rise,
            failback: config.policy.failback,
            interval: config.probe.interval,
            backup: config.backup.as_ref().map(|b| b.required),
            backup_targets: config
                .backup
                .as_ref()
                .map_or_else(Vec::new, |b| b.targets.clone()),
            failback_guard: config.reconcile.failback_requires_dx_route,
        }
    }
}

/// One target in one round.
#[derive(Debug, Clone)]
struct Sample {
    sent: u32,
    rtts: Vec<Duration>,
    up: bool,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct LastRound {
    number: u64,
    summary: RoundSummary,
    label: Option<String>,
    standing: Standing,
}

#[derive(Debug)]
struct Board {
    pid: u32,
    config: String,
    dry_run: bool,
    started: Instant,
    started_wall: SystemTime,
    settings: Settings,
    prober: String,
    adoption: Option<Adoption>,
    path: Option<Via>,
    round: Option<Stamped<LastRound>>,
    /// Targets in the order the last round listed them.
    targets: Vec<IpAddr>,
    samples: HashMap<IpAddr, VecDeque<Sample>>,
    overruns: u64,
    transition: Option<Stamped<Transition>>,
    converged: bool,
    why_not: Option<String>,
    pending: Vec<String>,
    api_error: Option<Stamped<(String, crate::cloud::CloudError)>>,
    operator: Operator,
    paused: bool,
    action: Option<Stamped<(OperatorAction, Option<u32>)>>,
    pinned: bool,
    alarms: Alarms,
    findings: VecDeque<Stamped<String>>,
    /// The backup targets' last rounds.
    backup_samples: HashMap<IpAddr, VecDeque<Sample>>,
    appliance: Option<Stamped<crate::backup::Appliance>>,
    /// Failbacks the guard holds, until the tables converge or the path moves.
    failback_held: Vec<String>,
    /// With `[ha]`: the pair as last assessed.
    pair: Option<Stamped<crate::ha::PeerView>>,
    /// With `[ha]`: the table whose tags carry the verdicts.
    ha_anchor: Option<String>,
}

impl Board {
    fn new(config: &Config, dry_run: bool, restored: OperatorRecord) -> Self {
        Self {
            pid: std::process::id(),
            config: config.source.display().to_string(),
            dry_run,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            settings: Settings::of(config),
            prober: String::new(),
            adoption: None,
            path: None,
            round: None,
            targets: config.probe.targets.clone(),
            samples: HashMap::new(),
            backup_samples: HashMap::new(),
            appliance: None,
            failback_held: Vec::new(),
            overruns: 0,
            transition: None,
            converged: false,
            why_not: Some("the route tables have not been read yet".to_string()),
            pending: Vec::new(),
            api_error: None,
            operator: restored.operator,
            paused: restored.paused,
            action: None,
            pinned: false,
            alarms: Alarms::default(),
            findings: VecDeque::new(),
            pair: None,
            ha_anchor: config.ha.as_ref().map(|h| h.anchor.clone()),
        }
    }

    fn record(&mut self, event: &Event, now: Instant, wall: SystemTime) {
        match event {
            Event::Started { prober, .. } => self.prober.clone_from(prober),
            Event::Adopted { adoption, .. } => {
                self.adoption = Some(*adoption);
                self.path = Some(match adoption {
                    Adoption::Primary => Via::Primary,
                    Adoption::Backup | Adoption::Partial { .. } => Via::Backup,
                });
                self.converged = false;
                self.why_not =
                    Some("waiting for probe evidence before any route change".to_string());
            }
            Event::Round {
                number,
                summary,
                targets,
                policy,
                label,
                standing,
                ..
            } => {
                if self.adoption.is_some() {
                    self.path = Some(standing.path);
                }
                self.operator = standing.operator;
                self.pinned = standing.pinned;
                self.add_samples(targets, |t| t.is_up(*policy));
                self.round = Some(Stamped::new(
                    now,
                    wall,
                    LastRound {
                        number: *number,
                        summary: summary.clone(),
                        label: label.clone(),
                        standing: standing.clone(),
                    },
                ));
            }
            Event::Overran => self.overruns += 1,
            Event::Transition(t) => {
                self.path = Some(t.to);
                self.converged = false;
                self.why_not = Some(format!("moving to {}: the calls are being made", t.to));
                self.pending.clear();
                self.failback_held.clear();
                self.transition = Some(Stamped::new(now, wall, t.clone()));
            }
            Event::Pinned(pinned) => self.pinned = *pinned,
            Event::RouteChange {
                action,
                result: Err(error),
                ..
            } => {
                self.api_error = Some(Stamped::new(
                    now,
                    wall,
                    (action.op().to_string(), error.clone()),
                ))
            }
            // The pair's findings are shown from its view (Peers); the
            // fight guard as held failbacks.
            Event::RouteChange { .. }
            | Event::Settled { .. }
            | Event::Reloaded
            | Event::PairFinding { .. } => {}
            Event::BackupRound {
                targets, policy, ..
            } => {
                let keep = &self.settings.backup_targets;
                self.backup_samples.retain(|ip, _| keep.contains(ip));
                for t in targets {
                    push_sample(
                        self.backup_samples.entry(t.target).or_default(),
                        t,
                        t.is_up(*policy),
                    );
                }
            }
            Event::ApplianceChecked(appliance) => {
                self.appliance = Some(Stamped::new(now, wall, appliance.clone()));
            }
            Event::Peers(view) => {
                let texts = [&view.disagreement, &view.duplicate, &view.split];
                for text in texts.into_iter().flatten() {
                    // Kept with the time it was first reported.
                    if self.findings.iter().any(|f| &f.value == text) {
                        continue;
                    }
                    self.findings
                        .push_front(Stamped::new(now, wall, text.clone()));
                    self.findings.truncate(FINDINGS_KEPT);
                }
                self.pair = Some(Stamped::new(now, wall, view.clone()));
            }
            Event::ApiError { op, error } => {
                self.api_error = Some(Stamped::new(now, wall, ((*op).to_string(), error.clone())));
            }
            Event::Finding(finding) => {
                let text = finding.to_string();
                if matches!(finding, crate::plan::Finding::FailbackHeld { .. })
                    && !self.failback_held.contains(&text)
                {
                    self.failback_held.push(text.clone());
                }
                self.findings.retain(|f| f.value != text);
                self.findings.push_front(Stamped::new(now, wall, text));
                self.findings.truncate(FINDINGS_KEPT);
            }
            Event::Converged { .. } => {
                self.failback_held.clear();
                self.converged = true;
                self.why_not = None;
                self.pending.clear();
            }
            Event::Diverged { why, .. } => {
                self.converged = false;
                self.why_not = Some(why.clone());
            }
            Event::Intended { actions, .. } => {
                self.converged = false;
                self.pending = actions.iter().map(ToString::to_string).collect();
            }
            Event::Alarms(alarms) => self.alarms = *alarms,
            Event::Operator {
                action,
                uid,
                operator,
                paused,
            } => {
                if self.paused && !paused {
                    // What a paused pass would have done is about to be done.
                    self.pending.clear();
                }
                self.operator = *operator;
                self.paused = *paused;
                self.action = Some(Stamped::new(now, wall, (*action, *uid)));
            }
        }
    }

    fn add_samples(&mut self, targets: &[TargetReport], is_up: impl Fn(&TargetReport) -> bool) {
        self.targets = targets.iter().map(|t| t.target).collect();
        // A target a reload removed has no figures left to show.
        self.samples.retain(|ip, _| self.targets.contains(ip));
        for t in targets {
            push_sample(self.samples.entry(t.target).or_default(), t, is_up(t));
        }
    }

    fn status(&self, now: Instant) -> Status {
        let standing = self.round.as_ref().map(|r| &r.value.standing);
        Status {
            agent: AgentView {
                pid: self.pid,
                version: env!("CARGO_PKG_VERSION").to_string(),
                config: self.config.clone(),
                dry_run: self.dry_run,
                started: humantime::format_rfc3339_seconds(self.started_wall).to_string(),
                uptime_seconds: now.saturating_duration_since(self.started).as_secs_f64(),
                prober: self.prober.clone(),
            },
            path: self.path,
            why: self.why(standing),
            state_machine: self.machine(standing, now),
            operator: OperatorView {
                hold: match self.operator {
                    Operator::Auto => None,
                    Operator::Hold(path) => Some(path),
                },
                paused: self.paused,
                last_action: self.action.as_ref().map(|a| ActionView {
                    action: a.value.0,
                    uid: a.value.1,
                    at: a.wall(),
                    age_seconds: a.age(now),
                }),
            },
            routes: self.routes(),
            probes: self.probes(now),
            last_transition: self.transition.as_ref().map(|t| TransitionView {
                from: t.value.from,
                to: t.value.to,
                reason: t.value.reason.to_string(),
                at: t.wall(),
                age_seconds: t.age(now),
            }),
            last_api_error: self.api_error.as_ref().map(|e| ApiErrorView {
                op: e.value.0.clone(),
                code: e.value.1.code.clone(),
                error: e.value.1.to_string(),
                at: e.wall(),
                age_seconds: e.age(now),
            }),
            backup: BackupView {
                state: standing
                    .map_or(BackupState::Unwatched, |s| s.backup)
                    .to_string(),
                both_paths_down: self.alarms.both_down,
                no_redundancy: self.alarms.no_redundancy,
                required: self.settings.backup == Some(true),
                appliance: self.settings.backup.map(|_| {
                    self.appliance
                        .as_ref()
                        .map(|a| a.value.clone())
                        .unwrap_or_default()
                        .to_string()
                }),
                appliance_age_seconds: self
                    .settings
                    .backup
                    .and(self.appliance.as_ref())
                    .map(|a| a.age(now)),
                targets: self
                    .settings
                    .backup_targets
                    .iter()
                    .map(|ip| target_view(*ip, self.backup_samples.get(ip)))
                    .collect(),
                failback_guard: self.settings.failback_guard,
                failback_held: self.failback_held.clone(),
            },
            findings: self
                .findings
                .iter()
                .map(|f| FindingView {
                    finding: f.value.clone(),
                    age_seconds: f.age(now),
                })
                .collect(),
            peers: self.pair.as_ref().map(|p| pair_view(p, now)),
            ha_anchor: self.ha_anchor.clone(),
            ha_read_age_seconds: self
                .pair
                .as_ref()
                .map(|p| (p.value.read_age + now.saturating_duration_since(p.at)).as_secs_f64()),
        }
    }

    /// Why the decided path is what it is, in the words of
    /// [`crate::decide::Why`] where one applies.
    fn why(&self, standing: Option<&Standing>) -> String {
        if let Some(pair) = self.pair.as_ref().map(|p| &p.value) {
            if pair.combined != pair.local {
                let saying: Vec<&str> = pair
                    .peers
                    .iter()
                    .filter(|s| s.liveness == Liveness::Live && s.verdict.path == pair.combined)
                    .map(|s| s.verdict.agent_id.as_str())
                    .collect();
                return format!(
                    "the pair goes {} ({} says so); we alone would say {}",
                    pair.combined,
                    saying.join(", "),
                    pair.local
                );
            }
        }
        if self.adoption.is_none() {
            return "the route tables have not been read yet: nothing is decided, no route is changed"
                .to_string();
        }
        if let Operator::Hold(_) = self.operator {
            return format!("{} (`ctl release` ends it)", Why::OperatorHold);
        }
        let Some(s) = standing else {
            return "no probe round since the tables were read".to_string();
        };
        let Settings { fall, rise, .. } = self.settings;
        if s.phase == Phase::Partial {
            return format!(
                "started on a partial set of our routes: {fall} down rounds finish the failover, {rise} up rounds the failback"
            );
        }
        match (s.path, s.local) {
            (Via::Primary, Via::Backup) => Why::HeldBothDown.to_string(),
            (Via::Backup, Via::Backup) if s.backup == BackupState::Down => {
                Why::StayingBothDown.to_string()
            }
            (path, local) if path == local => format!("{}: {}", Why::Local, self.local_why(s)),
            (path, local) => format!("decided {path} while the state machine says {local}"),
        }
    }

    /// What keeps the state machine where it is.
    fn local_why(&self, s: &Standing) -> String {
        let Settings {
            fall,
            rise,
            failback,
            ..
        } = self.settings;
        match s.local {
            Via::Primary if s.down_streak > 0 => format!(
                "DX answers; {} of {fall} down rounds toward failover",
                s.down_streak
            ),
            Via::Primary => "DX answers".to_string(),
            Via::Backup if s.pinned => {
                "flap damping pins Backup until the flap window clears or `ctl failback`"
                    .to_string()
            }
            Via::Backup if s.up_streak >= rise && failback == Failback::Manual => {
                "DX is back; failback = \"manual\": waiting for `ctl failback`".to_string()
            }
            Via::Backup => match s.hold_down_left {
                Some(left) if s.up_streak > 0 => format!(
                    "DX is back for {} of {rise} up rounds; hold-down {} left",
                    s.up_streak,
                    humantime::format_duration(Duration::from_secs(left.as_secs()))
                ),
                _ if s.up_streak > 0 => format!(
                    "DX is back for {} of {rise} up rounds toward failback",
                    s.up_streak
                ),
                _ => "DX is down".to_string(),
            },
        }
    }

    fn machine(&self, standing: Option<&Standing>, now: Instant) -> MachineView {
        let Settings { fall, rise, .. } = self.settings;
        let Some(s) = standing else {
            return MachineView {
                phase: "unadopted".to_string(),
                fall,
                rise,
                ..MachineView::default()
            };
        };
        // Hold-down was computed when the round ended; count on from there.
        let since_round = self
            .round
            .as_ref()
            .map_or(Duration::ZERO, |r| now.saturating_duration_since(r.at));
        MachineView {
            verdict: Some(s.local),
            phase: match s.phase {
                Phase::Unadopted => "unadopted",
                Phase::Partial => "partial",
                Phase::Settled => "settled",
            }
            .to_string(),
            down_streak: s.down_streak,
            fall,
            up_streak: s.up_streak,
            rise,
            hold_down_left_seconds: s
                .hold_down_left
                .map(|d| d.saturating_sub(since_round))
                .filter(|d| !d.is_zero())
                .map(|d| d.as_secs_f64()),
            pinned: self.pinned,
        }
    }

    fn routes(&self) -> RoutesView {
        let why_not = if self.dry_run {
            Some("dry run (`run --dry-run`): no route call is ever made".to_string())
        } else if self.converged {
            None
        } else {
            self.why_not.clone()
        };
        RoutesView {
            tables_read: self.adoption.is_some(),
            adoption: self.adoption.map(|a| a.to_string()),
            converged: self.converged && !self.dry_run,
            why_not,
            pending: self.pending.clone(),
        }
    }

    fn probes(&self, now: Instant) -> ProbesView {
        ProbesView {
            window: WINDOW,
            interval_seconds: self.settings.interval.as_secs_f64(),
            last_round: self.round.as_ref().map(|r| RoundView {
                number: r.value.number,
                up: r.value.summary.up,
                targets_down: r.value.summary.targets_down,
                targets_total: r.value.summary.targets_total,
                loss_ratio: r.value.summary.loss(),
                summary: r.value.summary.to_string(),
                age_seconds: r.age(now),
                label: r.value.label.clone(),
            }),
            targets: self
                .targets
                .iter()
                .map(|ip| target_view(*ip, self.samples.get(ip)))
                .collect(),
            overruns: self.overruns,
        }
    }
}

/// Adds one round of `t` to its window.
fn push_sample(window: &mut VecDeque<Sample>, t: &TargetReport, up: bool) {
    window.push_back(Sample {
        sent: t.sent,
        rtts: t.rtts.clone(),
        up,
        error: t.error.clone(),
    });
    while window.len() > WINDOW {
        window.pop_front();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Loss and RTT over the window of one target.
fn target_view(ip: IpAddr, samples: Option<&VecDeque<Sample>>) -> TargetView {
    let Some(samples) = samples.filter(|s| !s.is_empty()) else {
        return TargetView {
            target: ip.to_string(),
            loss_ratio: 1.0,
            ..TargetView::default()
        };
    };
    let sent: u64 = samples.iter().map(|s| u64::from(s.sent)).sum();
    let rtts: Vec<Duration> = samples
        .iter()
        .flat_map(|s| s.rtts.iter().copied())
        .collect();
    let received = rtts.len() as u64;
    #[allow(clippy::cast_precision_loss)] // counts of echoes, far below 2^52
    let loss_ratio = if sent == 0 {
        1.0
    } else {
        1.0 - (received as f64 / sent as f64).min(1.0)
    };
    let avg = (!rtts.is_empty())
        .then(|| rtts.iter().sum::<Duration>() / u32::try_from(rtts.len()).unwrap_or(u32::MAX));
    TargetView {
        target: ip.to_string(),
        rounds: samples.len(),
        up_rounds: samples.iter().filter(|s| s.up).count(),
        up: samples.back().is_some_and(|s| s.up),
        loss_ratio,
        rtt_min_ms: rtts.iter().min().copied().map(ms),
        rtt_avg_ms: avg.map(ms),
        rtt_max_ms: rtts.iter().max().copied().map(ms),
        error: samples.iter().rev().find_map(|s| s.error.clone()),
    }
}

/// Every agent of the pair, us first, with the age of its verdict now: a
/// peer's as of the last read, ours from our last successful publication,
/// each carried forward on the monotonic clock since the assessment.
fn pair_view(pair: &Stamped<crate::ha::PeerView>, now: Instant) -> Vec<super::protocol::PeerView> {
    let since = now.saturating_duration_since(pair.at);
    let read_age = pair.value.read_age;
    let mut out = vec![super::protocol::PeerView {
        agent: format!("{} (us)", pair.value.agent_id),
        verdict: pair.value.local,
        age_seconds: pair
            .value
            .published_age
            .map_or(0.0, |a| (a + since).as_secs_f64()),
        // Never published: peers cannot see us.
        live: pair.value.published_age.is_some(),
    }];
    out.extend(pair.value.peers.iter().map(|s| super::protocol::PeerView {
        agent: s.verdict.agent_id.clone(),
        verdict: s.verdict.path,
        age_seconds: (s.age + read_age + since).as_secs_f64(),
        live: s.liveness == Liveness::Live,
    }));
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cloud::{CloudError, ErrorKind};
    use crate::fsm::Reason;
    use crate::model::{fixtures::managed, Action};
    use crate::probe::{summarize, RoundPolicy, RoundReport};

    const POLICY: RoundPolicy = RoundPolicy {
        min_replies: 1,
        quorum: 2,
    };

    fn config() -> Config {
        Config::parse(
            r#"
[aws]
backend = "memory"
[probe]
targets = ["198.18.0.10", "198.18.0.11"]
interval = "1s"
timeout = "500ms"
[failover]
fall = 3
rise = 5
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#,
            Path::new("test.toml"),
        )
        .unwrap()
    }

    fn standing(path: Via, local: Via) -> Standing {
        Standing {
            path,
            local,
            phase: Phase::Settled,
            down_streak: 0,
            up_streak: 0,
            hold_down_left: None,
            pinned: false,
            backup: BackupState::Unwatched,
            operator: Operator::Auto,
        }
    }

    fn ms_list(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    /// A round: the first target answers with `rtts`, the second never.
    fn round(number: u64, rtts: &[u64], standing: Standing) -> Event {
        let report = RoundReport {
            targets: vec![
                TargetReport {
                    target: "198.18.0.10".parse().unwrap(),
                    sent: 3,
                    rtts: ms_list(rtts),
                    error: None,
                },
                TargetReport {
                    target: "198.18.0.11".parse().unwrap(),
                    sent: 3,
                    rtts: Vec::new(),
                    error: Some("network unreachable".into()),
                },
            ],
            backup: Vec::new(),
            label: None,
        };
        Event::Round {
            number,
            at: Instant::now(),
            summary: summarize(&report, POLICY),
            targets: report.targets,
            policy: POLICY,
            label: None,
            path: standing.path,
            standing,
        }
    }

    fn adopted(adoption: Adoption) -> Event {
        Event::Adopted {
            adoption,
            ours: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn status_lists_every_agent_of_the_pair_with_its_age_and_why_the_pair_decides() {
        use crate::peers::{Liveness, Seen, Verdict};
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        sink.record(&adopted(Adoption::Primary));
        sink.record(&round(1, &[5], standing(Via::Primary, Via::Primary)));
        let seen = |id: &str, path, liveness| Seen {
            verdict: Verdict {
                agent_id: id.into(),
                path,
                counter: 3,
                at: 0,
                reason: "3 consecutive down rounds".into(),
            },
            age: Duration::from_secs(4),
            liveness,
        };
        sink.record(&Event::Peers(crate::ha::PeerView {
            agent_id: "monitor-a".into(),
            local: Via::Primary,
            combined: Via::Backup,
            peers: vec![
                seen("monitor-b", Via::Backup, Liveness::Live),
                seen("monitor-c", Via::Backup, Liveness::Stale),
            ],
            disagreement: Some("agent monitor-b says Backup, we say Primary".into()),
            anchor: "rtb-0123456789abcdef0".into(),
            read_at: 4,
            duplicate: None,
            split: None,
            failback_hold: None,
            read_age: Duration::ZERO,
            published_age: Some(Duration::ZERO),
        }));
        tokio::time::advance(Duration::from_secs(6)).await;
        let status = view.status();
        let peers = status.peers.expect("[ha] peers are shown");
        let rows: Vec<(&str, Via, f64, bool)> = peers
            .iter()
            .map(|p| (p.agent.as_str(), p.verdict, p.age_seconds, p.live))
            .collect();
        assert_eq!(
            rows,
            [
                // Published at the assessment, 6 s ago.
                ("monitor-a (us)", Via::Primary, 6.0, true),
                ("monitor-b", Via::Backup, 10.0, true),
                ("monitor-c", Via::Backup, 10.0, false),
            ]
        );
        // Only the live Backup verdict moves the pair.
        assert_eq!(
            status.why,
            "the pair goes Backup (monitor-b says so); we alone would say Primary"
        );
        assert_eq!(
            status.findings[0].finding,
            "agent monitor-b says Backup, we say Primary"
        );
    }

    /// Ages come from each verdict's own timestamp: a peer that keeps
    /// publishing shows a young verdict however long ago the pair's view
    /// last changed (review 11: they used to grow from the first view).
    #[tokio::test(start_paused = true)]
    async fn peer_ages_follow_each_fresh_verdict_and_grow_between_assessments() {
        use crate::peers::{Liveness, Seen, Verdict};
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        let assessed = |at: u64, read_at: u64| {
            Event::Peers(crate::ha::PeerView {
                agent_id: "monitor-a".into(),
                local: Via::Primary,
                combined: Via::Primary,
                peers: vec![Seen {
                    verdict: Verdict {
                        agent_id: "monitor-b".into(),
                        path: Via::Primary,
                        counter: at,
                        at,
                        reason: String::new(),
                    },
                    age: Duration::from_secs(read_at - at),
                    liveness: Liveness::Live,
                }],
                disagreement: None,
                anchor: "rtb-0123456789abcdef0".into(),
                read_at,
                duplicate: None,
                split: None,
                failback_hold: None,
                read_age: Duration::ZERO,
                published_age: None,
            })
        };
        let age = || view.status().peers.unwrap()[1].age_seconds;
        sink.record(&assessed(1_000, 1_002));
        assert!((age() - 2.0).abs() < 1e-9);
        // One heartbeat later, no assessment yet: the age grows.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!((age() - 12.0).abs() < 1e-9, "{}", age());
        // The next assessment reads the peer's newer verdict.
        sink.record(&assessed(1_011, 1_012));
        assert!((age() - 1.0).abs() < 1e-9, "{}", age());
        for beat in 1..=30 {
            tokio::time::advance(Duration::from_secs(10)).await;
            sink.record(&assessed(1_011 + 10 * beat, 1_012 + 10 * beat));
        }
        assert!((age() - 1.0).abs() < 1e-9, "after 300 s: {}", age());
    }

    #[tokio::test(start_paused = true)]
    async fn rtt_and_loss_cover_the_last_rounds_only() {
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        sink.record(&adopted(Adoption::Primary));
        // An early round with huge RTTs, pushed out of the window by the rest.
        sink.record(&round(
            1,
            &[900, 900, 900],
            standing(Via::Primary, Via::Primary),
        ));
        for n in 2..=u64::try_from(WINDOW).unwrap() {
            sink.record(&round(n, &[1, 2], standing(Via::Primary, Via::Primary)));
        }
        sink.record(&round(99, &[4], standing(Via::Primary, Via::Primary)));
        tokio::time::advance(Duration::from_millis(300)).await;
        let s = view.status();

        let a = &s.probes.targets[0];
        assert_eq!(a.target, "198.18.0.10");
        assert_eq!((a.rounds, a.up_rounds, a.up), (WINDOW, WINDOW, true));
        assert_eq!(a.rtt_min_ms, Some(1.0));
        assert_eq!(a.rtt_max_ms, Some(4.0), "round 1 is out of the window");
        // 9 rounds of 1+2 ms and one of 4 ms: 31 ms over 19 replies.
        let avg = a.rtt_avg_ms.unwrap();
        assert!((avg - 31.0 / 19.0).abs() < 1e-6, "{avg}");
        // 30 sent, 19 answered.
        assert!(
            (a.loss_ratio - 11.0 / 30.0).abs() < 1e-9,
            "{}",
            a.loss_ratio
        );
        assert_eq!(a.error, None);

        let b = &s.probes.targets[1];
        assert_eq!((b.up_rounds, b.up, b.loss_ratio), (0, false, 1.0));
        assert_eq!(
            (b.rtt_min_ms, b.rtt_avg_ms, b.rtt_max_ms),
            (None, None, None)
        );
        assert_eq!(b.error.as_deref(), Some("network unreachable"));

        let last = s.probes.last_round.unwrap();
        assert_eq!(last.number, 99);
        assert!(last.up, "quorum 2: one target down is an up round");
        assert!(
            (last.age_seconds - 0.3).abs() < 1e-6,
            "{}",
            last.age_seconds
        );
        assert_eq!(s.probes.window, WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn convergence_follows_the_reconciler_and_says_why_not() {
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        let s = view.status();
        assert_eq!(s.path, None);
        assert!(!s.routes.tables_read && !s.routes.converged);
        assert!(s.why.contains("not been read"), "{}", s.why);

        sink.record(&adopted(Adoption::Primary));
        sink.record(&Event::Converged {
            path: Via::Primary,
            since_transition: None,
        });
        let s = view.status();
        assert_eq!(s.path, Some(Via::Primary));
        assert!(s.routes.converged && s.routes.why_not.is_none());
        assert_eq!(s.routes.adoption.as_deref(), Some("Primary"));

        let t = Transition {
            from: Via::Primary,
            to: Via::Backup,
            at: Instant::now(),
            reason: Reason::OperatorHold { path: Via::Backup },
        };
        sink.record(&Event::Transition(t));
        sink.record(&Event::Intended {
            path: Via::Backup,
            actions: vec![Action::Create(managed("10.1.0.0/16"))],
        });
        sink.record(&Event::Diverged {
            path: Via::Backup,
            why: "paused by an operator: no route calls".into(),
        });
        let error = CloudError::new(
            ErrorKind::Throttled,
            Some("RequestLimitExceeded"),
            "slow down",
        );
        sink.record(&Event::ApiError {
            op: "DescribeRouteTables",
            error,
        });
        tokio::time::advance(Duration::from_secs(5)).await;
        let s = view.status();
        assert_eq!(s.path, Some(Via::Backup));
        assert!(!s.routes.converged);
        assert_eq!(
            s.routes.why_not.as_deref(),
            Some("paused by an operator: no route calls")
        );
        assert_eq!(
            s.routes.pending,
            ["create rtb-0123456789abcdef0 10.1.0.0/16 -> eni-0123456789abcdef0"]
        );
        let t = s.last_transition.unwrap();
        assert_eq!((t.from, t.to), (Via::Primary, Via::Backup));
        assert_eq!(t.reason, "an operator holds Backup");
        assert!((t.age_seconds - 5.0).abs() < 1e-6);
        let e = s.last_api_error.unwrap();
        assert_eq!(e.op, "DescribeRouteTables");
        assert_eq!(e.code.as_deref(), Some("RequestLimitExceeded"));

        sink.record(&Event::Converged {
            path: Via::Backup,
            since_transition: None,
        });
        let s = view.status();
        assert!(s.routes.converged && s.routes.pending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restored_hold_and_pause_show_before_any_event_and_actions_update_them() {
        let restored = OperatorRecord {
            operator: Operator::Hold(Via::Backup),
            paused: true,
        };
        let (sink, view) = channel(&config(), false, restored);
        let s = view.status();
        assert_eq!(s.operator.hold, Some(Via::Backup));
        assert!(s.operator.paused);
        assert!(s.operator.last_action.is_none());

        sink.record(&adopted(Adoption::Backup));
        let mut held = standing(Via::Backup, Via::Primary);
        held.operator = Operator::Hold(Via::Backup);
        sink.record(&round(1, &[1], held));
        assert!(view.status().why.contains("an operator holds this path"));

        sink.record(&Event::Operator {
            action: OperatorAction::Resume,
            uid: Some(1000),
            operator: Operator::Hold(Via::Backup),
            paused: false,
        });
        sink.record(&Event::Operator {
            action: OperatorAction::Release,
            uid: Some(1001),
            operator: Operator::Auto,
            paused: false,
        });
        let s = view.status();
        assert_eq!((s.operator.hold, s.operator.paused), (None, false));
        let last = s.operator.last_action.unwrap();
        assert_eq!(
            (last.action, last.uid),
            (OperatorAction::Release, Some(1001))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn why_names_what_keeps_the_path() {
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        sink.record(&adopted(Adoption::Primary));
        let mut s = standing(Via::Primary, Via::Primary);
        s.down_streak = 2;
        sink.record(&round(1, &[], s));
        let why = view.status().why;
        assert!(why.contains("2 of 3 down rounds toward failover"), "{why}");

        // The primary is down, but so is the backup: held on Primary.
        let mut s = standing(Via::Primary, Via::Backup);
        s.backup = BackupState::Down;
        sink.record(&round(2, &[], s));
        assert_eq!(view.status().why, Why::HeldBothDown.to_string());

        let mut s = standing(Via::Backup, Via::Backup);
        s.up_streak = 2;
        s.hold_down_left = Some(Duration::from_secs(40));
        sink.record(&round(3, &[1], s));
        tokio::time::advance(Duration::from_secs(10)).await;
        let status = view.status();
        assert!(status.why.contains("2 of 5 up rounds"), "{}", status.why);
        let left = status.state_machine.hold_down_left_seconds.unwrap();
        assert!((left - 30.0).abs() < 1e-6, "hold-down counts on: {left}");
        assert_eq!(status.state_machine.verdict, Some(Via::Backup));
        assert_eq!(
            (status.state_machine.fall, status.state_machine.rise),
            (3, 5)
        );

        let mut s = standing(Via::Backup, Via::Backup);
        s.pinned = true;
        sink.record(&round(4, &[1], s));
        let status = view.status();
        assert!(status.why.contains("flap damping"), "{}", status.why);
        assert!(status.state_machine.pinned);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_never_calls_itself_converged() {
        let (sink, view) = channel(&config(), true, OperatorRecord::default());
        sink.record(&adopted(Adoption::Primary));
        sink.record(&Event::Converged {
            path: Via::Primary,
            since_transition: None,
        });
        let s = view.status();
        assert!(s.agent.dry_run && !s.routes.converged);
        assert!(s.routes.why_not.unwrap().contains("dry run"));
    }

    #[tokio::test(start_paused = true)]
    async fn findings_are_kept_newest_first_without_repeats() {
        let (sink, view) = channel(&config(), false, OperatorRecord::default());
        let missing = |t: &str| {
            Event::Finding(crate::plan::Finding::TableMissing {
                route_table_id: t.to_string(),
            })
        };
        sink.record(&missing("rtb-00000001"));
        sink.record(&missing("rtb-00000002"));
        sink.record(&missing("rtb-00000001"));
        for i in 3..20 {
            sink.record(&missing(&format!("rtb-{i:08}")));
        }
        let f = view.status().findings;
        assert_eq!(f.len(), FINDINGS_KEPT);
        assert!(f[0].finding.contains("rtb-00000019"), "{}", f[0].finding);
        let all: Vec<&str> = f.iter().map(|f| f.finding.as_str()).collect();
        let mut dedup = all.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), all.len());
    }

    #[tokio::test(start_paused = true)]
    async fn the_backup_path_its_appliance_and_the_failback_guard_show() {
        assert!(
            view_of(&config()).backup.appliance.is_none(),
            "no [backup]: no check"
        );
        let text = r#"
[aws]
backend = "memory"
[probe]
targets = ["198.18.0.10"]
[backup]
targets = ["198.19.0.1"]
[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#;
        let c = Config::parse(text, Path::new("test.toml")).unwrap();
        let (sink, view) = channel(&c, false, OperatorRecord::default());
        let b = view.status().backup;
        assert_eq!(b.appliance.as_deref(), Some("not checked yet"));
        assert!(b.required && b.failback_guard);
        assert_eq!(b.targets.len(), 1);
        sink.record(&Event::BackupRound {
            number: 1,
            summary: crate::probe::RoundSummary::synthetic(false),
            targets: vec![TargetReport {
                target: "198.19.0.1".parse().unwrap(),
                sent: 3,
                rtts: ms_list(&[9]),
                error: None,
            }],
            policy: RoundPolicy {
                min_replies: 2,
                quorum: 1,
            },
            state: BackupState::Down,
        });
        sink.record(&Event::ApplianceChecked(crate::backup::Appliance::Failed(
            vec![(
                "eni-0123456789abcdef0".into(),
                crate::backup::EniProblem::NotAttached,
            )],
        )));
        let held = Event::Finding(crate::plan::Finding::FailbackHeld {
            route: managed("10.1.0.0/16"),
            held: crate::plan::Held::NoDxRoute,
        });
        sink.record(&held);
        sink.record(&held);
        let b = view.status().backup;
        assert_eq!(
            b.appliance.as_deref(),
            Some("eni-0123456789abcdef0 is not attached to an instance")
        );
        assert!(b.appliance_age_seconds.is_some_and(|a| a < 60.0));
        let t = &b.targets[0];
        assert_eq!((t.rounds, t.up_rounds, t.up), (1, 0, false));
        assert_eq!(b.failback_held.len(), 1);
        assert!(b.failback_held[0].starts_with("failback would blackhole"));
        let text = super::super::render::status(&view.status());
        assert!(text.contains("failback guard:  HOLDING:"), "{text}");
        assert!(
            text.contains("appliance ENI: eni-0123456789abcdef0 is not attached"),
            "{text}"
        );
        assert!(text.contains("(checked 0s ago)"), "{text}");
        assert!(text.contains("198.19.0.1"), "{text}");
        sink.record(&Event::Converged {
            path: Via::Primary,
            since_transition: None,
        });
        assert!(view.status().backup.failback_held.is_empty());
    }

    fn view_of(c: &Config) -> Status {
        channel(c, false, OperatorRecord::default()).1.status()
    }
}
