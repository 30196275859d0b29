//! A synthetic probe source that follows a script instead of the network.
//!
//! It sends no packets. Every report it returns is labelled with the phase
//! that produced it, so a timeline built from it can never be mistaken for
//! real measurements. The demo and the agent tests drive the real agent with it.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use super::{Prober, RoundReport, TargetReport};

/// Which targets answer during a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Every target answers every echo.
    All,
    /// No target answers: the primary path is cut.
    None,
    /// Per target, in config order: answers or not.
    Targets(Vec<bool>),
    /// Every target answers this many echoes of each round (partial loss).
    Echoes(u32),
    /// Every target answers this many echoes, then the round hangs past
    /// its interval (a starved or stuck prober).
    Overrun(u32),
}

/// A labelled stretch of the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    pub label: String,
    /// How many rounds it lasts; the last phase of a script lasts forever.
    pub rounds: u32,
    pub reply: Reply,
}

impl Phase {
    pub fn new(label: &str, rounds: u32, reply: Reply) -> Self {
        Self {
            label: label.to_string(),
            rounds,
            reply,
        }
    }
}

/// Lets a test change the script while the agent runs.
#[derive(Debug, Clone)]
pub struct ScriptHandle {
    phases: Arc<Mutex<VecDeque<Phase>>>,
    backup: Arc<Mutex<VecDeque<Phase>>>,
}

impl ScriptHandle {
    /// Replaces the rest of the script with one phase that lasts forever.
    pub fn set(&self, label: &str, reply: Reply) {
        replace(&self.phases, label, reply);
    }

    /// The same for the backup group's script ([`ScriptedProber::with_backup`]).
    pub fn set_backup(&self, label: &str, reply: Reply) {
        replace(&self.backup, label, reply);
    }
}

fn replace(phases: &Mutex<VecDeque<Phase>>, label: &str, reply: Reply) {
    let mut phases = phases.lock().unwrap_or_else(PoisonError::into_inner);
    phases.clear();
    phases.push_back(Phase::new(label, 1, reply));
}

/// One group of targets and its own script.
#[derive(Debug)]
struct Group {
    targets: Vec<IpAddr>,
    count: u32,
    phases: Arc<Mutex<VecDeque<Phase>>>,
    rounds_in_phase: u32,
}

impl Group {
    fn next_phase(&mut self) -> Phase {
        let mut phases = self.phases.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let Some(front) = phases.front() else {
                return Phase::new("script ended: no replies", 1, Reply::None);
            };
            if self.rounds_in_phase < front.rounds || phases.len() == 1 {
                self.rounds_in_phase += 1;
                return front.clone();
            }
            phases.pop_front();
            self.rounds_in_phase = 0;
        }
    }

    /// What each target answers under `reply`; `base_us` sets the RTTs.
    fn reports(&self, reply: &Reply, base_us: u64) -> Vec<TargetReport> {
        self.targets
            .iter()
            .enumerate()
            .map(|(i, &target)| {
                let answered = match reply {
                    Reply::All => self.count,
                    Reply::None => 0,
                    Reply::Targets(up) => {
                        if up.get(i).copied().unwrap_or(false) {
                            self.count
                        } else {
                            0
                        }
                    }
                    Reply::Echoes(n) | Reply::Overrun(n) => (*n).min(self.count),
                };
                let base = base_us + 250 * u64::try_from(i).unwrap_or(0);
                TargetReport {
                    target,
                    sent: self.count,
                    rtts: (0..u64::from(answered))
                        .map(|k| Duration::from_micros(base + 40 * k))
                        .collect(),
                    error: None,
                }
            })
            .collect()
    }
}

/// The synthetic prober.
#[derive(Debug)]
pub struct ScriptedProber {
    primary: Group,
    /// The backup group; no targets unless [`ScriptedProber::with_backup`].
    backup: Group,
    /// What an overrunning round had gathered before it hung.
    gathered: Option<RoundReport>,
}

impl ScriptedProber {
    /// A prober for `targets` sending `count` echoes each round, following `script`.
    pub fn new(targets: Vec<IpAddr>, count: u32, script: Vec<Phase>) -> (Self, ScriptHandle) {
        let phases = Arc::new(Mutex::new(script.into_iter().collect::<VecDeque<_>>()));
        let backup = Arc::new(Mutex::new(VecDeque::new()));
        let handle = ScriptHandle {
            phases: Arc::clone(&phases),
            backup: Arc::clone(&backup),
        };
        let prober = Self {
            primary: Group {
                targets,
                count,
                phases,
                rounds_in_phase: 0,
            },
            backup: Group {
                targets: Vec::new(),
                count,
                phases: backup,
                rounds_in_phase: 0,
            },
            gathered: None,
        };
        (prober, handle)
    }

