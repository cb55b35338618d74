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

use crate::clock::Timestamp;
use crate::key::ApiKey;
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
/// precomputed, so a request does no division. Kept small: there is one per
/// org, so it holds the state's fields in a compact form rather than an
/// [`OrgState`] (96 bytes against 128; [`state`](Current::state) rebuilds
/// the value). What only a disabled org or one with limit overrides has sits
/// behind one pointer that is null for every other org.
/// In `repr(C)` order, what a request reads first (see [`Org`]).
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct Current {
    pub(crate) rate: Rate,
    pub(crate) threshold_calls: u32,
    pub(crate) threshold_window_secs: u32,
    /// The key, meaningful only with [`HAS_KEY`] in `flags`.
    key: ApiKey,
    /// [`HAS_KEY`], [`DISABLED`] and [`EXPIRES`].
    flags: u8,
    /// When the subscription ends, meaningful only with [`EXPIRES`] in
    /// `flags` (every `u64` is a time, so "never" needs the flag).
    subscription_ends: Timestamp,
    /// [`OrgState::generation`].
    pub(crate) generation: u64,
    /// The store's version of the state ([`OrgRecord::version`](crate::store::OrgRecord)):
    /// what the next commit expects, and how a newer record from the feed is
    /// told from an older one.
    pub(crate) version: u64,
    last_modified_on: Timestamp,
    last_modified_by: Actor,
    /// The disable reason and the limit overrides, when there are any.
    rare: Option<Box<Rare>>,
}

/// The parts of an org's state that most orgs do not have.
#[derive(Debug, Clone)]
struct Rare {
    /// The disable reason, for a disabled key.
    reason: Option<Box<str>>,
    limits: LimitOverrides,
}

/// `Current::flags`: the org has a key.
const HAS_KEY: u8 = 1;
/// `Current::flags`: the key is disabled.
const DISABLED: u8 = 2;
/// `Current::flags`: the subscription has an end.
const EXPIRES: u8 = 4;

/// Stands in `Current::key` when the org has none; never compared or shown.
const NO_KEY: ApiKey = ApiKey::placeholder();

impl Current {
    fn new(state: OrgState, version: u64, defaults: Limits) -> Current {
        let limits = defaults.with(&state.limits);
        let OrgState {
            key,
            status,
            subscription_expires_at,
            limits: overrides,
            last_modified_by,
            last_modified_on,
            generation,
        } = state;
        let reason = match status {
            KeyStatus::Enabled => None,
            KeyStatus::Disabled { reason } => Some(reason),
        };
        let flags = if key.is_some() { HAS_KEY } else { 0 }
            | if reason.is_some() { DISABLED } else { 0 }
            | if subscription_expires_at.is_some() {
                EXPIRES
            } else {
                0
            };
        let rare = (reason.is_some() || overrides != LimitOverrides::default()).then(|| {
            Box::new(Rare {
                reason,
                limits: overrides,
            })
        });
        Current {
            rate: Rate::new(limits.rate_per_sec, limits.burst),
            threshold_calls: limits.threshold_calls,
            threshold_window_secs: limits.threshold_window_secs,
            key: key.unwrap_or(NO_KEY),
            flags,
            subscription_ends: subscription_expires_at.unwrap_or_default(),
            generation,
            version,
            last_modified_on,
            last_modified_by,
            rare,
        }
    }

    /// The org's key, if it has one.
    #[inline]
    pub(crate) fn key(&self) -> Option<&ApiKey> {
        (self.flags & HAS_KEY != 0).then_some(&self.key)
    }

