//! keygate as a process: what survives a graceful restart and a `kill -9`, how it
//! refuses a corrupt store and an invalid config, and what its logs never say.
//!
//! Every test runs the real binary (`keygate serve --config`) on `127.0.0.1:0`
//! listeners, learns the ports from its `keygate listening` log line, and talks
//! to it over real HTTP. The child is killed when its guard drops, also when a
//! test fails; every wait polls with a deadline.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde_json::{json, Value};
use tempfile::TempDir;

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc, PUBLIC_URL};

/// From spawn to the `keygate listening` line (a repair after kill -9 included).
const START_LIMIT: Duration = Duration::from_secs(20);
/// From SIGTERM to exit: the contract's 10 s drain limit, and some slack.
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// One HTTP exchange.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// keygate serving, and HTTP to it
// ---------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `keygate serve`, listening.
struct Gateway {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// One client per process: a pooled connection never outlives its server.
    client: HttpClient,
}

impl Gateway {
    /// Starts `keygate serve --config config` with `KEYGATE_LOG=log` and waits
    /// for its `keygate listening` line.
    async fn start(config: &Path, log: &str) -> Gateway {
        let mut proc = Proc::spawn("keygate serve", serve_command(config, log));
        let (proxy, admin) = proc.listening(START_LIMIT).await;
        Gateway {
            proxy,
            admin,
            proc,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// SIGTERM, then the exit status (bounded) and everything written to stderr.
    async fn terminate(mut self) -> (ExitStatus, String) {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(EXIT_LIMIT).await;
        (status, self.proc.stderr())
    }

    /// SIGKILL, right now.
    async fn kill9(mut self) {
        self.proc.kill9(EXIT_LIMIT).await;
    }

    /// An admin call, with the provider's or another bearer token.
    async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| ("authorization", a))
            .into_iter()
            .collect();
        let url = format!("http://{}{path}", self.admin);
        send(&self.client, method, &url, &headers, body).await
    }

    /// A proxied call, with or without a key.
    async fn proxy(&self, method: Method, path: &str, key: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let url = format!("http://{}{path}", self.proxy);
        send(&self.client, method, &url, &headers, None).await
    }
}

/// One HTTP answer, read whole.
struct Answer {
    what: String,
    status: StatusCode,
    body: Bytes,
}

impl Answer {
    /// Asserts the status, showing the body when it differs.
    fn expect(self, status: u16) -> Answer {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: {}",
            self.what,
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{}: not JSON ({e}): {}",
                self.what,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The contract's error code, if the body is a refusal.
    fn code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("code")?
            .as_str()
            .map(str::to_owned)
    }

    /// Status and code, as a test compares them.
    fn outcome(&self) -> Outcome {
        (self.status.as_u16(), self.code())
    }

