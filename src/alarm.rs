//! A timer that wakes the runtime once.
//!
//! tokio's timers sit in a hierarchical wheel of 64 ms slots (and coarser
//! above): a sleep whose deadline is not in the current slot wakes the
//! runtime at the start of the deadline's slot to move the timer down a
//! level, then again at the deadline. Measured here on a current-thread
//! runtime: 2 voluntary context switches for almost every sleep of 30 ms or
//! more, 1 for a blocking sleep. The round's waves are 66 ms apart, so that
//! second wake-up was half of its cost. [`Alarm`] is a timerfd on the
//! monotonic clock (the clock tokio's `Instant` reads) registered with
//! tokio's reactor: the kernel wakes the runtime exactly at the deadline.
//!
//! [`Ticker`] paces the agent's rounds the same way in production.
//!
//! Both follow the real clock only: tests that run on tokio's paused clock
//! keep tokio's own timers (the agent's default ticker; the ICMP prober
//! talks to real sockets and is never run on a paused clock).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
    Timespec,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::time::Instant;

/// A one-shot timer on a timerfd; one sleep at a time.
pub struct Alarm {
    fd: AsyncFd<OwnedFd>,
    /// How many times the timer woke a sleep: what tests count instead of
    /// the thread's context switches, which the host's load makes vary.
    wakes: AtomicU64,
}

impl Alarm {
    /// Needs a runtime with its I/O driver enabled.
    pub fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Self {
            fd: register(fd)?,
            wakes: AtomicU64::new(0),
        })
    }

    /// How many times the timer has woken a sleep so far.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
    }

    /// Waits until `deadline`. Cancel-safe: arming again replaces a timer
    /// left armed by a sleep that was dropped.
    pub async fn sleep_until(&self, deadline: Instant) {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if self.arm(left).is_err() {
                break;
            }
            let Ok(mut ready) = self.fd.readable().await else {
                break;
            };
            self.wakes.fetch_add(1, Ordering::Relaxed);
            // Consume the expiry count, so the fd is quiet until the next
            // one; the loop checks the deadline either way (a stale
            // readiness, or a wake-up a hair early).
            let mut count = [0u8; 8];
            let _ = rustix::io::read(self.fd.get_ref(), &mut count);
            ready.clear_ready();
        }
        // The timerfd failed (it never does in practice): tokio's timer.
        tokio::time::sleep_until(deadline).await;
    }

    fn arm(&self, after: Duration) -> io::Result<()> {
        let value = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(after.subsec_nanos()),
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &value)?;
        Ok(())
    }
}

/// tokio 1.54 made registering a descriptor `unsafe` (I/O safety: the
/// descriptor must stay open and the same while registered).
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
    // and refers to the same timer until the AsyncFd drops it, and
    // OwnedFd::as_raw_fd always returns that descriptor.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

/// A fixed-period ticker on an [`Alarm`], like tokio's `interval` with
/// `MissedTickBehavior::Skip`: the first tick is at once, a late tick
/// skips the ones it missed instead of bunching them up.
pub struct Ticker {
    alarm: Alarm,
    period: Duration,
    next: Instant,
}

impl Ticker {
    /// Needs a runtime with its I/O driver enabled.
    pub fn new(period: Duration) -> io::Result<Self> {
        Ok(Self {
            alarm: Alarm::new()?,
            period,
            next: Instant::now(),
        })
    }

    /// Waits for the next tick; cancel-safe.
    pub async fn tick(&mut self) -> Instant {
        self.alarm.sleep_until(self.next).await;
        let tick = self.next;
        let now = Instant::now();
        self.next = skip_missed(tick, self.period, now);
        tick
    }
}

/// The first tick after `now` on the grid `tick + k·period`, k ≥ 1.
fn skip_missed(tick: Instant, period: Duration, now: Instant) -> Instant {
    let next = tick + period;
    if next > now || period.is_zero() {
        return next;
    }
    let behind = now.duration_since(next).as_nanos();
    let periods = u32::try_from(behind / period.as_nanos() + 1).unwrap_or(u32::MAX);
    next + period.saturating_mul(periods)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_before() {
        let alarm = Alarm::new().unwrap();
        for ms in [0u64, 5, 30, 70] {
            let start = Instant::now();
            let deadline = start + Duration::from_millis(ms);
            alarm.sleep_until(deadline).await;
            let late = Instant::now().saturating_duration_since(deadline);
            assert!(Instant::now() >= deadline);
            assert!(late < Duration::from_millis(50), "{ms} ms: {late:?} late");
        }
    }

    #[test]
    fn a_late_tick_skips_what_it_missed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(skip_missed(t0, s, t0), t0 + s);
        assert_eq!(skip_missed(t0, s, t0 + Duration::from_millis(999)), t0 + s);
        assert_eq!(skip_missed(t0, s, t0 + s), t0 + 2 * s);
        assert_eq!(
            skip_missed(t0, s, t0 + Duration::from_millis(3500)),
            t0 + 4 * s
        );
    }

    #[tokio::test]
    async fn the_ticker_ticks_at_once_then_every_period() {
        let period = Duration::from_millis(40);
        let mut ticker = Ticker::new(period).unwrap();
        let first = ticker.tick().await;
        assert!(first.elapsed() < Duration::from_millis(20));
        for k in 1..4 {
            let tick = ticker.tick().await;
            assert_eq!(tick, first + period * k);
            assert!(Instant::now() >= tick);
        }
    }

    #[tokio::test]
    async fn a_dropped_sleep_leaves_nothing_behind() {
        let alarm = Alarm::new().unwrap();
        let soon = Instant::now() + Duration::from_millis(5);
        // Cut short while armed for 5 ms; its expiry must not end the next
        // sleep early.
        let _ = tokio::time::timeout(Duration::from_millis(1), alarm.sleep_until(soon)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        let deadline = Instant::now() + Duration::from_millis(30);
        alarm.sleep_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }
}
