//! What a hook is told: one [`Notice`] per event worth a human's attention,
//! the same fields as JSON (stdin, webhook body) and as environment
//! variables (exec hooks).
//!
//! Every notice has `version`, `event`, `text` (one line for a chat tool),
//! `at`, `host` and `reason`; each kind adds its own fields. New kinds add
//! an [`EventKind`], a [`Detail`] variant and an arm in
//! [`Notice::from_event`]; hooks filtering on `events` are unaffected.

use std::time::SystemTime;

use serde::Serialize;

use super::config::EventKind;
use crate::decide::Operator;
use crate::events::Event;
use crate::fsm::{Transition, Via};
use crate::plan::Finding;

/// Payload schema version: bumped only when a field changes meaning or goes
/// away; new fields and kinds do not bump it.
pub const VERSION: u32 = 1;

/// Prefix of every environment variable an exec hook is given.
pub const ENV_PREFIX: &str = "ROUTE_FAILOVER_";

/// One event as hooks see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notice {
    pub version: u32,
    pub event: EventKind,
    /// One human-readable line (what Slack, Teams and Mattermost display).
    pub text: String,
    /// Wall-clock time the agent saw the event, RFC 3339 UTC.
    pub at: String,
    /// The agent's host name, so several agents can share a channel.
    pub host: String,
    /// Why, in words: the transition's reason, the finding's advice.
    pub reason: String,
    /// Present (true) only under `run --dry-run`: no route was changed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    #[serde(flatten)]
    pub detail: Detail,
}

/// The fields particular to each kind of notice.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Transition {
        /// `Primary`, `Backup`, or `Partial` (a start on a partial set of
        /// our routes, settled by probe evidence).
        from: String,
        to: String,
    },
    Pinned {
        /// True when flap damping starts pinning Backup, false when it stops.
        pinned: bool,
    },
    Finding {
        /// `foreign`, `table_missing`, `shadowed`, `blackhole`,
        /// `unmanaged`, `failback_held`, or with `[ha]` `ha_duplicate_id`,
        /// `ha_split_anchor` or `ha_fight` (on the anchor table).
        finding: &'static str,
        route_table_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        destination: Option<String>,
    },
    /// The backup-path alarms (sent as a finding: they need a human).
    Alarm {
        both_down: bool,
        no_redundancy: bool,
    },
    /// An operator's action and the mode it left.
    Operator {
        action: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        /// `auto`, or the path held.
        hold: String,
        paused: bool,
    },
}

/// What every notice from one agent shares.
#[derive(Debug, Clone)]
pub struct Origin {
    pub host: String,
    pub dry_run: bool,
}

impl Origin {
    /// This machine's host name (the kernel's node name).
    pub fn local(dry_run: bool) -> Self {
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        Self { host, dry_run }
    }
}

fn describe(path: Via) -> &'static str {
    match path {
        Via::Primary => "Primary (Direct Connect)",
        Via::Backup => "Backup (VPN)",
    }
}

