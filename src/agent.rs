//! The agent: probe → state machine → planner → route API.
//!
//! Two tasks. The probe loop runs one round per `interval` on a monotonic
//! ticker, feeds the state machine and publishes the desired path. The
//! reconciler compares that path with the route tables and makes the calls
//! needed, re-reading after each change and every `resync_interval`. A slow
//! or failing API therefore never delays probing, and a failed call is
//! simply retried: the desired path is kept until the tables match it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backoff::backoff;
use crate::cloud::{CloudError, RouteApi};
use crate::config::Config;
use crate::events::{Event, Events, Sink};
use crate::fsm::{Fsm, Via};
use crate::model::{table_ids, ManagedRoute, RouteTable};
use crate::plan::{self};
use crate::probe::{summarize, Prober, RoundReport, TargetReport};
use crate::reconcile::{Reconciler, Spec};

/// How long shutdown waits for an in-flight API call to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "startup check failed: {0}; check routes[].route_table_id and target_eni in the config"
    )]
    Startup(CloudError),
}

/// Requests an operator can make of a running agent.
pub enum Request {
    /// Allow failback to Primary once `rise` good rounds are in hand.
    Failback,
    /// Switch to a new, already validated configuration. `prober` is set
    /// when the probe settings changed and new sockets were opened.
    Reload {
        config: Box<Config>,
        prober: Option<Box<dyn Prober>>,
    },
}

/// A cheap handle to send [`Request`]s to a running agent.
#[derive(Debug, Clone)]
pub struct Control(mpsc::UnboundedSender<Request>);

impl Control {
    pub fn request_failback(&self) {
        // The agent may have stopped; then there is nothing to fail back.
        let _ = self.0.send(Request::Failback);
    }

    /// Hands a new configuration to the agent (see [`Request::Reload`]).
    pub fn reload(&self, config: Config, prober: Option<Box<dyn Prober>>) {
        let _ = self.0.send(Request::Reload {
            config: Box::new(config),
            prober,
        });
    }
}

/// The agent, built from a validated config, a prober and a route API.
pub struct Agent {
    config: Config,
    prober: Box<dyn Prober>,
    api: Arc<dyn RouteApi>,
    events: Events,
    requests: mpsc::UnboundedReceiver<Request>,
    control: Control,
}

