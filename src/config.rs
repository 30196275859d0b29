//! The TOML configuration: a `deny_unknown_fields` schema parsed by serde,
//! then checked once into a typed [`Config`] that the rest of the agent trusts.
//!
//! Every error names the file, the key (`routes[1].destination`), the line
//! when the document has that key, and what to do about it.
//!
//! `raw` holds the schema as written, `locate` finds an error's line and
//! key; this module validates.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::detect::{DetectConfig, DetectorKind};
use crate::fsm::Policy;
use crate::model::ManagedRoute;
use crate::probe::rtt::Deadline;
use crate::probe::RoundPolicy;
use locate::{key_line, parse_error};
use raw::{RawAws, RawBackup, RawConfig, RawDetect, RawFailover, RawHa, RawProbe, RawRoute};

mod locate;
mod raw;

/// Exit status for an unusable configuration (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// Bounds of every duration key. The upper ones keep all the timer
/// arithmetic (`Instant + hold_down`, `api_timeout × attempts`, …) far from
/// overflow, and each is well beyond any sensible setting.
pub mod limits {
    use std::time::Duration;

    const DAY: u64 = 24 * 3600;

    /// `probe.interval`: systemd's watchdog is pinged once per round, and
    /// the unit's `WatchdogSec=30s` should see at least three pings.
    pub const INTERVAL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(10));
    /// `interval - timeout` must be at least `interval / MARGIN_DIVISOR`
    /// (10 %): the margin that lets the last echo of a round be answered
    /// before the next round starts.
    pub const MARGIN_DIVISOR: u32 = 10;
    /// `aws.api_timeout`, per attempt.
    pub const API_TIMEOUT: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(5 * 60));
    /// `failover.hold_down`.
    pub const HOLD_DOWN: Duration = Duration::from_secs(7 * DAY);
    /// `failover.resync_interval`.
    pub const RESYNC_INTERVAL: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(3600));
    /// `failover.flap_window`.
    pub const FLAP_WINDOW: Duration = Duration::from_secs(30 * DAY);
    /// `ha.heartbeat`: each beat is one CreateTags call.
    pub const HEARTBEAT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(300));
    /// `ha.peer_timeout` at most.
    pub const PEER_TIMEOUT: Duration = Duration::from_secs(3600);
    /// `ha.forget_after` at most.
    pub const FORGET_AFTER: Duration = Duration::from_secs(30 * DAY);
}

/// Which implementation of the route API the agent talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The real EC2 API (or LocalStack through `endpoint_url`).
    Ec2,
    /// An in-process fake that behaves like EC2, seeded from this config.
    Memory,
}

/// AWS connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub backend: Backend,
    /// Bound on one attempt of one API call (connect + response).
    pub api_timeout: Duration,
    /// Instance metadata endpoint override (tests serve a fake on loopback).
    pub imds_endpoint: Option<String>,
    /// The agent's own subnet, when not learned from instance metadata.
    pub own_subnet_id: Option<String>,
    /// Start even when a managed table is the agent's own subnet's.
    pub allow_self_subnet: bool,
}

/// How each round probes the primary path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub targets: Vec<IpAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    pub count: u32,
    pub round: RoundPolicy,
    /// A target that has answered `min_replies` echoes in time is sent no
    /// more of the round's: no later echo can make it down.
    pub early_stop: bool,
}

impl ProbeConfig {
    /// Gap between the echoes of one target, chosen so that the last echo's
    /// timeout still ends inside the round's interval.
    pub fn spacing(&self) -> Duration {
        (self.interval.saturating_sub(self.timeout)) / self.count
    }
}

/// `[backup]`: how the backup path (the VPN appliance and its tunnel) is
/// watched. Its targets are probed in the same rounds as the primary's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupConfig {
    /// Reached over the VPN; empty: the appliance check alone decides.
    pub targets: Vec<IpAddr>,
    pub count: u32,
    pub timeout: Duration,
    pub round: RoundPolicy,
    /// Consecutive down rounds before the backup counts as down.
    pub fall: u32,
    /// Consecutive up rounds before it counts as up again.
    pub rise: u32,
    /// A backup known down holds a failover (else: alarms only).
    pub required: bool,
    /// The address backup probes are sent from (a second interface).
    pub source: Option<IpAddr>,
}

