//! What a session login costs (issue 14): logins per second on one core
//! with the argon2id parameters keygate uses.
//!
//! Run it with `cargo bench --bench login` on a quiet machine (about 20 s
//! once built). Two criterion benchmarks:
//!
//! * `login/argon2id_verify`: one password check, through
//!   [`keygate::session::user::verify_password`] against a digest made by
//!   [`keygate::session::user::hash_password`]: the functions, and so the
//!   parameters (m = 19456 KiB, t = 2, p = 1), the server uses. Logins per
//!   second on one core are 1 / this time.
//! * `login/through_the_gate`: a whole successful login through the gate's
//!   session path (`POST /acme/api/v1/authenticatedSession` into
//!   [`KeyGate::with_sessions`]): the body parsed, the obfuscated key
//!   checked and counted, the replay reserved, the password verified on the
//!   password pool, the session made and the cookie set. On a
//!   current-thread runtime; the argon2 work runs on one blocking thread at
//!   a time, so one core is busy at once. The difference to the first is
//!   what the gate adds to argon2.
//!
//! Besides criterion's report it prints `keygate-bench: name=value` lines
//! (`logins_per_sec_one_core`, from a plain loop of verifies), so
//! `cargo bench --bench login | grep keygate-bench:` is the summary. Without
//! `--bench` (`cargo test --all-targets`) each runs once, as a smoke test.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceExt};

use keygate::clock::{Clock, SystemClock};
use keygate::gate::{GateConfig, KeyGate};
use keygate::org::{limits_max, Actor, LimitOverrides, Limits, OrgId};
use keygate::session::user::{hash_password, verify_password};
use keygate::session::SessionConfig;
use keygate::store::Store;

const PASSWORD: &str = "correct horse battery staple";
const USER: &str = "ops@acme.example";
const LOGIN: &str = "/acme/api/v1/authenticatedSession";

/// Verifies in the plain loop that gives `logins_per_sec_one_core`.
const LOOP_N: u32 = 10;

/// Limits no login of the bench reaches: only the login's own work is timed.
fn generous() -> Limits {
    Limits {
        rate_per_sec: limits_max::RATE_PER_SEC,
        burst: limits_max::BURST,
        threshold_calls: limits_max::THRESHOLD_CALLS,
        threshold_window_secs: 3600,
    }
}

type Upstream = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<Full<Bytes>>,
    std::convert::Infallible,
>;

/// A gate with sessions on, over a store holding `acme` and its API user;
/// the org's key.
async fn gate() -> (KeyGate<Upstream>, String) {
    let store = Store::in_memory(Arc::new(SystemClock::new()), generous()).await;
    let view = store
        .provision(
            OrgId::parse("acme").expect("valid id"),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .expect("provision");
    store
        .create_user("acme", USER, PASSWORD.into(), Actor::Provider)
        .await
        .expect("an API user");
    let key = view.state.key.expect("a key").expose().to_owned();
    // Never reached: the gate answers the login path itself.
    let upstream = Upstream::new(tower::service_fn(|_req| async {
        Ok(Response::new(Full::default()))
    }));
    let gate = KeyGate::with_sessions(
        upstream,
        store,
        GateConfig::default(),
        SessionConfig::default(),
    );
    (gate, key)
}

/// A login body for `key` at a timestamp no earlier login used (a replay
/// would be refused).
fn login_request(key: &str, last: &AtomicU64) -> Request<Full<Bytes>> {
    let now = SystemClock::new().now().as_nanos() / 1_000_000;
    let ts = now.max(last.load(Ordering::Relaxed) + 1);
    last.store(ts, Ordering::Relaxed);
    let k: [u8; 12] = key.as_bytes().try_into().expect("a 12-character key");
    let api_key = keygate::session::obfuscate::obfuscate(&k, ts);
    let body = serde_json::json!({
        "apiKey": std::str::from_utf8(&api_key).expect("ASCII"),
        "username": USER,
        "password": PASSWORD,
        "timestamp": ts,
    });
    Request::post(LOGIN)
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()))
        .expect("a request")
}

fn main() {
    let digest = hash_password(PASSWORD).expect("a digest");
    assert!(verify_password(PASSWORD, &digest));

    let start = Instant::now();
    for _ in 0..LOOP_N {
        assert!(verify_password(black_box(PASSWORD), black_box(&digest)));
    }
    let per = start.elapsed() / LOOP_N;
    println!(
        "keygate-bench: argon2id_verify_ms={:.2}",
        per.as_secs_f64() * 1e3
    );
    println!(
        "keygate-bench: logins_per_sec_one_core={:.1}",
        1.0 / per.as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .expect("runtime");
    let (gate, key) = rt.block_on(gate());
    let last = AtomicU64::new(0);

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("login");
    // Each sample is many milliseconds: criterion's 100 would take minutes.
    g.sample_size(10);
    g.bench_function("argon2id_verify", |b| {
        b.iter(|| assert!(verify_password(black_box(PASSWORD), black_box(&digest))))
    });
    g.bench_function("through_the_gate", |b| {
        b.to_async(&rt).iter(|| async {
            let mut svc = gate.clone();
            let req = login_request(&key, &last);
            let res = svc
                .ready()
                .await
                .expect("ready")
                .call(req)
                .await
                .expect("infallible");
            assert_eq!(res.status(), StatusCode::OK);
            assert!(res.headers().contains_key("set-cookie"));
        })
    });
    g.finish();
    c.final_summary();
}
