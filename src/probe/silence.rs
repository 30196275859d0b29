//! The async driver of the silence detector ([`crate::detect`]): sends the
//! echoes the detector asks for over an [`EchoPath`], hands their replies
//! back, and returns a round at each agent tick, or at once when the path
//! is judged silent.
//!
//! The path is ICMP in production ([`super::icmp::IcmpPath`]) and a
//! synthetic one on tokio's clock in tests ([`super::simulated`]); the loop
//! here is the same for both.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::time::Instant;

use super::{Prober, RoundReport, RoundSummary};
use crate::config::ProbeConfig;
use crate::detect::{round_margin, DetectConfig, Detector, EchoId, SilenceConfig};
use crate::fsm::Via;

/// The outcome of one echo: its round-trip time, or a send error worth reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    Reply(Duration),
    Lost,
    Failed(String),
}

/// One echo on its way; it resolves when answered, lost (after the
/// timeout it was sent with) or failed.
pub type InFlight = Pin<Box<dyn Future<Output = Echo> + Send>>;

/// An echo on its way, with the id the detector knows it by.
type Tagged = Pin<Box<dyn Future<Output = (EchoId, Echo)> + Send>>;

/// Where echoes go.
#[async_trait]
pub trait EchoPath: Send {
    /// Sends echo `seq` to `target` (the `index`-th target) and returns
    /// the future of its outcome. A reply later than `timeout` is lost.
    async fn echo(&mut self, target: IpAddr, index: usize, seq: u16, timeout: Duration)
        -> InFlight;

    fn describe(&self) -> String;

    /// Set by synthetic paths so their rounds are never mistaken for real ones.
    fn label(&self) -> Option<String> {
        None
    }
}

/// Probes continuously for the silence detector: each target on its own
/// staggered clock, densely while suspect, every echo judged by its
/// RTT-aware deadline and still counted if its reply comes within
/// `timeout`. A round lasts until just before the next interval, or ends
/// at once when the path is judged silent; [`Prober::verdict`] then says
/// what the state machine should observe.
pub struct SilenceProber<P> {
    path: P,
    targets: Vec<IpAddr>,
    config: SilenceConfig,
    interval: Duration,
    /// Started by the first round, so silence is never measured from
    /// before probing began.
    detector: Option<Detector>,
    on_primary: bool,
    in_flight: FuturesUnordered<Tagged>,
    verdict: Option<RoundSummary>,
}

impl<P: EchoPath> SilenceProber<P> {
    pub fn new(probe: &ProbeConfig, detect: &DetectConfig, path: P) -> Self {
        Self {
            path,
            targets: probe.targets.clone(),
            config: detect.silence_config(probe.interval, probe.count, probe.timeout, probe.round),
            interval: probe.interval,
            detector: None,
            on_primary: true,
            in_flight: FuturesUnordered::new(),
            verdict: None,
        }
    }

    fn via(&self) -> Via {
        if self.on_primary {
            Via::Primary
        } else {
            Via::Backup
        }
    }
}

/// Sends `echo` over `path` and keeps its outcome in `in_flight`.
async fn send<P: EchoPath>(
    path: &mut P,
    in_flight: &mut FuturesUnordered<Tagged>,
    target: IpAddr,
    timeout: Duration,
    echo: EchoId,
) {
    // Sequence numbers wrap; an echo lives far shorter than 65536 echoes.
    let seq = echo.seq as u16;
    // Replies count until the configured timeout; the detector's own
    // deadline only decides when an echo is evidence of silence.
    let outcome = path.echo(target, echo.target, seq, timeout).await;
    in_flight.push(Box::pin(outcome.map(move |outcome| (echo, outcome))));
}

/// Hands every echo that has finished to the detector, without waiting.
fn drain(in_flight: &mut FuturesUnordered<Tagged>, detector: &mut Detector) {
    while let Some(Some((echo, outcome))) = in_flight.next().now_or_never() {
        handle(detector, echo, outcome);
    }
}

fn handle(detector: &mut Detector, echo: EchoId, outcome: Echo) {
    match outcome {
        Echo::Reply(rtt) => detector.reply(echo, rtt),
        // The detector gives up on it at the same timeout.
        Echo::Lost => {}
        Echo::Failed(e) => detector.send_failed(echo, e, Instant::now()),
    }
}

#[async_trait]
impl<P: EchoPath> Prober for SilenceProber<P> {
    /// Cancel-safe: the detector and the echoes in flight live in the
    /// prober, so a round cut short by the caller loses nothing.
    async fn round(&mut self) -> RoundReport {
        let start = Instant::now();
        let end = start + self.interval.saturating_sub(round_margin(self.interval));
        let via = self.via();
        let Self {
            path,
            targets,
            config,
            detector,
            in_flight,
            verdict,
            ..
        } = self;
        let detector =
            detector.get_or_insert_with(|| Detector::new(config.clone(), targets, start));
        let now = loop {
            // Replies already in hand first: a wake-up that came late on a
            // busy machine must not judge an answered echo as late.
            drain(in_flight, detector);
            let now = Instant::now();
            for echo in detector.poll(now, via) {
                send(path, in_flight, targets[echo.target], config.timeout, echo).await;
            }
            // Polling the set sends what was just queued, and may finish
            // echoes that failed at once.
            drain(in_flight, detector);
            if (via == Via::Primary && detector.silent(now, via)) || now >= end {
                break now;
            }
            let wake = detector.next_wake(via).min(end);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                Some((echo, outcome)) = in_flight.next() => handle(detector, echo, outcome),
            }
        };
        let (mut report, summary) = detector.close_window(now, via);
        report.label = path.label();
        *verdict = Some(summary);
        report
    }

    fn describe(&self) -> String {
        self.path.describe()
    }

    fn judges_path(&self) -> bool {
        true
    }

    fn set_on_primary(&mut self, on_primary: bool) {
        self.on_primary = on_primary;
    }

    /// The verdict of the round just returned; after a round the caller
    /// cut short, the detector's judgement now, never a made-up loss.
    fn verdict(&mut self) -> Option<RoundSummary> {
        let via = self.via();
        self.verdict.take().or_else(|| {
            self.detector
                .as_mut()
                .map(|d| d.close_window(Instant::now(), via).1)
        })
    }
}
