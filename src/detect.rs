//! The silence detector: judges the primary path by how long it has been
//! silent, not by whole rounds.
//!
//! A round rule fails over after `fall` whole rounds without enough replies,
//! so a burst's phase against the round grid decides whether it counts, and
//! every echo waits the same fixed `timeout`. This detector instead keeps,
//! per target, the send time of the newest echo that was answered, and calls
//! a target *silent* once echoes sent at least `silence` after that have
//! passed their deadline unanswered. The path is silent when `quorum`
//! targets are. Three things make it approach an ideal detector:
//!
//! - **Continuous, staggered probing.** Each target gets one echo every
//!   `period`, the targets offset from each other, so the path is sampled
//!   every `period / targets`: silence is measured from a recent instant.
//! - **A suspicion phase.** The first echo that misses its deadline on the
//!   primary path makes every target suspect: it is probed every
//!   `suspect_period` until it answers, so the end of a short burst is seen
//!   within tens of milliseconds and silence is judged on fresh evidence.
//! - **RTT-aware deadlines** ([`crate::probe::rtt`]): an echo counts as
//!   evidence of silence once `clamp(srtt + k·rttvar, floor, timeout)` has
//!   passed, a few milliseconds on a clean path. A reply that comes later
//!   but within `timeout` still counts: it moves the newest answered send
//!   time forward and so withdraws the evidence, unless the failover has
//!   already been decided.
//!
//! Worst case for a silent cut: `silence` after the last answered echo, plus
//! up to one `suspect_period` until the next echo leaves, plus its deadline.
//!
//! Failback is judged as before, per window of one `interval`: the window is
//! up when at least `quorum` targets answered `min_replies` of the echoes
//! that ended in it. Suspicion probing runs only on the primary path.
//!
//! Pure: time is passed in, echoes to send come out, replies go in. The
//! async driver that sends them is [`crate::probe::icmp::SilenceProber`];
//! the simulation in `benches/false_failover.rs` drives the same type.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::fsm::{Policy, Via};
use crate::probe::rtt::{Deadline, RttEstimator};
use crate::probe::{summarize, RoundPolicy, RoundReport, RoundSummary, TargetReport};

/// Which rule turns echoes into the verdict the state machine observes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    /// `fall` consecutive down rounds, each echo waiting the fixed `timeout`.
    Rounds,
    /// `silence` without a reply, with suspicion probing and RTT-aware deadlines.
    Silence,
}

/// The `[probe]` settings of the detector, as validated from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectConfig {
    pub kind: DetectorKind,
    /// Silence that fails over (silence detector only).
    pub silence: Duration,
    /// Probing period per target while suspect (silence detector only).
    pub suspect_interval: Duration,
    /// How long each echo waits before it counts as lost (silence detector only).
    pub deadline: Deadline,
}

/// How long before the agent's next tick a round of the silence detector
/// returns, so that the agent's own bound on the round (one interval)
/// never cuts it short even when a timer fires late on a busy machine.
/// Nothing is sent in that gap, so it can delay a verdict by as much.
pub fn round_margin(interval: Duration) -> Duration {
    Duration::from_millis(20).min(interval / 10)
}

/// Expired echoes a target needs since its last reply before it can be
/// silent. With a short `silence` the span can be made of one steady echo
/// and the gap before it; six echoes (five of them 25 ms apart while
/// suspect) make 20 % random loss fail over about once a century instead
/// of every other day at 300 ms, and cost nothing in worst case there.
pub const MIN_LOST: u32 = 6;

impl DetectConfig {
    /// The policy the state machine runs with. The silence detector makes
    /// the failover decision itself and reports it as one down round, so
    /// the state machine fails over on the first one (`fall = 1`); rise,
    /// hold-down and flap damping are unchanged.
    pub fn fsm_policy(&self, policy: &Policy) -> Policy {
        match self.kind {
            DetectorKind::Rounds => policy.clone(),
            DetectorKind::Silence => Policy {
                fall: 1,
                ..policy.clone()
            },
        }
    }

    /// The detector's settings for a probe configuration: `count` echoes per
    /// target per `interval`, each waiting at most `timeout`.
    pub fn silence_config(
        &self,
        interval: Duration,
        count: u32,
        timeout: Duration,
        round: RoundPolicy,
    ) -> SilenceConfig {
        SilenceConfig {
            silence: self.silence,
            period: interval / count.max(1),
            suspect_period: self.suspect_interval,
            timeout,
            deadline: self.deadline,
            min_lost: MIN_LOST,
            round,
        }
    }
}

/// Everything the silence detector needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilenceConfig {
    /// Silence, from the send time of a target's newest answered echo, that
    /// makes it silent.
    pub silence: Duration,
    /// Steady probing: one echo per target every `period`.
    pub period: Duration,
    /// Probing while suspect: one echo per target every `suspect_period`.
    pub suspect_period: Duration,
    /// A reply later than this never counts.
    pub timeout: Duration,
    pub deadline: Deadline,
    /// Expired echoes since the last reply before a target can be silent.
    pub min_lost: u32,
    /// `quorum` decides the path; `min_replies` applies to failback windows.
    pub round: RoundPolicy,
}

