//! The rule of a highly available pair (or more): agents on separate
//! instances, each probing Direct Connect on its own, share their verdicts
//! and act as one.
//!
//! **Backup while any live agent's verdict is Backup; Primary only when
//! every live agent's verdict is Primary.** A verdict older than
//! `peer_timeout` is dead: ignored, so a dead agent never holds the pair on
//! a path. Failing over is the safe direction, so one agent that sees DX
//! down is enough; failing back needs everyone.
//!
//! Pure: verdicts with their ages in, the combined path out: live while
//! at most `peer_timeout` old, exactly. [`combine`] ages them by the
//! timestamp each agent writes against this agent's clock; the reconciler
//! times them on its own monotonic clock instead ([`combine_aged`]). EC2 instances keep time with Amazon Time Sync (well under a
//! millisecond apart); [`SKEW_TOLERANCE`] absorbs far worse, and lives in
//! the config's floor (`peer_timeout` must exceed the heartbeat plus it),
//! not in the staleness limit, so a dead agent's Backup verdict holds the
//! pair no longer than `peer_timeout`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::fsm::Via;

/// How far apart two agents' clocks may be before freshness is misjudged:
/// part of the floor of `peer_timeout`, and how far in the future a
/// timestamp may be before it is distrusted.
pub const SKEW_TOLERANCE: Duration = Duration::from_secs(2);

/// One agent's published verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub agent_id: String,
    /// The path this agent's own probes (and backup checks) call for.
    pub path: Via,
    /// Increases with every publication: tells a live agent from a stuck one.
    pub counter: u64,
    /// When it was published, seconds since the Unix epoch (its clock).
    pub at: u64,
    /// A short reason, for operators.
    pub reason: String,
}

/// How a verdict counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Live,
    /// Older than `peer_timeout`, or stamped further in the future than
    /// [`SKEW_TOLERANCE`]: ignored.
    Stale,
}

/// A verdict with its age and liveness, for status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub verdict: Verdict,
    pub age: Duration,
    pub liveness: Liveness,
}

/// The pair's combined path and what it was made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    pub path: Via,
    /// Live agents whose verdict is Backup (this agent included).
    pub backup_votes: Vec<String>,
    pub peers: Vec<Seen>,
}

impl fmt::Display for Combined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backup_votes.is_empty() {
            write!(f, "every live agent says Primary")
        } else {
            write!(
                f,
                "Backup: {} say(s) DX is down",
                self.backup_votes.join(", ")
            )
        }
    }
}

/// Seconds since the Unix epoch, for verdict timestamps.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Combines this agent's own path with its peers' verdicts, at `now`
/// (seconds since the epoch).
pub fn combine(
    own: Via,
    own_id: &str,
    peers: &[Verdict],
    now: u64,
    peer_timeout: Duration,
) -> Combined {
    let aged: Vec<(Verdict, Option<Duration>)> = peers
        .iter()
        .map(|v| (v.clone(), wall_age(v, now)))
        .collect();
    combine_aged(own, own_id, &aged, peer_timeout)
}

/// A verdict's age by its timestamp against our clock (`now`, seconds
/// since the epoch); `None` when it is stamped further in the future than
/// the skew tolerance: not to be trusted (a clock far off, a hand-edited
/// tag), since taken as fresh a dead agent's Backup would hold the pair
/// for ever.
pub fn wall_age(v: &Verdict, now: u64) -> Option<Duration> {
    if v.at > now.saturating_add(SKEW_TOLERANCE.as_secs()) {
        return None;
    }
    Some(Duration::from_secs(now.saturating_sub(v.at)))
}

