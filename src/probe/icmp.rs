//! The real prober: ICMP echo over IPv4 and IPv6 with surge-ping.
//!
//! [`IcmpProber`] runs the round rule's rounds; [`IcmpPath`] carries the
//! silence detector's echoes ([`SilenceProber`]).
//!
//! One socket per address family, shared by every target; surge-ping's
//! receive task hands each reply to the request waiting on its source
//! address, identifier and sequence, so a late reply (its waiter already
//! timed out) or a reply to someone else never counts.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use futures::stream::{FuturesUnordered, StreamExt};
use surge_ping::{
    Client, Config as PingConfig, PingIdentifier, PingSequence, Pinger, SurgeError, ICMP,
};

use super::silence::{Echo, EchoPath, InFlight, SilenceProber};
use super::{Prober, RoundReport, TargetReport};
use crate::config::{BackupConfig, ProbeConfig};
use crate::detect::DetectConfig;

const PAYLOAD: &[u8] = b"route-failover probe";
/// How much longer than the round's timeout a pinger would wait on its own.
const BACKSTOP: Duration = Duration::from_secs(1);

/// One group of targets (the primary's, or `[backup]`'s) and its round rule.
struct Group {
    targets: Vec<IpAddr>,
    count: u32,
    timeout: Duration,
    spacing: Duration,
    /// Sockets bound to `backup.source`; `None`: the shared ones.
    bound: Option<(Option<Client>, Option<Client>)>,
}

/// Which list of a [`RoundReport`] a group fills.
#[derive(Clone, Copy)]
enum Slot {
    Primary,
    Backup,
}

/// Probes every target with `count` spaced echoes per round: the primary
/// targets and, when configured, the backup targets, in the same round
/// and (unless `backup.source` binds its own) over the same sockets.
pub struct IcmpProber {
    primary: Group,
    backup: Option<Group>,
    v4: Option<Client>,
    v6: Option<Client>,
    ident: PingIdentifier,
    next_seq: u16,
    /// The round in progress, filled in as echoes come back, so that a
    /// round the agent gives up on still has its replies ([`Prober::salvage`]).
    gathered: std::sync::Arc<std::sync::Mutex<Option<RoundReport>>>,
}

impl IcmpProber {
    /// Opens the sockets the targets need (see `open_clients`).
    pub fn new(config: &ProbeConfig) -> io::Result<Self> {
        Self::with_backup(config, None)
    }

    /// Probes `backup`'s targets in every round too; with `backup.source`
    /// they go out of sockets bound to that address.
    pub fn with_backup(config: &ProbeConfig, backup: Option<&BackupConfig>) -> io::Result<Self> {
        let backup = backup.filter(|b| !b.targets.is_empty());
        let mut shared: Vec<IpAddr> = config.targets.clone();
        if let Some(b) = backup.filter(|b| b.source.is_none()) {
            shared.extend(&b.targets);
        }
        let (v4, v6) = open_clients(&shared, None)?;
        let backup = match backup {
            None => None,
            Some(b) => Some(Group {
                targets: b.targets.clone(),
                count: b.count,
                timeout: b.timeout,
                spacing: b.spacing(config.interval),
                bound: match b.source {
                    None => None,
                    Some(source) => Some(open_clients(&b.targets, Some(source))?),
                },
            }),
        };
        Ok(Self {
            primary: Group {
                targets: config.targets.clone(),
                count: config.count,
                timeout: config.timeout,
                spacing: config.spacing(),
                bound: None,
            },
            backup,
            v4,
            v6,
            ident: PingIdentifier(rand::random()),
            next_seq: rand::random(),
            gathered: std::sync::Arc::default(),
        })
    }

