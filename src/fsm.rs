//! The hysteresis state machine that decides which path carries traffic.
//!
//! Pure: it sees one [`RoundSummary`] at a time together with the instant
//! the round ended, and returns decisions. It never sleeps, reads a clock or
//! touches the network, so every rule can be tested exhaustively.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::model::Adoption;
use crate::probe::RoundSummary;

/// The path production traffic should take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Via {
    /// Direct Connect: no managed static routes, propagated routes win.
    Primary,
    /// The VPN appliance: our static routes point at its ENI.
    Backup,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Primary => "Primary",
            Via::Backup => "Backup",
        })
    }
}

/// Whether the agent fails back by itself once the primary is healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    Auto,
    /// Stay on Backup until an operator asks for failback.
    Manual,
}

/// The knobs of the state machine, as validated from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Consecutive down rounds that trigger a failover.
    pub fall: u32,
    /// Consecutive up rounds required before failing back.
    pub rise: u32,
    /// Minimum time on Backup after a failover before failing back.
    pub hold_down: Duration,
    pub failback: Failback,
    /// More failovers than this within `flap_window` pins Backup.
    pub max_failovers: u32,
    pub flap_window: Duration,
}

/// Why a transition happened: enough to explain it to an operator at 3 a.m.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// `rounds` consecutive down rounds reached `fall`.
    Fall { rounds: u32, last: RoundSummary },
    /// `rounds` consecutive up rounds reached `rise` and hold-down has passed.
    Rise {
        rounds: u32,
        on_backup_for: Duration,
        last: RoundSummary,
    },
    /// An operator asked for failback and `rise` up rounds were in hand.
    Operator { rounds: u32, last: RoundSummary },
    /// The agent started on a partial set of our routes (an interrupted
    /// failover or failback) and probe evidence decided how to finish:
    /// `rounds` consecutive up (`up`) or down rounds.
    Partial {
        rounds: u32,
        up: bool,
        last: RoundSummary,
    },
    /// An operator holds `path` (`ctl hold`, `ctl failover --hold`).
    OperatorHold { path: Via },
    /// An operator released a hold: the probes decide again.
    Released,
    /// The backup path came up while the primary is still down.
    BackupReturned,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Fall { rounds, last } => {
                write!(f, "{rounds} consecutive down rounds (last: {last})")
            }
            Reason::Rise {
                rounds,
                on_backup_for,
                last,
            } => write!(
                f,
                "{rounds} consecutive up rounds after {} on backup (last: {last})",
                humantime::format_duration(round_to_millis(*on_backup_for))
            ),
            Reason::Operator { rounds, last } => write!(
                f,
                "operator asked for failback, {rounds} consecutive up rounds (last: {last})"
            ),
            Reason::OperatorHold { path } => write!(f, "an operator holds {path}"),
            Reason::Released => f.write_str("an operator released the hold: the probes decide"),
            Reason::BackupReturned => {
                f.write_str("the backup path is up again while the primary is still down")
            }
            Reason::Partial { rounds, up, last } => write!(
                f,
                "found a partial set of our routes; {rounds} consecutive {} rounds finish the {} (last: {last})",
                if *up { "up" } else { "down" },
                if *up { "failback" } else { "failover" }
            ),
        }
    }
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A change of path, with the instant and the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: Via,
    pub to: Via,
    pub at: Instant,
    pub reason: Reason,
}

/// What one observed round changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub transition: Option<Transition>,
    /// Set when a partial start was settled on Backup (finishing the
    /// failover); settling on Primary is a [`Transition`].
    pub settled: Option<Reason>,
    /// `Some(true)` when flap damping started pinning Backup on this round,
    /// `Some(false)` when it stopped.
    pub pinned_changed: Option<bool>,
}

/// How far the state machine trusts its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The route tables have not been read yet: rounds count, nothing is decided.
    Unadopted,
    /// Started on a partial set of our routes: `fall` down rounds finish the
    /// failover, `rise` up rounds the failback; nothing before.
    Partial,
    /// The path is decided and the usual rules apply.
    Settled,
}

