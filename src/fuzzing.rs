//! Fuzz targets: one function per untrusted input keygate parses, each taking
//! arbitrary bytes, running the real code on them and asserting what must hold
//! for every input. A broken invariant panics, which the fuzzer reports as a
//! crash.
//!
//! They live in the library, not in `fuzz/`, so that `tests/fuzz_corpus.rs`
//! replays every committed corpus file through them on every `cargo test`,
//! with no fuzzer installed. The `fuzz/` crate only wraps each in
//! `libfuzzer_sys::fuzz_target!`:
//!
//! ```text
//! cd fuzz && ASAN_OPTIONS=detect_leaks=0 RUSTC_BOOTSTRAP=1 \
//!     cargo fuzz run key -- -max_total_time=600 -detect_leaks=0
//! ```
//!
//! (`RUSTC_BOOTSTRAP=1` lets cargo-fuzz's nightly flags run on stable. Leak
//! detection was turned off while every input's store interned its orgs' ids
//! for the life of the process; they are now freed with the store (see
//! `tests/store_memory.rs`), but no fuzz run with leak detection on has been
//! made since.)
//!
//! | target          | function            | input                                   |
//! |-----------------|---------------------|-----------------------------------------|
//! | `key`           | [`key`]             | the key header, or a JSON string        |
//! | `org_from_path` | [`org_from_path`]   | a request target, or the org header     |
//! | `admin_body`    | [`admin_body`]      | the JSON body of every admin endpoint   |
//! | `config`        | [`config`]          | a configuration file                    |
//!
//! The key and the org reach the gate's resolution step through the real
//! [`KeyGate`] in front of a service that records what it is forwarded, over
//! a fresh in-memory store per input (on a clock that never moves), so that
//! a crash reproduces from its input alone.
//!
//! Not part of keygate's API: hidden from its docs, and free to change.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE,
};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use tower_service::Service;

use crate::admin::{self, AdminState};
use crate::answer::Refusal;
use crate::clock::{ManualClock, Timestamp};
use crate::config::{Config, ConfigError, RawConfig};
use crate::gate::{GateConfig, KeyGate, OrgSource, X_ORG_ID};
use crate::key::ApiKey;
use crate::org::{Actor, LimitOverrides, Limits, OrgId};
use crate::store::Store;
use crate::token::TokenDigest;

/// The org the key and admin targets use.
const ORG: &str = "acme";

/// The gate's default key header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// [`ApiKey::parse`] accepts exactly twelve ASCII alphanumerics, and what it
/// accepts reads back unchanged, masked to its last four characters, and never
/// through `Debug` or `Display`; as a JSON string, the bytes are a key exactly
/// when the text they decode to is one.
///
/// As the key header of a request to an org whose key they are (when they are
/// a key at all), the gate forwards the request exactly when they are a key,
/// refuses blank ones as `MISSING_KEY` and everything else as `INVALID_KEY`,
/// and refuses the header sent twice as `INVALID_KEY`.
pub fn key(data: &[u8]) {
    let well_formed = data.len() == ApiKey::LEN && data.iter().all(u8::is_ascii_alphanumeric);
    let parsed = ApiKey::parse(data);
    match parsed {
        Ok(key) => {
            assert!(well_formed, "accepted a malformed key: {data:?}");
            assert_eq!(key.expose().as_bytes(), data);
            let masked = key.masked();
            assert_eq!(masked.len(), ApiKey::LEN);
            assert!(masked.starts_with("********") && masked.ends_with(key.fingerprint()));
            assert_eq!(key.fingerprint().as_bytes(), &data[ApiKey::LEN - 4..]);
            // Constant, so no part of the key can show (comparing with the key
            // would trip on keys like "flalsllfedac": "<redacted>" holds "edac").
            assert_eq!(format!("{key:?} {key}"), "ApiKey(<redacted>) <redacted>");
            assert_eq!(ApiKey::parse(key.expose().as_bytes()), Ok(key));
            assert!(key.ct_eq(&key));
        }
        Err(_) => assert!(!well_formed, "refused a well-formed key: {data:?}"),
    }

    if let Ok(key) = serde_json::from_slice::<ApiKey>(data) {
        let text: String = serde_json::from_slice(data)
            .unwrap_or_else(|e| panic!("read a key from something that is not a string: {e}"));
        assert_eq!(key.expose(), text);
    }

    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let blank = data.iter().all(u8::is_ascii_whitespace);
    runtime().block_on(async {
        let (store, org_key) = store_with(Some(ORG)).await;
        if let Ok(key) = parsed {
            if org_key != Some(key) {
                store
                    .edit(ORG, key.expose(), Actor::Provider)
                    .await
                    .unwrap_or_else(|e| panic!("editing {ORG}'s key to a valid key failed: {e}"));
            }
        }
        let gate = KeyGate::new(Recorder, store, GateConfig::default());
        for times in [1, 2] {
            let mut request = Request::new(Body::empty());
            *request.uri_mut() = Uri::from_static("/acme/v1/users");
            for _ in 0..times {
                request.headers_mut().append(X_API_KEY, value.clone());
            }
            let expected = match (times, parsed, blank) {
                (1, Ok(_), _) => None,
                (1, Err(_), true) => Some(Refusal::MissingKey),
                _ => Some(Refusal::InvalidKey),
            };
            match (gated(&gate, request).await, expected) {
                (Gated::Forwarded(f), None) => {
                    assert_eq!(f.uri, "/v1/users");
                    assert!(!f.headers.contains_key(X_API_KEY), "the key was forwarded");
                }
                (Gated::Refused(code), Some(refusal)) => assert_eq!(code, refusal.code()),
                (got, expected) => {
                    panic!("{times} key header(s) {data:?}: {got:?}, expected {expected:?}")
                }
            }
        }
    });
}