impl Notice {
    /// The notice for `event`, or `None` when hooks do not hear of it.
    pub fn from_event(event: &Event, origin: &Origin, now: SystemTime) -> Option<Notice> {
        let (event_kind, headline, reason, detail) = match event {
            Event::Transition(Transition {
                from, to, reason, ..
            }) => {
                let verb = if *to == Via::Backup {
                    "failover"
                } else {
                    "failback"
                };
                (
                    EventKind::Transition,
                    format!("{verb} {from} -> {}", describe(*to)),
                    reason.to_string(),
                    Detail::Transition {
                        from: from.to_string(),
                        to: to.to_string(),
                    },
                )
            }
            Event::Settled { reason } => (
                EventKind::Transition,
                format!(
                    "failover finished on {} after a start on a partial set of our routes",
                    describe(Via::Backup)
                ),
                reason.to_string(),
                Detail::Transition {
                    from: "Partial".into(),
                    to: Via::Backup.to_string(),
                },
            ),
            Event::Pinned(pinned) => (
                EventKind::Pinned,
                if *pinned {
                    format!("flap damping pinned {}", describe(Via::Backup))
                } else {
                    "flap damping released: failback is automatic again".into()
                },
                if *pinned {
                    "more than failover.max_failovers failovers within failover.flap_window; \
                     failback waits until the window clears or an operator acts"
                        .into()
                } else {
                    "the flap window cleared, or an operator acted".into()
                },
                Detail::Pinned { pinned: *pinned },
            ),
            Event::Finding(finding) => {
                let (slug, table, destination) = finding_fields(finding);
                (
                    EventKind::Finding,
                    format!("attention: {finding}"),
                    finding.to_string(),
                    Detail::Finding {
                        finding: slug,
                        route_table_id: table,
                        destination,
                    },
                )
            }
            Event::Alarms(alarms) => (
                EventKind::Finding,
                if alarms.both_down {
                    "both paths down: Direct Connect and the VPN backup".to_string()
                } else if alarms.no_redundancy {
                    "no redundancy: the VPN backup path is down".to_string()
                } else {
                    "backup alarms cleared: the VPN backup path is up, unknown or no longer watched".to_string()
                },
                if alarms.both_down {
                    "DX is down and so is the backup: staying put, failing over as soon as the backup answers".to_string()
                } else {
                    "backup path health changed".to_string()
                },
                Detail::Alarm {
                    both_down: alarms.both_down,
                    no_redundancy: alarms.no_redundancy,
                },
            ),
            Event::Operator {
                action,
                uid,
                operator,
                paused,
            } => {
                let action = action.name().to_string();
                let hold = match operator {
                    Operator::Auto => "auto".to_string(),
                    Operator::Hold(path) => path.to_string(),
                };
                let who = uid.map_or_else(|| "an operator".to_string(), |u| format!("uid {u}"));
                (
                    EventKind::Operator,
                    format!("operator action {action} by {who}"),
                    format!("hold: {hold}, paused: {paused}"),
                    Detail::Operator {
                        action,
                        uid: *uid,
                        hold,
                        paused: *paused,
                    },
                )
            }
            Event::PairFinding { kind, anchor, text } => (
                EventKind::Finding,
                format!("attention: {text}"),
                text.clone(),
                Detail::Finding {
                    finding: kind,
                    route_table_id: anchor.clone(),
                    destination: None,
                },
            ),
            // Listed one by one so that a new event is a decision here.
            Event::Intended { .. }
            | Event::Started { .. }
            | Event::Adopted { .. }
            | Event::Round { .. }
            // The backup's state reaches hooks through the alarms it raises.
            | Event::BackupRound { .. }
            | Event::ApplianceChecked(_)
            | Event::Overran
            | Event::RouteChange { .. }
            | Event::Converged { .. }
            | Event::Diverged { .. }
            | Event::ApiError { .. }
            | Event::Peers(_)
            | Event::Reloaded => return None,
        };
        let headline = match event_kind {
            // The finding's text already says what to do.
            EventKind::Finding => headline,
            _ => format!("{headline}: {reason}"),
        };
        let dry = if origin.dry_run { "[dry run] " } else { "" };
        Some(Notice {
            version: VERSION,
            event: event_kind,
            text: format!("{dry}route-failover on {}: {headline}", origin.host),
            at: humantime::format_rfc3339_millis(now).to_string(),
            host: origin.host.clone(),
            reason,
            dry_run: origin.dry_run,
            detail,
        })
    }

    /// The notice as one JSON object.
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, bools and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The notice as environment variables: each top-level field `f` as
    /// `ROUTE_FAILOVER_F` (so `event` is `ROUTE_FAILOVER_EVENT`).
    pub fn env(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        fields
            .into_iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Bool(b) => b.to_string(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((format!("{ENV_PREFIX}{}", k.to_ascii_uppercase()), value))
            })
            .collect()
    }
}

