//! The backup path's health: its own probe rounds (over the VPN, with their
//! own `fall` and `rise`), the VPN appliance's ENIs as EC2 reports them, and
//! our routes turned blackhole. Pure: fed rounds and check results, asked
//! for a [`Backup`] verdict.

use std::fmt;

use crate::cloud::{EniStatus, NetworkInterface};
use crate::decide::BackupState;

/// What the appliance check found for one ENI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EniProblem {
    Missing,
    /// Its status is not `in-use` (say `available`: detached).
    NotInUse {
        status: String,
    },
    NotAttached,
    /// Source/destination check on: the appliance would drop what it forwards.
    SourceDestCheck,
}

impl fmt::Display for EniProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EniProblem::Missing => f.write_str("does not exist"),
            EniProblem::NotInUse { status } => write!(f, "is {status}, not in-use"),
            EniProblem::NotAttached => f.write_str("is not attached to an instance"),
            EniProblem::SourceDestCheck => {
                f.write_str("has source/destination check on, so the appliance cannot forward")
            }
        }
    }
}

/// The latest appliance check, ENI by ENI.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Appliance {
    /// Not checked yet (or the API could not be asked).
    #[default]
    Unknown,
    Ok,
    Failed(Vec<(String, EniProblem)>),
}

impl fmt::Display for Appliance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Appliance::Unknown => f.write_str("not checked yet"),
            Appliance::Ok => f.write_str("ok"),
            Appliance::Failed(problems) => {
                for (i, (eni, problem)) in problems.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{eni} {problem}")?;
                }
                Ok(())
            }
        }
    }
}

/// What the reconciler learns of the backup and sends to the probe loop,
/// whose judge decides: data flows one way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupFact {
    /// One DescribeNetworkInterfaces for every target ENI, judged.
    Appliance(Appliance),
    /// How many of our routes the tables show as blackhole.
    Blackholes(usize),
}

/// Judges the appliance's ENIs as EC2 described them: each of `wanted`
/// must exist, be `in-use` and attached, with source/destination check
/// off. Every problem is listed, ENI by ENI.
pub fn check_appliance(wanted: &[String], found: &[NetworkInterface]) -> Appliance {
    let mut problems = Vec::new();
    for id in wanted {
        let Some(eni) = found.iter().find(|n| &n.id == id) else {
            problems.push((id.clone(), EniProblem::Missing));
            continue;
        };
        if eni.status != EniStatus::InUse {
            problems.push((
                id.clone(),
                EniProblem::NotInUse {
                    status: eni.status.to_string(),
                },
            ));
        } else if !eni.attached {
            problems.push((id.clone(), EniProblem::NotAttached));
        }
        if eni.source_dest_check {
            problems.push((id.clone(), EniProblem::SourceDestCheck));
        }
    }
    if problems.is_empty() {
        Appliance::Ok
    } else {
        Appliance::Failed(problems)
    }
}

/// Backup health, as the agent tracks it.
#[derive(Debug, Clone)]
pub struct BackupHealth {
    fall: u32,
    rise: u32,
    /// Whether backup targets are probed at all.
    probed: bool,
    down_streak: u32,
    up_streak: u32,
    /// The probes' verdict with hysteresis; `None` until `fall` or `rise` rounds.
    probes: Option<bool>,
    appliance: Appliance,
    /// Routes of ours EC2 shows as blackhole (their ENI is gone).
    blackholes: usize,
}

impl BackupHealth {
    /// `probed` is false when `[backup]` has no targets: the appliance
    /// check alone then decides.
    pub fn new(fall: u32, rise: u32, probed: bool) -> Self {
        Self {
            fall,
            rise,
            probed,
            down_streak: 0,
            up_streak: 0,
            probes: None,
            appliance: Appliance::Unknown,
            blackholes: 0,
        }
    }

    /// Feeds one backup probe round.
    pub fn observe(&mut self, up: bool) {
        if up {
            self.down_streak = 0;
            self.up_streak = self.up_streak.saturating_add(1);
            if self.up_streak >= self.rise {
                self.probes = Some(true);
            }
        } else {
            self.up_streak = 0;
            self.down_streak = self.down_streak.saturating_add(1);
            if self.down_streak >= self.fall {
                self.probes = Some(false);
            }
        }
    }

