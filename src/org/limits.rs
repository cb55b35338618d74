//! Per-org limits: the rate, the burst and the call threshold.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// The limits in force for an org: the configured defaults with the org's own
/// overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sustained calls per second before 429.
    pub rate_per_sec: u32,
    /// Calls allowed at once before the rate applies.
    pub burst: u32,
    /// More calls than this within one window disable the org's key.
    pub threshold_calls: u32,
    /// The length of the threshold window, in seconds.
    pub threshold_window_secs: u32,
}

impl Default for Limits {
    /// The contract's defaults.
    fn default() -> Self {
        Limits {
            rate_per_sec: 100,
            burst: 100,
            threshold_calls: 100_000,
            threshold_window_secs: 3600,
        }
    }
}

/// The largest values keygate accepts. Beyond them a value is a typo or an attack,
/// not a policy, and the arithmetic of the limiters would lose meaning.
pub mod max {
    /// Calls per second: a GCRA emission interval of 100 ns.
    pub const RATE_PER_SEC: u32 = 10_000_000;
    /// Calls at once.
    pub const BURST: u32 = 10_000_000;
    /// Calls per window; leaves room in the 32-bit counter to see one more.
    pub const THRESHOLD_CALLS: u32 = 4_000_000_000;
    /// One leap year.
    pub const THRESHOLD_WINDOW_SECS: u32 = 366 * 24 * 3600;
}

/// Why a limit was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: must be between 1 and {max}")]
pub struct LimitsError {
    /// The offending field, as named in the config and the admin API.
    pub field: &'static str,
    /// Its largest accepted value.
    pub max: u64,
}

/// An org's own limits; each `None` follows the configured default. Zero is not
/// a limit, so the type cannot hold it (and an override costs 4 bytes, not 8:
/// there is one per org).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitOverrides {
    /// Overrides [`Limits::rate_per_sec`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<NonZeroU32>,
    /// Overrides [`Limits::burst`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<NonZeroU32>,
    /// Overrides [`Limits::threshold_calls`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_calls: Option<NonZeroU32>,
    /// Overrides [`Limits::threshold_window_secs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold_window_secs: Option<NonZeroU32>,
}

impl Limits {
    /// Checks every value is within `1..=max`.
    pub fn validate(&self) -> Result<(), LimitsError> {
        check("rate_per_sec", self.rate_per_sec, max::RATE_PER_SEC)?;
        check("burst", self.burst, max::BURST)?;
        check(
            "threshold_calls",
            self.threshold_calls,
            max::THRESHOLD_CALLS,
        )?;
        check(
            "threshold_window_secs",
            self.threshold_window_secs,
            max::THRESHOLD_WINDOW_SECS,
        )
    }

    /// These limits with `o`'s overrides applied.
    pub fn with(self, o: &LimitOverrides) -> Limits {
        let or = |v: Option<NonZeroU32>, default: u32| v.map_or(default, NonZeroU32::get);
        Limits {
            rate_per_sec: or(o.rate_per_sec, self.rate_per_sec),
            burst: or(o.burst, self.burst),
            threshold_calls: or(o.threshold_calls, self.threshold_calls),
            threshold_window_secs: or(o.threshold_window_secs, self.threshold_window_secs),
        }
    }
}

impl LimitOverrides {
    /// Checks every value that is set.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let all = |v: Option<NonZeroU32>| v.map_or(1, NonZeroU32::get);
        Limits {
            rate_per_sec: all(self.rate_per_sec),
            burst: all(self.burst),
            threshold_calls: all(self.threshold_calls),
            threshold_window_secs: all(self.threshold_window_secs),
        }
        .validate()
    }

    /// Overrides from plain numbers; zero counts as unset.
    pub fn from_values(
        rate_per_sec: Option<u32>,
        burst: Option<u32>,
        threshold_calls: Option<u32>,
        threshold_window_secs: Option<u32>,
    ) -> LimitOverrides {
        LimitOverrides {
            rate_per_sec: rate_per_sec.and_then(NonZeroU32::new),
            burst: burst.and_then(NonZeroU32::new),
            threshold_calls: threshold_calls.and_then(NonZeroU32::new),
            threshold_window_secs: threshold_window_secs.and_then(NonZeroU32::new),
        }
    }

    /// `self` with every value that `newer` sets replaced.
    pub fn merge(self, newer: &LimitOverrides) -> LimitOverrides {
        LimitOverrides {
            rate_per_sec: newer.rate_per_sec.or(self.rate_per_sec),
            burst: newer.burst.or(self.burst),
            threshold_calls: newer.threshold_calls.or(self.threshold_calls),
            threshold_window_secs: newer.threshold_window_secs.or(self.threshold_window_secs),
        }
    }
}

fn check(field: &'static str, value: u32, max: u32) -> Result<(), LimitsError> {
    if (1..=max).contains(&value) {
        Ok(())
    } else {
        Err(LimitsError {
            field,
            max: u64::from(max),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(n)
    }

    #[test]
    fn zero_limits_are_refused_naming_the_field() {
        let l = Limits {
            burst: 0,
            ..Limits::default()
        };
        assert_eq!(l.validate().unwrap_err().field, "burst");
        assert!(serde_json::from_str::<LimitOverrides>(r#"{"burst":0}"#).is_err());
    }

    #[test]
    fn absurd_limits_are_refused() {
        let o = LimitOverrides {
            threshold_window_secs: nz(max::THRESHOLD_WINDOW_SECS + 1),
            ..Default::default()
        };
        assert_eq!(o.validate().unwrap_err().field, "threshold_window_secs");
        assert!(LimitOverrides {
            threshold_calls: nz(u32::MAX),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let l = Limits::default().with(&LimitOverrides {
            rate_per_sec: nz(5),
            ..Default::default()
        });
        assert_eq!(l.rate_per_sec, 5);
        assert_eq!(l.burst, Limits::default().burst);
        let merged = LimitOverrides {
            rate_per_sec: nz(5),
            ..Default::default()
        }
        .merge(&LimitOverrides {
            burst: nz(7),
            ..Default::default()
        });
        assert_eq!((merged.rate_per_sec, merged.burst), (nz(5), nz(7)));
    }
}
