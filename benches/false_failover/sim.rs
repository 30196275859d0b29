//! The detectors under test, driven over simulated time: the round rule
//! (`summarize` + `Fsm`, as the agent runs it today), the silence detector
//! (`Detector` + `Fsm`, driven as `SilenceProber` drives it), and the
//! oracle that sees the path's true state.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::time::Duration;

use route_failover::detect::{
    round_margin, DetectConfig, Detector, DetectorKind, EchoId, SilenceConfig,
};
use route_failover::fsm::{Failback, Fsm, Policy, Via};
use route_failover::probe::rtt::Deadline;
use route_failover::probe::{summarize, RoundPolicy, RoundReport, TargetReport};
use tokio::time::Instant;

use crate::model::{PathModel, Trace};

/// How a profile turns echoes into a failover.
#[derive(Debug, Clone)]
pub enum Rule {
    /// `fall` consecutive down rounds, every echo waiting `timeout`; with
    /// `early_stop` (the agent's default) a target up for the round is
    /// sent no more of its echoes.
    Rounds { fall: u32, early_stop: bool },
    /// The silence detector.
    Silence {
        silence: Duration,
        suspect: Duration,
        deadline: Deadline,
        min_lost: u32,
    },
}

/// A profile under test: the knobs that trade detection time for noise.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// Groups profiles that differ in one knob, for the plot.
    pub family: &'static str,
    pub interval: Duration,
    pub timeout: Duration,
    pub count: u32,
    pub targets: u32,
    pub rule: Rule,
}

/// What one run did.
#[derive(Debug, Default)]
pub struct Run {
    /// Instants (ns) the profile failed over.
    pub failovers: Vec<u64>,
    pub echoes: u64,
}

const RISE: u32 = 10;
const HOLD_DOWN: Duration = Duration::from_secs(60);

