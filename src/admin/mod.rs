//! The admin API: the contract's section 4, on its own listener, with axum.
//!
//! Every call but `GET /healthz` carries `Authorization: Bearer <token>`. The
//! provider's token is checked against the config's SHA-256 digest in constant
//! time; admin and viewer tokens are found by their digest in the store. Roles
//! and orgs are checked before a body is read, and a token of one org gets the
//! same `403 FORBIDDEN` for every other org, existing or not.
//!
//! `GET /` and `/console/...` serve the web console ([`console`]), the one
//! part that is not JSON. Every other answer is JSON with `Cache-Control: no-store` (pages carry keys and
//! token creation carries a token), and every refusal is
//! `{"code": "...", "message": "..."}` from [`AdminError`].
//!
//! `GET /v1/openapi.json` serves the OpenAPI document of all of it
//! ([`OPENAPI`], the file `openapi.json` beside this module). The router is
//! built from one route table, `routes()`, and the document's unit tests
//! compare its operations with that table, so a route cannot be added or
//! dropped without the document following.

mod auth;
pub mod console;
mod error;
mod handlers;
mod json;
mod openapi;
mod view;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use axum::routing::{on, MethodFilter};
use axum::Router;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, StatusCode};
use serde::Serialize;

pub use auth::Principal;
pub use error::AdminError;
pub use json::MAX_BODY;
pub use openapi::OPENAPI;
pub use view::{EventView, KeyView};

use crate::gate::OrgSource;
use crate::org::OrgId;
use crate::store::Store;
use crate::token::TokenDigest;

/// What every admin handler shares.
#[derive(Clone)]
pub struct AdminState {
    store: Store,
    /// What `GET /metrics` renders besides the store's own figures.
    metrics: Arc<crate::metrics::Metrics>,
    provider: TokenDigest,
    public_url: Arc<str>,
    org_in_path: bool,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// The admin API over `store`, with the provider's token digest, the proxy's
    /// public URL (no trailing slash) and where the proxy reads the org.
    pub fn new(
        store: Store,
        provider: TokenDigest,
        public_url: &str,
        org_from: &OrgSource,
    ) -> Self {
        AdminState {
            metrics: crate::metrics::Metrics::new(),
            store,
            provider,
            public_url: public_url.trim_end_matches('/').into(),
            org_in_path: *org_from == OrgSource::Path,
        }
    }

    /// The same, rendering `metrics` at `GET /metrics` (by default, fresh
    /// metrics that only the store's figures move).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The URL an org's clients call: `public_url/org` in path mode, else
    /// `public_url`.
    pub fn base_url(&self, org: &OrgId) -> String {
        if self.org_in_path {
            format!("{}/{}", self.public_url, org)
        } else {
            self.public_url.to_string()
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    // The console's files are not API calls: outside the route table the
    // OpenAPI document is checked against.
    routes()
        .router
        .route("/", axum::routing::get(console::index))
        .route("/console/app.js", axum::routing::get(console::script))
        .route("/console/app.css", axum::routing::get(console::style))
        .route("/console/icon.svg", axum::routing::get(console::icon))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .with_state(state)
}

/// Every admin route, one method and path each. [`router`] is built from this
/// list and nothing else, so the OpenAPI document's test compares the document
/// with the routes themselves, not with a copy that could drift.
fn routes() -> Routes {
    use handlers::*;
    use Method as M;
    Routes::default()
        .add(M::GET, "/healthz", healthz)
        .add(M::GET, "/readyz", readyz)
        .add(M::GET, "/metrics", metrics)
        .add(M::GET, "/v1/openapi.json", openapi::document)
        .add(M::GET, "/v1/orgs", list)
        .add(M::POST, "/v1/orgs", provision)
        .add(M::DELETE, "/v1/orgs/{org}", delete_org)
        .add(M::GET, "/v1/orgs/{org}/usage", usage)
        .add(M::GET, "/v1/orgs/{org}/key", get_key)
        .add(M::POST, "/v1/orgs/{org}/key", add_key)
        .add(M::PUT, "/v1/orgs/{org}/key", edit_key)
        .add(M::DELETE, "/v1/orgs/{org}/key", delete_key)
        .add(M::POST, "/v1/orgs/{org}/key/regenerate", regenerate_key)
        .add(M::GET, "/v1/orgs/{org}/audit", audit)
        .add(M::POST, "/v1/orgs/{org}/disable", disable)
        .add(M::POST, "/v1/orgs/{org}/enable", enable)
        .add(M::PUT, "/v1/orgs/{org}/subscription", set_subscription)
        .add(M::PUT, "/v1/orgs/{org}/limits", set_limits)
        .add(M::GET, "/v1/orgs/{org}/api-users", list_users)
        .add(M::POST, "/v1/orgs/{org}/api-users", create_user)
        .add(
            M::DELETE,
            "/v1/orgs/{org}/api-users/{username}",
            delete_user,
        )
        .add(M::GET, "/v1/tokens", list_tokens)
        .add(M::POST, "/v1/tokens", create_token)
        .add(M::GET, "/v1/whoami", whoami)
        .add(M::DELETE, "/v1/tokens/{name}", delete_token)
        .add(M::POST, "/v1/tokens/{name}/rotate", rotate_token)
}

/// Every admin route's method and path, for the CLI's test that each has a
/// command.
#[cfg(test)]
pub(crate) fn route_table() -> Vec<(Method, &'static str)> {
    routes().list
}

/// A router under construction, and the method and path of each route in it.
#[derive(Default)]
struct Routes {
    router: Router<AdminState>,
    list: Vec<(Method, &'static str)>,
}

impl Routes {
    /// Routes `method` on `path` to `handler`. axum merges the methods of one
    /// path, so a path may be added once per method.
    fn add<H, T>(mut self, method: Method, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AdminState>,
        T: 'static,
    {
        // routes() names only GET, POST, PUT and DELETE, each of which has a
        // filter; the route table's unit test builds every route.
        let filter = MethodFilter::try_from(method.clone())
            .expect("the admin API routes only standard methods");
        self.router = self.router.route(path, on(filter, handler));
        self.list.push((method, path));
        self
    }
}

/// A JSON answer that no cache keeps.
pub(crate) fn reply<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let (status, bytes) = match serde_json::to_vec(body) {
        Ok(bytes) => (status, bytes),
        Err(e) => {
            tracing::error!(error = %e, "could not serialize an admin answer");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"code":"INTERNAL","message":"internal error"}"#.to_vec(),
            )
        }
    };
    let mut res = Response::new(Body::from(bytes));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
