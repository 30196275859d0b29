//! The `route-failover` command: argument parsing and wiring only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use clap_mangen::roff::{bold, roman, Roff};

use route_failover::agent::OperatorAction;
use route_failover::config::{Config, ConfigError, EXIT_CONFIG};
use route_failover::control::protocol::Request;
use route_failover::fsm::Via;
use route_failover::{commands, demo};

/// Where an operator on the instance keeps the config (the unit and the packages use it).
const DEFAULT_CONFIG: &str = "/etc/route-failover/config.toml";

const EXIT_CODES: &str = "\
Exit status:
  0   success (run: stopped by SIGTERM/SIGINT; check: every check passed)
  1   failure (check: a check failed; run: cannot start, e.g. the ownership ledger is unreadable)
  2   bad command-line usage
  78  invalid configuration (file, line, key, reason on standard error; nothing changed), or its own subnet's table is managed";

const CTL_EXIT_CODES: &str = "\
Exit status:
  0   the agent answered, and did what was asked
  1   the agent refused the request (the error says why)
  2   bad command-line usage
  69  the agent is not running: no socket, or nothing answers on it
  75  the agent did not answer within 30 s
  76  the answer was not understood (ctl and agent of different versions?)
  77  permission denied on the socket: run as root, or as a member of its group ([control] group)";

#[derive(Parser)]
#[command(
    version,
    about = "Fails on-prem routes over from Direct Connect to a VPN appliance, and back",
    after_help = EXIT_CODES
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

/// The configuration file argument shared by every subcommand that reads one.
#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML configuration file.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: probe, decide, and manage the routes.
    #[command(after_help = EXIT_CODES)]
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Read the real route tables but only print the changes, as AWS CLI commands.
        #[arg(long)]
        dry_run: bool,
    },
    /// Preflight: config, own subnet, tables, ENIs and IAM permissions (DryRun).
    #[command(after_help = EXIT_CODES)]
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Only validate the file; make no API call.
        #[arg(long)]
        offline: bool,
    },
    /// Show each managed route (ours / absent / foreign) and the path that implies.
    #[command(after_help = EXIT_CODES)]
    Status {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the calls a switch to PATH would make now, without making them.
    #[command(after_help = EXIT_CODES)]
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// The path to plan a switch to.
        #[arg(long, value_enum)]
        path: PathArg,
    },
    /// Run the agent against a scripted outage and the in-memory backend (no AWS, no root).
    #[command(after_help = EXIT_CODES)]
    Demo,
    /// Ask the running agent: live status, maintenance failover, hold, pause.
    #[command(after_help = CTL_EXIT_CODES)]
    Ctl {
        /// The agent's control socket [default: $RUNTIME_DIRECTORY/control.sock, else /run/route-failover/control.sock].
        #[arg(long, global = true, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Answer in JSON, for machines.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The agent's live view: path and why, streaks, hold-down, convergence, probes, last transition and API error.
    #[command(after_help = CTL_EXIT_CODES)]
    Status,
    /// Move to Backup now and stay there until `ctl release` (planned DX maintenance).
    #[command(after_help = CTL_EXIT_CODES)]
    Failover {
        /// Required: hold Backup until `ctl release` (a failover the probes would undo at once has no use).
        #[arg(long, required = true)]
        hold: bool,
    },
    /// Stay on the current path whatever the probes say, until `ctl release`.
    #[command(after_help = CTL_EXIT_CODES)]
    Hold,
    /// End a hold: the probes decide again.
    #[command(after_help = CTL_EXIT_CODES)]
    Release,
    /// Fail back once `rise` good rounds are in hand (failback = "manual", or after flap damping); as SIGUSR1.
    #[command(after_help = CTL_EXIT_CODES)]
    Failback,
    /// Make no route call until `ctl resume`; probing, deciding and reporting go on, and what would be done is logged.
    #[command(after_help = CTL_EXIT_CODES)]
    Pause,
    /// Allow route calls again after `ctl pause`.
    #[command(after_help = CTL_EXIT_CODES)]
    Resume,
}

