//! Organizations: their ids, their limits, their state and the rules that change it.
//!
//! [`OrgState`] is the persisted value and its methods are the contract's rules
//! for keys; [`Org`] is the live record the gate reads on every request: what a
//! request needs of the state in force, read without a lock, the rest of the
//! state in atomics that only admin work writes, and the two lock-free
//! counters (rate and threshold) that requests update.

mod cold;
mod error;
mod hot;
mod id;
mod limits;
mod state;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::MutexGuard;

use cold::{Provenance, Rare};
pub use error::OpError;
pub(crate) use hot::Hot;
use id::HeldId;
pub(crate) use id::{IdKey, IdPages};
pub use id::{OrgId, OrgIdError};
pub use limits::{max as limits_max, LimitOverrides, Limits, LimitsError};
pub(crate) use state::StateFields;
pub use state::{Action, Actor, KeyStatus, OrgState, TokenName, Transition, THRESHOLD_REASON};

use crate::clock::Timestamp;
use crate::limit::{CallCounter, RateLimiter};
use hot::HotCell;

/// One live org, as the gate sees it.
///
/// `repr(C)` keeps the fields in the order written: what only admin work
/// reads first, then everything a request reads and writes (when the key
/// was last used, the counters, the id it is found by, held in the record
/// itself, the state's hot part) in the record's last 96 bytes, which the
/// org table's arena follows with the 4-byte state of the record's
/// `OnceLock`, read by every lookup. The arena aligns its 128-byte records
/// to 128 bytes, so what a request reads is two cache lines of one aligned
/// pair, which the CPU's adjacent-line prefetcher fetches together (at
/// 1,000,000 orgs every line is a cache miss: BENCHMARKS.md, "Issue 17,
/// eighth round"). Everything a request writes (the counters and when the
/// key was last used) is in the first line, and the second line (the hot
/// part, the `OnceLock`'s word and the end of the id, which only a long id
/// reads) only changes with the state, so the cores serving one busy org
/// pass one line between them, not two.
///
/// The state in force is in two parts, written together under the record's
/// writer lock (`cold::lock`): [`Hot`], what a request needs, in a seqlock
/// of atomics that a request reads without writing anything (so the cores
/// serving one busy org do not pass a lock's cache line between them), and
/// the cold part, the rest: the version and the time of the last change,
/// and who made it with the rare parts as one interned number
/// (`cold::Provenance`). No thread holds two records' writer locks, and a
/// writer only stores atomics and swaps an interned number under its lock,
/// so there is nothing a panic could leave half done.
#[derive(Debug)]
#[repr(C)]
pub struct Org {
    /// The store's version of the state ([`OrgRecord::version`](crate::store::OrgRecord)):
    /// what the next commit expects, and how a newer record from the feed is
    /// told from an older one.
    version: AtomicU64,
    /// When the state was last changed, nanoseconds since the Unix epoch.
    modified_on: AtomicU64,
    /// The number of the state's [`cold::Provenance`], held.
    provenance: AtomicU32,
    /// Calls refused by the rate in the current threshold window; cleared
    /// when a call opens a window. Written only by a refused call, so it
    /// sits outside what an admitted one touches.
    limited: AtomicU32,
    /// When the org's key was last presented valid (a counted call), whole
    /// seconds since the Unix epoch; 0 for never. Written only when the
    /// second changes, so a busy org's calls mostly read it.
    last_used: AtomicU32,
    rate: RateLimiter,
    calls: CallCounter,
    /// The id, in the record: what a lookup compares.
    id: HeldId,
    hot: HotCell,
}

/// The cold part of a state, as [`split`] makes it and [`Org::read`]
/// shows it.
#[derive(Debug, Clone)]
struct Cold {
    version: u64,
    modified_on: Timestamp,
    provenance: Provenance,
}

/// The state in force, whole, as [`Org::read`] shows it: the hot part (its
/// fields and methods through `Deref`), the version, and the cold part.
pub(crate) struct Current {
    hot: Hot,
    cold: Cold,
}

impl std::ops::Deref for Current {
    type Target = Hot;

    fn deref(&self) -> &Hot {
        &self.hot
    }
}

