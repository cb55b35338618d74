//! Organizations: their ids, their limits, their state and the rules that change it.
//!
//! [`OrgState`] is the persisted value and its methods are the contract's rules
//! for keys; [`Org`] is the live record the gate reads on every request: what a
//! request needs of the state in force, read without a lock, the rest of the
//! state behind a mutex that only admin work takes, and the two lock-free
//! counters (rate and threshold) that requests update.

mod error;
mod hot;
mod id;
mod limits;
mod state;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

pub use error::OpError;
pub(crate) use hot::Hot;
use id::HeldId;
pub(crate) use id::{IdKey, IdPages};
pub use id::{OrgId, OrgIdError};
pub use limits::{max as limits_max, LimitOverrides, Limits, LimitsError};
use state::HeldActor;
pub(crate) use state::StateFields;
pub use state::{Action, Actor, KeyStatus, OrgState, TokenName, Transition, THRESHOLD_REASON};

use crate::clock::Timestamp;
use crate::limit::{CallCounter, RateLimiter};
use hot::HotCell;

/// One live org, as the gate sees it.
///
/// `repr(C)` keeps the fields in the order written: what only admin work
/// reads first, then everything a request reads and writes (when the key
/// was last used, the id it is found by, held in the record itself, the
/// counters, the state's hot part) in the record's last 92 bytes, which the
/// org table's arena follows with the 4-byte state of the record's
/// `OnceLock`, read by every lookup. Records are 144 bytes apart, so those
/// 96 bytes span two cache lines for half the records and three for the
/// other half, where with the request's part first (and the `OnceLock`'s word
/// 48 bytes after it) every record took three. At 1,000,000 orgs every
/// line is a cache miss (BENCHMARKS.md, "Issue 17, sixth and seventh
/// rounds").
///
/// The state in force is in two parts, written together under `cold`'s
/// mutex: [`Hot`], what a request needs, in a seqlock of atomics that a
/// request reads without writing anything (so the cores serving one busy
/// org do not pass a lock's cache line between them), and [`Cold`], the
/// rest.
#[derive(Debug)]
#[repr(C)]
pub struct Org {
    cold: Mutex<Cold>,
    /// Calls refused by the rate in the current threshold window; cleared
    /// when a call opens a window. Written only by a refused call, so it
    /// sits outside what an admitted one touches.
    limited: AtomicU32,
    /// When the org's key was last presented valid (a counted call), whole
    /// seconds since the Unix epoch; 0 for never. Written only when the
    /// second changes, so a busy org's calls mostly read it.
    last_used: AtomicU32,
    /// The id, in the record: what a lookup compares.
    id: HeldId,
    rate: RateLimiter,
    calls: CallCounter,
    hot: HotCell,
}

/// The parts of the state in force that no request reads: who changed it
/// and when, its version, and what only a disabled org or one with limit
/// overrides has (behind one pointer that is null for every other org).
#[derive(Debug, Clone)]
struct Cold {
    /// The store's version of the state ([`OrgRecord::version`](crate::store::OrgRecord)):
    /// what the next commit expects, and how a newer record from the feed is
    /// told from an older one.
    version: u64,
    last_modified_on: Timestamp,
    last_modified_by: HeldActor,
    rare: Option<Box<Rare>>,
}

/// The parts of an org's state that most orgs do not have.
#[derive(Debug, Clone)]
struct Rare {
    /// The disable reason, for a disabled key.
    reason: Option<Box<str>>,
    limits: LimitOverrides,
}

/// The state in force, whole, as [`Org::read`] shows it: the hot part (its
/// fields and methods through `Deref`), the version, and the cold part.
pub(crate) struct Current<'a> {
    hot: Hot,
    cold: &'a Cold,
}

impl std::ops::Deref for Current<'_> {
    type Target = Hot;

    fn deref(&self) -> &Hot {
        &self.hot
    }
}

impl Current<'_> {
    /// The store's version of the state ([`Cold::version`]).
    pub(crate) fn version(&self) -> u64 {
        self.cold.version
    }

    /// The org's own limits over the defaults.
    pub(crate) fn limits(&self) -> LimitOverrides {
        limits_of(self.cold)
    }

    /// The state in force, as the value the rest of keygate works with.
    pub(crate) fn state(&self) -> OrgState {
        let reason = self.cold.rare.as_ref().and_then(|r| r.reason.clone());
        OrgState {
            key: self.hot.key().copied(),
            status: match reason {
                Some(reason) => KeyStatus::Disabled { reason },
                None => KeyStatus::Enabled,
            },
            subscription_expires_at: self.hot.subscription_ends(),
            limits: self.limits(),
            last_modified_by: self.cold.last_modified_by.actor(),
            last_modified_on: self.cold.last_modified_on,
            generation: self.hot.generation,
        }
    }
}

/// `cold`'s limit overrides, none when it has no rare parts.
fn limits_of(cold: &Cold) -> LimitOverrides {
    cold.rare.as_ref().map(|r| r.limits).unwrap_or_default()
}

