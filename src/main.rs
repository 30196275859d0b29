//! The `route-failover` command: argument parsing and wiring only.

use std::path::{Path as FsPath, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use route_failover::agent::{Agent, Control};
use route_failover::cloud::dry_run::{aws_cli, DryRun};
use route_failover::cloud::ec2::Ec2RouteApi;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::cloud::RouteApi;
use route_failover::config::{Backend, Config, ConfigError, EXIT_CONFIG};
use route_failover::fsm::Path;
use route_failover::guard::{self, Verdict};
use route_failover::instance::{self, Instance};
use route_failover::model::{eni_ids, table_ids, RouteTable};
use route_failover::plan::{self, Action, Status};
use route_failover::probe::icmp::IcmpProber;
use route_failover::probe::Prober;
use route_failover::{demo, lock, metrics, signals};

#[derive(Parser)]
#[command(
    version,
    about = "Fails on-prem routes over from Direct Connect to a VPN appliance, and back"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: probe, decide, and manage the routes.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Read the real route tables but only print the changes, as AWS CLI commands.
        #[arg(long)]
        dry_run: bool,
    },
    /// Preflight: config, own subnet, tables, ENIs and IAM permissions (DryRun).
    Check {
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate the file; make no API call.
        #[arg(long)]
        offline: bool,
    },
    /// Show each managed route (ours / absent / foreign) and the path that implies.
    Status {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the calls a switch to PATH would make now, without making them.
    Plan {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, value_enum)]
        path: PathArg,
    },
    /// Run the agent against a scripted outage and the in-memory backend (no AWS, no root).
    Demo,
}

