//! False failovers under noise, simulated: the real round rule and state
//! machine driven by seeded loss models over 24 h of simulated time per
//! setting, on a primary path that never really fails. Every failover
//! counted here is a false one.
//!
//! Prints a table and writes bench/results/false_failover.csv.
//! Run: cargo bench --profile release --bench false_failover (bench/run.sh does)

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use route_failover::fsm::{Failback, Fsm, Policy, Via};
use route_failover::probe::{summarize, RoundPolicy, RoundReport, TargetReport};
use tokio::time::Instant;

const DAY: u64 = 24 * 3600;
const SEEDS: u64 = 3;
/// The burst model's time step.
const STEP: Duration = Duration::from_millis(100);

/// Whether each echo is lost.
enum Loss {
    /// Independent loss with probability p.
    Iid(f64),
    /// Gilbert–Elliott: a good and a bad state of the whole path (every
    /// target sees the same burst), stepped every 100 ms of simulated time.
    GilbertElliott {
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    fn name(&self) -> String {
        match self {
            Loss::Iid(p) => format!("iid {:.0}%", p * 100.0),
            Loss::GilbertElliott {
                p_bad_to_good,
                loss_bad,
                ..
            } => format!(
                "GE bursts: mean {:.1} s at {:.0}% loss",
                STEP.as_secs_f64() / p_bad_to_good,
                loss_bad * 100.0
            ),
        }
    }

    /// Long-run share of echoes lost.
    fn mean(&self) -> f64 {
        match *self {
            Loss::Iid(p) => p,
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let bad = p_good_to_bad / (p_good_to_bad + p_bad_to_good);
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// A profile under test: the knobs that trade detection time for noise.
struct Profile {
    name: &'static str,
    interval: Duration,
    timeout: Duration,
    count: u32,
    fall: u32,
    targets: u32,
}

impl Profile {
    /// Time from a silent cut to the failover decision, at worst: the cut
    /// lands just after a round's echoes left, then `fall` full rounds, the
    /// last one ending at its last echo's timeout.
    fn detection(&self) -> Duration {
        let spacing = self.interval.saturating_sub(self.timeout) / self.count;
        self.interval * self.fall + spacing * (self.count - 1) + self.timeout
    }
}

/// The path's burst state, advanced in fixed steps of simulated time.
struct LinkState {
    bad: bool,
    at: Duration,
}

impl LinkState {
    /// Whether an echo sent at `t` is lost.
    fn lost(&mut self, loss: &Loss, t: Duration, rng: &mut StdRng) -> bool {
        match *loss {
            Loss::Iid(p) => rng.random_bool(p),
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                while self.at + STEP <= t {
                    self.at += STEP;
                    let flip = if self.bad {
                        p_bad_to_good
                    } else {
                        p_good_to_bad
                    };
                    if rng.random_bool(flip) {
                        self.bad = !self.bad;
                    }
                }
                rng.random_bool(if self.bad { loss_bad } else { loss_good })
            }
        }
    }
}

/// Counts (false) failovers over `seconds` of simulated time; also the
/// number of down rounds.
fn simulate(profile: &Profile, loss: &Loss, seconds: u64, seed: u64) -> (u32, u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let policy = Policy {
        fall: profile.fall,
        rise: 10,
        hold_down: Duration::from_secs(60),
        failback: Failback::Auto,
        max_failovers: u32::MAX,
        flap_window: Duration::from_secs(3600),
    };
    let round_policy = RoundPolicy {
        min_replies: 1,
        quorum: profile.targets,
    };
    let spacing = profile.interval.saturating_sub(profile.timeout) / profile.count;
    let t0 = Instant::now();
    let mut fsm = Fsm::new(policy, Via::Primary, t0);
    let mut link = LinkState {
        bad: false,
        at: Duration::ZERO,
    };
    let rounds = seconds * 1000 / u64::try_from(profile.interval.as_millis()).unwrap();
    let (mut failovers, mut down_rounds) = (0, 0);
    for n in 1..=rounds {
        let start = profile.interval * (n as u32 - 1);
        // Echo k of every target leaves at start + k * spacing.
        let mut answered = vec![0u32; profile.targets as usize];
        for k in 0..profile.count {
            let t = start + spacing * k;
            for a in answered.iter_mut() {
                *a += u32::from(!link.lost(loss, t, &mut rng));
            }
        }
        let targets = answered
            .iter()
            .enumerate()
            .map(|(i, &a)| TargetReport {
                target: IpAddr::from([198, 18, 0, i as u8 + 1]),
                sent: profile.count,
                rtts: vec![Duration::from_millis(2); a as usize],
                error: None,
            })
            .collect();
        let summary = summarize(
            &RoundReport {
                targets,
                label: None,
            },
            round_policy,
        );
        down_rounds += u64::from(!summary.up);
        let step = fsm.observe(t0 + profile.interval * n as u32, &summary);
        if step.transition.is_some_and(|t| t.to == Via::Backup) {
            failovers += 1;
        }
    }
    (failovers, down_rounds)
}

fn main() {
    let p = |name, interval_ms, timeout_ms, count, fall, targets| Profile {
        name,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        count,
        fall,
        targets,
    };
    let profiles = [
        // The original loop: `ping -c 3 -W 1` to one host (a round takes
        // about 2 s, then it sleeps 2 s), and one bad round fails over.
        p(
            "script-like (4s, count 3, fall 1, 1 target)",
            4000,
            1000,
            3,
            1,
            1,
        ),
        p("fast (100ms, count 1, fall 3)", 100, 80, 1, 3, 2),
        p("1s, count 1, fall 1", 1000, 800, 1, 1, 2),
        p("1s, count 1, fall 3", 1000, 800, 1, 3, 2),
        p("1s, count 3, fall 1", 1000, 800, 3, 1, 2),
        p("1s, count 3, fall 2", 1000, 800, 3, 2, 2),
        p("default (1s, count 3, fall 3)", 1000, 800, 3, 3, 2),
        p("1s, count 3, fall 5", 1000, 800, 3, 5, 2),
    ];
    let losses = [
        Loss::Iid(0.05),
        Loss::Iid(0.10),
        Loss::Iid(0.20),
        Loss::Iid(0.40),
        // Path-wide bursts (100 ms steps): on average one every ~2 min,
        // lasting 0.5 s, 1 s or 2 s, nearly total while they last.
        Loss::GilbertElliott {
            p_good_to_bad: 0.0008,
            p_bad_to_good: 0.2,
            loss_good: 0.01,
            loss_bad: 0.95,
        },
        Loss::GilbertElliott {
            p_good_to_bad: 0.0008,
            p_bad_to_good: 0.1,
            loss_good: 0.01,
            loss_bad: 0.95,
        },
        Loss::GilbertElliott {
            p_good_to_bad: 0.0008,
            p_bad_to_good: 0.05,
            loss_good: 0.01,
            loss_bad: 1.0,
        },
    ];
    let mut csv = String::from("profile,interval_ms,count,fall,targets,detection_ms,loss_model,mean_loss,seeds,simulated_hours,false_failovers,false_failovers_per_day,down_round_share\n");
    println!("False failovers in 24 h of simulated time per seed ({SEEDS} seeds); quorum all targets, min_replies 1\n");
    println!(
        "{:<46} {:>10}  {:<36} {:>9} {:>10} {:>10}",
        "profile", "detect", "loss model", "mean loss", "false/day", "down rnds"
    );
    for profile in &profiles {
        for loss in &losses {
            let mut total = 0;
            let mut down = 0;
            let rounds_per_seed = DAY * 1000 / u64::try_from(profile.interval.as_millis()).unwrap();
            for seed in 0..SEEDS {
                let (f, d) = simulate(profile, loss, DAY, seed);
                total += f;
                down += d;
            }
            let per_day = f64::from(total) / SEEDS as f64;
            let down_share = down as f64 / (rounds_per_seed * SEEDS) as f64;
            println!(
                "{:<46} {:>8}ms  {:<36} {:>8.1}% {:>10.2} {:>9.4}%",
                profile.name,
                profile.detection().as_millis(),
                loss.name(),
                loss.mean() * 100.0,
                per_day,
                down_share * 100.0
            );
            let _ = writeln!(
                csv,
                "\"{}\",{},{},{},{},{},\"{}\",{:.5},{SEEDS},{},{total},{per_day:.3},{down_share:.6}",
                profile.name,
                profile.interval.as_millis(),
                profile.count,
                profile.fall,
                profile.targets,
                profile.detection().as_millis(),
                loss.name(),
                loss.mean(),
                24 * SEEDS,
            );
        }
    }
    let out = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bench/results/false_failover.csv"
    );
    std::fs::write(out, csv).expect("write the CSV");
    println!("\nwrote {out}");
}
