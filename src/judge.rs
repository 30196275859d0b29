//! The judge: the stateful side of the decision. It owns the hysteresis
//! state machine (the primary's health), the backup's health and the
//! operator's mode, feeds each change through [`decide`], and reports when
//! the decided path changes, with the reason. Pure like its parts: inputs
//! and the time in, a [`Verdict`] out; the agent does the I/O.

use tokio::time::Instant;

use crate::backup::{Appliance, BackupHealth};
use crate::decide::{decide, Alarms, BackupState, Decision, Inputs, Operator, Why};
use crate::events::Standing;
use crate::fsm::{Fsm, Phase, Policy, Reason, Step, Transition, Via};
use crate::model::Adoption;
use crate::probe::RoundSummary;

/// What one input changed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Verdict {
    /// The decided path changed.
    pub transition: Option<Transition>,
    /// A partial start was settled on Backup.
    pub settled: Option<Reason>,
    /// Flap damping started (`true`) or stopped pinning Backup.
    pub pinned_changed: Option<bool>,
    /// The alarms changed (raised or cleared).
    pub alarms_changed: Option<Alarms>,
    /// The state machine moved, but the decision did not follow: why.
    pub overruled: Option<(Transition, Why)>,
}

/// The backup settings the judge needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPolicy {
    pub fall: u32,
    pub rise: u32,
    /// Whether backup targets are probed (else the appliance check alone decides).
    pub probed: bool,
    /// A known-down backup holds a failover.
    pub required: bool,
}

/// Owns everything the decision is made from.
#[derive(Debug, Clone)]
pub struct Judge {
    fsm: Fsm,
    backup: Option<BackupHealth>,
    required: bool,
    operator: Operator,
    /// The decided path (a placeholder before adoption).
    decided: Via,
    adopted: bool,
    decision: Option<Decision>,
    alarms: Alarms,
    /// The latest primary round, to reason a failover the gate releases.
    last: Option<RoundSummary>,
    /// Whether the gate held a failover at the last update.
    holding: bool,
}

impl Judge {
    /// Starts before the route tables are read: rounds count, nothing is decided.
    pub fn new(policy: Policy, backup: Option<BackupPolicy>, operator: Operator) -> Self {
        Self {
            fsm: Fsm::unadopted(policy),
            backup: backup.map(|b| BackupHealth::new(b.fall, b.rise, b.probed)),
            required: backup.is_some_and(|b| b.required),
            operator,
            decided: Via::Primary,
            adopted: false,
            decision: None,
            alarms: Alarms::default(),
            last: None,
            holding: false,
        }
    }

