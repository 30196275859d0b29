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
            local: self.fsm.path(),
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
    /// it stays watched.
    pub fn set_backup_policy(&mut self, backup: Option<BackupPolicy>, now: Instant) -> Verdict {
        self.required = backup.is_some_and(|b| b.required);
        match (backup, &self.backup) {
            (None, _) => self.backup = None,
            (Some(b), None) => self.backup = Some(BackupHealth::new(b.fall, b.rise, b.probed)),
            (Some(b), Some(old)) => {
                let mut new = BackupHealth::new(b.fall, b.rise, b.probed);
                new.set_appliance(old.appliance().clone());
                self.backup = Some(new);
            }
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
        let step = self.fsm.observe(now, primary);
        self.update(now, step)
    }

    /// Takes the path the route tables show; rounds seen before count.
    pub fn adopt(
        &mut self,
        adoption: Adoption,
        now: Instant,
        last: Option<&RoundSummary>,
    ) -> Verdict {
        let step = self.fsm.adopt(adoption, now, last);
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

    /// Re-decides after a change; `step` is what the state machine did.
    fn update(&mut self, now: Instant, step: Step) -> Verdict {
        let mut verdict = Verdict {
            settled: step.settled,
            pinned_changed: step.pinned_changed,
            ..Verdict::default()
        };
        let decision = decide(Inputs {
            local: self.fsm.path(),
            backup: self.backup(),
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
        if decision.path != self.decided {
            let reason = match &fsm_transition {
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
}
