//! The contract's proxy table, row by row, through the tower Layer (no sockets).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use keygate::clock::{ManualClock, Timestamp};
use keygate::gate::{GateConfig, KeyGate, OrgSource};
use keygate::org::{Actor, KeyStatus, LimitOverrides, Limits, OrgId, THRESHOLD_REASON};
use keygate::store::{MemoryBackend, Store};
use tower::{Service, ServiceExt};

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

/// What the inner service saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
    org: Option<OrgId>,
    body: Bytes,
}

type Upstream =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

struct Fixture {
    svc: KeyGate<Upstream>,
    store: Store,
    backend: Arc<MemoryBackend>,
    clock: Arc<ManualClock>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Asserts a refusal: status, contract code, JSON body of exactly code and message.
    fn refused(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(self.headers["content-type"], "application/json");
        let v = self.json();
        assert_eq!(v["code"], code);
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    }

    fn served(&self) {
        assert_eq!(self.status, StatusCode::OK, "body: {:?}", self.body);
        assert_eq!(self.body, "upstream");
    }
}

fn upstream(seen: Arc<Mutex<Vec<Seen>>>) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                headers: parts.headers,
                org: parts.extensions.get::<OrgId>().cloned(),
                body,
            });
            Ok(Response::new(Full::from("upstream")))
        }
    }))
}

async fn fixture_with(config: GateConfig, defaults: Limits) -> Fixture {
    let backend = Arc::new(MemoryBackend::new());
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(backend.clone(), clock.clone(), defaults)
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    Fixture {
        svc: KeyGate::new(upstream(seen.clone()), store.clone(), config),
        store,
        backend,
        clock,
        seen,
    }
}

async fn fixture() -> Fixture {
    fixture_with(GateConfig::default(), Limits::default()).await
}

impl Fixture {
    async fn org(&self, id: &str) -> String {
        self.org_with(id, LimitOverrides::default()).await
    }

