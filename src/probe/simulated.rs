//! A synthetic [`EchoPath`] for the silence detector's driver: the fate of
//! each echo (its round-trip time, or lost) comes from a function of the
//! target and the time since the path was made, and plays out on tokio's
//! clock, so tests run it on the paused clock. It sends no packets, and
//! every round it produces is labelled.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::silence::{Echo, EchoPath, InFlight};

/// What the path does with the echo sent to the `index`-th target `at`
/// after the path was made: its round-trip time, or `None` when lost.
pub type Fate = Box<dyn Fn(usize, Duration) -> Option<Duration> + Send>;

/// Lets a test change the path while a prober runs.
#[derive(Clone)]
pub struct PathHandle {
    state: Arc<Mutex<(String, Fate)>>,
}

impl PathHandle {
    /// From now on, echoes meet `fate`; rounds are labelled `label`.
    pub fn set(
        &self,
        label: &str,
        fate: impl Fn(usize, Duration) -> Option<Duration> + Send + 'static,
    ) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) =
            (label.to_string(), Box::new(fate));
    }
}

pub struct SimulatedPath {
    state: Arc<Mutex<(String, Fate)>>,
    start: Instant,
}

impl SimulatedPath {
    pub fn new(
        label: &str,
        fate: impl Fn(usize, Duration) -> Option<Duration> + Send + 'static,
    ) -> (Self, PathHandle) {
        let state: Arc<Mutex<(String, Fate)>> =
            Arc::new(Mutex::new((label.to_string(), Box::new(fate))));
        let handle = PathHandle {
            state: Arc::clone(&state),
        };
        let path = Self {
            state,
            start: Instant::now(),
        };
        (path, handle)
    }
}

/// A clean path: every echo answered after `rtt`.
pub fn clean(rtt: Duration) -> impl Fn(usize, Duration) -> Option<Duration> + Send + 'static {
    move |_, _| Some(rtt)
}

/// Jitter as the live benchmark's responder draws it: max(0, normal(mean,
/// sd)), deterministic per (seed, target, send instant).
pub fn jitter(
    mean: Duration,
    sd: Duration,
    seed: u64,
) -> impl Fn(usize, Duration) -> Option<Duration> + Send + 'static {
    move |index, at| {
        let h = splitmix(seed ^ splitmix(index as u64 + 1) ^ at.as_nanos() as u64);
        let (u, v) = (unit(h), unit(splitmix(h)));
        let z = (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos();
        let ms = (mean.as_secs_f64() + sd.as_secs_f64() * z).max(0.0);
        Some(Duration::from_secs_f64(ms))
    }
}

/// A uniform draw in [0, 1) from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[async_trait]
impl EchoPath for SimulatedPath {
    async fn echo(
        &mut self,
        _target: IpAddr,
        index: usize,
        _seq: u16,
        timeout: Duration,
    ) -> InFlight {
        let at = Instant::now().duration_since(self.start);
        let fate = (self.state.lock().unwrap_or_else(PoisonError::into_inner).1)(index, at);
        Box::pin(async move {
            match fate.filter(|rtt| *rtt <= timeout) {
                Some(rtt) => {
                    tokio::time::sleep(rtt).await;
                    Echo::Reply(rtt)
                }
                None => {
                    tokio::time::sleep(timeout).await;
                    Echo::Lost
                }
            }
        })
    }

    fn describe(&self) -> String {
        "simulated path (synthetic, sends no packets)".to_string()
    }