/// Any bytes that parse as a request target name, in path mode, exactly the
/// whole first path segment when it is a well-formed [`OrgId`] and nothing
/// otherwise: with that org's key, the gate forwards the request exactly when
/// the segment is well-formed, as that org, without the segment, with the
/// same scheme and authority and a path-and-query that starts with `/` and
/// ends with everything after the segment. In header mode, the same bytes as
/// the org header are forwarded exactly when they are a well-formed id.
pub fn org_from_path(data: &[u8]) {
    if let Ok(uri) = Uri::try_from(data) {
        // The oracle: the path's first segment, when it is a well-formed id.
        let org = uri
            .path()
            .strip_prefix('/')
            .map(|rest| rest.split('/').next().unwrap_or(rest))
            .filter(|segment| OrgId::is_valid(segment.as_bytes()));
        let forwarded = gate_once(org, GateConfig::default(), uri.clone(), HeaderMap::new());
        match (org, forwarded) {
            (Some(org), Gated::Forwarded(f)) => {
                f.check_org(org);
                check_stripped(&uri, 1 + org.len(), &f.uri);
            }
            (None, Gated::Refused(code)) => assert_eq!(code, "INVALID_KEY", "{uri:?}"),
            (org, got) => panic!("{uri:?} expected to name {org:?}: {got:?}"),
        }
    }

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let org = std::str::from_utf8(data)
            .ok()
            .filter(|id| OrgId::is_valid(id.as_bytes()));
        let config = GateConfig {
            org_from: OrgSource::Header(X_ORG_ID),
            ..GateConfig::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert(X_ORG_ID, value);
        let uri = Uri::from_static("/v1/users?x=1");
        match (org, gate_once(org, config, uri, headers)) {
            (Some(org), Gated::Forwarded(f)) => {
                f.check_org(org);
                assert_eq!(f.uri, "/v1/users?x=1");
            }
            (None, Gated::Refused(code)) => assert_eq!(code, "INVALID_KEY", "{data:?}"),
            (org, got) => panic!("org header {data:?} expected to name {org:?}: {got:?}"),
        }
    }
}

/// Sends one request through a gate over a store holding `org`, if any, with
/// that org's key.
fn gate_once(org: Option<&str>, config: GateConfig, uri: Uri, headers: HeaderMap) -> Gated {
    runtime().block_on(async {
        let (store, key) = store_with(org).await;
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        // A key of no org when there is none, so the org alone decides.
        let key = key.map_or(HeaderValue::from_static("Ab3dEf6hIj9k"), |k| {
            HeaderValue::from_str(k.expose())
                .unwrap_or_else(|e| panic!("a key is a valid header value: {e}"))
        });
        request.headers_mut().insert(X_API_KEY, key);
        gated(&KeyGate::new(Recorder, store, config), request).await
    })
}

/// Checks `after`, the forwarded target of `uri` once the gate removed
/// `prefix_len` bytes of its path.
fn check_stripped(uri: &Uri, prefix_len: usize, after: &Uri) {
    let before = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let rest = before
        .get(prefix_len..)
        .unwrap_or_else(|| panic!("the org is not a prefix of {before:?}"));
    let stripped = after.path_and_query().map_or("", |pq| pq.as_str());
    let at = format!("{uri:?} was forwarded as {after:?}");
    assert!(stripped.starts_with('/'), "{at}");
    assert!(stripped.ends_with(rest), "{at}");
    assert_eq!(
        stripped.len(),
        rest.len() + usize::from(!rest.starts_with('/')),
        "{at}"
    );
    assert_eq!(after.scheme(), uri.scheme(), "{at}");
    assert_eq!(after.authority(), uri.authority(), "{at}");
    let again = Uri::try_from(after.to_string())
        .unwrap_or_else(|e| panic!("{at}, which does not parse: {e}"));
    assert_eq!(&again, after, "{at}");
}