    async fn org_with(&self, id: &str, limits: LimitOverrides) -> String {
        let v = self
            .store
            .provision(OrgId::parse(id).unwrap(), None, limits, Actor::Provider)
            .await
            .unwrap();
        v.state.key.unwrap().expose().to_owned()
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let res = self.svc.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    async fn get(&self, path: &str, key: &str) -> Answer {
        self.send(
            req(Method::GET, path)
                .header("x-api-key", key)
                .body(Full::default())
                .unwrap(),
        )
        .await
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn expire(&self, org: &str) {
        self.store
            .set_subscription(org, Some(T0), Actor::Provider)
            .await
            .unwrap();
    }
}

fn req(method: Method, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

// Row 1: the key header.

#[tokio::test]
async fn no_key_header_is_missing_key() {
    let f = fixture().await;
    f.org("acme").await;
    let a = f
        .send(req(Method::GET, "/acme/v1").body(Full::default()).unwrap())
        .await;
    a.refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn an_empty_key_header_is_missing_key() {
    let f = fixture().await;
    f.org("acme").await;
    f.get("/acme/v1", "")
        .await
        .refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn a_repeated_key_header_is_invalid_key_even_with_the_right_key_twice() {
    let f = fixture().await;
    let key = f.org("acme").await;
    for second in [key.as_str(), "Ab3dEf6hIj9k"] {
        let a = f
            .send(
                req(Method::GET, "/acme/v1")
                    .header("x-api-key", &key)
                    .header("x-api-key", second)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        a.refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    }
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn a_missing_key_is_reported_before_a_bad_org() {
    let f = fixture().await;
    let a = f
        .send(req(Method::GET, "/NOPE/v1").body(Full::default()).unwrap())
        .await;
    a.refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
}

// Row 2: one INVALID_KEY for everything about the org and the key.

#[tokio::test]
async fn unknown_malformed_keyless_and_wrong_all_answer_the_same_invalid_key() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.org("keyless").await;
    f.store.delete("keyless", Actor::Provider).await.unwrap();
    let wrong_case: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    let cases = [
        ("/nobody/v1", key.as_str()),  // unknown org
        ("/ACME/v1", key.as_str()),    // malformed org
        ("/%2e%2e/v1", key.as_str()),  // malformed org
        ("/keyless/v1", key.as_str()), // org without a key
        ("/acme/v1", "Ab3dEf6hIj9k"),  // wrong key
        ("/acme/v1", &key[..11]),      // malformed key
        ("/acme/v1", "Ab3dEf6hIj9-"),  // malformed key
        ("/acme/v1", wrong_case.as_str()),
    ];
    let mut bodies = std::collections::BTreeSet::new();
    for (path, k) in cases {
        let a = f.get(path, k).await;
        a.refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
        bodies.insert(a.body.clone());
    }
    assert_eq!(bodies.len(), 1, "one answer for all: no oracle");
    assert!(f.seen().is_empty());
}

#[tokio::test]
async fn two_orgs_may_hold_the_same_key_and_each_is_checked_alone() {
    let f = fixture().await;
    f.org("acme").await;
    f.org("beta").await;
    f.store
        .edit("acme", "SameKey12345", Actor::Provider)
        .await
        .unwrap();
    f.store
        .edit("beta", "SameKey12345", Actor::Provider)
        .await
        .unwrap();
    f.get("/acme/v1", "SameKey12345").await.served();
    f.get("/beta/v1", "SameKey12345").await.served();
    let seen = f.seen();
    assert_eq!(seen[0].headers["x-org-id"], "acme");
    assert_eq!(seen[1].headers["x-org-id"], "beta");
}

#[tokio::test]
async fn another_orgs_key_is_invalid() {
    let f = fixture().await;
    f.org("acme").await;
    let beta_key = f.org("beta").await;
    f.get("/acme/v1", &beta_key)
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
}

// Row 3: disabled.

#[tokio::test]
async fn a_disabled_key_is_key_disabled() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.store
        .disable("acme", "abuse", Actor::Provider)
        .await
        .unwrap();
    f.get("/acme/v1", &key)
        .await
        .refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    assert!(f.seen().is_empty());
    f.store.enable("acme", Actor::Provider).await.unwrap();
    f.get("/acme/v1", &key).await.served();
}

#[tokio::test]
async fn a_wrong_key_for_a_disabled_org_is_still_invalid_key() {
    let f = fixture().await;
    f.org("acme").await;
    f.store
        .disable("acme", "abuse", Actor::Provider)
        .await
        .unwrap();
    f.get("/acme/v1", "Ab3dEf6hIj9k")
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
}

// Row 4: the threshold.

#[tokio::test]
async fn the_call_past_the_threshold_is_refused_and_disables_the_key_durably() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                threshold_calls: nz(3),
                ..Default::default()
            },
        )
        .await;
    for _ in 0..3 {
        f.get("/acme/v1", &key).await.served();
    }
    let a = f.get("/acme/v1", &key).await;
    a.refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    assert_eq!(f.seen().len(), 3);
    // Durable: a store reopened over the same backend sees it.
    let reopened = Store::open(f.backend.clone(), f.clock.clone(), Limits::default())
        .await
        .unwrap();
    let v = reopened.view("acme").unwrap();
    assert_eq!(
        v.state.status,
        KeyStatus::Disabled {
            reason: THRESHOLD_REASON.into()
        }
    );
    assert_eq!(v.state.last_modified_by, Actor::System);
    // Stays disabled, across windows, until the provider enables it.
    f.clock.advance(Duration::from_secs(7200));
    f.get("/acme/v1", &key)
        .await
        .refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
    f.store.enable("acme", Actor::Provider).await.unwrap();
    for _ in 0..3 {
        f.get("/acme/v1", &key).await.served();
    }
    f.get("/acme/v1", &key)
        .await
        .refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
}

#[tokio::test]
async fn the_threshold_counts_calls_within_one_window_only() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                threshold_calls: nz(2),
                threshold_window_secs: nz(60),
                ..Default::default()
            },
        )
        .await;
    for _ in 0..2 {
        f.get("/acme/v1", &key).await.served();
    }
    f.clock.advance(Duration::from_secs(60));
    for _ in 0..2 {
        f.get("/acme/v1", &key).await.served();
    }
}

#[tokio::test]
async fn rate_limited_and_expired_refusals_count_toward_the_threshold() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                threshold_calls: nz(4),
                rate_per_sec: nz(1),
                burst: nz(1),
                ..Default::default()
            },
        )
        .await;
    f.get("/acme/v1", &key).await.served(); // 1
    f.get("/acme/v1", &key)
        .await
        .refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"); // 2
    f.expire("acme").await;
    let post = |k: &str| {
        req(Method::POST, "/acme/v1")
            .header("x-api-key", k)
            .body(Full::default())
            .unwrap()
    };
    f.send(post(&key))
        .await
        .refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED"); // 3
    f.send(post(&key))
        .await
        .refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED"); // 4
    f.send(post(&key))
        .await
        .refused(StatusCode::FORBIDDEN, "KEY_DISABLED"); // 5: over
    assert!(f.store.view("acme").unwrap().state.is_disabled());
}