#[derive(Clone, Copy, ValueEnum)]
enum PathArg {
    Primary,
    Backup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Demo));
    // One thread: the agent waits on sockets and timers nearly all the time,
    // and worker threads waking each other for every echo cost more CPU than
    // the probing itself (BENCHMARKS.md, footprint).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(config_error) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: invalid configuration: {config_error}");
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet { "error" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, dry_run } => run(&config, dry_run).await,
        Command::Check { config, offline } => check(&Config::load(&config)?, offline).await,
        Command::Status { config } => status(&Config::load(&config)?).await,
        Command::Plan { config, path } => {
            let path = match path {
                PathArg::Primary => Path::Primary,
                PathArg::Backup => Path::Backup,
            };
            plan_switch(&Config::load(&config)?, path).await
        }
        Command::Demo => {
            demo::run(&mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The backend the config asks for, and what instance metadata told us.
async fn connect(config: &Config) -> anyhow::Result<(Arc<dyn RouteApi>, Instance)> {
    Ok(match config.aws.backend {
        Backend::Memory => (
            Arc::new(MemoryRouteApi::seeded(&config.routes)),
            Instance::default(),
        ),
        Backend::Ec2 => {
            let instance = instance::discover(&config.aws).await;
            let api = Ec2RouteApi::connect(&config.aws, &instance)
                .await
                .context("cannot set up the EC2 client")?;
            (Arc::new(api), instance)
        }
    })
}

/// The agent's own subnet: the config's word, else instance metadata's.
fn own_subnet<'a>(config: &'a Config, instance: &'a Instance) -> Option<&'a str> {
    config
        .aws
        .own_subnet_id
        .as_deref()
        .or(instance.subnet_id.as_deref())
}

async fn run_guard(config: &Config, api: &dyn RouteApi, instance: &Instance) -> anyhow::Result<()> {
    let subnet = own_subnet(config, instance);
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

async fn run(path: &FsPath, dry_run: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(path)?;
    let _lock = lock::acquire(&config.source)?;
    if let Some(listen) = config.metrics_listen {
        metrics::install(listen).map_err(anyhow::Error::msg)?;
        info!(%listen, "serving Prometheus metrics on /metrics");
    }
    let (mut api, instance) = connect(&config).await?;
    run_guard(&config, api.as_ref(), &instance).await?;
    if dry_run {
        api = Arc::new(DryRun::new(api, config.aws.region.clone()));
    }
    let prober = IcmpProber::new(&config.probe).context("cannot start probing")?;
    let agent = Agent::new(config.clone(), Box::new(prober), Arc::clone(&api));
    let shutdown = CancellationToken::new();
    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    let control = agent.control();
    signals::install(shutdown.clone(), control.clone(), reload_tx)
        .context("cannot install signal handlers")?;
    tokio::spawn(async move {
        let mut running = config;
        while reload_rx.recv().await.is_some() {
            match reload(&running, api.as_ref(), &instance, &control).await {
                Ok(new) => running = new,
                Err(e) => {
                    error!(error = %format!("{e:#}"), "reload rejected; the running configuration stays")
                }
            }
        }
    });
    agent.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the config again and hands it to the agent, or explains why not.
/// `[aws]` and `[metrics]` need a restart; the rest applies at once.
async fn reload(
    running: &Config,
    api: &dyn RouteApi,
    instance: &Instance,
    control: &Control,
) -> anyhow::Result<Config> {
    let mut new = Config::load(&running.source)?;
    if new.aws != running.aws || new.metrics_listen != running.metrics_listen {
        warn!("changes to [aws] and [metrics] take effect on restart; applying the rest");
        new.aws = running.aws.clone();
        new.metrics_listen = running.metrics_listen;
    }
    run_guard(&new, api, instance).await?;
    let prober: Option<Box<dyn Prober>> = if new.probe == running.probe {
        None
    } else {
        Some(Box::new(
            IcmpProber::new(&new.probe).context("cannot probe with the new settings")?,
        ))
    };
    control.reload(new.clone(), prober);
    Ok(new)
}

/// Connects and reads every managed route table in one call.
async fn read_tables(config: &Config) -> anyhow::Result<Vec<RouteTable>> {
    let (api, _) = connect(config).await?;
    api.describe_route_tables(&table_ids(&config.routes))
        .await
        .context("cannot read the route tables")
}

/// Preflight rows: ✓ passed, ✗ failed (with the fix), ! worth knowing.
async fn check(config: &Config, offline: bool) -> anyhow::Result<ExitCode> {
    let tables = table_ids(&config.routes);
    let enis = eni_ids(&config.routes);
    println!(
        "✓ config {}: {} targets, {} managed routes in {} route tables",
        config.source.display(),
        config.probe.targets.len(),
        config.routes.len(),
        tables.len()
    );
    if offline {
        return Ok(ExitCode::SUCCESS);
    }
    let (api, instance) = connect(config).await?;
    let mut failed = false;
    let mut fail = |line: String| {
        failed = true;
        println!("{line}");
    };

    let subnet = own_subnet(config, &instance);
    match guard::check(
        api.as_ref(),
        subnet,
        &config.routes,
        config.aws.allow_self_subnet,
    )
    .await
    {
        Ok(Verdict::Clear { subnet, table }) => {
            println!("✓ own subnet {subnet} uses {table}, which is not managed");
        }
        Ok(Verdict::Allowed { subnet, table }) => {
            println!(
                "! own subnet {subnet} uses managed {table}: allowed by aws.allow_self_subnet"
            );
        }
        Ok(Verdict::Skipped) => {
            println!("! own subnet unknown (not on EC2?): self-subnet guard skipped; set aws.own_subnet_id");
        }
        Err(e) => fail(format!("✗ {e}")),
    }
    // One call per id, so that a failure names the id at fault.
    for id in &tables {
        match api.describe_route_tables(std::slice::from_ref(id)).await {
            Ok(_) => println!("✓ route table {id} exists"),
            Err(e) => fail(format!(
                "✗ route table {id}: {e}\n    fix: check routes[].route_table_id and the region"
            )),
        }
    }
    for id in &enis {
        match api.describe_network_interfaces(std::slice::from_ref(id)).await {
            Ok(found) if found.iter().any(|n| n.source_dest_check) => fail(format!(
                "✗ network interface {id} has source/destination check enabled: the VPN appliance cannot forward\n    \
                 fix: aws ec2 modify-network-interface-attribute --network-interface-id {id} --no-source-dest-check"
            )),
            Ok(_) => println!("✓ network interface {id} exists, source/destination check off"),
            Err(e) => fail(format!("✗ network interface {id}: {e}\n    fix: check routes[].target_eni")),
        }
    }
    // IAM, with EC2's DryRun: one route per table, each operation the agent uses.
    for id in &tables {
        let Some(route) = config.routes.iter().find(|r| &r.route_table_id == id) else {
            continue;
        };
        let mut actions = vec![Action::Create(route.clone()), Action::Delete(route.clone())];
        if config.reconcile.takeover {
            actions.push(Action::Replace {
                route: route.clone(),
                replacing: route_failover::model::Target::Other("-".into()),
            });
        }
        for action in actions {
            match api.is_permitted(&action).await {
                Ok(Some(true)) => println!("✓ IAM allows {} on {id}", action.op()),
                Ok(None) => println!(
                    "! IAM not checked for {} on {id}: the endpoint ignores DryRun (LocalStack?), \
                     so asking could change the table",
                    action.op()
                ),
                Ok(Some(false)) => fail(format!(
                    "✗ IAM denies {} on {id}\n    fix: grant ec2:{} on this route table (see iam-policy.example.json)",
                    action.op(),
                    action.op()
                )),
                Err(e) => fail(format!("✗ cannot check IAM for {} on {id}: {e}", action.op())),
            }
        }
    }
    if let Ok(observed) = api.describe_route_tables(&tables).await {
        for finding in plan::plan(Path::Primary, &config.routes, &observed, false).findings {
            println!("! {finding}");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let observed = read_tables(config).await?;
    println!(
        "{:<24} {:<20} {:<24} status",
        "route table", "destination", "target eni"
    );
    for r in &config.routes {
        let status = match plan::status(r, &observed) {
            Status::Ours { state } => format!("ours ({state:?})"),
            Status::Absent => "absent".to_string(),
            Status::Foreign { target, .. } => format!("FOREIGN -> {target}"),
            Status::TableMissing => "TABLE MISSING".to_string(),
        };
        println!(
            "{:<24} {:<20} {:<24} {status}",
            r.route_table_id,
            r.destination.to_string(),
            r.target_eni
        );
    }
    let path = plan::adopt(&config.routes, &observed);
    println!("path implied by the route tables: {path}");
    for finding in plan::plan(path, &config.routes, &observed, false).findings {
        println!("! {finding}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn plan_switch(config: &Config, path: Path) -> anyhow::Result<ExitCode> {
    let observed = read_tables(config).await?;
    let plan = plan::plan(path, &config.routes, &observed, config.reconcile.takeover);
    if plan.actions.is_empty() {
        println!("# nothing to do: the route tables already match {path}");
    }
    for action in &plan.actions {
        println!("{}", aws_cli(action, config.aws.region.as_deref()));
    }
    for finding in &plan.findings {
        println!("# ! {finding}");
    }
    Ok(ExitCode::SUCCESS)
}
