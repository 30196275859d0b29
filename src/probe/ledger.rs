//! The echoes of one round and the rule that matches replies to them (pure).
//!
//! A reply counts for the echo with its source address and sequence (and,
//! on a raw socket, our identifier), once, and only if its round-trip time
//! is within that echo's `timeout`; anything else (a duplicate, a reply to
//! another process, an echo of an earlier round) never counts.
//!
//! The kernel stamps a reply on the realtime clock, which can step; the
//! echo's send is timed on both clocks just before `sendto` (on loopback
//! and veth the reply is received inside `sendto`). At the read, the stamp
//! is turned into monotonic time with the realtime−monotonic offset of the
//! read: rtt = read − sent − (realtime at read − stamp), clamped to [0,
//! read − sent]. That is exact when the offset has not moved since the
//! send, and when it moved before the reply came. If it moved between the
//! send and the read by more than [`STEP_TOLERANCE`] and the stamp read
//! with the offset of the send gives the other verdict (the step may have
//! come after the reply), the reply counts only if it is read by its own
//! deadline; the prober then reads at the deadlines ([`Ledger::stepped`]).
//!
//! Also here: the round's timeline, every wave of every group on one clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::socket::Reply;

/// Which group of a round an echo belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Primary,
    Backup,
}

/// One echo sent and not yet settled.
#[derive(Debug, Clone)]
struct Echo {
    slot: Slot,
    index: usize,
    sent_wall: SystemTime,
    sent: Instant,
    timeout: Duration,
    answered: bool,
}

/// An echo just sent: to whom, which target of which group, when.
#[derive(Debug, Clone, Copy)]
pub struct Sent {
    pub target: IpAddr,
    pub seq: u16,
    pub slot: Slot,
    pub index: usize,
    /// The realtime clock just before `sendto`.
    pub wall: SystemTime,
    /// The monotonic clock at the same moment.
    pub at: Instant,
    pub timeout: Duration,
}

/// A reply that counts: which target it answers, and its round-trip time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub slot: Slot,
    pub index: usize,
    pub rtt: Duration,
    /// Within the echo's timeout: the reply counts. A late one is still
    /// a round-trip time the estimator may learn from.
    pub in_time: bool,
}

/// How far the realtime−monotonic offset may move between an echo's send
/// and the read of its reply (the two clocks are read a few µs apart; NTP
/// slews both alike) before it is taken as a step of the realtime clock.
pub const STEP_TOLERANCE: Duration = Duration::from_millis(2);

