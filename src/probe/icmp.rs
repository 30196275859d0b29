//! The real probers: ICMP echo over IPv4 and IPv6.
//!
//! [`IcmpProber`] runs the round rule's rounds over our own sockets
//! ([`super::socket`]), which are never registered with tokio's reactor: a
//! reply does not wake the runtime. The prober reads the sockets only when
//! it is awake anyway, at each wave's send instant, once after the last
//! wave when the learned round-trip time says the replies should be in,
//! and, if some echo is still unanswered then, once more at the last open
//! deadline. Each reply's round-trip time comes from its kernel receive
//! stamp, so it is exact however late it is read, and a reply counts iff
//! it came within `timeout` ([`super::ledger`]); in a round where the
//! wall clock stepped, the prober reads at each deadline instead.
//!
//! With `early_stop` (the default) a target up for the round gets no more
//! of its echoes, and the round ends once every target is up: on a healthy
//! path, one wave and one read at the second wave's instant, two wake-ups.
//! Without it, a round costs one wake-up per wave plus one.
//!
//! [`IcmpPath`] carries the silence detector's echoes ([`SilenceProber`])
//! over surge-ping, whose receive task hands each reply to the echo
//! waiting on it (that detector acts on a reply the moment it comes).

use std::io;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use surge_ping::{
    Client, Config as PingConfig, PingIdentifier, PingSequence, Pinger, SurgeError, ICMP,
};
use tokio::time::Instant;
use tracing::warn;

use super::ledger::{read_margin, timeline, Ledger, Sent, Slot, Waves};
use super::rtt::{Deadline, RttEstimator};
use super::silence::{Echo, EchoPath, InFlight, SilenceProber};
use super::socket::{open_hint, EchoSocket, Family, Kind, Reply, PAYLOAD};
use super::{Prober, RoundPolicy, RoundReport, TargetReport};
use crate::alarm::Alarm;
use crate::config::{BackupConfig, ProbeConfig};
use crate::detect::DetectConfig;

/// When to read the sockets after the last wave: the learned round-trip
/// time (RFC 6298, as the silence detector learns it). It only schedules
/// that read; whether a reply counts is decided by its stamp and `timeout`.
const DRAIN_AT: Deadline = Deadline::Adaptive {
    floor: Duration::from_millis(20),
    k: 4,
};

/// One group of targets (the primary's, or `[backup]`'s) and its round rule.
struct Group {
    targets: Vec<IpAddr>,
    count: u32,
    /// `min_replies` says when a target is up for the round.
    round: RoundPolicy,
    timeout: Duration,
    spacing: Duration,
    /// Sent from the sockets bound to `backup.source`.
    bound: bool,
    /// Per target, for the read after the last wave.
    rtt: Vec<RttEstimator>,
}

impl Group {
    fn new(
        targets: &[IpAddr],
        count: u32,
        round: RoundPolicy,
        timeout: Duration,
        spacing: Duration,
    ) -> Self {
        Self {
            targets: targets.to_vec(),
            count,
            round,
            timeout,
            spacing,
            bound: false,
            rtt: vec![RttEstimator::new(); targets.len()],
        }
    }

    /// Every target of the group at the start of a round: nothing sent yet.
    fn fresh(&self) -> Vec<TargetReport> {
        self.targets
            .iter()
            .map(|&target| TargetReport {
                target,
                sent: 0,
                rtts: Vec::with_capacity(self.count as usize),
                error: None,
            })
            .collect()
    }
}

/// The sockets of one source: one per address family the targets use.
#[derive(Default)]
struct Sockets {
    v4: Option<EchoSocket>,
    v6: Option<EchoSocket>,
}