/// The hysteresis state machine.
#[derive(Debug, Clone)]
pub struct Fsm {
    policy: Policy,
    phase: Phase,
    path: Via,
    down_streak: u32,
    up_streak: u32,
    /// When the current stay on Backup began (a failover, or adoption).
    backup_since: Option<Instant>,
    /// Failover instants inside the flap window, oldest first.
    failovers: VecDeque<Instant>,
    pinned: bool,
    operator_failback: bool,
    /// A failover the backup gate holds: the down streak keeps counting
    /// but nothing is committed (no hold-down, no flap count), because
    /// traffic never moved.
    failover_held: bool,
}

impl Fsm {
    /// Starts on `path`. Starting on Backup (adopted from the route tables)
    /// counts `now` as the failover instant, so hold-down applies after a
    /// restart too.
    pub fn new(policy: Policy, path: Via, now: Instant) -> Self {
        Self {
            policy,
            phase: Phase::Settled,
            path,
            down_streak: 0,
            up_streak: 0,
            backup_since: (path == Via::Backup).then_some(now),
            failovers: VecDeque::new(),
            pinned: false,
            operator_failback: false,
            failover_held: false,
        }
    }

    /// Starts before the route tables have been read: rounds are counted
    /// (they are evidence) but nothing is decided until [`Fsm::adopt`].
    pub fn unadopted(policy: Policy) -> Self {
        Self {
            policy,
            phase: Phase::Unadopted,
            path: Via::Primary,
            down_streak: 0,
            up_streak: 0,
            backup_since: None,
            failovers: VecDeque::new(),
            pinned: false,
            operator_failback: false,
            failover_held: false,
        }
    }

    /// Takes the path the route tables show. Rounds seen before count: if
    /// they already decide (say `fall` down rounds while EC2 was
    /// unreachable), the returned step carries the decision, reasoned from
    /// `last`, the latest round.
    pub fn adopt(&mut self, adoption: Adoption, now: Instant, last: Option<&RoundSummary>) -> Step {
        match adoption {
            Adoption::Primary => {
                self.phase = Phase::Settled;
                self.path = Via::Primary;
            }
            Adoption::Backup => {
                self.phase = Phase::Settled;
                self.path = Via::Backup;
                self.backup_since = Some(now);
            }
            Adoption::Partial { .. } => {
                self.phase = Phase::Partial;
                // Some traffic already rides the VPN.
                self.path = Via::Backup;
                self.backup_since = Some(now);
            }
        }
        match last {
            Some(round) => self.decide(now, round),
            None => Step::default(),
        }
    }

