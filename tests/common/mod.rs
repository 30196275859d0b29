//! Shared harness: runs the real agent with a scripted prober on tokio's
//! paused clock, and collects its events.

#![allow(dead_code)]

pub mod apis;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use route_failover::agent::{Agent, AgentError, Control};
use route_failover::cloud::RouteApi;
use route_failover::config::Config;
use route_failover::events::Event;
use route_failover::fsm::Via;
use route_failover::model::{ManagedRoute, Origin, Target};
use route_failover::probe::scripted::{Phase, Reply, ScriptHandle, ScriptedProber};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const ENI: &str = "eni-0c33cc33cc33cc330";
pub const TABLE_A: &str = "rtb-0a11aa11aa11aa110";
pub const TABLE_B: &str = "rtb-0b22bb22bb22bb220";

/// 1 s rounds, fall 3, rise 5, hold-down 10 s, resync 30 s; two tables ×
/// an IPv4 and an IPv6 destination.
pub fn config_with(failover_extra: &str) -> Config {
    config_with_section("", failover_extra)
}

/// As [`config_with`], with `section` (say, a `[backup]` table) placed
/// before `[failover]`; only `failover_extra` overrides the defaults.
pub fn config_with_section(section: &str, failover_extra: &str) -> Config {
    let text = format!(
        r#"
[aws]
backend = "memory"

[probe]
targets = ["198.18.0.10", "198.18.0.11"]
interval = "1s"
timeout = "500ms"
count = 3

{SECTION}
[failover]
fall = 3
rise = 5
hold_down = "10s"
resync_interval = "30s"
{failover_extra}

[[routes]]
route_table_id = "{TABLE_A}"
destination = "10.1.0.0/16"
target_eni = "{ENI}"

[[routes]]
route_table_id = "{TABLE_A}"
destination = "fd00:1::/48"
target_eni = "{ENI}"

[[routes]]
route_table_id = "{TABLE_B}"
destination = "10.1.0.0/16"
target_eni = "{ENI}"

[[routes]]
route_table_id = "{TABLE_B}"
destination = "fd00:1::/48"
target_eni = "{ENI}"
"#
    );
    // Keys in `failover_extra` override the defaults above.
    let overridden: Vec<&str> = failover_extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let text: String = text
        .lines()
        .filter(|l| {
            let key = l.split_once('=').map(|(k, _)| k.trim());
            !key.is_some_and(|k| overridden.contains(&k)) || failover_extra.contains(l.trim())
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let text = text.replacen(SECTION, section, 1);
    Config::parse(&text, Path::new("test.toml")).expect("test config is valid")
}

/// Where [`config_with_section`] puts its section, after the defaults are
/// overridden, so that no key of the section is taken for an override.
const SECTION: &str = "# section";

pub fn config() -> Config {
    config_with("")
}

/// A running agent and what it has said so far.
pub struct Harness {
    pub script: ScriptHandle,
    pub control: Control,
    pub events: Vec<(Instant, Event)>,
    rx: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

impl Harness {
    pub fn start(config: &Config, api: Arc<dyn RouteApi>, reply: Reply) -> Self {
        Self::start_with(config, api, reply, |agent| agent)
    }

    /// As [`Harness::start`], with the agent adjusted by `build` first
    /// (a ledger, a startup check).
    pub fn start_with(
        config: &Config,
        api: Arc<dyn RouteApi>,
        reply: Reply,
        build: impl FnOnce(Agent) -> Agent,
    ) -> Self {
        let (prober, script) = ScriptedProber::new(
            config.probe.targets.clone(),
            config.probe.count,
            vec![Phase::new("initial", 1, reply)],
        );
        Self::start_prober(config, api, prober, script, build)
    }

    /// As [`Harness::start`], probing `[backup]`'s targets too, which
    /// answer as `backup` says (change it with `script.set_backup`).
    pub fn start_backup(
        config: &Config,
        api: Arc<dyn RouteApi>,
        reply: Reply,
        backup: Reply,
    ) -> Self {
        let (prober, script) = ScriptedProber::new(
            config.probe.targets.clone(),
            config.probe.count,
            vec![Phase::new("initial", 1, reply)],
        );
        let b = config.backup.as_ref().expect("a [backup] section");
        let prober = prober.with_backup(
            b.targets.clone(),
            b.count,
            vec![Phase::new("initial", 1, backup)],
        );
        Self::start_prober(config, api, prober, script, |agent| agent)
    }

    fn start_prober(
        config: &Config,
        api: Arc<dyn RouteApi>,
        prober: ScriptedProber,
        script: ScriptHandle,
        build: impl FnOnce(Agent) -> Agent,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let agent = build(Agent::new(config.clone(), Box::new(prober), api).with_events(tx));
        let control = agent.control();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(shutdown.clone()));
        Self {
            script,
            control,
            events: Vec::new(),
            rx,
            shutdown,
            task,
        }
    }

    /// Waits (on the paused clock) for the first event matching `pred`.
    pub async fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        let deadline = Instant::now() + within;
        loop {
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {within:?}; saw {:#?}", self.events))
                .unwrap_or_else(|| panic!("agent stopped before {what}"));
            self.events.push((Instant::now(), event.clone()));
            if pred(&event) {
                return event;
            }
        }
    }

    /// Lets the agent run for `d` (paused clock), collecting events.
    pub async fn run_for(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            self.events.push((Instant::now(), event));
        }
    }

    pub async fn converged(&mut self, path: Via, within: Duration) {
        self.wait_for(
            &format!("convergence on {path}"),
            within,
            |e| matches!(e, Event::Converged { path: p, .. } if *p == path),
        )
        .await;
    }

    pub async fn transition(
        &mut self,
        to: Via,
        within: Duration,
    ) -> route_failover::fsm::Transition {
        match self
            .wait_for(
                &format!("transition to {to}"),
                within,
                |e| matches!(e, Event::Transition(t) if t.to == to),
            )
            .await
        {
            Event::Transition(t) => t,
            _ => unreachable!(),
        }
    }

    /// Stops the agent and checks that it exited cleanly.
    pub async fn stop(mut self) -> Vec<(Instant, Event)> {
        self.shutdown.cancel();
        self.task
            .await
            .expect("agent panicked")
            .expect("agent returned an error");
        while let Ok(event) = self.rx.try_recv() {
            self.events.push((Instant::now(), event));
        }
        self.events
    }

    /// Ends the agent as SIGKILL would: no shutdown path runs, what it
    /// published stays as it was.
    pub fn kill(self) {
        self.task.abort();
    }

    pub fn rounds(&self) -> usize {
        self.events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Round { .. }))
            .count()
    }
}