    /// The `key` of a KeyView.
    fn key(&self) -> String {
        self.json()["key"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no key in {}", self.what, self.json()))
            .to_owned()
    }
}

async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    let what = format!("{method} {url}");
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        Some(v) => {
            req = req.header("content-type", "application/json");
            Full::from(v.to_string())
        }
        None => Full::default(),
    };
    let req = req.body(body).expect("a valid request");
    let exchange = async {
        let res = client.request(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    };
    let (status, body) = tokio::time::timeout(REQUEST_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {REQUEST_LIMIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    Answer { what, status, body }
}

// ---------------------------------------------------------------------------
// A test's world: a folder, an echo upstream, a config, a provider token
// ---------------------------------------------------------------------------

impl Env {
    async fn start(&self) -> Gateway {
        Gateway::start(&self.config, "info").await
    }
}

/// 12 random characters of A-Z a-z 0-9: a well-formed key nobody was given.
fn random_key() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}

fn actions(audit: &Value) -> Vec<(String, String)> {
    audit["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(actor: &str, action: &str) -> (String, String) {
    (actor.to_owned(), action.to_owned())
}

/// Status and contract code of an answer.
type Outcome = (u16, Option<String>);

fn refused(status: u16, code: &str) -> Outcome {
    (status, Some(code.to_owned()))
}

const OK: Outcome = (200, None);

// ---------------------------------------------------------------------------
// 1. A graceful restart keeps everything
// ---------------------------------------------------------------------------

/// The secrets of the restart scenario.
struct World {
    provider: String,
    acme_admin: String,
    acme_viewer: String,
    deleted_viewer: String,
    /// acme's keys, oldest first; the last is current.
    acme_keys: Vec<String>,
    globex_key: String,
    initech_key: String,
}

/// Everything the restart must keep, each item named.
async fn observe(gw: &Gateway, w: &World) -> Vec<(String, Value)> {
    let p = Some(w.provider.as_str());
    let mut seen = Vec::new();
    let all = gw.admin(Method::GET, "/v1/orgs", p, None).await.expect(200);
    seen.push(("GET /v1/orgs (provider)".to_owned(), all.json()));
    for org in ["acme", "globex", "initech"] {
        let page = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(200);
        seen.push((format!("{org} key page (provider)"), page.json()));
        let audit = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/audit"), p, None)
            .await
            .expect(200);
        seen.push((format!("{org} audit"), audit.json()));
    }
    for (name, token) in [
        ("admin", &w.acme_admin),
        ("viewer", &w.acme_viewer),
        ("deleted viewer", &w.deleted_viewer),
    ] {
        let a = gw
            .admin(Method::GET, "/v1/orgs/acme/key", Some(token), None)
            .await;
        seen.push((
            format!("acme key page ({name} token)"),
            json!({"status": a.status.as_u16(), "body": a.json()}),
        ));
    }
    let foreign = gw
        .admin(
            Method::POST,
            "/v1/orgs/globex/key/regenerate",
            Some(&w.acme_admin),
            None,
        )
        .await;
    seen.push((
        "acme admin regenerates globex".to_owned(),
        json!(foreign.outcome()),
    ));

    let current = w.acme_keys.last().unwrap();
    let probes: Vec<(&str, Method, &str, Option<&str>)> = vec![
        (
            "acme, current key",
            Method::GET,
            "/acme/v1/hello?x=1",
            Some(current),
        ),
        (
            "acme, current key, POST",
            Method::POST,
            "/acme/v1/things",
            Some(current),
        ),
        (
            "acme, provisioned key",
            Method::GET,
            "/acme/v1/hello",
            Some(&w.acme_keys[0]),
        ),
        (
            "acme, regenerated key",
            Method::GET,
            "/acme/v1/hello",
            Some(&w.acme_keys[1]),
        ),
        ("acme, no key", Method::GET, "/acme/v1/hello", None),
        (
            "unknown org, acme's key",
            Method::GET,
            "/hooli/v1/hello",
            Some(current),
        ),
        (
            "globex (expired), GET",
            Method::GET,
            "/globex/v1/hello",
            Some(&w.globex_key),
        ),
        (
            "globex (expired), POST",
            Method::POST,
            "/globex/v1/hello",
            Some(&w.globex_key),
        ),
        (
            "initech (disabled), GET",
            Method::GET,
            "/initech/v1/hello",
            Some(&w.initech_key),
        ),
    ];
    for (name, method, path, key) in probes {
        let a = gw.proxy(method, path, key).await;
        let mut v = json!({"status": a.status.as_u16(), "code": a.code()});
        if a.status == StatusCode::OK {
            let echo = a.json();
            v["upstream_uri"] = echo["uri"].clone();
            v["upstream_org"] = echo["headers"]["x-org-id"].clone();
            v["upstream_saw_key"] = json!(echo["headers"].get("x-api-key").is_some());
        }
        seen.push((format!("proxy: {name}"), v));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_keeps_every_key_page_audit_log_token_and_proxy_answer() {
    let env = Env::new("").await;
    let gw = env.start().await;
    let p = Some(env.provider.as_str());

    let mut acme_keys = Vec::new();
    let provision = |org: &'static str| {
        let gw = &gw;
        async move {
            gw.admin(Method::POST, "/v1/orgs", p, Some(json!({ "org": org })))
                .await
                .expect(201)
                .key()
        }
    };
    acme_keys.push(provision("acme").await);
    let globex_key = provision("globex").await;
    let initech_key = provision("initech").await;

    // acme: rotated by the provider, then by its admin.
    let regenerated = gw
        .admin(Method::POST, "/v1/orgs/acme/key/regenerate", p, None)
        .await
        .expect(200)
        .key();
    acme_keys.push(regenerated);
    let token = |name: &'static str, role: &'static str| {
        let gw = &gw;
        async move {
            let body = json!({"name": name, "role": role, "org": "acme"});
            let t = gw
                .admin(Method::POST, "/v1/tokens", p, Some(body))
                .await
                .expect(201);
            t.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let acme_admin = token("acme-admin", "admin").await;
    let acme_viewer = token("acme-viewer", "viewer").await;
    let deleted_viewer = token("acme-viewer-2", "viewer").await;
    gw.admin(Method::DELETE, "/v1/tokens/acme-viewer-2", p, None)
        .await
        .expect(204);
    let chosen = random_key();
    let edited = gw
        .admin(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&acme_admin),
            Some(json!({ "key": chosen })),
        )
        .await
        .expect(200);
    assert_eq!(edited.key(), chosen);
    acme_keys.push(chosen);

    // globex: its subscription ended.
    let expired = gw
        .admin(
            Method::PUT,
            "/v1/orgs/globex/subscription",
            p,
            Some(json!({"expires_at": "2020-01-01T00:00:00Z"})),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(expired["subscription_expired"], json!(true));

    // initech: past a threshold of 3, the 4th call disables its key.
    gw.admin(
        Method::PUT,
        "/v1/orgs/initech/limits",
        p,
        Some(json!({"threshold_calls": 3})),
    )
    .await
    .expect(200);
    for _ in 0..3 {
        gw.proxy(Method::GET, "/initech/v1/hello", Some(&initech_key))
            .await
            .expect(200);
    }
    let fourth = gw
        .proxy(Method::GET, "/initech/v1/hello", Some(&initech_key))
        .await;
    assert_eq!(fourth.outcome(), refused(403, "KEY_DISABLED"));

    let world = World {
        provider: env.provider.clone(),
        acme_admin,
        acme_viewer,
        deleted_viewer,
        acme_keys,
        globex_key,
        initech_key,
    };
    let before = observe(&gw, &world).await;

    // What the first run shows is right, not merely repeated.
    let find = |name: &str| -> &Value {
        &before
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    };
    let initech = find("initech key page (provider)");
    assert_eq!(initech["status"], "disabled");
    assert_eq!(initech["disabled_reason"], "call threshold exceeded");
    assert_eq!(initech["last_modified_by"], "system");
    assert_eq!(
        find("acme key page (provider)")["key"],
        json!(world.acme_keys[2])
    );
    assert_eq!(
        find("acme key page (provider)")["last_modified_by"],
        "acme-admin"
    );
    assert_eq!(
        find("acme key page (provider)")["base_url"],
        format!("{PUBLIC_URL}/acme")
    );
    assert_eq!(
        actions(find("acme audit")),
        [
            pair("provider", "provision"),
            pair("provider", "regenerate_key"),
            pair("provider", "create_token"),
            pair("provider", "create_token"),
            pair("provider", "create_token"),
            pair("provider", "delete_token"),
            pair("acme-admin", "edit_key"),
        ]
    );
    assert_eq!(
        actions(find("globex audit")),
        [
            pair("provider", "provision"),
            pair("provider", "set_subscription")
        ]
    );
    assert_eq!(
        actions(find("initech audit")),
        [
            pair("provider", "provision"),
            pair("provider", "set_limits"),
            pair("system", "auto_disable"),
        ]
    );
    let masked = &find("acme key page (viewer token)")["body"]["key"];
    assert_eq!(
        masked,
        &json!(format!("********{}", &world.acme_keys[2][8..]))
    );
    let outcome = |name: &str| -> Outcome {
        let v = find(name);
        (
            v["status"].as_u64().unwrap() as u16,
            v["code"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(outcome("proxy: acme, current key"), OK);
    assert_eq!(outcome("proxy: acme, current key, POST"), OK);
    assert_eq!(
        outcome("proxy: acme, provisioned key"),
        refused(401, "INVALID_KEY")
    );
    assert_eq!(
        outcome("proxy: acme, regenerated key"),
        refused(401, "INVALID_KEY")
    );
    assert_eq!(outcome("proxy: acme, no key"), refused(401, "MISSING_KEY"));
    assert_eq!(
        outcome("proxy: unknown org, acme's key"),
        refused(401, "INVALID_KEY")
    );
    assert_eq!(outcome("proxy: globex (expired), GET"), OK);
    assert_eq!(
        outcome("proxy: globex (expired), POST"),
        refused(403, "SUBSCRIPTION_EXPIRED")
    );
    assert_eq!(
        outcome("proxy: initech (disabled), GET"),
        refused(403, "KEY_DISABLED")
    );
    assert_eq!(
        find("acme key page (deleted viewer token)")["status"],
        json!(401)
    );
    assert_eq!(
        find("acme admin regenerates globex"),
        &json!([403, "FORBIDDEN"])
    );
    let proxied = find("proxy: acme, current key");
    assert_eq!(proxied["upstream_uri"], "/v1/hello?x=1");
    assert_eq!(proxied["upstream_org"], "acme");
    assert_eq!(proxied["upstream_saw_key"], json!(false));

    let (status, _) = gw.terminate().await;
    assert_eq!(status.code(), Some(0), "SIGTERM must end keygate with 0");
    let mode = std::fs::metadata(&env.store).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the store holds every key: owner only");

    let gw = env.start().await;
    let after = observe(&gw, &world).await;
    // Nothing is left out of the comparison: `base_url` is fixed by
    // `proxy.public_url`, `last_modified_on` and audit times are stored, and the
    // only value computed from the clock, `subscription_expired`, cannot change
    // here (globex expired in 2020, the others never expire).
    assert_eq!(before.len(), after.len());
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{name} changed across a restart");
    }

    let (status, _) = gw.terminate().await;
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 2. kill -9 right after an acknowledged change
// ---------------------------------------------------------------------------

/// Kills keygate the moment a change was acknowledged and starts it again on
/// the same store.
async fn crash_and_restart(env: &Env, gw: Gateway) -> Gateway {
    gw.kill9().await;
    env.start().await
}

async fn last_event(gw: &Gateway, env: &Env, org: &str) -> (String, String) {
    let audit = gw
        .admin(
            Method::GET,
            &format!("/v1/orgs/{org}/audit"),
            Some(&env.provider),
            None,
        )
        .await
        .expect(200)
        .json();
    actions(&audit).pop().expect("an audit event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_change_survives_kill_9() {
    const ROUNDS: usize = 5;
    let env = Env::new("").await;
    let p = Some(env.provider.as_str());
    let mut gw = env.start().await;
    let hello = |org: &str| format!("/{org}/v1/hello");

    for round in 0..ROUNDS {
        let org = format!("crash-{round}");
        let key0 = gw
            .admin(Method::POST, "/v1/orgs", p, Some(json!({ "org": org })))
            .await
            .expect(201)
            .key();

        // Regenerate.
        let key1 = gw
            .admin(
                Method::POST,
                &format!("/v1/orgs/{org}/key/regenerate"),
                p,
                None,
            )
            .await
            .expect(200)
            .key();
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key1))
                .await
                .outcome(),
            OK
        );
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key0))
                .await
                .outcome(),
            refused(401, "INVALID_KEY"),
            "round {round}: the key replaced by a regenerate came back"
        );
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "regenerate_key")
        );

        // Edit.
        let key2 = random_key();
        let edited = gw
            .admin(
                Method::PUT,
                &format!("/v1/orgs/{org}/key"),
                p,
                Some(json!({ "key": key2 })),
            )
            .await
            .expect(200);
        assert_eq!(edited.key(), key2);
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key2))
                .await
                .outcome(),
            OK
        );
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key1))
                .await
                .outcome(),
            refused(401, "INVALID_KEY"),
            "round {round}: the key replaced by an edit came back"
        );
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "edit_key")
        );

        // Delete.
        gw.admin(Method::DELETE, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(204);
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key2))
                .await
                .outcome(),
            refused(401, "INVALID_KEY"),
            "round {round}: a deleted key came back"
        );
        let page = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(200)
            .json();
        assert_eq!(page["key"], Value::Null);
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "delete_key")
        );

        // Add.
        let key3 = gw
            .admin(Method::POST, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(201)
            .key();
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key3))
                .await
                .outcome(),
            OK
        );
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "add_key")
        );

        // Limits: a threshold of 3 calls.
        gw.admin(
            Method::PUT,
            &format!("/v1/orgs/{org}/limits"),
            p,
            Some(json!({"threshold_calls": 3})),
        )
        .await
        .expect(200);
        gw = crash_and_restart(&env, gw).await;
        let page = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(200)
            .json();
        assert_eq!(page["limits"]["threshold_calls"], json!(3));
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "set_limits")
        );

        // The automatic disable: the 4th call is refused once it is durable.
        // (A restart starts a fresh window, so the count starts here.)
        let mut outcomes = Vec::new();
        for _ in 0..4 {
            outcomes.push(
                gw.proxy(Method::GET, &hello(&org), Some(&key3))
                    .await
                    .outcome(),
            );
        }
        assert_eq!(outcomes, [OK, OK, OK, refused(403, "KEY_DISABLED")]);
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key3))
                .await
                .outcome(),
            refused(403, "KEY_DISABLED"),
            "round {round}: a key disabled by the threshold was enabled again"
        );
        let page = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(200)
            .json();
        assert_eq!(page["disabled_reason"], "call threshold exceeded");
        assert_eq!(page["last_modified_by"], "system");
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("system", "auto_disable")
        );

        // Enable.
        gw.admin(Method::POST, &format!("/v1/orgs/{org}/enable"), p, None)
            .await
            .expect(200);
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key3))
                .await
                .outcome(),
            OK,
            "round {round}: an enabled key was disabled again"
        );
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "enable")
        );

        // Disable.
        let reason = format!("crash round {round}");
        gw.admin(
            Method::POST,
            &format!("/v1/orgs/{org}/disable"),
            p,
            Some(json!({ "reason": reason })),
        )
        .await
        .expect(200);
        gw = crash_and_restart(&env, gw).await;
        assert_eq!(
            gw.proxy(Method::GET, &hello(&org), Some(&key3))
                .await
                .outcome(),
            refused(403, "KEY_DISABLED"),
            "round {round}: a disabled key was enabled again"
        );
        let page = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), p, None)
            .await
            .expect(200)
            .json();
        assert_eq!(page["status"], "disabled");
        assert_eq!(page["disabled_reason"], json!(reason));
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "disable")
        );

        // Token creation.
        let name = format!("viewer-{round}");
        let token = gw
            .admin(
                Method::POST,
                "/v1/tokens",
                p,
                Some(json!({"name": name, "role": "viewer", "org": org})),
            )
            .await
            .expect(201)
            .json()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        gw = crash_and_restart(&env, gw).await;
        let page = gw
            .admin(
                Method::GET,
                &format!("/v1/orgs/{org}/key"),
                Some(&token),
                None,
            )
            .await
            .expect(200)
            .json();
        assert_eq!(page["key"], json!(format!("********{}", &key3[8..])));
        assert_eq!(
            last_event(&gw, &env, &org).await,
            pair("provider", "create_token")
        );
    }

    // Every round's org is still as its round left it.
    let all = gw
        .admin(Method::GET, "/v1/orgs", p, None)
        .await
        .expect(200)
        .json();
    let orgs = all["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), ROUNDS);
    for (round, page) in orgs.iter().enumerate() {
        assert_eq!(page["org"], json!(format!("crash-{round}")));
        assert_eq!(page["status"], "disabled");
        assert_eq!(
            page["disabled_reason"],
            json!(format!("crash round {round}"))
        );
    }
    let (status, _) = gw.terminate().await;
    assert_eq!(status.code(), Some(0));
}