impl Current {
    /// The store's version of the state ([`Org::version`]).
    pub(crate) fn version(&self) -> u64 {
        self.cold.version
    }

    /// The org's own limits over the defaults.
    pub(crate) fn limits(&self) -> LimitOverrides {
        self.cold.provenance.limits()
    }

    /// The state in force, as the value the rest of keygate works with.
    pub(crate) fn state(&self) -> OrgState {
        let provenance = &self.cold.provenance;
        let reason = provenance.rare.as_ref().and_then(|r| r.reason.clone());
        OrgState {
            key: self.hot.key().copied(),
            status: match reason {
                Some(reason) => KeyStatus::Disabled { reason },
                None => KeyStatus::Enabled,
            },
            subscription_expires_at: self.hot.subscription_ends(),
            limits: self.limits(),
            last_modified_by: provenance.actor.clone(),
            last_modified_on: self.cold.modified_on,
            generation: self.hot.generation,
        }
    }
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
    let rare = (reason.is_some() || overrides != LimitOverrides::default()).then_some(Rare {
        reason,
        limits: overrides,
    });
    let cold = Cold {
        version,
        modified_on: last_modified_on,
        provenance: Provenance {
            actor: last_modified_by,
            rare,
        },
    };
    (hot, cold)
}

impl Org {
    /// The live org `id` at `version` of its state.
    pub(crate) fn new(id: &OrgId, state: OrgState, version: u64, defaults: Limits) -> Org {
        let (hot, cold) = split(state, version, defaults);
        Org {
            version: AtomicU64::new(cold.version),
            modified_on: AtomicU64::new(cold.modified_on.as_nanos()),
            provenance: AtomicU32::new(cold::intern(cold.provenance)),
            id: HeldId::new(id.as_bytes()),
            rate: RateLimiter::new(),
            calls: CallCounter::new(),
            last_used: AtomicU32::new(0),
            limited: AtomicU32::new(0),
            hot: HotCell::new(hot),
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

    /// This record's writer lock (see [`Org`]).
    fn lock(&self) -> MutexGuard<'static, ()> {
        cold::lock(std::ptr::from_ref(self).addr(), std::mem::size_of::<Org>())
    }

    /// Runs `f` on the whole state in force, under the writer lock held
    /// only for `f` (every writer holds it too, so no part can change
    /// meanwhile). `f` must not read another org's whole state: no thread
    /// holds two writer locks.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&Current) -> R) -> R {
        let _writer = self.lock();
        // Relaxed: the lock orders these loads after the last writer's stores.
        let cold = Cold {
            version: self.version.load(Ordering::Relaxed),
            modified_on: Timestamp::from_nanos(self.modified_on.load(Ordering::Relaxed)),
            provenance: cold::get(self.provenance.load(Ordering::Relaxed)),
        };
        f(&Current {
            hot: self.hot.load(),
            cold,
        })
    }

    /// Installs the state `state` at `version`; the writer lock is held.
    fn install(&self, state: OrgState, version: u64, defaults: Limits) {
        let (hot, cold) = split(state, version, defaults);
        self.hot.store(hot);
        let old = self.provenance.load(Ordering::Relaxed);
        self.provenance
            .store(cold::replace(old, cold.provenance), Ordering::Relaxed);
        self.modified_on
            .store(cold.modified_on.as_nanos(), Ordering::Relaxed);
        // Release: `version` reads it without the lock.
        self.version.store(version, Ordering::Release);
    }

    /// Makes `state` the state in force if `version` is newer than the
    /// version in force, and tells whether it did. Checked and swapped under
    /// one lock: a record from the feed and the store's own commit may
    /// race to install, and the older must never overwrite the newer.
    pub(crate) fn replace_if_newer(&self, state: OrgState, version: u64, defaults: Limits) -> bool {
        let _writer = self.lock();
        if version <= self.version.load(Ordering::Relaxed) {
            return false;
        }
        self.install(state, version, defaults);
        true
    }

    /// Makes `state` at `version` the state in force, whatever the version
    /// in force: what a reload from the backend does, where the backend's
    /// record is the truth even when its version is lower (the org was
    /// deleted and provisioned again meanwhile).
    pub(crate) fn replace(&self, state: OrgState, version: u64, defaults: Limits) {
        let _writer = self.lock();
        self.install(state, version, defaults);
    }