impl SilenceConfig {
    /// The longest a silent cut can take to be detected while the echo
    /// deadline stays at `deadline` (the floor on a clean path; at most the
    /// timeout): `silence`, then up to one suspect period until the next
    /// echo leaves, then its deadline. When steady probing is sparser than
    /// that, the first lost echo and `min_lost` bound it instead.
    pub fn worst_case(&self, targets: u32, deadline: Duration) -> Duration {
        let by_silence = self.silence + self.suspect_period + deadline;
        // The first echo after the cut leaves within a path period; it has
        // to expire before suspicion starts, then min_lost − 1 more.
        let path_period = self.period / targets.max(1);
        let by_count = path_period
            + deadline
            + self.suspect_period * self.min_lost.saturating_sub(1)
            + deadline;
        by_silence.max(by_count)
    }
}

/// One echo the caller must send now, and report on by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EchoId {
    /// Index into the detector's targets.
    pub target: usize,
    /// Increases by one per echo, across all targets.
    pub seq: u64,
}

#[derive(Debug, Clone)]
struct Outstanding {
    seq: u64,
    sent: Instant,
    /// When it counts as evidence of silence.
    deadline: Instant,
    /// When a reply can no longer count (the configured timeout).
    give_up: Instant,
    expired: bool,
}

/// What one target did since the window opened.
#[derive(Debug, Clone, Default)]
struct Window {
    lost: u32,
    rtts: Vec<Duration>,
    error: Option<String>,
}

#[derive(Debug, Clone)]
struct Target {
    addr: IpAddr,
    rtt: RttEstimator,
    next_steady: Instant,
    /// Some while suspect: when its next echo leaves.
    suspect_next: Option<Instant>,
    last_sent: Option<Instant>,
    /// Send time of the newest answered echo (the detector's start at first).
    last_good: Instant,
    /// Expired echoes sent after `last_good`, and the newest one's send time.
    lost_since_good: u32,
    newest_lost: Option<Instant>,
    /// Unanswered echoes in send order, until their `give_up`.
    outstanding: VecDeque<Outstanding>,
    window: Window,
}

impl Target {
    fn silent(&self, config: &SilenceConfig) -> bool {
        self.lost_since_good >= config.min_lost
            && self
                .newest_lost
                .is_some_and(|t| t.saturating_duration_since(self.last_good) >= config.silence)
    }

    /// While suspect on the primary path the suspicion clock alone sends;
    /// otherwise the steady grid. Never two echoes closer than the
    /// suspect period, whatever the two clocks say.
    fn next_send(&self, path: Via, suspect_period: Duration) -> Instant {
        let want = match (path, self.suspect_next) {
            (Via::Primary, Some(s)) => s,
            _ => self.next_steady,
        };
        self.last_sent
            .map_or(want, |last| want.max(last + suspect_period))
    }
}

/// The silence detector's state for every target.
#[derive(Debug, Clone)]
pub struct Detector {
    config: SilenceConfig,
    targets: Vec<Target>,
    next_seq: u64,
}

impl Detector {
    /// Starts probing at `now`, the targets' steady echoes staggered evenly
    /// over one period. Silence is measured from `now` until a first reply.
    pub fn new(config: SilenceConfig, targets: &[IpAddr], now: Instant) -> Self {
        let n = u32::try_from(targets.len()).unwrap_or(u32::MAX).max(1);
        let targets = targets
            .iter()
            .enumerate()
            .map(|(i, &addr)| Target {
                addr,
                rtt: RttEstimator::new(),
                next_steady: now + config.period / n * u32::try_from(i).unwrap_or(0),
                suspect_next: None,
                last_sent: None,
                last_good: now,
                lost_since_good: 0,
                newest_lost: None,
                outstanding: VecDeque::new(),
                window: Window::default(),
            })
            .collect();
        Self {
            config,
            targets,
            next_seq: 0,
        }
    }

    pub fn config(&self) -> &SilenceConfig {
        &self.config
    }

    /// The current echo deadline of each target.
    pub fn deadlines(&self) -> Vec<Duration> {
        self.targets
            .iter()
            .map(|t| t.rtt.deadline(self.config.deadline, self.config.timeout))
            .collect()
    }

    /// The next instant something happens without a reply arriving: an
    /// echo is due, or one passes its deadline or its timeout.
    pub fn next_wake(&self, path: Via) -> Instant {
        let suspect_period = self.config.suspect_period;
        self.targets
            .iter()
            .flat_map(|t| {
                let pending =
                    t.outstanding
                        .iter()
                        .map(|o| if o.expired { o.give_up } else { o.deadline });
                std::iter::once(t.next_send(path, suspect_period)).chain(pending)
            })
            .min()
            .expect("at least one target")
    }

