//! `route-failover run`: the daemon's wiring.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{connect, own_subnet};
use crate::agent::{Agent, AgentError, Control};
use crate::cloud::dry_run::DryRun;
use crate::cloud::RouteApi;
use crate::config::{Config, ConfigError, EXIT_CONFIG};
use crate::control::{self, snapshot::StatusSink};
use crate::detect::DetectorKind;
use crate::guard::{self, GuardError, Verdict};
use crate::instance::Instance;
use crate::lock::{self, AgentLocks};
use crate::metrics::{self, MetricsSink};
use crate::model::table_ids;
use crate::notify::{Notifier, Origin};
use crate::probe::icmp::IcmpProber;
use crate::probe::silence::SilenceProber;
use crate::probe::Prober;
use crate::reconcile::{CheckFailure, StartupCheck};
use crate::signals;
use crate::state::{Ledger, OperatorStore};
use crate::systemd::SystemdSink;

async fn run_guard(
    config: &Config,
    api: &dyn RouteApi,
    subnet: Option<&str>,
) -> Result<(), GuardError> {
    match guard::check(api, subnet, &config.routes, config.aws.allow_self_subnet).await? {
        Verdict::Clear { subnet, table } => info!(%subnet, %table, "self-subnet guard: own table is not managed"),
        Verdict::Allowed { subnet, table } => warn!(
            %subnet, %table,
            "self-subnet guard: own table IS managed; allowed by aws.allow_self_subnet"
        ),
        Verdict::Skipped => warn!(
            "self-subnet guard skipped: own subnet unknown (not on EC2?); set aws.own_subnet_id to enable it"
        ),
    }
    Ok(())
}

/// The self-subnet guard as the agent's startup check: run before the
/// tables are first read, retried while the API cannot answer, and a
/// refusal when the own subnet's table is managed.
fn guard_check(config: &Config, api: &Arc<dyn RouteApi>, subnet: Option<String>) -> StartupCheck {
    let (config, api) = (config.clone(), Arc::clone(api));
    Box::new(move || {
        let (config, api, subnet) = (config.clone(), Arc::clone(&api), subnet.clone());
        Box::pin(async move {
            match run_guard(&config, api.as_ref(), subnet.as_deref()).await {
                Ok(()) => Ok(()),
                Err(GuardError::Api { error, .. }) if error.kind.is_retryable() => {
                    Err(CheckFailure::Retry {
                        kind: error.kind,
                        message: format!("self-subnet guard: {error}"),
                    })
                }
                Err(e) => Err(CheckFailure::Refuse(e.to_string())),
            }
        })
    })
}

/// Under systemd's watchdog (`WATCHDOG_USEC` set for this process), the
/// probe interval must leave room for several pings per watchdog timeout.
fn check_watchdog(config: &Config) -> Result<(), ConfigError> {
    match sd_notify::watchdog_enabled() {
        Some(watchdog) => config.check_watchdog(watchdog),
        None => Ok(()),
    }
}

pub async fn run(path: &Path, dry_run: bool) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(path)?;
    check_watchdog(&config)?;
    // Held until the process exits: one per config, one per managed table
    // (per agent id with `[ha]`), so no other agent on this host manages them.
    let locks = Arc::new(Mutex::new(lock::acquire(
        &config.source,
        &table_ids(&config.routes),
        config.ha.as_ref().and_then(|h| h.agent_id.as_deref()),
    )?));
    // Before anything else is set up: a socket another agent answers on
    // stops this one here.
    let socket = control::socket_path(&config.control);
    let socket = control::server::bind(&socket, config.control.group.as_ref())
        .context("cannot set up the control socket")?;
    if let Some(listen) = config.metrics_listen {
        metrics::install(listen).map_err(anyhow::Error::msg)?;
        info!(%listen, "serving Prometheus metrics on /metrics");
    }
    let notifier = Arc::new(
        Notifier::start(&config.notify, Origin::local(dry_run), env_var)
            .map_err(|(key, why)| ConfigError::at_key(&config, key, why))?,
    );
    let (mut api, instance) = connect(&config).await?;
    resolve_agent_id(&mut config).await?;
    // A metadata service that answered but failed is not "off EC2": refuse
    // now, before probing, rather than skip the guard.
    let subnet = own_subnet(&config, &instance)?.map(str::to_string);
    let check = guard_check(&config, &api, subnet);
    // A dry run records nothing: it creates nothing.
    let (ledger, operator) = if dry_run {
        api = Arc::new(DryRun::new(api, config.aws.region.clone()));
        (Ledger::in_memory(), OperatorStore::in_memory())
    } else {
        let ledger = Ledger::for_config(&config.source)?;
        if let Some(path) = ledger.path() {
            info!(ledger = %path.display(), "ownership ledger");
        }
        (ledger, OperatorStore::for_config(&config.source))
    };
    let prober = icmp_prober(&config).context("cannot start probing")?;
    // A corrupt record stops the agent just below; the view starts empty then.
    let restored = operator.load().unwrap_or_default();
    let (status_sink, status_view) = control::snapshot::channel(&config, dry_run, restored);
    let agent = Agent::new(config.clone(), prober, Arc::clone(&api))
        .with_exact_ticks()
        .with_ledger(ledger)
        .with_operator_store(operator)?
        .with_startup_check(check)
        .with_sink(Arc::new(MetricsSink))
        .with_sink(Arc::new(SystemdSink))
        .with_sink(Arc::clone(&notifier) as _)
        .with_sink(Arc::new(status_sink.clone()));
    let shutdown = CancellationToken::new();
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    let control = agent.control();
    signals::install(shutdown.clone(), control.clone(), reload_tx)
        .context("cannot install signal handlers")?;
    let stop_serving = CancellationToken::new();
    let server = tokio::spawn(control::server::serve(
        socket,
        control.clone(),
        status_view,
        stop_serving.clone(),
    ));
    let reload_locks = Arc::clone(&locks);
    let hooks = Arc::clone(&notifier);
    tokio::spawn(async move {
        let mut running = config;
        while reload_rx.recv().await.is_some() {
            match reload(
                &running,
                api.as_ref(),
                &instance,
                &control,
                &reload_locks,
                &hooks,
                &status_sink,
            )
            .await
            {
                Ok(new) => running = new,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "reload rejected; the running configuration stays")
                }
            }
        }
    });
    let stopped = agent.run(shutdown).await;
    // The socket goes with the agent (removed on a clean exit).
    stop_serving.cancel();
    let _ = server.await;
    notifier.close(NOTIFY_GRACE).await;
    let result = match stopped {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The agent's setup contradicts the config (say, it manages its
        // own subnet's table): restarting will not help.
        Err(AgentError::Refused(why)) => {
            eprintln!("error: {why}");
            Ok(ExitCode::from(EXIT_CONFIG as u8))
        }
        Err(e) => Err(e.into()),
    };
    drop(locks);
    result
}

