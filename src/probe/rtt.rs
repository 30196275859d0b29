//! Per-target round-trip time estimate and the echo deadline it gives.
//!
//! TCP's retransmission timer (RFC 6298): a smoothed mean `srtt` and a
//! smoothed mean deviation `rttvar`, updated with gains 1/8 and 1/4. An echo
//! is judged lost once `clamp(srtt + k·rttvar, floor, timeout)` has passed
//! without a reply: a few milliseconds on a clean Direct Connect path, and
//! as long as the path's own jitter needs on a noisy one. Unlike TCP there is
//! no retransmission ambiguity (every echo has its own sequence number), so
//! a reply that arrives after the deadline is still a valid sample: it is
//! how the estimate learns that the path got slower.
//!
//! Pure: samples in, deadline out; no clock.

use std::time::Duration;

/// How long each echo waits before it counts as evidence of silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Always the configured `timeout`.
    Fixed,
    /// `clamp(srtt + k·rttvar, floor, timeout)`, learned per target.
    Adaptive { floor: Duration, k: u32 },
}

/// Smoothed RTT and its mean deviation for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RttEstimator {
    /// `None` until the first reply.
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self::new()
    }
}

impl RttEstimator {
    pub fn new() -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Learns from one reply's round-trip time (RFC 6298, section 2).
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                // rttvar ← 3/4·rttvar + 1/4·|srtt − rtt|, before srtt moves.
                self.rttvar = self.rttvar * 3 / 4 + err / 4;
                // srtt ← 7/8·srtt + 1/8·rtt, without going negative.
                self.srtt = Some(if rtt >= srtt {
                    srtt + (rtt - srtt) / 8
                } else {
                    srtt - (srtt - rtt) / 8
                });
            }
        }
    }

    /// How long an echo sent now waits for its reply before it counts as
    /// lost: never below `floor` nor above `timeout`, and the full `timeout`
    /// until the first reply has been seen.
    pub fn deadline(&self, rule: Deadline, timeout: Duration) -> Duration {
        match (rule, self.srtt) {
            (Deadline::Fixed, _) | (Deadline::Adaptive { .. }, None) => timeout,
            (Deadline::Adaptive { floor, k }, Some(srtt)) => {
                let want = srtt.saturating_add(self.rttvar.saturating_mul(k));
                // floor ≤ timeout is validated; min() first keeps the
                // timeout the upper bound even if it were not.
                want.max(floor).min(timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMEOUT: Duration = Duration::from_millis(800);
    const RULE: Deadline = Deadline::Adaptive {
        floor: Duration::from_millis(20),
        k: 4,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fed(samples: impl IntoIterator<Item = Duration>) -> RttEstimator {
        let mut e = RttEstimator::new();
        for s in samples {
            e.sample(s);
        }
        e
    }

    #[test]
    fn waits_the_full_timeout_until_the_first_reply() {
        let e = RttEstimator::new();
        assert_eq!(e.deadline(RULE, TIMEOUT), TIMEOUT);
        assert_eq!(e.deadline(Deadline::Fixed, TIMEOUT), TIMEOUT);
    }

    #[test]
    fn first_sample_follows_rfc_6298() {
        let e = fed([ms(100)]);
        assert_eq!(e.srtt(), Some(ms(100)));
        assert_eq!(e.rttvar(), ms(50));
        // 100 + 4 × 50
        assert_eq!(e.deadline(RULE, TIMEOUT), ms(300));
    }

    #[test]
    fn a_clean_fast_path_waits_only_the_floor() {
        let e = fed(std::iter::repeat_n(Duration::from_micros(1500), 50));
        assert_eq!(e.deadline(RULE, TIMEOUT), ms(20));
    }

    #[test]
    fn the_fixed_rule_ignores_what_it_learned() {
        let e = fed([ms(1), ms(2), ms(1)]);
        assert_eq!(e.deadline(Deadline::Fixed, TIMEOUT), TIMEOUT);
    }

    #[test]
    fn a_jittery_path_gets_a_deadline_beyond_most_of_its_replies() {
        // 100 ± 100 ms, as the live noise benchmark's echo responder draws
        // them: the deadline must sit above nearly all of them.
        let samples: Vec<Duration> = [
            180, 40, 0, 220, 95, 130, 10, 60, 250, 150, 90, 0, 120, 75, 300, 45, 110, 5, 160, 85,
        ]
        .iter()
        .map(|&n| ms(n))
        .collect();
        let e = fed(samples.iter().copied().cycle().take(200));
        let d = e.deadline(RULE, TIMEOUT);
        assert!(d >= ms(300), "deadline {d:?} below the largest sample");
        assert!(
            d < TIMEOUT,
            "deadline {d:?} should not need the whole timeout"
        );
    }

    proptest! {
        #[test]
        fn the_deadline_stays_within_floor_and_timeout(
            samples in proptest::collection::vec(0u64..5_000_000, 0..200),
            floor_us in 1u64..200_000,
            extra_us in 0u64..2_000_000,
            k in 1u32..8,
        ) {
            let floor = Duration::from_micros(floor_us);
            let timeout = floor + Duration::from_micros(extra_us);
            let rule = Deadline::Adaptive { floor, k };
            let mut e = RttEstimator::new();
            for s in samples {
                e.sample(Duration::from_micros(s));
                let d = e.deadline(rule, timeout);
                prop_assert!(d >= floor, "{d:?} below the floor {floor:?}");
                prop_assert!(d <= timeout, "{d:?} above the timeout {timeout:?}");
            }
        }

        /// srtt is a weighted mean of the samples, so it never leaves their range.
        #[test]
        fn srtt_stays_within_the_samples(
            samples in proptest::collection::vec(0u64..5_000_000, 1..200),
        ) {
            let e = fed(samples.iter().map(|&s| Duration::from_micros(s)));
            let lo = Duration::from_micros(*samples.iter().min().unwrap());
            let hi = Duration::from_micros(*samples.iter().max().unwrap());
            let srtt = e.srtt().unwrap();
            prop_assert!(lo <= srtt && srtt <= hi, "{srtt:?} outside {lo:?}..={hi:?}");
        }

        /// A step up in RTT is covered by the very next deadline: one late
        /// reply moves srtt by 1/8 and rttvar by 1/4 of the step, and with
        /// k ≥ 4 that is at least the whole step (up to the timeout).
        #[test]
        fn one_late_reply_covers_a_step_up(
            before_us in 0u64..100_000,
            history in 1usize..100,
            after_us in 0u64..2_000_000,
        ) {
            let before = Duration::from_micros(before_us);
            let after = before + Duration::from_micros(after_us);
            let mut e = fed(std::iter::repeat_n(before, history));
            e.sample(after);
            let d = e.deadline(RULE, TIMEOUT);
            prop_assert!(d >= after.min(TIMEOUT), "{d:?} < the new RTT {after:?}");
        }

        /// After a step down the deadline comes back: within 40 replies at
        /// the new RTT it is no more than a tenth of the step above where it
        /// settles (the new RTT, or the floor).
        #[test]
        fn the_deadline_comes_back_down_within_40_replies(
            before_us in 0u64..700_000,
            history in 1usize..100,
            down_us in 0u64..700_000,
        ) {
            let before = Duration::from_micros(before_us);
            let after = before.saturating_sub(Duration::from_micros(down_us));
            let mut e = fed(std::iter::repeat_n(before, history));
            let high = e.deadline(RULE, TIMEOUT);
            for _ in 0..40 {
                e.sample(after);
            }
            let settled = after.max(Duration::from_millis(20)).min(TIMEOUT);
            let d = e.deadline(RULE, TIMEOUT);
            let slack = high.saturating_sub(settled) / 10 + Duration::from_micros(1);
            prop_assert!(d <= settled + slack, "{d:?} still above {settled:?} + {slack:?}");
        }
    }
}