    /// Judges every deadline and timeout up to `now`, then returns the
    /// echoes due at `now`, recorded as sent at `now`.
    pub fn poll(&mut self, now: Instant, path: Via) -> Vec<EchoId> {
        self.expire(now, path);
        let mut due = Vec::new();
        for (i, t) in self.targets.iter_mut().enumerate() {
            if t.next_send(path, self.config.suspect_period) > now {
                continue;
            }
            t.last_sent = Some(now);
            let seq = self.next_seq;
            self.next_seq += 1;
            let wait = t.rtt.deadline(self.config.deadline, self.config.timeout);
            t.outstanding.push_back(Outstanding {
                seq,
                sent: now,
                deadline: now + wait,
                give_up: now + self.config.timeout,
                expired: false,
            });
            while t.next_steady <= now {
                t.next_steady += self.config.period;
            }
            if t.suspect_next.is_some() {
                t.suspect_next = Some(now + self.config.suspect_period);
            }
            due.push(EchoId { target: i, seq });
        }
        due
    }

    /// A reply to `echo`, `rtt` after it left. Replies to echoes that have
    /// passed their timeout, or that were never sent, are ignored.
    pub fn reply(&mut self, echo: EchoId, rtt: Duration) {
        let Some(t) = self.targets.get_mut(echo.target) else {
            return;
        };
        let Some(pos) = t.outstanding.iter().position(|o| o.seq == echo.seq) else {
            return;
        };
        let Some(o) = t.outstanding.remove(pos) else {
            return;
        };
        if rtt > self.config.timeout {
            t.window.lost += 1;
            return;
        }
        t.rtt.sample(rtt);
        t.window.rtts.push(rtt);
        t.suspect_next = None;
        if o.sent > t.last_good {
            t.last_good = o.sent;
            // Only echoes sent after the newest answered one are evidence.
            let newer = t
                .outstanding
                .iter()
                .filter(|x| x.expired && x.sent > o.sent);
            t.lost_since_good = u32::try_from(newer.clone().count()).unwrap_or(u32::MAX);
            t.newest_lost = newer.map(|x| x.sent).max();
        }
    }

    /// `echo` could not be sent (say, "network unreachable"): it is lost
    /// at once, and the error is reported with the window.
    pub fn send_failed(&mut self, echo: EchoId, error: String, now: Instant) {
        if let Some(t) = self.targets.get_mut(echo.target) {
            if let Some(o) = t.outstanding.iter_mut().find(|o| o.seq == echo.seq) {
                o.deadline = o.deadline.min(now);
                o.give_up = o.give_up.min(now);
            }
            t.window.error.get_or_insert(error);
        }
    }

    fn expire(&mut self, now: Instant, path: Via) {
        let mut newly_expired = false;
        for t in &mut self.targets {
            for o in t.outstanding.iter_mut().filter(|o| !o.expired) {
                if o.deadline <= now {
                    o.expired = true;
                    newly_expired = true;
                    if o.sent > t.last_good {
                        t.lost_since_good += 1;
                        t.newest_lost = Some(t.newest_lost.map_or(o.sent, |n| n.max(o.sent)));
                    }
                }
            }
            while t.outstanding.front().is_some_and(|o| o.give_up <= now) {
                t.outstanding.pop_front();
                t.window.lost += 1;
            }
        }
        if newly_expired && path == Via::Primary {
            // One late echo makes every target suspect; a target that is
            // already silent needs no more evidence and stays on its
            // steady period (a dead host is not probed densely forever).
            let config = &self.config;
            for t in &mut self.targets {
                if t.suspect_next.is_none() && !t.silent(config) {
                    t.suspect_next = Some(now);
                }
            }
        }
        for t in &mut self.targets {
            if t.silent(&self.config) {
                t.suspect_next = None;
            }
        }
    }

    /// Whether the path is silent at `now`: at least `quorum` targets are.
    pub fn silent(&mut self, now: Instant, path: Via) -> bool {
        self.expire(now, path);
        let silent = self
            .targets
            .iter()
            .filter(|t| t.silent(&self.config))
            .count();
        u32::try_from(silent).unwrap_or(u32::MAX) >= self.config.round.quorum
    }

    /// Closes the window that opened at the previous call (or at the start)
    /// and returns what each target did in it with the verdict the state
    /// machine observes: on the primary path, down only when the path is
    /// silent; on the backup path, the round rule over the window's echoes.
    pub fn close_window(&mut self, now: Instant, path: Via) -> (RoundReport, RoundSummary) {
        let silent = self.silent(now, path);
        let targets = self
            .targets
            .iter_mut()
            .map(|t| {
                let w = std::mem::take(&mut t.window);
                TargetReport {
                    target: t.addr,
                    sent: w.lost + u32::try_from(w.rtts.len()).unwrap_or(u32::MAX),
                    rtts: w.rtts,
                    error: w.error,
                }
            })
            .collect();
        let report = RoundReport {
            targets,
            backup: Vec::new(),
            label: None,
        };
        let mut summary = summarize(&report, self.config.round);
        summary.up = match path {
            Via::Primary => !silent,
            Via::Backup => summary.up && !silent,
        };
        (report, summary)
    }
}

#[cfg(test)]
mod tests;