impl Sockets {
    /// Opens what `targets` need, bound to `source` when given, each asked
    /// to queue `queued` replies.
    fn open(targets: &[IpAddr], source: Option<IpAddr>, queued: usize) -> io::Result<Self> {
        let open = |family| EchoSocket::open(family, source, queued);
        Ok(Self {
            v4: targets
                .iter()
                .any(IpAddr::is_ipv4)
                .then(|| open(Family::V4))
                .transpose()?,
            v6: targets
                .iter()
                .any(IpAddr::is_ipv6)
                .then(|| open(Family::V6))
                .transpose()?,
        })
    }

    fn all(&self) -> impl Iterator<Item = &EchoSocket> {
        self.v4.iter().chain(&self.v6)
    }

    fn for_target(&self, target: IpAddr) -> &EchoSocket {
        let socket = if target.is_ipv4() { &self.v4 } else { &self.v6 };
        // open() opened a socket for every family that has a target.
        socket
            .as_ref()
            .expect("socket for the target's address family")
    }
}

/// What the prober has done so far: a deterministic measure of how often
/// a round wakes the runtime (the thread's context switches also count the
/// host's noise: softirq-deferred replies, page faults, lock contention).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    /// Sleeps the prober asked for (deadline still ahead).
    pub sleeps: u64,
    /// Times it read its sockets.
    pub drains: u64,
    /// Times its timer actually woke it (at most one per sleep).
    pub timer_wakes: u64,
}

/// The round in progress: what it has gathered, and its echoes.
struct InRound {
    report: RoundReport,
    ledger: Ledger,
}

/// Probes every target with up to `count` spaced echoes per round: the primary
/// targets and, when configured, the backup targets, in the same round,
/// on one timeline, and (unless `backup.source` binds its own) over the
/// same sockets.
pub struct IcmpProber {
    primary: Group,
    backup: Option<Group>,
    shared: Sockets,
    /// Bound to `backup.source`.
    bound: Option<Sockets>,
    ident: u16,
    next_seq: u16,
    /// Send a target no more echoes once it is up for the round.
    early_stop: bool,
    /// Kept in the prober, not the round's future, so that a round the
    /// agent gives up on still has its replies ([`Prober::salvage`]).
    round: Option<InRound>,
    /// The round's waits; made by the first round, inside the runtime.
    alarm: Option<Alarm>,
    sleeps: u64,
    drains: u64,
}

impl IcmpProber {
    /// Opens the sockets the targets need (see [`EchoSocket::open`]).
    pub fn new(config: &ProbeConfig) -> io::Result<Self> {
        Self::with_backup(config, None)
    }

    /// Probes `backup`'s targets in every round too; with `backup.source`
    /// they go out of sockets bound to that address.
    pub fn with_backup(config: &ProbeConfig, backup: Option<&BackupConfig>) -> io::Result<Self> {
        let backup = backup.filter(|b| !b.targets.is_empty());
        let primary = Group::new(
            &config.targets,
            config.count,
            config.round,
            config.timeout,
            config.spacing(),
        );
        let backup = backup.map(|b| {
            let mut group = Group::new(
                &b.targets,
                b.count,
                b.round,
                b.timeout,
                b.spacing(config.interval),
            );
            group.bound = b.source.is_some();
            (group, b.source)
        });
        // A round's replies (and, on a raw socket, our own requests looped
        // back) may all wait in one socket's queue before it is read.
        let per_round = |g: &Group| g.targets.len() * g.count as usize * 2;
        let mut shared_targets = config.targets.clone();
        let mut shared_queue = per_round(&primary);
        let mut bound = None;
        if let Some((group, source)) = &backup {
            match source {
                None => {
                    shared_targets.extend(&group.targets);
                    shared_queue += per_round(group);
                }
                Some(source) => {
                    bound = Some(Sockets::open(
                        &group.targets,
                        Some(*source),
                        per_round(group),
                    )?);
                }
            }
        }
        let shared = Sockets::open(&shared_targets, None, shared_queue)?;
        let ident = rand::random();
        // A raw socket then queues no other process's replies: none takes
        // room in its buffer or a read.
        for socket in shared.all().chain(bound.iter().flat_map(Sockets::all)) {
            socket.only_ident(ident)?;
        }
        let prober = Self {
            primary,
            backup: backup.map(|(group, _)| group),
            shared,
            bound,
            ident,
            next_seq: rand::random(),
            early_stop: config.early_stop,
            round: None,
            alarm: None,
            sleeps: 0,
            drains: 0,
        };
        prober.warn_if_queues_are_short();
        Ok(prober)
    }