/// `a − b` in signed nanoseconds.
fn wall_diff(a: SystemTime, b: SystemTime) -> i128 {
    match a.duration_since(b) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

impl Echo {
    /// How much the realtime−monotonic offset moved since the send, at a
    /// read at `now` (`now_wall`).
    fn offset_moved(&self, now: Instant, now_wall: SystemTime) -> Duration {
        let wall = wall_diff(now_wall, self.sent_wall);
        let mono = now.saturating_duration_since(self.sent).as_nanos() as i128;
        Duration::from_nanos(u64::try_from((wall - mono).unsigned_abs()).unwrap_or(u64::MAX))
    }
}

/// Every echo of one round, by (target, sequence).
#[derive(Debug, Default)]
pub struct Ledger {
    ident: u16,
    echoes: HashMap<(IpAddr, u16), Echo>,
}

impl Ledger {
    pub fn new(ident: u16) -> Self {
        Self {
            ident,
            echoes: HashMap::new(),
        }
    }

    /// Records an echo sent (see [`Sent`]).
    pub fn sent(&mut self, echo: Sent) {
        self.echoes.insert(
            (echo.target, echo.seq),
            Echo {
                slot: echo.slot,
                index: echo.index,
                sent_wall: echo.wall,
                sent: echo.at,
                timeout: echo.timeout,
                answered: false,
            },
        );
    }

    /// Matches `reply`, read at `now` (monotonic; `now_wall` stands in for
    /// a missing kernel stamp). `None`: not ours, or a duplicate.
    pub fn accept(&mut self, reply: &Reply, now: Instant, now_wall: SystemTime) -> Option<Answer> {
        if reply.ident.is_some_and(|ident| ident != self.ident) {
            return None;
        }
        let echo = self.echoes.get_mut(&(reply.source, reply.seq))?;
        if echo.answered {
            return None;
        }
        echo.answered = true;
        let received = reply.received.unwrap_or(now_wall);
        let elapsed = now.saturating_duration_since(echo.sent);
        // The stamp with the offset of the read, then of the send.
        let age = now_wall.duration_since(received).unwrap_or(Duration::ZERO);
        let rtt = elapsed.saturating_sub(age);
        let at_send = received
            .duration_since(echo.sent_wall)
            .unwrap_or(Duration::ZERO)
            .min(elapsed);
        let in_time = if echo.offset_moved(now, now_wall) <= STEP_TOLERANCE
            || (rtt <= echo.timeout) == (at_send <= echo.timeout)
        {
            rtt <= echo.timeout
        } else {
            // The clock stepped and the step's instant decides: only a
            // read by the deadline proves the reply came in time.
            elapsed <= echo.timeout
        };
        Some(Answer {
            slot: echo.slot,
            index: echo.index,
            rtt,
            in_time,
        })
    }

    /// Whether the realtime clock stepped since an echo still open was
    /// sent: its reply then counts only if read by its deadline, so the
    /// prober reads at each deadline ([`Ledger::first_open_deadline`],
    /// [`Ledger::close_through`]) instead of once at the end.
    pub fn stepped(&self, now: Instant, now_wall: SystemTime) -> bool {
        self.open(now)
            .any(|e| e.offset_moved(now, now_wall) > STEP_TOLERANCE)
    }

    /// The earliest deadline of the echoes still open at `now`.
    pub fn first_open_deadline(&self, now: Instant) -> Option<Instant> {
        self.open(now).map(|e| e.sent + e.timeout).min()
    }

    /// Settles, as lost, the echoes still unanswered whose deadline is at
    /// or before `deadline`: read at it, what did not come is lost.
    pub fn close_through(&mut self, deadline: Instant) {
        for e in self.echoes.values_mut() {
            if e.sent + e.timeout <= deadline {
                e.answered = true;
            }
        }
    }

    /// The latest deadline (send + timeout) of the echoes still unanswered
    /// and not yet past it at `now`; `None`: every echo is settled, the
    /// round is over. Reading the socket once then settles them all: each
    /// reply's stamp says whether it came in time, however late it is read.
    pub fn last_open_deadline(&self, now: Instant) -> Option<Instant> {
        self.open(now).map(|e| e.sent + e.timeout).max()
    }

    /// The targets with an echo still unanswered and not past its deadline.
    pub fn open_targets(&self, now: Instant) -> impl Iterator<Item = (Slot, usize)> + '_ {
        self.open(now).map(|e| (e.slot, e.index))
    }

    /// The echoes still unanswered and not past their deadline at `now`.
    fn open(&self, now: Instant) -> impl Iterator<Item = &Echo> + '_ {
        self.echoes
            .values()
            .filter(move |e| !e.answered && e.sent + e.timeout > now)
    }

    /// The open echoes a round that ends now leaves without a fate: those
    /// sent after the newest answered echo of their target. One sent
    /// before it was passed by a later echo's reply: lost, however young.
    pub fn in_flight(&self, now: Instant) -> Vec<(Slot, usize)> {
        let mut newest: HashMap<(Slot, usize), Instant> = HashMap::new();
        for e in self.echoes.values().filter(|e| e.answered) {
            let at = newest.entry((e.slot, e.index)).or_insert(e.sent);
            *at = (*at).max(e.sent);
        }
        self.open(now)
            .filter(|e| {
                newest
                    .get(&(e.slot, e.index))
                    .is_none_or(|&answered| e.sent > answered)
            })
            .map(|e| (e.slot, e.index))
            .collect()
    }
}

/// One group's waves: `count` of them, `spacing` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waves {
    pub slot: Slot,
    pub count: u32,
    pub spacing: Duration,
}