/// Our static routes present in `tables`, pointing at `eni`.
pub fn routes_to(tables: &[route_failover::model::RouteTable], eni: &str) -> Vec<String> {
    let mut out: Vec<String> = tables
        .iter()
        .flat_map(|t| {
            t.routes
                .iter()
                .filter(|r| {
                    r.origin == Origin::CreateRoute
                        && r.target == Target::NetworkInterface(eni.into())
                })
                .map(move |r| format!("{} {}", t.id, r.destination))
        })
        .collect();
    out.sort();
    out
}

/// Our static routes present in `tables`, as (table, destination) strings.
pub fn our_routes(tables: &[route_failover::model::RouteTable]) -> Vec<String> {
    routes_to(tables, ENI)
}

pub fn all_managed(config: &Config) -> Vec<String> {
    let mut out: Vec<String> = config
        .routes
        .iter()
        .map(|r: &ManagedRoute| format!("{} {}", r.route_table_id, r.destination))
        .collect();
    out.sort();
    out
}

pub const LONG: Duration = Duration::from_secs(600);

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Harness {
    /// Waits for the agent to fail by itself and returns its error text.
    pub async fn stop_with_error(self) -> String {
        match tokio::time::timeout(LONG, self.task).await {
            Ok(Ok(Err(e))) => e.to_string(),
            other => panic!("expected the agent to fail, got {other:?}"),
        }
    }
}