    /// A socket whose queue cannot hold one wave's replies loses some of
    /// them before they are read (the kernel caps the buffer at
    /// `net.core.rmem_max`); say so once, at startup.
    fn warn_if_queues_are_short(&self) {
        let groups = std::iter::once(&self.primary).chain(&self.backup);
        for group in groups {
            let sockets = self.sockets_of(group);
            for socket in sockets.all() {
                let wave = group.targets.len() * 2;
                if socket.capacity() < wave {
                    warn!(
                        capacity = socket.capacity(),
                        wave,
                        "an ICMP socket's receive buffer holds fewer replies than one wave may queue; \
                         raise net.core.rmem_max (replies lost to it count as lost echoes)"
                    );
                }
            }
        }
    }

    /// The kind of each socket open: datagram where
    /// `net.ipv4.ping_group_range` allows it, raw otherwise.
    pub fn socket_kinds(&self) -> Vec<Kind> {
        self.shared
            .all()
            .chain(self.bound.iter().flat_map(Sockets::all))
            .map(EchoSocket::kind)
            .collect()
    }

    /// What the prober has done since it was made (see [`Activity`]).
    pub fn activity(&self) -> Activity {
        Activity {
            sleeps: self.sleeps,
            drains: self.drains,
            timer_wakes: self.alarm.as_ref().map_or(0, Alarm::wakes),
        }
    }

    fn sockets_of(&self, group: &Group) -> &Sockets {
        match (&self.bound, group.bound) {
            (Some(bound), true) => bound,
            _ => &self.shared,
        }
    }

    fn waves(&self) -> Vec<Waves> {
        let of = |g: &Group, slot| Waves {
            slot,
            count: g.count,
            spacing: g.spacing,
        };
        std::iter::once(of(&self.primary, Slot::Primary))
            .chain(self.backup.iter().map(|b| of(b, Slot::Backup)))
            .collect()
    }

    /// Reads every socket and settles the replies against the round.
    fn drain(&mut self) {
        self.drains += 1;
        let replies = read_all(&self.shared, self.bound.as_ref());
        if let Some(round) = &mut self.round {
            settle(round, &mut self.primary, self.backup.as_mut(), &replies);
        }
    }

    /// Sends the next echo of `slot`'s group to every target that still
    /// needs one (with `early_stop`, those not yet up for the round).
    fn send_wave(&mut self, slot: Slot) {
        let Self {
            primary,
            backup,
            shared,
            bound,
            ident,
            next_seq,
            early_stop,
            round,
            ..
        } = self;
        let Some(round) = round.as_mut() else {
            return;
        };
        let group = match slot {
            Slot::Primary => &*primary,
            Slot::Backup => match backup.as_ref() {
                Some(b) => b,
                None => return,
            },
        };
        let sockets = match (bound.as_ref(), group.bound) {
            (Some(bound), true) => bound,
            _ => &*shared,
        };
        let (targets, timeout, policy) = (group.targets.clone(), group.timeout, group.round);
        for (i, &target) in targets.iter().enumerate() {
            let report = &mut list(&mut round.report, slot)[i];
            if !report.wants_echo(policy, *early_stop) {
                continue;
            }
            report.sent += 1;
            let socket = sockets.for_target(target);
            let seq = *next_seq;
            *next_seq = next_seq.wrapping_add(1);
            // Both clocks before the send (see EchoSocket::send).
            let send = || {
                let at = Instant::now();
                socket.send(target, *ident, seq).map(|wall| (at, wall))
            };
            let mut result = send();
            if result.as_ref().is_err_and(queue_full) {
                // A full queue on the way out: read what waits (a big
                // wave's replies hold socket memory), then try once more.
                let replies = read_all(shared, bound.as_ref());
                settle(round, primary, backup.as_mut(), &replies);
                result = send();
            }
            match result {
                Ok((at, wall)) => round.ledger.sent(Sent {
                    target,
                    seq,
                    slot,
                    index: i,
                    wall,
                    at,
                    timeout,
                }),
                Err(e) => {
                    list(&mut round.report, slot)[i]
                        .error
                        .get_or_insert(e.to_string());
                }
            }
            // A big wave is read as it goes (on loopback the replies are
            // queued inside sendto), so that no queue overflows.
            if (i + 1) % (socket.capacity() / 2).max(16) == 0 {
                let replies = read_all(shared, bound.as_ref());
                settle(round, primary, backup.as_mut(), &replies);
            }
        }
    }

