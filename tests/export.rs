//! `keygate export` and `keygate import` of an export, the real binary: a
//! store built through a running keygate moves whole into a fresh store path
//! and serves the same key pages, tokens, audit logs and proxy answers there;
//! an export of the imported store is byte for byte the first one; an import
//! into a store that holds orgs, or of a malformed line, is refused and
//! changes nothing; export refuses a missing store and one in use.
//!
//! Every keygate listens on `127.0.0.1:0`; every wait is bounded.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc};

/// A start, an exit, or a whole export or import.
const LIMIT: Duration = Duration::from_secs(20);
/// One HTTP exchange.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// Runs `keygate ARGS --config config [FILE]` to its end: status, stdout, stderr.
async fn run(args: &[&str], config: &Path, file: Option<&Path>) -> (ExitStatus, Vec<u8>, String) {
    let mut cmd = Command::new(child::BIN);
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .env("KEYGATE_LOG", "info")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    if let Some(file) = file {
        cmd.arg(file);
    }
    let mut proc = Proc::spawn("keygate", cmd);
    let status = proc.wait_exit(LIMIT).await;
    (status, proc.stdout().into_bytes(), proc.stderr())
}

/// `keygate export`, which must succeed: the export's bytes.
async fn export(config: &Path) -> Vec<u8> {
    let (status, out, err) = run(&["export"], config, None).await;
    assert!(status.success(), "{status}: {err}");
    out
}

/// `keygate import` of `bytes` (written to a file next to nothing else).
async fn import(config: &Path, bytes: &[u8]) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input");
    std::fs::write(&file, bytes).unwrap();
    let (status, out, err) = run(&["import"], config, Some(&file)).await;
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    (status, err)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `keygate serve`, listening.
struct Gateway {
    proc: Proc,
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    client: HttpClient,
}

impl Gateway {
    async fn start(config: &Path) -> Gateway {
        let mut proc = Proc::spawn("keygate serve", serve_command(config, "info"));
        let (proxy, admin) = proc.listening(LIMIT).await;
        Gateway {
            proc,
            proxy,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn stop(self) {
        self.proc.signal("TERM");
        let mut proc = self.proc;
        assert!(proc.wait_exit(LIMIT).await.success());
    }

    /// An admin call: status and JSON body (`null` when there is none).
    async fn admin(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("http://{}{path}", self.admin);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"));
        self.send(req, body).await
    }

    /// A proxied GET with `key`: status and JSON body.
    async fn proxy(&self, path: &str, key: &str) -> (u16, Value) {
        let url = format!("http://{}{path}", self.proxy);
        let req = Request::builder().uri(&url).header("x-api-key", key);
        self.send(req, None).await
    }

    async fn send(&self, mut req: http::request::Builder, body: Option<Value>) -> (u16, Value) {
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::from(v.to_string())
            }
            None => Full::default(),
        };
        let req = req.body(body).unwrap();
        let exchange = async {
            let res = self.client.request(req).await.unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
        };
        tokio::time::timeout(REQUEST_LIMIT, exchange)
            .await
            .expect("an answer in time")
    }
}

