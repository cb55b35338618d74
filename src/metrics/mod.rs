//! Prometheus metrics, served as text at `GET /metrics` on the admin listener.
//!
//! [`Metrics`] holds what keygate counts as it runs: proxied requests by
//! outcome and how long keygate and the upstream took ([`Measured`], a layer
//! on the proxy stack), connections open per listener, and, through the
//! [`Store`], admin changes by audit action and commit latency
//! ([`StoreMetrics`]). [`Metrics::render`] reads those and what is known at
//! any moment (orgs, upstream connections, the cluster lease) into the text
//! format. No label names an org or carries a key: per-org figures are the
//! admin API's usage call.
//!
//! Counting is sharded ([`shards`]): each thread adds to its own padded
//! shard with relaxed atomic adds; a scrape sums the shards. Nothing on the
//! request path locks or allocates.

mod layer;
pub(crate) mod shards;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use layer::{Measured, MeasuredFuture};
use shards::{Counters, Histogram};

use crate::store::Store;

/// Every `outcome` label of `keygate_requests_total`, in index order:
/// `forwarded`, then each refusal code in lower case.
pub const OUTCOMES: [&str; 11] = [
    "forwarded",
    "missing_key",
    "invalid_key",
    "key_disabled",
    "subscription_expired",
    "rate_limited",
    "request_timeout",
    "upstream_unavailable",
    "upstream_timeout",
    "upstream_busy",
    "cluster_unavailable",
];

/// The index in [`OUTCOMES`] of keygate's own answer's contract code, or of
/// `forwarded` for `None`; `None` for a code that is not a proxied request's
/// outcome (the readiness probe's, which is not counted).
#[inline]
fn outcome(code: Option<&'static str>) -> Option<usize> {
    Some(match code {
        None => 0,
        Some("MISSING_KEY") => 1,
        Some("INVALID_KEY") => 2,
        Some("KEY_DISABLED") => 3,
        Some("SUBSCRIPTION_EXPIRED") => 4,
        Some("RATE_LIMITED") => 5,
        Some("REQUEST_TIMEOUT") => 6,
        Some("UPSTREAM_UNAVAILABLE") => 7,
        Some("UPSTREAM_TIMEOUT") => 8,
        Some("UPSTREAM_BUSY") => 9,
        Some("CLUSTER_UNAVAILABLE") => 10,
        Some(_) => return None,
    })
}

/// Upper bounds of the time keygate adds, in microseconds: 10 µs to 1 s.
static KEYGATE_BOUNDS: [u64; 14] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];
/// Upper bounds of the upstream's and a commit's time, in microseconds: 1 ms to 30 s.
static SLOW_BOUNDS: [u64; 12] = [
    1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000, 30_000_000,
];

/// The listeners whose open connections are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The proxy listener.
    Proxy,
    /// The admin listener.
    Admin,
}

/// What the proxy and the listeners count. One per running keygate.
pub struct Metrics {
    requests: Counters<{ OUTCOMES.len() }>,
    keygate: Histogram<{ KEYGATE_BOUNDS.len() + 2 }>,
    upstream: Histogram<{ SLOW_BOUNDS.len() + 2 }>,
    /// Open connections of the proxy and the admin listener.
    connections: [AtomicU64; 2],
    /// How many upstream connections are open now, once the proxy is built.
    upstream_open: OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Counters::default(),
            keygate: Histogram::new(&KEYGATE_BOUNDS),
            upstream: Histogram::new(&SLOW_BOUNDS),
            connections: [AtomicU64::new(0), AtomicU64::new(0)],
            upstream_open: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// One proxied request answered: its own answer's code (`None` when
    /// forwarded), the time keygate added, and the upstream's, if it answered.
    #[inline]
    pub fn request(
        &self,
        code: Option<&'static str>,
        keygate: Duration,
        upstream: Option<Duration>,
    ) {
        if let Some(i) = outcome(code) {
            self.requests.add(i, 1);
        }
        self.keygate.observe(micros(keygate));
        if let Some(u) = upstream {
            self.upstream.observe(micros(u));
        }
    }

