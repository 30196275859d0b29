//! The decision: which path the route tables should show, from the local
//! state machine's verdict on the primary and what is known of the backup.
//!
//! Pure, like [`crate::fsm`]: inputs in, a [`Decision`] with its reason and
//! alarms out. The state machine says whether Direct Connect is down; this
//! module says whether failing over would help:
//!
//! - primary down, backup up (or not watched, or not known yet): fail over;
//! - primary down, backup known down: stay where we are — moving traffic to
//!   a dead backup turns a partial outage into a full one — and raise "both
//!   paths down"; fail over the moment the backup comes up;
//! - already on the backup when it dies, primary still down: nothing better
//!   exists, stay and alarm;
//! - on the primary with the backup down: "no redundancy";
//! - `backup.required = false`: the same alarms, but never holds a failover;
//! - an operator's hold (`ctl hold`, `ctl failover --hold`) overrides all of
//!   the above until released; the alarms still sound.

use std::fmt;

use crate::fsm::Via;

/// What is known of the backup path (VPN appliance, tunnel, ENI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackupState {
    /// No `[backup]` section: nothing is watched, nothing is gated.
    Unwatched,
    /// Watched, but not enough evidence yet either way.
    Unknown,
    Up,
    Down,
}

impl fmt::Display for BackupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackupState::Unwatched => "not watched",
            BackupState::Unknown => "unknown",
            BackupState::Up => "up",
            BackupState::Down => "DOWN",
        })
    }
}

/// What an operator has asked of the decision.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase", tag = "mode", content = "path")]
pub enum Operator {
    /// The probes decide.
    #[default]
    Auto,
    /// Stay on this path whatever the probes say, until released.
    Hold(Via),
}

/// Everything the decision is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// The local state machine's path: `Backup` means the primary is down.
    pub local: Via,
    pub backup: BackupState,
    /// `backup.required`: a known-down backup holds a failover.
    pub backup_required: bool,
    /// The path decided last time.
    pub current: Via,
    pub operator: Operator,
}

/// Why the path is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// The state machine's verdict, unopposed.
    Local,
    /// The primary is down but so is the backup: staying on the primary.
    HeldBothDown,
    /// On the backup, which went down too: nothing better to go to.
    StayingBothDown,
    /// An operator holds this path.
    OperatorHold,
}

/// Conditions an operator must hear about while they last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Alarms {
    /// The primary is down and the backup is known down.
    pub both_down: bool,
    /// On the primary, and the backup is known down: a DX failure now
    /// would have nowhere to go.
    pub no_redundancy: bool,
}

/// The path to converge on, why, and what to shout about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub path: Via,
    pub why: Why,
    pub alarms: Alarms,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Local => "the primary path's health decides",
            Why::HeldBothDown => {
                "the primary is down, but so is the backup: staying on the primary (both paths down)"
            }
            Why::StayingBothDown => {
                "on the backup, which is down too while the primary still is: nothing better to go to"
            }
            Why::OperatorHold => "an operator holds this path until released",
        })
    }
}