    /// The path the tables should show, once it is decided.
    pub fn desired(&self) -> Option<Via> {
        (self.phase == Phase::Settled).then_some(self.path)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn path(&self) -> Via {
        self.path
    }

    /// Consecutive down rounds so far.
    pub fn down_streak(&self) -> u32 {
        self.down_streak
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Consecutive up rounds so far (meaningful on Backup).
    pub fn up_streak(&self) -> u32 {
        self.up_streak
    }

    /// How long hold-down still keeps the agent on Backup, at `now`.
    pub fn hold_down_left(&self, now: Instant) -> Option<Duration> {
        let since = self.backup_since?;
        let left = self
            .policy
            .hold_down
            .saturating_sub(now.saturating_duration_since(since));
        (!left.is_zero()).then_some(left)
    }

    /// True while flap damping holds the agent on Backup.
    pub fn pinned(&self) -> bool {
        self.pinned
    }

    /// True when the primary is down: on Backup, or on Primary with
    /// `fall` down rounds in hand (a failover held by the backup gate).
    pub fn primary_down(&self) -> bool {
        self.path == Via::Backup || self.down_streak >= self.policy.fall
    }

    /// Holds (or releases) a failover: while held, `fall` down rounds
    /// commit nothing. After a release, [`Fsm::reconsider`] fails over at
    /// once if the streak still says so.
    pub fn hold_failover(&mut self, held: bool) {
        self.failover_held = held;
    }

    /// Applies the rules again to the streaks as they stand (say, a held
    /// failover was released), reasoned from `last`, the latest round.
    pub fn reconsider(&mut self, now: Instant, last: &RoundSummary) -> Step {
        self.decide(now, last)
    }

    /// Replaces the policy (config reload) without losing the path or streaks.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// An operator allows failback: it happens once `rise` consecutive up
    /// rounds are in hand, regardless of hold-down, manual mode or flap
    /// damping. It never fails back onto a path that is not answering.
    pub fn request_failback(&mut self) {
        if self.path == Via::Backup {
            self.operator_failback = true;
        }
    }

    /// Feeds one finished round, observed at `now`.
    pub fn observe(&mut self, now: Instant, round: &RoundSummary) -> Step {
        if round.up {
            self.down_streak = 0;
            self.up_streak = self.up_streak.saturating_add(1);
        } else {
            self.up_streak = 0;
            self.down_streak = self.down_streak.saturating_add(1);
        }
        self.decide(now, round)
    }

    /// Applies the rules to the streaks as they stand.
    fn decide(&mut self, now: Instant, round: &RoundSummary) -> Step {
        let mut step = Step::default();
        self.expire_failovers(now, &mut step);
        match self.phase {
            Phase::Unadopted => return step,
            Phase::Partial => {
                if self.down_streak >= self.policy.fall {
                    self.phase = Phase::Settled;
                    step.settled = Some(Reason::Partial {
                        rounds: self.down_streak,
                        up: false,
                        last: round.clone(),
                    });
                    self.down_streak = 0;
                } else if self.up_streak >= self.policy.rise {
                    self.phase = Phase::Settled;
                    let rounds = self.up_streak;
                    self.path = Via::Primary;
                    self.backup_since = None;
                    self.up_streak = 0;
                    step.transition = Some(Transition {
                        from: Via::Backup,
                        to: Via::Primary,
                        at: now,
                        reason: Reason::Partial {
                            rounds,
                            up: true,
                            last: round.clone(),
                        },
                    });
                }
                return step;
            }
            Phase::Settled => {}
        }
        match self.path {
            Via::Primary if self.down_streak >= self.policy.fall && !self.failover_held => {
                step.transition = Some(self.fail_over(now, round));
                let pinned = self.failovers.len() > self.policy.max_failovers as usize;
                if pinned && !self.pinned {
                    self.pinned = true;
                    step.pinned_changed = Some(true);
                }
            }
            Via::Backup if self.up_streak >= self.policy.rise => {
                step.transition = self.try_fail_back(now, round);
            }
            _ => {}
        }
        step
    }

    fn fail_over(&mut self, now: Instant, round: &RoundSummary) -> Transition {
        let rounds = self.down_streak;
        self.path = Via::Backup;
        self.backup_since = Some(now);
        self.failovers.push_back(now);
        self.down_streak = 0;
        self.up_streak = 0;
        Transition {
            from: Via::Primary,
            to: Via::Backup,
            at: now,
            reason: Reason::Fall {
                rounds,
                last: round.clone(),
            },
        }
    }

    fn try_fail_back(&mut self, now: Instant, round: &RoundSummary) -> Option<Transition> {
        let rounds = self.up_streak;
        let reason = if self.operator_failback {
            Reason::Operator {
                rounds,
                last: round.clone(),
            }
        } else {
            let on_backup_for = self
                .backup_since
                .map_or(Duration::MAX, |since| now.saturating_duration_since(since));
            let allowed = self.policy.failback == Failback::Auto
                && !self.pinned
                && on_backup_for >= self.policy.hold_down;
            if !allowed {
                return None;
            }
            Reason::Rise {
                rounds,
                on_backup_for,
                last: round.clone(),
            }
        };
        self.path = Via::Primary;
        self.backup_since = None;
        self.up_streak = 0;
        self.down_streak = 0;
        self.operator_failback = false;
        // An operator's failback also clears flap damping: they have looked.
        self.pinned = false;
        Some(Transition {
            from: Via::Backup,
            to: Via::Primary,
            at: now,
            reason,
        })
    }

    /// Forgets failovers older than the flap window; unpins when few remain.
    fn expire_failovers(&mut self, now: Instant, step: &mut Step) {
        while let Some(&oldest) = self.failovers.front() {
            if now.saturating_duration_since(oldest) < self.policy.flap_window {
                break;
            }
            self.failovers.pop_front();
        }
        if self.pinned && self.failovers.len() <= self.policy.max_failovers as usize {
            self.pinned = false;
            step.pinned_changed = Some(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy {
            fall: 3,
            rise: 10,
            hold_down: Duration::ZERO,
            failback: Failback::Auto,
            max_failovers: 100,
            flap_window: Duration::from_secs(3600),
        }
    }

    fn round(up: bool) -> RoundSummary {
        RoundSummary::synthetic(up)
    }

    /// Feeds rounds one second apart; returns the transitions with their round index.
    fn run(fsm: &mut Fsm, start: Instant, rounds: &[bool]) -> Vec<(usize, Via)> {
        rounds
            .iter()
            .enumerate()
            .filter_map(|(i, &up)| {
                let at = start + Duration::from_secs(i as u64 + 1);
                fsm.observe(at, &round(up)).transition.map(|t| (i, t.to))
            })
            .collect()
    }

    fn pattern(s: &str) -> Vec<bool> {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c == 'U')
            .collect()
    }

    #[test]
    fn fails_over_after_fall_consecutive_down_rounds() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Primary, t0);
        assert_eq!(run(&mut fsm, t0, &pattern("UDD")), vec![]);
        assert_eq!(fsm.path(), Via::Primary);
        assert_eq!(run(&mut fsm, t0, &pattern("D")), vec![(0, Via::Backup)]);
    }

    #[test]
    fn an_up_round_resets_the_fall_count() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Primary, t0);
        assert_eq!(run(&mut fsm, t0, &pattern("DDUDDUDDU")), vec![]);
        assert_eq!(fsm.path(), Via::Primary);
    }

    #[test]
    fn a_single_lossy_round_never_fails_over_unlike_the_script() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Primary, t0);
        assert_eq!(run(&mut fsm, t0, &pattern("UUDUUDUU")), vec![]);
    }

    #[test]
    fn fails_back_after_rise_consecutive_up_rounds() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Backup, t0);
        let got = run(&mut fsm, t0, &pattern("UUUUUUUUU U"));
        assert_eq!(got, vec![(9, Via::Primary)]);
    }

    #[test]
    fn one_down_round_resets_the_rise_count() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Backup, t0);
        // Nine good, one bad, nine good: the original script would have failed back.
        let got = run(&mut fsm, t0, &pattern("UUUUUUUUU D UUUUUUUUU"));
        assert_eq!(got, vec![]);
        assert_eq!(fsm.path(), Via::Backup);
        assert_eq!(fsm.up_streak(), 9);
        let got = run(&mut fsm, t0 + Duration::from_secs(100), &pattern("U"));
        assert_eq!(got, vec![(0, Via::Primary)]);
    }

    #[test]
    fn hold_down_delays_failback_until_it_has_passed() {
        let t0 = Instant::now();
        let p = Policy {
            hold_down: Duration::from_secs(30),
            ..policy()
        };
        let mut fsm = Fsm::new(p, Via::Primary, t0);
        // Fail over at t0+3s.
        assert_eq!(run(&mut fsm, t0, &pattern("DDD")), vec![(2, Via::Backup)]);
        // Rounds at t0+4s .. t0+32s are up: rise is met at t0+13s but hold-down
        // ends at t0+33s.
        let ups: Vec<(usize, Via)> = (4..=32)
            .filter_map(|s| {
                fsm.observe(t0 + Duration::from_secs(s), &round(true))
                    .transition
                    .map(|t| (s as usize, t.to))
            })
            .collect();
        assert_eq!(ups, vec![]);
        let t = fsm.observe(t0 + Duration::from_secs(33), &round(true));
        let t = t.transition.expect("fails back once hold-down has passed");
        assert_eq!(t.to, Via::Primary);
        match t.reason {
            Reason::Rise {
                rounds,
                on_backup_for,
                ..
            } => {
                assert_eq!(rounds, 30);
                assert_eq!(on_backup_for, Duration::from_secs(30));
            }
            other => panic!("unexpected reason {other:?}"),
        }
    }

    #[test]
    fn hold_down_applies_after_adopting_backup_at_startup() {
        let t0 = Instant::now();
        let p = Policy {
            hold_down: Duration::from_secs(60),
            rise: 2,
            ..policy()
        };
        let mut fsm = Fsm::new(p, Via::Backup, t0);
        assert_eq!(run(&mut fsm, t0, &[true; 59]), vec![]);
        let step = fsm.observe(t0 + Duration::from_secs(60), &round(true));
        assert_eq!(step.transition.map(|t| t.to), Some(Via::Primary));
    }

    #[test]
    fn manual_failback_waits_for_the_operator_and_for_rise() {
        let t0 = Instant::now();
        let p = Policy {
            failback: Failback::Manual,
            rise: 3,
            ..policy()
        };
        let mut fsm = Fsm::new(p, Via::Backup, t0);
        assert_eq!(run(&mut fsm, t0, &[true; 50]), vec![]);
        fsm.request_failback();
        let step = fsm.observe(t0 + Duration::from_secs(51), &round(true));
        let t = step.transition.expect("fails back on the operator's word");
        assert!(matches!(t.reason, Reason::Operator { rounds: 51, .. }));

        // The operator's request does not fail back onto a dead primary.
        let mut fsm = Fsm::new(
            Policy {
                failback: Failback::Manual,
                rise: 3,
                ..policy()
            },
            Via::Backup,
            t0,
        );
        fsm.request_failback();
        assert_eq!(run(&mut fsm, t0, &pattern("DDUUDU")), vec![]);
        assert_eq!(run(&mut fsm, t0, &pattern("UU")), vec![(1, Via::Primary)]);
    }

    #[test]
    fn request_failback_on_primary_is_ignored() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Primary, t0);
        fsm.request_failback();
        run(&mut fsm, t0, &pattern("DDD"));
        assert_eq!(fsm.path(), Via::Backup);
        // A stale request must not let a later Backup stay skip hold-down or manual mode.
        assert!(!fsm.operator_failback);
    }

    #[test]
    fn flapping_pins_backup_until_the_window_clears() {
        let t0 = Instant::now();
        let p = Policy {
            fall: 1,
            rise: 1,
            max_failovers: 2,
            flap_window: Duration::from_secs(100),
            ..policy()
        };
        let mut fsm = Fsm::new(p, Via::Primary, t0);
        // Two full flaps are tolerated.
        assert_eq!(run(&mut fsm, t0, &pattern("DUDU")).len(), 4);
        // The third failover inside the window pins Backup.
        let step = fsm.observe(t0 + Duration::from_secs(5), &round(false));
        assert_eq!(step.transition.map(|t| t.to), Some(Via::Backup));
        assert_eq!(step.pinned_changed, Some(true));
        assert!(fsm.pinned());
        // Healthy rounds do not fail back while pinned.
        for s in 6..100 {
            let step = fsm.observe(t0 + Duration::from_secs(s), &round(true));
            assert_eq!(step.transition, None, "failed back while pinned at {s}s");
        }
        // At t0+101s the first failover (t0+1s) has left the window.
        let step = fsm.observe(t0 + Duration::from_secs(101), &round(true));
        assert_eq!(step.pinned_changed, Some(false));
        assert_eq!(step.transition.map(|t| t.to), Some(Via::Primary));
    }

    #[test]
    fn operator_clears_flap_damping() {
        let t0 = Instant::now();
        let p = Policy {
            fall: 1,
            rise: 1,
            max_failovers: 1,
            ..policy()
        };
        let mut fsm = Fsm::new(p, Via::Primary, t0);
        run(&mut fsm, t0, &pattern("DUD"));
        assert!(fsm.pinned());
        fsm.request_failback();
        let step = fsm.observe(t0 + Duration::from_secs(10), &round(true));
        assert_eq!(step.transition.map(|t| t.to), Some(Via::Primary));
        assert!(!fsm.pinned());
    }

    #[test]
    fn transitions_carry_their_reason() {
        let t0 = Instant::now();
        let mut fsm = Fsm::new(policy(), Via::Primary, t0);
        let mut last = None;
        for s in 1..=3 {
            last = fsm
                .observe(t0 + Duration::from_secs(s), &round(false))
                .transition;
        }
        let t = last.expect("failover");
        assert_eq!((t.from, t.to), (Via::Primary, Via::Backup));
        assert_eq!(t.at, t0 + Duration::from_secs(3));
        assert!(matches!(t.reason, Reason::Fall { rounds: 3, .. }));
        assert!(t
            .reason
            .to_string()
            .starts_with("3 consecutive down rounds"));
    }

    fn arb_policy() -> impl Strategy<Value = Policy> {
        (
            1u32..6,
            1u32..12,
            0u64..20,
            any::<bool>(),
            1u32..4,
            5u64..60,
        )
            .prop_map(|(fall, rise, hold, manual, max_failovers, window)| Policy {
                fall,
                rise,
                hold_down: Duration::from_secs(hold),
                failback: if manual {
                    Failback::Manual
                } else {
                    Failback::Auto
                },
                max_failovers,
                flap_window: Duration::from_secs(window),
            })
    }

    proptest! {
            /// No failover without `fall` consecutive down rounds, no failback
            /// without `rise` consecutive up rounds and hold-down, never in manual
            /// mode, and never two transitions on one round.
            #[test]
            fn transitions_respect_hysteresis(
                policy in arb_policy(),
                start_backup in any::<bool>(),
                rounds in proptest::collection::vec(any::<bool>(), 0..400),
            ) {
                let t0 = Instant::now();
                let start = if start_backup { Via::Backup } else { Via::Primary };
                let mut fsm = Fsm::new(policy.clone(), start, t0);
                let mut path = start;
                let mut backup_since = start_backup.then_some(t0);
                let (mut downs, mut ups) = (0u32, 0u32);
                for (i, &up) in rounds.iter().enumerate() {
                    let now = t0 + Duration::from_secs(i as u64 + 1);
                    if up { ups += 1; downs = 0; } else { downs += 1; ups = 0; }
                    let step = fsm.observe(now, &round(up));
                    if let Some(t) = step.transition {
                        prop_assert_eq!(t.from, path);
                        prop_assert_ne!(t.from, t.to);
                        match t.to {
                            Via::Backup => {
                                prop_assert!(!up);
                                prop_assert!(downs >= policy.fall);
                                backup_since = Some(now);
                            }
                            Via::Primary => {
                                prop_assert!(up);
                                prop_assert!(ups >= policy.rise);
                                prop_assert_eq!(policy.failback, Failback::Auto);
                                let since = backup_since.expect("was on backup");
                                prop_assert!(now - since >= policy.hold_down);
                            }
                        }
                        path = t.to;
                        downs = 0;
                        ups = 0;
                    }
                    prop_assert_eq!(fsm.path(), path);
                }
            }

            /// With auto failback, a primary that stays up eventually wins back
            /// traffic once flap damping and hold-down allow: the agent never
            /// sticks on Backup for good.
            #[test]
            fn auto_failback_is_live(policy in arb_policy(), prefix in proptest::collection::vec(any::<bool>(), 0..100)) {
                let policy = Policy { failback: Failback::Auto, ..policy };
                let t0 = Instant::now();
                let mut fsm = Fsm::new(policy.clone(), Via::Primary, t0);
                let mut s = 0u64;
                for &up in &prefix {
                    s += 1;
                    fsm.observe(t0 + Duration::from_secs(s), &round(up));
                }
                let bound = policy.rise as u64 + policy.hold_down.as_secs() + policy.flap_window.as_secs() + 2;
                for _ in 0..bound {
                    s += 1;
                    fsm.observe(t0 + Duration::from_secs(s), &round(true));
                }
                prop_assert_eq!(fsm.path(), Via::Primary);
            }

            /// Flap damping against a model: pinned exactly while more than
            /// `max_failovers` failovers lie within `flap_window`, set at the
            /// failover that exceeds it, cleared when the window lets them go;
            /// while pinned, automatic failback never happens.
            #[test]
            fn flap_damping_pins_exactly_when_the_window_is_over_full(
                policy in arb_policy(),
                rounds in proptest::collection::vec(any::<bool>(), 0..400),
            ) {
                let policy = Policy { failback: Failback::Auto, hold_down: Duration::ZERO, ..policy };
                let t0 = Instant::now();
                let mut fsm = Fsm::new(policy.clone(), Via::Primary, t0);
                let mut failovers: Vec<Instant> = Vec::new();
                let mut pinned = false;
                for (i, &up) in rounds.iter().enumerate() {
                    let now = t0 + Duration::from_secs(i as u64 + 1);
                    failovers.retain(|&t| now - t < policy.flap_window);
                    let was_pinned = pinned;
                    if pinned && failovers.len() <= policy.max_failovers as usize {
                        pinned = false;
                    }
                    let step = fsm.observe(now, &round(up));
                    if let Some(t) = &step.transition {
                        if t.to == Via::Backup {
                            failovers.push(now);
                            if failovers.len() > policy.max_failovers as usize {
                                pinned = true;
                            }
                        } else {
                            prop_assert!(!pinned, "failed back while pinned");
                        }
                    }
                    prop_assert_eq!(fsm.pinned(), pinned, "round {}", i);
                    if was_pinned != pinned {
                        prop_assert_eq!(step.pinned_changed, Some(pinned));
                    }
                }
            }

            /// A partial start decides nothing until `fall` consecutive down or
            /// `rise` consecutive up rounds, and then decides by whichever came
            /// first; an unadopted machine decides nothing at all.
            #[test]
            fn a_partial_start_waits_for_evidence(
                policy in arb_policy(),
                before in proptest::collection::vec(any::<bool>(), 0..20),
                rounds in proptest::collection::vec(any::<bool>(), 0..60),
            ) {
                let t0 = Instant::now();
                let mut fsm = Fsm::unadopted(policy.clone());
                let (mut downs, mut ups) = (0u32, 0u32);
                let mut s = 0u64;
                let mut last = None;
                for &up in &before {
                    s += 1;
                    if up { ups += 1; downs = 0; } else { downs += 1; ups = 0; }
                    let step = fsm.observe(t0 + Duration::from_secs(s), &round(up));
                    prop_assert_eq!(&step, &Step::default());
                    prop_assert_eq!(fsm.desired(), None);
                    last = Some(round(up));
                }
                let mut step = fsm.adopt(Adoption::Partial { ours: 1, of: 2, peer: false }, t0 + Duration::from_secs(s), last.as_ref());
                let mut settled = None;
                for &up in &rounds {
                    if let Some(t) = &step.transition {
                        prop_assert!(ups >= policy.rise);
                        prop_assert_eq!(t.to, Via::Primary);
                        settled = Some(Via::Primary);
                        break;
                    }
                    if step.settled.is_some() {
                        prop_assert!(downs >= policy.fall);
                        settled = Some(Via::Backup);
                        break;
                    }
                    prop_assert!(downs < policy.fall && ups < policy.rise);
                    prop_assert_eq!(fsm.desired(), None);
                    s += 1;
                    if up { ups += 1; downs = 0; } else { downs += 1; ups = 0; }
                    step = fsm.observe(t0 + Duration::from_secs(s), &round(up));
                }
                if let Some(path) = settled {
                    prop_assert_eq!(fsm.desired(), Some(path));
                }
            }
    }
}