/// Splits `state` at `version` into its two parts, with its limits over
/// `defaults` computed for the hot part.
fn split(state: OrgState, version: u64, defaults: Limits) -> (Hot, Cold) {
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
    let hot = Hot::new(
        key,
        reason.is_some(),
        subscription_expires_at,
        &limits,
        generation,
    );
    let rare = (reason.is_some() || overrides != LimitOverrides::default()).then(|| {
        Box::new(Rare {
            reason,
            limits: overrides,
        })
    });
    let cold = Cold {
        version,
        last_modified_on,
        last_modified_by: last_modified_by.into(),
        rare,
    };
    (hot, cold)
}

impl Org {
    /// The live org `id` at `version` of its state.
    pub(crate) fn new(id: &OrgId, state: OrgState, version: u64, defaults: Limits) -> Org {
        let (hot, cold) = split(state, version, defaults);
        Org {
            id: HeldId::new(id.as_bytes()),
            rate: RateLimiter::new(),
            calls: CallCounter::new(),
            last_used: AtomicU32::new(0),
            limited: AtomicU32::new(0),
            hot: HotCell::new(hot),
            cold: Mutex::new(cold),
        }
    }

    /// The org's id: a copy, one allocation (the request path never asks
    /// for it: `x-org-id` is made from the request's own bytes).
    pub fn id(&self) -> OrgId {
        OrgId::from_held(self.id.as_bytes())
    }

    /// The org's id as a string.
    pub fn id_str(&self) -> &str {
        // Held from a valid id: ASCII, so this never falls back.
        std::str::from_utf8(self.id.as_bytes()).unwrap_or_default()
    }

    /// The org's id as bytes, for hashing and comparing without an [`OrgId`].
    pub fn id_bytes(&self) -> &[u8] {
        self.id.as_bytes()
    }

    /// Whether this is the org `key` names: the lookup's check.
    #[inline]
    pub(crate) fn is(&self, key: &IdKey<'_>) -> bool {
        self.id.matches(key)
    }

    /// What a request needs of the state in force, read without a lock:
    /// a consistent copy, never half of one change and half of another.
    #[inline]
    pub(crate) fn hot(&self) -> Hot {
        self.hot.load()
    }