/// Decides the path.
pub fn decide(inputs: Inputs) -> Decision {
    let backup_down = inputs.backup == BackupState::Down;
    let primary_down = inputs.local == Via::Backup;
    let alarms = Alarms {
        both_down: primary_down && backup_down,
        no_redundancy: !primary_down && backup_down,
    };
    let (path, why) = match (
        inputs.operator,
        inputs.local,
        backup_down && inputs.backup_required,
    ) {
        (Operator::Hold(path), _, _) => (path, Why::OperatorHold),
        (Operator::Auto, Via::Backup, true) => match inputs.current {
            Via::Primary => (Via::Primary, Why::HeldBothDown),
            Via::Backup => (Via::Backup, Why::StayingBothDown),
        },
        (Operator::Auto, local, _) => (local, Why::Local),
    };
    Decision { path, why, alarms }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs(local: Via, backup: BackupState, current: Via) -> Inputs {
        Inputs {
            local,
            backup,
            backup_required: true,
            current,
            operator: Operator::Auto,
        }
    }

    #[test]
    fn the_table_of_cases() {
        use BackupState::{Down, Unknown, Unwatched, Up};
        use Via::{Backup, Primary};
        // (local, backup, current) -> (path, why, both_down, no_redundancy)
        let cases = [
            ((Backup, Up, Primary), (Backup, Why::Local, false, false)),
            (
                (Backup, Unwatched, Primary),
                (Backup, Why::Local, false, false),
            ),
            (
                (Backup, Unknown, Primary),
                (Backup, Why::Local, false, false),
            ),
            (
                (Backup, Down, Primary),
                (Primary, Why::HeldBothDown, true, false),
            ),
            (
                (Backup, Down, Backup),
                (Backup, Why::StayingBothDown, true, false),
            ),
            ((Primary, Down, Primary), (Primary, Why::Local, false, true)),
            ((Primary, Down, Backup), (Primary, Why::Local, false, true)),
            ((Primary, Up, Backup), (Primary, Why::Local, false, false)),
        ];
        for ((local, backup, current), (path, why, both, none)) in cases {
            let d = decide(inputs(local, backup, current));
            assert_eq!(
                (d.path, d.why, d.alarms.both_down, d.alarms.no_redundancy),
                (path, why, both, none),
                "{local} {backup} {current}"
            );
        }
    }

    #[test]
    fn not_required_only_monitors() {
        let d = decide(Inputs {
            backup_required: false,
            ..inputs(Via::Backup, BackupState::Down, Via::Primary)
        });
        assert_eq!(d.path, Via::Backup);
        assert!(d.alarms.both_down);
    }

    #[test]
    fn an_operator_hold_wins_and_the_alarms_still_sound() {
        for hold in [Via::Primary, Via::Backup] {
            for local in [Via::Primary, Via::Backup] {
                let d = decide(Inputs {
                    operator: Operator::Hold(hold),
                    ..inputs(local, BackupState::Down, Via::Primary)
                });
                assert_eq!((d.path, d.why), (hold, Why::OperatorHold));
                assert_eq!(d.alarms.both_down, local == Via::Backup);
            }
        }
    }

    fn via() -> impl Strategy<Value = Via> {
        prop_oneof![Just(Via::Primary), Just(Via::Backup)]
    }

    fn backup() -> impl Strategy<Value = BackupState> {
        prop_oneof![
            Just(BackupState::Unwatched),
            Just(BackupState::Unknown),
            Just(BackupState::Up),
            Just(BackupState::Down)
        ]
    }

    proptest! {
        /// Never fail over onto a backup known down (when required); never
        /// leave the primary for any other reason than the primary being
        /// down; fail over the moment the backup is not known down.
        #[test]
        fn the_gate(local in via(), backup in backup(), current in via(), required in any::<bool>()) {
            let d = decide(Inputs { local, backup, backup_required: required, current, operator: Operator::Auto });
            if current == Via::Primary && d.path == Via::Backup {
                prop_assert_eq!(local, Via::Backup);
                prop_assert!(!(required && backup == BackupState::Down));
            }
            if local == Via::Backup && backup != BackupState::Down {
                prop_assert_eq!(d.path, Via::Backup);
            }
            if local == Via::Primary {
                prop_assert_eq!(d.path, Via::Primary);
            }
            prop_assert_eq!(d.alarms.both_down, local == Via::Backup && backup == BackupState::Down);
            prop_assert!(!(d.alarms.both_down && d.alarms.no_redundancy));
        }

        /// A run of verdicts: the decided path changes only when the
        /// state machine's verdict or the backup's health changes.
        #[test]
        fn no_flapping_without_a_cause(steps in proptest::collection::vec((via(), backup()), 1..50)) {
            let mut current = Via::Primary;
            let mut last: Option<(Via, BackupState)> = None;
            for (local, backup) in steps {
                let d = decide(inputs(local, backup, current));
                if d.path != current {
                    prop_assert!(last != Some((local, backup)), "changed path on unchanged inputs");
                }
                current = d.path;
                last = Some((local, backup));
            }
        }
    }
}
