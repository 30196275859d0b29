//! The backup facts the reconciler learns for the probe loop's judge: the
//! appliance check (every resync, in a task of its own) and the count of
//! our routes that are blackholes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Reconciler, Spec};
use crate::backup::{check_appliance, Appliance, BackupFact};
use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::events::{Event, Events};
use crate::plan::Finding;

/// Longest wait for one appliance check: the startup check holds the
/// adoption, and a hung call must be reported rather than waited on.
const APPLIANCE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks the appliance ENIs with one DescribeNetworkInterfaces per
/// resync, and at once when the spec changes. A failed or hung call keeps
/// the last verdict: the API being unreachable says nothing about the
/// appliance.
pub(super) struct ApplianceWatch {
    pub(super) api: Arc<dyn RouteApi>,
    pub(super) events: Events,
    /// Whether the last check failed to run (logged once).
    pub(super) unread: bool,
}

impl ApplianceWatch {
    /// One check of `enis`; `None` when there is none to check or the call
    /// failed or timed out.
    pub(super) async fn check(&mut self, enis: &[String]) -> Option<Appliance> {
        if enis.is_empty() {
            return None;
        }
        let call = self.api.describe_network_interfaces(enis);
        let error = match tokio::time::timeout(APPLIANCE_CHECK_TIMEOUT, call).await {
            Ok(Ok(found)) => {
                if self.unread {
                    info!("the appliance ENIs can be read again");
                    self.unread = false;
                }
                return Some(check_appliance(enis, &found));
            }
            Ok(Err(e)) => e,
            Err(_) => CloudError::new(
                ErrorKind::Transient,
                None,
                format!("no answer within {APPLIANCE_CHECK_TIMEOUT:?}"),
            ),
        };
        if !self.unread {
            warn!(error = %error, "cannot check the appliance ENIs; keeping the last verdict, retrying every resync");
            self.unread = true;
        }
        self.events.emit(Event::ApiError {
            op: "DescribeNetworkInterfaces",
            error,
        });
        None
    }

    /// Checks every resync (the first at `first`, `None`: at once) until
    /// `stop`, sending each verdict to `facts`.
    pub(super) async fn run(
        mut self,
        mut spec: watch::Receiver<Spec>,
        facts: mpsc::UnboundedSender<BackupFact>,
        stop: CancellationToken,
        first: Option<Instant>,
    ) {
        let mut due = first.unwrap_or_else(Instant::now);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = spec.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // A reload may add ENIs or the section itself: check now.
                }
                () = tokio::time::sleep_until(due) => {}
            }
            let current = spec.borrow_and_update().clone();
            let checked = tokio::select! {
                () = stop.cancelled() => return,
                checked = self.check(&current.appliance_enis) => checked,
            };
            if let Some(appliance) = checked {
                if facts.send(BackupFact::Appliance(appliance)).is_err() {
                    // The probe loop stopped first: nobody left to tell.
                    return;
                }
            }
            due = Instant::now() + current.settings.resync_interval;
        }
    }
}

impl Reconciler {
    fn send_fact(&self, fact: BackupFact) {
        if let Some(tx) = &self.facts {
            // The probe loop stopped first: nobody left to tell.
            let _ = tx.send(fact);
        }
    }

    /// Sends how many of our routes are blackholes, when that changed.
    pub(super) fn count_blackholes(&mut self, findings: &[Finding]) {
        let n = findings
            .iter()
            .filter(|f| matches!(f, Finding::Blackhole { .. }))
            .count();
        if self.blackholes != Some(n) {
            self.blackholes = Some(n);
            self.send_fact(BackupFact::Blackholes(n));
        }
    }
}
