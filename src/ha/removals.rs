//! Judging the removals a read on the pair's Primary path calls for: the
//! settle across two reads a heartbeat apart, and the fight guard.

use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{error, info};

use super::Ha;

/// A route slot: its table and destination.
pub(crate) type RouteKey = (String, IpNet);

/// How the removals a read calls for are to be made.
#[derive(Debug, Default)]
pub(crate) struct Removals {
    /// Unexplained across reads a heartbeat apart: delete.
    pub(crate) ready: Vec<RouteKey>,
    /// Unexplained only since less than a heartbeat: read again then.
    pub(crate) settle_until: Option<Instant>,
    /// Deleted by us once and back unexplained: held, for `why`.
    pub(crate) held: Vec<RouteKey>,
    pub(crate) why: String,
}

impl Ha {
    /// Sorts the removals a read on the pair's Primary path calls for
    /// (routes of ours that no live verdict explains) at `now`. A route
    /// is deleted only once two reads a heartbeat apart show it so: a read
    /// whose tags lag its routes can show a peer's fresh failover beside
    /// that peer's old Primary verdict. A route we deleted that is back
    /// unexplained means a writer we cannot see (an unpublishable verdict,
    /// a clock far off, another anchor): its failback is held, not fought.
    /// `resync` is the reconciler's `resync_interval`, which bounds how
    /// long such a writer takes to put a route back.
    pub(crate) fn judge_removals(
        &mut self,
        removals: &[RouteKey],
        now: Instant,
        resync: Duration,
    ) -> Removals {
        self.unexplained.retain(|k, _| removals.contains(k));
        let memory = self.fight_memory(resync);
        self.deleted
            .retain(|k, at| removals.contains(k) || now < *at + memory);
        let before = self.fights.len();
        // A held route that went away ends its fight.
        self.fights.retain(|k| removals.contains(k));
        if before > 0 && self.fights.is_empty() {
            info!("the routes we had to keep against another writer are gone: failbacks go on as usual");
        }
        let mut out = Removals::default();
        let mut new_fights = Vec::new();
        for key in removals {
            let first = *self.unexplained.entry(key.clone()).or_insert(now);
            let due = first + self.heartbeat;
            if now < due {
                out.settle_until = Some(out.settle_until.map_or(due, |d| d.min(due)));
            } else if self.deleted.contains_key(key) || self.fights.contains(key) {
                if self.fights.insert(key.clone()) {
                    new_fights.push(format!("{} {}", key.0, key.1));
                }
                out.held.push(key.clone());
            } else {
                out.ready.push(key.clone());
            }
        }
        if !new_fights.is_empty() {
            self.started.push((
                "ha_fight",
                format!(
                    "routes we deleted came back while no live verdict explains them ({}): another \
                     writer we cannot see; their failback is held",
                    new_fights.join(", ")
                ),
            ));
            error!(routes = %new_fights.join(", "), anchor = %self.anchor, "CRITICAL: routes we deleted came back while no live verdict explains them: another writer we cannot see (an agent whose verdict cannot be published, a clock far off, another anchor); keeping them (failback held) instead of fighting; held until a read shows a live Backup verdict, the route goes away, or this agent restarts");
        }
        out.why = "we deleted it and it came back while no live verdict explains it: another \
                   writer we cannot see (an agent that cannot publish, a clock far off, another \
                   anchor); see the CRITICAL log line"
            .to_string();
        out
    }

    /// Notes a read on which a live verdict (ours or a peer's) says Backup:
    /// every route of ours is explained, nothing we deleted is a fight.
    pub(crate) fn explained(&mut self) {
        self.unexplained.clear();
        self.deleted.clear();
        if !self.fights.is_empty() {
            info!("a live Backup verdict explains the routes we kept against another writer");
            self.fights.clear();
        }
    }

    /// Notes routes this agent deleted, at `now`.
    pub(crate) fn note_deleted(&mut self, keys: impl IntoIterator<Item = RouteKey>, now: Instant) {
        self.deleted.extend(keys.into_iter().map(|k| (k, now)));
    }

    /// How long a route we deleted is remembered while absent: a writer
    /// we cannot see acts on an unpublished Backup verdict within
    /// `peer_timeout`, puts the route back at its next pass (within a
    /// resync) and our next read shows it (within another).
    pub(crate) fn fight_memory(&self, resync: Duration) -> Duration {
        self.peer_timeout + resync * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::tests::{ha, BEAT, RESYNC};

    #[tokio::test(start_paused = true)]
    async fn a_route_is_deleted_after_two_reads_a_beat_apart_and_held_if_it_comes_back() {
        let mut h = ha();
        let k: RouteKey = ("rtb-a".into(), "10.1.0.0/16".parse().unwrap());
        let t0 = Instant::now();
        let first = h.judge_removals(std::slice::from_ref(&k), t0, RESYNC);
        assert_eq!(
            (first.ready.len(), first.settle_until),
            (0, Some(t0 + BEAT))
        );
        let second = h.judge_removals(std::slice::from_ref(&k), t0 + BEAT, RESYNC);
        assert_eq!(second.ready, std::slice::from_ref(&k));
        h.note_deleted([k.clone()], t0 + BEAT);
        // Gone, then back unexplained: held, not deleted again.
        assert!(h
            .judge_removals(&[], t0 + BEAT * 2, RESYNC)
            .ready
            .is_empty());
        let back = h.judge_removals(std::slice::from_ref(&k), t0 + BEAT * 3, RESYNC);
        assert!(back.ready.is_empty() && back.held.is_empty());
        let held = h.judge_removals(std::slice::from_ref(&k), t0 + BEAT * 4, RESYNC);
        assert_eq!((held.ready.len(), held.held), (0, vec![k.clone()]));
        // A live Backup verdict explains it: a fresh start, settled again.
        h.explained();
        let after = h.judge_removals(std::slice::from_ref(&k), t0 + BEAT * 5, RESYNC);
        assert!(after.held.is_empty() && after.settle_until.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_route_we_deleted_long_ago_is_no_fight_when_it_comes_back() {
        let mut h = ha();
        let k: RouteKey = ("rtb-a".into(), "10.1.0.0/16".parse().unwrap());
        let t0 = Instant::now();
        h.note_deleted([k.clone()], t0);
        let memory = h.fight_memory(RESYNC);
        // Absent on reads until the memory has passed: forgotten.
        assert!(h.judge_removals(&[], t0 + BEAT, RESYNC).ready.is_empty());
        assert!(h.judge_removals(&[], t0 + memory, RESYNC).ready.is_empty());
        let later = t0 + memory + BEAT;
        let back = h.judge_removals(std::slice::from_ref(&k), later, RESYNC);
        assert!(back.held.is_empty() && back.settle_until.is_some());
        let settled = h.judge_removals(std::slice::from_ref(&k), later + BEAT, RESYNC);
        assert_eq!((settled.ready, settled.held.len()), (vec![k], 0));
        assert!(h.take_started().is_empty(), "no fight reported");
    }
}
