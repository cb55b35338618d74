//! GCRA on one atomic, and why it is keygate's own rather than `governor`'s.
//!
//! [`RateLimiter`] is the generic cell rate algorithm as `governor` (the
//! field's standard Rust rate limiter, already a dev-dependency) implements it:
//! a theoretical arrival time (TAT) per org, advanced by one emission interval
//! per allowed call; a call is refused when the TAT runs more than `burst - 1`
//! intervals ahead of now. Same rule, same integer arithmetic: the property
//! test below (`decides_exactly_as_governor_for_any_quota_and_call_sequence`)
//! drives both with one fake clock and checks that every call gets the same
//! decision, the same remaining burst, and a refusal the same wait to the
//! nanosecond. What keygate needs that `governor` does not give:
//!
//! * **8 bytes per org.** Here the state is one `AtomicU64` inside the org's
//!   record; the [`Rate`] (16 bytes) is derived from the org's limits when they
//!   change and kept with them. A `governor::DefaultDirectRateLimiter` is 72
//!   bytes (its state, its quota as GCRA parameters, its own 40-byte
//!   `QuantaClock` and a start instant; measured with `size_of` on x86-64), so
//!   one per org in place of this one (and of the `Rate` it would make
//!   redundant) would take `Org` from 184 bytes to 232, past its allocation's
//!   208-byte size class (`src/org/mod.rs`). A keyed `governor` limiter
//!   instead keeps each key's 8 bytes of state in a `DashMap` of its own: a
//!   second map lookup per request beside the org's, a second copy of each
//!   org id as the map's key, and `retain_recent` calls to shed idle keys,
//!   where keygate's state lives and dies with its org.
//! * **The quota passed per call.** [`RateLimiter::check`] takes the [`Rate`]
//!   with each call, so when a provider changes an org's limits the new rate
//!   applies to the state the org already has: a client that emptied its burst
//!   does not get a fresh one by a limits change, and a lowered rate takes
//!   effect at the next call (`a_rate_change_applies_to_the_state_already_there`).
//!   `governor` fixes the quota when the limiter is built; changing it means
//!   building a new one, which starts empty, or moving the state over with
//!   `into_state_store`, which consumes the limiter (impossible while requests
//!   share the org) and measures the carried-over TAT from the new limiter's
//!   start instant, so the org would be refused for as long as the old
//!   limiter had lived.
//! * **keygate's clock, read once.** `check` takes `now`: the gate reads
//!   keygate's [`Clock`](crate::clock::Clock) once per request and judges the
//!   subscription, the threshold window and the rate at that one instant, and
//!   tests move all three with one `ManualClock`. A `governor` limiter reads its
//!   own clock inside `check()` (there is no `check` at a given instant); using
//!   keygate's would take an adapter clock per limiter, a second clock read per
//!   request, and two instants that can disagree across a window's edge.
//! * **No allocation**, here and in `governor`'s direct limiter alike: a check
//!   is one load and one compare-and-swap in both.
//!
//! `benches/layer.rs` measures the two side by side (time per check and
//! bytes per limiter).

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

    /// This node's share when `nodes` nodes serve the org together (cluster
    /// mode): the rate divided by `nodes` (each call spaced `nodes` times as
    /// far apart) and the burst too, rounded up, so that `nodes` nodes under
    /// even load together admit the org's rate and at most `nodes - 1` calls
    /// more than its burst. One multiplication and one division; `nodes`
    /// of 1 or 0 is the rate itself.
    #[inline]
    pub fn shared_by(&self, nodes: u32) -> Rate {
        if nodes <= 1 {
            return *self;
        }
        let n = u64::from(nodes);
        let emission = self.emission.saturating_mul(n);
        let burst = (self.tolerance / self.emission.max(1)).div_ceil(n).max(1);
        Rate {
            emission,
            tolerance: emission.saturating_mul(burst),
        }
    }

    /// The emission interval and the tolerance, in nanoseconds: how an
    /// org's record holds the rate ([`Org`](crate::org::Org)).
    pub(crate) fn to_parts(self) -> (u64, u64) {
        (self.emission, self.tolerance)
    }

    /// The rate whose [`to_parts`](Rate::to_parts) these are.
    pub(crate) fn from_parts(emission: u64, tolerance: u64) -> Rate {
        Rate {
            emission,
            tolerance,
        }
    }

    /// The sustained rate, calls per second (rounded down, at least 1).
    pub fn per_sec(&self) -> u32 {
        u32::try_from(1_000_000_000 / self.emission.max(1))
            .unwrap_or(u32::MAX)
            .max(1)
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

    /// Makes the whole burst available again, as for a new limiter.
    pub fn reset(&self) {
        self.tat.store(0, Ordering::Relaxed);
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
    fn three_nodes_sharing_a_rate_admit_it_together_under_even_load() {
        let whole = Rate::new(50, 10);
        let share = whole.shared_by(3);
        assert_eq!(share.burst(), 4);
        assert_eq!(whole.shared_by(1), whole);
        // Ten seconds of calls every millisecond, spread evenly over three
        // nodes: together they admit the rate's 500, plus the bursts.
        let nodes = [RateLimiter::new(), RateLimiter::new(), RateLimiter::new()];
        let admitted = (0..10_000u64)
            .filter(|ms| nodes[(*ms % 3) as usize].check(at(*ms), &share).is_ok())
            .count();
        assert!((500..=500 + 3 * 4).contains(&admitted), "{admitted}");
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
    fn a_rate_change_applies_to_the_state_already_there() {
        let l = RateLimiter::new();
        let fast = Rate::new(10, 3);
        for _ in 0..3 {
            assert!(l.check(at(0), &fast).is_ok());
        }
        // A raised burst adds only the difference, not a fresh burst.
        let bigger = Rate::new(10, 5);
        assert_eq!(l.check(at(0), &bigger), Ok(1));
        assert_eq!(l.check(at(0), &bigger), Ok(0));
        assert!(l.check(at(0), &bigger).is_err());
        // A lowered rate holds at once: one call a second from here.
        let slow = Rate::new(1, 1);
        assert!(l.check(at(500), &slow).is_ok());
        assert!(l.check(at(1_400), &slow).is_err());
        assert!(l.check(at(1_500), &slow).is_ok());
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

/// keygate's limiter against `governor`'s, one call at a time on one fake
/// clock.
#[cfg(test)]
mod against_governor {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use governor::clock::{Clock as _, FakeRelativeClock};
    use governor::middleware::StateInformationMiddleware;
    use governor::state::{InMemoryState, NotKeyed};
    use proptest::prelude::*;

    use super::*;

    type Governor = governor::RateLimiter<
        NotKeyed,
        InMemoryState,
        FakeRelativeClock,
        StateInformationMiddleware,
    >;

    /// keygate's clock starts here; governor's fake one at its own zero.
    const T0: u64 = 1_800_000_000_000_000_000;

    /// A quota (rate, burst) and a sequence of (nanoseconds to advance,
    /// calls to make then). Advances are drawn on the scale of the emission
    /// interval, so sequences both run into the limit and drain it.
    fn quota_and_steps() -> impl Strategy<Value = (u32, u32, Vec<(u64, u32)>)> {
        (
            prop_oneof![1u32..=1_000, 1_000u32..=10_000_000],
            prop_oneof![1u32..=10, 1u32..=1_000],
        )
            .prop_flat_map(|(rate, burst)| {
                let emission = 1_000_000_000 / u64::from(rate);
                let step = (
                    prop_oneof![
                        Just(0u64),
                        0..=emission * 2,
                        0..=emission * (u64::from(burst) + 2),
                    ],
                    1u32..=burst.saturating_add(2).min(50),
                );
                (Just(rate), Just(burst), prop::collection::vec(step, 1..60))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decides_exactly_as_governor_for_any_quota_and_call_sequence(
            (rate, burst, steps) in quota_and_steps()
        ) {
            let clock = FakeRelativeClock::default();
            let quota = governor::Quota::per_second(NonZeroU32::new(rate).unwrap())
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let theirs: Governor = governor::RateLimiter::direct_with_clock(quota, clock.clone())
                .with_middleware::<StateInformationMiddleware>();
            let ours = RateLimiter::new();
            let ours_rate = Rate::new(rate, burst);

            let mut elapsed = 0u64;
            for (advance, calls) in steps {
                clock.advance(Duration::from_nanos(advance));
                elapsed += advance;
                let now = Timestamp::from_nanos(T0 + elapsed);
                for call in 0..calls {
                    match (ours.check(now, &ours_rate), theirs.check()) {
                        (Ok(remaining), Ok(snapshot)) => prop_assert_eq!(
                            remaining,
                            snapshot.remaining_burst_capacity(),
                            "remaining burst at {} ns, call {}", elapsed, call
                        ),
                        (Err(refused), Err(not_until)) => {
                            let wait = not_until.wait_time_from(clock.now());
                            prop_assert_eq!(
                                refused.retry_after, wait,
                                "wait at {} ns, call {}", elapsed, call
                            );
                            prop_assert_eq!(refused.limit, burst);
                        }
                        (ours, theirs) => prop_assert!(
                            false,
                            "at {} ns, call {}: keygate {:?}, governor allowed: {}",
                            elapsed, call, ours, theirs.is_ok()
                        ),
                    }
                }
            }
        }
    }
}