    /// The cold part, locked. A writer never panics while holding the
    /// mutex (it only assigns), so a poisoned one still holds a whole state.
    fn cold(&self) -> MutexGuard<'_, Cold> {
        self.cold.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the whole state in force, under the mutex held only for
    /// `f` (every writer holds it too, so the hot part cannot change meanwhile).
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Current) -> R) -> R {
        let cold = self.cold();
        f(&Current {
            hot: self.hot.load(),
            cold: &cold,
        })
    }

    /// Installs the state `state` at `version` over `cold`, held.
    fn install(&self, cold: &mut Cold, state: OrgState, version: u64, defaults: Limits) {
        let (hot, new) = split(state, version, defaults);
        self.hot.store(hot);
        *cold = new;
    }

    /// Makes `state` the state in force if `version` is newer than the
    /// version in force, and tells whether it did. Checked and swapped under
    /// one lock: a record from the feed and the store's own commit may
    /// race to install, and the older must never overwrite the newer.
    pub(crate) fn replace_if_newer(&self, state: OrgState, version: u64, defaults: Limits) -> bool {
        let mut cold = self.cold();
        if version <= cold.version {
            return false;
        }
        self.install(&mut cold, state, version, defaults);
        true
    }

    /// Makes `state` at `version` the state in force, whatever the version
    /// in force: what a reload from the backend does, where the backend's
    /// record is the truth even when its version is lower (the org was
    /// deleted and provisioned again meanwhile).
    pub(crate) fn replace(&self, state: OrgState, version: u64, defaults: Limits) {
        let mut cold = self.cold();
        self.install(&mut cold, state, version, defaults);
    }

    /// Recomputes the limits in force from the state in force over
    /// `defaults()`, read under the lock: what a config reload that
    /// changed the default limits does to every org (each value the org does
    /// not override follows the new defaults). Reading the defaults under the
    /// lock means that of a reload's pass and an install racing on one org,
    /// the later one to take the lock sees the new defaults.
    pub(crate) fn refresh_limits(&self, defaults: impl FnOnce() -> Limits) {
        let cold = self.cold();
        let limits = defaults().with(&limits_of(&cold));
        self.hot.store(self.hot.load().with_limits(&limits));
    }

    /// The version of the state in force.
    pub(crate) fn version(&self) -> u64 {
        self.cold().version
    }

    /// A copy of the state in force.
    pub fn state(&self) -> OrgState {
        self.read(|c| c.state())
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

    /// Starts every count over, as for a new org: what the record of a
    /// deleted org takes when its id is provisioned again.
    pub(crate) fn restart_counts(&self) {
        self.rate.reset();
        self.calls.reset();
        self.last_used.store(0, Ordering::Relaxed);
        self.limited.store(0, Ordering::Relaxed);
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
    use crate::key::ApiKey;

    /// There is one record per org: at 1,000,000 orgs every 16 bytes of it
    /// is 16 MB (BENCHMARKS.md, "Item 4"). 136 bytes, and 144 in the org
    /// table's arena (its `OnceLock`'s state word); the id is 24 of them,
    /// who last changed the org 8.
    #[test]
    fn an_org_takes_136_bytes() {
        assert_eq!(std::mem::size_of::<Actor>(), 16);
        assert_eq!(std::mem::size_of::<HeldActor>(), 8);
        assert_eq!(std::mem::size_of::<Mutex<Cold>>(), 40);
        assert_eq!(std::mem::size_of::<HeldId>(), 24);
        assert!(
            std::mem::size_of::<Org>() <= 136,
            "Org is {} bytes",
            std::mem::size_of::<Org>()
        );
        assert_eq!(std::mem::size_of::<std::sync::OnceLock<Org>>(), 144);
    }

    /// What a request touches (see `Org`): when the key was last used, the
    /// id, the counters and the hot part of the state, at the record's end,
    /// which the table's `OnceLock` state word follows.
    #[test]
    fn a_request_reads_only_the_last_92_bytes_of_an_org() {
        use std::mem::{offset_of, size_of};
        use std::sync::OnceLock;
        let size = size_of::<Org>();
        assert_eq!(offset_of!(Org, hot) + size_of::<HotCell>(), size);
        assert_eq!(size - offset_of!(Org, last_used), 92);
        assert!(offset_of!(Org, limited) < offset_of!(Org, last_used));
        assert!(offset_of!(Org, cold) < offset_of!(Org, limited));
        // The `OnceLock`'s value first and its state word after it: what
        // the table reads of a record ends 4 bytes past the `Org`.
        let cell = OnceLock::new();
        let _ = cell.set(org(
            state(None, KeyStatus::Enabled, None, LimitOverrides::default()),
            1,
        ));
        let start = std::ptr::from_ref(&cell) as usize;
        let value = std::ptr::from_ref(cell.get().unwrap()) as usize;
        assert_eq!(value, start);
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

    fn org(s: OrgState, version: u64) -> Org {
        let id = OrgId::parse("acme").unwrap();
        Org::new(&id, s, version, Limits::default())
    }

    /// The two parts together keep every value of every field, including
    /// the ones a sentinel would have lost: no key, a subscription ending at
    /// time 0 or at the last representable time, and the placeholder's own
    /// bytes as a real key.
    #[test]
    fn the_split_state_gives_back_exactly_the_state_it_was_made_from() {
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
            let o = org(s.clone(), 3);
            assert_eq!(o.state(), s, "case {i}");
            assert_eq!(o.version(), 3);
            let hot = o.hot();
            assert_eq!(
                hot.key().map(ApiKey::expose),
                s.key.as_ref().map(ApiKey::expose)
            );
            assert_eq!(hot.is_disabled(), s.is_disabled(), "case {i}");
            assert_eq!(hot.generation, s.generation, "case {i}");
            assert_eq!(o.read(|c| c.limits()), s.limits, "case {i}");
            let limits = Limits::default().with(&s.limits);
            assert_eq!(
                hot.rate,
                crate::limit::Rate::new(limits.rate_per_sec, limits.burst)
            );
            for now in [0, 1, 2, u64::MAX - 1, u64::MAX] {
                let now = Timestamp::from_nanos(now);
                assert_eq!(
                    hot.subscription_expired(now),
                    s.subscription_expired(now),
                    "case {i}"
                );
            }
        }
    }

    /// An install replaces both parts; an older version installs nothing; a
    /// limits refresh changes only the limits.
    #[test]
    fn installs_and_refreshes_change_both_parts_together() {
        let o = org(
            state(
                Some("Ab3dEf6hIj9k"),
                KeyStatus::Enabled,
                None,
                LimitOverrides::default(),
            ),
            3,
        );
        let mut next = state(None, KeyStatus::Enabled, Some(5), LimitOverrides::default());
        next.generation = 8;
        assert!(!o.replace_if_newer(next.clone(), 3, Limits::default()));
        assert_eq!(o.hot().generation, 7);
        assert!(o.replace_if_newer(next.clone(), 4, Limits::default()));
        assert_eq!(o.state(), next);
        assert_eq!(o.hot().key(), None);
        assert_eq!(o.hot().generation, 8);
        assert_eq!(o.version(), 4);
        let lower = Limits {
            rate_per_sec: 3,
            ..Limits::default()
        };
        o.refresh_limits(|| lower);
        assert_eq!(o.hot().rate, crate::limit::Rate::new(3, lower.burst));
        assert_eq!(o.state(), next);
        o.replace(
            state(None, KeyStatus::Enabled, None, LimitOverrides::default()),
            1,
            lower,
        );
        assert_eq!(o.version(), 1);
        assert_eq!(o.hot().rate, crate::limit::Rate::new(3, lower.burst));
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
        assert!(split(s, 1, Limits::default()).1.rare.is_none());
    }
}