    /// A connection opened on `listener`; [`closed`](Metrics::closed) when it ends.
    pub fn opened(&self, listener: Listener) {
        self.connections[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection of `listener` closed.
    pub fn closed(&self, listener: Listener) {
        self.connections[listener as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// Where to read the open upstream connections from; the first call wins.
    pub fn upstream_connections(&self, open: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.upstream_open.set(Box::new(open));
    }

    /// The requests counted with `outcome` (a label of [`OUTCOMES`]).
    pub fn requests(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.requests.get(i))
    }

    /// Everything, in Prometheus's text format (version 0.0.4).
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        header(
            o,
            "keygate_requests_total",
            "counter",
            "Proxied requests by outcome: forwarded, or keygate's own answer's code in lower case.",
        );
        for (i, name) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "keygate_requests_total{{outcome=\"{name}\"}} {}",
                self.requests.get(i)
            );
        }
        header(o, "keygate_request_duration_seconds", "histogram", "Time keygate added to a proxied request: from its head to its answer's head, less the upstream's time.");
        self.keygate
            .render("keygate_request_duration_seconds", "", o);
        header(
            o,
            "keygate_upstream_duration_seconds",
            "histogram",
            "From sending a request upstream to the upstream answer's head.",
        );
        self.upstream
            .render("keygate_upstream_duration_seconds", "", o);
        let sm = store.metrics();
        header(
            o,
            "keygate_key_changes_total",
            "counter",
            "Changes committed through the admin API and by keygate itself, by audit action.",
        );
        for (i, action) in ACTIONS.iter().enumerate() {
            let _ = writeln!(
                o,
                "keygate_key_changes_total{{action=\"{action}\"}} {}",
                sm.changes.get(i)
            );
        }
        header(
            o,
            "keygate_store_commit_duration_seconds",
            "histogram",
            "How long the store took to commit one change.",
        );
        sm.commits
            .render("keygate_store_commit_duration_seconds", "", o);
        header(o, "keygate_orgs", "gauge", "Orgs this node holds.");
        let _ = writeln!(o, "keygate_orgs {}", store.len());
        header(
            o,
            "keygate_connections_open",
            "gauge",
            "Client connections open, per listener.",
        );
        for (i, l) in ["proxy", "admin"].iter().enumerate() {
            let _ = writeln!(
                o,
                "keygate_connections_open{{listener=\"{l}\"}} {}",
                self.connections[i].load(Ordering::Relaxed)
            );
        }
        if let Some(open) = self.upstream_open.get() {
            header(
                o,
                "keygate_upstream_connections_open",
                "gauge",
                "Connections to the upstream servers open now.",
            );
            let _ = writeln!(o, "keygate_upstream_connections_open {}", open());
        }
        if let Some(lease) = store.lease() {
            header(
                o,
                "keygate_cluster_lease",
                "gauge",
                "1 while this node holds its cluster lease and serves, else 0.",
            );
            let _ = writeln!(o, "keygate_cluster_lease {}", u8::from(lease.serving()));
            header(
                o,
                "keygate_cluster_live_nodes",
                "gauge",
                "Live nodes of the cluster, as this node last learned.",
            );
            let _ = writeln!(o, "keygate_cluster_live_nodes {}", lease.live_nodes());
            if let Some(lag) = store.feed_lag() {
                header(
                    o,
                    "keygate_cluster_feed_lag",
                    "gauge",
                    "Changes on the cluster's feed this node has read but not applied yet.",
                );
                let _ = writeln!(o, "keygate_cluster_feed_lag {lag}");
            }
        }
        out
    }
}