/// What the gate did with a request.
#[derive(Debug)]
enum Gated {
    /// Passed it to the inner service, as this.
    Forwarded(Forwarded),
    /// Answered it with a refusal of this code.
    Refused(String),
}

/// A request as the inner service received it.
#[derive(Debug, Clone)]
struct Forwarded {
    uri: Uri,
    headers: HeaderMap,
    org: Option<OrgId>,
}

impl Forwarded {
    fn check_org(&self, org: &str) {
        assert_eq!(
            self.headers.get(X_ORG_ID).map(HeaderValue::as_bytes),
            Some(org.as_bytes())
        );
        assert_eq!(self.headers.get_all(X_ORG_ID).iter().count(), 1);
        assert_eq!(self.org.as_ref().map(OrgId::as_str), Some(org));
        assert!(
            !self.headers.contains_key(X_API_KEY),
            "the key was forwarded"
        );
    }
}

/// The gate's inner service: answers 200 with what it received in the
/// response's extensions.
#[derive(Debug, Clone, Copy)]
struct Recorder;

impl Service<Request<Body>> for Recorder {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut response = Response::new(Empty::new());
        response.extensions_mut().insert(Forwarded {
            uri: request.uri().clone(),
            headers: request.headers().clone(),
            org: request.extensions().get::<OrgId>().cloned(),
        });
        ready(Ok(response))
    }
}

async fn gated(gate: &KeyGate<Recorder>, request: Request<Body>) -> Gated {
    let response = call(gate.clone(), request).await;
    if let Some(forwarded) = response.extensions().get::<Forwarded>() {
        assert_eq!(response.status(), StatusCode::OK);
        return Gated::Forwarded(forwarded.clone());
    }
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|never| match never {})
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("a {status} refusal that is not JSON: {e}"));
    let code = body["code"]
        .as_str()
        .unwrap_or_else(|| panic!("a {status} refusal without a code: {body}"));
    Gated::Refused(code.to_owned())
}

/// Calls `service` once, as a server would.
async fn call<S, R>(mut service: S, request: R) -> S::Response
where
    S: Service<R, Error = Infallible>,
{
    if let Err(never) = std::future::poll_fn(|cx| service.poll_ready(cx)).await {
        match never {}
    }
    match service.call(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// The one runtime every target's async code runs on.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("cannot build the fuzzing runtime: {e}"))
    })
}

/// A fresh in-memory store, on a clock stopped at 2026-01-01T00:00:00Z,
/// holding `org` (if any) with its random key.
async fn store_with(org: Option<&str>) -> (Store, Option<ApiKey>) {
    let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_767_225_600)));
    let store = Store::in_memory(clock, Limits::default()).await;
    let Some(org) = org else {
        return (store, None);
    };
    let id = OrgId::parse(org).unwrap_or_else(|e| panic!("{org:?} was checked valid: {e}"));
    let view = store
        .provision(id, None, LimitOverrides::default(), Actor::Provider)
        .await
        .unwrap_or_else(|e| panic!("provisioning {org} in an empty store failed: {e}"));
    (store, view.state.key)
}

/// The provider's bearer token in [`admin_body`].
const PROVIDER_TOKEN: &str = "fuzz-provider-token";

/// Each endpoint that reads a JSON body, as the provider calls it.
const BODY_ENDPOINTS: &[(Method, &str)] = &[
    (Method::PUT, "/v1/orgs/acme/key"),
    (Method::PUT, "/v1/orgs/acme/subscription"),
    (Method::PUT, "/v1/orgs/acme/limits"),
    (Method::POST, "/v1/orgs"),
    (Method::POST, "/v1/tokens"),
    (Method::POST, "/v1/orgs/acme/disable"),
];