// ---------------------------------------------------------------------------
// 3. Refusals at start
// ---------------------------------------------------------------------------

/// Runs `keygate serve --config config` to its end (bounded).
async fn serve_until_exit(config: &Path) -> (ExitStatus, String, String) {
    let mut proc = Proc::spawn("keygate serve", serve_command(config, "info"));
    let status = proc.wait_exit(START_LIMIT).await;
    (status, proc.stdout(), proc.stderr())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_is_refused_with_a_clear_message_and_left_as_it_was() {
    let env = Env::new("").await;
    let folder = env.store.parent().unwrap().to_owned();

    // A real store, cut in half, first: it needs one run to exist.
    let gw = env.start().await;
    gw.admin(
        Method::POST,
        "/v1/orgs",
        Some(&env.provider),
        Some(json!({"org": "acme"})),
    )
    .await
    .expect(201);
    let (status, _) = gw.terminate().await;
    assert_eq!(status.code(), Some(0));
    let whole = std::fs::read(&env.store).unwrap();
    let halved = whole[..whole.len() / 2].to_vec();

    let garbage: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("garbage", garbage),
        ("text", b"this is not a keygate store\n".to_vec()),
        ("an empty file", Vec::new()),
        ("a store cut in half", halved),
    ];
    for (what, bytes) in cases {
        std::fs::write(&env.store, &bytes).unwrap();
        let (status, stdout, stderr) = serve_until_exit(&env.config).await;
        assert!(
            !status.success(),
            "{what}: keygate started over it:\n{stderr}"
        );
        assert!(
            !stderr.contains("keygate listening"),
            "{what}: keygate listened:\n{stderr}"
        );
        assert!(stdout.is_empty(), "{what}: {stdout}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains("store") && last.contains(&env.store.display().to_string()),
            "{what}: the error does not name the store: {stderr}"
        );
        assert_eq!(
            std::fs::read(&env.store).unwrap(),
            bytes,
            "{what}: keygate changed the file it refused"
        );
        assert_eq!(names_in(&folder), ["keygate.redb"], "{what}");
    }
}

