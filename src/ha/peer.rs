//! Each peer's verdict as read: which value is newer, and how fresh it is
//! on our own clock.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use super::{guards, Ha};
use crate::fsm::Via;
use crate::model::RouteTable;
use crate::peers::{self, Combined, Verdict};

/// A peer's newest verdict and how fresh it is on our own clock.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    pub(super) verdict: Verdict,
    /// When (our monotonic clock) it was written, as best we can tell:
    /// at first sight its wall-clock age; once its `(at, counter)`
    /// advances, no earlier than our previous read of it (its clock may
    /// be off: that is only for display). `None`: first seen stamped in
    /// the future beyond the skew tolerance, not trusted until it advances.
    pub(super) written: Option<Instant>,
    /// Our last read that showed it.
    pub(super) seen: Instant,
    /// The newest `(at, counter)` accepted whose stamp was not beyond the
    /// skew tolerance in the future: what a trusted value must pass. A
    /// future stamp never sets it, or it would hide every later real
    /// value until our clock caught up with it (forever for a hand edit).
    pub(super) high: Option<(u64, u64)>,
    /// The last few values accepted, as `(at, counter, path)`: none is an
    /// advance again (a lagging read repeats one), and a value stamped in
    /// the future must pass all their counters.
    pub(super) recent: VecDeque<(u64, u64, Via)>,
}

/// How many accepted values a peer's record remembers.
const RECENT_VALUES: usize = 8;

impl Peer {
    pub(super) fn age(&self, now: Instant) -> Option<Duration> {
        self.written.map(|w| now.saturating_duration_since(w))
    }

    /// Takes `v` as the peer's verdict; `trusted`: its stamp is not in the
    /// future beyond the tolerance, so it may raise the mark.
    pub(super) fn accept(&mut self, v: Verdict, trusted: bool) {
        if trusted {
            self.high = self.high.max(Some((v.at, v.counter)));
        }
        if self.recent.len() == RECENT_VALUES {
            self.recent.pop_front();
        }
        self.recent.push_back((v.at, v.counter, v.path));
        self.verdict = v;
    }
}

impl Ha {
    /// Takes the verdicts from a read, if it includes the anchor.
    pub(crate) fn observe(&mut self, tables: &[RouteTable]) {
        let Some(anchor) = tables.iter().find(|t| t.id == self.anchor) else {
            // Every read asks for the anchor: absent means deleted (or a
            // wrong id). Peers cannot be read, so failbacks are held.
            if !self.anchor_missing {
                error!(anchor = %self.anchor, "the anchor route table is missing: peers' verdicts cannot be read nor ours published; failbacks (route deletions) are held, failovers still made; recreate it or set ha.anchor to another managed table on every agent");
            }
            self.anchor_missing = true;
            return;
        };
        if self.anchor_missing {
            info!(anchor = %self.anchor, "the anchor route table is readable again");
            self.anchor_missing = false;
        }
        self.last_read = Some(Instant::now());
        let now = (self.clock)();
        let mut to_forget = guards::to_forget(
            anchor,
            &self.agent_id,
            now,
            self.forget_after,
            &self.forgotten,
        );
        to_forget.retain(|t| !self.to_forget.contains(t));
        self.to_forget.append(&mut to_forget);
        let mono = Instant::now();
        let limit = self.peer_timeout;
        // A vanished tag's verdict is forgotten once it is stale anyway.
        self.peers.retain(|id, p| {
            anchor.tags.contains_key(&peers::tag_key(id))
                || p.age(mono).is_some_and(|age| age <= limit)
        });
        for (key, value) in &anchor.tags {
            let Some(v) = peers::parse_tag(key, value) else {
                continue;
            };
            if v.agent_id == self.agent_id {
                // Counting on from a previous run keeps the counter rising.
                if self.published.is_none() {
                    self.counter = self.counter.max(v.counter);
                    self.previous.get_or_insert(v.path);
                }
                if self.duplicates.read_own(value, &v, Instant::now()) && !self.duplicate_logged {
                    self.duplicate_logged = true;
                    self.started.push((
                        "ha_duplicate_id",
                        format!(
                            "another process publishes under our agent id {} on {}: failbacks are \
                             held; give every agent its own ha.agent_id",
                            self.agent_id, self.anchor
                        ),
                    ));
                    error!(agent_id = %self.agent_id, theirs = %value, anchor = %self.anchor, "CRITICAL: another process publishes under our agent id: the pair has degenerated into independent writers; failbacks (route deletions) are held until none is seen for ha.peer_timeout, failovers still made; give every agent its own ha.agent_id");
                }
            } else {
                self.note_peer(v, now, mono);
            }
        }
    }

