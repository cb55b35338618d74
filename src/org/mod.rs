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

use std::sync::RwLock;

use bytes::Bytes;

pub use error::OpError;
pub(crate) use id::IdPages;
pub use id::{OrgId, OrgIdError};
pub use limits::{max as limits_max, LimitOverrides, Limits, LimitsError};
pub use state::{Action, Actor, KeyStatus, OrgState, TokenName, Transition, THRESHOLD_REASON};

use crate::limit::{CallCounter, Rate, RateLimiter};

/// One live org, as the gate sees it.
#[derive(Debug)]
pub struct Org {
    /// The id's bytes, on one of the store's [`IdPages`].
    id: Bytes,
    current: RwLock<Current>,
    rate: RateLimiter,
    calls: CallCounter,
}

/// The state in force, with what the request path needs of its limits
/// precomputed, so a request does no division. Kept small: there is one per org.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) state: OrgState,
    pub(crate) rate: Rate,
    pub(crate) threshold_calls: u32,
    pub(crate) threshold_window_secs: u32,
}

impl Current {
    fn new(state: OrgState, defaults: Limits) -> Current {
        let limits = defaults.with(&state.limits);
        Current {
            rate: Rate::new(limits.rate_per_sec, limits.burst),
            threshold_calls: limits.threshold_calls,
            threshold_window_secs: limits.threshold_window_secs,
            state,
        }
    }
}

impl Org {
    /// The live org `id`, its bytes kept on `pages`.
    pub(crate) fn new(id: &OrgId, pages: &mut IdPages, state: OrgState, defaults: Limits) -> Org {
        Org {
            id: pages.keep(id),
            current: RwLock::new(Current::new(state, defaults)),
            rate: RateLimiter::new(),
            calls: CallCounter::new(),
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

    /// Makes `state` the state in force.
    pub(crate) fn replace(&self, state: OrgState, defaults: Limits) {
        let next = Current::new(state, defaults);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
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
}

#[cfg(all(test, target_pointer_width = "64"))]
mod tests {
    /// There is one `Arc<Org>` per org: at 1,000,000 orgs every 16 bytes of its
    /// allocation is 16 MB (BENCHMARKS.md, "<= 256 bytes of RSS per org").
    /// 184 bytes, plus the `Arc`'s two counts and malloc's 8-byte header, is
    /// 208: glibc's 208-byte size class, not the 224 one. (168 fitted the
    /// 192-byte class while the id was interned for the life of the process;
    /// an owned id costs 16 bytes more.)
    #[test]
    fn an_org_in_its_arc_fits_a_208_byte_chunk() {
        assert_eq!(std::mem::size_of::<super::Actor>(), 16);
        assert!(
            std::mem::size_of::<super::Org>() <= 184,
            "Org is {} bytes",
            std::mem::size_of::<super::Org>()
        );
    }
}