#[tokio::test]
async fn invalid_keys_do_not_count_toward_the_threshold() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                threshold_calls: nz(2),
                ..Default::default()
            },
        )
        .await;
    for _ in 0..10 {
        f.get("/acme/v1", "Ab3dEf6hIj9k")
            .await
            .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    }
    f.get("/acme/v1", &key).await.served();
    f.get("/acme/v1", &key).await.served();
}

// Row 5: an expired subscription.

#[tokio::test]
async fn an_expired_subscription_refuses_post_and_put_but_serves_reads() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.expire("acme").await;
    for m in [Method::POST, Method::PUT] {
        let a = f
            .send(
                req(m, "/acme/v1")
                    .header("x-api-key", &key)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        a.refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    }
    for m in [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS] {
        let a = f
            .send(
                req(m, "/acme/v1")
                    .header("x-api-key", &key)
                    .body(Full::default())
                    .unwrap(),
            )
            .await;
        a.served();
    }
    assert_eq!(f.seen().len(), 4);
}

#[tokio::test]
async fn a_subscription_is_not_expired_before_its_end() {
    let f = fixture().await;
    let key = f.org("acme").await;
    let end = T0.saturating_add(Duration::from_secs(10));
    f.store
        .set_subscription("acme", Some(end), Actor::Provider)
        .await
        .unwrap();
    let post = || {
        req(Method::POST, "/acme/v1")
            .header("x-api-key", &key)
            .body(Full::default())
            .unwrap()
    };
    f.send(post()).await.served();
    f.clock.advance(Duration::from_secs(10));
    f.send(post())
        .await
        .refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    f.store
        .set_subscription("acme", None, Actor::Provider)
        .await
        .unwrap();
    f.send(post()).await.served();
}

#[tokio::test]
async fn method_override_headers_and_lowercase_methods_cannot_slip_a_write_past_expiry() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.expire("acme").await;
    for h in [
        "x-http-method-override",
        "X-HTTP-Method",
        "x-method-override",
    ] {
        for v in ["POST", "put", " Post "] {
            let a = f
                .send(
                    req(Method::GET, "/acme/v1")
                        .header("x-api-key", &key)
                        .header(h, v)
                        .body(Full::default())
                        .unwrap(),
                )
                .await;
            a.refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
        }
    }
    let lower = Method::from_bytes(b"post").unwrap();
    let a = f
        .send(
            req(lower, "/acme/v1")
                .header("x-api-key", &key)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    a.refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    let a = f
        .send(
            req(Method::GET, "/acme/v1")
                .header("x-api-key", &key)
                .header("x-http-method-override", "GET")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    a.served();
    assert_eq!(f.seen().len(), 1);
}

#[tokio::test]
async fn blocked_methods_follow_the_config() {
    let config = GateConfig {
        blocked_when_expired: vec![Method::DELETE],
        ..GateConfig::default()
    };
    let f = fixture_with(config, Limits::default()).await;
    let key = f.org("acme").await;
    f.expire("acme").await;
    let a = f
        .send(
            req(Method::DELETE, "/acme/v1")
                .header("x-api-key", &key)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    a.refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    let a = f
        .send(
            req(Method::POST, "/acme/v1")
                .header("x-api-key", &key)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    a.served();
}

#[tokio::test]
async fn disabled_is_answered_before_expired() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.expire("acme").await;
    f.store
        .disable("acme", "abuse", Actor::Provider)
        .await
        .unwrap();
    let a = f
        .send(
            req(Method::POST, "/acme/v1")
                .header("x-api-key", &key)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    a.refused(StatusCode::FORBIDDEN, "KEY_DISABLED");
}

// Row 6: the rate.

#[tokio::test]
async fn over_the_rate_is_429_with_retry_after_and_ratelimit_headers() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                rate_per_sec: nz(2),
                burst: nz(3),
                ..Default::default()
            },
        )
        .await;
    for _ in 0..3 {
        f.get("/acme/v1", &key).await.served();
    }
    let a = f.get("/acme/v1", &key).await;
    a.refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    assert_eq!(a.headers["retry-after"], "1");
    assert_eq!(a.headers["x-ratelimit-limit"], "3");
    assert_eq!(a.headers["x-ratelimit-remaining"], "0");
    assert_eq!(a.headers["x-ratelimit-reset"], "2");
    assert_eq!(f.seen().len(), 3);
    f.clock.advance(Duration::from_millis(500));
    f.get("/acme/v1", &key).await.served();
    f.get("/acme/v1", &key)
        .await
        .refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
}

