//! The file as written: a `deny_unknown_fields` serde schema with its
//! defaults. Validation turns it into the typed [`Config`](super::Config).

use std::time::Duration;

use serde::Deserialize;

use super::Backend;
use crate::detect::DetectorKind;
use crate::fsm::Failback;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) aws: RawAws,
    pub(super) probe: RawProbe,
    #[serde(default)]
    pub(super) failover: RawFailover,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) control: super::RawControl,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) notify: Vec<crate::notify::config::RawHook>,
    pub(super) backup: Option<RawBackup>,
    pub(super) ha: Option<RawHa>,
}

/// `[backup]`: the round keys are optional so that defaults can follow
/// `[probe]` and a key set without targets can be refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackup {
    #[serde(default)]
    pub(super) targets: Vec<String>,
    pub(super) count: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout: Option<Duration>,
    pub(super) min_replies: Option<u32>,
    pub(super) quorum: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) rise: Option<u32>,
    #[serde(default = "default_true")]
    pub(super) required: bool,
    pub(super) source: Option<String>,
}

/// `[ha]`: absent, one agent decides alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    pub(super) agent_id: Option<String>,
    #[serde(default = "default_heartbeat", with = "humantime_serde")]
    pub(super) heartbeat: Duration,
    #[serde(default, with = "humantime_serde")]
    pub(super) peer_timeout: Option<Duration>,
    pub(super) anchor: Option<String>,
    #[serde(default = "default_forget_after", with = "humantime_serde")]
    pub(super) forget_after: Duration,
}

fn default_forget_after() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAws {
    pub(super) region: Option<String>,
    pub(super) endpoint_url: Option<String>,
    #[serde(default = "default_backend")]
    pub(super) backend: Backend,
    #[serde(default = "default_api_timeout", with = "humantime_serde")]
    pub(super) api_timeout: Duration,
    pub(super) imds_endpoint: Option<String>,
    pub(super) own_subnet_id: Option<String>,
    #[serde(default)]
    pub(super) allow_self_subnet: bool,
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
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    pub(super) targets: Vec<String>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub(super) interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "default_count")]
    pub(super) count: u32,
    #[serde(default = "default_min_replies")]
    pub(super) min_replies: u32,
    pub(super) quorum: Option<u32>,
    pub(super) early_stop: Option<bool>,
    // The detector's keys (src/detect.rs), checked by validate_detect.
    pub(super) detector: Option<DetectorKind>,
    #[serde(default, with = "humantime_serde")]
    pub(super) silence: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) suspect_interval: Option<Duration>,
    pub(super) adaptive_timeout: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub(super) timeout_floor: Option<Duration>,
    pub(super) timeout_k: Option<u32>,
}

/// The detector's keys of `[probe]`, taken apart before the rest is validated.
#[derive(Debug, Clone, Copy)]
pub(super) struct RawDetect {
    pub(super) detector: Option<DetectorKind>,
    /// The round rule's own key, refused with the silence detector.
    pub(super) early_stop: Option<bool>,
    pub(super) silence: Option<Duration>,
    pub(super) suspect_interval: Option<Duration>,
    pub(super) adaptive_timeout: Option<bool>,
    pub(super) timeout_floor: Option<Duration>,
    pub(super) timeout_k: Option<u32>,
}

impl RawDetect {
    pub(super) fn of(raw: &RawProbe) -> Self {
        Self {
            detector: raw.detector,
            early_stop: raw.early_stop,
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
pub(super) struct RawFailover {
    #[serde(default = "default_fall")]
    pub(super) fall: u32,
    #[serde(default = "default_rise")]
    pub(super) rise: u32,
    #[serde(default = "default_hold_down", with = "humantime_serde")]
    pub(super) hold_down: Duration,
    #[serde(default = "default_failback")]
    pub(super) failback: Failback,
    #[serde(default = "default_resync", with = "humantime_serde")]
    pub(super) resync_interval: Duration,
    #[serde(default)]
    pub(super) takeover: bool,
    #[serde(default = "default_max_failovers")]
    pub(super) max_failovers: u32,
    #[serde(default = "default_flap_window", with = "humantime_serde")]
    pub(super) flap_window: Duration,
    #[serde(default = "default_true")]
    pub(super) failback_requires_dx_route: bool,
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
            failback_requires_dx_route: true,
        }
    }
}

fn default_true() -> bool {
    true
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
pub(super) struct RawRoute {
    pub(super) route_table_id: String,
    pub(super) destination: String,
    pub(super) target_eni: String,
}