    /// Whether the key is disabled.
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.flags & DISABLED != 0
    }

    /// Whether the subscription has ended at `now`.
    #[inline]
    pub(crate) fn subscription_expired(&self, now: Timestamp) -> bool {
        self.flags & EXPIRES != 0 && now >= self.subscription_ends
    }

    /// The org's own limits over the defaults.
    pub(crate) fn limits(&self) -> LimitOverrides {
        self.rare.as_ref().map(|r| r.limits).unwrap_or_default()
    }

    /// The state in force, as the value the rest of keygate works with.
    pub(crate) fn state(&self) -> OrgState {
        let reason = self.rare.as_ref().and_then(|r| r.reason.clone());
        OrgState {
            key: self.key().copied(),
            status: match reason {
                Some(reason) => KeyStatus::Disabled { reason },
                None => KeyStatus::Enabled,
            },
            subscription_expires_at: (self.flags & EXPIRES != 0).then_some(self.subscription_ends),
            limits: self.limits(),
            last_modified_by: self.last_modified_by.clone(),
            last_modified_on: self.last_modified_on,
            generation: self.generation,
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
        let limits = defaults().with(&current.limits());
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
        self.read(Current::state)
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
    use super::*;

    /// There is one `Arc<Org>` per org: at 1,000,000 orgs every 16 bytes of its
    /// allocation is 16 MB (BENCHMARKS.md, "Item 4").
    /// 168 bytes, plus the `Arc`'s two counts (184) and malloc's 8-byte
    /// header, is 192: glibc's 192-byte chunk, exactly. (It was 200 in the
    /// 224-byte chunk while `Current` held a whole `OrgState`: 128 bytes,
    /// against the 96 of its compact form.)
    #[test]
    fn an_org_in_its_arc_fits_a_192_byte_chunk() {
        assert_eq!(std::mem::size_of::<Actor>(), 16);
        assert_eq!(std::mem::size_of::<Current>(), 96);
        assert!(
            std::mem::size_of::<Org>() <= 168,
            "Org is {} bytes",
            std::mem::size_of::<Org>()
        );
    }

    /// What a request touches (see `Org`): the id, the counters, the lock,
    /// the rate and threshold, the key, its flags and the subscription's end.
    #[test]
    fn a_request_reads_only_the_first_128_bytes_of_an_org() {
        use std::mem::{offset_of, size_of};
        // `RwLock<T>`'s data is its last field (it may be unsized).
        let current =
            offset_of!(Org, current) + size_of::<RwLock<Current>>() - size_of::<Current>();
        let hot_end = current + offset_of!(Current, subscription_ends) + size_of::<Timestamp>();
        assert!(hot_end <= 128, "hot fields end at {hot_end}");
        assert!(offset_of!(Org, current) < current);
        assert!(offset_of!(Current, generation) > offset_of!(Current, subscription_ends));
    }

    fn state(
        key: Option<&str>,
        status: KeyStatus,
        ends: Option<u64>,
        limits: LimitOverrides,
    ) -> OrgState {
        OrgState {
            key: key.map(|k| ApiKey::parse(k.as_bytes()).unwrap()),
            status,
            subscription_expires_at: ends.map(Timestamp::from_nanos),
            limits,
            last_modified_by: Actor::System,
            last_modified_on: Timestamp::from_secs(1_700_000_000),
            generation: 7,
        }
    }

    /// The compact form keeps every value of every field, including the
    /// ones a sentinel would have lost: no key, a subscription ending at
    /// time 0 or at the last representable time, and the placeholder's own
    /// bytes as a real key.
    #[test]
    fn the_compact_state_gives_back_exactly_the_state_it_was_made_from() {
        let overrides = LimitOverrides {
            rate_per_sec: std::num::NonZeroU32::new(5),
            ..LimitOverrides::default()
        };
        let disabled = || KeyStatus::Disabled {
            reason: THRESHOLD_REASON.into(),
        };
        let cases = [
            state(
                Some("Ab3dEf6hIj9k"),
                KeyStatus::Enabled,
                None,
                LimitOverrides::default(),
            ),
            state(None, KeyStatus::Enabled, None, LimitOverrides::default()),
            state(
                Some("000000000000"),
                KeyStatus::Enabled,
                Some(0),
                LimitOverrides::default(),
            ),
            state(None, disabled(), Some(u64::MAX), LimitOverrides::default()),
            state(Some("Ab3dEf6hIj9k"), disabled(), Some(1), overrides),
            state(Some("Ab3dEf6hIj9k"), KeyStatus::Enabled, None, overrides),
        ];
        for (i, s) in cases.into_iter().enumerate() {
            let c = Current::new(s.clone(), 3, Limits::default());
            assert_eq!(c.state(), s, "case {i}");
            assert_eq!(
                c.key().map(ApiKey::expose),
                s.key.as_ref().map(ApiKey::expose)
            );
            assert_eq!(c.is_disabled(), s.is_disabled(), "case {i}");
            assert_eq!(c.limits(), s.limits, "case {i}");
            for now in [0, 1, 2, u64::MAX - 1, u64::MAX] {
                let now = Timestamp::from_nanos(now);
                assert_eq!(
                    c.subscription_expired(now),
                    s.subscription_expired(now),
                    "case {i}"
                );
            }
        }
    }

    /// Most orgs are enabled with the default limits: they carry no
    /// allocation for the rare parts.
    #[test]
    fn an_enabled_org_without_overrides_has_no_rare_parts() {
        let s = state(
            Some("Ab3dEf6hIj9k"),
            KeyStatus::Enabled,
            Some(9),
            LimitOverrides::default(),
        );
        assert!(Current::new(s, 1, Limits::default()).rare.is_none());
    }
}
