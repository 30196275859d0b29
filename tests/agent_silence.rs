//! The whole agent with the silence detector on tokio's paused clock: a
//! jittery path (replies late but present) never fails over on the
//! sub-second setting, a silent one does within its bound.
//! The agent calls `set_on_primary` before each round, observes
//! `verdict()` when the prober gives one, and runs the fsm with
//! `detect.fsm_policy`; without any of the three these tests fail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use route_failover::agent::Agent;
use route_failover::cloud::memory::MemoryRouteApi;
use route_failover::config::Config;
use route_failover::events::Event;
use route_failover::fsm::Via;
use route_failover::probe::silence::SilenceProber;
use route_failover::probe::simulated::{clean, jitter, PathHandle, SimulatedPath};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The sub-second setting: 300 ms of silence, worst case 345 ms on a clean
/// path; the fixed 80 ms timeout of the old fast profile is gone.
fn fast() -> Config {
    let text = r#"
[aws]
backend = "memory"

[probe]
targets = ["198.18.0.10", "198.18.0.11"]
interval = "1s"
timeout = "800ms"
count = 3
detector = "silence"
silence = "300ms"

[failover]
rise = 5
hold_down = "1s"

[[routes]]
route_table_id = "rtb-0a11aa11aa11aa110"
destination = "10.1.0.0/16"
target_eni = "eni-0c33cc33cc33cc330"
"#;
    Config::parse(text, Path::new("fast.toml")).unwrap()
}

struct Running {
    path: PathHandle,
    made: Instant,
    events: mpsc::UnboundedReceiver<Event>,
    shutdown: CancellationToken,
}

fn start(
    config: &Config,
    fate: impl Fn(usize, Duration) -> Option<Duration> + Send + 'static,
) -> Running {
    let made = Instant::now();
    let (path, handle) = SimulatedPath::new("initial", fate);
    let prober = SilenceProber::new(&config.probe, &config.detect, path);
    let api = Arc::new(MemoryRouteApi::seeded(&config.routes));
    let (tx, rx) = mpsc::unbounded_channel();
    let agent = Agent::new(config.clone(), Box::new(prober), api).with_events(tx);
    let shutdown = CancellationToken::new();
    tokio::spawn(agent.run(shutdown.clone()));
    Running {
        path: handle,
        made,
        events: rx,
        shutdown,
    }
}

/// The first transition within `within`, if any.
async fn transition(run: &mut Running, within: Duration) -> Option<(Instant, Via)> {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, run.events.recv()).await {
            Err(_) => return None,
            Ok(None) => panic!("the agent stopped"),
            Ok(Some(Event::Transition(t))) => return Some((t.at, t.to)),
            Ok(Some(_)) => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_jittery_path_never_fails_over_on_the_fast_setting() {
    let config = fast();
    let mut run = start(
        &config,
        jitter(Duration::from_millis(100), Duration::from_millis(100), 3),
    );
    assert_eq!(transition(&mut run, Duration::from_secs(600)).await, None);
    run.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_silent_path_fails_over_within_its_bound_at_every_phase() {
    let config = fast();
    for phase in 0..10u32 {
        let mut run = start(&config, clean(Duration::from_micros(1500)));
        assert_eq!(transition(&mut run, Duration::from_secs(5)).await, None);
        tokio::time::sleep(config.probe.interval * phase / 10).await;
        let (made, cut) = (run.made, Instant::now());
        run.path.set("cut", move |_, at| {
            (made + at < cut).then_some(Duration::from_micros(1500))
        });
        let (at, to) = transition(&mut run, Duration::from_secs(5))
            .await
            .expect("fails over");
        assert_eq!(to, Via::Backup);
        // 300 ms silence + 25 ms suspect period + 20 ms floor, plus at most
        // the 20 ms gap between the detector's round and the agent's tick.
        let took = at.duration_since(cut);
        assert!(
            took <= Duration::from_millis(345 + 20),
            "phase {phase}: {took:?}"
        );
        run.shutdown.cancel();
    }
}
