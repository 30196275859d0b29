//! What keeps a pair honest beyond the rule itself, each pure (time passed
//! in): another process writing under our agent id, verdicts published on
//! a table other than our anchor, and retired agents' verdicts to forget.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::RouteTable;
use crate::peers::{self, Verdict};

/// Values of our own tag kept to recognise them in a later read: an
/// eventually consistent read may show any of the last few we wrote.
const WRITES_KEPT: usize = 8;

/// Spots a second writer under our agent id: our key holding a value this
/// process never wrote, later by `(at, counter)` than our first write (an
/// older one is a previous run of ours, read late, even from the same
/// second: our counter carries on from it). The suspicion lasts until
/// `peer_timeout` passes without such a value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Duplicates {
    written: VecDeque<String>,
    /// The `(at, counter)` of our first write; `None` before it.
    first: Option<(u64, u64)>,
    /// When a foreign value was last read, and it.
    foreign: Option<(Instant, String)>,
}

impl Duplicates {
    /// Notes a value about to be written (before the call: a write that
    /// times out may still land).
    pub(crate) fn writing(&mut self, value: String, at: u64, counter: u64) {
        self.first.get_or_insert((at, counter));
        if self.written.len() == WRITES_KEPT {
            self.written.pop_front();
        }
        self.written.push_back(value);
    }

    /// Whether a read of our own key showing `value` (parsed as `read`)
    /// at `now` reveals another writer; if so it is remembered.
    pub(crate) fn read_own(&mut self, value: &str, read: &Verdict, now: Instant) -> bool {
        let Some(first) = self.first else {
            return false;
        };
        if self.written.iter().any(|w| w == value) || (read.at, read.counter) < first {
            return false;
        }
        self.foreign = Some((now, value.to_string()));
        true
    }

    /// The suspicion at `now`, if it still holds: the foreign value last read.
    pub(crate) fn suspected(&self, now: Instant, peer_timeout: Duration) -> Option<&str> {
        self.foreign
            .as_ref()
            .filter(|(at, _)| now < *at + peer_timeout)
            .map(|(_, value)| value.as_str())
    }
}

/// The first live verdict found on a managed table other than the anchor,
/// as a finding: agents that read different anchors never see each other.
/// Stale verdicts there (an anchor moved on purpose long ago) are not a
/// split, only clutter.
pub(crate) fn split(
    tables: &[RouteTable],
    anchor: &str,
    now: u64,
    peer_timeout: Duration,
) -> Option<String> {
    tables
        .iter()
        .filter(|t| t.id != anchor)
        .flat_map(|t| {
            t.tags
                .iter()
                .filter_map(|(k, v)| peers::parse_tag(k, v))
                .map(move |v| (t.id.clone(), v))
        })
        .find(|(_, v)| {
            now.saturating_sub(v.at) <= peer_timeout.as_secs()
                && v.at <= now.saturating_add(peers::SKEW_TOLERANCE.as_secs())
        })
        .map(|(table, v)| {
            format!(
                "agent {} publishes on {table}, we read {anchor}: the pair is split (set the same \
                 ha.anchor on every agent)",
                v.agent_id
            )
        })
}

/// Peers' verdict tags on the anchor older than `forget_after`, as
/// (key, exact value) for a conditional DeleteTags, leaving out those
/// already handled and our own key.
pub(crate) fn to_forget(
    anchor: &RouteTable,
    own_id: &str,
    now: u64,
    forget_after: Duration,
    done: &BTreeSet<(String, String)>,
) -> Vec<(String, String)> {
    anchor
        .tags
        .iter()
        .filter_map(|(k, v)| Some((k, v, peers::parse_tag(k, v)?)))
        .filter(|(_, _, verdict)| {
            verdict.agent_id != own_id && now.saturating_sub(verdict.at) > forget_after.as_secs()
        })
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .filter(|kv| !done.contains(kv))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsm::Via;

    fn verdict(id: &str, at: u64) -> (String, String) {
        let v = Verdict {
            agent_id: id.into(),
            path: Via::Primary,
            counter: 1,
            at,
            reason: String::new(),
        };
        (peers::tag_key(id), peers::tag_value(&v))
    }

    fn table(id: &str, tags: &[(String, String)]) -> RouteTable {
        RouteTable {
            id: id.into(),
            tags: tags.iter().cloned().collect(),
            ..RouteTable::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_value_we_never_wrote_is_another_writer_until_peer_timeout_passes() {
        let t = Duration::from_secs(30);
        let mut d = Duplicates::default();
        let (_, old) = verdict("a", 900);
        let parsed = |v: &str| peers::parse_tag(&peers::tag_key("a"), v).unwrap();
        // Before our first write nothing is foreign (a previous run's value).
        assert!(!d.read_own(&old, &parsed(&old), Instant::now()));
        d.writing("primary;1;1000;".into(), 1_000, 1);
        d.writing("primary;2;1010;".into(), 1_010, 2);
        // Our own values, even an older one read late, and a previous run's.
        for v in ["primary;1;1000;", "primary;2;1010;", old.as_str()] {
            assert!(!d.read_own(v, &parsed(v), Instant::now()), "{v}");
        }
        assert_eq!(d.suspected(Instant::now(), t), None);
        let theirs = "backup;7;1012;theirs";
        assert!(d.read_own(theirs, &parsed(theirs), Instant::now()));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(d.suspected(Instant::now(), t), Some(theirs));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(d.suspected(Instant::now(), t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_previous_runs_value_from_the_same_second_is_no_other_writer() {
        let mut d = Duplicates::default();
        let parsed = |v: &str| peers::parse_tag(&peers::tag_key("a"), v).unwrap();
        // Restarted within the second: our counter carries on from 41.
        d.writing("primary;42;1000;".into(), 1_000, 42);
        let previous = "primary;41;1000;";
        assert!(!d.read_own(previous, &parsed(previous), Instant::now()));
        let theirs = "backup;43;1000;x";
        assert!(d.read_own(theirs, &parsed(theirs), Instant::now()));
    }

    #[test]
    fn a_live_verdict_on_another_managed_table_splits_the_pair() {
        let t = Duration::from_secs(30);
        let anchor = table("rtb-a", &[verdict("x", 1_000)]);
        let other = |at| table("rtb-b", &[verdict("y", at)]);
        assert_eq!(
            split(std::slice::from_ref(&anchor), "rtb-a", 1_000, t),
            None
        );
        let found = split(&[anchor.clone(), other(990)], "rtb-a", 1_000, t).unwrap();
        assert!(
            found.starts_with("agent y publishes on rtb-b, we read rtb-a: the pair is split"),
            "{found}"
        );
        // A long-dead leftover is not a split.
        assert_eq!(split(&[anchor, other(900)], "rtb-a", 1_000, t), None);
    }

    #[test]
    fn only_peers_verdicts_older_than_forget_after_are_forgotten_once() {
        let day = Duration::from_secs(86_400);
        let now = 1_000_000;
        let old = verdict("retired", now - 86_401);
        let anchor = table(
            "rtb-a",
            &[
                old.clone(),
                verdict("live", now - 5),
                verdict("us", now - 90_000),
                ("Name".into(), "prod".into()),
            ],
        );
        let mut done = BTreeSet::new();
        assert_eq!(to_forget(&anchor, "us", now, day, &done), vec![old.clone()]);
        done.insert(old);
        assert!(to_forget(&anchor, "us", now, day, &done).is_empty());
    }
}
