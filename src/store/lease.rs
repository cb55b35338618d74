//! Whether this node may serve: the one fact of cluster membership the
//! request path reads.
//!
//! A backend several nodes share ([`Backend::lease`](super::Backend::lease))
//! keeps each node's lease in the shared store and renews it while the node
//! follows the change feed. The other nodes, confirming a change, wait for
//! every node that holds a lease to have applied it, and stop waiting for a
//! node whose lease has run out. So a node must stop serving *before* its
//! lease runs out in the shared store: [`Lease::extend`] is given a deadline
//! the renewer computed from the moment it *sent* the renewal, shortened by a
//! margin for the two clocks' rates, and [`Lease::serving`] compares that
//! deadline with this process's monotonic clock on every request, so a
//! process paused past its deadline (a stopped VM, `SIGSTOP`) refuses from
//! its first request after it wakes, before any timer of its own has run.
//!
//! A node also stops serving while it reloads everything after losing its
//! feed ([`Lease::hold`]): what it holds meanwhile cannot be vouched for.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One node's right to serve, as its renewer last established it.
#[derive(Debug)]
pub struct Lease {
    /// What the deadline is counted from.
    base: Instant,
    /// Nanoseconds after `base` until which this node may serve; 0: not now.
    until: AtomicU64,
    /// Set while the node reloads its state: not serving, whatever the deadline.
    held: AtomicBool,
    /// Nodes holding a lease, this one included, as last counted.
    live: AtomicU32,
}

impl Default for Lease {
    fn default() -> Self {
        Lease::new()
    }
}

impl Lease {
    /// A lease not yet established: not serving, one live node.
    pub fn new() -> Lease {
        Lease {
            base: Instant::now(),
            until: AtomicU64::new(0),
            held: AtomicBool::new(false),
            live: AtomicU32::new(1),
        }
    }

    /// Whether this node may serve now. Reads the monotonic clock: the check
    /// must hold in a process that was paused, before any of its timers ran.
    #[inline]
    pub fn serving(&self) -> bool {
        self.serving_at(Instant::now())
    }

    /// Whether this node may serve at `now`.
    #[inline]
    pub fn serving_at(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Acquire);
        until != 0 && self.nanos(now) < until && !self.held.load(Ordering::Acquire)
    }

    /// Lets the node serve until `deadline`, unless a later deadline is set
    /// already (renewals may finish out of order).
    pub fn extend(&self, deadline: Instant) {
        let until = self.nanos(deadline).max(1);
        self.until.fetch_max(until, Ordering::AcqRel);
    }

    /// Stops serving at once, until the next [`extend`](Lease::extend): the
    /// renewer learned that the lease is gone (it lapsed in the shared store).
    pub fn revoke(&self) {
        self.until.store(0, Ordering::Release);
    }

    /// Stops (`true`) or resumes (`false`) serving while the node reloads.
    pub fn hold(&self, held: bool) {
        self.held.store(held, Ordering::Release);
    }

    /// How long this node may still serve from `now`; zero when it may not.
    pub fn remaining_at(&self, now: Instant) -> Duration {
        if !self.serving_at(now) {
            return Duration::ZERO;
        }
        let until = self.until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.nanos(now)))
    }

    /// Nodes holding a lease, this one included, as last counted (at least 1).
    #[inline]
    pub fn live_nodes(&self) -> u32 {
        self.live.load(Ordering::Relaxed).max(1)
    }

    /// Records how many nodes hold a lease.
    pub fn set_live_nodes(&self, n: u32) {
        self.live.store(n.max(1), Ordering::Relaxed);
    }

    fn nanos(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_lease_does_not_serve() {
        assert!(!Lease::new().serving());
    }

    #[test]
    fn an_extended_lease_serves_until_its_deadline_and_not_after() {
        let lease = Lease::new();
        let t0 = Instant::now();
        lease.extend(t0 + Duration::from_secs(3));
        assert!(lease.serving_at(t0));
        assert!(lease.serving_at(t0 + Duration::from_millis(2999)));
        assert!(!lease.serving_at(t0 + Duration::from_secs(3)));
        assert_eq!(
            lease.remaining_at(t0 + Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        assert_eq!(
            lease.remaining_at(t0 + Duration::from_secs(4)),
            Duration::ZERO
        );
    }

    #[test]
    fn an_earlier_deadline_does_not_shorten_a_later_one() {
        let lease = Lease::new();
        let t0 = Instant::now();
        lease.extend(t0 + Duration::from_secs(3));
        lease.extend(t0 + Duration::from_secs(1));
        assert!(lease.serving_at(t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_revoked_or_held_lease_does_not_serve() {
        let lease = Lease::new();
        let t0 = Instant::now();
        lease.extend(t0 + Duration::from_secs(3));
        lease.hold(true);
        assert!(!lease.serving_at(t0));
        lease.hold(false);
        assert!(lease.serving_at(t0));
        lease.revoke();
        assert!(!lease.serving_at(t0));
    }

    #[test]
    fn live_nodes_is_at_least_one() {
        let lease = Lease::new();
        lease.set_live_nodes(0);
        assert_eq!(lease.live_nodes(), 1);
        lease.set_live_nodes(3);
        assert_eq!(lease.live_nodes(), 3);
    }
}