    fn label(&self) -> Option<String> {
        let label = &self.state.lock().unwrap_or_else(PoisonError::into_inner).0;
        Some(format!("simulated: {label}"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::probe::silence::SilenceProber;
    use crate::probe::Prober;

    /// The sub-second setting: 300 ms of silence, 3 echoes per target per
    /// second, an 800 ms timeout for late replies.
    fn fast() -> Config {
        let text = r#"
[probe]
targets = ["198.18.0.10", "198.18.0.11"]
interval = "1s"
timeout = "800ms"
count = 3
detector = "silence"
silence = "300ms"

[[routes]]
route_table_id = "rtb-0123456789abcdef0"
destination = "10.1.0.0/16"
target_eni = "eni-0123456789abcdef0"
"#;
        Config::parse(text, Path::new("fast.toml")).unwrap()
    }

    fn prober(
        config: &Config,
        fate: impl Fn(usize, Duration) -> Option<Duration> + Send + 'static,
    ) -> (SilenceProber<SimulatedPath>, PathHandle) {
        let (path, handle) = SimulatedPath::new("test", fate);
        (
            SilenceProber::new(&config.probe, &config.detect, path),
            handle,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_jittery_path_never_fails_over_on_the_fast_setting() {
        // 100 ± 100 ms: with the round rule's fixed 80 ms timeout this was
        // 58 % loss per echo and 11 route changes a minute, live.
        let config = fast();
        let fate = jitter(Duration::from_millis(100), Duration::from_millis(100), 7);
        let (mut prober, _) = prober(&config, fate);
        let mut late = 0;
        for _ in 0..1800 {
            let start = Instant::now();
            let report = prober.round().await;
            assert!(start.elapsed() < config.probe.interval);
            assert_eq!(report.label.as_deref(), Some("simulated: test"));
            let verdict = prober.verdict().unwrap();
            assert!(verdict.up, "{verdict}");
            late += report
                .targets
                .iter()
                .flat_map(|t| &t.rtts)
                .filter(|r| **r > Duration::from_millis(80))
                .count();
        }
        // Replies the fixed 80 ms timeout would have lost all counted.
        assert!(late > 1800 * 6 / 2, "{late}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_cut_short_loses_nothing_and_reports_no_made_up_loss() {
        let config = fast();
        let made = Instant::now();
        let (mut prober, handle) = prober(&config, clean(Duration::from_micros(1500)));
        let short = Duration::from_millis(300);
        for _ in 0..30 {
            // As the agent's bound of one interval would, if timers ran late.
            assert!(tokio::time::timeout(short, prober.round()).await.is_err());
            let v = prober.verdict().expect("a verdict after a round cut short");
            assert!(v.up && v.received == v.sent && v.sent > 0, "{v}");
            tokio::time::sleep(config.probe.interval - short).await;
        }
        let cut = Instant::now();
        handle.set("cut", move |_, at| {
            (made + at < cut).then_some(Duration::from_micros(1500))
        });
        let judged = loop {
            let _ = tokio::time::timeout(short, prober.round()).await;
            if !prober.verdict().unwrap().up {
                break Instant::now();
            }
            assert!(
                Instant::now() < cut + Duration::from_secs(5),
                "never judged silent"
            );
            tokio::time::sleep(config.probe.interval - short).await;
        };
        assert!(judged.duration_since(cut) >= Duration::from_millis(300 - 167));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_cut_ends_the_round_within_the_worst_case_at_every_phase() {
        let config = fast();
        let cfg = config.detect.silence_config(
            config.probe.interval,
            config.probe.count,
            config.probe.timeout,
            config.probe.round,
        );
        let bound = cfg.worst_case(2, Duration::from_millis(20));
        assert_eq!(bound, Duration::from_millis(345));
        let mut worst = Duration::ZERO;
        for phase in 0..25u32 {
            let made = Instant::now();
            let (mut prober, handle) = prober(&config, clean(Duration::from_micros(1500)));
            for _ in 0..10 {
                prober.round().await;
                assert!(prober.verdict().unwrap().up);
            }
            // Cut somewhere inside the next round.
            let into = config.probe.interval * phase / 25;
            let cut = Instant::now() + into;
            handle.set("cut", move |_, at| {
                (made + at < cut).then_some(Duration::from_micros(1500))
            });
            let verdict = loop {
                prober.round().await;
                let v = prober.verdict().unwrap();
                if !v.up || Instant::now() > cut + Duration::from_secs(5) {
                    break v;
                }
            };
            assert!(!verdict.up, "phase {phase}: never judged silent");
            worst = worst.max(Instant::now().duration_since(cut));
        }
        assert!(worst <= bound, "{worst:?}");
        assert!(worst >= bound - Duration::from_millis(30), "{worst:?}");
    }
}