/// The secrets a scenario made: the provider's token is each env's own and
/// is not part of a store.
struct Secrets {
    /// Admin and viewer tokens that exist, and one that was deleted.
    tokens: Vec<(&'static str, String)>,
    /// Every key each org ever had, (org, key), oldest first per org.
    keys: Vec<(&'static str, String)>,
}

/// Builds a store with history through a running keygate: three orgs, a key
/// edited and one regenerated, one disabled with a reason, a subscription and
/// limits set, tokens created and one deleted, a key deleted.
async fn build(gw: &Gateway, provider: &str) -> Secrets {
    let p = provider;
    let mut keys = Vec::new();
    for (org, body) in [
        ("acme", json!({"org": "acme"})),
        (
            "globex",
            json!({"org": "globex", "limits": {"rate_per_sec": 50, "burst": 7}}),
        ),
        ("initech", json!({"org": "initech"})),
    ] {
        let (status, page) = gw.admin(Method::POST, "/v1/orgs", p, Some(body)).await;
        assert_eq!(status, 201, "{page}");
        keys.push((org, page["key"].as_str().unwrap().to_owned()));
    }
    let (status, page) = gw
        .admin(
            Method::PUT,
            "/v1/orgs/acme/key",
            p,
            Some(json!({"key": "Edited0Key12"})),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    keys.push(("acme", "Edited0Key12".to_owned()));
    let (status, page) = gw
        .admin(Method::POST, "/v1/orgs/acme/key/regenerate", p, None)
        .await;
    assert_eq!(status, 200, "{page}");
    keys.push(("acme", page["key"].as_str().unwrap().to_owned()));
    for (path, body) in [
        (
            "/v1/orgs/acme/subscription",
            json!({"expires_at": "2099-01-01T00:00:00Z"}),
        ),
        (
            "/v1/orgs/acme/limits",
            json!({"threshold_calls": 1000, "threshold_window_secs": 60}),
        ),
    ] {
        let (status, page) = gw.admin(Method::PUT, path, p, Some(body)).await;
        assert_eq!(status, 200, "{path}: {page}");
    }
    let (status, page) = gw
        .admin(
            Method::POST,
            "/v1/orgs/globex/disable",
            p,
            Some(json!({"reason": "unpaid invoice"})),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let (status, page) = gw
        .admin(Method::DELETE, "/v1/orgs/initech/key", p, None)
        .await;
    assert_eq!(status, 204, "{page}");

    let mut tokens = Vec::new();
    for (name, role, org) in [
        ("acme-admin", "admin", "acme"),
        ("globex-viewer", "viewer", "globex"),
        ("acme-gone", "admin", "acme"),
    ] {
        let body = json!({"name": name, "role": role, "org": org});
        let (status, t) = gw.admin(Method::POST, "/v1/tokens", p, Some(body)).await;
        assert_eq!(status, 201, "{t}");
        tokens.push((org_of(name), t["token"].as_str().unwrap().to_owned()));
    }
    let (status, _) = gw
        .admin(Method::DELETE, "/v1/tokens/acme-gone", p, None)
        .await;
    assert_eq!(status, 204);
    // The deleted token's refusal is part of what must carry over.
    Secrets { tokens, keys }
}

fn org_of(token_name: &str) -> &'static str {
    if token_name.starts_with("acme") {
        "acme"
    } else {
        "globex"
    }
}

/// Everything a store must keep, each item named: the provider's org list
/// and audit logs, each token's view of its org, each key's proxy answer.
async fn observe(gw: &Gateway, provider: &str, s: &Secrets) -> Vec<(String, Value)> {
    let mut seen = Vec::new();
    let (status, all) = gw.admin(Method::GET, "/v1/orgs", provider, None).await;
    assert_eq!(status, 200);
    seen.push(("GET /v1/orgs".to_owned(), all));
    for org in ["acme", "globex", "initech"] {
        let (status, audit) = gw
            .admin(
                Method::GET,
                &format!("/v1/orgs/{org}/audit"),
                provider,
                None,
            )
            .await;
        assert_eq!(status, 200);
        seen.push((format!("{org} audit"), audit));
    }
    for (i, (org, token)) in s.tokens.iter().enumerate() {
        let (status, page) = gw
            .admin(Method::GET, &format!("/v1/orgs/{org}/key"), token, None)
            .await;
        seen.push((
            format!("token {i} on {org}"),
            json!({"status": status, "body": page}),
        ));
    }
    for (i, (org, key)) in s.keys.iter().enumerate() {
        let (status, body) = gw.proxy(&format!("/{org}/v1/hello"), key).await;
        // The echo's own headers differ between two environments; what the
        // gate decided does not.
        let code = body.get("code").cloned().unwrap_or(Value::Null);
        seen.push((
            format!("proxy: {org} key {i}"),
            json!({"status": status, "code": code}),
        ));
    }
    seen
}

fn value<'a>(seen: &'a [(String, Value)], name: &str) -> &'a Value {
    &seen
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .1
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_moves_whole_keys_tokens_audit_and_answers_and_exports_to_the_same_bytes() {
    let from = Env::new("").await;
    let gw = Gateway::start(&from.config).await;
    let secrets = build(&gw, &from.provider).await;
    let before = observe(&gw, &from.provider, &secrets).await;
    gw.stop().await;

    // What the first run shows is right, not merely repeated.
    let orgs = value(&before, "GET /v1/orgs")["orgs"].as_array().unwrap();
    assert_eq!(orgs.len(), 3);
    assert_eq!(orgs[1]["status"], "disabled");
    assert_eq!(
        value(&before, "token 0 on acme")["status"],
        200,
        "{before:?}"
    );
    assert_eq!(value(&before, "token 2 on acme")["status"], 401);
    assert_eq!(value(&before, "proxy: acme key 4")["status"], 200);
    for old in ["proxy: acme key 0", "proxy: acme key 3"] {
        assert_ne!(value(&before, old)["status"], 200, "{old}");
    }

    let (status, first, err) = run(&["export"], &from.config, None).await;
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("3 orgs, 2 tokens, 0 API users, 13 audit events"),
        "stderr: {err}"
    );
    let records = lines(&first);
    assert_eq!(records[0]["type"], "keygate-export");
    assert_eq!(records[0]["version"], 2);
    assert_eq!(records.len(), 1 + 3 + 2 + 13);
    // The export holds each token's digest, never the token; no log line
    // shows a key.
    let text = String::from_utf8(first.clone()).unwrap();
    for (i, (_, token)) in secrets.tokens.iter().enumerate() {
        assert!(!text.contains(token.as_str()));
        // The third was deleted: no record of it is left to export.
        let digest = keygate::token::TokenDigest::of(token).to_hex();
        assert_eq!(text.contains(&digest), i < 2, "token {i}");
    }
    for (_, key) in &secrets.keys {
        assert!(!err.contains(key.as_str()), "{err}");
    }

    let to = Env::new("").await;
    assert!(!to.store.exists());
    let (status, err) = import(&to.config, &first).await;
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("imported an export: 3 orgs, 2 tokens, 0 API users, 13 audit events"),
        "{err}"
    );
    for (_, key) in &secrets.keys {
        assert!(!err.contains(key.as_str()), "{err}");
    }

