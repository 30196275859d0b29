//! The reconciler: compares the desired path with the route tables and
//! makes the calls needed, level-triggered. It re-reads after each change
//! and every `resync_interval`, retries failures with capped, jittered
//! backoff, and keeps the desired path until the tables match it. It runs
//! in a task of its own, so a slow or failing API never delays probing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::backoff::backoff;
use crate::cloud::{CloudError, ErrorKind, RouteApi};
use crate::config::{Config, ReconcileConfig};
use crate::events::{Event, Events, Outcome};
use crate::fsm::Via;
use crate::model::Action;
use crate::model::{table_ids, ManagedRoute};
use crate::plan::{self, Finding};

/// Route calls in flight at once during one reconcile pass. Enough to switch
/// many tables quickly, well under EC2's mutating-call burst.
const CONCURRENT_CALLS: usize = 8;
/// Passes (read, act, read again) per reconcile before waiting for a tick.
const MAX_PASSES: usize = 4;

/// What the reconciler manages; replaced whole on reload.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub(crate) routes: Vec<ManagedRoute>,
    pub(crate) table_ids: Vec<String>,
    pub(crate) settings: ReconcileConfig,
}

impl Spec {
    pub(crate) fn of(config: &Config) -> Self {
        Self {
            routes: config.routes.clone(),
            table_ids: table_ids(&config.routes),
            settings: config.reconcile.clone(),
        }
    }
}

pub(crate) struct Reconciler {
    api: Arc<dyn RouteApi>,
    spec: watch::Receiver<Spec>,
    events: Events,
    /// Findings already reported, so each is logged once while it lasts.
    reported: HashSet<String>,
    /// When the transition now being converged happened.
    transition_at: Option<Instant>,
}

impl Reconciler {
    pub(crate) fn new(api: Arc<dyn RouteApi>, spec: watch::Receiver<Spec>, events: Events) -> Self {
        Self {
            api,
            spec,
            events,
            reported: HashSet::new(),
            transition_at: None,
        }
    }

    /// Converges the tables on the desired path until `stop`.
    pub(crate) async fn run(
        mut self,
        mut desired: watch::Receiver<Option<(Via, Option<Instant>)>>,
        stop: CancellationToken,
    ) {
        let mut failures = 0u32;
        let mut converged_on = None;
        loop {
            let wanted = *desired.borrow_and_update();
            let resync = self.spec.borrow_and_update().settings.resync_interval;
            let wait = match wanted {
                // No round yet: no route changes without probe evidence.
                None => resync,
                Some((path, at)) => {
                    if at != self.transition_at {
                        self.transition_at = at;
                        converged_on = None;
                    }
                    match self.reconcile(path).await {
                        Ok(()) => {
                            failures = 0;
                            if converged_on != Some(path) {
                                converged_on = Some(path);
                                self.announce_converged(path);
                            }
                            resync
                        }
                        Err(()) => {
                            failures += 1;
                            backoff(failures, resync)
                        }
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                changed = desired.changed() => if changed.is_err() { return },
                changed = self.spec.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Logs and emits that the tables match `path`, with the time since the
    /// transition that asked for it.
    fn announce_converged(&self, path: Via) {
        let since = self.transition_at.map(|t| t.elapsed());
        match since {
            Some(d) => info!(
                %path,
                since_transition_ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                "route tables converged"
            ),
            None => info!(%path, "route tables converged"),
        }
        self.events.emit(Event::Converged {
            path,
            since_transition: since,
        });
    }

    /// Reads, plans and acts until the tables match `path`. `Err` means a
    /// call failed and the caller should retry after a backoff.
    async fn reconcile(&mut self, path: Via) -> Result<(), ()> {
        let spec = self.spec.borrow().clone();
        for _ in 0..MAX_PASSES {
            let observed = match self.api.describe_route_tables(&spec.table_ids).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(error = %e, "DescribeRouteTables failed; will retry");
                    self.events.emit(Event::ApiError {
                        op: "DescribeRouteTables",
                        error: e,
                    });
                    return Err(());
                }
            };
            let plan = plan::plan(path, &spec.routes, &observed, spec.settings.takeover);
            self.report(&plan.findings);
            if plan.actions.is_empty() {
                return Ok(());
            }
            let api = &self.api;
            let results: Vec<(Action, Result<Outcome, CloudError>, Duration)> =
                stream::iter(plan.actions)
                    .map(|action| async move {
                        let started = Instant::now();
                        let result = execute(api.as_ref(), &action).await;
                        (action, result, started.elapsed())
                    })
                    .buffer_unordered(CONCURRENT_CALLS)
                    .collect()
                    .await;
            let mut failed = false;
            for (action, result, latency) in results {
                match &result {
                    Ok(outcome) => info!(
                        op = action.op(),
                        route = %action.route(),
                        ?outcome,
                        latency_ms = latency.as_millis(),
                        "route changed"
                    ),
                    Err(e) => {
                        failed = true;
                        error!(op = action.op(), route = %action.route(), error = %e, "route change failed; will retry");
                    }
                }
                self.events.emit(Event::RouteChange {
                    action,
                    result,
                    latency,
                });
            }
            if failed {
                return Err(());
            }
        }
        Err(())
    }

    fn report(&mut self, findings: &[Finding]) {
        let current: HashSet<String> = findings.iter().map(ToString::to_string).collect();
        for finding in findings {
            let text = finding.to_string();
            if !self.reported.contains(&text) {
                warn!(finding = %text, "attention");
                self.events.emit(Event::Finding(finding.clone()));
            }
        }
        self.reported = current;
    }
}

/// Makes one call; "already there" and "already gone" count as converged.
async fn execute(api: &dyn RouteApi, action: &Action) -> Result<Outcome, CloudError> {
    let result = match action {
        Action::Create(r) => api.create_route(r).await,
        Action::Replace { route, .. } => api.replace_route(route).await,
        Action::Delete(r) => api.delete_route(&r.route_table_id, r.destination).await,
    };
    match (action, result) {
        (_, Ok(())) => Ok(Outcome::Done),
        (Action::Create(_), Err(e)) if e.kind == ErrorKind::RouteAlreadyExists => {
            Ok(Outcome::AlreadyConverged)
        }
        (Action::Delete(_), Err(e)) if e.kind == ErrorKind::RouteNotFound => {
            Ok(Outcome::AlreadyConverged)
        }
        (_, Err(e)) => Err(e),
    }
}
