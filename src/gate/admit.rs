//! Steps 2 to 5 of the request path, in the contract's order: check the key, check
//! the key's status, count the call against the threshold, check the
//! subscription, then the rate.

use http::{HeaderMap, HeaderValue, Method};

use super::resolve::named_org;
use super::session::{Answer, SessionPath};
use super::Gate;
use crate::answer::Refusal;
use crate::key::ApiKey;
use crate::limit::{Count, Spent};
use crate::org::Org;
use crate::store::{Found, OrgRef};

/// What the gate decided about one request.
pub(crate) enum Admission {
    /// Forward it, as this org, stripping this many bytes of path.
    Allow {
        /// See [`Named::prefix_len`](super::resolve::Named).
        prefix_len: usize,
    },
    /// Answer it with this refusal now.
    Refuse(Refusal),
    /// A call with a session: forward it as [`Allow`](Admission::Allow)
    /// does, and without the session cookie.
    AllowSession {
        /// See [`Named::prefix_len`](super::resolve::Named).
        prefix_len: usize,
    },
    /// The session path's own answer (login, check, logout, or a dead session).
    Answer(Answer),
    /// A login: its body is read before it is decided.
    Session(SessionPath),
    /// This call took the org past its threshold: disable the key, then refuse.
    Disable(OrgRef),
    /// Cluster mode, and no call of the org's threshold is granted to this
    /// node: ask the cluster for some ([`Store::take_calls`](crate::store::Store)),
    /// then [`finish`](Gate::finish) the checks.
    Take {
        /// The org.
        org: OrgRef,
        /// See [`Named::prefix_len`](super::resolve::Named).
        prefix_len: usize,
        /// Whether the call came with a session rather than a key.
        session: bool,
    },
}

/// When the calls granted to this node fall to one of these, it asks the
/// cluster for more in the background, so a busy org's calls rarely wait for
/// a grant: at a quarter or so of a large grant, and near the end of a small one.
const PREFETCH_AT: [u32; 2] = [16, 4];

/// The headers that let a client ask for one method while sending another. While
/// a subscription is expired, naming a blocked method in any of them is refused
/// like sending it.
const METHOD_OVERRIDES: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl Gate {
    /// Decides on a request that `presented` a key ([`Gate::presented`]).
    pub(crate) fn admit(
        &self,
        presented: Result<HeaderValue, Refusal>,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Admission {
        // Before anything is read from the store: a cluster's node that
        // cannot vouch for its state refuses everything (one load and a
        // branch on a single node).
        if !self.store.serving() {
            return Admission::Refuse(Refusal::ClusterUnavailable);
        }
        let presented = match presented {
            Ok(v) => v,
            // Sessions: off the keyed path, which never gets here.
            Err(Refusal::MissingKey) if self.session.is_some() => {
                return match self.session_config() {
                    Some(config) => self.admit_session(config, method, uri, headers),
                    None => Admission::Refuse(Refusal::MissingKey),
                };
            }
            Err(refusal) => return Admission::Refuse(refusal),
        };
        // From here on every refusal about the key or the org is the same
        // INVALID_KEY, so the answer never tells which orgs exist.
        let Some(named) = named_org(&self.config.org_from, uri, headers) else {
            return Admission::Refuse(Refusal::InvalidKey);
        };
        let Ok(key) = ApiKey::parse(presented.as_bytes()) else {
            return Admission::Refuse(Refusal::InvalidKey);
        };
        let now = self.store.clock().now();
        self.store
            .with_org(named.org, |org| {
                let c = org.hot();
                if !c.key().is_some_and(|k| k.ct_eq(&key)) {
                    return Admission::Refuse(Refusal::InvalidKey);
                }
                if c.is_disabled() {
                    return Admission::Refuse(Refusal::KeyDisabled);
                }
                self.counted(
                    org,
                    method,
                    headers,
                    now,
                    (
                        c.threshold_calls,
                        c.threshold_window_secs,
                        c.rate,
                        c.subscription_expired(now),
                    ),
                    named.prefix_len,
                    false,
                )
            })
            .unwrap_or(Admission::Refuse(Refusal::InvalidKey))
    }

    /// Step 3 and on, once the key (or session) is found good and the key
    /// enabled: the threshold count, then [`after_count`](Gate::after_count).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn counted(
        &self,
        org: Found<'_>,
        method: &Method,
        headers: &HeaderMap,
        now: crate::clock::Timestamp,
        (threshold_calls, window_secs, rate, expired): (u32, u32, crate::limit::Rate, bool),
        prefix_len: usize,
        session: bool,
    ) -> Admission {
        if self.store.shares_calls() {
            match org.calls().spend(now, window_secs) {
                Spent::Left(left) => {
                    if PREFETCH_AT.contains(&left) {
                        self.store.prefetch_calls(org);
                    }
                }
                Spent::Empty => {
                    return Admission::Take {
                        org: self.store.hold(org),
                        prefix_len,
                        session,
                    }
                }
            }
        } else {
            let (count, opened) = org.calls().count_opening(now, threshold_calls, window_secs);
            if opened {
                org.window_opened();
            }
            match count {
                Count::Within => {}
                // Over, too, disables: the provider may have lowered the
                // threshold below this window's count, and a key that is
                // refused must also be durably disabled. A disable that
                // finds the key disabled already commits nothing.
                Count::Crossed | Count::Over => return Admission::Disable(self.store.hold(org)),
            }
        }
        self.after_count(
            &org, method, headers, now, expired, rate, prefix_len, session,
        )
    }

    /// The checks after the count, for a call whose count a grant from the
    /// cluster settled: the org's state as it is now.
    pub(crate) fn finish(
        &self,
        org: &Org,
        method: &Method,
        headers: &HeaderMap,
        prefix_len: usize,
        session: bool,
    ) -> Admission {
        let now = self.store.clock().now();
        let c = org.hot();
        let (rate, expired) = (c.rate, c.subscription_expired(now));
        self.after_count(
            org, method, headers, now, expired, rate, prefix_len, session,
        )
    }

    /// Steps 4 and 5: the subscription, then the rate (in cluster mode, this
    /// node's share of it).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn after_count(
        &self,
        org: &Org,
        method: &Method,
        headers: &HeaderMap,
        now: crate::clock::Timestamp,
        expired: bool,
        rate: crate::limit::Rate,
        prefix_len: usize,
        session: bool,
    ) -> Admission {
        org.touch(now);
        if expired && self.blocked_while_expired(method, headers) {
            return Admission::Refuse(Refusal::SubscriptionExpired);
        }
        let rate = match self.store.lease() {
            Some(lease) => rate.shared_by(lease.live_nodes()),
            None => rate,
        };
        if let Err(limited) = org.rate_limiter().check(now, &rate) {
            org.note_limited();
            return Admission::Refuse(Refusal::RateLimited(limited));
        }
        if session {
            return Admission::AllowSession { prefix_len };
        }
        Admission::Allow { prefix_len }
    }

    /// Whether the method, or a method an override header names, is one the
    /// config blocks while a subscription is expired. Methods are compared without
    /// regard to case: `post` must not slip past a rule about `POST`.
    fn blocked_while_expired(&self, method: &Method, headers: &HeaderMap) -> bool {
        let blocked = |m: &[u8]| {
            let m = m.trim_ascii();
            self.config
                .blocked_when_expired
                .iter()
                .any(|b| b.as_str().as_bytes().eq_ignore_ascii_case(m))
        };
        blocked(method.as_str().as_bytes())
            || METHOD_OVERRIDES
                .iter()
                .flat_map(|h| headers.get_all(*h))
                .any(|v| blocked(v.as_bytes()))
    }
}