    /// With `early_stop`, whether every target of both groups is up for the
    /// round: then nothing still out can change the round, and it is over.
    fn all_up(&self) -> bool {
        let up = |targets: &[TargetReport], g: &Group| {
            targets
                .iter()
                .all(|t| !t.wants_echo(g.round, self.early_stop))
        };
        self.round.as_ref().is_some_and(|r| {
            up(&r.report.targets, &self.primary)
                && self.backup.as_ref().is_none_or(|b| up(&r.report.backup, b))
        })
    }

    /// When the replies to the echoes still open should be in, by what the
    /// round-trip times of their targets have been.
    fn learned_wait(&self, now: Instant) -> Duration {
        let Some(round) = &self.round else {
            return Duration::ZERO;
        };
        round
            .ledger
            .open_targets(now)
            .map(|(slot, i)| self.learned_deadline(slot, i))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// How long after its send an echo to target `i` of `slot`'s group
    /// should be answered, by the round-trip times it has shown.
    fn learned_deadline(&self, slot: Slot, i: usize) -> Duration {
        let group = match slot {
            Slot::Primary => &self.primary,
            Slot::Backup => self.backup.as_ref().unwrap_or(&self.primary),
        };
        group
            .rtt
            .get(i)
            .map_or(group.timeout, |e| e.deadline(DRAIN_AT, group.timeout))
    }

    /// Sleeps on the [`Alarm`] (one wake-up), or on tokio's timer if no
    /// timerfd can be had.
    async fn sleep_until(&mut self, deadline: Instant) {
        if self.alarm.is_none() {
            self.alarm = Alarm::new().ok();
        }
        if deadline > Instant::now() {
            self.sleeps += 1;
        }
        match &self.alarm {
            Some(alarm) => alarm.sleep_until(deadline).await,
            None => tokio::time::sleep_until(deadline).await,
        }
    }
}

/// A send that failed only because a queue was full for the moment
/// (`EAGAIN` on the non-blocking socket, `ENOBUFS` from the device queue):
/// worth one more try.
fn queue_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Reads what every socket has queued.
fn read_all(shared: &Sockets, bound: Option<&Sockets>) -> Vec<Reply> {
    let mut replies = Vec::new();
    for socket in shared.all().chain(bound.into_iter().flat_map(Sockets::all)) {
        let stats = socket.drain(&mut replies);
        if stats.dropped > 0 {
            crate::metrics::probe_socket_drops(u64::from(stats.dropped));
        }
        // Once per episode: a queue that overflows every round would
        // otherwise log every round.
        if stats.started_dropping {
            warn!(
                dropped = stats.dropped,
                "an ICMP socket's receive buffer overflowed: packets were dropped before they \
                 were read (route_failover_probe_socket_drops_total counts them); raise \
                 net.core.rmem_max"
            );
        }
    }
    replies
}

/// Counts each reply that answers an echo of the round in time, and
/// teaches its target's estimator the round-trip time.
fn settle(
    round: &mut InRound,
    primary: &mut Group,
    mut backup: Option<&mut Group>,
    replies: &[Reply],
) {
    let (now, wall) = (Instant::now(), SystemTime::now());
    for reply in replies {
        let Some(answer) = round.ledger.accept(reply, now, wall) else {
            continue;
        };
        let group = match answer.slot {
            Slot::Primary => &mut *primary,
            Slot::Backup => match backup.as_deref_mut() {
                Some(b) => b,
                None => continue,
            },
        };
        if let Some(rtt) = group.rtt.get_mut(answer.index) {
            rtt.sample(answer.rtt);
        }
        if answer.in_time {
            if let Some(t) = list(&mut round.report, answer.slot).get_mut(answer.index) {
                t.rtts.push(answer.rtt);
            }
        }
    }
}

fn list(report: &mut RoundReport, slot: Slot) -> &mut Vec<TargetReport> {
    match slot {
        Slot::Primary => &mut report.targets,
        Slot::Backup => &mut report.backup,
    }
}

#[async_trait]
impl Prober for IcmpProber {
    /// Cancel-safe: what the round gathers lives in the prober.
    async fn round(&mut self) -> RoundReport {
        let start = Instant::now();
        self.round = Some(InRound {
            report: RoundReport {
                targets: self.primary.fresh(),
                backup: self.backup.as_ref().map_or_else(Vec::new, Group::fresh),
                label: None,
            },
            ledger: Ledger::new(self.ident),
        });
        for (at, waves) in timeline(&self.waves()) {
            if !at.is_zero() {
                self.sleep_until(start + at).await;
            }
            // Replies to earlier waves first; at the first wave, what is
            // left of earlier rounds, which matches nothing and is dropped.
            self.drain();
            if self.all_up() {
                // On a healthy path: one wave, and one read at the next.
                break;
            }
            for (slot, _) in waves {
                self.send_wave(slot);
            }
        }
        // Read a little after a deadline (see read_margin).
        let margin = read_margin(&self.waves());
        let mut first_read = true;
        loop {
            if self.all_up() {
                break;
            }
            let now = Instant::now();
            let Some(ledger) = self.round.as_ref().map(|r| &r.ledger) else {
                break;
            };
            let Some(last) = ledger.last_open_deadline(now) else {
                break;
            };
            if ledger.stepped(now, SystemTime::now()) {
                // The wall clock stepped: a reply's stamp may not say
                // whether it came in time, its read by the deadline does.
                let first = ledger.first_open_deadline(now).unwrap_or(last);
                self.sleep_until(first.checked_sub(margin).unwrap_or(first))
                    .await;
                self.drain();
                if let Some(round) = &mut self.round {
                    round.ledger.close_through(first);
                }
                continue;
            }
            // First when the learned round-trip times say the replies are
            // in; then, if some echo is still open, once at the last
            // deadline, which settles them all.
            let at = if first_read {
                (now + self.learned_wait(now)).min(last)
            } else {
                last
            };
            first_read = false;
            self.sleep_until(at + margin).await;
            self.drain();
        }
        let Some(mut round) = self.round.take() else {
            return RoundReport::default();
        };
        // Early stop may end a round with echoes still out. One sent after
        // its target's newest answered echo (a path slower than the spacing
        // gets the next echo before the first reply is read) has no fate
        // yet: neither sent nor lost, or a lossless path would show loss.
        // One sent before it is lost, or a lossy path would show none.
        for (slot, i) in round.ledger.in_flight(Instant::now()) {
            if let Some(t) = list(&mut round.report, slot).get_mut(i) {
                t.sent = t.sent.saturating_sub(1);
            }
        }
        round.report
    }

