//! GCRA on one atomic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Timestamp;

/// A rate and burst, as GCRA's emission interval and tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds between calls at the sustained rate.
    emission: u64,
    /// How far ahead of now the theoretical arrival time may run: `burst`
    /// emission intervals.
    tolerance: u64,
}

impl Rate {
    /// `rate_per_sec` sustained calls a second, `burst` at once. Both at least 1.
    pub fn new(rate_per_sec: u32, burst: u32) -> Rate {
        let emission = 1_000_000_000 / u64::from(rate_per_sec.max(1));
        let burst = burst.max(1);
        Rate {
            emission,
            tolerance: emission.saturating_mul(u64::from(burst)),
        }
    }

    /// The burst, which is also the most calls a client can make at once.
    pub fn burst(&self) -> u32 {
        u32::try_from(self.tolerance / self.emission.max(1)).unwrap_or(u32::MAX)
    }
}

/// A refusal by the rate limiter, with what the `Retry-After` and
/// `x-ratelimit-*` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// The burst: calls allowed at once.
    pub limit: u32,
    /// How long until one more call is allowed.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset_after: Duration,
}

/// One org's GCRA state: the theoretical arrival time of the next call, in
/// nanoseconds since the epoch.
#[derive(Debug, Default)]
pub struct RateLimiter {
    tat: AtomicU64,
}

impl RateLimiter {
    /// A limiter with its whole burst available.
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Admits one call at `now` under `rate`, returning how many more calls could
    /// be made at once, or refuses it. A refused call costs nothing.
    pub fn check(&self, now: Timestamp, rate: &Rate) -> Result<u32, RateLimited> {
        let now = now.as_nanos();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(rate.emission);
            let ahead = next - now;
            if ahead > rate.tolerance {
                return Err(RateLimited {
                    limit: rate.burst(),
                    retry_after: Duration::from_nanos(ahead - rate.tolerance),
                    reset_after: Duration::from_nanos(tat.saturating_sub(now)),
                });
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    let remaining = (rate.tolerance - ahead) / rate.emission.max(1);
                    return Ok(u32::try_from(remaining).unwrap_or(u32::MAX));
                }
                Err(seen) => tat = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_000);

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(T0.as_nanos() + ms * 1_000_000)
    }

    #[test]
    fn allows_a_burst_at_once_then_refuses() {
        let l = RateLimiter::new();
        let r = Rate::new(10, 5);
        for expected_remaining in (0..5).rev() {
            assert_eq!(l.check(T0, &r), Ok(expected_remaining));
        }
        let refused = l.check(T0, &r).unwrap_err();
        assert_eq!(refused.limit, 5);
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.reset_after, Duration::from_millis(500));
    }

    #[test]
    fn refills_at_the_sustained_rate() {
        let l = RateLimiter::new();
        let r = Rate::new(10, 1);
        assert!(l.check(at(0), &r).is_ok());
        assert!(l.check(at(50), &r).is_err());
        assert!(l.check(at(100), &r).is_ok());
        assert!(l.check(at(150), &r).is_err());
        assert!(l.check(at(200), &r).is_ok());
    }

    #[test]
    fn a_refused_call_costs_nothing() {
        let l = RateLimiter::new();
        let r = Rate::new(10, 1);
        assert!(l.check(at(0), &r).is_ok());
        for _ in 0..100 {
            assert!(l.check(at(10), &r).is_err());
        }
        assert!(l.check(at(100), &r).is_ok());
    }

    #[test]
    fn an_idle_org_gets_its_whole_burst_back_and_no_more() {
        let l = RateLimiter::new();
        let r = Rate::new(100, 3);
        for _ in 0..3 {
            assert!(l.check(at(0), &r).is_ok());
        }
        let later = at(60_000);
        for _ in 0..3 {
            assert!(l.check(later, &r).is_ok());
        }
        assert!(l.check(later, &r).is_err());
    }

    #[test]
    fn concurrent_callers_never_exceed_the_burst() {
        let l = std::sync::Arc::new(RateLimiter::new());
        let r = Rate::new(1, 1000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..1000).filter(|_| l.check(T0, &r).is_ok()).count())
            })
            .collect();
        let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(allowed, 1000);
    }
}
