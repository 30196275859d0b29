//! Prometheus metrics, named in the spirit of blackbox_exporter, recorded
//! from the agent's events. Nothing is recorded (and it costs next to
//! nothing) unless `[metrics] listen` installs the exporter.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::backup::Appliance;
use crate::decide::{BackupState, Operator};
use crate::events::{Event, Outcome, Sink};
use crate::fsm::Via;
use crate::model::Adoption;
use crate::plan::Finding;

/// RTT buckets from loopback to a slow VPN, in seconds.
const RTT_BUCKETS: &[f64] = &[
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];
const API_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Set once the exporter is installed; until then events are not even
/// turned into label strings.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The exporter's settings (histogram buckets), shared by [`install`] and
/// [`render`] so both export the same series.
fn builder() -> Result<PrometheusBuilder, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("route_failover_probe_rtt_seconds".into()),
            RTT_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("route_failover_route_api_call_duration_seconds".into()),
                API_BUCKETS,
            )
        })
        .map_err(|e| e.to_string())
}

/// Serves `/metrics` on `listen` (127.0.0.1 unless the operator says otherwise).
pub fn install(listen: SocketAddr) -> Result<(), String> {
    builder()?
        .with_http_listener(listen)
        .install()
        .map_err(|e| format!("cannot serve metrics on {listen}: {e}"))?;
    INSTALLED.store(true, Ordering::Relaxed);
    register_always();
    Ok(())
}

/// What `/metrics` would serve after `events` (and with `hooks`, as
/// (kind, name), registered), in the Prometheus text format, without
/// installing anything: lets tests check that the shipped alert
/// rules and dashboard only name series the agent really exports.
pub fn render(events: &[Event], hooks: &[(&'static str, &str)]) -> Result<String, String> {
    let recorder = builder()?.build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        events.iter().for_each(record);
        for (kind, hook) in hooks {
            register_hook(kind, hook);
        }
        register_always();
    });
    Ok(handle.render())
}

fn path_label(path: Via) -> &'static str {
    match path {
        Via::Primary => "primary",
        Via::Backup => "backup",
    }
}

fn set_path(path: Via) {
    for p in [Via::Primary, Via::Backup] {
        gauge!("route_failover_path", "path" => path_label(p)).set(f64::from(u8::from(p == path)));
    }
}