    /// Notes a peer's verdict read at `now` (wall) and `mono` (ours).
    /// Monotonic per peer by `(at, counter)`: a lagging replica can show
    /// an older value than one already read, and must not undo it (a
    /// restart resets nothing here: its timestamp moves on). Liveness is
    /// judged by that value advancing, timed on our clock, so a peer
    /// whose clock is off is live while it publishes.
    ///
    /// A value stamped beyond the skew tolerance in the future (a clock
    /// ahead, then stepped back; a hand edit) is an advance if it is none
    /// of the last few accepted and its counter passes theirs, and never
    /// raises the mark later values must pass: the peer's next real value
    /// is accepted as soon as it shows. No value accepted once is an
    /// advance again.
    fn note_peer(&mut self, v: Verdict, now: u64, mono: Instant) {
        let wall = peers::wall_age(&v, now);
        let value = (v.at, v.counter, v.path);
        match self.peers.get_mut(&v.agent_id) {
            Some(p) => {
                // A value already accepted is never an advance again, even
                // once our clock reaches its stamp and it parses as trusted
                // (a dead peer's future-stamped Backup would come back).
                // A future stamp cannot be ordered by time, so its counter
                // must move on: a lagging read can show a value between two
                // we read (reads are 30 s apart, beats 10 s), never read.
                let advance = !p.recent.contains(&value)
                    && match wall {
                        Some(_) => p.high.is_none_or(|h| (v.at, v.counter) > h),
                        None => p.recent.iter().all(|&(_, counter, _)| v.counter > counter),
                    };
                if !advance {
                    p.seen = p.seen.max(mono);
                    return;
                }
                // Once as its stamps go ahead, not on every value after.
                if wall.is_none() && peers::wall_age(&p.verdict, now).is_some() {
                    warn!(peer = %v.agent_id, at = v.at, now, "peer's verdict is stamped in the future beyond the clock-skew tolerance: its clock is off or the tag was edited; counted as written now, not as the mark its next values must pass");
                }
                // Written since our previous read of it, and no earlier
                // than its own stamp says (a stamp ahead of us counts as now).
                let since = mono.saturating_duration_since(p.seen);
                let age = wall.unwrap_or_default().min(since);
                p.written = Some(mono.checked_sub(age).unwrap_or(mono));
                p.seen = mono;
                p.accept(v, wall.is_some());
            }
            None => {
                if wall.is_none() {
                    warn!(peer = %v.agent_id, at = v.at, now, "peer's verdict is stamped in the future beyond the clock-skew tolerance: its clock is off or the tag was edited; ignored until it publishes again");
                }
                let written = wall.map(|age| mono.checked_sub(age).unwrap_or(mono));
                let mut peer = Peer {
                    verdict: v.clone(),
                    written,
                    seen: mono,
                    high: None,
                    recent: VecDeque::new(),
                };
                peer.accept(v, wall.is_some());
                self.peers.insert(peer.verdict.agent_id.clone(), peer);
            }
        }
    }

    /// The pair's path for our `local` verdict, from the verdicts last
    /// read, as of that read (our clock): liveness is judged at reads, so
    /// between two the pair's path does not drift and no extra read is
    /// needed; a status view shows how old the read is.
    pub(crate) fn combined(&self, local: Via) -> Combined {
        let now = self.last_read.unwrap_or_else(Instant::now);
        let peers: Vec<(Verdict, Option<Duration>)> = self
            .peers
            .values()
            .map(|p| (p.verdict.clone(), p.age(now)))
            .collect();
        peers::combine_aged(local, &self.agent_id, &peers, self.peer_timeout)
    }