    /// Takes new settings (reload). With the same probes (targets, count,
    /// timeout, source, round rule: `same_probes`) the streaks stand and
    /// are judged by the new `fall`/`rise`; with other probes the old
    /// rounds say nothing of the new ones, but a backup known down stays
    /// down until `rise` up rounds say otherwise: forgetting it would let
    /// the next failover go onto it. The appliance check and the blackhole
    /// count do not depend on the probes and always carry over.
    // `was_down` is the probes' verdict alone: the appliance carries over by itself.
    pub fn reconfigure(&mut self, fall: u32, rise: u32, probed: bool, same_probes: bool) {
        let was_down = self.probes == Some(false);
        self.fall = fall;
        self.rise = rise;
        self.probed = probed;
        if same_probes {
            if self.down_streak >= fall {
                self.probes = Some(false);
            } else if self.up_streak >= rise {
                self.probes = Some(true);
            }
        } else {
            self.down_streak = 0;
            self.up_streak = 0;
            self.probes = (probed && was_down).then_some(false);
        }
    }

    /// Consecutive backup probe rounds down so far.
    pub fn down_streak(&self) -> u32 {
        self.down_streak
    }

    /// Whether backup targets are probed.
    pub fn probed(&self) -> bool {
        self.probed
    }

    pub fn set_appliance(&mut self, appliance: Appliance) {
        self.appliance = appliance;
    }

    pub fn set_blackholes(&mut self, n: usize) {
        self.blackholes = n;
    }

    pub fn appliance(&self) -> &Appliance {
        &self.appliance
    }

    /// The verdict: down on any known failure, up only when every check
    /// that runs has passed.
    pub fn verdict(&self) -> BackupState {
        let appliance_failed = matches!(self.appliance, Appliance::Failed(_));
        if appliance_failed || self.blackholes > 0 || self.probes == Some(false) {
            return BackupState::Down;
        }
        let probes_ok = !self.probed || self.probes == Some(true);
        if probes_ok && self.appliance == Appliance::Ok {
            BackupState::Up
        } else {
            BackupState::Unknown
        }
    }