/// Waves due within this much of an earlier instant leave with it: one
/// wake-up instead of two, at the price of an echo a few ms early.
pub const COALESCE: Duration = Duration::from_millis(5);

/// How long after a deadline to read, so that a reply stamped just before
/// it is surely queued: 1 ms, but at most half the smallest spacing. The
/// last echo's deadline is one spacing before the round's end (spacing =
/// (interval − timeout) / count): with a spacing under 2 ms a full
/// millisecond would end the round after its interval, a spurious overrun
/// exactly when a target is silent.
pub fn read_margin(groups: &[Waves]) -> Duration {
    groups
        .iter()
        .map(|g| g.spacing / 2)
        .fold(Duration::from_millis(1), Duration::min)
}

/// Every wave instant of a round, from its start, each with the waves that
/// leave then (group and wave number): the groups share wake-ups wherever
/// their instants coincide or are within [`COALESCE`] of each other. Only
/// waves of different groups share one: a group's own waves keep their
/// spacing, however small.
pub fn timeline(groups: &[Waves]) -> Vec<(Duration, Vec<(Slot, u32)>)> {
    let mut all: Vec<(Duration, Slot, u32)> = groups
        .iter()
        .flat_map(|g| (0..g.count).map(move |k| (g.spacing * k, g.slot, k)))
        .collect();
    all.sort_by_key(|&(at, slot, k)| (at, slot == Slot::Backup, k));
    let mut out: Vec<(Duration, Vec<(Slot, u32)>)> = Vec::new();
    for (at, slot, k) in all {
        match out.last_mut() {
            // Never two waves of one group: that would undo its spacing.
            Some((last, waves))
                if at - *last <= COALESCE && waves.iter().all(|&(s, _)| s != slot) =>
            {
                waves.push((slot, k))
            }
            _ => out.push((at, vec![(slot, k)])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDENT: u16 = 0x5151;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// An echo with an 800 ms timeout.
    fn sent(
        target: &str,
        seq: u16,
        slot: Slot,
        index: usize,
        wall: SystemTime,
        at: Instant,
    ) -> Sent {
        Sent {
            target: ip(target),
            seq,
            slot,
            index,
            wall,
            at,
            timeout: ms(800),
        }
    }

    struct Fixture {
        ledger: Ledger,
        t0: Instant,
        w0: SystemTime,
    }

    /// Two targets, echo seq 10 to the first and 11 to the second, sent
    /// at the same instant with an 800 ms timeout.
    fn fixture() -> Fixture {
        let t0 = Instant::now();
        let w0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut ledger = Ledger::new(IDENT);
        ledger.sent(sent("198.18.0.2", 10, Slot::Primary, 0, w0, t0));
        ledger.sent(sent("fd00::2", 11, Slot::Backup, 1, w0, t0));
        Fixture { ledger, t0, w0 }
    }

    fn reply(source: &str, ident: Option<u16>, seq: u16, after: Option<Duration>) -> Reply {
        Reply {
            source: ip(source),
            ident,
            seq,
            received: after
                .map(|d| SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + d),
        }
    }

    #[test]
    fn a_reply_counts_once_with_its_kernel_stamped_rtt() {
        let mut f = fixture();
        // Read 500 ms after it arrived: the stamp, not the read, is the RTT.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(3)));
        let got = f.ledger.accept(&r, f.t0 + ms(503), f.w0 + ms(503));
        assert_eq!(
            got,
            Some(Answer {
                slot: Slot::Primary,
                index: 0,
                rtt: ms(3),
                in_time: true
            })
        );
        // The duplicate never counts.
        assert_eq!(f.ledger.accept(&r, f.t0 + ms(600), f.w0 + ms(600)), None);
        // A datagram socket's reply (no identifier to check) counts too.
        let r = reply("fd00::2", None, 11, Some(ms(5)));
        let got = f.ledger.accept(&r, f.t0 + ms(10), f.w0 + ms(10)).unwrap();
        assert_eq!((got.slot, got.index, got.rtt), (Slot::Backup, 1, ms(5)));
    }

    #[test]
    fn replies_to_someone_else_never_count() {
        let mut f = fixture();
        let (now, wall) = (f.t0 + ms(5), f.w0 + ms(5));
        // Another process's identifier (raw socket).
        let r = reply("198.18.0.2", Some(IDENT ^ 1), 10, Some(ms(1)));
        assert_eq!(f.ledger.accept(&r, now, wall), None);
        // A sequence we did not send to that source (it went to the other).
        let r = reply("198.18.0.2", Some(IDENT), 11, Some(ms(1)));
        assert_eq!(f.ledger.accept(&r, now, wall), None);
        // Our sequence, from the wrong source.
        let r = reply("198.18.0.3", Some(IDENT), 10, Some(ms(1)));
        assert_eq!(f.ledger.accept(&r, now, wall), None);
        // A sequence of an earlier round.
        let r = reply("198.18.0.2", Some(IDENT), 9, Some(ms(1)));
        assert_eq!(f.ledger.accept(&r, now, wall), None);
        // None of that spent the echo: the real reply still counts.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(1)));
        assert!(f.ledger.accept(&r, now, wall).unwrap().in_time);
    }

    #[test]
    fn a_reply_later_than_the_timeout_does_not_count_however_early_it_is_read() {
        let mut f = fixture();
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(801)));
        let got = f.ledger.accept(&r, f.t0 + ms(900), f.w0 + ms(900)).unwrap();
        assert_eq!((got.rtt, got.in_time), (ms(801), false));
        let r = reply("fd00::2", None, 11, Some(ms(800)));
        assert!(
            f.ledger
                .accept(&r, f.t0 + ms(900), f.w0 + ms(900))
                .unwrap()
                .in_time
        );
    }

    #[test]
    fn stamps_out_of_range_are_clamped_to_the_time_between_send_and_read() {
        let mut f = fixture();
        // Stamped after the read (clocks read µs apart): the whole time
        // between the send and the read, not more.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(25)));
        let got = f.ledger.accept(&r, f.t0 + ms(20), f.w0 + ms(20)).unwrap();
        assert_eq!((got.rtt, got.in_time), (ms(20), true));
        // Stamped long before the send (an earlier round's clock): zero.
        let r = reply("fd00::2", None, 11, None);
        let mut r = r;
        r.received = Some(f.w0 - Duration::from_secs(3600));
        let got = f.ledger.accept(&r, f.t0 + ms(1), f.w0 + ms(1)).unwrap();
        assert_eq!((got.rtt, got.in_time), (Duration::ZERO, true));
    }

    #[test]
    fn a_step_forward_before_the_reply_keeps_its_true_rtt() {
        let mut f = fixture();
        // The wall clock steps 50 ms forward at 100 ms; the reply comes at
        // 300 ms (stamped 350 on the stepped clock), read at 500 ms.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(350)));
        let got = f.ledger.accept(&r, f.t0 + ms(500), f.w0 + ms(550)).unwrap();
        assert_eq!((got.rtt, got.in_time), (ms(300), true));
        // A step after the reply (stamped 760, in time; +100 ms at 780)
        // read after the deadline: both readings of the stamp say in time.
        let r = reply("fd00::2", None, 11, Some(ms(760)));
        let got = f.ledger.accept(&r, f.t0 + ms(801), f.w0 + ms(901)).unwrap();
        assert!(got.in_time);
    }

    #[test]
    fn a_step_back_cannot_make_a_late_reply_count() {
        let mut f = fixture();
        // The wall clock steps 100 ms back at 100 ms; the reply comes at
        // 850 ms (stamped 750), past its 800 ms timeout, read at 851 ms.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(750)));
        let got = f.ledger.accept(&r, f.t0 + ms(851), f.w0 + ms(751)).unwrap();
        assert_eq!((got.rtt, got.in_time), (ms(850), false));
        // Where the step's instant decides (reply at 750 ms, stamped 750,
        // the step after it): counted only if read by the deadline.
        let r = reply("fd00::2", None, 11, Some(ms(750)));
        assert!(f.ledger.stepped(f.t0 + ms(790), f.w0 + ms(690)));
        let got = f.ledger.accept(&r, f.t0 + ms(790), f.w0 + ms(690)).unwrap();
        assert!(got.in_time);
        let mut f = fixture();
        let got = f.ledger.accept(&r, f.t0 + ms(851), f.w0 + ms(751)).unwrap();
        assert!(!got.in_time);
    }

    #[test]
    fn without_a_step_the_round_is_not_stepped_and_closes_by_deadline() {
        let mut f = fixture();
        let (t0, w0) = (f.t0, f.w0);
        assert!(!f.ledger.stepped(t0 + ms(300), w0 + ms(301)));
        assert!(f.ledger.stepped(t0 + ms(300), w0 + ms(303)));
        f.ledger
            .sent(sent("198.18.0.2", 12, Slot::Primary, 0, w0, t0 + ms(66)));
        assert_eq!(f.ledger.first_open_deadline(t0), Some(t0 + ms(800)));
        f.ledger.close_through(t0 + ms(800));
        assert_eq!(f.ledger.first_open_deadline(t0), Some(t0 + ms(866)));
        assert_eq!(f.ledger.open_targets(t0).count(), 1);
        // A reply to an echo closed as lost no longer counts.
        let r = reply("198.18.0.2", Some(IDENT), 10, Some(ms(5)));
        assert_eq!(f.ledger.accept(&r, t0 + ms(6), w0 + ms(6)), None);
    }

    #[test]
    fn a_missing_stamp_is_taken_as_the_time_of_the_read() {
        let mut f = fixture();
        let r = reply("198.18.0.2", Some(IDENT), 10, None);
        let got = f.ledger.accept(&r, f.t0 + ms(40), f.w0 + ms(40)).unwrap();
        assert_eq!(got.rtt, ms(40));
    }

    #[test]
    fn the_round_is_over_when_every_echo_is_answered_or_past_its_deadline() {
        let mut f = fixture();
        let t0 = f.t0;
        let w0 = f.w0;
        f.ledger
            .sent(sent("198.18.0.2", 12, Slot::Primary, 0, w0, t0 + ms(66)));
        assert_eq!(f.ledger.last_open_deadline(t0), Some(t0 + ms(866)));
        assert_eq!(f.ledger.open_targets(t0).count(), 3);
        let r = reply("198.18.0.2", Some(IDENT), 12, Some(ms(70)));
        f.ledger.accept(&r, t0 + ms(100), w0 + ms(100)).unwrap();
        assert_eq!(
            f.ledger.last_open_deadline(t0 + ms(100)),
            Some(t0 + ms(800))
        );
        assert_eq!(f.ledger.open_targets(t0 + ms(100)).count(), 2);
        // Past every deadline: settled, answered or not.
        assert_eq!(f.ledger.last_open_deadline(t0 + ms(800)), None);
        assert_eq!(f.ledger.open_targets(t0 + ms(800)).count(), 0);
    }

    #[test]
    fn an_open_echo_older_than_an_answered_one_is_lost_a_newer_one_in_flight() {
        let mut f = fixture();
        let (t0, w0) = (f.t0, f.w0);
        // Target 0 of the primary: echoes 5 ms apart, the second answered.
        f.ledger
            .sent(sent("198.18.0.2", 12, Slot::Primary, 0, w0, t0 + ms(5)));
        f.ledger
            .sent(sent("198.18.0.2", 13, Slot::Primary, 0, w0, t0 + ms(10)));
        let r = reply("198.18.0.2", Some(IDENT), 12, Some(ms(6)));
        f.ledger.accept(&r, t0 + ms(11), w0 + ms(11)).unwrap();
        // Seq 10 (before the answer): lost. Seq 13 (after it): in flight.
        // The backup target answered nothing: its echo is in flight too.
        let mut open = f.ledger.in_flight(t0 + ms(11));
        open.sort_by_key(|&(slot, i)| (slot == Slot::Backup, i));
        assert_eq!(open, vec![(Slot::Primary, 0), (Slot::Backup, 1)]);
        assert_eq!(f.ledger.open_targets(t0 + ms(11)).count(), 3);
        // Past their deadlines, none is open, let alone in flight.
        assert!(f.ledger.in_flight(t0 + ms(900)).is_empty());
    }

    #[test]
    fn the_last_read_ends_within_the_interval_however_small_the_spacing() {
        // interval 500 ms, timeout 450 ms, count 100: spacing 500 µs.
        let (interval, timeout, count) = (ms(500), ms(450), 100);
        let spacing = (interval - timeout) / count;
        let group = Waves {
            slot: Slot::Primary,
            count,
            spacing,
        };
        let margin = read_margin(&[group]);
        let last_deadline = spacing * (count - 1) + timeout;
        assert!(margin > Duration::ZERO);
        assert!(
            last_deadline + margin < interval,
            "{:?}",
            last_deadline + margin
        );
        // Wide spacing: the full millisecond; the smallest group decides.
        let wide = Waves {
            slot: Slot::Backup,
            count: 3,
            spacing: ms(66),
        };
        assert_eq!(read_margin(&[wide]), ms(1));
        assert_eq!(read_margin(&[wide, group]), Duration::from_micros(250));
    }

    #[test]
    fn the_timeline_merges_both_groups_waves() {
        let primary = Waves {
            slot: Slot::Primary,
            count: 3,
            spacing: ms(66),
        };
        let backup = Waves {
            slot: Slot::Backup,
            count: 2,
            spacing: ms(66),
        };
        assert_eq!(
            timeline(&[primary, backup]),
            vec![
                (ms(0), vec![(Slot::Primary, 0), (Slot::Backup, 0)]),
                (ms(66), vec![(Slot::Primary, 1), (Slot::Backup, 1)]),
                (ms(132), vec![(Slot::Primary, 2)]),
            ]
        );
        let backup = Waves {
            slot: Slot::Backup,
            count: 2,
            spacing: ms(100),
        };
        assert_eq!(
            timeline(&[primary, backup]),
            vec![
                (ms(0), vec![(Slot::Primary, 0), (Slot::Backup, 0)]),
                (ms(66), vec![(Slot::Primary, 1)]),
                (ms(100), vec![(Slot::Backup, 1)]),
                (ms(132), vec![(Slot::Primary, 2)]),
            ]
        );
        // A backup wave 4 ms after a primary one leaves with it.
        let backup = Waves {
            slot: Slot::Backup,
            count: 2,
            spacing: ms(70),
        };
        assert_eq!(
            timeline(&[primary, backup]),
            vec![
                (ms(0), vec![(Slot::Primary, 0), (Slot::Backup, 0)]),
                (ms(66), vec![(Slot::Primary, 1), (Slot::Backup, 1)]),
                (ms(132), vec![(Slot::Primary, 2)]),
            ]
        );
        assert_eq!(timeline(&[]), vec![]);
    }

    #[test]
    fn a_groups_own_waves_are_never_merged() {
        // interval 100 ms, timeout 80 ms, count 4: 5 ms apart, within
        // COALESCE of each other, yet each wave keeps its own instant.
        let primary = Waves {
            slot: Slot::Primary,
            count: 4,
            spacing: ms(5),
        };
        let instants: Vec<Duration> = timeline(&[primary]).into_iter().map(|(at, _)| at).collect();
        assert_eq!(instants, vec![ms(0), ms(5), ms(10), ms(15)]);
        // The other group's waves still join them.
        let backup = Waves {
            slot: Slot::Backup,
            count: 2,
            spacing: ms(6),
        };
        assert_eq!(
            timeline(&[primary, backup]),
            vec![
                (ms(0), vec![(Slot::Primary, 0), (Slot::Backup, 0)]),
                (ms(5), vec![(Slot::Primary, 1), (Slot::Backup, 1)]),
                (ms(10), vec![(Slot::Primary, 2)]),
                (ms(15), vec![(Slot::Primary, 3)]),
            ]
        );
    }
}
