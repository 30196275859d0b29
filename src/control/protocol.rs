//! What `ctl` and the agent say to each other: one JSON request line, one
//! JSON answer line, then the agent closes the connection.
//!
//! ```text
//! > {"command":"status"}
//! < {"result":"status","status":{"agent":{...},"path":"Primary",...}}
//! > {"command":"operate","action":"failover-hold"}
//! < {"result":"done","action":"failover-hold","answer":"holding Backup until `ctl release`"}
//! < {"result":"error","error":"..."}
//! ```
//!
//! Every field of [`Status`] has a default, so a `ctl` of another version
//! still reads what it knows of the answer.

use serde::{Deserialize, Serialize};

use crate::agent::OperatorAction;
use crate::fsm::Via;

/// A request line is at most this long (it is a few dozen bytes).
pub const MAX_REQUEST: usize = 4096;

/// An answer is at most this long (a status with hundreds of targets fits).
pub const MAX_ANSWER: usize = 4 << 20;

/// What a client asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The agent's live view. (A struct variant, so that unknown fields
    /// are refused here too.)
    Status {},
    /// An operator's action, carried out by the agent.
    Operate { action: OperatorAction },
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Answer {
    Status {
        status: Box<Status>,
    },
    /// The action was carried out; `answer` says what it did.
    Done {
        action: OperatorAction,
        answer: String,
    },
    /// The request was refused or could not be carried out.
    Error {
        error: String,
    },
}

/// One JSON line, newline-terminated.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("protocol types serialize");
    line.push(b'\n');
    line
}

/// Parses a request line, or says what is wrong with it.
pub fn decode_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line.trim()).map_err(|e| {
        format!(
            "not a request this agent understands ({e}); expected e.g. {{\"command\":\"status\"}}"
        )
    })
}

/// The agent's live view, as `ctl status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub agent: AgentView,
    /// The decided path: where traffic goes, or will once converged.
    /// `None` until the route tables have been read.
    pub path: Option<Via>,
    /// Why the path is what it is.
    pub why: String,
    pub state_machine: MachineView,
    pub operator: OperatorView,
    pub routes: RoutesView,
    pub probes: ProbesView,
    pub last_transition: Option<TransitionView>,
    pub last_api_error: Option<ApiErrorView>,
    pub backup: BackupView,
    /// What the last reconcile passes reported (foreign routes, missing
    /// tables, shadowing, held failbacks), newest first.
    pub findings: Vec<FindingView>,
    /// Other agents' verdicts (`[ha]`); `None` where there are no peers.
    pub peers: Option<Vec<PeerView>>,
    /// The route table whose tags carry the verdicts (`[ha]`).
    pub ha_anchor: Option<String>,
    /// How old the last read of the peers' verdicts is (`[ha]`): their
    /// liveness is as of that read.
    #[serde(default)]
    pub ha_read_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentView {
    pub pid: u32,
    pub version: String,
    pub config: String,
    /// `run --dry-run`: no route is ever changed.
    pub dry_run: bool,
    /// When the agent started (RFC 3339, UTC).
    pub started: String,
    pub uptime_seconds: f64,
    /// "icmp", or the label of a synthetic source.
    pub prober: String,
}