/// As [`combine`], with each peer's age already judged (`None`: not to be
/// trusted, so stale): live while at most `peer_timeout` old.
pub fn combine_aged(
    own: Via,
    own_id: &str,
    peers: &[(Verdict, Option<Duration>)],
    peer_timeout: Duration,
) -> Combined {
    let mut backup_votes = Vec::new();
    if own == Via::Backup {
        backup_votes.push(own_id.to_string());
    }
    let seen: Vec<Seen> = peers
        .iter()
        .filter(|(v, _)| v.agent_id != own_id)
        .map(|(v, age)| {
            let liveness = match age {
                Some(age) if *age <= peer_timeout => Liveness::Live,
                _ => Liveness::Stale,
            };
            Seen {
                verdict: v.clone(),
                age: age.unwrap_or_default(),
                liveness,
            }
        })
        .collect();
    for s in &seen {
        if s.liveness == Liveness::Live && s.verdict.path == Via::Backup {
            backup_votes.push(s.verdict.agent_id.clone());
        }
    }
    Combined {
        path: if backup_votes.is_empty() {
            Via::Primary
        } else {
            Via::Backup
        },
        backup_votes,
        peers: seen,
    }
}

/// The tag key an agent publishes its verdict under.
pub fn tag_key(agent_id: &str) -> String {
    format!("{TAG_PREFIX}{agent_id}")
}

/// Every verdict tag key starts with this.
pub const TAG_PREFIX: &str = "route-failover:verdict:";