impl BackupConfig {
    /// Gap between the echoes of one backup target, so that the last
    /// echo's timeout ends inside the round's `interval`.
    pub fn spacing(&self, interval: Duration) -> Duration {
        interval.saturating_sub(self.timeout) / self.count
    }

    /// Whether `other` probes the same way: its rounds are then evidence
    /// for ours (a reload keeps the backup's streaks).
    pub fn same_probes(&self, other: &BackupConfig) -> bool {
        self.targets == other.targets
            && self.count == other.count
            && self.timeout == other.timeout
            && self.round == other.round
            && self.source == other.source
    }

    /// What the judge needs of it.
    pub fn policy(&self) -> crate::judge::BackupPolicy {
        crate::judge::BackupPolicy {
            fall: self.fall,
            rise: self.rise,
            probed: !self.targets.is_empty(),
            required: self.required,
        }
    }
}

/// Reconciliation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    pub resync_interval: Duration,
    pub takeover: bool,
    /// Delete our route only while a DX route covers its destination.
    pub failback_requires_dx_route: bool,
}

/// A configuration that has passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub source: PathBuf,
    pub aws: AwsConfig,
    pub probe: ProbeConfig,
    /// Which detector judges the path, and its settings.
    pub detect: DetectConfig,
    pub policy: Policy,
    pub reconcile: ReconcileConfig,
    /// Where to serve Prometheus metrics; none when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub control: ControlConfig,
    pub routes: Vec<ManagedRoute>,
    /// `[[notify]]` hooks told of transitions, pinning, findings and operator actions.
    pub notify: Vec<crate::notify::HookConfig>,
    /// `[backup]`; `None`: the backup path is not watched and never holds a failover.
    pub backup: Option<BackupConfig>,
    /// `[ha]`: several agents sharing verdicts; `None` for a single agent.
    pub ha: Option<crate::ha::HaConfig>,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path such as `probe.timeout` or `routes[2].destination`.
    pub key: Option<String>,
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl ConfigError {
    /// An error about `key` of the file `config` came from, found after
    /// validation (say, an environment variable a `[[notify]]` hook needs
    /// is unset): the line is looked up in the file as it is now.
    pub fn at_key(config: &Config, key: String, reason: String) -> Self {
        let line = std::fs::read_to_string(&config.source)
            .ok()
            .and_then(|text| key_line(&text, &key));
        Self {
            file: config.source.clone(),
            key: Some(key),
            line,
            reason,
        }
    }
}

/// A problem found by validation, before the file and line are attached.
struct Invalid {
    key: String,
    reason: String,
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Whether `other` probes exactly as this does, so one prober serves
    /// both (a reload then keeps it, its sockets and learned RTTs). The
    /// round rules count: the prober stops sending a target by them.
    pub fn same_probing(&self, other: &Config) -> bool {
        self.probe == other.probe
            && self.detect == other.detect
            && match (&self.backup, &other.backup) {
                (None, None) => true,
                (Some(a), Some(b)) => a.same_probes(b),
                _ => false,
            }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: None,
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| parse_error(text, source, &e))?;
        validate(raw, source).map_err(|inv| ConfigError {
            file: source.to_path_buf(),
            line: key_line(text, &inv.key),
            key: Some(inv.key),
            reason: inv.reason,
        })
    }

    /// Refuses a `probe.interval` longer than a third of systemd's watchdog
    /// timeout: the agent pings the watchdog once per round, and a round
    /// that runs late or a ping that is lost must not get it killed.
    pub fn check_watchdog(&self, watchdog: Duration) -> Result<(), ConfigError> {
        // Whole milliseconds: "4s 666ms", not "4s 666ms 666us 666ns".
        let third = u64::try_from((watchdog / 3).as_millis()).unwrap_or(u64::MAX);
        let longest = Duration::from_millis(third);
        if self.probe.interval <= longest {
            return Ok(());
        }
        let key = "probe.interval";
        // The line as the file reads now (it was parsed before this call).
        Err(ConfigError {
            file: self.source.clone(),
            line: std::fs::read_to_string(&self.source)
                .ok()
                .and_then(|text| key_line(&text, key)),
            key: Some(key.to_string()),
            reason: format!(
                "{} is longer than a third of systemd's watchdog timeout ({}, WatchdogSec): \
                 the agent pings the watchdog once per round; set it to at most {} or raise \
                 WatchdogSec",
                show(self.probe.interval),
                show(watchdog),
                show(longest)
            ),
        })
    }
}

