//! Seeded path models: what the primary path does to each echo.
//!
//! A model has a *background* (independent loss and a round-trip time
//! distribution) and, optionally, path-wide *bursts*: a two-state process
//! with exponentially distributed good spells and burst lengths, the same
//! for every target. A burst with 100 % loss is *silent*, an outage as the
//! VPC sees it; that is the only state the oracle fails over for.
//!
//! Same seed, same path: the bursts come from a seeded generator, and the
//! fate of an echo is a hash of (seed, target, send instant), so every
//! detector that sends at the same instant sees the same outcome.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Round-trip times outside (or inside) bursts.
#[derive(Debug, Clone, Copy)]
pub enum Rtt {
    /// A clean Direct Connect path: 2 ms plus up to 1 ms.
    Clean,
    /// max(0, normal(mean, sd)) ms, as `bench/echo_delay.py` answers live.
    Jitter { mean_ms: f64, sd_ms: f64 },
}

/// Path-wide bursts.
#[derive(Debug, Clone, Copy)]
pub struct Bursts {
    /// Mean good spell between bursts, seconds.
    pub mean_gap: f64,
    /// Mean burst length, seconds.
    pub mean_len: f64,
    /// Loss inside a burst; 1.0 is silent.
    pub loss: f64,
    /// Round-trip times inside a burst, when it is not silent.
    pub rtt: Rtt,
}

#[derive(Debug, Clone)]
pub struct PathModel {
    pub name: String,
    pub loss: f64,
    pub rtt: Rtt,
    pub bursts: Option<Bursts>,
}

impl PathModel {
    pub fn iid(loss: f64) -> Self {
        Self {
            name: format!("iid {:.0}%", loss * 100.0),
            loss,
            rtt: Rtt::Clean,
            bursts: None,
        }
    }

    pub fn jitter(mean_ms: f64, sd_ms: f64, loss: f64) -> Self {
        let name = if loss > 0.0 {
            format!(
                "jitter {mean_ms:.0}±{sd_ms:.0} ms + {:.0}% loss",
                loss * 100.0
            )
        } else {
            format!("jitter {mean_ms:.0}±{sd_ms:.0} ms")
        };
        Self {
            name,
            loss,
            rtt: Rtt::Jitter { mean_ms, sd_ms },
            bursts: None,
        }
    }

    /// Silent bursts about every two minutes, `mean_len` seconds long on
    /// average, with 1 % loss between them.
    pub fn silent_bursts(mean_len: f64) -> Self {
        Self {
            name: format!("silent bursts {mean_len} s"),
            loss: 0.01,
            rtt: Rtt::Clean,
            bursts: Some(Bursts {
                mean_gap: 125.0,
                mean_len,
                loss: 1.0,
                rtt: Rtt::Clean,
            }),
        }
    }

    /// Silent bursts on a jittery path.
    pub fn silent_bursts_jitter(mean_len: f64, mean_ms: f64, sd_ms: f64) -> Self {
        Self {
            name: format!("silent bursts {mean_len} s, jitter {mean_ms:.0}±{sd_ms:.0} ms"),
            rtt: Rtt::Jitter { mean_ms, sd_ms },
            ..Self::silent_bursts(mean_len)
        }
    }

    /// Congestion bursts: slow and lossy, never silent. An ideal detector
    /// never fails over for them.
    pub fn slow_bursts(mean_len: f64) -> Self {
        Self {
            name: format!("slow bursts {mean_len} s: 500±300 ms, 50% loss"),
            loss: 0.01,
            rtt: Rtt::Clean,
            bursts: Some(Bursts {
                mean_gap: 125.0,
                mean_len,
                loss: 0.5,
                rtt: Rtt::Jitter {
                    mean_ms: 500.0,
                    sd_ms: 300.0,
                },
            }),
        }
    }

    /// Long-run share of echoes lost (replies later than any timeout aside).
    pub fn mean_loss(&self) -> f64 {
        match self.bursts {
            None => self.loss,
            Some(b) => {
                let bad = b.mean_len / (b.mean_len + b.mean_gap);
                bad * b.loss + (1.0 - bad) * self.loss
            }
        }
    }

    /// The bursts of one seeded day (or `seconds`), and the fate of echoes on it.
    pub fn trace(&self, seed: u64, seconds: u64) -> Trace {
        let mut bursts = Vec::new();
        if let Some(b) = self.bursts {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xB0B5_7000);
            let mut t = 0.0;
            let end = seconds as f64 + 60.0;
            loop {
                t += exponential(&mut rng, b.mean_gap);
                let len = exponential(&mut rng, b.mean_len);
                if t > end {
                    break;
                }
                bursts.push((secs_to_ns(t), secs_to_ns(t + len)));
                t += len;
            }
        }
        Trace {
            model: self.clone(),
            seed,
            bursts,
        }
    }
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

/// One seeded realisation of a model.
pub struct Trace {
    pub model: PathModel,
    pub seed: u64,
    /// Burst spells [start, end) in nanoseconds, in order.
    pub bursts: Vec<(u64, u64)>,
}

impl Trace {
    /// Whether `t` (ns) falls in a burst.
    fn in_burst(&self, t: u64) -> bool {
        let i = self.bursts.partition_point(|&(start, _)| start <= t);
        i > 0 && t < self.bursts[i - 1].1
    }

    fn silent_at(&self, t: u64) -> bool {
        self.model.bursts.is_some_and(|b| b.loss >= 1.0) && self.in_burst(t)
    }

    /// The silent spells, for the oracle; empty when bursts are not silent.
    pub fn silent_spells(&self) -> &[(u64, u64)] {
        if self.model.bursts.is_some_and(|b| b.loss >= 1.0) {
            &self.bursts
        } else {
            &[]
        }
    }

    /// The round-trip time of the echo sent to `target` at `sent` (ns), or
    /// `None` when it is lost. A reply that would cross a silent spell on
    /// its way back dies in it too.
    pub fn fate(&self, target: usize, sent: u64) -> Option<Duration> {
        let h = splitmix(self.seed ^ splitmix(target as u64 + 1) ^ sent);
        let burst = self.model.bursts.filter(|_| self.in_burst(sent));
        let (loss, rtt) = match burst {
            Some(b) => (b.loss, b.rtt),
            None => (self.model.loss, self.model.rtt),
        };
        if unit(h) < loss {
            return None;
        }
        let h2 = splitmix(h);
        let ms = match rtt {
            Rtt::Clean => 2.0 + unit(h2),
            Rtt::Jitter { mean_ms, sd_ms } => {
                // Box–Muller; 0.1 ms for the veth and the responder.
                let z = (-2.0 * (1.0 - unit(h2)).ln()).sqrt()
                    * (std::f64::consts::TAU * unit(splitmix(h2))).cos();
                (mean_ms + sd_ms * z).max(0.0) + 0.1
            }
        };
        let rtt = Duration::from_secs_f64(ms / 1000.0);
        let back = sent + u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX);
        (!self.silent_at(back)).then_some(rtt)
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
