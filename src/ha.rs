//! A highly available pair (or more): publishing this agent's verdict and
//! reading its peers', for the reconciler. The rule itself is pure, in
//! [`crate::peers`]; this module is its bookkeeping: `peer` (each peer's
//! newest verdict and its freshness), `removals` (the settle and the
//! fight guard), `tracker` (stale peers, disagreements), `guards`
//! (duplicate id, split anchor, retired verdicts).
//!
//! # Where the verdicts live
//! As EC2 tags on the **anchor**: `ha.anchor`, by default the first
//! managed route's table. Every agent of a pair must name the same one; a
//! live verdict seen on another managed table means they do not (a
//! *split*: logged once while it lasts, exported, alerted). DescribeRouteTables, which the
//! reconciler makes anyway, returns its tags: reading peers costs no call.
//! One key per agent, `route-failover:verdict:<agent_id>`, value
//! `path;counter;unix-seconds;reason`.
//!
//! # When this agent publishes
//! - Its own verdict (the path its judge decides: its probes, the backup
//!   gate, an operator's hold) is written with CreateTags once per
//!   `heartbeat`, so peers can tell it is alive; a tag deleted by hand is
//!   back within one beat. The beat goes on while a pass waits on a slow
//!   call (one may take 50 s with timeouts and retries), and a slow beat
//!   holds up nothing: its write runs beside the pass's calls, and a pass
//!   that publishes a new verdict drops a beat still in flight. Every
//!   write carries a higher counter than the one before, so one dropped
//!   but landing late is older by `(at, counter)` and peers ignore it.
//! - A changed verdict is written at once, **before** any route call it
//!   causes, and a failed write holds those calls (retried with backoff):
//!   a peer must never see our routes without our reason for them.
//!
//! # Why agents never fight
//! Each agent converges on the combined path: Backup while any live
//! agent's verdict is Backup, Primary only when all say Primary.
//! - Creating: an agent creates a route only after a read that shows it
//!   missing and some live Backup verdict. A peer that deleted it had first
//!   published its Primary verdict, and the peer only deletes when every
//!   verdict it reads is Primary — so the creator's read either predates
//!   the deletion (and saw the route) or shows everyone Primary (and
//!   creates nothing), unless a verdict turned Backup since: a new
//!   transition, not a fight.
//! - Deleting: an agent deletes only when its combined path is Primary on
//!   two reads at least a heartbeat apart (see `Ha::judge_removals`),
//!   re-checked on a fresh read of the anchor right before the call
//!   (alongside the route itself): a Backup verdict published before that
//!   read stops it. A verdict published after it comes with a create that
//!   follows the delete: the route ends up present, as it should.
//! - Transients: agents that decide the same transition at once all call;
//!   every call after the first gets `RouteAlreadyExists` or
//!   `InvalidRoute.NotFound`, which count as converged. So a pair makes at
//!   most one redundant call per route per transition (N - 1 with N
//!   agents), and it converges by itself.
//! - An agent that cannot publish a new Primary verdict makes no route
//!   call for it (retried with backoff). A Backup verdict it cannot
//!   publish is acted on after a while (failing over is the safe
//!   direction): a peer may then delete those routes once; when they come
//!   back unexplained, the fight guard holds that failback.
//! - Restarts: an agent that starts while a peer's Backup verdict (live,
//!   or stamped ahead of our clock: not provably old) explains the routes
//!   is *undecided* (the fsm's Partial phase): no verdict published, no
//!   route call, until its probes judge (`fall` down rounds: Backup,
//!   `rise` up rounds: Primary). Its previous verdict ages out as if it
//!   were down, so nothing counts toward a failback before its probes
//!   have judged (DESIGN §3 Startup), and the rule stays two sentences:
//!   there is no third kind of verdict. Unless that previous verdict was
//!   Backup: then it adopts Backup as a lone agent does (hold-down from
//!   the restart, `failback = "manual"` kept), or two agents restarted
//!   together would fail the pair back by themselves.
//! - Fight guard: a route this agent deleted that is back while no live
//!   verdict explains it is held (CRITICAL once, reported as a held
//!   failback) until a read shows a live Backup verdict, the route goes
//!   away, or the agent restarts: another writer we cannot see costs at
//!   most one delete and one re-create per route. A deleted route is
//!   remembered only while absent for less than `peer_timeout` + 2 ×
//!   `resync_interval` (such a writer puts it back sooner), so an old
//!   failback makes no fight of a peer's later failover.
//!
//! EC2 is eventually consistent, and a read can show a route beside tags
//! older than it. Each peer's verdict only moves forward by `(at,
//! counter)`, so a lagging read never turns a peer back; a deletion needs
//! two reads a heartbeat apart, so tags lagging by less than a heartbeat
//! undo nothing (the pair fails back about a heartbeat later than a lone
//! agent). Larger lags cost at most one delete and re-create per route
//! per transition (the route missing until the peer's next pass, within
//! a resync); lags beyond that round trip also raise the fight finding
//! until the tags catch up, never a second delete.
//!
//! # When the pair cannot be trusted
//! Only the safe direction is taken: failovers (creations) go on,
//! failbacks (removals) are held and reported as held failbacks.
//! - Another process writing under our agent id: our key holding a value
//!   we never wrote (the last few writes are kept, so a late read of our
//!   own is no alarm), later by `(at, counter)` than our first write.
//!   CRITICAL once; held until `peer_timeout` passes without one. Passes
//!   do not publish an unchanged verdict (the heartbeat does, on its own
//!   time), so reads do not always follow our own write and can show the
//!   other writer.
//! - The anchor missing from a read: peers cannot be read; held while it is.
//! - A split anchor (a live verdict on another managed table): those
//!   peers' verdicts are not counted; held while it lasts.
//! - CreateTags failing: a Backup verdict is acted on anyway (see
//!   `Ha::act_unpublished`); a Primary one is never acted on unpublished.
//!
//! # Retired agents
//! A peer's verdict older than `ha.forget_after` is deleted with a
//! conditional DeleteTags (its key and the exact value read): EC2 applies
//! it only while the tag still holds that value, so a peer that came back
//! keeps its fresh verdict. Once per tag; none in steady state.
//!
//! # Freshness
//! A peer is live while its verdict's `(at, counter)` keeps advancing,
//! timed on this agent's monotonic clock: dead once it has not advanced
//! for `peer_timeout`. At first sight its timestamp's age by our wall
//! clock stands in (EC2 instances keep time with Amazon Time Sync; the
//! clock-skew tolerance, [`peers::SKEW_TOLERANCE`], 2 s, is in the
//! config's floor: `peer_timeout` must exceed the heartbeat plus it). A
//! timestamp first seen beyond the tolerance in the future is not trusted
//! (logged once) until it advances. Such a stamp never becomes the mark
//! later values must pass: a future-stamped value advances if it is none
//! of the last few values read and its counter passes theirs, a value
//! stamped in the present if it passes the newest present-stamped `(at,
//! counter)`; a value once
//! accepted is never an advance again, even when our clock reaches its
//! stamp (a dead peer's future Backup would live again). So a peer whose
//! clock is off (or was stepped back, or whose tag was edited into the
//! future) is live while it publishes, and a runaway stamp cannot hold
//! the pair.
//!
//! # Cost
//! Steady state: one CreateTags per heartbeat; reads as without `[ha]`
//! (every `resync_interval`): peers' liveness is judged at those reads,
//! and at the anchor's re-read before a deletion, never on a heartbeat of
//! its own. One more read only while a peer's Backup verdict holds the
//! pair against ours, timed for when it would expire. No DeleteTags.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::fsm::Via;
use crate::model::RouteTable;
use crate::peers::{self, Combined, Liveness, Seen, Verdict};