/// What the store counts: committed changes by action, and commit latency.
#[derive(Debug)]
pub struct StoreMetrics {
    changes: Counters<{ ACTIONS.len() }>,
    commits: Histogram<{ SLOW_BOUNDS.len() + 2 }>,
    /// The last feed seq the store applied.
    applied: AtomicU64,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            changes: Counters::default(),
            commits: Histogram::new(&SLOW_BOUNDS),
            applied: AtomicU64::new(0),
        }
    }
}

/// Every audit action, the `action` label of `keygate_key_changes_total`.
pub const ACTIONS: [&str; 16] = [
    "provision",
    "add_key",
    "edit_key",
    "regenerate_key",
    "delete_key",
    "disable",
    "auto_disable",
    "enable",
    "set_subscription",
    "set_limits",
    "create_token",
    "delete_token",
    "rotate_token",
    "delete_org",
    "create_api_user",
    "delete_api_user",
];

impl StoreMetrics {
    /// One commit attempted, taking `took`; `action` when it was committed.
    pub fn commit(&self, action: Option<crate::org::Action>, took: Duration) {
        self.commits.observe(micros(took));
        if let Some(a) = action {
            if let Some(i) = ACTIONS.iter().position(|n| *n == a.as_str()) {
                self.changes.add(i, 1);
            }
        }
    }

    /// The store applied the feed up to `seq`.
    pub fn applied(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::Relaxed);
    }

    /// The last feed seq the store applied.
    pub fn last_applied(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Changes committed with `action`.
    pub fn changes(&self, action: &str) -> u64 {
        ACTIONS
            .iter()
            .position(|a| *a == action)
            .map_or(0, |i| self.changes.get(i))
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_code_has_its_lower_case_outcome() {
        for code in [
            "MISSING_KEY",
            "INVALID_KEY",
            "KEY_DISABLED",
            "SUBSCRIPTION_EXPIRED",
            "RATE_LIMITED",
            "REQUEST_TIMEOUT",
            "UPSTREAM_UNAVAILABLE",
            "UPSTREAM_TIMEOUT",
            "UPSTREAM_BUSY",
            "CLUSTER_UNAVAILABLE",
        ] {
            let i = outcome(Some(code)).unwrap();
            assert_eq!(OUTCOMES[i], code.to_ascii_lowercase());
        }
        assert_eq!(OUTCOMES[outcome(None).unwrap()], "forwarded");
    }

    #[test]
    fn every_audit_action_has_its_label() {
        use crate::org::Action;
        // Exhaustive inside the crate: a new action fails to compile here
        // until it is listed, and then this test until ACTIONS has it.
        let all = |a: Action| match a {
            Action::Provision
            | Action::AddKey
            | Action::EditKey
            | Action::RegenerateKey
            | Action::DeleteKey
            | Action::Disable
            | Action::AutoDisable
            | Action::Enable
            | Action::SetSubscription
            | Action::SetLimits
            | Action::CreateToken
            | Action::DeleteToken
            | Action::RotateToken
            | Action::DeleteOrg
            | Action::CreateApiUser
            | Action::DeleteApiUser => a.as_str(),
        };
        for a in [
            Action::Provision,
            Action::AddKey,
            Action::EditKey,
            Action::RegenerateKey,
            Action::DeleteKey,
            Action::Disable,
            Action::AutoDisable,
            Action::Enable,
            Action::SetSubscription,
            Action::SetLimits,
            Action::CreateToken,
            Action::DeleteToken,
            Action::RotateToken,
            Action::DeleteOrg,
            Action::CreateApiUser,
            Action::DeleteApiUser,
        ] {
            assert!(ACTIONS.contains(&all(a)), "{a:?}");
        }
        assert_eq!(ACTIONS.len(), 16);
    }

    #[test]
    fn a_counted_change_shows_under_its_action() {
        let m = StoreMetrics::default();
        m.commit(
            Some(crate::org::Action::RotateToken),
            Duration::from_millis(3),
        );
        m.commit(None, Duration::from_millis(3));
        assert_eq!(m.changes("rotate_token"), 1);
        assert_eq!(m.changes("provision"), 0);
    }
}
