//! ZIA-compatible session login (contract section 8), through the tower
//! layer: login and every failure, replay, idle and absolute expiry with the
//! test clock, every event that kills a session, on one node and across two
//! nodes sharing one backend.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use keygate::clock::{ManualClock, Timestamp};
use keygate::gate::{GateConfig, KeyGate};
use keygate::org::{Actor, LimitOverrides, Limits, OrgId};
use keygate::session::SessionConfig;
use keygate::store::{MemoryBackend, Store};
use tower::{Service, ServiceExt};

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
const USER: &str = "ops@acme.example";
const PASSWORD: &str = "correct horse battery";
const LOGIN: &str = "/acme/api/v1/authenticatedSession";

type Upstream =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

#[derive(Clone)]
struct Node {
    svc: KeyGate<Upstream>,
    store: Store,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
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

    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    fn cookie(&self) -> String {
        let set = self.headers["set-cookie"].to_str().unwrap();
        // The vendor's clients' pattern: JSESSIONID=(.*?);
        let v = set.strip_prefix("JSESSIONID=").unwrap();
        let end = v.find(';').expect("the value is followed by ';'");
        v[..end].to_owned()
    }
}

fn upstream(seen: Arc<Mutex<Vec<HeaderMap>>>) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: Request<Full<Bytes>>| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(req.headers().clone());
            Ok(Response::new(Full::from("upstream")))
        }
    }))
}

fn config() -> SessionConfig {
    SessionConfig::default()
}

async fn node(backend: Arc<MemoryBackend>, clock: Arc<ManualClock>, limits: Limits) -> Node {
    let store = Store::open(backend, clock, limits).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let svc = KeyGate::with_sessions(
        upstream(seen.clone()),
        store.clone(),
        GateConfig::default(),
        config(),
    );
    Node { svc, store, seen }
}

/// One node with org `acme` and its API user.
async fn single() -> (Node, Arc<ManualClock>) {
    single_with(Limits::default()).await
}

async fn single_with(limits: Limits) -> (Node, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let n = node(Arc::new(MemoryBackend::new()), clock.clone(), limits).await;
    provision(&n.store).await;
    (n, clock)
}

async fn provision(store: &Store) {
    store
        .provision(
            OrgId::parse("acme").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    store
        .create_user("acme", USER, PASSWORD.into(), Actor::Provider)
        .await
        .unwrap();
}

fn key(store: &Store) -> String {
    store
        .view("acme")
        .unwrap()
        .state
        .key
        .unwrap()
        .expose()
        .to_owned()
}

/// The vendor's obfuscation, as its clients compute it (see the unit tests
/// for the hand-worked vectors).
fn obfuscated(key: &str, ts: u64) -> String {
    let k: [u8; 12] = key.as_bytes().try_into().unwrap();
    String::from_utf8(keygate::session::obfuscate::obfuscate(&k, ts).to_vec()).unwrap()
}

fn now_ms(clock: &ManualClock) -> u64 {
    use keygate::clock::Clock;
    clock.now().as_nanos() / 1_000_000
}

async fn send(n: &Node, req: Request<Full<Bytes>>) -> Answer {
    let mut svc = n.svc.clone();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn login_request(body: serde_json::Value) -> Request<Full<Bytes>> {
    Request::post(LOGIN)
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()))
        .unwrap()
}

async fn login_at(n: &Node, ts: u64, user: &str, password: &str) -> Answer {
    let body = serde_json::json!({
        "apiKey": obfuscated(&key(&n.store), ts),
        "username": user,
        "password": password,
        "timestamp": ts,
    });
    send(n, login_request(body)).await
}