mod guards;
mod peer;
mod removals;
mod tracker;

use peer::Peer;
pub(crate) use removals::RouteKey;
pub use tracker::{Changes, Tracker};

/// Heartbeats two live agents may disagree before it is reported.
pub const DISAGREE_AFTER_BEATS: u32 = 3;

/// `[ha]` as validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// `None`: this instance's id, from the metadata service, at startup.
    pub agent_id: Option<String>,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    /// The route table whose tags carry the verdicts: `ha.anchor`, or by
    /// default the first managed route's table.
    pub anchor: String,
    /// Whether `ha.anchor` named it (so a reordering of routes cannot move it).
    pub anchor_set: bool,
    /// A peer's verdict older than this is deleted (retired agents).
    pub forget_after: Duration,
}

impl HaConfig {
    /// Where the anchor came from, for logs and `check`.
    pub fn anchor_source(&self) -> &'static str {
        if self.anchor_set {
            "ha.anchor"
        } else {
            "the first managed table; set ha.anchor to pin it"
        }
    }
}

/// Why `id` cannot name an agent, if it cannot: it becomes part of a tag
/// key (at most 128 characters, 23 taken by the prefix).
pub fn check_agent_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 100 {
        return Err(format!(
            "{id:?} must be 1 to 100 characters (it becomes part of an EC2 tag key)"
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{id:?} may hold only letters, digits, '-', '_' and '.', such as \"monitor-a\" or an instance id"
        ));
    }
    Ok(())
}

