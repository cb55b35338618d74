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
        match parse_canonical(s.as_bytes()) {
            Some(t) => Ok(t),
            None => Self::parse_rfc3339_any(s),
        }
    }

    /// The form [`to_rfc3339`](Timestamp::to_rfc3339) writes, as
    /// [`parse_rfc3339`](Timestamp::parse_rfc3339) reads it; `None` for any
    /// other form, which `parse_rfc3339` may still read or refuse.
    pub(crate) fn parse_canonical(s: &[u8]) -> Option<Self> {
        parse_canonical(s)
    }

    /// [`parse_rfc3339`](Timestamp::parse_rfc3339) by `time`'s parser, for
    /// every form.
    fn parse_rfc3339_any(s: &str) -> Result<Self, TimestampError> {
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

/// The form [`Timestamp::to_rfc3339`] writes, `YYYY-MM-DDTHH:MM:SSZ` with
/// or without 1 to 9 digits of a fraction, read without `time`'s general
/// parser: every stored org's time of its last change is in it, and `time`'s
/// parser was a sixth of reading a stored org at start-up (BENCHMARKS.md,
/// "Item 4"). `None` for anything else, which `time`'s parser then reads:
/// another form, a date that does not exist, a leap second, a year outside
/// 1970 to 2499; so this never refuses what `time` would accept, and what it
/// accepts it reads as `time` does (the tests compare the two).
fn parse_canonical(b: &[u8]) -> Option<Timestamp> {
    /// The scale of a fraction of 1 to 9 digits, by its length.
    const SCALE: [u64; 10] = [
        0,
        100_000_000,
        10_000_000,
        1_000_000,
        100_000,
        10_000,
        1_000,
        100,
        10,
        1,
    ];
    /// The value of an ASCII digit.
    #[inline(always)]
    fn digit(c: u8) -> Option<u64> {
        let v = c.wrapping_sub(b'0');
        (v < 10).then_some(u64::from(v))
    }
    /// The value of two ASCII digits.
    #[inline(always)]
    fn two(h: &[u8; 19], at: usize) -> Option<u64> {
        Some(digit(h[at])? * 10 + digit(h[at + 1])?)
    }
    let (head, tail) = b.split_at_checked(19)?;
    let h: &[u8; 19] = head.try_into().ok()?;
    if h[4] != b'-' || h[7] != b'-' || h[10] != b'T' || h[13] != b':' || h[16] != b':' {
        return None;
    }
    let year = two(h, 0)? * 100 + two(h, 2)?;
    let (month, day) = (two(h, 5)?, two(h, 8)?);
    let (hour, minute, second) = (two(h, 11)?, two(h, 14)?, two(h, 17)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1970..2500).contains(&year)
        || !(1..=month_days).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let nanos = match tail {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            let mut v = 0;
            for &c in fraction {
                v = v * 10 + digit(c)?;
            }
            v * SCALE[fraction.len()]
        }
        _ => return None,
    };
    // Days since 1970-01-01 of the proleptic Gregorian date (Howard
    // Hinnant's `days_from_civil`, for years from 1970 on).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March is 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    // Years before 2500: far below u64's 2554.
    Some(Timestamp(secs * 1_000_000_000 + nanos))
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

    /// Both parsers on `s`: the canonical reader where it reads `s`, and
    /// `time`'s, which must agree with it.
    fn both(s: &str) -> Result<Timestamp, TimestampError> {
        let any = Timestamp::parse_rfc3339_any(s);
        if let Some(fast) = parse_canonical(s.as_bytes()) {
            assert_eq!(Ok(fast), any, "{s:?}");
        }
        assert_eq!(Timestamp::parse_rfc3339(s), any, "{s:?}");
        any
    }

    #[test]
    fn the_canonical_reader_reads_what_keygate_writes_as_time_does() {
        // Spread over the whole range, with whole seconds and every length
        // of fraction `to_rfc3339` writes.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut read = 0;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let nanos = match i % 4 {
                0 => x % 17_000_000_000_000_000_000,
                1 => x % 17_000_000_000_000_000_000 / 1_000_000_000 * 1_000_000_000,
                2 => x % 2_000_000_000_000_000_000 / 1_000 * 1_000,
                _ => x % u64::MAX,
            };
            let s = Timestamp(nanos).to_rfc3339();
            assert_eq!(both(&s), Ok(Timestamp(nanos)), "{s}");
            read += usize::from(parse_canonical(s.as_bytes()).is_some());
        }
        // Everything before 2500 (about 90% of the range) took the fast path.
        assert!(read > 15_000, "{read}");
    }

    #[test]
    fn the_canonical_reader_agrees_with_time_on_edges_and_refused_forms() {
        for s in [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:00:00.000000001Z",
            "1969-12-31T23:59:59.999999999Z",
            "2000-02-29T12:00:00Z",
            "2024-02-29T23:59:59.5Z",
            "2023-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2100-03-01T00:00:00Z",
            "2400-02-29T00:00:00Z",
            "2026-04-30T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-12-31T23:59:59.999999999Z",
            "2026-12-31T23:59:60Z",
            "2016-12-31T23:59:60Z",
            "2026-00-10T00:00:00Z",
            "2026-13-10T00:00:00Z",
            "2026-01-00T00:00:00Z",
            "2026-01-32T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T23:60:00Z",
            "2499-12-31T23:59:59.999999999Z",
            "2500-01-01T00:00:00Z",
            "2554-07-21T23:34:33.709551615Z",
            "2554-07-21T23:34:33.709551616Z",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "2026-11-22T05:00:00.Z",
            "2026-11-22T05:00:00.1234567891Z",
            "2026-11-22T05:00:00.12345678Z",
            "2026-11-22T05:00:00.1Z",
            "2026-11-22T05:00:00z",
            "2026-11-22t05:00:00Z",
            "2026-11-22T05:00:00+00:00",
            "2026-11-22T05:00:00-00:00",
            "2026-11-22T06:30:00.5+01:30",
            "2026-11-22T05:00:00",
            "2026-11-22T05:00:00ZZ",
            "2026-11-22 05:00:00Z",
            "2026-11-22T05:00Z",
            "+2026-11-22T05:00:00Z",
            "2026-1-22T05:00:00Z",
            "2026-11-22T05:00:00.1a2Z",
            "2026-11-22T05:00:00,5Z",
            "",
        ] {
            let _ = both(s);
        }
    }

    #[test]
    fn the_canonical_reader_agrees_with_time_on_every_one_byte_change() {
        let bytes = b"0123456789-:.TtZz+ aA\x7f";
        for base in [
            "2026-11-22T05:00:00Z",
            "2024-02-29T23:59:59.123456789Z",
            "2100-02-28T00:00:00.5Z",
        ] {
            for at in 0..base.len() {
                for &c in bytes {
                    let mut s = base.as_bytes().to_vec();
                    s[at] = c;
                    let _ = both(std::str::from_utf8(&s).unwrap());
                    // Inserted and removed, too.
                    s = base.as_bytes().to_vec();
                    s.insert(at, c);
                    let _ = both(std::str::from_utf8(&s).unwrap());
                }
                let mut s = base.to_owned();
                s.remove(at);
                let _ = both(&s);
            }
        }
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
