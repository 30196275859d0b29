//! Probing the primary path: the [`Prober`] trait, what one round returns,
//! and the pure rule that turns a round into up or down.
//!
//! - `icmp`: the real probers, ICMP echo over IPv4 and IPv6: rounds for the
//!   round rule over `socket`, continuous probing for the silence detector
//!   over surge-ping.
//! - `socket`: ICMP echo sockets outside tokio's reactor, read when the
//!   prober is awake anyway, replies stamped by the kernel.
//! - `ledger`: a round's echoes, the reply-matching rule and the round's
//!   timeline (pure).
//! - `scripted`: a labelled synthetic source for the demo and for tests.
//! - `rtt`: per-target RTT estimate and the adaptive echo deadline (pure).
//! - `silence`: the async driver of the silence detector, over any `EchoPath`.
//! - `simulated`: a synthetic `EchoPath` (delays and loss per echo) on
//!   tokio's clock, for tests of the silence detector's driver.

pub mod icmp;
pub mod ledger;
pub mod rtt;
pub mod scripted;
pub mod silence;
pub mod simulated;
pub mod socket;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;

/// What one target did during one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetReport {
    pub target: IpAddr,
    pub sent: u32,
    /// Round-trip times of the echoes that were answered in time.
    pub rtts: Vec<Duration>,
    /// The first local error while sending, such as "network unreachable".
    pub error: Option<String>,
}

impl TargetReport {
    pub fn received(&self) -> u32 {
        u32::try_from(self.rtts.len()).unwrap_or(u32::MAX)
    }

    /// Whether the target answered enough echoes to count as up.
    pub fn is_up(&self, policy: RoundPolicy) -> bool {
        self.received() >= policy.min_replies
    }

    /// Fraction of its echoes lost, 0.0 to 1.0.
    pub fn loss(&self) -> f64 {
        loss_ratio(self.sent, self.received())
    }

    /// One round of `target` as [`icmp::IcmpProber`] plays it, on a path
    /// given per echo: `fates[k]`, echo k's round-trip time, or `None` if
    /// lost. Echo k leaves at k·`spacing` if the target still
    /// [`wants_echo`](Self::wants_echo) by the replies in by then; a reply
    /// counts within `timeout`, however late it is read. The model behind
    /// the false-failover simulation and the early-stop property test.
    pub fn played(
        target: IpAddr,
        fates: &[Option<Duration>],
        spacing: Duration,
        timeout: Duration,
        policy: RoundPolicy,
        early_stop: bool,
    ) -> Self {
        let mut t = Self {
            target,
            sent: 0,
            rtts: Vec::new(),
            error: None,
        };
        let in_time = |rtt: &Option<Duration>| rtt.filter(|rtt| *rtt <= timeout);
        // Each echo's offset from the round's start, as a multiple of spacing.
        let at = |k: usize| spacing.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
        for k in 0..fates.len() {
            t.rtts = fates[..t.sent as usize]
                .iter()
                .enumerate()
                .filter_map(|(j, rtt)| in_time(rtt).filter(|rtt| at(j) + *rtt <= at(k)))
                .collect();
            if t.wants_echo(policy, early_stop) {
                t.sent += 1;
            }
        }
        t.rtts = fates[..t.sent as usize]
            .iter()
            .filter_map(in_time)
            .collect();
        t
    }

    /// Whether the target is sent the round's next echo. With `early_stop`,
    /// not once it is up: replies only add to `received`, so no later echo
    /// can make it down, and the round's verdict is the one all its echoes
    /// would give.
    pub fn wants_echo(&self, policy: RoundPolicy, early_stop: bool) -> bool {
        !(early_stop && self.is_up(policy))
    }
}

/// Fraction of `sent` that did not come back; nothing sent counts as all lost.
fn loss_ratio(sent: u32, received: u32) -> f64 {
    if sent == 0 {
        return 1.0;
    }
    1.0 - f64::from(received) / f64::from(sent)
}

/// Every target's result for one round.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoundReport {
    pub targets: Vec<TargetReport>,
    /// The backup group (`[backup] targets`, reached over the VPN), probed
    /// in the same round; empty when there is none.
    pub backup: Vec<TargetReport>,
    /// Set by synthetic sources so their rounds are never mistaken for real ones.
    pub label: Option<String>,
}

/// Sends one round of probes to every target.
#[async_trait]
pub trait Prober: Send {
    /// Runs one round. Implementations finish within the configured
    /// interval; the agent also bounds it.
    async fn round(&mut self) -> RoundReport;