fn policy(fall: u32) -> Policy {
    Policy {
        fall,
        rise: RISE,
        hold_down: HOLD_DOWN,
        failback: Failback::Auto,
        max_failovers: u32::MAX,
        flap_window: Duration::from_secs(3600),
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn addrs(n: u32) -> Vec<IpAddr> {
    (0..n)
        .map(|i| IpAddr::from([198, 18, 0, u8::try_from(i + 1).unwrap_or(255)]))
        .collect()
}

impl Profile {
    pub fn round_policy(&self) -> RoundPolicy {
        RoundPolicy {
            min_replies: 1,
            quorum: self.targets,
        }
    }

    fn silence_config(&self) -> Option<SilenceConfig> {
        let Rule::Silence {
            silence,
            suspect,
            deadline,
            min_lost,
        } = self.rule
        else {
            return None;
        };
        let detect = DetectConfig {
            kind: DetectorKind::Silence,
            silence,
            suspect_interval: suspect,
            deadline,
        };
        Some(SilenceConfig {
            min_lost,
            ..detect.silence_config(self.interval, self.count, self.timeout, self.round_policy())
        })
    }

    /// The worst case for a silent cut on a clean path, from the rule
    /// alone: for rounds, the cut lands just after a round's first echo
    /// left, then `fall` rounds, the last ending at its last echo's
    /// timeout; for silence, [`SilenceConfig::worst_case`] at the floor.
    pub fn analytic_worst_case(&self) -> Duration {
        match (&self.rule, self.silence_config()) {
            (Rule::Rounds { fall, .. }, _) => {
                let spacing = self.interval.saturating_sub(self.timeout) / self.count;
                self.interval * *fall + spacing * (self.count - 1) + self.timeout
            }
            (Rule::Silence { deadline, .. }, Some(cfg)) => {
                let floor = match deadline {
                    Deadline::Fixed => self.timeout,
                    Deadline::Adaptive { floor, .. } => *floor,
                };
                cfg.worst_case(self.targets, floor)
            }
            (Rule::Silence { .. }, None) => unreachable!(),
        }
    }

    /// Runs from 0 to `end` (ns) on a path given by `fate`.
    pub fn run(&self, fate: &dyn Fn(usize, u64) -> Option<Duration>, end: u64) -> Run {
        match self.rule {
            Rule::Rounds { fall, early_stop } => self.run_rounds(fall, early_stop, fate, end),
            Rule::Silence { .. } => self.run_silence(fate, end),
        }
    }

    fn run_rounds(
        &self,
        fall: u32,
        early_stop: bool,
        fate: &dyn Fn(usize, u64) -> Option<Duration>,
        end: u64,
    ) -> Run {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(fall), Via::Primary, t0);
        let round_policy = self.round_policy();
        let spacing = self.interval.saturating_sub(self.timeout) / self.count;
        let addrs = addrs(self.targets);
        let mut run = Run::default();
        let mut start = 0u64;
        while start < end {
            // Echo k leaves only to a target that wants it by the replies
            // read at its instant (with early stop, one not yet up): the
            // verdict is that of every echo, only the echoes sent differ.
            let targets: Vec<TargetReport> = addrs
                .iter()
                .enumerate()
                .map(|(i, &target)| {
                    let fates: Vec<Option<Duration>> = (0..self.count)
                        .map(|k| fate(i, start + ns(spacing * k)))
                        .collect();
                    TargetReport::played(
                        target,
                        &fates,
                        spacing,
                        self.timeout,
                        round_policy,
                        early_stop,
                    )
                })
                .collect();
            run.echoes += targets.iter().map(|t| u64::from(t.sent)).sum::<u64>();
            let summary = summarize(
                &RoundReport {
                    targets,
                    backup: Vec::new(),
                    label: None,
                },
                round_policy,
            );
            // A down round returns when its last echo's timeout has passed.
            let at = start + ns(spacing * (self.count - 1) + self.timeout);
            let step = fsm.observe(t0 + Duration::from_nanos(at), &summary);
            if step.transition.is_some_and(|t| t.to == Via::Backup) {
                run.failovers.push(at);
            }
            start += ns(self.interval);
        }
        run
    }

    /// One agent tick per `interval`; each tick runs the detector until
    /// just before the next tick or until it judges the path silent, as
    /// `SilenceProber::round` does. Between an early return and the next
    /// tick nothing is sent, and replies wait to be handed in.
    fn run_silence(&self, fate: &dyn Fn(usize, u64) -> Option<Duration>, end: u64) -> Run {
        let cfg = self.silence_config().expect("a silence profile");
        let timeout = cfg.timeout;
        let t0 = Instant::now();
        let at = |n: u64| t0 + Duration::from_nanos(n);
        let since = |i: Instant| ns(i.duration_since(t0));
        let mut det = Detector::new(cfg, &addrs(self.targets), t0);
        let mut fsm = Fsm::new(policy(1), Via::Primary, t0);
        // (arrival, seq, target, rtt)
        let mut replies: BinaryHeap<Reverse<(u64, u64, usize, Duration)>> = BinaryHeap::new();
        let mut run = Run::default();
        let interval = ns(self.interval);
        let margin = ns(round_margin(self.interval));
        let mut tick = 0u64;
        while tick < end {
            let round_end = tick + interval - margin;
            let path = fsm.path();
            let mut now = tick;
            let early = loop {
                while let Some(&Reverse((arrival, seq, target, rtt))) = replies.peek() {
                    if arrival > now {
                        break;
                    }
                    replies.pop();
                    det.reply(EchoId { target, seq }, rtt);
                }
                for echo in det.poll(at(now), path) {
                    run.echoes += 1;
                    if let Some(rtt) = fate(echo.target, now).filter(|rtt| *rtt <= timeout) {
                        replies.push(Reverse((now + ns(rtt), echo.seq, echo.target, rtt)));
                    }
                }
                if path == Via::Primary && det.silent(at(now), path) {
                    break true;
                }
                if now >= round_end {
                    break false;
                }
                let mut next = since(det.next_wake(path)).min(round_end);
                if let Some(&Reverse((arrival, ..))) = replies.peek() {
                    next = next.min(arrival);
                }
                now = next.max(now + 1);
            };
            let (_, summary) = det.close_window(at(now), path);
            let step = fsm.observe(at(now), &summary);
            if step.transition.is_some_and(|t| t.to == Via::Backup) {
                run.failovers.push(now);
            }
            debug_assert!(early || now >= round_end);
            tick += interval;
        }
        run
    }
}

/// The ideal detector at detection time `t`: fails over exactly when the
/// path has been silent for `t` without a break, and fails back like the
/// profiles do (`rise` windows of one `interval` with no silence at all,
/// and not before the hold-down). Returns the failover instants (ns).
pub fn oracle(spells: &[(u64, u64)], t: Duration, interval: Duration, end: u64) -> Vec<u64> {
    let t0 = Instant::now();
    let at = |n: u64| t0 + Duration::from_nanos(n);
    let mut fsm = Fsm::new(policy(1), Via::Primary, t0);
    let t = ns(t);
    let interval = ns(interval);
    let mut failovers = Vec::new();
    // Spells long enough, as (detection instant, spell index).
    let mut due = spells
        .iter()
        .filter(|(start, stop)| stop - start >= t)
        .map(|(start, _)| start + t)
        .peekable();
    let mut tick = interval;
    while tick < end {
        while let Some(&d) = due.peek() {
            if d > tick {
                break;
            }
            due.next();
            if fsm.path() == Via::Primary {
                let step = fsm.observe(
                    at(d),
                    &route_failover::probe::RoundSummary::synthetic(false),
                );
                if step.transition.is_some() {
                    failovers.push(d);
                }
            }
        }
        let window_clear = {
            let from = tick - interval;
            // Any spell overlapping (from, tick]?
            let i = spells.partition_point(|&(start, _)| start <= tick);
            !(i > 0 && spells[i - 1].1 > from)
        };
        let up = match fsm.path() {
            Via::Primary => true,
            Via::Backup => window_clear,
        };
        fsm.observe(
            at(tick),
            &route_failover::probe::RoundSummary::synthetic(up),
        );
        tick += interval;
    }
    failovers
}

/// Silent cuts at `cuts` random phases on the model's background (no
/// bursts): the longest time from a cut to the failover, and how many
/// cuts were lost to a false failover before them.
pub fn measured_worst_case(
    profile: &Profile,
    model: &PathModel,
    cuts: u32,
    seed: u64,
) -> (Option<Duration>, u32) {
    let background = PathModel {
        bursts: None,
        ..model.clone()
    };
    let cycle = ns(profile.interval.max(Duration::from_secs(1)));
    let mut worst = 0u64;
    let mut early = 0;
    for i in 0..u64::from(cuts) {
        let trace: Trace = background.trace(seed.wrapping_mul(1000).wrapping_add(i), 60);
        // Spread the cuts evenly over one cycle of every clock involved.
        let cut = ns(Duration::from_secs(20)) + cycle * i / u64::from(cuts) + (i * 7919) % 1000;
        let fate = |target: usize, sent: u64| {
            if sent >= cut {
                return None;
            }
            trace.fate(target, sent).filter(|rtt| sent + ns(*rtt) < cut)
        };
        let run = profile.run(&fate, cut + ns(Duration::from_secs(40)));
        // A false failover before the cut leaves it on Backup: no measure.
        if run.failovers.iter().any(|&f| f < cut) {
            early += 1;
            continue;
        }
        match run.failovers.first() {
            Some(&f) => worst = worst.max(f - cut),
            None => panic!("{}: a silent cut was never detected", profile.name),
        }
    }
    ((early < cuts).then(|| Duration::from_nanos(worst)), early)
}