    /// Recomputes the limits in force from the state in force over
    /// `defaults()`, read under the lock: what a config reload that
    /// changed the default limits does to every org (each value the org does
    /// not override follows the new defaults). Reading the defaults under the
    /// lock means that of a reload's pass and an install racing on one org,
    /// the later one to take the lock sees the new defaults.
    pub(crate) fn refresh_limits(&self, defaults: impl FnOnce() -> Limits) {
        let _writer = self.lock();
        let own = cold::with(self.provenance.load(Ordering::Relaxed), Provenance::limits);
        let limits = defaults().with(&own);
        self.hot.store(self.hot.load().with_limits(&limits));
    }

    /// The version of the state in force.
    pub(crate) fn version(&self) -> u64 {
        // Acquire: pairs with the install's release.
        self.version.load(Ordering::Acquire)
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

impl Drop for Org {
    fn drop(&mut self) {
        cold::release(*self.provenance.get_mut());
    }
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    use super::*;
    use crate::key::ApiKey;

    /// There is one record per org: at 1,000,000 orgs every 8 bytes of it
    /// is 8 MB (BENCHMARKS.md, "Item 4"). 120 bytes, and 128 in the org
    /// table's arena (its `OnceLock`'s state word); the id is 24 of them,
    /// the cold part 20.
    #[test]
    fn an_org_takes_120_bytes() {
        use std::mem::{offset_of, size_of};
        assert_eq!(size_of::<HeldId>(), 24);
        assert_eq!(offset_of!(Org, limited) - offset_of!(Org, version), 20);
        assert_eq!(size_of::<Org>(), 120);
        assert_eq!(size_of::<std::sync::OnceLock<Org>>(), 128);
    }

    /// What a request touches (see `Org`): when the key was last used, the
    /// id, the counters and the hot part of the state, at the record's end,
    /// which the table's `OnceLock` state word follows.
    #[test]
    fn a_request_reads_only_the_last_96_bytes_of_an_org() {
        use std::mem::{offset_of, size_of};
        use std::sync::OnceLock;
        let size = size_of::<Org>();
        assert_eq!(offset_of!(Org, hot) + size_of::<HotCell>(), size);
        assert_eq!(size - offset_of!(Org, last_used), 96);
        assert!(offset_of!(Org, limited) < offset_of!(Org, last_used));
        assert!(offset_of!(Org, provenance) < offset_of!(Org, limited));
        // What a request writes, in the first line; the hot part, in the
        // second, with nothing a request writes.
        assert!(offset_of!(Org, calls) + size_of::<CallCounter>() <= 64);
        assert!(offset_of!(Org, rate) + size_of::<RateLimiter>() <= 64);
        assert!(offset_of!(Org, hot) >= 64);
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

    /// An org's own limits and its disable reason, which may be unique to
    /// it, are interned while a record holds them and no longer: not after
    /// an install replaces them, nor after the record is dropped.
    #[test]
    fn an_orgs_rare_parts_are_interned_only_while_it_holds_them() {
        let overrides = LimitOverrides {
            rate_per_sec: std::num::NonZeroU32::new(4_321_987),
            ..LimitOverrides::default()
        };
        let reason = "an_orgs_rare_parts_are_interned_only_while_it_holds_them";
        let disabled = KeyStatus::Disabled {
            reason: reason.into(),
        };
        let first = state(Some("Ab3dEf6hIj9k"), disabled.clone(), None, overrides);
        let held = |s: &OrgState| split(s.clone(), 1, Limits::default()).1.provenance;
        let o = org(first.clone(), 1);
        assert!(cold::is_interned(&held(&first)));
        let second = state(
            Some("Ab3dEf6hIj9k"),
            disabled,
            None,
            LimitOverrides::default(),
        );
        assert!(o.replace_if_newer(second.clone(), 2, Limits::default()));
        assert!(!cold::is_interned(&held(&first)));
        assert!(cold::is_interned(&held(&second)));
        assert_eq!(o.state(), second);
        drop(o);
        assert!(!cold::is_interned(&held(&second)));
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
        assert!(split(s, 1, Limits::default()).1.provenance.rare.is_none());
    }
}
