//! Organizations: their ids, their limits, their state and the rules that change it.
//!
//! [`OrgState`] is the persisted value and its methods are the contract's rules
//! for keys; [`Org`] is the live record the gate reads on every request: the
//! current state behind a short read lock, plus the two lock-free counters (rate
//! and threshold) that requests update.

mod error;
mod id;
mod limits;
mod state;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;

use bytes::Bytes;

pub use error::OpError;
pub(crate) use id::IdPages;
pub use id::{OrgId, OrgIdError};
pub use limits::{max as limits_max, LimitOverrides, Limits, LimitsError};
pub(crate) use state::StateFields;
pub use state::{Action, Actor, KeyStatus, OrgState, TokenName, Transition, THRESHOLD_REASON};

use crate::limit::{CallCounter, Rate, RateLimiter};

/// One live org, as the gate sees it.
///
/// `repr(C)` keeps the fields in the order written: what a request reads and
/// writes (the id it is found by, the counters, the lock, then
/// `Current`'s own hot fields first) in the record's first 144 bytes, which
/// span three cache lines wherever malloc puts the record, rather than
/// scattered over all four of its 200 bytes. At 1,000,000 orgs every line is
/// a cache miss (BENCHMARKS.md, "Issue 17").
#[derive(Debug)]
#[repr(C)]
pub struct Org {
    /// The id's bytes, on one of the store's [`IdPages`].
    id: Bytes,
    rate: RateLimiter,
    calls: CallCounter,
    /// When the org's key was last presented valid (a counted call), whole
    /// seconds since the Unix epoch; 0 for never. Written only when the
    /// second changes, so a busy org's calls mostly read it.
    last_used: AtomicU32,
    /// Calls refused by the rate in the current threshold window; cleared
    /// when a call opens a window. 4 bytes beside `last_used`: together they
    /// take the 8 bytes the record had to spare in its size class.
    limited: AtomicU32,
    current: RwLock<Current>,
}

/// The state in force, with what the request path needs of its limits
/// precomputed, so a request does no division. Kept small: there is one per org.
/// In `repr(C)` order, what a request reads first (see [`Org`]).
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Current {
    pub(crate) rate: Rate,
    pub(crate) threshold_calls: u32,
    pub(crate) threshold_window_secs: u32,
    pub(crate) state: OrgState,
    /// The store's version of `state` ([`OrgRecord::version`](crate::store::OrgRecord)):
    /// what the next commit expects, and how a newer record from the feed is
    /// told from an older one.
    pub(crate) version: u64,
}

impl Current {
    fn new(state: OrgState, version: u64, defaults: Limits) -> Current {
        let limits = defaults.with(&state.limits);
        Current {
            version,
            rate: Rate::new(limits.rate_per_sec, limits.burst),
            threshold_calls: limits.threshold_calls,
            threshold_window_secs: limits.threshold_window_secs,
            state,
        }
    }
}

impl Org {
    /// The live org `id` at `version` of its state, its bytes kept on `pages`.
    pub(crate) fn new(
        id: &OrgId,
        pages: &mut IdPages,
        state: OrgState,
        version: u64,
        defaults: Limits,
    ) -> Org {
        Org {
            id: pages.keep(id),
            current: RwLock::new(Current::new(state, version, defaults)),
            rate: RateLimiter::new(),
            calls: CallCounter::new(),
            last_used: AtomicU32::new(0),
            limited: AtomicU32::new(0),
        }
    }

    /// The org's id. Builds a header value over the kept bytes: a reference
    /// count increment, no allocation.
    pub fn id(&self) -> OrgId {
        OrgId::from_kept(self.id.clone())
    }

    /// The org's id as a string.
    pub fn id_str(&self) -> &str {
        // Kept from a valid id: ASCII, so this never falls back.
        std::str::from_utf8(&self.id).unwrap_or_default()
    }

    /// The org's id as bytes, for hashing and comparing without an [`OrgId`].
    pub fn id_bytes(&self) -> &[u8] {
        &self.id
    }