    /// Probes a backup group too, `targets` with `count` echoes each,
    /// following its own `script` (changed with [`ScriptHandle::set_backup`]).
    #[must_use]
    pub fn with_backup(mut self, targets: Vec<IpAddr>, count: u32, script: Vec<Phase>) -> Self {
        self.backup.targets = targets;
        self.backup.count = count;
        *self
            .backup
            .phases
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = script.into_iter().collect();
        self
    }
}

#[async_trait]
impl Prober for ScriptedProber {
    async fn round(&mut self) -> RoundReport {
        let phase = self.primary.next_phase();
        let targets = self.primary.reports(&phase.reply, 1500);
        let (backup, label) = if self.backup.targets.is_empty() {
            (Vec::new(), phase.label)
        } else {
            let b = self.backup.next_phase();
            // The VPN is slower than DX, as in life.
            let backup = self.backup.reports(&b.reply, 9000);
            (backup, format!("{} | backup: {}", phase.label, b.label))
        };
        let report = RoundReport {
            targets,
            backup,
            label: Some(label),
        };
        if matches!(phase.reply, Reply::Overrun(_)) {
            self.gathered = Some(report);
            return std::future::pending().await;
        }
        report
    }

    fn salvage(&mut self) -> Option<RoundReport> {
        self.gathered.take()
    }

    fn describe(&self) -> String {
        "scripted (synthetic, sends no packets)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> Vec<IpAddr> {
        vec![IpAddr::from([198, 18, 0, 1]), IpAddr::from([198, 18, 0, 2])]
    }

    #[tokio::test]
    async fn follows_the_script_then_repeats_the_last_phase() {
        let (mut p, _) = ScriptedProber::new(
            targets(),
            3,
            vec![
                Phase::new("healthy", 2, Reply::All),
                Phase::new("cut", 1, Reply::None),
                Phase::new("one host down", 1, Reply::Targets(vec![true, false])),
            ],
        );
        let mut received = Vec::new();
        for _ in 0..6 {
            let r = p.round().await;
            let per_target: Vec<u32> = r.targets.iter().map(TargetReport::received).collect();
            received.push((r.label.unwrap(), per_target));
        }
        let labels: Vec<&str> = received.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "healthy",
                "healthy",
                "cut",
                "one host down",
                "one host down",
                "one host down"
            ]
        );
        assert_eq!(received[0].1, [3, 3]);
        assert_eq!(received[2].1, [0, 0]);
        assert_eq!(received[3].1, [3, 0]);
    }

    #[tokio::test]
    async fn the_handle_replaces_the_script() {
        let (mut p, handle) =
            ScriptedProber::new(targets(), 2, vec![Phase::new("ok", 1, Reply::All)]);
        assert_eq!(p.round().await.targets[0].received(), 2);
        handle.set("lossy", Reply::Echoes(1));
        let r = p.round().await;
        assert_eq!(r.label.as_deref(), Some("lossy"));
        assert_eq!(r.targets[1].received(), 1);
    }

    #[tokio::test]
    async fn the_backup_group_follows_its_own_script() {
        let (p, handle) =
            ScriptedProber::new(targets(), 2, vec![Phase::new("dx ok", 1, Reply::All)]);
        let mut p = p.with_backup(
            vec![IpAddr::from([198, 19, 0, 1])],
            3,
            vec![Phase::new("vpn ok", 1, Reply::All)],
        );
        let r = p.round().await;
        assert_eq!(r.label.as_deref(), Some("dx ok | backup: vpn ok"));
        assert_eq!((r.targets[0].received(), r.backup[0].received()), (2, 3));
        handle.set_backup("vpn cut", Reply::None);
        let r = p.round().await;
        assert_eq!((r.targets[0].received(), r.backup[0].received()), (2, 0));
        assert_eq!(r.backup[0].sent, 3);
        handle.set("dx cut", Reply::None);
        handle.set_backup("vpn ok", Reply::All);
        let r = p.round().await;
        assert_eq!((r.targets[0].received(), r.backup[0].received()), (0, 3));
    }
}