    /// What a round that was given up on (it overran its interval) had
    /// gathered: the echoes sent and the replies that came back in time.
    /// The agent judges such a round by these, with the usual
    /// `min_replies` and `quorum`; `None` when nothing was kept.
    fn salvage(&mut self) -> Option<RoundReport> {
        None
    }

    /// A short label for logs: "icmp" or "scripted: …".
    fn describe(&self) -> String;

    /// Tells the prober whether traffic is on the primary path, before
    /// each round. The silence detector probes densely while a path is
    /// suspect only on the primary, and judges rounds differently on each.
    fn set_on_primary(&mut self, _on_primary: bool) {}

    /// The verdict on the round just returned, when the prober judges the
    /// path itself (the silence detector, `crate::detect`). `None`: the
    /// caller applies [`summarize`] to the report.
    fn verdict(&mut self) -> Option<RoundSummary> {
        None
    }

    /// Whether [`Prober::verdict`] judges the path (then one down verdict
    /// is a decided failure: the state machine runs with `fall = 1`).
    fn judges_path(&self) -> bool {
        false
    }
}

/// When a target and a round count as down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundPolicy {
    /// A target answering fewer echoes than this is down.
    pub min_replies: u32,
    /// The round is down when at least this many targets are down.
    pub quorum: u32,
}

/// The verdict on one round and the figures behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundSummary {
    pub up: bool,
    pub targets_total: u32,
    pub targets_down: u32,
    pub sent: u32,
    pub received: u32,
    pub rtt_avg: Option<Duration>,
    pub rtt_max: Option<Duration>,
}

impl RoundSummary {
    /// A round with no figures behind it, for tests of the state machine.
    pub fn synthetic(up: bool) -> Self {
        Self {
            up,
            targets_total: 1,
            targets_down: u32::from(!up),
            sent: 1,
            received: u32::from(up),
            rtt_avg: None,
            rtt_max: None,
        }
    }

    /// Fraction of echoes lost, 0.0 to 1.0.
    pub fn loss(&self) -> f64 {
        loss_ratio(self.sent, self.received)
    }
}

impl fmt::Display for RoundSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} targets down, loss {:.0}%",
            self.targets_down,
            self.targets_total,
            self.loss() * 100.0
        )?;
        if let Some(avg) = self.rtt_avg {
            write!(f, ", rtt avg {:.1}ms", avg.as_secs_f64() * 1000.0)?;
        }
        Ok(())
    }
}

/// Applies `min_replies` per target and `quorum` across the primary targets.
pub fn summarize(report: &RoundReport, policy: RoundPolicy) -> RoundSummary {
    summarize_targets(&report.targets, policy)
}