    /// Runs `f` on the state in force, under a read lock held only for `f`.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Current) -> R) -> R {
        // A writer never panics while holding the lock (it only assigns), so a
        // poisoned lock still holds a whole state.
        let guard = self.current.read().unwrap_or_else(|e| e.into_inner());
        f(&guard)
    }

    /// Makes `state` the state in force if `version` is newer than the
    /// version in force, and tells whether it did. Checked and swapped under
    /// one write lock: a record from the feed and the store's own commit may
    /// race to install, and the older must never overwrite the newer.
    pub(crate) fn replace_if_newer(&self, state: OrgState, version: u64, defaults: Limits) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if version <= current.version {
            return false;
        }
        *current = Current::new(state, version, defaults);
        true
    }

    /// Makes `state` at `version` the state in force, whatever the version
    /// in force: what a reload from the backend does, where the backend's
    /// record is the truth even when its version is lower (the org was
    /// deleted and provisioned again meanwhile).
    pub(crate) fn replace(&self, state: OrgState, version: u64, defaults: Limits) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        *current = Current::new(state, version, defaults);
    }

    /// Recomputes the limits in force from the state in force over
    /// `defaults()`, read under the write lock: what a config reload that
    /// changed the default limits does to every org (each value the org does
    /// not override follows the new defaults). Reading the defaults under the
    /// lock means that of a reload's pass and an install racing on one org,
    /// the later one to take the lock sees the new defaults.
    pub(crate) fn refresh_limits(&self, defaults: impl FnOnce() -> Limits) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let limits = defaults().with(&current.state.limits);
        current.rate = Rate::new(limits.rate_per_sec, limits.burst);
        current.threshold_calls = limits.threshold_calls;
        current.threshold_window_secs = limits.threshold_window_secs;
    }

    /// The version of the state in force.
    pub(crate) fn version(&self) -> u64 {
        self.read(|c| c.version)
    }

    /// A copy of the state in force.
    pub fn state(&self) -> OrgState {
        self.read(|c| c.state.clone())
    }

    pub(crate) fn rate_limiter(&self) -> &RateLimiter {
        &self.rate
    }

    pub(crate) fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// Notes a counted call at `now`.
    #[inline]
    pub(crate) fn touch(&self, now: crate::clock::Timestamp) {
        let secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        // Read first: a busy org's calls within one second write nothing,
        // so they do not take its cache line from each other.
        if self.last_used.load(Ordering::Relaxed) != secs {
            self.last_used.store(secs, Ordering::Relaxed);
        }
    }

    /// Notes a call refused by the rate.
    pub(crate) fn note_limited(&self) {
        // Saturates rather than wraps: 4 billion refusals in one window.
        let _ = self
            .limited
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
    }

    /// A call opened a new threshold window: the per-window figures start over.
    pub(crate) fn window_opened(&self) {
        self.limited.store(0, Ordering::Relaxed);
    }

    /// When the key was last presented valid, and how many calls the rate
    /// refused since the current window opened.
    pub(crate) fn usage(&self) -> (Option<crate::clock::Timestamp>, u32) {
        let last = self.last_used.load(Ordering::Relaxed);
        let last = (last != 0).then(|| crate::clock::Timestamp::from_secs(u64::from(last)));
        (last, self.limited.load(Ordering::Relaxed))
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// There is one `Arc<Org>` per org: at 1,000,000 orgs every 16 bytes of its
    /// allocation is 16 MB (BENCHMARKS.md, "<= 256 bytes of RSS per org").
    /// 200 bytes, plus the `Arc`'s two counts (216) and malloc's 8-byte
    /// header, is 224: glibc's 224-byte chunk, exactly. (192 bytes left 8 to
    /// spare in it, which the org's last use and its rate refusals in the
    /// window took, 4 bytes each, for the usage call. 184 fitted the 208-byte
    /// class until the state's version, 8 bytes that the store's conditional
    /// commits and change feed need, joined it. 168 fitted the 192-byte class
    /// while the id was interned for the life of the process; an owned id
    /// costs 16 bytes more.)
    /// What a request touches ends 144 bytes into the record (see `Org`):
    /// the id, the counters, the lock, the rate and threshold, the key, the
    /// status and the subscription's end.
    #[test]
    fn a_request_reads_only_the_first_144_bytes_of_an_org() {
        use super::{Current, Org, OrgState};
        use std::mem::{offset_of, size_of};
        use std::sync::RwLock;
        // `RwLock<T>`'s data is its last field (it may be unsized).
        let current =
            offset_of!(Org, current) + size_of::<RwLock<Current>>() - size_of::<Current>();
        let state = current + offset_of!(Current, state);
        let hot_end = state
            + offset_of!(OrgState, subscription_expires_at)
            + size_of::<Option<crate::clock::Timestamp>>();
        assert!(hot_end <= 144, "hot fields end at {hot_end}");
        assert!(offset_of!(Org, current) < current);
    }

    #[test]
    fn an_org_in_its_arc_fits_a_224_byte_chunk() {
        assert_eq!(std::mem::size_of::<super::Actor>(), 16);
        assert!(
            std::mem::size_of::<super::Org>() <= 200,
            "Org is {} bytes",
            std::mem::size_of::<super::Org>()
        );
    }
}