    /// The waves of echoes of one group: echo k of every target leaves
    /// at the same instant, k spacings into the round, and all of them
    /// share one deadline — one sleep and one deadline per wave instead of
    /// a sleep and a timeout per echo and target, so the runtime wakes no
    /// more often than the probing needs. Each result is recorded in
    /// `gathered` as it comes, so an interrupted round keeps it.
    async fn waves(&mut self, slot: Slot) -> Vec<impl std::future::Future<Output = ()>> {
        let group = match slot {
            Slot::Primary => &self.primary,
            Slot::Backup => match &self.backup {
                Some(b) => b,
                None => return Vec::new(),
            },
        };
        let (v4, v6) = match &group.bound {
            Some((v4, v6)) => (v4, v6),
            None => (&self.v4, &self.v6),
        };
        let mut waves = Vec::with_capacity(group.count as usize);
        for k in 0..group.count {
            let mut wave = FuturesUnordered::new();
            for (i, &target) in group.targets.iter().enumerate() {
                // Pingers borrow the client: surge-ping 0.8 marks a client
                // destroyed when any clone of it is dropped, so never clone it.
                let mut pinger = client_for(v4, v6, target).pinger(target, self.ident).await;
                // The wave's deadline ends the wait; dropping a pinger
                // removes its waiter. Its own timer only backs that up.
                pinger.timeout(group.timeout + BACKSTOP);
                let seq = self.next_seq;
                self.next_seq = self.next_seq.wrapping_add(1);
                wave.push(async move { (i, echo(pinger, seq).await) });
            }
            let delay = group.spacing * k;
            let timeout = group.timeout;
            let gathered = std::sync::Arc::clone(&self.gathered);
            waves.push(async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                // Echoes still pending at the deadline are lost.
                let _ = tokio::time::timeout(timeout, async {
                    while let Some((i, result)) = wave.next().await {
                        if let Some(round) = lock(&gathered).as_mut() {
                            let list = match slot {
                                Slot::Primary => &mut round.targets,
                                Slot::Backup => &mut round.backup,
                            };
                            let report = &mut list[i];
                            match result {
                                Echo::Reply(rtt) => report.rtts.push(rtt),
                                Echo::Lost => {}
                                Echo::Failed(e) => {
                                    report.error.get_or_insert(e);
                                }
                            }
                        }
                    }
                })
                .await;
            });
        }
        waves
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens one socket per address family the targets use, bound to
/// `source` when given. surge-ping tries an unprivileged ICMP datagram
/// socket first (allowed when the process's group is in
/// `net.ipv4.ping_group_range`) and falls back to a raw socket, which
/// needs CAP_NET_RAW.
fn open_clients(
    targets: &[IpAddr],
    source: Option<IpAddr>,
) -> io::Result<(Option<Client>, Option<Client>)> {
    let open = |kind: ICMP, name: &str| {
        let mut config = PingConfig::builder().kind(kind);
        if let Some(source) = source {
            config = config.bind(std::net::SocketAddr::new(source, 0));
        }
        Client::new(&config.build()).map_err(|e| {
            let hint = match source {
                Some(source) if e.kind() == io::ErrorKind::AddrNotAvailable => format!(
                    "backup.source {source} is not an address of this instance's interfaces"
                ),
                _ => "run as root, grant CAP_NET_RAW, or allow the process's group in \
                      net.ipv4.ping_group_range"
                    .to_string(),
            };
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

/// Every target of `group` at the start of a round: sent, nothing back yet.
fn fresh(group: Option<&Group>) -> Vec<TargetReport> {
    group.map_or_else(Vec::new, |g| {
        g.targets
            .iter()
            .map(|&target| TargetReport {
                target,
                sent: g.count,
                rtts: Vec::with_capacity(g.count as usize),
                error: None,
            })
            .collect()
    })
}

#[async_trait]
impl Prober for IcmpProber {
    async fn round(&mut self) -> RoundReport {
        *lock(&self.gathered) = Some(RoundReport {
            targets: fresh(Some(&self.primary)),
            backup: fresh(self.backup.as_ref()),
            label: None,
        });
        let mut waves = self.waves(Slot::Primary).await;
        waves.extend(self.waves(Slot::Backup).await);
        join_all(waves).await;
        lock(&self.gathered).take().unwrap_or_default()
    }

    fn salvage(&mut self) -> Option<RoundReport> {
        lock(&self.gathered).take()
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
        let (v4, v6) = open_clients(targets, None)?;
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
