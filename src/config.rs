//! The TOML configuration: a `deny_unknown_fields` schema parsed by serde,
//! then checked once into a typed [`Config`] that the rest of the agent trusts.
//!
//! Every error names the file, the key (`routes[1].destination`), the line
//! when the document has that key, and what to do about it.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::detect::{DetectConfig, DetectorKind};
use crate::fsm::{Failback, Policy};
use crate::model::ManagedRoute;
use crate::probe::rtt::Deadline;
use crate::probe::RoundPolicy;

/// Exit status for an unusable configuration (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// Which implementation of the route API the agent talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The real EC2 API (or LocalStack through `endpoint_url`).
    Ec2,
    /// An in-process fake that behaves like EC2, seeded from this config.
    Memory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    aws: RawAws,
    probe: RawProbe,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAws {
    region: Option<String>,
    endpoint_url: Option<String>,
    #[serde(default = "default_backend")]
    backend: Backend,
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    api_timeout: Duration,
    imds_endpoint: Option<String>,
    own_subnet_id: Option<String>,
    #[serde(default)]
    allow_self_subnet: bool,
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            region: None,
            endpoint_url: None,
            backend: default_backend(),
            api_timeout: default_api_timeout(),
            imds_endpoint: None,
            own_subnet_id: None,
            allow_self_subnet: false,
        }
    }
}

fn default_backend() -> Backend {
    Backend::Ec2
}
fn default_api_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    targets: Vec<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "default_count")]
    count: u32,
    #[serde(default = "default_min_replies")]
    min_replies: u32,
    quorum: Option<u32>,
    // The detector's keys (src/detect.rs), checked by validate_detect.
    detector: Option<DetectorKind>,
    #[serde(default, with = "humantime_serde")]
    silence: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    suspect_interval: Option<Duration>,
    adaptive_timeout: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    timeout_floor: Option<Duration>,
    timeout_k: Option<u32>,
}

/// The detector's keys of `[probe]`, taken apart before the rest is validated.
#[derive(Debug, Clone, Copy)]
struct RawDetect {
    detector: Option<DetectorKind>,
    silence: Option<Duration>,
    suspect_interval: Option<Duration>,
    adaptive_timeout: Option<bool>,
    timeout_floor: Option<Duration>,
    timeout_k: Option<u32>,
}

impl RawDetect {
    fn of(raw: &RawProbe) -> Self {
        Self {
            detector: raw.detector,
            silence: raw.silence,
            suspect_interval: raw.suspect_interval,
            adaptive_timeout: raw.adaptive_timeout,
            timeout_floor: raw.timeout_floor,
            timeout_k: raw.timeout_k,
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_timeout() -> Duration {
    Duration::from_millis(800)
}
fn default_count() -> u32 {
    3
}
fn default_min_replies() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailover {
    #[serde(default = "default_fall")]
    fall: u32,
    #[serde(default = "default_rise")]
    rise: u32,
    #[serde(default = "default_hold_down", with = "humantime_serde")]
    hold_down: Duration,
    #[serde(default = "default_failback")]
    failback: Failback,
    #[serde(default = "default_resync", with = "humantime_serde")]
    resync_interval: Duration,
    #[serde(default)]
    takeover: bool,
    #[serde(default = "default_max_failovers")]
    max_failovers: u32,
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    flap_window: Duration,
}

impl Default for RawFailover {
    fn default() -> Self {
        Self {
            fall: default_fall(),
            rise: default_rise(),
            hold_down: default_hold_down(),
            failback: default_failback(),
            resync_interval: default_resync(),
            takeover: false,
            max_failovers: default_max_failovers(),
            flap_window: default_flap_window(),
        }
    }
}

fn default_fall() -> u32 {
    3
}
fn default_rise() -> u32 {
    10
}
fn default_hold_down() -> Duration {
    Duration::from_secs(60)
}
fn default_failback() -> Failback {
    Failback::Auto
}
fn default_resync() -> Duration {
    Duration::from_secs(30)
}
fn default_max_failovers() -> u32 {
    5
}
fn default_flap_window() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    route_table_id: String,
    destination: String,
    target_eni: String,
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
}

impl ProbeConfig {
    /// Gap between the echoes of one target, chosen so that the last echo's
    /// timeout still ends inside the round's interval.
    pub fn spacing(&self) -> Duration {
        (self.interval.saturating_sub(self.timeout)) / self.count
    }
}

/// Reconciliation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    pub resync_interval: Duration,
    pub takeover: bool,
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
    pub routes: Vec<ManagedRoute>,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: source.to_path_buf(),
            key: None,
            line: e.span().map(|s| line_of(text, s.start)),
            reason: e.message().trim().to_string(),
        })?;
        validate(raw, source).map_err(|inv| ConfigError {
            file: source.to_path_buf(),
            line: key_line(text, &inv.key),
            key: Some(inv.key),
            reason: inv.reason,
        })
    }
}