    /// Why the backup is down, for logs and findings.
    pub fn why_down(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.probes == Some(false) {
            why.push(format!(
                "{} consecutive backup probe rounds down",
                self.down_streak
            ));
        }
        if let Appliance::Failed(problems) = &self.appliance {
            why.extend(problems.iter().map(|(eni, p)| format!("{eni} {p}")));
        }
        if self.blackholes > 0 {
            why.push(format!("{} of our routes are blackholes", self.blackholes));
        }
        why
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn up_needs_rise_rounds_and_a_passed_appliance_check() {
        let mut h = BackupHealth::new(3, 2, true);
        assert_eq!(h.verdict(), BackupState::Unknown);
        h.observe(true);
        h.set_appliance(Appliance::Ok);
        assert_eq!(h.verdict(), BackupState::Unknown);
        h.observe(true);
        assert_eq!(h.verdict(), BackupState::Up);
        h.observe(false);
        h.observe(false);
        assert_eq!(h.verdict(), BackupState::Up, "fewer than fall rounds");
        h.observe(false);
        assert_eq!(h.verdict(), BackupState::Down);
        assert!(h.why_down()[0].contains("3 consecutive"));
    }

    #[test]
    fn any_appliance_problem_or_blackhole_is_down_at_once() {
        let mut h = BackupHealth::new(3, 1, false);
        h.set_appliance(Appliance::Ok);
        assert_eq!(
            h.verdict(),
            BackupState::Up,
            "no targets: the check alone decides"
        );
        h.set_appliance(Appliance::Failed(vec![(
            "eni-0123456789abcdef0".into(),
            EniProblem::NotInUse {
                status: "available".into(),
            },
        )]));
        assert_eq!(h.verdict(), BackupState::Down);
        assert_eq!(
            h.why_down(),
            ["eni-0123456789abcdef0 is available, not in-use"]
        );
        h.set_appliance(Appliance::Ok);
        h.set_blackholes(2);
        assert_eq!(h.verdict(), BackupState::Down);
        h.set_blackholes(0);
        assert_eq!(h.verdict(), BackupState::Up);
    }

    fn eni(id: &str, status: EniStatus, attached: bool, check: bool) -> NetworkInterface {
        NetworkInterface {
            id: id.to_string(),
            subnet_id: None,
            status,
            attached,
            source_dest_check: check,
        }
    }

    #[test]
    fn the_appliance_check_names_every_problem() {
        let (a, b, c) = (
            "eni-0aaaaaaaaaaaaaaa0".to_string(),
            "eni-0bbbbbbbbbbbbbbb0".to_string(),
            "eni-0ccccccccccccccc0".to_string(),
        );
        let good = eni(&a, EniStatus::InUse, true, false);
        assert_eq!(
            check_appliance(std::slice::from_ref(&a), std::slice::from_ref(&good)),
            Appliance::Ok
        );
        let found = [
            good,
            eni(&b, EniStatus::Available, false, true),
            eni(&c, EniStatus::InUse, false, false),
        ];
        let wanted = [a, b.clone(), c.clone(), "eni-0ddddddddddddddd0".to_string()];
        let got = check_appliance(&wanted, &found);
        assert_eq!(
            got,
            Appliance::Failed(vec![
                (
                    b.clone(),
                    EniProblem::NotInUse {
                        status: "available".into()
                    }
                ),
                (b, EniProblem::SourceDestCheck),
                (c, EniProblem::NotAttached),
                ("eni-0ddddddddddddddd0".into(), EniProblem::Missing),
            ])
        );
        assert!(got
            .to_string()
            .contains("eni-0ddddddddddddddd0 does not exist"));
    }

    #[test]
    fn a_reload_keeps_what_is_known() {
        let mut h = BackupHealth::new(2, 2, true);
        h.set_appliance(Appliance::Ok);
        h.set_blackholes(1);
        h.observe(false);
        h.observe(false);
        // Same probes, new rise: still down, blackholes and appliance kept.
        h.reconfigure(2, 3, true, true);
        assert_eq!(h.verdict(), BackupState::Down);
        h.set_blackholes(0);
        assert_eq!(h.verdict(), BackupState::Down, "the probes' down stands");
        // A longer fall than the streak in hand: judged by the new rule
        // only as rounds come; the known verdict stays until then.
        h.reconfigure(5, 3, true, true);
        assert_eq!(h.verdict(), BackupState::Down);
        // Other targets: no evidence yet, but a known-down backup stays
        // down until `rise` up rounds.
        h.reconfigure(2, 2, true, false);
        assert_eq!(h.verdict(), BackupState::Down);
        h.observe(true);
        assert_eq!(h.verdict(), BackupState::Down);
        h.observe(true);
        assert_eq!(h.verdict(), BackupState::Up);
        // Other targets while up: unknown until evidence.
        h.reconfigure(2, 2, true, false);
        assert_eq!(h.verdict(), BackupState::Unknown);
    }

    /// True when `trace` holds `n` consecutive `value`s.
    fn has_run(trace: &[bool], value: bool, n: u32) -> bool {
        trace
            .split(|&r| r != value)
            .any(|run| run.len() >= n as usize)
    }

    proptest! {
        /// Hysteresis, stated without the streak counters: `fall` downs in
        /// a row give Down, `rise` ups in a row give Up; neither verdict
        /// appears before such a run, and the verdict only moves with the
        /// round just seen.
        #[test]
        fn probe_hysteresis(fall in 1u32..5, rise in 1u32..5, rounds in proptest::collection::vec(any::<bool>(), 0..100)) {
            let mut h = BackupHealth::new(fall, rise, true);
            h.set_appliance(Appliance::Ok);
            let mut before = h.verdict();
            for i in 0..rounds.len() {
                h.observe(rounds[i]);
                let seen = &rounds[..=i];
                let verdict = h.verdict();
                let tail = |n: u32, v: bool| seen.len() >= n as usize && seen[seen.len() - n as usize..].iter().all(|&r| r == v);
                if tail(fall, false) { prop_assert_eq!(verdict, BackupState::Down); }
                if tail(rise, true) { prop_assert_eq!(verdict, BackupState::Up); }
                if verdict == BackupState::Down { prop_assert!(has_run(seen, false, fall)); }
                if verdict == BackupState::Up { prop_assert!(has_run(seen, true, rise)); }
                if verdict != before {
                    prop_assert_eq!(rounds[i], verdict == BackupState::Up, "moved against the round");
                }
                before = verdict;
            }
        }
    }
}