/// A port nothing listens on (bound and released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_exits_with_one_line_naming_the_key_before_binding() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("state").join("keygate.redb");
    let digest = keygate::token::TokenDigest::of("some token").to_hex();
    let cases = [
        ("proxy.upstream = \"ftp://x\"", "config: proxy.upstream:"),
        (
            "proxy.upstream = \"http://127.0.0.1:9\"\nproxy.upstreem = \"http://x\"",
            "config: proxy.upstreem:",
        ),
        (
            "proxy.upstream = \"http://127.0.0.1:9\"\nlimits.burst = 0",
            "config: limits.burst:",
        ),
    ];
    for (extra, prefix) in cases {
        let (proxy, admin) = (free_port(), free_port());
        let text = format!(
            "{extra}\nproxy.listen = \"127.0.0.1:{proxy}\"\n\
             admin.listen = \"127.0.0.1:{admin}\"\n\
             admin.provider_token_sha256 = \"{digest}\"\nstore.path = {store:?}\n",
            store = store.display().to_string(),
        );
        let config = dir.path().join("keygate.toml");
        std::fs::write(&config, text).unwrap();
        let (status, stdout, stderr) = serve_until_exit(&config).await;
        assert!(!status.success(), "{extra}: {stderr}");
        assert_eq!(status.code(), Some(2), "{extra}: the README promises 2");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{extra}: not one line: {stderr:?}");
        assert!(lines[0].starts_with(prefix), "{extra}: {stderr:?}");
        assert!(stdout.is_empty(), "{extra}: {stdout}");
        for port in [proxy, admin] {
            TcpListener::bind(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("{extra}: port {port} is not free: {e}"));
        }
        assert!(
            !store.parent().unwrap().exists(),
            "{extra}: the store was created"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. No key and no token in the logs
// ---------------------------------------------------------------------------

/// Every secret the scenario met, to look for in the logs.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: impl Into<String>, secret: &str) {
        assert!(secret.len() >= 12, "{secret:?} is too short to search for");
        self.0.push((what.into(), secret.to_owned()));
    }

    /// Adds the key of a KeyView (when it has one, unmasked) and returns it.
    fn key_of_page(&mut self, what: &str, page: &Answer) -> Option<String> {
        let key = page.json()["key"].as_str()?.to_owned();
        if !key.contains('*') {
            self.add(format!("key shown by {what}"), &key);
        }
        Some(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_and_no_token_ever_reaches_the_logs_even_at_trace() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env.config, "trace").await;
    let p = Some(env.provider.as_str());
    let mut s = Secrets::default();
    s.add("provider token", &env.provider);

    // Provision, read, regenerate.
    let page = gw
        .admin(Method::POST, "/v1/orgs", p, Some(json!({"org": "acme"})))
        .await
        .expect(201);
    let acme0 = s.key_of_page("provision acme", &page).unwrap();
    let page = gw
        .admin(Method::POST, "/v1/orgs", p, Some(json!({"org": "globex"})))
        .await
        .expect(201);
    let globex = s.key_of_page("provision globex", &page).unwrap();
    let page = gw
        .admin(Method::POST, "/v1/orgs", p, Some(json!({"org": "initech"})))
        .await
        .expect(201);
    let initech = s.key_of_page("provision initech", &page).unwrap();
    let page = gw
        .admin(Method::POST, "/v1/orgs/acme/key/regenerate", p, None)
        .await
        .expect(200);
    let acme1 = s.key_of_page("regenerate", &page).unwrap();
    let all = gw.admin(Method::GET, "/v1/orgs", p, None).await.expect(200);
    for page in all.json()["orgs"].as_array().unwrap() {
        s.add("listed key", page["key"].as_str().unwrap());
    }

    // Tokens.
    let token = |name: &'static str, role: &'static str| {
        let gw = &gw;
        async move {
            let body = json!({"name": name, "role": role, "org": "acme"});
            let t = gw
                .admin(Method::POST, "/v1/tokens", p, Some(body))
                .await
                .expect(201);
            t.json()["token"].as_str().unwrap().to_owned()
        }
    };
    let admin = token("acme-admin", "admin").await;
    let viewer = token("acme-viewer", "viewer").await;
    s.add("admin token", &admin);
    s.add("viewer token", &viewer);

    // The admin edits (to a key of our choosing), deletes, adds.
    let chosen = random_key();
    s.add("edited key", &chosen);
    let page = gw
        .admin(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&admin),
            Some(json!({ "key": chosen })),
        )
        .await
        .expect(200);
    s.key_of_page("edit", &page);
    // Refused edits carry keys too: the same key again, malformed ones.
    gw.admin(
        Method::PUT,
        "/v1/orgs/acme/key",
        Some(&admin),
        Some(json!({ "key": chosen })),
    )
    .await
    .expect(422);
    for bad in ["Bad-Key-1234", "WayTooLongKey1234567890"] {
        s.add("malformed key", bad);
        gw.admin(
            Method::PUT,
            "/v1/orgs/acme/key",
            Some(&admin),
            Some(json!({ "key": bad })),
        )
        .await
        .expect(422);
    }
    gw.admin(Method::DELETE, "/v1/orgs/acme/key", Some(&admin), None)
        .await
        .expect(204);
    let page = gw
        .admin(Method::POST, "/v1/orgs/acme/key", Some(&admin), None)
        .await
        .expect(201);
    let acme = s.key_of_page("add", &page).unwrap();
    let page = gw
        .admin(Method::GET, "/v1/orgs/acme/key", Some(&viewer), None)
        .await
        .expect(200);
    assert!(s
        .key_of_page("viewer", &page)
        .unwrap()
        .starts_with("********"));
    gw.admin(Method::GET, "/v1/orgs/acme/audit", Some(&viewer), None)
        .await
        .expect(200);

    // Wrong credentials on the admin API: made-up tokens, an org key as a token.
    let wrong_token = keygate::token::generate();
    s.add("made-up token", &wrong_token);
    for t in [wrong_token.as_str(), acme.as_str()] {
        gw.admin(Method::GET, "/v1/orgs/acme/key", Some(t), None)
            .await
            .expect(401);
    }
    gw.admin(Method::GET, "/v1/orgs/globex/key", Some(&admin), None)
        .await
        .expect(403);

    // Proxied calls: valid, wrong, old, missing.
    let wrong = random_key();
    s.add("made-up key", &wrong);
    let cases: Vec<(&str, Option<&str>, Outcome)> = vec![
        ("/acme/v1/hello", Some(&acme), OK),
        ("/acme/v1/hello", Some(&wrong), refused(401, "INVALID_KEY")),
        ("/acme/v1/hello", Some(&acme0), refused(401, "INVALID_KEY")),
        ("/acme/v1/hello", Some(&acme1), refused(401, "INVALID_KEY")),
        ("/acme/v1/hello", Some(&chosen), refused(401, "INVALID_KEY")),
        (
            "/acme/v1/hello",
            Some("Bad-Key-1234"),
            refused(401, "INVALID_KEY"),
        ),
        ("/acme/v1/hello", None, refused(401, "MISSING_KEY")),
        ("/hooli/v1/hello", Some(&acme), refused(401, "INVALID_KEY")),
        ("/globex/v1/hello", Some(&acme), refused(401, "INVALID_KEY")),
        ("/globex/v1/hello", Some(&globex), OK),
    ];
    for (path, key, expected) in cases {
        let a = gw.proxy(Method::GET, path, key).await;
        assert_eq!(a.outcome(), expected, "{path} with {key:?}");
    }

    // 403 SUBSCRIPTION_EXPIRED, then back.
    let sub = |at: Value| {
        let gw = &gw;
        async move {
            gw.admin(
                Method::PUT,
                "/v1/orgs/globex/subscription",
                p,
                Some(json!({ "expires_at": at })),
            )
            .await
            .expect(200);
        }
    };
    sub(json!("2020-01-01T00:00:00Z")).await;
    let a = gw
        .proxy(Method::POST, "/globex/v1/things", Some(&globex))
        .await;
    assert_eq!(a.outcome(), refused(403, "SUBSCRIPTION_EXPIRED"));
    sub(Value::Null).await;

    // 429: one call per second, no burst beyond one; a run of calls meets it.
    gw.admin(
        Method::PUT,
        "/v1/orgs/acme/limits",
        p,
        Some(json!({"rate_per_sec": 1, "burst": 1})),
    )
    .await
    .expect(200);
    let mut limited = false;
    for _ in 0..200 {
        let a = gw.proxy(Method::GET, "/acme/v1/hello", Some(&acme)).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(a.code().as_deref(), Some("RATE_LIMITED"));
            limited = true;
            break;
        }
        assert_eq!(a.outcome(), OK);
    }
    assert!(limited, "200 calls at 1/s with burst 1 were never limited");

    // Threshold: initech's 4th call with a threshold of 3 disables it; enable.
    gw.admin(
        Method::PUT,
        "/v1/orgs/initech/limits",
        p,
        Some(json!({"threshold_calls": 3})),
    )
    .await
    .expect(200);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(
            gw.proxy(Method::GET, "/initech/v1/hello", Some(&initech))
                .await
                .outcome(),
        );
    }
    assert_eq!(outcomes, [OK, OK, OK, refused(403, "KEY_DISABLED")]);
    let page = gw
        .admin(Method::POST, "/v1/orgs/initech/enable", p, None)
        .await
        .expect(200);
    s.key_of_page("enable", &page);
    let a = gw
        .proxy(Method::GET, "/initech/v1/hello", Some(&initech))
        .await;
    assert_eq!(a.outcome(), OK);

    // Tokens deleted, then refused.
    for name in ["acme-admin", "acme-viewer"] {
        gw.admin(Method::DELETE, &format!("/v1/tokens/{name}"), p, None)
            .await
            .expect(204);
    }
    gw.admin(Method::GET, "/v1/orgs/acme/key", Some(&admin), None)
        .await
        .expect(401);
    let audit = gw
        .admin(Method::GET, "/v1/orgs/acme/audit", p, None)
        .await
        .expect(200);
    let audit = String::from_utf8_lossy(&audit.body).into_owned();

    let (status, stderr) = gw.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(!stderr.is_empty(), "keygate wrote no log at all");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(" TRACE ") || l.contains(" DEBUG ")),
        "KEYGATE_LOG=trace gave no trace or debug line, so this scan proves little:\n{stderr}"
    );
    let mut leaks = Vec::new();
    for (what, secret) in &s.0 {
        for (line_no, line) in stderr.lines().enumerate() {
            if line.contains(secret.as_str()) {
                leaks.push(format!("{what} on stderr line {}: {line}", line_no + 1));
            }
        }
        if audit.contains(secret.as_str()) {
            leaks.push(format!("{what} in the audit log"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
}
