//! systemd notifications (`Type=notify`): READY as soon as probing runs
//! (the route tables are read whenever the API answers), WATCHDOG on every probe round (a stuck probe loop gets
//! restarted), STATUS with the path and the last round. Without
//! `NOTIFY_SOCKET` (not under systemd) each call does nothing.

use sd_notify::NotifyState;
use tracing::debug;

use crate::events::{Event, Sink};

fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

fn notify(states: &[NotifyState<'_>]) {
    if !under_systemd() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// The sink that tells systemd about events.
pub struct SystemdSink;

impl Sink for SystemdSink {
    fn record(&self, event: &Event) {
        record(event);
    }
}

/// Tells systemd what an event means for the service.
fn record(event: &Event) {
    // Skip building status lines nobody will read.
    if !under_systemd() {
        return;
    }
    match event {
        // Ready as soon as probing runs: reading the tables may take as
        // long as the EC2 API is unreachable, and probing must not wait.
        Event::Started { .. } => notify(&[
            NotifyState::Ready,
            NotifyState::Status("probing; waiting for the EC2 API to read the route tables"),
        ]),
        Event::Adopted { adoption, ours } => {
            let status = format!(
                "route tables read: {adoption}, {} of our routes found",
                ours.len()
            );
            notify(&[NotifyState::Status(&status)]);
        }
        Event::Diverged { path, why } => {
            let status = format!("path {path}, NOT converged: {why}");
            notify(&[NotifyState::Status(&status)]);
        }
        Event::Round {
            number,
            summary,
            path,
            ..
        } => {
            let status = format!(
                "path {path}; round {number} {}: {summary}",
                if summary.up { "up" } else { "DOWN" }
            );
            notify(&[NotifyState::Watchdog, NotifyState::Status(&status)]);
        }
        Event::Transition(t) => {
            let status = format!("{} -> {}: {}", t.from, t.to, t.reason);
            notify(&[NotifyState::Status(&status)]);
        }
        Event::Reloaded => notify(&[NotifyState::Status("configuration reloaded")]),
        _ => {}
    }
}

/// Tells systemd the service is stopping, so it does not expect a watchdog ping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}