/// Applies `min_replies` per target and `quorum` across `targets` (either group).
pub fn summarize_targets(targets: &[TargetReport], policy: RoundPolicy) -> RoundSummary {
    let targets_total = u32::try_from(targets.len()).unwrap_or(u32::MAX);
    let targets_down =
        u32::try_from(targets.iter().filter(|t| !t.is_up(policy)).count()).unwrap_or(u32::MAX);
    let sent = targets.iter().map(|t| t.sent).sum();
    let received = targets.iter().map(TargetReport::received).sum();
    let rtts = targets.iter().flat_map(|t| t.rtts.iter().copied());
    let (count, total, max) = rtts.fold((0u32, Duration::ZERO, None), |(n, sum, max), r| {
        (n + 1, sum + r, Some(max.map_or(r, |m: Duration| m.max(r))))
    });
    RoundSummary {
        // A round with no targets at all cannot vouch for the path.
        up: targets_total > 0 && targets_down < policy.quorum,
        targets_total,
        targets_down,
        sent,
        received,
        rtt_avg: (count > 0).then(|| total / count),
        rtt_max: max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(last_octet: u8, sent: u32, replies: &[u64]) -> TargetReport {
        TargetReport {
            target: IpAddr::from([198, 18, 0, last_octet]),
            sent,
            rtts: replies
                .iter()
                .map(|&ms| Duration::from_millis(ms))
                .collect(),
            error: None,
        }
    }

    #[test]
    fn a_target_is_down_below_min_replies() {
        let policy = RoundPolicy {
            min_replies: 2,
            quorum: 1,
        };
        let report = RoundReport {
            targets: vec![target(1, 3, &[5])],
            backup: Vec::new(),
            label: None,
        };
        let s = summarize(&report, policy);
        assert!(!s.up);
        assert_eq!((s.targets_down, s.sent, s.received), (1, 3, 1));
        let report = RoundReport {
            targets: vec![target(1, 3, &[5, 7])],
            backup: Vec::new(),
            label: None,
        };
        assert!(summarize(&report, policy).up);
    }

    #[test]
    fn the_round_is_down_only_when_quorum_targets_are_down() {
        let report = RoundReport {
            targets: vec![target(1, 3, &[]), target(2, 3, &[4, 6]), target(3, 3, &[])],
            backup: Vec::new(),
            label: None,
        };
        let with_quorum = |quorum| {
            summarize(
                &report,
                RoundPolicy {
                    min_replies: 1,
                    quorum,
                },
            )
        };
        // One on-prem host rebooting is not a DX failure...
        assert!(with_quorum(3).up);
        // ...but two of three down is, with quorum 2.
        assert!(!with_quorum(2).up);
        assert!(!with_quorum(1).up);
    }

    #[test]
    fn summary_reports_loss_and_rtts() {
        let report = RoundReport {
            targets: vec![target(1, 2, &[10, 30]), target(2, 2, &[20])],
            backup: Vec::new(),
            label: None,
        };
        let s = summarize(
            &report,
            RoundPolicy {
                min_replies: 1,
                quorum: 2,
            },
        );
        assert!(s.up);
        assert_eq!(s.rtt_avg, Some(Duration::from_millis(20)));
        assert_eq!(s.rtt_max, Some(Duration::from_millis(30)));
        assert!((s.loss() - 0.25).abs() < 1e-9);
        assert_eq!(s.to_string(), "0/2 targets down, loss 25%, rtt avg 20.0ms");
    }

    /// One round on a path given by `fates` (per target, per echo: its
    /// reply's round-trip time in ms, or lost), every target played by
    /// [`TargetReport::played`].
    fn play(
        fates: &[Vec<Option<u64>>],
        spacing: u64,
        timeout: u64,
        policy: RoundPolicy,
        early_stop: bool,
    ) -> Vec<TargetReport> {
        let ms = Duration::from_millis;
        fates
            .iter()
            .enumerate()
            .map(|(i, fate)| {
                let fate: Vec<Option<Duration>> = fate.iter().map(|r| r.map(ms)).collect();
                let target = IpAddr::from([198, 18, 0, i as u8]);
                TargetReport::played(target, &fate, ms(spacing), ms(timeout), policy, early_stop)
            })
            .collect()
    }

    proptest::proptest! {
        /// Early stop never changes a target's state nor the round's
        /// verdict: it only leaves out echoes that could not matter.
        #[test]
        fn early_stop_gives_the_verdict_of_the_whole_round(
            fates in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(0u64..1500), 1..=6), 1..=4),
            spacing in 1u64..400,
            timeout in 1u64..1000,
            min_replies in 1u32..=6,
            quorum in 1u32..=4,
        ) {
            let count = fates.iter().map(Vec::len).min().unwrap();
            let fates: Vec<Vec<Option<u64>>> = fates.iter().map(|f| f[..count].to_vec()).collect();
            let policy = RoundPolicy {
                min_replies: min_replies.min(count as u32),
                quorum: quorum.min(fates.len() as u32),
            };
            let whole = play(&fates, spacing, timeout, policy, false);
            let early = play(&fates, spacing, timeout, policy, true);
            let round = |targets: &[TargetReport]| summarize_targets(targets, policy).up;
            proptest::prop_assert_eq!(round(&whole), round(&early));
            for ((w, e), fate) in whole.iter().zip(&early).zip(&fates) {
                proptest::prop_assert_eq!(w.sent, count as u32);
                proptest::prop_assert_eq!(w.is_up(policy), e.is_up(policy));
                proptest::prop_assert!(e.sent <= w.sent && e.received() <= e.sent);
                // A first reply in before the second echo is due ends it.
                let first = fate[0].filter(|&r| r <= timeout && r <= spacing);
                if policy.min_replies == 1 && first.is_some() {
                    proptest::prop_assert_eq!(e.sent, 1);
                }
            }
        }
    }

    #[test]
    fn an_empty_round_is_down() {
        let s = summarize(
            &RoundReport::default(),
            RoundPolicy {
                min_replies: 1,
                quorum: 1,
            },
        );
        assert!(!s.up);
        assert!((s.loss() - 1.0).abs() < 1e-9);
    }
}