    /// At startup, why routes of ours may be a peer's and not evidence of
    /// our own path: a live peer's Backup verdict, or one stamped ahead of
    /// our clock (not trusted for liveness yet, but not provably old
    /// either: a peer whose clock runs ahead must not make us adopt its
    /// failover as ours).
    pub(crate) fn explaining_backup(&self) -> Option<String> {
        let combined = self.combined(Via::Primary);
        if combined.path == Via::Backup {
            return Some(combined.to_string());
        }
        let now = (self.clock)();
        self.peers
            .values()
            .filter(|p| p.verdict.path == Via::Backup && p.written.is_none())
            // Still ahead, or not older than a live verdict may be: once
            // our clock has passed it by peer_timeout it is provably old.
            .find(|p| peers::wall_age(&p.verdict, now).is_none_or(|age| age <= self.peer_timeout))
            .map(|p| {
                format!(
                    "{} says Backup, stamped ahead of our clock",
                    p.verdict.agent_id
                )
            })
    }

    /// When the pair's path may next change by itself for our `local`
    /// verdict: the first live Backup verdict of a peer that holds the
    /// pair against ours would go stale if it did not advance. A read then
    /// tells (the one read the rule needs beyond the reconciler's own:
    /// only while a peer holds us on Backup).
    pub(crate) fn next_expiry(&self, local: Via) -> Option<Instant> {
        if local == Via::Backup {
            return None;
        }
        // Only ahead of both the last read and now: while our reads fail,
        // a past expiry must not start pass after pass (retries back off).
        let after = self.last_read?.max(Instant::now());
        self.peers
            .values()
            .filter(|p| p.verdict.path == Via::Backup)
            .filter_map(|p| p.written)
            .map(|w| w + self.peer_timeout + Duration::from_secs(1))
            .filter(|e| *e > after)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::tests::ha;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// The anchor table as read, holding peer `b`'s verdict `value`.
    fn read(value: &str) -> RouteTable {
        RouteTable {
            id: "rtb-a".into(),
            tags: [(peers::tag_key("b"), value.to_string())].into(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn a_lagging_read_never_turns_a_peer_back() {
        let mut h = ha();
        h.observe(&[read("backup;8;995;down")]);
        h.observe(&[read("primary;7;990;up")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Backup);
        // A restart resets nothing that matters: its timestamp moves on.
        h.observe(&[read("primary;1;999;up")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
    }

    #[test]
    fn a_stamp_from_the_future_never_hides_the_values_after_it() {
        let mut h = ha();
        h.observe(&[read("primary;7;990;up")]);
        // A clock an hour ahead (or a hand edit), then stepped back.
        h.observe(&[read("backup;8;4600;down")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Backup);
        h.observe(&[read("primary;9;995;up")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
        // A lagging read repeating the future value turns nothing back,
        // nor does one older than the mark.
        h.observe(&[read("backup;8;4600;down")]);
        h.observe(&[read("backup;6;985;down")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
    }

    #[test]
    fn a_lagging_read_of_an_unread_future_stamped_value_is_no_advance() {
        let mut h = ha();
        // A peer 100 s ahead; reads every 30 s see every third beat.
        h.observe(&[read("backup;10;1100;down")]);
        h.observe(&[read("primary;13;1130;up")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
        // A lagging replica shows a value between the two, never read.
        h.observe(&[read("backup;12;1120;down")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
    }

    #[test]
    fn a_future_stamp_reached_by_our_clock_is_no_advance() {
        let now = Arc::new(AtomicU64::new(1_000));
        let clock = Arc::clone(&now);
        let mut h = ha();
        h.clock = Arc::new(move || clock.load(Ordering::Relaxed));
        h.observe(&[read("backup;5;1120;ahead")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
        // Our clock reaches the stamp: the same value, now trusted, was
        // already read, so the peer is not live again.
        now.store(1_119, Ordering::Relaxed);
        h.observe(&[read("backup;5;1120;ahead")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Primary);
        // Its next value is an advance.
        h.observe(&[read("backup;6;1119;down")]);
        assert_eq!(h.combined(Via::Primary).path, Via::Backup);
    }
}