/// Seconds since the Unix epoch, as verdicts are stamped. Injected so
/// tests on tokio's paused clock can make wall time pass too.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's clock.
pub fn system_clock() -> WallClock {
    Arc::new(peers::unix_now)
}

/// The pair as this agent sees it, for logs, status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub agent_id: String,
    /// This agent's own verdict.
    pub local: Via,
    /// The path the pair converges on.
    pub combined: Via,
    /// Every peer whose verdict tag was read, with its age and liveness.
    pub peers: Vec<Seen>,
    /// Live agents have disagreed for more than a few heartbeats.
    pub disagreement: Option<String>,
    /// The table whose tags carry the verdicts.
    pub anchor: String,
    /// When this view was assessed (seconds since the epoch, our clock):
    /// a peer's age at any later moment is computed from it and its `at`.
    pub read_at: u64,
    /// Another process writes under our agent id.
    pub duplicate: Option<String>,
    /// A live verdict on a managed table other than our anchor.
    pub split: Option<String>,
    /// Why failbacks (deletions) are held, if they are.
    pub failback_hold: Option<String>,
    /// How old the last read of the peers' verdicts was when assessed:
    /// their liveness is as of that read.
    pub read_age: Duration,
    /// How old our last successful publication was when assessed; `None`
    /// before the first.
    pub published_age: Option<Duration>,
}

impl PeerView {
    pub fn count(&self, liveness: Liveness) -> usize {
        self.peers.iter().filter(|s| s.liveness == liveness).count()
    }
}