async fn login(n: &Node, clock: &ManualClock) -> String {
    let a = login_at(n, now_ms(clock), USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    a.cookie()
}

fn with_cookie(method: Method, path: &str, cookie: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(
            "cookie",
            format!("theme=dark; JSESSIONID={cookie}; lang=en"),
        )
        .body(Full::default())
        .unwrap()
}

async fn call(n: &Node, cookie: &str) -> Answer {
    send(n, with_cookie(Method::GET, "/acme/v1/users", cookie)).await
}

async fn check(n: &Node, cookie: &str) -> Answer {
    send(n, with_cookie(Method::GET, LOGIN, cookie)).await
}

fn assert_dead(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert_eq!(a.code(), "SESSION_NOT_VALID");
}

fn assert_bad_login(a: &Answer) {
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{:?}", a.body);
    assert_eq!(a.code(), "INVALID_USERNAME_OR_PASSWORD");
    assert!(a.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn a_login_answers_the_vendors_body_and_a_cookie_followed_by_a_semicolon() {
    let (n, clock) = single().await;
    let a = login_at(&n, now_ms(&clock), USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json(),
        serde_json::json!({"authType": "ADMIN_LOGIN", "obfuscateApiKey": true,
            "passwordExpiryTime": 0, "passwordExpiryDays": 0})
    );
    let set = a.headers["set-cookie"].to_str().unwrap();
    assert!(set.ends_with("; Path=/; HttpOnly"), "{set}");
    assert!(a.cookie().len() >= 32, "128 bits at least");
}

#[tokio::test]
async fn the_timestamp_may_be_a_string() {
    let (n, clock) = single().await;
    let ts = now_ms(&clock);
    let body = serde_json::json!({
        "apiKey": obfuscated(&key(&n.store), ts),
        "username": USER, "password": PASSWORD, "timestamp": ts.to_string(),
    });
    assert_eq!(send(&n, login_request(body)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_session_call_is_forwarded_without_its_cookie_and_with_the_org() {
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    let a = call(&n, &cookie).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, "upstream");
    let seen = n.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen["x-org-id"], "acme");
    assert_eq!(seen["cookie"], "theme=dark; lang=en");
    let a = check(&n, &cookie).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["authType"], "ADMIN_LOGIN");
}

#[tokio::test]
async fn every_wrong_part_of_a_login_is_the_same_401() {
    let (n, clock) = single().await;
    let ts = now_ms(&clock);
    let k = key(&n.store);
    let good = serde_json::json!({"apiKey": obfuscated(&k, ts), "username": USER,
        "password": PASSWORD, "timestamp": ts});
    let mut cases = Vec::new();
    let mut v = good.clone();
    v["password"] = "wrong horse battery".into();
    cases.push(("wrong password", v));
    let mut v = good.clone();
    v["username"] = "nobody@acme.example".into();
    cases.push(("unknown user", v));
    let mut v = good.clone();
    v["apiKey"] = k.clone().into();
    cases.push(("the plain key", v));
    // The next timestamp whose obfuscation differs from `ts`'s: two can give
    // the same one (where their digits differ, the key may repeat a
    // character), and then the gateway cannot tell them apart, rightly.
    let other = (ts + 1..)
        .find(|t| obfuscated(&k, *t) != obfuscated(&k, ts))
        .unwrap();
    let mut v = good.clone();
    v["timestamp"] = other.into();
    cases.push(("another timestamp than the obfuscation's", v));
    let far = ts - 301_000;
    let mut v = good.clone();
    v["timestamp"] = far.into();
    v["apiKey"] = obfuscated(&k, far).into();
    cases.push(("a timestamp outside the window", v));
    let mut v = good.clone();
    v["timestamp"] = "12ab".into();
    cases.push(("a timestamp that is no number", v));
    let mut v = good.clone();
    v.as_object_mut().unwrap().remove("password");
    cases.push(("no password", v));
    for (why, body) in cases {
        let a = send(&n, login_request(body)).await;
        assert_bad_login(&a);
        let _ = why;
    }
    let a = send(
        &n,
        Request::post("/globex/api/v1/authenticatedSession")
            .body(Full::from(good.to_string()))
            .unwrap(),
    )
    .await;
    assert_bad_login(&a);
    let a = send(
        &n,
        Request::post(LOGIN).body(Full::from("not json")).unwrap(),
    )
    .await;
    assert_bad_login(&a);
}

#[tokio::test]
async fn a_replayed_login_is_refused() {
    let (n, clock) = single().await;
    let ts = now_ms(&clock);
    assert_eq!(
        login_at(&n, ts, USER, PASSWORD).await.status,
        StatusCode::OK
    );
    assert_bad_login(&login_at(&n, ts, USER, PASSWORD).await);
    assert_eq!(
        login_at(&n, ts + 1, USER, PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn five_failed_logins_of_a_user_answer_429_with_retry_after_in_the_vendors_shape() {
    let (n, clock) = single().await;
    let ts = now_ms(&clock);
    for i in 0..5 {
        assert_bad_login(&login_at(&n, ts + i, USER, "wrong horse battery").await);
    }
    let a = login_at(&n, ts + 10, USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.headers["retry-after"], "60");
    assert_eq!(a.json()["Retry-After"], "60 seconds");
    clock.advance(Duration::from_secs(60));
    let a = login_at(&n, now_ms(&clock), USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::OK, "the window ended");
}

#[tokio::test]
async fn a_session_dies_after_the_idle_timeout_and_lives_while_used() {
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(299));
        assert_eq!(call(&n, &cookie).await.status, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(301));
    assert_dead(&call(&n, &cookie).await);
    assert_dead(&check(&n, &cookie).await);
}

#[tokio::test]
async fn a_session_dies_at_its_maximum_age_however_busy() {
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    for _ in 0..(43_200 / 250) {
        clock.advance(Duration::from_secs(250));
        assert_eq!(check(&n, &cookie).await.status, StatusCode::OK);
    }
    clock.advance(Duration::from_secs(250));
    assert_dead(&check(&n, &cookie).await);
}

#[tokio::test]
async fn logout_ends_the_session() {
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    let a = send(&n, with_cookie(Method::DELETE, LOGIN, &cookie)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json(), serde_json::json!({"status": "ACTIVE"}));
    assert_dead(&call(&n, &cookie).await);
    assert_dead(&send(&n, with_cookie(Method::DELETE, LOGIN, &cookie)).await);
}

#[tokio::test]
async fn a_foreign_or_made_up_session_is_not_valid_and_no_cookie_is_a_missing_key() {
    let (n, clock) = single().await;
    n.store
        .provision(
            OrgId::parse("globex").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    let cookie = login(&n, &clock).await;
    assert_dead(&send(&n, with_cookie(Method::GET, "/globex/v1/users", &cookie)).await);
    assert_dead(&call(&n, &"0".repeat(64)).await);
    let a = send(
        &n,
        Request::get("/acme/v1/users")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.code(), "MISSING_KEY");
    // The acme session still works.
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK);
}

/// Kills a session with `kill`, then checks it is dead (and a fresh login,
/// where one is possible, works).
async fn dies_on<F, Fut>(kill: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK);
    kill(n.store.clone()).await;
    assert_dead(&call(&n, &cookie).await);
    assert_dead(&check(&n, &cookie).await);
}

#[tokio::test]
async fn a_key_edit_regenerate_delete_or_disable_kills_the_session() {
    dies_on(|s| async move {
        s.edit("acme", "Zz9yXx8wVv7u", Actor::Provider)
            .await
            .unwrap();
    })
    .await;
    dies_on(|s| async move {
        s.regenerate("acme", Actor::Provider).await.unwrap();
    })
    .await;
    dies_on(|s| async move {
        s.delete("acme", Actor::Provider).await.unwrap();
    })
    .await;
    dies_on(|s| async move {
        s.disable("acme", "test", Actor::Provider).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_disabled_then_enabled_key_does_not_bring_the_session_back() {
    let (n, clock) = single().await;
    let cookie = login(&n, &clock).await;
    n.store
        .disable("acme", "test", Actor::Provider)
        .await
        .unwrap();
    n.store.enable("acme", Actor::Provider).await.unwrap();
    assert_dead(&call(&n, &cookie).await);
}

#[tokio::test]
async fn deleting_the_user_or_the_org_kills_the_session() {
    dies_on(|s| async move {
        s.delete_user("acme", USER, Actor::Provider).await.unwrap();
    })
    .await;
    dies_on(|s| async move {
        s.delete_org("acme", Actor::Provider).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_login_on_a_disabled_key_is_403_and_on_an_expired_subscription_works() {
    let (n, clock) = single().await;
    n.store
        .set_subscription("acme", Some(Timestamp::from_secs(1)), Actor::Provider)
        .await
        .unwrap();
    let cookie = login(&n, &clock).await;
    // Reads still work; writes are refused as for keyed calls.
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK);
    let a = send(&n, with_cookie(Method::POST, "/acme/v1/users", &cookie)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "SUBSCRIPTION_EXPIRED");
    n.store
        .disable("acme", "test", Actor::Provider)
        .await
        .unwrap();
    let a = login_at(&n, now_ms(&clock) + 1, USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "KEY_DISABLED");
}

#[tokio::test]
async fn logins_and_session_calls_count_toward_the_threshold() {
    let limits = Limits {
        threshold_calls: 3,
        ..Limits::default()
    };
    let (n, clock) = single_with(limits).await;
    let cookie = login(&n, &clock).await; // 1
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK); // 2
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK); // 3
    let a = call(&n, &cookie).await; // 4: past it
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "KEY_DISABLED");
    assert!(n.store.view("acme").unwrap().state.is_disabled());
    assert_dead(&call(&n, &cookie).await);
}

#[tokio::test]
async fn a_rate_limited_session_call_carries_retry_after_in_the_body_too() {
    let limits = Limits {
        rate_per_sec: 1,
        burst: 2,
        ..Limits::default()
    };
    let (n, clock) = single_with(limits).await;
    let cookie = login(&n, &clock).await; // takes one of the burst
    assert_eq!(call(&n, &cookie).await.status, StatusCode::OK);
    let a = call(&n, &cookie).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.code(), "RATE_LIMITED");
    let after = a.headers["retry-after"].to_str().unwrap().to_owned();
    assert_eq!(a.json()["Retry-After"], format!("{after} seconds"));
    assert!(a.headers.contains_key("x-ratelimit-limit"));
}

#[tokio::test]
async fn keyed_calls_work_as_before_with_sessions_on() {
    let (n, _clock) = single().await;
    let req = Request::get("/acme/v1/users")
        .header("x-api-key", key(&n.store))
        .header("cookie", "JSESSIONID=whatever")
        .body(Full::default())
        .unwrap();
    let a = send(&n, req).await;
    assert_eq!(a.status, StatusCode::OK);
}

/// Two nodes over one shared backend: a login on one is good on the other,
/// and every event that kills a session kills it on both, before its answer.
async fn pair() -> (Node, Node, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemoryBackend::shared());
    let a = node(backend.clone(), clock.clone(), Limits::default()).await;
    let b = node(backend, clock.clone(), Limits::default()).await;
    provision(&a.store).await;
    (a, b, clock)
}

#[tokio::test]
async fn a_login_through_one_node_calls_through_the_other() {
    let (a, b, clock) = pair().await;
    let cookie = login(&a, &clock).await;
    assert_eq!(call(&b, &cookie).await.status, StatusCode::OK);
    assert_eq!(check(&b, &cookie).await.status, StatusCode::OK);
    // A replay on the other node is refused too.
    let ts = now_ms(&clock);
    assert_eq!(
        login_at(&a, ts + 5, USER, PASSWORD).await.status,
        StatusCode::OK
    );
    assert_bad_login(&login_at(&b, ts + 5, USER, PASSWORD).await);
}

#[tokio::test]
async fn failed_logins_are_counted_for_the_cluster_not_per_node() {
    let (a, b, clock) = pair().await;
    let ts = now_ms(&clock);
    // Three failures on one node and two on the other: five for the user.
    for (i, n) in [&a, &a, &a, &b, &b].into_iter().enumerate() {
        assert_bad_login(&login_at(n, ts + i as u64, USER, "wrong horse battery").await);
    }
    for n in [&a, &b] {
        let locked = login_at(n, ts + 10, USER, PASSWORD).await;
        assert_eq!(locked.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(locked.headers["retry-after"], "60");
    }
    // Thirty for the org, spread over both nodes and many usernames.
    for i in 0..25u64 {
        let n = if i % 2 == 0 { &a } else { &b };
        assert_bad_login(&login_at(n, ts + 20 + i, &format!("u{i}"), "wrong horse battery").await);
    }
    clock.advance(Duration::from_secs(10));
    for n in [&a, &b] {
        let locked = login_at(n, now_ms(&clock), "someone-else", PASSWORD).await;
        assert_eq!(
            locked.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the org's limit"
        );
        assert_eq!(locked.headers["retry-after"], "50");
    }
    clock.advance(Duration::from_secs(50));
    let a_ok = login_at(&b, now_ms(&clock), USER, PASSWORD).await;
    assert_eq!(a_ok.status, StatusCode::OK, "the window ended");
}

#[tokio::test]
async fn a_logout_on_one_node_ends_the_session_on_the_other() {
    let (a, b, clock) = pair().await;
    let cookie = login(&a, &clock).await;
    assert_eq!(call(&b, &cookie).await.status, StatusCode::OK);
    let out = send(&b, with_cookie(Method::DELETE, LOGIN, &cookie)).await;
    assert_eq!(out.status, StatusCode::OK);
    assert_dead(&call(&a, &cookie).await);
}

async fn dies_on_both<F, Fut>(kill: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (a, b, clock) = pair().await;
    let cookie = login(&a, &clock).await;
    assert_eq!(call(&b, &cookie).await.status, StatusCode::OK);
    // The change is made on the node the client does not call.
    kill(a.store.clone()).await;
    assert_dead(&call(&b, &cookie).await);
    assert_dead(&call(&a, &cookie).await);
}

#[tokio::test]
async fn every_killing_event_on_one_node_kills_the_session_on_the_other() {
    dies_on_both(|s| async move {
        s.regenerate("acme", Actor::Provider).await.unwrap();
    })
    .await;
    dies_on_both(|s| async move {
        s.edit("acme", "Zz9yXx8wVv7u", Actor::Provider)
            .await
            .unwrap();
    })
    .await;
    dies_on_both(|s| async move {
        s.delete("acme", Actor::Provider).await.unwrap();
    })
    .await;
    dies_on_both(|s| async move {
        s.disable("acme", "test", Actor::Provider).await.unwrap();
    })
    .await;
    dies_on_both(|s| async move {
        s.delete_user("acme", USER, Actor::Provider).await.unwrap();
    })
    .await;
    dies_on_both(|s| async move {
        s.delete_org("acme", Actor::Provider).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_session_used_only_on_one_node_is_not_idle_on_the_other() {
    let (a, b, clock) = pair().await;
    let cookie = login(&a, &clock).await;
    for _ in 0..3 {
        clock.advance(Duration::from_secs(200));
        assert_eq!(call(&a, &cookie).await.status, StatusCode::OK);
    }
    // What the once-a-second task does.
    a.store.tell_session_uses().await.unwrap();
    clock.advance(Duration::from_secs(200));
    // 800 s after the login, 200 s after the last use (on node A).
    assert_eq!(call(&b, &cookie).await.status, StatusCode::OK);
    assert_eq!(check(&b, &cookie).await.status, StatusCode::OK);
    b.store.tell_session_uses().await.unwrap();
    clock.advance(Duration::from_secs(301));
    assert_dead(&call(&a, &cookie).await);
    assert_dead(&call(&b, &cookie).await);
}

#[tokio::test]
async fn a_node_that_starts_after_a_disable_and_an_enable_does_not_bring_the_session_back() {
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemoryBackend::shared());
    let a = node(backend.clone(), clock.clone(), Limits::default()).await;
    provision(&a.store).await;
    let cookie = login(&a, &clock).await;
    a.store
        .disable("acme", "test", Actor::Provider)
        .await
        .unwrap();
    a.store.enable("acme", Actor::Provider).await.unwrap();
    // The shared store forgets the ended session in the background.
    use keygate::store::Backend;
    for _ in 0..1000 {
        if backend.sessions().await.unwrap().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(backend.sessions().await.unwrap().is_empty());
    let c = node(backend, clock.clone(), Limits::default()).await;
    assert_dead(&call(&c, &cookie).await);
    assert_dead(&call(&a, &cookie).await);
}
