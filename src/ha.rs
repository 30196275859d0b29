//! A highly available pair (or more): publishing this agent's verdict and
//! reading its peers', for the reconciler. The rule itself is pure, in
//! [`crate::peers`]; this module is its bookkeeping.
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
//! - Restarts: an agent that starts while a live peer's Backup verdict
//!   explains the routes is *undecided* (the fsm's Partial phase): no
//!   verdict published, no route call, until its probes judge (`fall`
//!   down rounds: Backup, `rise` up rounds: Primary). Its previous
//!   verdict ages out as if it were down, so nothing counts toward a
//!   failback before its probes have judged (DESIGN §3 Startup), and the
//!   rule stays two sentences: there is no third kind of verdict.
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
//! of the last few values read, a value stamped in the present if it
//! passes the newest present-stamped `(at, counter)`. So a peer whose
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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::fsm::Via;
use crate::model::RouteTable;
use crate::peers::{self, Combined, Liveness, Seen, Verdict};

mod guards;

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
}

/// A peer's newest verdict and how fresh it is on our own clock.
#[derive(Debug, Clone)]
struct Peer {
    verdict: Verdict,
    /// When (our monotonic clock) it was written, as best we can tell:
    /// at first sight its wall-clock age; once its `(at, counter)`
    /// advances, no earlier than our previous read of it (its clock may
    /// be off: that is only for display). `None`: first seen stamped in
    /// the future beyond the skew tolerance, not trusted until it advances.
    written: Option<Instant>,
    /// Our last read that showed it.
    seen: Instant,
    /// The newest `(at, counter)` accepted whose stamp was not beyond the
    /// skew tolerance in the future: what a trusted value must pass. A
    /// future stamp never sets it, or it would hide every later real
    /// value until our clock caught up with it (forever for a hand edit).
    high: Option<(u64, u64)>,
    /// The last few values accepted, as `(at, counter, path)`: a value
    /// stamped in the future is an advance only if it is none of them (a
    /// lagging read repeats one).
    recent: VecDeque<(u64, u64, Via)>,
}

/// How many accepted values a peer's record remembers.
const RECENT_VALUES: usize = 8;

impl Peer {
    fn age(&self, now: Instant) -> Option<Duration> {
        self.written.map(|w| now.saturating_duration_since(w))
    }

    /// Takes `v` as the peer's verdict; `trusted`: its stamp is not in the
    /// future beyond the tolerance, so it may raise the mark.
    fn accept(&mut self, v: Verdict, trusted: bool) {
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

/// One write of our verdict: the anchor, the tag, and what it says.
#[derive(Debug, Clone)]
pub(crate) struct Write {
    pub(crate) anchor: String,
    pub(crate) tag: (String, String),
    local: Via,
    reason: String,
}

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
        }
    }

    pub(crate) fn anchor(&self) -> &str {
        &self.anchor
    }

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
    /// of the last few accepted, and never raises the mark later values
    /// must pass: the peer's next real value is accepted as soon as it
    /// shows.
    fn note_peer(&mut self, v: Verdict, now: u64, mono: Instant) {
        let wall = peers::wall_age(&v, now);
        let value = (v.at, v.counter, v.path);
        match self.peers.get_mut(&v.agent_id) {
            Some(p) => {
                let advance = match wall {
                    Some(_) => p.high.is_none_or(|h| (v.at, v.counter) > h),
                    None => !p.recent.contains(&value),
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

    const BEAT: Duration = Duration::from_secs(10);
    const RESYNC: Duration = Duration::from_secs(30);

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

    fn ha() -> Ha {
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

    #[test]
    fn a_lagging_read_never_turns_a_peer_back() {
        let mut h = ha();
        let read = |value: &str| RouteTable {
            id: "rtb-a".into(),
            tags: [(peers::tag_key("b"), value.to_string())].into(),
            ..RouteTable::default()
        };
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
        let read = |value: &str| RouteTable {
            id: "rtb-a".into(),
            tags: [(peers::tag_key("b"), value.to_string())].into(),
            ..RouteTable::default()
        };
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
    fn agent_ids_become_tag_keys() {
        assert!(check_agent_id("i-0123456789abcdef0").is_ok());
        assert!(check_agent_id("monitor-a").is_ok());
        assert!(check_agent_id("").is_err());
        assert!(check_agent_id("a;b").is_err());
        assert!(check_agent_id(&"a".repeat(101)).is_err());
    }
}