impl fmt::Display for PeerView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (us) says {}, the pair goes {}",
            self.agent_id, self.local, self.combined
        )?;
        for s in &self.peers {
            write!(
                f,
                "; {} says {} ({}s ago{})",
                s.verdict.agent_id,
                s.verdict.path,
                s.age.as_secs(),
                if s.liveness == Liveness::Stale {
                    ", STALE: ignored"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// This agent's side of the pair, kept by the reconciler.
pub(crate) struct Ha {
    pub(crate) agent_id: String,
    heartbeat: Duration,
    peer_timeout: Duration,
    clock: WallClock,
    anchor: String,
    counter: u64,
    /// The verdict last written successfully, and when.
    published: Option<Via>,
    published_at: Option<Instant>,
    /// When the last write was tried (successful or not).
    last_write: Option<Instant>,
    /// Since when every write has failed; `None` after a success.
    failing_since: Option<Instant>,
    /// Each peer's newest verdict read, ours excluded. Kept when its tag
    /// vanishes (deleted by hand, by `terraform apply`): it ages like any
    /// other and counts until it goes stale, so a deleted Backup verdict
    /// never lets another agent undo a failover early.
    peers: BTreeMap<String, Peer>,
    /// When the anchor's tags were last read (by a pass, or the re-read
    /// before a deletion).
    last_read: Option<Instant>,
    tracker: Tracker,
    forget_after: Duration,
    /// Another writer under our id (logged once per suspicion).
    duplicates: guards::Duplicates,
    duplicate_logged: bool,
    /// The last read that asked for the anchor did not find it.
    anchor_missing: bool,
    /// A live verdict on another managed table (logged once while it lasts).
    split: Option<String>,
    /// Retired peers' verdicts (key, value) already deleted or given up on.
    forgotten: BTreeSet<(String, String)>,
    /// Retired peers' verdicts to delete, conditionally, after this read.
    to_forget: Vec<(String, String)>,
    /// Routes of ours seen present while every live verdict was Primary,
    /// with the read that first showed it: deleted only once a read at
    /// least a heartbeat later still shows it so (tags can lag routes).
    unexplained: BTreeMap<RouteKey, Instant>,
    /// Routes this agent deleted since a read last showed a live Backup
    /// verdict, with when the delete landed. Forgotten once a read shows
    /// the route still absent [`Ha::fight_memory`] later: a writer we
    /// cannot see puts it back sooner, and a later failover by a peer is
    /// no fight.
    deleted: BTreeMap<RouteKey, Instant>,
    /// Routes we deleted that came back with no live verdict explaining
    /// them: another writer we cannot see. Their failback is held.
    fights: BTreeSet<RouteKey>,
    /// Findings just started, for hooks: (kind, text).
    started: Vec<(&'static str, String)>,
    /// Our own verdict as our previous run left it on the anchor (the
    /// first read before we publish): a restart on its Backup keeps that
    /// failover's failback rules.
    previous: Option<Via>,
}

/// One write of our verdict: the anchor, the tag, and what it says.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) anchor: String,
    pub(crate) tag: (String, String),
    local: Via,
    reason: String,
}

impl Ha {
    pub(crate) fn new(
        agent_id: String,
        config: &HaConfig,
        anchor: String,
        clock: WallClock,
    ) -> Self {
        Self {
            agent_id,
            heartbeat: config.heartbeat,
            peer_timeout: config.peer_timeout,
            clock,
            anchor,
            counter: 0,
            published: None,
            published_at: None,
            last_write: None,
            failing_since: None,
            peers: BTreeMap::new(),
            last_read: None,
            tracker: Tracker::default(),
            forget_after: config.forget_after,
            duplicates: guards::Duplicates::default(),
            duplicate_logged: false,
            anchor_missing: false,
            split: None,
            forgotten: BTreeSet::new(),
            to_forget: Vec::new(),
            unexplained: BTreeMap::new(),
            deleted: BTreeMap::new(),
            fights: BTreeSet::new(),
            started: Vec::new(),
            previous: None,
        }
    }

    pub(crate) fn anchor(&self) -> &str {
        &self.anchor
    }

    /// Our own verdict as our previous run left it, if the anchor showed one.
    pub(crate) fn previous(&self) -> Option<Via> {
        self.previous
    }

    /// Whether `local` differs from what peers last saw from us.
    pub(crate) fn changed(&self, local: Via) -> bool {
        self.published != Some(local)
    }

    /// Whether our verdict must be written before any route call at `now`:
    /// it changed, or peers may be about to take us for dead (our last
    /// successful write is older than `peer_timeout` - heartbeat, say
    /// after losing the API): a route call they cannot explain would
    /// start a fight.
    pub(crate) fn publish_first(&self, local: Via, now: Instant) -> bool {
        let fresh_for = self.peer_timeout.saturating_sub(self.heartbeat);
        self.changed(local) || self.published_at.is_none_or(|at| now >= at + fresh_for)
    }

    /// When the next heartbeat is due; `None` before the first write.
    pub(crate) fn next_beat(&self) -> Option<Instant> {
        self.last_write.map(|t| t + self.heartbeat)
    }

    /// Writes our verdict (one CreateTags).
    pub(crate) async fn publish(
        &mut self,
        api: &dyn RouteApi,
        local: Via,
        reason: &str,
    ) -> Result<(), CloudError> {
        let write = self.begin_write(local, reason);
        let result = api
            .create_tags(&write.anchor, std::slice::from_ref(&write.tag))
            .await;
        self.end_write(&write, result)
    }

    /// Prepares a write of our verdict, for a caller that may drop the
    /// call (a heartbeat that a new verdict cancels). The counter moves on
    /// with every attempt, so a dropped write that lands late is older by
    /// `(at, counter)` than the next one and peers ignore it.
    pub(crate) fn begin_write(&mut self, local: Via, reason: &str) -> Write {
        self.last_write = Some(Instant::now());
        self.counter += 1;
        let verdict = Verdict {
            agent_id: self.agent_id.clone(),
            path: local,
            counter: self.counter,
            at: (self.clock)(),
            reason: reason.to_string(),
        };
        let tag = (peers::tag_key(&self.agent_id), peers::tag_value(&verdict));
        self.duplicates
            .writing(tag.1.clone(), verdict.at, verdict.counter);
        Write {
            anchor: self.anchor.clone(),
            tag,
            local,
            reason: reason.to_string(),
        }
    }

    /// Notes how a write begun with [`Ha::begin_write`] went.
    pub(crate) fn end_write(
        &mut self,
        write: &Write,
        result: Result<(), CloudError>,
    ) -> Result<(), CloudError> {
        if let Err(e) = result {
            self.failing_since.get_or_insert(Instant::now());
            return Err(e);
        }
        self.failing_since = None;
        self.published_at = Some(Instant::now());
        if self.published != Some(write.local) {
            info!(verdict = %write.local, reason = %write.reason, anchor = %self.anchor, "published our verdict to the pair");
        }
        self.published = Some(write.local);
        Ok(())
    }

    /// Whether a Backup verdict we could not publish (`error`) is acted on
    /// anyway at `now`. Failing over is the safe direction: a peer that
    /// cannot see our verdict may at worst delete our routes once, and we
    /// put them back, whereas holding the failover leaves production on a
    /// dead DX. So it is held only while the failure may clear soon: a
    /// retryable error for less than one `peer_timeout`. A Primary verdict
    /// (which deletes) always waits for its publication.
    pub(crate) fn act_unpublished(&self, local: Via, error: &CloudError, now: Instant) -> bool {
        if local != Via::Backup {
            return false;
        }
        let retryable = matches!(error.kind, ErrorKind::Throttled | ErrorKind::Transient);
        !retryable
            || self
                .failing_since
                .is_some_and(|since| now - since >= self.peer_timeout)
    }

    /// Notes the verdicts on managed tables other than the anchor, from a
    /// read of every managed table; a live one means agents read different
    /// anchors and cannot see each other (logged once while it lasts).
    pub(crate) fn check_split(&mut self, tables: &[RouteTable]) {
        let found = guards::split(tables, &self.anchor, (self.clock)(), self.peer_timeout);
        match (&self.split, &found) {
            (None, Some(text)) => {
                error!(finding = %text, "the pair is split: its agents read different anchor tables");
                self.started.push(("ha_split_anchor", text.clone()));
            }
            (Some(_), None) => {
                info!("no verdict on another managed table: the pair is whole again")
            }
            _ => {}
        }
        self.split = found;
    }

    /// Why failbacks (route deletions) must wait, if they must: peers
    /// cannot be read, some publish where we do not read (a split), or
    /// another process writes under our id. Failing over stays allowed:
    /// it is the safe direction.
    pub(crate) fn failback_hold(&self, now: Instant) -> Option<String> {
        if self.anchor_missing {
            return Some(format!(
                "the anchor table {} is missing, so the peers' verdicts cannot be read",
                self.anchor
            ));
        }
        if let Some(split) = &self.split {
            return Some(split.clone());
        }
        self.duplicates.suspected(now, self.peer_timeout).map(|_| {
            format!(
                "another process publishes under our agent id {} on {}",
                self.agent_id, self.anchor
            )
        })
    }

    /// Findings that started since last asked, for hooks: (kind, text).
    pub(crate) fn take_started(&mut self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut self.started)
    }

    /// Retired peers' verdicts to delete now, each once, as (key, value).
    pub(crate) fn take_forget(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.to_forget)
    }

    /// Notes how deleting a retired peer's verdict went. A failure is
    /// retried only if the call may succeed later.
    pub(crate) fn forget_result(&mut self, tag: (String, String), result: &Result<(), CloudError>) {
        match result {
            Ok(()) => {
                info!(key = %tag.0, value = %tag.1, forget_after = ?self.forget_after, anchor = %self.anchor, "deleted a retired agent's verdict (only if unchanged since read)");
                if let Some(id) = tag.0.strip_prefix(peers::TAG_PREFIX) {
                    self.peers.remove(id);
                }
            }
            Err(e) if e.kind.is_retryable() => {
                warn!(key = %tag.0, error = %e, "cannot delete a retired agent's verdict; retried on a later read");
                return;
            }
            Err(e) => {
                warn!(key = %tag.0, error = %e, "cannot delete a retired agent's verdict; left alone (see iam-policy.example.json for DeleteTags)");
            }
        }
        self.forgotten.insert(tag);
    }

    /// Assesses the pair at `now`: logs what changed, and returns the view
    /// with whether a status view has not seen it yet (ages aside).
    pub(crate) fn assess(&mut self, local: Via, now: Instant) -> (Combined, PeerView, bool) {
        let combined = self.combined(local);
        let duplicate = self
            .duplicates
            .suspected(now, self.peer_timeout)
            .map(|theirs| {
                format!(
                    "another process publishes under our agent id {} (read {theirs:?}, which we \
                     never wrote): give every agent its own ha.agent_id",
                    self.agent_id
                )
            });
        if duplicate.is_none() && self.duplicate_logged {
            self.duplicate_logged = false;
            info!(agent_id = %self.agent_id, peer_timeout = ?self.peer_timeout, "no other writer under our agent id for ha.peer_timeout: failbacks allowed again");
        }
        let hold = self.failback_hold(now);
        let changes = self.tracker.assess_with(
            &combined,
            local,
            now,
            self.heartbeat,
            [duplicate.clone(), self.split.clone(), hold.clone()],
        );
        let now_wall = (self.clock)();
        for id in &changes.went_stale {
            if self.peers.get(id).is_some_and(|p| p.written.is_none()) {
                // Said once, when first read.
                continue;
            }
            warn!(peer = %id, peer_timeout = ?self.peer_timeout, "peer's verdict has not changed for ha.peer_timeout: taken for dead and ignored until it publishes again");
        }
        for id in &changes.came_back {
            info!(peer = %id, "peer is publishing again");
        }
        if let Some(text) = &changes.disagreement_started {
            warn!(finding = %text, "the agents of the pair disagree");
        }
        if changes.disagreement_ended {
            info!("the agents of the pair agree again");
        }
        let view = PeerView {
            agent_id: self.agent_id.clone(),
            local,
            combined: combined.path,
            peers: combined.peers.clone(),
            disagreement: self.tracker.disagreement().map(str::to_string),
            anchor: self.anchor.clone(),
            read_at: now_wall,
            duplicate,
            split: self.split.clone(),
            failback_hold: hold,
            read_age: self
                .last_read
                .map_or(Duration::ZERO, |r| now.saturating_duration_since(r)),
            published_age: self.published_at.map(|p| now.saturating_duration_since(p)),
        };
        (combined, view, changes.view_changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const BEAT: Duration = Duration::from_secs(10);
    pub(super) const RESYNC: Duration = Duration::from_secs(30);

    pub(super) fn ha() -> Ha {
        let config = HaConfig {
            agent_id: Some("a".into()),
            heartbeat: BEAT,
            peer_timeout: BEAT * 3,
            anchor: "rtb-a".into(),
            anchor_set: true,
            forget_after: Duration::from_secs(86_400),
        };
        Ha::new("a".into(), &config, "rtb-a".into(), Arc::new(|| 1_000))
    }

    #[test]
    fn agent_ids_become_tag_keys() {
        assert!(check_agent_id("i-0123456789abcdef0").is_ok());
        assert!(check_agent_id("monitor-a").is_ok());
        assert!(check_agent_id("").is_err());
        assert!(check_agent_id("a;b").is_err());
        assert!(check_agent_id(&"a".repeat(101)).is_err());
    }
}