#[tokio::test]
async fn retry_after_is_whole_seconds_and_at_least_one() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                rate_per_sec: nz(1_000),
                burst: nz(1),
                ..Default::default()
            },
        )
        .await;
    f.get("/acme/v1", &key).await.served();
    let a = f.get("/acme/v1", &key).await;
    a.refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    assert_eq!(a.headers["retry-after"], "1");
}

#[tokio::test]
async fn orgs_are_rate_limited_separately() {
    let f = fixture().await;
    let one = LimitOverrides {
        rate_per_sec: nz(1),
        burst: nz(1),
        ..Default::default()
    };
    let a = f.org_with("acme", one).await;
    let b = f.org_with("beta", one).await;
    f.get("/acme/v1", &a).await.served();
    f.get("/acme/v1", &a)
        .await
        .refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    f.get("/beta/v1", &b).await.served();
}

#[tokio::test]
async fn an_expired_write_is_refused_before_the_rate_is_charged() {
    let f = fixture().await;
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                rate_per_sec: nz(1),
                burst: nz(1),
                ..Default::default()
            },
        )
        .await;
    f.expire("acme").await;
    let post = req(Method::POST, "/acme/v1")
        .header("x-api-key", &key)
        .body(Full::default())
        .unwrap();
    f.send(post)
        .await
        .refused(StatusCode::FORBIDDEN, "SUBSCRIPTION_EXPIRED");
    f.get("/acme/v1", &key).await.served();
}

// Forwarding.