/// With `[ha]` and no `agent_id`, this instance's id from the metadata
/// service; without one the agent cannot take part in a pair.
async fn resolve_agent_id(config: &mut Config) -> Result<(), ConfigError> {
    let Some(ha) = config.ha.as_mut() else {
        return Ok(());
    };
    if ha.agent_id.is_some() {
        return Ok(());
    }
    match crate::instance::instance_id(&config.aws).await {
        Ok(id) => {
            info!(agent_id = %id, "[ha]: agent id from instance metadata");
            ha.agent_id = Some(id);
            Ok(())
        }
        Err(why) => Err(ConfigError::at_key(
            config,
            "ha.agent_id".to_string(),
            format!("not set, and instance metadata cannot tell this instance's id ({why}): set it off EC2"),
        )),
    }
}

/// What of `[ha]` a reload could change, the agent id aside.
fn ha_settings(
    h: &crate::ha::HaConfig,
) -> (
    std::time::Duration,
    std::time::Duration,
    &str,
    std::time::Duration,
) {
    (h.heartbeat, h.peer_timeout, &h.anchor, h.forget_after)
}

/// How long hooks may take at shutdown to deliver what they hold (well
/// inside the unit's TimeoutStopSec).
const NOTIFY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the config again and hands it to the agent, or explains why not.
/// `[aws]`, `[metrics]` and `[control]` need a restart; the rest applies at once.
async fn reload(
    running: &Config,
    api: &dyn RouteApi,
    instance: &Instance,
    control: &Control,
    locks: &Mutex<AgentLocks>,
    notifier: &Notifier,
    status: &StatusSink,
) -> anyhow::Result<Config> {
    let mut new = Config::load(&running.source)?;
    check_watchdog(&new)?;
    // The agent id resolved at startup stays.
    if new.aws != running.aws
        || new.metrics_listen != running.metrics_listen
        || new.control != running.control
        || new.ha.as_ref().map(ha_settings) != running.ha.as_ref().map(ha_settings)
        || new
            .ha
            .as_ref()
            .and_then(|h| h.agent_id.as_ref())
            .is_some_and(|id| running.ha.as_ref().and_then(|h| h.agent_id.as_ref()) != Some(id))
    {
        warn!(
            "changes to [aws], [metrics], [control] and [ha] take effect on restart; applying the rest"
        );
        new.aws = running.aws.clone();
        new.metrics_listen = running.metrics_listen;
        new.control = running.control.clone();
    }
    new.ha.clone_from(&running.ha);
    run_guard(&new, api, own_subnet(&new, instance)?).await?;
    // fall/rise are the judge's: they keep the prober.
    let prober: Option<Box<dyn Prober>> = if new.same_probing(running) {
        None
    } else {
        Some(icmp_prober(&new).context("cannot probe with the new settings")?)
    };
    // A table added by the reload is locked first, like those at startup.
    locks
        .lock()
        .map_err(|_| anyhow::anyhow!("the lock set was poisoned"))?
        .add_tables(&table_ids(&new.routes))?;
    notifier
        .reload(&new.notify, env_var)
        .map_err(|(key, why)| ConfigError::at_key(&new, key, why))?;
    control.reload(new.clone(), prober);
    status.set_config(&new);
    Ok(new)
}

/// The ICMP prober the configured detector needs.
fn icmp_prober(config: &Config) -> std::io::Result<Box<dyn Prober>> {
    Ok(match config.detect.kind {
        DetectorKind::Rounds => Box::new(IcmpProber::with_backup(
            &config.probe,
            config.backup.as_ref(),
        )?),
        // Config validation refuses backup targets with the silence detector.
        DetectorKind::Silence => Box::new(SilenceProber::icmp(&config.probe, &config.detect)?),
    })
}
