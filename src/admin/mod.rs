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

mod auth;
pub mod console;
mod error;
mod handlers;
mod json;
mod view;

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::StatusCode;
use serde::Serialize;

pub use auth::Principal;
pub use error::AdminError;
pub use json::MAX_BODY;
pub use view::{EventView, KeyView};

use crate::gate::OrgSource;
use crate::org::OrgId;
use crate::store::Store;
use crate::token::TokenDigest;

/// What every admin handler shares.
#[derive(Clone)]
pub struct AdminState {
    store: Store,
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
            store,
            provider,
            public_url: public_url.trim_end_matches('/').into(),
            org_in_path: *org_from == OrgSource::Path,
        }
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
    use handlers::*;
    Router::new()
        .route("/", get(console::index))
        .route("/console/app.js", get(console::script))
        .route("/console/app.css", get(console::style))
        .route("/console/icon.svg", get(console::icon))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/orgs", get(list).post(provision))
        .route("/v1/orgs/{org}", axum::routing::delete(delete_org))
        .route(
            "/v1/orgs/{org}/key",
            get(get_key).post(add_key).put(edit_key).delete(delete_key),
        )
        .route("/v1/orgs/{org}/key/regenerate", post(regenerate_key))
        .route("/v1/orgs/{org}/audit", get(audit))
        .route("/v1/orgs/{org}/disable", post(disable))
        .route("/v1/orgs/{org}/enable", post(enable))
        .route("/v1/orgs/{org}/subscription", put(set_subscription))
        .route("/v1/orgs/{org}/limits", put(set_limits))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/whoami", get(whoami))
        .route("/v1/orgs/{org}/usage", get(usage))
        .route("/v1/tokens/{name}", axum::routing::delete(delete_token))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
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
