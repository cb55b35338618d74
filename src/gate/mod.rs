//! The key-checking tower middleware.
//!
//! [`KeyGateLayer`] wraps any `Service<http::Request<B>>` (an axum `Router`, a
//! tonic server, keygate's own reverse proxy) and runs the contract's checks on
//! every request, in the contract's order, each in the file that bears its step:
//!
//! 1. `resolve`: the key header (absent or empty: `MISSING_KEY`; repeated:
//!    `INVALID_KEY`) and the org (first path segment, or a header);
//! 2. `admit`: the key (malformed, unknown org, no key, wrong key: one
//!    `INVALID_KEY` for all), the key's status (`KEY_DISABLED`), the threshold
//!    count (the crossing call disables the key durably, then is refused), the
//!    subscription (`SUBSCRIPTION_EXPIRED` for blocked methods), the rate
//!    (`RATE_LIMITED` with `Retry-After` and `x-ratelimit-*`);
//! 3. `service`: forward what passed, without the key header, with `x-org-id`
//!    (a client's own dropped), the org in the request's extensions as an
//!    [`OrgId`](crate::org::OrgId) (unless [`GateConfig::org_extension`] is
//!    off), and, in path mode, the org's segment removed.
//!
//! Refusals are answered at once by the response future, never forwarded, as
//! [`Refusal`](crate::answer::Refusal)s: `application/json` bodies
//! `{"code": "...", "message": "..."}`, in keygate's one home for its own
//! answers ([`answer`](crate::answer)), which the proxy uses too.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use keygate::{clock::SystemClock, gate::{GateConfig, KeyGateLayer}, org::*, store::Store};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Store::in_memory(Arc::new(SystemClock::new()), Limits::default()).await;
//! let acme = OrgId::parse("acme").unwrap();
//! store.provision(acme, None, LimitOverrides::default(), Actor::Provider).await.unwrap();
//!
//! let app: Router = Router::new()
//!     .route("/v1/users", get(|| async { "users" }))
//!     .layer(KeyGateLayer::new(store, GateConfig::default()));
//! // GET /acme/v1/users with `x-api-key: <acme's key>` now reaches the handler
//! // as GET /v1/users with `x-org-id: acme`; anything else is refused.
//! # let _ = app; }
//! ```

mod admit;
mod future;
mod layer;
mod resolve;
mod service;
mod session;

use http::{HeaderName, Method};

pub use future::ResponseFuture;
pub use layer::KeyGateLayer;
pub use service::{KeyGate, X_ORG_ID};

use crate::store::Store;

/// Where a request names its org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgSource {
    /// The first path segment, removed before forwarding.
    Path,
    /// This header's value; the path is forwarded unchanged.
    Header(HeaderName),
}

/// How the gate reads requests.
#[derive(Debug, Clone)]
pub struct GateConfig {
    /// Where the org is named.
    pub org_from: OrgSource,
    /// The header that carries the API key.
    pub key_header: HeaderName,
    /// Methods refused while an org's subscription is expired.
    pub blocked_when_expired: Vec<Method>,
    /// Whether an admitted request carries its [`OrgId`](crate::org::OrgId) in
    /// its extensions, for a handler that reads it there (axum's
    /// `Extension<OrgId>`). On by default. `x-org-id` is set either way; keygate's
    /// own proxy turns this off, since `http` allocates three times for the first
    /// extension of a request (the map, its table, the boxed value) and its
    /// forwarder reads none.
    pub org_extension: bool,
}

impl Default for GateConfig {
    /// The contract's defaults: org from the path, key in `x-api-key`, POST and
    /// PUT blocked while expired; and the org in the request's extensions.
    fn default() -> Self {
        GateConfig {
            org_from: OrgSource::Path,
            key_header: HeaderName::from_static("x-api-key"),
            blocked_when_expired: vec![Method::POST, Method::PUT],
            org_extension: true,
        }
    }
}

/// What every clone of the layer and the service shares.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) store: Store,
    pub(crate) config: GateConfig,
    /// Session login (contract section 8), when configured.
    pub(crate) session: Option<crate::session::SessionConfig>,
    /// What `config` says of the headers it names, worked out once.
    pub(crate) roles: HeaderRoles,
}

/// What a [`GateConfig`] says of the headers it names, worked out when the
/// gate is made rather than compared on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeaderRoles {
    /// The org is named in `x-org-id` itself (and the key is in another
    /// header): that header is forwarded as it came.
    pub(crate) org_in_x_org_id: bool,
    /// The key's header also names the org (a layer's config may say so;
    /// keygate's own config refuses it): the key is read in place and
    /// removed only when the request is forwarded, after the org is read.
    pub(crate) key_names_org: bool,
}

impl HeaderRoles {
    fn of(config: &GateConfig) -> HeaderRoles {
        let org_header = match &config.org_from {
            OrgSource::Header(name) => Some(name),
            OrgSource::Path => None,
        };
        HeaderRoles {
            org_in_x_org_id: org_header == Some(&service::X_ORG_ID)
                && config.key_header != service::X_ORG_ID,
            key_names_org: org_header == Some(&config.key_header),
        }
    }
}

impl Gate {
    pub(crate) fn new(
        store: Store,
        config: GateConfig,
        session: Option<crate::session::SessionConfig>,
    ) -> Gate {
        Gate {
            store,
            roles: HeaderRoles::of(&config),
            config,
            session,
        }
    }

    /// The key the request presents ([`take_key`](resolve::take_key)'s
    /// rules), taken out of its headers: one lookup of the key's header
    /// finds and removes it, where reading it for the checks and removing it
    /// before forwarding were two. A refused request is dropped, so nothing
    /// else sees it without its key. When the key's header also names the
    /// org, it stays until [`forward`](service) has read the org.
    #[inline]
    pub(crate) fn presented(
        &self,
        headers: &mut http::HeaderMap,
    ) -> Result<http::HeaderValue, crate::answer::Refusal> {
        if self.roles.key_names_org {
            resolve::presented_key(headers, &self.config.key_header).cloned()
        } else {
            resolve::take_key(headers, &self.config.key_header)
        }
    }
}
