//! Capped exponential backoff with full jitter, for every retry loop.

use std::time::Duration;

/// Backoff before retry `failures` (1-based): capped exponential with full
/// jitter, and a small floor so a zero draw does not spin.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let (floor, ceiling) = backoff_range(failures, cap);
    Duration::from_millis(rand::random_range(millis(floor)..=millis(ceiling)))
}

/// The shortest and longest [`backoff`] can draw for retry `failures`:
/// a tenth of the ceiling, and the ceiling, 2^(failures-1) s capped at `cap`.
pub fn backoff_range(failures: u32, cap: Duration) -> (Duration, Duration) {
    let base = Duration::from_secs(1).saturating_mul(1 << failures.saturating_sub(1).min(16));
    let ceiling = base.min(cap).max(Duration::from_millis(1));
    (Duration::from_millis(millis(ceiling) / 10), ceiling)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_its_cap() {
        let cap = Duration::from_secs(30);
        for failures in 1..40 {
            let d = backoff(failures, cap);
            let ceiling = Duration::from_secs(1 << (failures - 1).min(16)).min(cap);
            assert!(d <= ceiling, "{failures}: {d:?} > {ceiling:?}");
            assert!(d >= ceiling / 10, "{failures}: {d:?} below floor");
        }
    }
}