fn validate(raw: RawConfig, source: &Path) -> Result<Config, Invalid> {
    let aws = validate_aws(raw.aws)?;
    let raw_detect = RawDetect::of(&raw.probe);
    let probe = validate_probe(raw.probe)?;
    let (policy, reconcile) = validate_failover(raw.failover)?;
    let detect = validate_detect(raw_detect, &probe, &policy)?;
    let routes = validate_routes(raw.routes)?;
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
        routes,
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
    if raw.api_timeout < Duration::from_millis(100) {
        return Err(invalid("aws.api_timeout", "must be at least 100ms"));
    }
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
        if addr.is_unspecified()
            || addr.is_multicast()
            || addr == IpAddr::from([255, 255, 255, 255])
        {
            return Err(invalid(
                &key,
                format!("{addr} cannot be probed: use a unicast address of an on-premises host"),
            ));
        }
        if targets.contains(&addr) {
            return Err(invalid(&key, format!("{addr} is listed twice")));
        }
        targets.push(addr);
    }
    if raw.interval < Duration::from_millis(10) {
        return Err(invalid("probe.interval", "must be at least 10ms"));
    }
    if raw.timeout.is_zero() {
        return Err(invalid("probe.timeout", "must be greater than zero"));
    }
    if raw.timeout > raw.interval {
        return Err(invalid(
            "probe.timeout",
            format!(
                "{} is longer than probe.interval ({}): a round must end within its interval",
                humantime::format_duration(raw.timeout),
                humantime::format_duration(raw.interval)
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
    })
}

/// The detector's keys. Silence-only keys are refused with the round rule,
/// so a setting never silently does nothing.
fn validate_detect(
    raw: RawDetect,
    probe: &ProbeConfig,
    policy: &Policy,
) -> Result<DetectConfig, Invalid> {
    let kind = raw.detector.unwrap_or(DetectorKind::Rounds);
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
    let suspect_interval = raw.suspect_interval.unwrap_or(Duration::from_millis(25));
    if suspect_interval < Duration::from_millis(10) || suspect_interval > steady {
        return Err(invalid(
            "probe.suspect_interval",
            format!(
                "must be between 10ms and probe.interval / probe.count ({}ms): suspect probing is denser than steady probing",
                steady.as_millis()
            ),
        ));
    }
    let floor = raw.timeout_floor.unwrap_or(Duration::from_millis(20));
    if floor.is_zero() || floor > probe.timeout {
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
    if raw.resync_interval < Duration::from_secs(1) {
        return Err(invalid(
            "failover.resync_interval",
            "must be at least 1s, to stay well inside EC2's API rate limits",
        ));
    }
    if raw.max_failovers < 1 {
        return Err(invalid("failover.max_failovers", "must be at least 1"));
    }
    if raw.flap_window.is_zero() {
        return Err(invalid("failover.flap_window", "must be greater than zero"));
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

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Finds the line of a dotted key path such as `routes[1].destination`,
/// falling back to the deepest part of it that the document spells out.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((name, idx)) => (name, idx.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, item)) = table.get_key_value(name) else {
            break;
        };
        span = k.span().or(span);
        match (index, item) {
            (Some(i), toml_edit::Item::ArrayOfTables(array)) => match array.get(i) {
                Some(t) => {
                    span = t.span().or(span);
                    table = t;
                }
                None => break,
            },
            (Some(i), _) => {
                span = item
                    .as_array()
                    .and_then(|a| a.get(i))
                    .and_then(toml_edit::Value::span)
                    .or(span);
                break;
            }
            (None, _) => match item.as_table_like() {
                Some(t) => table = t,
                None => break,
            },
        }
    }
    span.map(|s| line_of(text, s.start))
}