    fn salvage(&mut self) -> Option<RoundReport> {
        self.drain();
        self.round.take().map(|r| r.report)
    }

    fn describe(&self) -> String {
        match &self.backup {
            None => format!("icmp ({} targets)", self.primary.targets.len()),
            Some(b) => format!(
                "icmp ({} targets, {} backup targets)",
                self.primary.targets.len(),
                b.targets.len()
            ),
        }
    }
}

/// Opens one surge-ping client per address family the targets use.
/// surge-ping tries an unprivileged ICMP datagram socket first and falls
/// back to a raw socket, like [`EchoSocket::open`].
fn open_clients(targets: &[IpAddr]) -> io::Result<(Option<Client>, Option<Client>)> {
    let open = |kind: ICMP, name: &str| {
        Client::new(&PingConfig::builder().kind(kind).build()).map_err(|e| {
            let hint = open_hint(&e, None);
            io::Error::new(
                e.kind(),
                format!("cannot open an {name} socket: {e}; {hint}"),
            )
        })
    };
    let v4 = if targets.iter().any(IpAddr::is_ipv4) {
        Some(open(ICMP::V4, "ICMPv4")?)
    } else {
        None
    };
    let v6 = if targets.iter().any(IpAddr::is_ipv6) {
        Some(open(ICMP::V6, "ICMPv6")?)
    } else {
        None
    };
    Ok((v4, v6))
}

fn client_for<'a>(v4: &'a Option<Client>, v6: &'a Option<Client>, target: IpAddr) -> &'a Client {
    let client = if target.is_ipv4() { v4 } else { v6 };
    // open_clients() opened a socket for every family that has a target.
    client
        .as_ref()
        .expect("socket for the target's address family")
}

async fn echo(mut pinger: Pinger, seq: u16) -> Echo {
    match pinger.ping(PingSequence(seq), PAYLOAD).await {
        Ok((_, rtt)) => Echo::Reply(rtt),
        Err(SurgeError::Timeout { .. }) => Echo::Lost,
        Err(e) => Echo::Failed(e.to_string()),
    }
}

/// The ICMP transport for [`SilenceProber`]: one echo at a time over the
/// shared sockets, waiting at most the configured timeout for its reply.
pub struct IcmpPath {
    targets: usize,
    v4: Option<Client>,
    v6: Option<Client>,
    ident: PingIdentifier,
}

impl IcmpPath {
    /// Opens the sockets the targets need (see `open_clients`).
    pub fn new(targets: &[IpAddr]) -> io::Result<Self> {
        let (v4, v6) = open_clients(targets)?;
        Ok(Self {
            targets: targets.len(),
            v4,
            v6,
            ident: PingIdentifier(rand::random()),
        })
    }
}

#[async_trait]
impl EchoPath for IcmpPath {
    async fn echo(
        &mut self,
        target: IpAddr,
        _index: usize,
        seq: u16,
        timeout: Duration,
    ) -> InFlight {
        let mut pinger = client_for(&self.v4, &self.v6, target)
            .pinger(target, self.ident)
            .await;
        pinger.timeout(timeout);
        Box::pin(echo(pinger, seq))
    }

    fn describe(&self) -> String {
        format!("icmp, silence detector ({} targets)", self.targets)
    }
}

impl SilenceProber<IcmpPath> {
    /// The silence detector over ICMP.
    pub fn icmp(probe: &ProbeConfig, detect: &DetectConfig) -> io::Result<Self> {
        Ok(Self::new(probe, detect, IcmpPath::new(&probe.targets)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_full_queue_is_worth_a_second_send() {
        assert!(queue_full(&io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(queue_full(&io::Error::from_raw_os_error(libc::ENOBUFS)));
        assert!(!queue_full(&io::Error::from_raw_os_error(
            libc::ENETUNREACH
        )));
        assert!(!queue_full(&io::Error::from_raw_os_error(libc::EPERM)));
    }
}