/// The tag value: `path;counter;unix-seconds;reason` (EC2 allows 256 characters).
pub fn tag_value(v: &Verdict) -> String {
    let path = match v.path {
        Via::Primary => "primary",
        Via::Backup => "backup",
    };
    let mut value = format!(
        "{path};{};{};{}",
        v.counter,
        v.at,
        v.reason.replace(';', ",")
    );
    if value.len() > 256 {
        let mut end = 256;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// Reads a verdict back from its tag; `None` for a tag that is not one.
pub fn parse_tag(key: &str, value: &str) -> Option<Verdict> {
    let agent_id = key.strip_prefix(TAG_PREFIX)?;
    let mut parts = value.splitn(4, ';');
    let path = match parts.next()? {
        "primary" => Via::Primary,
        "backup" => Via::Backup,
        _ => return None,
    };
    Some(Verdict {
        agent_id: agent_id.to_string(),
        path,
        counter: parts.next()?.parse().ok()?,
        at: parts.next()?.parse().ok()?,
        reason: parts.next().unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(id: &str, path: Via, at: u64) -> Verdict {
        Verdict {
            agent_id: id.into(),
            path,
            counter: 7,
            at,
            reason: "r".into(),
        }
    }

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn any_live_backup_wins_and_stale_verdicts_are_ignored() {
        let now = 1_000;
        let c = combine(Via::Primary, "i-a", &[v("i-b", Via::Backup, 995)], now, T);
        assert_eq!(c.path, Via::Backup);
        assert_eq!(c.backup_votes, ["i-b"]);
        // The same verdict, 40 s old: that agent is dead.
        let c = combine(Via::Primary, "i-a", &[v("i-b", Via::Backup, 960)], now, T);
        assert_eq!(c.path, Via::Primary);
        assert_eq!(c.peers[0].liveness, Liveness::Stale);
        // Our own verdict read back from the tags is not a peer.
        let c = combine(Via::Primary, "i-a", &[v("i-a", Via::Backup, 999)], now, T);
        assert_eq!(c.path, Via::Primary);
        assert!(c.peers.is_empty());
    }

    #[test]
    fn a_verdict_is_live_up_to_exactly_peer_timeout() {
        let now = 1_000;
        let at = |age: u64| [v("i-b", Via::Backup, now - age)];
        let c = combine(Via::Primary, "i-a", &at(30), now, T);
        assert_eq!((c.path, c.peers[0].liveness), (Via::Backup, Liveness::Live));
        let c = combine(Via::Primary, "i-a", &at(31), now, T);
        assert_eq!(
            (c.path, c.peers[0].liveness),
            (Via::Primary, Liveness::Stale)
        );
    }

    #[test]
    fn a_timestamp_from_the_future_beyond_the_skew_tolerance_is_stale() {
        let now = 1_000;
        // Within the tolerance: a clock slightly ahead, still live.
        let c = combine(Via::Primary, "i-a", &[v("i-b", Via::Backup, 1_002)], now, T);
        assert_eq!((c.path, c.peers[0].liveness), (Via::Backup, Liveness::Live));
        // A hand-edited `backup;1;9999999999` must not hold the pair for ever.
        let c = combine(
            Via::Primary,
            "i-a",
            &[v("i-b", Via::Backup, 9_999_999_999)],
            now,
            T,
        );
        assert_eq!(
            (c.path, c.peers[0].liveness),
            (Via::Primary, Liveness::Stale)
        );
        assert!(c.backup_votes.is_empty());
    }

    #[test]
    fn tags_round_trip() {
        let verdict = Verdict {
            agent_id: "i-0123456789abcdef0".into(),
            path: Via::Backup,
            counter: 42,
            at: 1_700_000_000,
            reason: "3 consecutive down rounds; loss 100%".into(),
        };
        let key = tag_key(&verdict.agent_id);
        assert_eq!(key, "route-failover:verdict:i-0123456789abcdef0");
        let value = tag_value(&verdict);
        let back = parse_tag(&key, &value).unwrap();
        assert_eq!(back.reason, "3 consecutive down rounds, loss 100%");
        assert_eq!(
            (back.path, back.counter, back.at),
            (Via::Backup, 42, 1_700_000_000)
        );
        assert_eq!(parse_tag("Name", "x"), None);
        assert_eq!(parse_tag(&key, "sideways;1;2;x"), None);
        let long = Verdict {
            reason: "é".repeat(300),
            ..verdict
        };
        assert!(tag_value(&long).len() <= 256);
    }

    fn via() -> impl Strategy<Value = Via> {
        prop_oneof![Just(Via::Primary), Just(Via::Backup)]
    }

    proptest! {
        /// Backup iff some live agent (self included) says Backup.
        #[test]
        fn the_rule(
            own in via(),
            peers in proptest::collection::vec((via(), -10i64..100, proptest::bool::weighted(0.2)), 0..5),
        ) {
            let now = 1_000u64;
            // Negative ages are timestamps from the future; some verdicts
            // carry our own id (our tag read back) and must never count.
            let id = |i: usize, ours: bool| if ours { "self".to_string() } else { format!("i-{i}") };
            let verdicts: Vec<Verdict> = peers
                .iter()
                .enumerate()
                .map(|(i, (p, age, ours))| v(&id(i, *ours), *p, now.checked_add_signed(-age).unwrap()))
                .collect();
            let c = combine(own, "self", &verdicts, now, T);
            let skew = i64::try_from(SKEW_TOLERANCE.as_secs()).unwrap();
            // Exactly peer_timeout, as the contract says: the skew tolerance
            // is in the config's floor (peer_timeout > heartbeat + 2 s).
            let limit = i64::try_from(T.as_secs()).unwrap();
            let live = |age: i64| age >= -skew && age <= limit;
            let mut votes: Vec<String> = if own == Via::Backup { vec!["self".into()] } else { vec![] };
            for (i, (p, age, ours)) in peers.iter().enumerate() {
                if !ours && *p == Via::Backup && live(*age) {
                    votes.push(id(i, false));
                }
            }
            let expect = if votes.is_empty() { Via::Primary } else { Via::Backup };
            prop_assert_eq!(c.path, expect);
            prop_assert_eq!(&c.backup_votes, &votes);
            let others: Vec<_> = peers.iter().filter(|(_, _, ours)| !ours).collect();
            prop_assert_eq!(c.peers.len(), others.len());
            for (s, (_, age, _)) in c.peers.iter().zip(others) {
                let want = if live(*age) { Liveness::Live } else { Liveness::Stale };
                prop_assert_eq!(s.liveness, want);
            }
        }
    }
}