/// The hysteresis state machine's own view of the primary path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MachineView {
    /// Its verdict: `Backup` means it judges the primary down.
    pub verdict: Option<Via>,
    /// "unadopted" (tables not read yet), "partial" or "settled".
    pub phase: String,
    pub down_streak: u32,
    pub fall: u32,
    pub up_streak: u32,
    pub rise: u32,
    pub hold_down_left_seconds: Option<f64>,
    /// Flap damping holds Backup.
    pub pinned: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OperatorView {
    /// The path an operator holds (`ctl hold`, `ctl failover --hold`).
    pub hold: Option<Via>,
    /// No route calls (`ctl pause`).
    pub paused: bool,
    pub last_action: Option<ActionView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionView {
    pub action: OperatorAction,
    pub uid: Option<u32>,
    pub at: String,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutesView {
    /// The route tables have been read and adopted.
    pub tables_read: bool,
    /// What they showed at startup: "Primary", "Backup", "partial (…)" or
    /// (with `[ha]`) "undecided: a peer's Backup verdict explains …".
    pub adoption: Option<String>,
    /// The tables carry traffic the way `path` says.
    pub converged: bool,
    /// Why not, when not.
    pub why_not: Option<String>,
    /// Calls a paused agent or a dry run would make.
    pub pending: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbesView {
    /// The per-target figures cover up to this many of the last rounds.
    pub window: usize,
    pub interval_seconds: f64,
    pub last_round: Option<RoundView>,
    pub targets: Vec<TargetView>,
    /// Rounds that did not finish within their interval, since start.
    pub overruns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoundView {
    pub number: u64,
    pub up: bool,
    pub targets_down: u32,
    pub targets_total: u32,
    pub loss_ratio: f64,
    pub summary: String,
    pub age_seconds: f64,
    /// Set for synthetic rounds (the demo, tests).
    pub label: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetView {
    pub target: String,
    /// Rounds in the window, and how many of them found the target up.
    pub rounds: usize,
    pub up_rounds: usize,
    /// In the last round.
    pub up: bool,
    /// Echoes lost over the window, 0.0 to 1.0.
    pub loss_ratio: f64,
    pub rtt_min_ms: Option<f64>,
    pub rtt_avg_ms: Option<f64>,
    pub rtt_max_ms: Option<f64>,
    /// The last local error while sending, in the window.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionView {
    pub from: Via,
    pub to: Via,
    pub reason: String,
    pub at: String,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorView {
    pub op: String,
    /// EC2's error code, when it answered.
    pub code: Option<String>,
    pub error: String,
    pub at: String,
    pub age_seconds: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BackupView {
    /// "not watched", "unknown", "up" or "DOWN".
    pub state: String,
    /// The primary is down and the backup is known down.
    pub both_paths_down: bool,
    /// On the primary with the backup known down.
    pub no_redundancy: bool,
    /// `[backup]` is configured and a backup known down holds a failover.
    pub required: bool,
    /// The last appliance ENI check: "ok", "not checked yet", or each
    /// ENI's problem; `None` without `[backup]`.
    pub appliance: Option<String>,
    /// Seconds since that check; `None` before the first. It grows while
    /// DescribeNetworkInterfaces fails (the last verdict is kept).
    #[serde(default)]
    pub appliance_age_seconds: Option<f64>,
    /// The backup targets (over the VPN), over the window.
    pub targets: Vec<TargetView>,
    /// `failover.failback_requires_dx_route`.
    pub failback_guard: bool,
    /// Failbacks the guard holds now: "failback would blackhole …".
    pub failback_held: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingView {
    pub finding: String,
    pub age_seconds: f64,
}

/// Another agent's verdict, once `[ha]` exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub agent: String,
    pub verdict: Via,
    pub age_seconds: f64,
    pub live: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_small_tagged_json_lines() {
        let line = encode(&Request::Operate {
            action: OperatorAction::FailoverHold,
        });
        assert_eq!(
            String::from_utf8(line.clone()).unwrap(),
            "{\"command\":\"operate\",\"action\":\"failover-hold\"}\n"
        );
        assert!(line.len() < MAX_REQUEST);
        assert_eq!(
            decode_request(std::str::from_utf8(&line).unwrap()).unwrap(),
            Request::Operate {
                action: OperatorAction::FailoverHold
            }
        );
        assert_eq!(
            decode_request("{\"command\":\"status\"}").unwrap(),
            Request::Status {}
        );
        for (action, name) in [
            (OperatorAction::Hold, "hold"),
            (OperatorAction::Release, "release"),
            (OperatorAction::Failback, "failback"),
            (OperatorAction::Pause, "pause"),
            (OperatorAction::Resume, "resume"),
        ] {
            let text = format!("{{\"command\":\"operate\",\"action\":\"{name}\"}}");
            assert_eq!(decode_request(&text).unwrap(), Request::Operate { action });
        }
    }

    #[test]
    fn a_request_it_does_not_know_is_refused_with_an_example() {
        for bad in [
            "",
            "status",
            "{\"command\":\"reboot\"}",
            "{\"command\":\"operate\",\"action\":\"delete-everything\"}",
            "{\"command\":\"status\",\"extra\":1}",
        ] {
            let e = decode_request(bad).unwrap_err();
            assert!(e.contains("{\"command\":\"status\"}"), "{bad}: {e}");
        }
    }

    #[test]
    fn answers_round_trip_and_an_older_status_still_reads() {
        let status = Status {
            path: Some(Via::Backup),
            why: "an operator holds this path until released".into(),
            operator: OperatorView {
                hold: Some(Via::Backup),
                paused: true,
                last_action: None,
            },
            ..Status::default()
        };
        for answer in [
            Answer::Status {
                status: Box::new(status),
            },
            Answer::Done {
                action: OperatorAction::Pause,
                answer: "paused".into(),
            },
            Answer::Error { error: "no".into() },
        ] {
            let line = encode(&answer);
            let back: Answer = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, answer);
        }
        // Fields it does not know are ignored, missing ones take defaults.
        let text = r#"{"result":"status","status":{"path":"Primary","future":{"x":1}}}"#;
        let Answer::Status { status } = serde_json::from_str(text).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(status.path, Some(Via::Primary));
        assert!(!status.operator.paused);
    }
}
