//! The threshold count across restarts of the real binary: a graceful stop
//! saves every count, so the window resumes exactly; a `kill -9` loses at most
//! the calls counted since the last save (`store.count_flush_ms`).
//!
//! Each test runs `keygate serve --config` on `127.0.0.1:0` with a threshold
//! of 10 calls per hour, counts calls over real HTTP, restarts it over the same
//! store, and counts how many more calls pass before `KEY_DISABLED`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc};

const START_LIMIT: Duration = Duration::from_secs(20);
const EXIT_LIMIT: Duration = Duration::from_secs(15);
const REQUEST_LIMIT: Duration = Duration::from_secs(10);
/// How long a wait for the flusher's log line may take: many periods.
const FLUSH_LIMIT: Duration = Duration::from_secs(10);
const THRESHOLD: usize = 10;

/// The flusher's log line is at debug; everything else at info.
const LOG: &str = "info,keygate::store::counts=debug";

struct Gateway {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    async fn start(env: &Env) -> Gateway {
        let mut proc = Proc::spawn("keygate serve", serve_command(&env.config, LOG));
        let (proxy, admin) = proc.listening(START_LIMIT).await;
        Gateway {
            proc,
            proxy,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> (u16, Value) {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let res = self.client.request(req).await?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_LIMIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {REQUEST_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Provisions `acme` and returns its key.
    async fn provision(&self, env: &Env) -> String {
        let req = Request::post(format!("http://{}/v1/orgs", self.admin))
            .header("authorization", format!("Bearer {}", env.provider))
            .header("content-type", "application/json")
            .body(Full::from(json!({"org": "acme"}).to_string()))
            .unwrap();
        let (status, body) = self.send(req).await;
        assert_eq!(status, 201, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// One proxied call with acme's key: 200, or the refusal's status and code.
    async fn call(&self, key: &str) -> (u16, Option<String>) {
        let req = Request::get(format!("http://{}/acme/v1/hello", self.proxy))
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap();
        let (status, body) = self.send(req).await;
        (status, body["code"].as_str().map(str::to_owned))
    }

    /// Makes `n` calls, each of which must be forwarded.
    async fn calls_pass(&self, key: &str, n: usize) {
        for i in 0..n {
            assert_eq!(self.call(key).await, (200, None), "call {i}");
        }
    }

    /// Calls until one is refused, which must be `KEY_DISABLED`; returns how
    /// many passed first.
    async fn passes_before_disabled(&self, key: &str) -> usize {
        for passed in 0..=THRESHOLD {
            match self.call(key).await {
                (200, None) => continue,
                refused => {
                    assert_eq!(refused, (403, Some("KEY_DISABLED".to_owned())));
                    return passed;
                }
            }
        }
        panic!("more than the threshold of {THRESHOLD} calls passed in one window");
    }

    /// Waits for the flusher's line saying it saved a window of `calls` calls.
    async fn flushed(&self, calls: usize) {
        let deadline = Instant::now() + FLUSH_LIMIT;
        let wanted = format!("calls={calls}");
        while !self.proc.stderr().lines().any(|l| {
            l.contains("call counts persisted") && l.split_whitespace().any(|w| w == wanted)
        }) {
            assert!(
                Instant::now() < deadline,
                "no flush of {calls} calls within {FLUSH_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn terminate(mut self) {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(EXIT_LIMIT).await;
        assert!(status.success(), "{status}");
    }

    async fn kill9(mut self) {
        self.proc.kill9(EXIT_LIMIT).await;
    }
}

fn config(count_flush_ms: u64) -> String {
    // Appended inside `[store]`, then the limits.
    format!(
        "count_flush_ms = {count_flush_ms}\n\n\
         [limits]\nrate_per_sec = 10000\nburst = 10000\n\
         threshold_calls = {THRESHOLD}\nthreshold_window_secs = 3600\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_resumes_the_window_so_only_the_rest_of_the_threshold_passes() {
    // A period far longer than the test: only the stop saves.
    let env = Env::new(&config(3_600_000)).await;
    let gw = Gateway::start(&env).await;
    let key = gw.provision(&env).await;
    let n = 4;
    gw.calls_pass(&key, n).await;
    gw.terminate().await;

    let gw = Gateway::start(&env).await;
    assert_eq!(gw.passes_before_disabled(&key).await, THRESHOLD - n);
    // Disabled durably, as before the restart.
    gw.terminate().await;
    let gw = Gateway::start(&env).await;
    assert_eq!(gw.call(&key).await, (403, Some("KEY_DISABLED".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_loses_at_most_the_calls_counted_since_the_last_flush() {
    let env = Env::new(&config(20)).await;
    let gw = Gateway::start(&env).await;
    let key = gw.provision(&env).await;
    let saved = 6;
    gw.calls_pass(&key, saved).await;
    gw.flushed(saved).await;
    // Counted, and maybe not yet saved when the process dies.
    let unsaved = 2;
    gw.calls_pass(&key, unsaved).await;
    gw.kill9().await;

    let gw = Gateway::start(&env).await;
    let passed = gw.passes_before_disabled(&key).await;
    // Without the restart 2 more would pass; with it, at most the unsaved
    // calls again, and never fewer than the truth.
    let exact = THRESHOLD - saved - unsaved;
    assert!(
        (exact..=exact + unsaved).contains(&passed),
        "{passed} calls passed after the restart; expected {exact} to {}",
        exact + unsaved
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_before_any_flush_loses_exactly_the_calls_since_the_last_save() {
    // No periodic save during the test: the graceful stop is the last save,
    // so the kill loses every call counted after it, and no other.
    let env = Env::new(&config(3_600_000)).await;
    let gw = Gateway::start(&env).await;
    let key = gw.provision(&env).await;
    let saved = 3;
    gw.calls_pass(&key, saved).await;
    gw.terminate().await;

    let gw = Gateway::start(&env).await;
    gw.calls_pass(&key, 4).await;
    gw.kill9().await;

    let gw = Gateway::start(&env).await;
    assert_eq!(gw.passes_before_disabled(&key).await, THRESHOLD - saved);
}