#[tokio::test]
async fn an_admitted_request_loses_its_key_and_org_segment_and_gains_x_org_id() {
    let f = fixture().await;
    let key = f.org("acme").await;
    let a = f
        .send(
            req(Method::POST, "/acme/v1/users?x=1&y=%2F")
                .header("x-api-key", &key)
                .header("x-org-id", "evil")
                .header("x-org-id", "evil2")
                .header("x-custom", "kept")
                .body(Full::from("payload"))
                .unwrap(),
        )
        .await;
    a.served();
    let seen = f.seen();
    let s = &seen[0];
    assert_eq!(s.method, Method::POST);
    assert_eq!(s.uri, "/v1/users?x=1&y=%2F");
    assert!(s.headers.get("x-api-key").is_none());
    assert_eq!(
        s.headers.get_all("x-org-id").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    assert_eq!(s.headers["x-custom"], "kept");
    assert_eq!(s.org.as_ref().map(OrgId::as_str), Some("acme"));
    assert_eq!(s.body, "payload");
}

#[tokio::test]
async fn with_the_org_extension_off_the_org_travels_in_x_org_id_only() {
    let config = GateConfig {
        org_extension: false,
        ..GateConfig::default()
    };
    let f = fixture_with(config, Limits::default()).await;
    let key = f.org("acme").await;
    f.get("/acme/v1", &key).await.served();
    let seen = f.seen();
    assert_eq!(seen[0].uri, "/v1");
    assert_eq!(seen[0].headers["x-org-id"], "acme");
    assert!(seen[0].headers.get("x-api-key").is_none());
    assert!(seen[0].org.is_none());
}

#[tokio::test]
async fn the_org_alone_becomes_the_root_path() {
    let f = fixture().await;
    let key = f.org("acme").await;
    f.get("/acme", &key).await.served();
    f.get("/acme?q=1", &key).await.served();
    let seen = f.seen();
    assert_eq!(seen[0].uri, "/");
    assert_eq!(seen[1].uri, "/?q=1");
}

/// Named in `x-org-id` itself, the org's header is forwarded as it came,
/// once, with the extension or without it; two of them name no org.
#[tokio::test]
async fn an_org_named_in_x_org_id_keeps_that_one_header() {
    for org_extension in [true, false] {
        let config = GateConfig {
            org_from: OrgSource::Header(HeaderName::from_static("x-org-id")),
            org_extension,
            ..GateConfig::default()
        };
        let f = fixture_with(config, Limits::default()).await;
        let key = f.org("acme").await;
        let sent = |orgs: &[&str]| {
            let mut r = req(Method::GET, "/v1?q=1").header("x-api-key", &key);
            for org in orgs {
                r = r.header("x-org-id", *org);
            }
            r.body(Full::default()).unwrap()
        };
        f.send(sent(&["acme"])).await.served();
        f.send(sent(&["acme", "acme"]))
            .await
            .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
        let seen = f.seen();
        assert_eq!(seen.len(), 1);
        let s = &seen[0];
        assert_eq!(s.uri, "/v1?q=1");
        assert!(s.headers.get("x-api-key").is_none());
        assert_eq!(
            s.headers.get_all("x-org-id").iter().collect::<Vec<_>>(),
            ["acme"]
        );
        let want = org_extension.then_some("acme");
        assert_eq!(s.org.as_ref().map(OrgId::as_str), want);
    }
}

/// A layer's config may name one header for both the key and the org
/// (keygate's own config refuses it): the value is then both, and the
/// request is forwarded without that header, with the org in `x-org-id`.
#[tokio::test]
async fn one_header_for_both_the_key_and_the_org_is_read_before_it_goes() {
    let both = HeaderName::from_static("x-both");
    let config = GateConfig {
        org_from: OrgSource::Header(both.clone()),
        key_header: both.clone(),
        ..GateConfig::default()
    };
    let f = fixture_with(config, Limits::default()).await;
    // An id that is also a well-formed key: 12 of a-z and 0-9.
    let id = "acme00000001";
    f.org(id).await;
    f.store.edit(id, id, Actor::Provider).await.unwrap();
    let sent = |value: &str| {
        req(Method::GET, "/v1")
            .header(&both, value)
            .body(Full::default())
            .unwrap()
    };
    f.send(sent(id)).await.served();
    f.send(sent("acme00000002"))
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get(&both).is_none());
    assert_eq!(
        seen[0]
            .headers
            .get_all("x-org-id")
            .iter()
            .collect::<Vec<_>>(),
        [id]
    );
    assert_eq!(seen[0].org.as_ref().map(OrgId::as_str), Some(id));
}

#[tokio::test]
async fn header_mode_reads_the_org_from_its_header_and_keeps_the_path() {
    let config = GateConfig {
        org_from: OrgSource::Header(HeaderName::from_static("x-tenant")),
        key_header: HeaderName::from_static("x-key"),
        ..GateConfig::default()
    };
    let f = fixture_with(config, Limits::default()).await;
    let key = f.org("acme").await;
    let ok = f
        .send(
            req(Method::GET, "/acme/v1")
                .header("x-key", &key)
                .header("x-tenant", "acme")
                .header("x-org-id", "evil")
                .body(Full::default())
                .unwrap(),
        )
        .await;
    ok.served();
    let s = &f.seen()[0];
    assert_eq!(s.uri, "/acme/v1");
    assert!(s.headers.get("x-key").is_none());
    assert_eq!(
        s.headers.get_all("x-org-id").iter().collect::<Vec<_>>(),
        ["acme"]
    );
    assert_eq!(s.org.as_ref().map(OrgId::as_str), Some("acme"));
    let no_org = f
        .send(
            req(Method::GET, "/v1")
                .header("x-key", &key)
                .body(Full::default())
                .unwrap(),
        )
        .await;
    no_org.refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    let default_header = f.get("/v1", &key).await;
    default_header.refused(StatusCode::UNAUTHORIZED, "MISSING_KEY");
}

#[tokio::test]
async fn a_key_change_takes_effect_for_the_next_request() {
    let f = fixture().await;
    let old = f.org("acme").await;
    f.get("/acme/v1", &old).await.served();
    let new = f
        .store
        .regenerate("acme", Actor::Provider)
        .await
        .unwrap()
        .state
        .key
        .unwrap();
    f.get("/acme/v1", &old)
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    f.get("/acme/v1", new.expose()).await.served();
    f.store
        .edit("acme", "Edited123456", Actor::Provider)
        .await
        .unwrap();
    f.get("/acme/v1", new.expose())
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
    f.get("/acme/v1", "Edited123456").await.served();
    f.store.delete("acme", Actor::Provider).await.unwrap();
    f.get("/acme/v1", "Edited123456")
        .await
        .refused(StatusCode::UNAUTHORIZED, "INVALID_KEY");
}

