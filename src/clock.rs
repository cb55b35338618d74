//! Time, as keygate sees it.
//!
//! Every rule that depends on time (subscription expiry, the threshold window, the
//! rate limiter) reads it through [`Clock`], so tests move time by hand with
//! [`ManualClock`] instead of sleeping. [`SystemClock`] is wall-clock time made
//! monotonic: it reads the system time once at start and then adds the elapsed
//! monotonic time, so a wall-clock step backwards never refills a rate limiter or
//! reopens a threshold window.
//!
//! The gate reads the clock once per request, so its cost is part of every
//! request's. [`SystemClock`] counts the elapsed time with `quanta` (what
//! `governor` uses): the CPU's time-stamp counter, one instruction and a
//! multiply-shift, where it is invariant, and the operating system's monotonic
//! clock where it is not. In one run of the layer bench on this project's busy
//! machine, a GCRA check with a clock read went from 84 ns (`Instant::now`, a
//! vDSO call) to 26, `governor`'s 26 (`gcra_allowed_real_clock_*`; the check
//! alone is 8; BENCHMARKS.md, "Issue 17").

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A point in time: nanoseconds since the Unix epoch.
///
/// `u64` nanoseconds reach the year 2554, far beyond anything keygate stores.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp from nanoseconds since the Unix epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// A timestamp from whole seconds since the Unix epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the Unix epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_secs(self) -> u64 {
        self.0 / 1_000_000_000
    }

    /// This timestamp moved forward by `d`, saturating at the far end.
    pub fn saturating_add(self, d: Duration) -> Self {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(d))
    }

    /// Parses an RFC 3339 date-time with any offset, such as
    /// `2026-11-22T05:00:00Z` or `2026-11-22T06:30:00.5+01:30`.
    ///
    /// Dates before 1970 or beyond the year 2554 are refused: they cannot be a
    /// meaningful subscription end.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimestampError> {
        // The `time` parser accepts any byte between date and time; RFC 3339
        // allows only `T` (or `t`).
        if !matches!(s.as_bytes().get(10), Some(b'T' | b't')) {
            return Err(TimestampError::Syntax);
        }
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimestampError::Syntax)?;
        let nanos = dt.unix_timestamp_nanos();
        u64::try_from(nanos)
            .map(Timestamp)
            .map_err(|_| TimestampError::OutOfRange)
    }

    /// Formats as RFC 3339 in UTC, e.g. `2026-11-22T05:00:00Z`.
    pub fn to_rfc3339(self) -> String {
        // Every u64 nanosecond count is a valid OffsetDateTime (years up to 2554)
        // and every such value formats as RFC 3339, so neither step can fail.
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0))
            .ok()
            .and_then(|dt| dt.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> serde::Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::de::parse_str(d, Timestamp::parse_rfc3339)
    }
}

/// Why a date-time was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimestampError {
    /// Not RFC 3339.
    #[error("not an RFC 3339 date-time")]
    Syntax,
    /// Before 1970 or after 2554.
    #[error("date-time out of range (1970 to 2554)")]
    OutOfRange,
}

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    /// The current time. Successive calls never go backwards.
    fn now(&self) -> Timestamp;
}

/// Wall-clock time at start, advanced by the monotonic clock.
#[derive(Debug, Clone)]
pub struct SystemClock {
    /// The monotonic counter (see the module docs).
    counter: quanta::Clock,
    /// The counter's raw reading at start.
    started: u64,
    started_at: Timestamp,
}

impl SystemClock {
    /// Reads the system time once; from then on time advances monotonically.
    pub fn new() -> Self {
        // quanta calibrates the counter against the monotonic clock once
        // per process, on the first `Clock::new`.
        let counter = quanta::Clock::new();
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        SystemClock {
            started: counter.raw(),
            counter,
            started_at: Timestamp::EPOCH.saturating_add(since_epoch),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Timestamp {
        // 0 for a reading at or before the start (a counter a core behind
        // another's): never before the start, and the rate limiter and the
        // threshold window take an instant a few cycles late as the same.
        let elapsed = self
            .counter
            .delta_as_nanos(self.started, self.counter.raw());
        Timestamp(self.started_at.0.saturating_add(elapsed))
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `at`.
    pub fn new(at: Timestamp) -> Self {
        ManualClock(AtomicU64::new(at.as_nanos()))
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let d = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_add(d, Ordering::SeqCst);
    }

    /// Sets the clock to `at`, which must not be earlier than now.
    pub fn set(&self, at: Timestamp) {
        self.0.fetch_max(at.as_nanos(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_an_offset_is_read_as_the_same_instant_in_utc() {
        let a = Timestamp::parse_rfc3339("2026-11-22T06:30:00+01:30").unwrap();
        let b = Timestamp::parse_rfc3339("2026-11-22T05:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_rfc3339(), "2026-11-22T05:00:00Z");
    }

    #[test]
    fn garbage_and_out_of_range_dates_are_refused() {
        assert_eq!(
            Timestamp::parse_rfc3339("2026-13-40T00:00:00Z"),
            Err(TimestampError::Syntax)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("yesterday"),
            Err(TimestampError::Syntax)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2027-06-01x00:00:00Z"),
            Err(TimestampError::Syntax)
        );
        assert!(Timestamp::parse_rfc3339("2027-06-01t00:00:00z").is_ok());
        assert_eq!(
            Timestamp::parse_rfc3339("1969-12-31T23:59:59Z"),
            Err(TimestampError::OutOfRange)
        );
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(Timestamp::from_secs(10));
        assert_eq!(c.now(), Timestamp::from_secs(10));
        c.advance(Duration::from_secs(5));
        assert_eq!(c.now(), Timestamp::from_secs(15));
        c.set(Timestamp::from_secs(1));
        assert_eq!(c.now(), Timestamp::from_secs(15), "never goes backwards");
    }

    #[test]
    fn system_clock_never_goes_backwards() {
        let c = SystemClock::new();
        let a = c.now();
        let b = c.now();
        assert!(b >= a);
        assert!(a.as_secs() > 1_700_000_000);
    }
}