    let gw = Gateway::start(&to.config).await;
    let after = observe(&gw, &to.provider, &secrets).await;
    gw.stop().await;
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert_eq!(was, is, "{name}");
    }
    assert_eq!(before.len(), after.len());

    assert_eq!(export(&to.config).await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_into_a_store_that_holds_orgs_is_refused_and_changes_nothing() {
    let from = Env::new("").await;
    let (status, err) = import(&from.config, b"acme\nglobex\tAb3dEf6hIj9k\n").await;
    assert!(status.success(), "{err}");
    assert!(err.contains("imported 2 orgs"), "{err}");
    let source = export(&from.config).await;

    // The org-list import still works as before.
    let to = Env::new("").await;
    let (status, err) = import(&to.config, b"# one org\ninitech\n").await;
    assert!(status.success(), "{err}");
    let held = export(&to.config).await;
    let records = lines(&held);
    assert_eq!(records[0]["orgs"], 1);
    assert_eq!(records[1]["id"], "initech");

    let (status, err) = import(&to.config, &source).await;
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("not empty") && last.contains("1 orgs") && last.contains("nothing"),
        "{err}"
    );
    assert!(!err.contains("Ab3dEf6hIj9k"), "{err}");
    assert_eq!(export(&to.config).await, held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_line_is_refused_by_its_number_without_its_key_and_nothing_is_imported() {
    let from = Env::new("").await;
    let (status, err) = import(&from.config, b"acme\tAb3dEf6hIj9k\nglobex\n").await;
    assert!(status.success(), "{err}");
    let source = String::from_utf8(export(&from.config).await).unwrap();
    let mut lines: Vec<String> = source.lines().map(str::to_owned).collect();
    // acme's line keeps its key; its status becomes one keygate does not know.
    assert!(lines[1].contains("Ab3dEf6hIj9k"));
    lines[1] = lines[1].replace("\"enabled\"", "\"paused\"");
    let bad = lines.join("\n") + "\n";

    let to = Env::new("").await;
    let (status, err) = import(&to.config, bad.as_bytes()).await;
    assert_eq!(status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap();
    assert!(last.contains("line 2: "), "{err}");
    assert!(!err.contains("Ab3dEf6hIj9k"), "{err}");
    // The export is read whole before the store is opened: none was created.
    assert!(!to.store.exists());

    // A cut export: the header's counts catch it.
    let cut: String = source.lines().take(2).map(|l| format!("{l}\n")).collect();
    let (status, err) = import(&to.config, cut.as_bytes()).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("promises"), "{err}");
    assert!(!to.store.exists());

    // Into an empty store that exists, a bad line leaves it empty.
    let (status, err) = import(&to.config, b"").await;
    assert!(status.success(), "{err}");
    let empty = export(&to.config).await;
    assert_eq!(self::lines(&empty)[0]["orgs"], 0);
    let (status, err) = import(&to.config, bad.as_bytes()).await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(export(&to.config).await, empty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_refuses_a_missing_store_and_one_a_running_keygate_holds_exit_2() {
    let env = Env::new("").await;
    let (status, out, err) = run(&["export"], &env.config, None).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains(&env.store.display().to_string()) && err.contains("No such file"),
        "{err}"
    );
    assert!(!env.store.exists(), "export created a store");

    let gw = Gateway::start(&env.config).await;
    let (status, out, err) = run(&["export"], &env.config, None).await;
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(out.is_empty());
    assert!(err.contains("already open"), "{err}");
    gw.stop().await;
}

/// A login at the session path of `org` through `gw`: status and the
/// session cookie's value, if one was set.
async fn login(gw: &Gateway, org: &str, key: &str, password: &str) -> (u16, Option<String>) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let k: [u8; 12] = key.as_bytes().try_into().unwrap();
    let api_key =
        String::from_utf8(keygate::session::obfuscate::obfuscate(&k, ts).to_vec()).unwrap();
    let body = json!({"apiKey": api_key, "username": "ops@acme.example",
                      "password": password, "timestamp": ts});
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "http://{}/{org}/api/v1/authenticatedSession",
            gw.proxy
        ))
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()))
        .unwrap();
    let exchange = async {
        let res = gw.client.request(req).await.unwrap();
        let cookie = res
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("JSESSIONID="))
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        (res.status().as_u16(), cookie)
    };
    tokio::time::timeout(REQUEST_LIMIT, exchange)
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_users_move_with_an_export_and_log_in_on_the_imported_store() {
    const PASSWORD: &str = "a long enough password";
    let from = Env::new("[session]\n").await;
    let gw = Gateway::start(&from.config).await;
    let p = &from.provider;
    let (status, page) = gw
        .admin(Method::POST, "/v1/orgs", p, Some(json!({"org": "acme"})))
        .await;
    assert_eq!(status, 201, "{page}");
    let key = page["key"].as_str().unwrap().to_owned();
    let body = json!({"username": "ops@acme.example", "password": PASSWORD});
    let (status, page) = gw
        .admin(Method::POST, "/v1/orgs/acme/api-users", p, Some(body))
        .await;
    assert_eq!(status, 201, "{page}");
    assert_eq!(login(&gw, "acme", &key, PASSWORD).await.0, 200);
    gw.stop().await;

    let first = export(&from.config).await;
    let records = lines(&first);
    assert_eq!(records[0]["version"], 2);
    assert_eq!(records[0]["api_users"], 1);
    let user = records
        .iter()
        .find(|r| r["type"] == "api_user")
        .expect("an api_user line");
    assert_eq!(user["org"], "acme");
    assert_eq!(user["username"], "ops@acme.example");
    assert!(user["password_digest"]
        .as_str()
        .unwrap()
        .starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    assert!(!String::from_utf8(first.clone()).unwrap().contains(PASSWORD));

    let to = Env::new("[session]\n").await;
    let (status, err) = import(&to.config, &first).await;
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.contains("imported an export: 1 orgs, 0 tokens, 1 API users, 2 audit events"),
        "{err}"
    );
    let (status, _, err) = run(&["check"], &to.config, None).await;
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("1 API users"), "{err}");

    let gw = Gateway::start(&to.config).await;
    assert_eq!(
        login(&gw, "acme", &key, "a long enough passwore").await.0,
        401
    );
    let (status, cookie) = login(&gw, "acme", &key, PASSWORD).await;
    assert_eq!(status, 200);
    let cookie = cookie.expect("a session cookie");
    let req = Request::builder()
        .uri(format!("http://{}/acme/v1/hello", gw.proxy))
        .header("cookie", format!("JSESSIONID={cookie}"));
    let (status, body) = gw.send(req, None).await;
    assert_eq!(status, 200, "{body}");
    gw.stop().await;
    assert_eq!(export(&to.config).await, first);
}