impl CtlCommand {
    fn request(&self) -> Request {
        let action = match self {
            CtlCommand::Status => return Request::Status {},
            CtlCommand::Failover { .. } => OperatorAction::FailoverHold,
            CtlCommand::Hold => OperatorAction::Hold,
            CtlCommand::Release => OperatorAction::Release,
            CtlCommand::Failback => OperatorAction::Failback,
            CtlCommand::Pause => OperatorAction::Pause,
            CtlCommand::Resume => OperatorAction::Resume,
        };
        Request::Operate { action }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum PathArg {
    Primary,
    Backup,
}

fn main() -> ExitCode {
    let matches = with_generators(Cli::command()).get_matches();
    match matches.subcommand() {
        Some(("man", args)) => {
            let dir: &PathBuf = expect_arg(args, "dir");
            return generated(write_man_pages(dir));
        }
        Some(("completions", args)) => {
            let shell: &Shell = expect_arg(args, "shell");
            let mut out = std::io::stdout().lock();
            clap_complete::generate(*shell, &mut Cli::command(), "route-failover", &mut out);
            return generated(out.flush());
        }
        _ => {}
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The demo and ctl print for a human; only errors go to the log.
    init_logging(
        cli.log_format,
        matches!(cli.command, Command::Demo | Command::Ctl { .. }),
    );
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

/// The packaging helpers `man DIR` and `completions SHELL`: hidden, and
/// kept out of [`Cli`] so that what they write describes only the
/// operator's commands.
fn with_generators(cli: clap::Command) -> clap::Command {
    cli.subcommand(
        clap::Command::new("man")
            .hide(true)
            .about("Write the man pages (one per command) into DIR")
            .arg(
                clap::Arg::new("dir")
                    .value_name("DIR")
                    .required(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
    .subcommand(
        clap::Command::new("completions")
            .hide(true)
            .about("Print the completion script for SHELL")
            .arg(
                clap::Arg::new("shell")
                    .value_name("SHELL")
                    .required(true)
                    .value_parser(clap::value_parser!(Shell)),
            ),
    )
}

/// A required argument clap has already checked.
fn expect_arg<'a, T: Clone + Send + Sync + 'static>(args: &'a clap::ArgMatches, id: &str) -> &'a T {
    args.get_one(id).expect("clap enforces required arguments")
}

fn generated(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `route-failover.1` and one page per subcommand, each with the exit
/// codes its `--help` lists as an EXIT STATUS section.
fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    // `help` is --help by another name: no page of its own.
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let mut pages = vec![cli.clone()];
    pages.extend(cli.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    for page in pages {
        let exit_codes = page.get_after_help().map(ToString::to_string);
        let man = clap_mangen::Man::new(page.after_help(None::<&str>))
            .source(concat!("route-failover ", env!("CARGO_PKG_VERSION")));
        let mut text = Vec::new();
        man.render(&mut text)?;
        let mut text = String::from_utf8(text).expect("clap_mangen writes UTF-8");
        if let Some(codes) = exit_codes {
            // Before VERSION, where man-pages(7) puts EXIT STATUS.
            let at = text.find(".SH VERSION").unwrap_or(text.len());
            text.insert_str(at, &exit_status_section(&codes));
        }
        std::fs::write(dir.join(man.get_filename()), text)?;
    }
    Ok(())
}

/// [`EXIT_CODES`] as a roff EXIT STATUS section, one tagged paragraph a code.
fn exit_status_section(codes: &str) -> String {
    let mut roff = Roff::new();
    roff.control("SH", ["EXIT STATUS"]);
    for line in codes
        .lines()
        .skip_while(|l| !l.starts_with("Exit status"))
        .skip(1)
    {
        if let Some((code, meaning)) = line.trim().split_once(char::is_whitespace) {
            roff.control("TP", [])
                .text([bold(code)])
                .text([roman(meaning.trim())]);
        }
    }
    // Without the preamble that every rendering starts with: the page has it.
    let preamble = Roff::new().render();
    roff.render()
        .strip_prefix(&preamble)
        .map(str::to_string)
        .unwrap_or_default()
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
        Command::Run { config, dry_run } => commands::run::run(&config.config, dry_run).await,
        Command::Check { config, offline } => {
            commands::check::check(&Config::load(&config.config)?, offline).await
        }
        Command::Status { config } => {
            commands::status::status(&Config::load(&config.config)?).await
        }
        Command::Plan { config, path } => {
            let path = match path {
                PathArg::Primary => Via::Primary,
                PathArg::Backup => Via::Backup,
            };
            commands::plan::plan_switch(&Config::load(&config.config)?, path).await
        }
        Command::Demo => {
            demo::run(&mut std::io::stdout()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl {
            socket,
            json,
            command,
        } => {
            let socket = socket.unwrap_or_else(route_failover::control::default_socket);
            commands::ctl::ctl(&socket, json, command.request()).await
        }
    }
}
