//! Tracks the pair between assessments: which peers went stale or came
//! back, and when live agents have disagreed long enough to report.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use super::DISAGREE_AFTER_BEATS;
use crate::fsm::Via;
use crate::peers::{Combined, Liveness, Seen};

/// What changed since the last assessment, to log and emit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Peers that just went stale (each logged once).
    pub went_stale: Vec<String>,
    /// Peers live again.
    pub came_back: Vec<String>,
    /// A disagreement just became worth reporting.
    pub disagreement_started: Option<String>,
    /// The disagreement reported before is over.
    pub disagreement_ended: bool,
    /// Anything a status view shows changed (paths, liveness, finding).
    pub view_changed: bool,
}

/// Tracks the pair between assessments: pure, time passed in.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    stale: BTreeSet<String>,
    disagree_since: Option<Instant>,
    reported: Option<String>,
    last: Option<ViewKey>,
}

/// What a status view shows of the pair: our path, the pair's, each peer's
/// verdict and liveness (ages left out: they change every second).
type ViewKey = (Via, Via, Vec<(String, Via, Liveness)>, [Option<String>; 3]);

impl Tracker {
    /// Notes `combined` (for this agent's `local` verdict) at `now`.
    pub fn assess(
        &mut self,
        combined: &Combined,
        local: Via,
        now: Instant,
        heartbeat: Duration,
    ) -> Changes {
        self.assess_with(combined, local, now, heartbeat, [None, None, None])
    }

    /// As [`assess`](Self::assess), with the guards' findings (duplicate
    /// id, split anchor, failback hold), whose changes a view shows too.
    pub(crate) fn assess_with(
        &mut self,
        combined: &Combined,
        local: Via,
        now: Instant,
        heartbeat: Duration,
        guards: [Option<String>; 3],
    ) -> Changes {
        let mut changes = Changes::default();
        for s in &combined.peers {
            let id = &s.verdict.agent_id;
            match s.liveness {
                Liveness::Stale if self.stale.insert(id.clone()) => {
                    changes.went_stale.push(id.clone());
                }
                Liveness::Live if self.stale.remove(id) => changes.came_back.push(id.clone()),
                _ => {}
            }
        }
        let others: Vec<&Seen> = combined
            .peers
            .iter()
            .filter(|s| s.liveness == Liveness::Live && s.verdict.path != local)
            .collect();
        if others.is_empty() {
            self.disagree_since = None;
            if self.reported.take().is_some() {
                changes.disagreement_ended = true;
            }
        } else {
            let since = *self.disagree_since.get_or_insert(now);
            if self.reported.is_none() && now - since >= heartbeat * DISAGREE_AFTER_BEATS {
                let text = disagreement(&others, local);
                self.reported = Some(text.clone());
                changes.disagreement_started = Some(text);
            }
        }
        let key = (
            local,
            combined.path,
            combined
                .peers
                .iter()
                .map(|s| (s.verdict.agent_id.clone(), s.verdict.path, s.liveness))
                .collect(),
            guards,
        );
        changes.view_changed = self.last.as_ref() != Some(&key)
            || changes.disagreement_started.is_some()
            || changes.disagreement_ended;
        self.last = Some(key);
        changes
    }

    /// The disagreement being reported, if any.
    pub fn disagreement(&self) -> Option<&str> {
        self.reported.as_deref()
    }
}

/// "agent i-b (3 consecutive down rounds) says Backup, we say Primary":
/// the verdicts compared, which probes, a held failover, an operator's
/// hold or a manual failback may each have made.
fn disagreement(others: &[&Seen], local: Via) -> String {
    let names: Vec<String> = others
        .iter()
        .map(|s| {
            if s.verdict.reason.is_empty() {
                format!("agent {}", s.verdict.agent_id)
            } else {
                format!("agent {} ({})", s.verdict.agent_id, s.verdict.reason)
            }
        })
        .collect();
    format!(
        "{} says {}, we say {local}: if it lasts, a fault local to one agent (its probes, its \
         route to the targets) or an operator's hold or manual failback on one of them",
        names.join(", "),
        match local {
            Via::Primary => Via::Backup,
            Via::Backup => Via::Primary,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::tests::BEAT;
    use crate::peers::Verdict;

    fn seen(id: &str, path: Via, liveness: Liveness) -> Seen {
        Seen {
            verdict: Verdict {
                agent_id: id.into(),
                path,
                counter: 1,
                at: 0,
                reason: "3 down rounds".into(),
            },
            age: Duration::from_secs(1),
            liveness,
        }
    }

    fn combined(path: Via, peers: Vec<Seen>) -> Combined {
        Combined {
            path,
            backup_votes: Vec::new(),
            peers,
        }
    }

    #[test]
    fn a_disagreement_is_reported_once_after_a_few_beats_and_its_end_once() {
        let mut t = Tracker::default();
        let start = Instant::now();
        let c = combined(Via::Backup, vec![seen("i-b", Via::Backup, Liveness::Live)]);
        let first = t.assess(&c, Via::Primary, start, BEAT);
        assert!(first.view_changed);
        assert_eq!(first.disagreement_started, None);
        let mut reported = Vec::new();
        for s in 1..=10 {
            let ch = t.assess(&c, Via::Primary, start + BEAT * s, BEAT);
            reported.extend(ch.disagreement_started);
        }
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(reported[0].starts_with("agent i-b (3 down rounds) says Backup, we say Primary"));
        let c = combined(
            Via::Primary,
            vec![seen("i-b", Via::Primary, Liveness::Live)],
        );
        let ch = t.assess(&c, Via::Primary, start + BEAT * 11, BEAT);
        assert!(ch.disagreement_ended && ch.view_changed);
        let ch = t.assess(&c, Via::Primary, start + BEAT * 12, BEAT);
        assert_eq!(ch, Changes::default());
    }

    #[test]
    fn a_stale_peer_is_logged_once_and_never_disagrees() {
        let mut t = Tracker::default();
        let start = Instant::now();
        let c = combined(
            Via::Primary,
            vec![seen("i-b", Via::Backup, Liveness::Stale)],
        );
        let ch = t.assess(&c, Via::Primary, start, BEAT);
        assert_eq!(ch.went_stale, ["i-b"]);
        for s in 1..10 {
            let ch = t.assess(&c, Via::Primary, start + BEAT * s, BEAT);
            assert!(ch.went_stale.is_empty() && ch.disagreement_started.is_none());
        }
        let c = combined(
            Via::Primary,
            vec![seen("i-b", Via::Primary, Liveness::Live)],
        );
        assert_eq!(t.assess(&c, Via::Primary, start, BEAT).came_back, ["i-b"]);
    }
}