impl Agent {
    pub fn new(config: Config, prober: Box<dyn Prober>, api: Arc<dyn RouteApi>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            config,
            prober,
            api,
            events: Events::none(),
            requests: rx,
            control: Control(tx),
        }
    }

    /// Sends every [`Event`] to `tx` as well.
    pub fn with_events(self, tx: mpsc::UnboundedSender<Event>) -> Self {
        self.with_sink(Arc::new(tx))
    }

    /// Adds a sink that every [`Event`] goes to.
    pub fn with_sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.events = self.events.with(sink);
        self
    }

    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// Runs until `shutdown` is cancelled. Routes are left as they are on
    /// exit: stopping the agent never moves traffic.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let table_ids = table_ids(&self.config.routes);
        let Some(observed) =
            read_until_ok(self.api.as_ref(), &table_ids, &self.events, &shutdown).await?
        else {
            return Ok(());
        };
        let adopted: Vec<ManagedRoute> = plan::ours(&self.config.routes, &observed)
            .cloned()
            .collect();
        let path = if adopted.is_empty() {
            Via::Primary
        } else {
            Via::Backup
        };
        info!(
            %path,
            adopted = adopted.len(),
            prober = %self.prober.describe(),
            "started: adopted the path the route tables show"
        );
        self.events.emit(Event::Started {
            path,
            adopted,
            prober: self.prober.describe(),
        });

        let (desired_tx, desired_rx) = watch::channel(None);
        let (spec_tx, spec_rx) = watch::channel(Spec::of(&self.config));
        let reconciler = Reconciler::new(Arc::clone(&self.api), spec_rx, self.events.clone());
        let stop_reconciler = CancellationToken::new();
        let reconciler = tokio::spawn(reconciler.run(desired_rx, stop_reconciler.clone()));

        self.probe_loop(path, &desired_tx, &spec_tx, &shutdown)
            .await;

        crate::systemd::stopping();
        stop_reconciler.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, reconciler)
            .await
            .is_err()
        {
            warn!("an API call was still in flight after {SHUTDOWN_GRACE:?}; abandoned it");
        }
        info!("stopped; routes left as they are");
        Ok(())
    }

    async fn probe_loop(
        &mut self,
        start: Via,
        desired: &watch::Sender<Option<(Via, Option<Instant>)>>,
        spec: &watch::Sender<Spec>,
        shutdown: &CancellationToken,
    ) {
        let mut fsm = Fsm::new(self.config.policy.clone(), start, Instant::now());
        let ticker_for = |interval| {
            let mut ticker = tokio::time::interval(interval);
            // A late round skips ticks rather than bunching rounds up.
            ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
            ticker
        };
        let mut ticker = ticker_for(self.config.probe.interval);
        let mut number = 0u64;
        // Logged when it changes, not every round.
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(command) = self.requests.recv() => match command {
                    Request::Failback => {
                        info!("operator asked for failback");
                        fsm.request_failback();
                    }
                    Request::Reload { config, prober } => {
                        if let Some(prober) = prober {
                            self.prober = prober;
                        }
                        if config.probe.interval != self.config.probe.interval {
                            ticker = ticker_for(config.probe.interval);
                        }
                        fsm.set_policy(config.policy.clone());
                        let new_spec = Spec::of(&config);
                        for gone in spec.borrow().routes.iter().filter(|r| !new_spec.routes.contains(r)) {
                            warn!(route = %gone, "no longer managed: left as it is in its table");
                        }
                        spec.send_replace(new_spec);
                        self.config = *config;
                        info!(config = %self.config.source.display(), "configuration reloaded");
                        self.events.emit(Event::Reloaded);
                    }
                },
                _ = ticker.tick() => {
                    number += 1;
                    let probe = &self.config.probe;
                    let report = match tokio::time::timeout(probe.interval, self.prober.round()).await {
                        Ok(report) => report,
                        Err(_) => {
                            self.events.emit(Event::Overran);
                            overran(&probe.targets, probe.count)
                        }
                    };
                    let now = Instant::now();
                    let error = report
                        .targets
                        .iter()
                        .find_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.target)));
                    if error != last_error {
                        match &error {
                            Some(e) => warn!(error = %e, "probes are failing to send"),
                            None => info!("probes are sending again"),
                        }
                        last_error = error;
                    }
                    let summary = summarize(&report, probe.round);
                    let step = fsm.observe(now, &summary);
                    debug!(round = number, up = summary.up, %summary, "round");
                    self.events.emit(Event::Round {
                        number,
                        at: now,
                        summary,
                        targets: report.targets,
                        policy: probe.round,
                        label: report.label,
                        path: fsm.path(),
                    });
                    if let Some(pinned) = step.pinned_changed {
                        if pinned {
                            error!(
                                max_failovers = fsm.policy().max_failovers,
                                "flapping: pinned on Backup until the flap window clears or an operator asks for failback"
                            );
                        } else {
                            info!("flap window cleared: automatic failback allowed again");
                        }
                        self.events.emit(Event::Pinned(pinned));
                    }
                    let at = match step.transition {
                        Some(t) => {
                            warn!(from = %t.from, to = %t.to, reason = %t.reason, "transition");
                            let at = t.at;
                            self.events.emit(Event::Transition(t));
                            Some(at)
                        }
                        None => desired.borrow().and_then(|(_, at)| at),
                    };
                    // The first round is the evidence the reconciler waits for.
                    desired.send_if_modified(|d| {
                        let new = Some((fsm.path(), at));
                        let changed = *d != new;
                        *d = new;
                        changed
                    });
                }
            }
        }
    }
}

/// A round that did not finish in its interval: nothing answered in time.
fn overran(targets: &[std::net::IpAddr], count: u32) -> RoundReport {
    RoundReport {
        targets: targets
            .iter()
            .map(|&target| TargetReport {
                target,
                sent: count,
                rtts: Vec::new(),
                error: Some("round overran its interval".to_string()),
            })
            .collect(),
        label: None,
    }
}

/// Reads the managed tables at startup, retrying what may pass. Returns
/// `None` if shutdown came first.
async fn read_until_ok(
    api: &dyn RouteApi,
    ids: &[String],
    events: &Events,
    shutdown: &CancellationToken,
) -> Result<Option<Vec<RouteTable>>, AgentError> {
    let mut failures = 0;
    loop {
        match api.describe_route_tables(ids).await {
            Ok(tables) => return Ok(Some(tables)),
            Err(e) if !e.kind.is_retryable() => return Err(AgentError::Startup(e)),
            Err(e) => {
                failures += 1;
                warn!(error = %e, "cannot read the route tables yet; retrying");
                events.emit(Event::ApiError {
                    op: "DescribeRouteTables",
                    error: e,
                });
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(backoff(failures, Duration::from_secs(30))) => {}
        }
    }
}