#[tokio::test]
async fn poll_ready_is_the_inner_services() {
    let f = fixture().await;
    let mut svc = f.svc.clone();
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
}

// Concurrency.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_concurrency_exactly_threshold_calls_reach_the_inner_service() {
    const THRESHOLD: u32 = 500;
    let f = Arc::new(fixture().await);
    let key = f
        .org_with(
            "acme",
            LimitOverrides {
                threshold_calls: nz(THRESHOLD),
                rate_per_sec: nz(10_000_000),
                burst: nz(10_000_000),
                ..Default::default()
            },
        )
        .await;
    let tasks: Vec<_> = (0..2 * THRESHOLD)
        .map(|_| {
            let f = f.clone();
            let key = key.clone();
            tokio::spawn(async move { f.get("/acme/v1", &key).await.status })
        })
        .collect();
    let mut ok = 0;
    let mut disabled = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::FORBIDDEN => disabled += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, THRESHOLD);
    assert_eq!(disabled, THRESHOLD);
    assert_eq!(f.seen().len(), THRESHOLD as usize);
    assert!(f.store.view("acme").unwrap().state.is_disabled());
    let auto = f
        .backend
        .all_audit()
        .iter()
        .filter(|e| e.actor == Actor::System)
        .count();
    assert_eq!(auto, 1, "the key is disabled exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_each_regenerate_returns_the_old_key_never_works_and_the_new_one_does() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROTATIONS: usize = 200;

    let f = Arc::new(fixture().await);
    let big = LimitOverrides {
        threshold_calls: nz(4_000_000_000),
        rate_per_sec: nz(10_000_000),
        burst: nz(10_000_000),
        ..Default::default()
    };
    let first = f.org_with("acme", big).await;
    // keys[i] is the key after i completed regenerates; `completed` is published
    // after the key it names, `started` before each regenerate begins.
    let keys = Arc::new(Mutex::new(vec![first]));
    let started = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    let hammers: Vec<_> = (0..3)
        .map(|i| {
            let (f, keys, started, completed, done) = (
                f.clone(),
                keys.clone(),
                started.clone(),
                completed.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let (mut fresh_ok, mut stale_refused) = (0u64, 0u64);
                let mut n = 0usize;
                while !done.load(Ordering::SeqCst) {
                    n += 1;
                    let c0 = completed.load(Ordering::SeqCst) as usize;
                    let (current, stale) = {
                        let k = keys.lock().unwrap();
                        let stale = (c0 > 0).then(|| k[(n + i) % c0].clone());
                        (k[c0].clone(), stale)
                    };
                    let a = f.get("/acme/v1", &current).await;
                    let s1 = started.load(Ordering::SeqCst) as usize;
                    if a.status == StatusCode::OK {
                        fresh_ok += 1;
                    } else {
                        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
                        assert!(
                            s1 > c0,
                            "the current key was refused with no regenerate under way"
                        );
                    }
                    if let Some(stale) = stale {
                        let a = f.get("/acme/v1", &stale).await;
                        assert_eq!(
                            a.status,
                            StatusCode::UNAUTHORIZED,
                            "a replaced key was accepted"
                        );
                        stale_refused += 1;
                    }
                    tokio::task::yield_now().await;
                }
                (fresh_ok, stale_refused)
            })
        })
        .collect();

    for _ in 0..ROTATIONS {
        started.fetch_add(1, Ordering::SeqCst);
        let v = f.store.regenerate("acme", Actor::Provider).await.unwrap();
        keys.lock()
            .unwrap()
            .push(v.state.key.unwrap().expose().to_owned());
        completed.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    done.store(true, Ordering::SeqCst);
    let (mut fresh, mut stale) = (0, 0);
    for h in hammers {
        let (a, b) = h.await.unwrap();
        fresh += a;
        stale += b;
    }
    assert!(
        fresh > 0 && stale > 0,
        "the race was exercised: {fresh} fresh, {stale} stale"
    );
    let last = keys.lock().unwrap().last().unwrap().clone();
    f.get("/acme/v1", &last).await.served();
}

fn nz(n: u32) -> Option<std::num::NonZeroU32> {
    std::num::NonZeroU32::new(n)
}