    pub fn fsm(&self) -> &Fsm {
        &self.fsm
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// Where the judge stands at `now`, for status views.
    pub fn standing(&self, now: Instant) -> Standing {
        Standing {
            path: self.decided,
            // A held failover leaves the state machine on Primary, but
            // its verdict is Backup (the primary is down).
            local: if self.fsm.primary_down() {
                Via::Backup
            } else {
                Via::Primary
            },
            phase: self.fsm.phase(),
            down_streak: self.fsm.down_streak(),
            up_streak: self.fsm.up_streak(),
            hold_down_left: self.fsm.hold_down_left(now),
            pinned: self.fsm.pinned(),
            backup: self.backup(),
            operator: self.operator,
        }
    }

    /// The decided path (where traffic goes, or will once converged).
    pub fn path(&self) -> Via {
        self.decided
    }

    /// The backup's state as the decision sees it.
    pub fn backup(&self) -> BackupState {
        self.backup
            .as_ref()
            .map_or(BackupState::Unwatched, BackupHealth::verdict)
    }

    pub fn backup_health(&self) -> Option<&BackupHealth> {
        self.backup.as_ref()
    }

    pub fn alarms(&self) -> Alarms {
        self.alarms
    }

    /// The last decision, once the tables have been adopted.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// The path the route tables should show: `None` until the tables are
    /// adopted and the path decided (a partial start waits for evidence,
    /// unless an operator holds a path).
    pub fn desired(&self) -> Option<Via> {
        if !self.adopted {
            return None;
        }
        let decided = self.fsm.phase() == Phase::Settled || self.operator != Operator::Auto;
        decided.then_some(self.decided)
    }

    pub fn set_policy(&mut self, policy: Policy) {
        self.fsm.set_policy(policy);
    }

    /// Changes the backup settings (reload), keeping what is known when
    /// it stays watched: see [`BackupHealth::reconfigure`]; `same_probes`
    /// says whether the backup targets are probed as before.
    pub fn set_backup_policy(
        &mut self,
        backup: Option<BackupPolicy>,
        same_probes: bool,
        now: Instant,
    ) -> Verdict {
        self.required = backup.is_some_and(|b| b.required);
        match (backup, self.backup.as_mut()) {
            (None, _) => self.backup = None,
            (Some(b), None) => self.backup = Some(BackupHealth::new(b.fall, b.rise, b.probed)),
            (Some(b), Some(health)) => health.reconfigure(b.fall, b.rise, b.probed, same_probes),
        }
        self.update(now, Step::default())
    }

    /// Feeds one round: the primary's summary and, when backup targets are
    /// probed, whether the backup round was up.
    pub fn observe(
        &mut self,
        now: Instant,
        primary: &RoundSummary,
        backup_up: Option<bool>,
    ) -> Verdict {
        if let (Some(health), Some(up)) = (self.backup.as_mut(), backup_up) {
            health.observe(up);
        }
        // The gate as it stands after the backup's round and before the
        // primary's: a round that takes both down holds the failover.
        self.fsm.hold_failover(self.gated(true));
        let step = self.fsm.observe(now, primary);
        self.last = Some(primary.clone());
        self.update(now, step)
    }

    /// Takes the path the route tables show; rounds seen before count.
    pub fn adopt(
        &mut self,
        adoption: Adoption,
        now: Instant,
        last: Option<&RoundSummary>,
    ) -> Verdict {
        self.fsm.hold_failover(self.gated(true));
        let step = self.fsm.adopt(adoption, now, last);
        if let Some(last) = last {
            self.last = Some(last.clone());
        }
        self.adopted = true;
        // Where traffic is now, before any decision moves it.
        self.decided = match adoption {
            Adoption::Primary => Via::Primary,
            Adoption::Backup | Adoption::Partial { .. } => Via::Backup,
        };
        self.update(now, step)
    }

    /// The latest appliance check.
    pub fn set_appliance(&mut self, now: Instant, appliance: Appliance) -> Verdict {
        if let Some(h) = self.backup.as_mut() {
            h.set_appliance(appliance);
        }
        self.update(now, Step::default())
    }

    /// How many of our routes EC2 shows as blackhole.
    pub fn set_blackholes(&mut self, now: Instant, n: usize) -> Verdict {
        if let Some(h) = self.backup.as_mut() {
            h.set_blackholes(n);
        }
        self.update(now, Step::default())
    }

    /// An operator's hold or release.
    pub fn set_operator(&mut self, now: Instant, operator: Operator) -> Verdict {
        self.operator = operator;
        self.update(now, Step::default())
    }

    /// An operator allows failback (as SIGUSR1): once `rise` up rounds are in hand.
    pub fn request_failback(&mut self) {
        self.fsm.request_failback();
    }

    /// The backup as the gate sees it: down when known down, or, while
    /// the primary is down, when its probes have failed as many rounds as
    /// the primary's `fall` (with a longer `backup.fall` a common cause,
    /// the site gone, would otherwise be judged on DX first).
    fn gate_backup(&self, primary_down: bool) -> BackupState {
        let state = self.backup();
        let failing = self
            .backup
            .as_ref()
            .is_some_and(|h| h.probed() && h.down_streak() >= self.fsm.policy().fall);
        if state != BackupState::Down && primary_down && failing {
            BackupState::Down
        } else {
            state
        }
    }

    /// Whether a failover is held: the backup is required and down.
    fn gated(&self, primary_down: bool) -> bool {
        self.required && self.gate_backup(primary_down) == BackupState::Down
    }

    /// Re-decides after a change; `step` is what the state machine did.
    fn update(&mut self, now: Instant, mut step: Step) -> Verdict {
        // A held failover commits nothing in the state machine; once the
        // gate lets go, the streak in hand fails over at once.
        let held = self.gated(true);
        self.fsm.hold_failover(held);
        let was_holding = self.holding;
        if !held
            && step.transition.is_none()
            && self.fsm.path() == Via::Primary
            && self.fsm.primary_down()
        {
            if let Some(last) = self.last.clone() {
                let again = self.fsm.reconsider(now, &last);
                step.transition = again.transition;
                step.pinned_changed = step.pinned_changed.or(again.pinned_changed);
                step.settled = step.settled.or(again.settled);
            }
        }
        let primary_down = self.fsm.primary_down();
        self.holding = held && self.fsm.path() == Via::Primary && primary_down;
        let mut verdict = Verdict {
            settled: step.settled,
            pinned_changed: step.pinned_changed,
            ..Verdict::default()
        };
        let local = if primary_down {
            Via::Backup
        } else {
            Via::Primary
        };
        let decision = decide(Inputs {
            local,
            backup: self.gate_backup(primary_down),
            backup_required: self.required,
            current: self.decided,
            operator: self.operator,
        });
        if decision.alarms != self.alarms {
            self.alarms = decision.alarms;
            verdict.alarms_changed = Some(decision.alarms);
        }
        if !self.adopted {
            return verdict;
        }
        self.decision = Some(decision);
        let fsm_transition = step.transition;
        if self.holding && !was_holding && decision.why == Why::HeldBothDown {
            // What the state machine would have done: said once per hold.
            let reason = match &self.last {
                Some(last) => Reason::Fall {
                    rounds: self.fsm.down_streak(),
                    last: last.clone(),
                },
                None => Reason::Released,
            };
            let would = Transition {
                from: Via::Primary,
                to: Via::Backup,
                at: now,
                reason,
            };
            verdict.overruled = Some((would, decision.why));
        }
        if decision.path != self.decided {
            let reason = match &fsm_transition {
                Some(t) if t.to == Via::Backup && was_holding => Reason::BackupReturned,
                Some(t) if t.to == decision.path => t.reason.clone(),
                _ => match decision.why {
                    Why::OperatorHold => Reason::OperatorHold {
                        path: decision.path,
                    },
                    Why::Local if self.fsm.path() == Via::Backup => Reason::BackupReturned,
                    _ => Reason::Released,
                },
            };
            verdict.transition = Some(Transition {
                from: self.decided,
                to: decision.path,
                at: now,
                reason,
            });
            self.decided = decision.path;
        } else if let Some(t) = fsm_transition {
            if t.to != decision.path {
                verdict.overruled = Some((t, decision.why));
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::EniProblem;
    use crate::fsm::Failback;
    use std::time::Duration;

    fn policy() -> Policy {
        Policy {
            fall: 2,
            rise: 2,
            hold_down: Duration::ZERO,
            failback: Failback::Auto,
            max_failovers: 100,
            flap_window: Duration::from_secs(3600),
        }
    }

    fn backup() -> Option<BackupPolicy> {
        Some(BackupPolicy {
            fall: 2,
            rise: 1,
            probed: true,
            required: true,
        })
    }

    fn round(up: bool) -> RoundSummary {
        RoundSummary::synthetic(up)
    }

    /// Feeds `n` rounds a second apart from `*t`; returns the decided transitions.
    fn feed(
        j: &mut Judge,
        t: &mut Instant,
        n: usize,
        primary: bool,
        backup: Option<bool>,
    ) -> Vec<(Via, Via)> {
        let mut out = Vec::new();
        for _ in 0..n {
            *t += Duration::from_secs(1);
            if let Some(tr) = j.observe(*t, &round(primary), backup).transition {
                out.push((tr.from, tr.to));
            }
        }
        out
    }

    #[test]
    fn a_dead_backup_holds_the_failover_until_it_comes_back() {
        let mut t = Instant::now();
        let mut j = Judge::new(policy(), backup(), Operator::Auto);
        j.adopt(Adoption::Primary, t, None);
        j.set_appliance(t, Appliance::Ok);
        // The backup dies first: no redundancy.
        assert!(feed(&mut j, &mut t, 2, true, Some(false)).is_empty());
        assert!(j.alarms().no_redundancy);
        // Then DX: the state machine says Backup, the decision stays.
        t += Duration::from_secs(1);
        let v = j.observe(t, &round(false), Some(false));
        assert!(v.transition.is_none());
        t += Duration::from_secs(1);
        let v = j.observe(t, &round(false), Some(false));
        assert!(v.transition.is_none());
        let (fsm_t, why) = v
            .overruled
            .expect("the state machine's failover is overruled");
        assert_eq!((fsm_t.to, why), (Via::Backup, Why::HeldBothDown));
        assert!(j.alarms().both_down);
        assert_eq!(j.desired(), Some(Via::Primary));
        // The backup answers again: fail over at once.
        let got = feed(&mut j, &mut t, 1, false, Some(true));
        assert_eq!(got, [(Via::Primary, Via::Backup)]);
        assert!(!j.alarms().both_down);
    }

    #[test]
    fn on_backup_a_dying_backup_changes_nothing_but_the_alarm() {
        let mut t = Instant::now();
        let mut j = Judge::new(policy(), backup(), Operator::Auto);
        j.adopt(Adoption::Primary, t, None);
        j.set_appliance(t, Appliance::Ok);
        assert_eq!(
            feed(&mut j, &mut t, 2, false, Some(true)),
            [(Via::Primary, Via::Backup)]
        );
        let v = j.set_appliance(
            t,
            Appliance::Failed(vec![(
                "eni-0123456789abcdef0".into(),
                EniProblem::NotAttached,
            )]),
        );
        assert!(v.transition.is_none());
        assert_eq!(v.alarms_changed.map(|a| a.both_down), Some(true));
        assert_eq!(j.desired(), Some(Via::Backup));
    }

    #[test]
    fn operator_hold_and_release() {
        let mut t = Instant::now();
        let mut j = Judge::new(policy(), None, Operator::Auto);
        j.adopt(Adoption::Primary, t, None);
        feed(&mut j, &mut t, 1, true, None);
        let v = j.set_operator(t, Operator::Hold(Via::Backup));
        let tr = v.transition.expect("maintenance failover");
        assert!(matches!(
            tr.reason,
            Reason::OperatorHold { path: Via::Backup }
        ));
        // DX healthy for a long time: held.
        assert!(feed(&mut j, &mut t, 30, true, None).is_empty());
        let v = j.set_operator(t, Operator::Auto);
        assert!(matches!(
            v.transition.map(|t| (t.to, t.reason)),
            Some((Via::Primary, Reason::Released))
        ));
    }

    #[test]
    fn nothing_is_decided_before_adoption() {
        let mut t = Instant::now();
        let mut j = Judge::new(policy(), None, Operator::Hold(Via::Backup));
        assert!(feed(&mut j, &mut t, 5, false, None).is_empty());
        assert_eq!(j.desired(), None);
        j.adopt(Adoption::Primary, t, Some(&round(false)));
        assert_eq!(j.desired(), Some(Via::Backup));
    }

    #[test]
    fn a_held_failover_leaves_the_state_machine_on_the_primary() {
        let mut t = Instant::now();
        let held = Policy {
            hold_down: Duration::from_secs(600),
            failback: Failback::Manual,
            ..policy()
        };
        let mut j = Judge::new(held, backup(), Operator::Auto);
        j.adopt(Adoption::Primary, t, None);
        j.set_appliance(t, Appliance::Ok);
        feed(&mut j, &mut t, 2, true, Some(false));
        assert!(feed(&mut j, &mut t, 5, false, Some(false)).is_empty());
        assert!(j.alarms().both_down);
        assert_eq!(j.fsm().path(), Via::Primary, "nothing committed");
        let standing = j.standing(t);
        assert_eq!(
            (standing.path, standing.local),
            (Via::Primary, Via::Backup),
            "status shows the held failover"
        );
        assert_eq!(j.fsm().hold_down_left(t), None);
        // DX recovers: the alarm follows DX, not a state machine on Backup.
        feed(&mut j, &mut t, 1, true, Some(false));
        assert!(!j.alarms().both_down && j.alarms().no_redundancy);
        // The VPN returns with DX healthy: nothing to do.
        assert!(feed(&mut j, &mut t, 5, true, Some(true)).is_empty());
        assert_eq!(j.alarms(), Alarms::default());
    }

    #[test]
    fn a_released_hold_fails_over_at_once_saying_why() {
        let mut t = Instant::now();
        let mut j = Judge::new(policy(), backup(), Operator::Auto);
        j.adopt(Adoption::Primary, t, None);
        j.set_appliance(
            t,
            Appliance::Failed(vec![("eni-0123456789abcdef0".into(), EniProblem::Missing)]),
        );
        feed(&mut j, &mut t, 3, false, Some(true));
        assert_eq!(j.path(), Via::Primary);
        let v = j.set_appliance(t, Appliance::Ok);
        let tr = v.transition.expect("fails over when the ENI is back");
        assert_eq!((tr.from, tr.to), (Via::Primary, Via::Backup));
        assert!(matches!(tr.reason, Reason::BackupReturned));
    }

    proptest::proptest! {
        /// Whatever the rounds and appliance checks: while the decided path
        /// never left the primary, the state machine has committed nothing
        /// (still on Primary, no hold-down running, not pinned), and it
        /// never fails over while the backup is known down.
        #[test]
        fn held_failovers_commit_nothing(
            events in proptest::collection::vec((proptest::bool::ANY, proptest::bool::ANY, 0u8..8), 1..80),
        ) {
            let strict = Policy {
                hold_down: Duration::from_secs(3600),
                failback: Failback::Manual,
                max_failovers: 0,
                ..policy()
            };
            let mut t = Instant::now();
            let mut j = Judge::new(strict, backup(), Operator::Auto);
            j.adopt(Adoption::Primary, t, None);
            let mut moved = false;
            for (primary, vpn, eni) in events {
                t += Duration::from_secs(1);
                let before = j.backup();
                let v = match eni {
                    0 => j.set_appliance(t, Appliance::Failed(vec![("eni-0123456789abcdef0".into(), EniProblem::Missing)])),
                    1 => j.set_appliance(t, Appliance::Ok),
                    _ => j.observe(t, &round(primary), Some(vpn)),
                };
                if let Some(tr) = v.transition {
                    proptest::prop_assert!(
                        !(tr.to == Via::Backup && j.backup() == BackupState::Down),
                        "failed over onto a backup known down (was {:?})", before
                    );
                    moved = true;
                }
                if !moved {
                    proptest::prop_assert_eq!(j.fsm().path(), Via::Primary);
                    proptest::prop_assert!(!j.fsm().pinned());
                    proptest::prop_assert_eq!(j.fsm().hold_down_left(t), None);
                }
            }
        }
    }
}