/// `data` as the `application/json` body of every admin endpoint that takes
/// one, through the real axum router, as the provider (so the body is read):
/// no answer is a 5xx, every answer is `no-store`, every answer with a body is
/// a JSON object, every 4xx is the contract's `{"code", "message"}`, and a 4xx
/// changes no org and writes no audit event.
///
/// Each input gets its own in-memory store with one org, `acme`, on a clock
/// that never moves, so that a crash reproduces from its input alone; only the
/// runtime is shared.
pub fn admin_body(data: &[u8]) {
    runtime().block_on(async {
        let (store, _) = store_with(Some(ORG)).await;
        let state = AdminState::new(
            store.clone(),
            TokenDigest::of(PROVIDER_TOKEN),
            "http://127.0.0.1:8080",
            &OrgSource::Path,
        );
        let router = admin::router(state);
        for (method, path) in BODY_ENDPOINTS {
            let orgs_before = store.list();
            let audit_before = audit_len(&store).await;
            let request = Request::builder()
                .method(method)
                .uri(*path)
                .header(AUTHORIZATION, format!("Bearer {PROVIDER_TOKEN}"))
                .header(CONTENT_TYPE, "application/json")
                .body(Body::from(data.to_vec()))
                .unwrap_or_else(|e| panic!("a fixed request failed to build: {e}"));
            let response = call(router.clone(), request).await;
            let refused = response.status().is_client_error();
            check_admin_answer(method, path, response).await;
            if refused {
                assert_eq!(
                    store.list(),
                    orgs_before,
                    "a refused {method} {path} changed an org"
                );
                assert_eq!(
                    audit_len(&store).await,
                    audit_before,
                    "a refused {method} {path} wrote to the audit log"
                );
            }
        }
    });
}

/// How many audit events [`ORG`] has.
async fn audit_len(store: &Store) -> usize {
    store
        .audit(ORG)
        .await
        .unwrap_or_else(|e| panic!("{ORG}'s audit log cannot be read: {e}"))
        .len()
}

async fn check_admin_answer(method: &Method, path: &str, response: Response<Body>) {
    let status = response.status();
    let at = format!("{method} {path} answered {status}");
    assert!(!status.is_server_error(), "{at}");
    assert_eq!(
        response
            .headers()
            .get(CACHE_CONTROL)
            .map(HeaderValue::as_bytes),
        Some(&b"no-store"[..]),
        "{at}"
    );
    let json_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        == Some(&b"application/json"[..]);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("{at} with an unreadable body: {e}"));
    if status == StatusCode::NO_CONTENT {
        assert!(bytes.is_empty(), "{at} with a body");
        return;
    }
    assert!(json_type, "{at} without Content-Type: application/json");
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{at} with a body that is not JSON: {e}"));
    let fields = body
        .as_object()
        .unwrap_or_else(|| panic!("{at} with a body that is not an object: {body}"));
    if status.is_client_error() {
        let code = fields.get("code").and_then(serde_json::Value::as_str);
        let message = fields.get("message").and_then(serde_json::Value::as_str);
        assert!(
            fields.len() == 2
                && code.is_some_and(|c| {
                    !c.is_empty() && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                })
                && message.is_some_and(|m| !m.is_empty()),
            "{at} with a refusal that is not {{code, message}}: {body}"
        );
    }
}

/// [`Config::from_toml`] never panics on any UTF-8 text, and each refusal, of
/// the raw parse or of validation, prints as one line that starts `config: `.
///
/// Validation reads the TLS files a config names (the listeners' certificates
/// and keys, the upstream CA file); inputs naming a file that is
/// not a regular file of at most 1 MiB under the working directory (a device,
/// a FIFO, `/proc`) are skipped, so the fuzzer cannot make it read forever.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match RawConfig::from_toml(text) {
        Ok(raw) if !reads_only_small_files(&raw) => return,
        Ok(_) => {}
        Err(e) => check_config_error(&e),
    }
    match Config::from_toml(text) {
        Ok(config) => {
            let public_url = &config.proxy.public_url;
            assert!(!public_url.ends_with('/'), "{public_url}");
            assert!(matches!(
                config.proxy.upstream().scheme_str(),
                Some("http" | "https")
            ));
            assert_eq!(
                config.proxy.upstreams.first(),
                Some(config.proxy.upstream())
            );
            assert!(config.limits.validate().is_ok(), "{:?}", config.limits);
        }
        Err(e) => check_config_error(&e),
    }
}

fn check_config_error(e: &ConfigError) {
    let shown = e.to_string();
    assert!(shown.starts_with("config: "), "{shown:?}");
    assert!(!shown.contains(['\n', '\r']), "not one line: {shown:?}");
}

/// Whether every TLS file `raw` would make validation read is a relative path
/// without `..` that is missing or a regular file of at most 1 MiB.
fn reads_only_small_files(raw: &RawConfig) -> bool {
    [&raw.proxy.tls, &raw.admin.tls]
        .into_iter()
        .flatten()
        .flat_map(|tls| [&tls.cert_path, &tls.key_path])
        .chain([&raw.proxy.upstream_ca_path])
        .flatten()
        .all(|path| {
            let path = std::path::Path::new(path);
            let confined = path.is_relative()
                && path
                    .components()
                    .all(|c| !matches!(c, std::path::Component::ParentDir));
            confined && std::fs::metadata(path).map_or(true, |m| m.is_file() && m.len() <= 1 << 20)
        })
}