/// `route_failover_backup_up`: 1 up, 0 known down, NaN while unknown or
/// not watched (a reload may remove `[backup]`: no stale 0 stays behind),
/// so that an alert on `== 0` means known down.
/// `route_failover_backup_state` says which, unknown included (all 0 when
/// not watched); `route_failover_appliance_ok` is NaN when not watched.
fn set_backup_state(state: BackupState) {
    gauge!("route_failover_backup_up").set(match state {
        BackupState::Up => 1.0,
        BackupState::Down => 0.0,
        BackupState::Unknown | BackupState::Unwatched => f64::NAN,
    });
    if state == BackupState::Unwatched {
        gauge!("route_failover_appliance_ok").set(f64::NAN);
    }
    for (s, label) in [
        (BackupState::Up, "up"),
        (BackupState::Down, "down"),
        (BackupState::Unknown, "unknown"),
    ] {
        gauge!("route_failover_backup_state", "state" => label)
            .set(f64::from(u8::from(s == state)));
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The sink that turns events into metrics.
pub struct MetricsSink;

impl Sink for MetricsSink {
    fn record(&self, event: &Event) {
        if INSTALLED.load(Ordering::Relaxed) {
            record(event);
        }
    }
}

/// Updates the metrics an event speaks of, in the current recorder.
fn record(event: &Event) {
    match event {
        Event::Started {
            operator, paused, ..
        } => {
            gauge!("route_failover_routes_converged").set(0.0);
            // A hold or pause restored from the last run shows from the start.
            operator_gauges(*operator, *paused);
        }
        Event::Adopted { adoption, .. } => set_path(match adoption {
            Adoption::Primary => Via::Primary,
            Adoption::Backup | Adoption::Partial { .. } => Via::Backup,
        }),
        Event::Round {
            summary,
            targets,
            policy,
            standing,
            ..
        } => {
            set_backup_state(standing.backup);
            gauge!("route_failover_round_up").set(f64::from(u8::from(summary.up)));
            counter!("route_failover_rounds_total", "result" => if summary.up { "up" } else { "down" })
                .increment(1);
            for t in targets {
                let target = t.target.to_string();
                gauge!("route_failover_probe_success", "target" => target.clone())
                    .set(f64::from(u8::from(t.is_up(*policy))));
                gauge!("route_failover_probe_loss_ratio", "target" => target.clone()).set(t.loss());
                // A round stops sending to a target once it is up (early
                // stop), so one round's ratio leans on few echoes; these
                // counters give the loss over any window.
                counter!("route_failover_probe_echoes_total", "target" => target.clone())
                    .increment(u64::from(t.sent));
                counter!("route_failover_probe_replies_total", "target" => target.clone())
                    .increment(u64::from(t.received()));
                // A local send failure ("network unreachable", no permission)
                // makes the target look down without the network saying so.
                if t.error.is_some() {
                    counter!("route_failover_probe_errors_total", "target" => target.clone())
                        .increment(1);
                }
                for rtt in &t.rtts {
                    histogram!("route_failover_probe_rtt_seconds", "target" => target.clone())
                        .record(rtt.as_secs_f64());
                }
            }
        }
        Event::BackupRound {
            summary,
            targets,
            policy,
            state,
            ..
        } => {
            set_backup_state(*state);
            gauge!("route_failover_backup_round_up").set(f64::from(u8::from(summary.up)));
            for t in targets {
                let target = t.target.to_string();
                gauge!("route_failover_backup_probe_success", "target" => target.clone())
                    .set(f64::from(u8::from(t.is_up(*policy))));
                gauge!("route_failover_backup_probe_loss_ratio", "target" => target.clone())
                    .set(t.loss());
                counter!("route_failover_backup_probe_echoes_total", "target" => target.clone())
                    .increment(u64::from(t.sent));
                counter!("route_failover_backup_probe_replies_total", "target" => target)
                    .increment(u64::from(t.received()));
            }
        }
        Event::ApplianceChecked(appliance) => match appliance {
            Appliance::Ok => gauge!("route_failover_appliance_ok").set(1.0),
            Appliance::Failed(_) => gauge!("route_failover_appliance_ok").set(0.0),
            Appliance::Unknown => {}
        },
        Event::Overran => counter!("route_failover_rounds_overrun_total").increment(1),
        Event::Transition(t) => {
            set_path(t.to);
            counter!("route_failover_transitions_total", "to" => path_label(t.to)).increment(1);
            gauge!("route_failover_last_transition_timestamp_seconds").set(unix_now());
            gauge!("route_failover_routes_converged").set(0.0);
            // A new transition: the guard will be judged again, if at all.
            gauge!("route_failover_failback_held").set(0.0);
        }
        Event::Pinned(pinned) => {
            gauge!("route_failover_flap_pinned").set(f64::from(u8::from(*pinned)))
        }
        Event::RouteChange {
            action,
            result,
            latency,
        } => {
            let result = match result {
                Ok(Outcome::Done) => "ok".to_string(),
                Ok(Outcome::AlreadyConverged) => "already_converged".to_string(),
                Err(e) => e.code.clone().unwrap_or_else(|| format!("{:?}", e.kind)),
            };
            counter!("route_failover_route_api_calls_total", "op" => action.op(), "result" => result)
                .increment(1);
            histogram!("route_failover_route_api_call_duration_seconds", "op" => action.op())
                .record(latency.as_secs_f64());
        }
        Event::ApiError { op, error } => {
            let result = error
                .code
                .clone()
                .unwrap_or_else(|| format!("{:?}", error.kind));
            counter!("route_failover_route_api_calls_total", "op" => *op, "result" => result)
                .increment(1);
        }
        Event::Converged { .. } => {
            gauge!("route_failover_routes_converged").set(1.0);
            gauge!("route_failover_failback_held").set(0.0);
        }
        Event::Diverged { .. } | Event::Intended { .. } => {
            gauge!("route_failover_routes_converged").set(0.0);
        }
        Event::Finding(Finding::FailbackHeld { .. }) => {
            gauge!("route_failover_failback_held").set(1.0);
            counter!("route_failover_failback_holds_total").increment(1);
        }
        Event::Alarms(alarms) => {
            gauge!("route_failover_both_paths_down").set(f64::from(u8::from(alarms.both_down)));
            gauge!("route_failover_no_redundancy").set(f64::from(u8::from(alarms.no_redundancy)));
        }
        Event::Operator {
            action,
            operator,
            paused,
            ..
        } => {
            counter!("route_failover_operator_actions_total", "action" => action.name())
                .increment(1);
            operator_gauges(*operator, *paused);
        }
        Event::Peers(view) => {
            use crate::peers::Liveness;
            for (state, liveness) in [("live", Liveness::Live), ("stale", Liveness::Stale)] {
                gauge!("route_failover_ha_peers", "state" => state)
                    .set(view.count(liveness) as f64);
            }
            for (which, path) in [("local", view.local), ("combined", view.combined)] {
                for p in [Via::Primary, Via::Backup] {
                    gauge!("route_failover_ha_path", "view" => which, "path" => path_label(p))
                        .set(f64::from(u8::from(p == path)));
                }
            }
            gauge!("route_failover_ha_disagreement")
                .set(f64::from(u8::from(view.disagreement.is_some())));
            gauge!("route_failover_ha_duplicate_id")
                .set(f64::from(u8::from(view.duplicate.is_some())));
            gauge!("route_failover_ha_split_anchor").set(f64::from(u8::from(view.split.is_some())));
        }
        // Exported from the pair's view (Peers) and the held failbacks.
        Event::Finding(_) | Event::Reloaded | Event::Settled { .. } | Event::PairFinding { .. } => {
        }
    }
}

/// Counters that exist from the start, at zero, so alerts on their
/// increase see the first one.
fn register_always() {
    counter!("route_failover_probe_socket_drops_total").increment(0);
}

/// Replies (or other packets) the kernel dropped because an ICMP socket's
/// receive buffer was full: echoes that then count as lost.
pub fn probe_socket_drops(n: u64) {
    if INSTALLED.load(Ordering::Relaxed) {
        counter!("route_failover_probe_socket_drops_total").increment(n);
    }
}

/// Creates a hook's counters at zero, so alerts on their increase see the
/// first failure.
pub fn notify_register(kind: &'static str, hook: &str) {
    if INSTALLED.load(Ordering::Relaxed) {
        register_hook(kind, hook);
    }
}

fn register_hook(kind: &'static str, hook: &str) {
    counter!("route_failover_notify_sent_total", "kind" => kind, "hook" => hook.to_string())
        .increment(0);
    counter!("route_failover_notify_failures_total", "kind" => kind, "hook" => hook.to_string())
        .increment(0);
}

/// A notice delivered by a `[[notify]]` hook.
pub fn notify_sent(kind: &'static str, hook: &str) {
    if INSTALLED.load(Ordering::Relaxed) {
        counter!("route_failover_notify_sent_total", "kind" => kind, "hook" => hook.to_string())
            .increment(1);
    }
}

/// `n` notices a hook failed to deliver, dropped, or left at shutdown.
pub fn notify_failed(kind: &'static str, hook: &str, n: u64) {
    if INSTALLED.load(Ordering::Relaxed) {
        counter!("route_failover_notify_failures_total", "kind" => kind, "hook" => hook.to_string())
            .increment(n);
    }
}

fn operator_gauges(operator: Operator, paused: bool) {
    for p in [Via::Primary, Via::Backup] {
        let held = operator == Operator::Hold(p);
        gauge!("route_failover_operator_hold", "path" => path_label(p))
            .set(f64::from(u8::from(held)));
    }
    gauge!("route_failover_paused").set(f64::from(u8::from(paused)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_round(state: BackupState) -> Event {
        Event::BackupRound {
            number: 1,
            summary: crate::probe::RoundSummary::synthetic(state == BackupState::Up),
            targets: Vec::new(),
            policy: crate::probe::RoundPolicy {
                min_replies: 1,
                quorum: 1,
            },
            state,
        }
    }

    /// Split so that tests/deploy.rs's scan of this file for recorded
    /// metric names sees only the real ones.
    const PREFIX: &str = concat!("route", "_failover_");

    /// The value `series` (a name without the prefix) has in `text`.
    fn value(text: &str, series: &str) -> Option<String> {
        let name = format!("{PREFIX}{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(name.as_str()).map(str::to_string))
    }

    #[test]
    fn a_backup_no_longer_watched_leaves_no_stale_down() {
        let down = [
            Event::ApplianceChecked(Appliance::Failed(Vec::new())),
            backup_round(BackupState::Down),
        ];
        let text = render(&down, &[]).unwrap();
        assert_eq!(value(&text, "backup_up").as_deref(), Some("0"));
        let mut gone = down.to_vec();
        gone.push(backup_round(BackupState::Unwatched));
        let text = render(&gone, &[]).unwrap();
        assert_eq!(value(&text, "backup_up").as_deref(), Some("NaN"));
        assert_eq!(value(&text, "appliance_ok").as_deref(), Some("NaN"));
        let state = format!("{PREFIX}{}", "backup_state{state=\"down\"} 0");
        assert!(text.contains(&state), "{text}");
    }
}