fn validate(raw: RawConfig, source: &Path) -> Result<Config, Invalid> {
    let aws = validate_aws(raw.aws)?;
    let raw_detect = RawDetect::of(&raw.probe);
    let probe = validate_probe(raw.probe)?;
    let (policy, reconcile) = validate_failover(raw.failover)?;
    let detect = validate_detect(raw_detect, &probe, &policy)?;
    let backup = match raw.backup {
        None => None,
        Some(b) => Some(validate_backup(b, &probe, detect.kind)?),
    };
    let routes = validate_routes(raw.routes)?;
    let notify = crate::notify::config::validate(raw.notify).map_err(|(k, r)| invalid(k, r))?;
    let control = validate_control(raw.control)?;
    let ha = raw
        .ha
        .map(|h| validate_ha(h, aws.backend, &routes))
        .transpose()?;
    let metrics_listen = match raw.metrics.listen {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{text:?} is not an address and port such as \"127.0.0.1:9108\""),
            )
        })?),
    };
    Ok(Config {
        source: source.to_path_buf(),
        aws,
        probe,
        detect,
        policy,
        reconcile,
        metrics_listen,
        control,
        routes,
        notify,
        backup,
        ha,
    })
}

fn validate_ha(
    raw: RawHa,
    backend: Backend,
    routes: &[ManagedRoute],
) -> Result<crate::ha::HaConfig, Invalid> {
    if let Some(id) = &raw.agent_id {
        crate::ha::check_agent_id(id).map_err(|why| invalid("ha.agent_id", why))?;
    } else if backend != Backend::Ec2 {
        return Err(invalid(
            "ha.agent_id",
            "required off EC2 (the default is this instance's id from the metadata service): \
             give each agent of the pair its own name, such as \"monitor-a\"",
        ));
    }
    within(
        "ha.heartbeat",
        raw.heartbeat,
        limits::HEARTBEAT,
        ", each beat is one CreateTags call",
    )?;
    // Between two reads of the anchor (the reconciler's, or the
    // heartbeat's own when those are too far apart) a live peer's newest
    // verdict grows up to one heartbeat old, plus the clock skew.
    let floor = raw.heartbeat + crate::peers::SKEW_TOLERANCE;
    let peer_timeout = raw.peer_timeout.unwrap_or(raw.heartbeat * 3);
    if peer_timeout <= floor {
        return Err(invalid(
            "ha.peer_timeout",
            format!(
                "{} must exceed the heartbeat plus the clock-skew tolerance ({}), or a live \
                 peer would be taken for dead between two beats; 3 x heartbeat is the default",
                show(peer_timeout),
                show(floor)
            ),
        ));
    }
    if peer_timeout > limits::PEER_TIMEOUT {
        return Err(too_long(
            "ha.peer_timeout",
            peer_timeout,
            limits::PEER_TIMEOUT,
        ));
    }
    if raw.forget_after <= peer_timeout {
        return Err(invalid(
            "ha.forget_after",
            format!(
                "{} must exceed ha.peer_timeout ({}): only a verdict long dead is deleted; \
                 the default is \"24h\"",
                show(raw.forget_after),
                show(peer_timeout)
            ),
        ));
    }
    if raw.forget_after > limits::FORGET_AFTER {
        return Err(too_long(
            "ha.forget_after",
            raw.forget_after,
            limits::FORGET_AFTER,
        ));
    }
    let tables: BTreeSet<&str> = routes.iter().map(|r| r.route_table_id.as_str()).collect();
    // routes is never empty (validated before [ha]).
    let anchor = match raw.anchor {
        Some(id) if !tables.contains(id.as_str()) => {
            return Err(invalid(
                "ha.anchor",
                format!(
                    "{id:?} is not a managed route table: use one of {} (every agent of the \
                     pair must name the same one)",
                    tables.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Some(id) => (id, true),
        None => (routes[0].route_table_id.clone(), false),
    };
    Ok(crate::ha::HaConfig {
        agent_id: raw.agent_id,
        heartbeat: raw.heartbeat,
        peer_timeout,
        anchor: anchor.0,
        anchor_set: anchor.1,
        forget_after: raw.forget_after,
    })
}

fn validate_aws(raw: RawAws) -> Result<AwsConfig, Invalid> {
    if let Some(region) = &raw.region {
        let ok = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(invalid(
                "aws.region",
                format!("{region:?} is not a region name such as \"us-east-1\""),
            ));
        }
    }
    for (key, url) in [
        ("aws.endpoint_url", &raw.endpoint_url),
        ("aws.imds_endpoint", &raw.imds_endpoint),
    ] {
        if let Some(url) = url {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                return Err(invalid(
                    key,
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
        }
    }
    if let Some(subnet) = &raw.own_subnet_id {
        check_aws_id(subnet, "subnet", "aws.own_subnet_id")?;
    }
    within("aws.api_timeout", raw.api_timeout, limits::API_TIMEOUT, "")?;
    Ok(AwsConfig {
        region: raw.region,
        endpoint_url: raw.endpoint_url,
        backend: raw.backend,
        api_timeout: raw.api_timeout,
        imds_endpoint: raw.imds_endpoint,
        own_subnet_id: raw.own_subnet_id,
        allow_self_subnet: raw.allow_self_subnet,
    })
}

fn validate_probe(raw: RawProbe) -> Result<ProbeConfig, Invalid> {
    if raw.targets.is_empty() {
        return Err(invalid(
            "probe.targets",
            "needs at least one on-premises address to probe over the primary path",
        ));
    }
    let mut targets = Vec::with_capacity(raw.targets.len());
    for (i, text) in raw.targets.iter().enumerate() {
        let key = format!("probe.targets[{i}]");
        let addr: IpAddr = text
            .parse()
            .map_err(|_| invalid(&key, format!("{text:?} is not an IPv4 or IPv6 address")))?;
        if let Some(why) = unprobeable(addr) {
            return Err(invalid(&key, format!("{addr} cannot be probed: {why}")));
        }
        if targets.contains(&addr) {
            return Err(invalid(&key, format!("{addr} is listed twice")));
        }
        targets.push(addr);
    }
    within(
        "probe.interval",
        raw.interval,
        limits::INTERVAL,
        ": the agent pings systemd's watchdog once per round, and the unit's \
         WatchdogSec=30s must see at least three pings",
    )?;
    if raw.timeout.is_zero() {
        return Err(invalid("probe.timeout", "must be greater than zero"));
    }
    if raw.timeout > raw.interval {
        return Err(invalid(
            "probe.timeout",
            format!(
                "{} is longer than probe.interval ({}): a round must end within its interval",
                show(raw.timeout),
                show(raw.interval)
            ),
        ));
    }
    // timeout <= interval here, so this cannot underflow.
    let longest = raw.interval - raw.interval / limits::MARGIN_DIVISOR;
    if raw.timeout > longest {
        return Err(invalid(
            "probe.timeout",
            format!(
                "{} leaves less than 10 % of probe.interval ({}) free: at most {}, so that \
                 the last echo of a round is answered before the next round starts",
                show(raw.timeout),
                show(raw.interval),
                show(longest)
            ),
        ));
    }
    if !(1..=100).contains(&raw.count) {
        return Err(invalid("probe.count", "must be between 1 and 100"));
    }
    if raw.min_replies < 1 || raw.min_replies > raw.count {
        return Err(invalid(
            "probe.min_replies",
            format!("must be between 1 and probe.count ({})", raw.count),
        ));
    }
    let total = u32::try_from(targets.len()).unwrap_or(u32::MAX);
    let quorum = raw.quorum.unwrap_or(total);
    if quorum < 1 || quorum > total {
        return Err(invalid(
            "probe.quorum",
            format!("must be between 1 and the number of targets ({total})"),
        ));
    }
    Ok(ProbeConfig {
        targets,
        interval: raw.interval,
        timeout: raw.timeout,
        count: raw.count,
        round: RoundPolicy {
            min_replies: raw.min_replies,
            quorum,
        },
        early_stop: raw.early_stop.unwrap_or(true),
    })
}

/// `[backup]`, with the same rigour as `[probe]`: the round keys default
/// to `[probe]`'s and must fit in its interval, since both groups are
/// probed in the same round.
fn validate_backup(
    raw: RawBackup,
    probe: &ProbeConfig,
    detector: DetectorKind,
) -> Result<BackupConfig, Invalid> {
    // Both count backup probe rounds: 3 unless set.
    let fall = raw.fall.unwrap_or(3);
    let rise = raw.rise.unwrap_or(3);
    if fall < 1 {
        return Err(invalid("backup.fall", "must be at least 1"));
    }
    if rise < 1 {
        return Err(invalid("backup.rise", "must be at least 1"));
    }
    if raw.targets.is_empty() {
        // Without targets only the appliance check runs: a round key
        // would silently do nothing.
        let set = [
            ("backup.count", raw.count.is_some()),
            ("backup.timeout", raw.timeout.is_some()),
            ("backup.min_replies", raw.min_replies.is_some()),
            ("backup.quorum", raw.quorum.is_some()),
            ("backup.source", raw.source.is_some()),
            ("backup.fall", raw.fall.is_some()),
            ("backup.rise", raw.rise.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *key,
                "only applies with backup.targets (addresses reached over the VPN); without \
                 them the appliance check alone watches the backup",
            ));
        }
    } else if detector == DetectorKind::Silence {
        return Err(invalid(
            "backup.targets",
            "cannot be probed with probe.detector = \"silence\" (it has no rounds to carry \
             them): use the round rule, or leave backup.targets out and let the appliance \
             check alone watch the backup",
        ));
    }
    let source = match &raw.source {
        None => None,
        Some(text) => {
            let addr: IpAddr = text.parse().map_err(|_| {
                invalid(
                    "backup.source",
                    format!("{text:?} is not an IPv4 or IPv6 address of this instance"),
                )
            })?;
            if addr.is_unspecified() || addr.is_multicast() {
                return Err(invalid(
                    "backup.source",
                    format!(
                        "{addr} cannot be a source: use a unicast address of one of this \
                         instance's interfaces (say, the second ENI's private address)"
                    ),
                ));
            }
            Some(addr)
        }
    };
    let mut targets = Vec::with_capacity(raw.targets.len());
    for (i, text) in raw.targets.iter().enumerate() {
        let key = format!("backup.targets[{i}]");
        let addr: IpAddr = text
            .parse()
            .map_err(|_| invalid(&key, format!("{text:?} is not an IPv4 or IPv6 address")))?;
        if let Some(why) = unprobeable_over_vpn(addr) {
            return Err(invalid(&key, format!("{addr} cannot be probed: {why}")));
        }
        if targets.contains(&addr) {
            return Err(invalid(&key, format!("{addr} is listed twice")));
        }
        if probe.targets.contains(&addr) {
            return Err(invalid(
                &key,
                format!(
                    "{addr} is also in probe.targets: one address takes one path from this \
                     instance, so it cannot test both DX and the VPN; probe the appliance's \
                     tunnel-inside address, or an on-premises host the utility subnet's table \
                     sends via the appliance ENI (a /32 route)"
                ),
            ));
        }
        if let Some(source) = source {
            if source.is_ipv4() != addr.is_ipv4() {
                return Err(invalid(
                    &key,
                    format!(
                        "{addr} cannot be reached from backup.source {source}: they are of \
                         different address families"
                    ),
                ));
            }
        }
        targets.push(addr);
    }
    let count = raw.count.unwrap_or(probe.count);
    if !(1..=100).contains(&count) {
        return Err(invalid("backup.count", "must be between 1 and 100"));
    }
    let timeout = raw.timeout.unwrap_or(probe.timeout);
    if timeout.is_zero() {
        return Err(invalid("backup.timeout", "must be greater than zero"));
    }
    // Both groups share the round: the same margin as probe.timeout.
    let longest = probe.interval - probe.interval / limits::MARGIN_DIVISOR;
    if timeout > longest {
        return Err(invalid(
            "backup.timeout",
            format!(
                "{} leaves less than 10 % of probe.interval ({}) free: at most {}; backup \
                 targets are probed in the same rounds as the primary's",
                show(timeout),
                show(probe.interval),
                show(longest)
            ),
        ));
    }
    let min_replies = raw.min_replies.unwrap_or(1);
    if min_replies < 1 || min_replies > count {
        return Err(invalid(
            "backup.min_replies",
            format!("must be between 1 and backup.count ({count})"),
        ));
    }
    let total = u32::try_from(targets.len()).unwrap_or(u32::MAX);
    let quorum = raw.quorum.unwrap_or(total);
    if !targets.is_empty() && (quorum < 1 || quorum > total) {
        return Err(invalid(
            "backup.quorum",
            format!("must be between 1 and the number of backup targets ({total})"),
        ));
    }
    Ok(BackupConfig {
        targets,
        count,
        timeout,
        round: RoundPolicy {
            min_replies,
            quorum,
        },
        fall,
        rise,
        required: raw.required,
        source,
    })
}

/// Why `addr` cannot be a backup target, if it cannot. Link-local is
/// refused: a VPC route table cannot send it to the appliance.
fn unprobeable_over_vpn(addr: IpAddr) -> Option<String> {
    let link_local = match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    if link_local {
        return Some(
            "it is link-local: a VPC route table cannot send it to the appliance; give the \
             tunnel a routable inside address, or probe an on-premises host"
                .to_string(),
        );
    }
    unprobeable(addr)
}

/// The detector's keys. Silence-only keys are refused with the round rule,
/// so a setting never silently does nothing.
fn validate_detect(
    raw: RawDetect,
    probe: &ProbeConfig,
    policy: &Policy,
) -> Result<DetectConfig, Invalid> {
    let kind = raw.detector.unwrap_or(DetectorKind::Rounds);
    if kind == DetectorKind::Silence && raw.early_stop.is_some() {
        return Err(invalid(
            "probe.early_stop",
            "only applies with probe.detector = \"rounds\"; the silence detector probes each target steadily",
        ));
    }
    if kind == DetectorKind::Rounds {
        let set = [
            ("probe.silence", raw.silence.is_some()),
            ("probe.suspect_interval", raw.suspect_interval.is_some()),
            ("probe.adaptive_timeout", raw.adaptive_timeout.is_some()),
            ("probe.timeout_floor", raw.timeout_floor.is_some()),
            ("probe.timeout_k", raw.timeout_k.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(invalid(
                *key,
                "only applies with probe.detector = \"silence\"; the round rule waits the fixed timeout",
            ));
        }
    }
    let steady = probe.interval / probe.count;
    // Unset: as long as `fall` rounds of the round rule.
    let silence = raw.silence.unwrap_or(probe.interval * policy.fall);
    if silence < Duration::from_millis(10) {
        return Err(invalid("probe.silence", "must be at least 10ms"));
    }
    // Unset defaults never make a valid [probe] invalid: they give way
    // to short intervals and timeouts. The round rule never uses them.
    let suspect_interval = raw
        .suspect_interval
        .unwrap_or(Duration::from_millis(25).min(steady));
    let silence_mode = kind == DetectorKind::Silence;
    if silence_mode && (suspect_interval < Duration::from_millis(10) || suspect_interval > steady) {
        return Err(invalid(
            "probe.suspect_interval",
            format!(
                "must be between 10ms and probe.interval / probe.count ({}ms): suspect probing is denser than steady probing",
                steady.as_millis()
            ),
        ));
    }
    let floor = raw
        .timeout_floor
        .unwrap_or(Duration::from_millis(20).min(probe.timeout));
    if silence_mode && (floor.is_zero() || floor > probe.timeout) {
        return Err(invalid(
            "probe.timeout_floor",
            format!(
                "must be greater than zero and at most probe.timeout ({})",
                humantime::format_duration(probe.timeout)
            ),
        ));
    }
    let k = raw.timeout_k.unwrap_or(4);
    if !(1..=16).contains(&k) {
        return Err(invalid("probe.timeout_k", "must be between 1 and 16"));
    }
    let deadline = if raw.adaptive_timeout.unwrap_or(true) {
        Deadline::Adaptive { floor, k }
    } else {
        Deadline::Fixed
    };
    Ok(DetectConfig {
        kind,
        silence,
        suspect_interval,
        deadline,
    })
}

fn validate_failover(raw: RawFailover) -> Result<(Policy, ReconcileConfig), Invalid> {
    if raw.fall < 1 {
        return Err(invalid("failover.fall", "must be at least 1"));
    }
    if raw.rise < 1 {
        return Err(invalid("failover.rise", "must be at least 1"));
    }
    if raw.hold_down > limits::HOLD_DOWN {
        return Err(too_long(
            "failover.hold_down",
            raw.hold_down,
            limits::HOLD_DOWN,
        ));
    }
    within(
        "failover.resync_interval",
        raw.resync_interval,
        limits::RESYNC_INTERVAL,
        ", to stay well inside EC2's API rate limits and still repair drift",
    )?;
    if raw.max_failovers < 1 {
        return Err(invalid("failover.max_failovers", "must be at least 1"));
    }
    if raw.flap_window.is_zero() {
        return Err(invalid("failover.flap_window", "must be greater than zero"));
    }
    if raw.flap_window > limits::FLAP_WINDOW {
        return Err(too_long(
            "failover.flap_window",
            raw.flap_window,
            limits::FLAP_WINDOW,
        ));
    }
    Ok((
        Policy {
            fall: raw.fall,
            rise: raw.rise,
            hold_down: raw.hold_down,
            failback: raw.failback,
            max_failovers: raw.max_failovers,
            flap_window: raw.flap_window,
        },
        ReconcileConfig {
            resync_interval: raw.resync_interval,
            takeover: raw.takeover,
            failback_requires_dx_route: raw.failback_requires_dx_route,
        },
    ))
}

fn validate_routes(raw: Vec<RawRoute>) -> Result<Vec<ManagedRoute>, Invalid> {
    if raw.is_empty() {
        return Err(invalid(
            "routes",
            "needs at least one [[routes]] entry (route_table_id, destination, target_eni)",
        ));
    }
    let mut routes: Vec<ManagedRoute> = Vec::with_capacity(raw.len());
    let mut seen = BTreeSet::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        check_aws_id(&r.route_table_id, "rtb", &key("route_table_id"))?;
        check_aws_id(&r.target_eni, "eni", &key("target_eni"))?;
        let destination: IpNet = r.destination.parse().map_err(|_| {
            invalid(
                key("destination"),
                format!(
                    "{:?} is not a CIDR block such as \"10.1.0.0/16\" or \"fd00:1::/48\"",
                    r.destination
                ),
            )
        })?;
        if destination.trunc() != destination {
            return Err(invalid(
                key("destination"),
                format!(
                    "{destination} has host bits set; EC2 wants the network address: {}",
                    destination.trunc()
                ),
            ));
        }
        if !seen.insert((r.route_table_id.clone(), destination)) {
            return Err(invalid(
                key("destination"),
                format!(
                    "{destination} in {} is already managed by an earlier [[routes]] entry",
                    r.route_table_id
                ),
            ));
        }
        routes.push(ManagedRoute {
            route_table_id: r.route_table_id,
            destination,
            target_eni: r.target_eni,
        });
    }
    Ok(routes)
}

fn show(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

fn too_long(key: &str, value: Duration, max: Duration) -> Invalid {
    invalid(
        key,
        format!("{} is too long: at most {}", show(value), show(max)),
    )
}

/// Checks `value` against inclusive `(min, max)`; `why` ends the message.
fn within(
    key: &str,
    value: Duration,
    (min, max): (Duration, Duration),
    why: &str,
) -> Result<(), Invalid> {
    if value < min {
        return Err(invalid(key, format!("must be at least {}{why}", show(min))));
    }
    if value > max {
        return Err(invalid(
            key,
            format!("{} is too long: at most {}{why}", show(value), show(max)),
        ));
    }
    Ok(())
}

/// Why `addr` cannot be a probe target, if it cannot.
fn unprobeable(addr: IpAddr) -> Option<String> {
    let unicast = "use a unicast address of an on-premises host";
    match addr {
        _ if addr.is_unspecified() || addr.is_multicast() => Some(unicast.to_string()),
        IpAddr::V4(v4) if v4.is_broadcast() => Some(unicast.to_string()),
        IpAddr::V4(v4) if v4.is_link_local() => Some(
            "it is link-local (169.254.0.0/16): such an address never crosses Direct Connect; \
             use an on-premises host's address"
                .to_string(),
        ),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some(format!(
            "it is an IPv4-mapped IPv6 address (::ffff:0:0/96): write it as IPv4, {}",
            v6.to_ipv4_mapped()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
        )),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some(
            "it is link-local (fe80::/10): such an address needs an interface scope and never \
             crosses Direct Connect; use an on-premises host's address"
                .to_string(),
        ),
        _ => None,
    }
}

/// EC2 ids are a prefix, a dash and 8 or 17 lowercase hex digits.
fn check_aws_id(id: &str, prefix: &str, key: &str) -> Result<(), Invalid> {
    let ok = id
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hex| {
            (hex.len() == 8 || hex.len() == 17)
                && hex
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{id:?} is not an id of the form {prefix}-0123456789abcdef0"),
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub(crate) socket: Option<String>,
    pub(crate) group: Option<String>,
}

/// The control socket that `route-failover ctl` talks to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlConfig {
    /// `None`: `$RUNTIME_DIRECTORY/control.sock`, else
    /// `/run/route-failover/control.sock` (see [`crate::control::socket_path`]).
    pub socket: Option<PathBuf>,
    /// The group whose members may use the socket (mode 0660).
    pub group: Option<ControlGroup>,
}

/// A group that exists on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

/// `sun_path` holds 108 bytes, the last one a NUL.
const MAX_SOCKET_PATH: usize = 107;

fn validate_control(raw: RawControl) -> Result<ControlConfig, Invalid> {
    let socket = match raw.socket {
        None => None,
        Some(text) => {
            let path = PathBuf::from(&text);
            if !path.is_absolute() || text.ends_with('/') {
                return Err(invalid(
                    "control.socket",
                    format!("{text:?} is not an absolute file path such as \"/run/route-failover/control.sock\""),
                ));
            }
            if text.len() > MAX_SOCKET_PATH {
                return Err(invalid(
                    "control.socket",
                    format!(
                        "{} bytes long; a Unix socket path has at most {MAX_SOCKET_PATH}: choose a shorter one",
                        text.len()
                    ),
                ));
            }
            Some(path)
        }
    };
    let group = match raw.group {
        None => None,
        Some(name) => Some(lookup_group(&name).map_err(|reason| invalid("control.group", reason))?),
    };
    Ok(ControlConfig { socket, group })
}

/// A group by name (or number), as this host's name service knows it.
fn lookup_group(name: &str) -> Result<ControlGroup, String> {
    if name.is_empty() {
        return Err("must name a group, such as \"route-failover-ops\"".to_string());
    }
    let found = match name.parse::<u32>() {
        Ok(gid) => uzers::get_group_by_gid(gid),
        Err(_) => uzers::get_group_by_name(name),
    };
    match found {
        Some(group) => Ok(ControlGroup {
            name: group.name().to_string_lossy().into_owned(),
            gid: group.gid(),
        }),
        None => Err(format!(
            "no group {name:?} on this host: create it (groupadd --system {name}) and add the operators to it, or name an existing group"
        )),
    }
}