/// The finding's kind, its table and (when it names one) its destination.
fn finding_fields(finding: &Finding) -> (&'static str, String, Option<String>) {
    let with_route = |slug, route: &crate::model::ManagedRoute| {
        (
            slug,
            route.route_table_id.clone(),
            Some(route.destination.to_string()),
        )
    };
    match finding {
        Finding::Foreign { route, .. } => with_route("foreign", route),
        Finding::TableMissing { route_table_id } => ("table_missing", route_table_id.clone(), None),
        Finding::Shadowed { route, .. } => with_route("shadowed", route),
        Finding::Blackhole { route } => with_route("blackhole", route),
        Finding::Unmanaged { route } => with_route("unmanaged", route),
        Finding::FailbackHeld { route, .. } => with_route("failback_held", route),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::fsm::Reason;
    use crate::model::ManagedRoute;
    use crate::probe::RoundSummary;

    fn origin() -> Origin {
        Origin {
            host: "ip-10-0-1-5".into(),
            dry_run: false,
        }
    }

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn failover() -> Event {
        Event::Transition(Transition {
            from: Via::Primary,
            to: Via::Backup,
            at: tokio::time::Instant::now(),
            reason: Reason::Fall {
                rounds: 3,
                last: RoundSummary {
                    up: false,
                    targets_down: 2,
                    targets_total: 2,
                    sent: 6,
                    received: 0,
                    rtt_avg: None,
                    rtt_max: None,
                },
            },
        })
    }

    #[test]
    fn a_failover_says_what_happened_and_why_in_one_line() {
        let n = Notice::from_event(&failover(), &origin(), at()).unwrap();
        assert_eq!(n.event, EventKind::Transition);
        assert_eq!(
            n.text,
            "route-failover on ip-10-0-1-5: failover Primary -> Backup (VPN): \
             3 consecutive down rounds (last: 2/2 targets down, loss 100%)"
        );
        assert!(!n.text.contains('\n'));
        assert_eq!(n.at, "2023-11-14T22:13:20.000Z");
        let json: serde_json::Value = serde_json::from_slice(&n.to_json()).unwrap();
        assert_eq!(json["from"], "Primary");
        assert_eq!(json["to"], "Backup");
        assert_eq!(json["version"], 1);
        assert_eq!(json["event"], "transition");
        assert!(json.get("dry_run").is_none(), "{json}");
    }

    #[test]
    fn every_field_becomes_an_environment_variable() {
        let n = Notice::from_event(&failover(), &origin(), at()).unwrap();
        let env: std::collections::HashMap<_, _> = n.env().into_iter().collect();
        assert_eq!(env["ROUTE_FAILOVER_EVENT"], "transition");
        assert_eq!(env["ROUTE_FAILOVER_FROM"], "Primary");
        assert_eq!(env["ROUTE_FAILOVER_TO"], "Backup");
        assert_eq!(env["ROUTE_FAILOVER_AT"], "2023-11-14T22:13:20.000Z");
        assert_eq!(env["ROUTE_FAILOVER_HOST"], "ip-10-0-1-5");
        assert_eq!(env["ROUTE_FAILOVER_VERSION"], "1");
        assert!(env["ROUTE_FAILOVER_REASON"].starts_with("3 consecutive down rounds"));
        assert_eq!(env["ROUTE_FAILOVER_TEXT"], n.text);
    }

    #[test]
    fn findings_name_their_table_and_destination() {
        let route = ManagedRoute {
            route_table_id: "rtb-0123456789abcdef0".into(),
            destination: "10.1.0.0/16".parse().unwrap(),
            target_eni: "eni-0123456789abcdef0".into(),
        };
        let n = Notice::from_event(
            &Event::Finding(Finding::Blackhole { route }),
            &origin(),
            at(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&n.to_json()).unwrap();
        assert_eq!(json["event"], "finding");
        assert_eq!(json["finding"], "blackhole");
        assert_eq!(json["route_table_id"], "rtb-0123456789abcdef0");
        assert_eq!(json["destination"], "10.1.0.0/16");
        assert!(n.text.contains("is a blackhole"), "{}", n.text);
        let missing = Notice::from_event(
            &Event::Finding(Finding::TableMissing {
                route_table_id: "rtb-0123456789abcdef0".into(),
            }),
            &origin(),
            at(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&missing.to_json()).unwrap();
        assert!(json.get("destination").is_none());
    }

    #[test]
    fn the_pairs_findings_reach_hooks_on_the_anchor() {
        let n = Notice::from_event(
            &Event::PairFinding {
                kind: "ha_split_anchor",
                anchor: "rtb-0123456789abcdef0".into(),
                text: "agent b publishes on rtb-1, we read rtb-0123456789abcdef0".into(),
            },
            &origin(),
            at(),
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&n.to_json()).unwrap();
        assert_eq!(json["event"], "finding");
        assert_eq!(json["finding"], "ha_split_anchor");
        assert_eq!(json["route_table_id"], "rtb-0123456789abcdef0");
        assert!(
            n.text.contains("attention: agent b publishes"),
            "{}",
            n.text
        );
    }

    #[test]
    fn pinning_and_dry_runs_are_marked() {
        let dry = Origin {
            dry_run: true,
            ..origin()
        };
        let n = Notice::from_event(&Event::Pinned(true), &dry, at()).unwrap();
        assert_eq!(n.event, EventKind::Pinned);
        assert!(n
            .text
            .starts_with("[dry run] route-failover on ip-10-0-1-5: flap damping pinned"));
        let env: std::collections::HashMap<_, _> = n.env().into_iter().collect();
        assert_eq!(env["ROUTE_FAILOVER_PINNED"], "true");
        assert_eq!(env["ROUTE_FAILOVER_DRY_RUN"], "true");
    }

    #[test]
    fn routine_events_are_not_notices() {
        for event in [Event::Overran, Event::Reloaded] {
            assert!(Notice::from_event(&event, &origin(), at()).is_none());
        }
    }
}
