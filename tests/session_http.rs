//! Session login over real sockets: two keygate nodes on one shared backend
//! (the in-process model of a cluster), the admin API's API-user calls, a
//! client with a cookie jar that logs in through one node and calls through
//! the other, and every log line at trace level scanned for secrets.

mod support;

use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use keygate::clock::{Clock, ManualClock};
use keygate::config::Config;
use keygate::server::{self, Running};
use keygate::store::{Backend, MemoryBackend};
use keygate::token::TokenDigest;
use serde_json::{json, Value};
use support::{Upstream, PROVIDER, T0};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const PASSWORD: &str = "correct horse battery staple";
const USER: &str = "ops@acme.example";

/// Every log line of this test binary, at trace level.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Node {
    running: Running,
}

async fn nodes(upstream: &Upstream) -> (Node, Node, Arc<ManualClock>) {
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\n\
         [store]\npath = \"/nonexistent/unused.redb\"\n\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\n\n\
         [session]\nidle_timeout_secs = 300\n",
        up = upstream.addr,
        digest = TokenDigest::of(PROVIDER).to_hex(),
    );
    let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    let clock = Arc::new(ManualClock::new(T0));
    let backend = Arc::new(MemoryBackend::shared());
    let start = |b: Arc<MemoryBackend>| {
        let config = config.clone();
        let clock = Arc::clone(&clock) as Arc<dyn Clock>;
        async move {
            Node {
                running: server::start_with(&config, b as Arc<dyn Backend>, clock)
                    .await
                    .unwrap(),
            }
        }
    };
    let a = start(backend.clone()).await;
    let b = start(backend).await;
    (a, b, clock)
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
    text: String,
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&body).into_owned(),
    }
}

async fn admin(
    client: &HttpClient,
    node: &Node,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", node.running.admin_addr))
        .header(header::AUTHORIZATION, format!("Bearer {PROVIDER}"));
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    send(client, req.body(Full::from(body)).unwrap()).await
}

/// A client's cookie jar, by hand: what `Set-Cookie` set, sent back as `Cookie`.
#[derive(Default)]
struct Jar(Vec<(String, String)>);

impl Jar {
    fn take(&mut self, headers: &http::HeaderMap) {
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let pair = set.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            self.0.retain(|(n, _)| n != name);
            self.0.push((name.to_owned(), value.to_owned()));
        }
    }

    fn header(&self) -> String {
        let mut all: Vec<String> = vec!["theme=dark".to_owned()];
        all.extend(self.0.iter().map(|(n, v)| format!("{n}={v}")));
        all.join("; ")
    }

    fn value(&self, name: &str) -> String {
        self.0.iter().find(|(n, _)| n == name).unwrap().1.clone()
    }
}

fn obfuscated(key: &str, ts: u64) -> String {
    let k: [u8; 12] = key.as_bytes().try_into().unwrap();
    String::from_utf8(keygate::session::obfuscate::obfuscate(&k, ts).to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_cookie_jar_logs_in_through_one_node_and_calls_through_the_other() {
    let logs = logs();
    let upstream = Upstream::start().await;
    let (a, b, clock) = nodes(&upstream).await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    let r = admin(
        &client,
        &a,
        Method::POST,
        "/v1/orgs",
        Some(json!({"org": "acme"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.json["key"].as_str().unwrap().to_owned();

    // API users through the admin API (node A), seen by node B.
    let users = "/v1/orgs/acme/api-users";
    let weak = admin(
        &client,
        &a,
        Method::POST,
        users,
        Some(json!({"username": USER, "password": "short"})),
    )
    .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak.json["code"], "WEAK_PASSWORD");
    let made = admin(
        &client,
        &a,
        Method::POST,
        users,
        Some(json!({"username": USER, "password": PASSWORD})),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{}", made.text);
    let again = admin(
        &client,
        &b,
        Method::POST,
        users,
        Some(json!({"username": USER, "password": PASSWORD})),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json["code"], "API_USER_EXISTS");
    let list = admin(&client, &b, Method::GET, users, None).await;
    assert_eq!(list.json, json!({"api_users": [{"username": USER}]}));
    let audit = admin(&client, &a, Method::GET, "/v1/orgs/acme/audit", None).await;
    assert!(audit.text.contains("create_api_user"), "{}", audit.text);
    assert!(!audit.text.contains("argon2") && !audit.text.contains(PASSWORD));

    // Log in through node A.
    let ts = clock.now().as_nanos() / 1_000_000;
    let api_key = obfuscated(&key, ts);
    let login = Request::post(format!(
        "http://{}/acme/api/v1/authenticatedSession",
        a.running.proxy_addr
    ))
    .header(header::CONTENT_TYPE, "application/json")
    .body(Full::from(
        json!({"apiKey": api_key, "username": USER, "password": PASSWORD, "timestamp": ts.to_string()})
            .to_string(),
    ))
    .unwrap();
    let r = send(&client, login).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut jar = Jar::default();
    jar.take(&r.headers);
    let session = jar.value("JSESSIONID");

    // Call through node B with the jar.
    let call = |node: &Node, method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", node.running.proxy_addr))
            .header(header::COOKIE, jar.header())
            .body(Full::default())
            .unwrap()
    };
    let r = send(
        &client,
        call(&b, Method::GET, "/acme/api/v1/authenticatedSession"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = send(&client, call(&b, Method::GET, "/acme/api/v1/users?page=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let seen = upstream.only();
    assert_eq!(seen.uri, "/api/v1/users?page=1");
    assert_eq!(seen.headers["x-org-id"], "acme");
    assert_eq!(seen.headers["cookie"], "theme=dark");

    // The user deleted through node B: the session dies on node A at once.
    let gone = admin(
        &client,
        &b,
        Method::DELETE,
        &format!("{users}/{USER}"),
        None,
    )
    .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text);
    let r = send(&client, call(&a, Method::GET, "/acme/api/v1/users")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json["code"], "SESSION_NOT_VALID");

    // No secret in any log line, at trace level.
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("session login"), "the logs were captured");
    for (what, secret) in [
        ("the key", key.as_str()),
        ("the password", PASSWORD),
        ("the obfuscated key", api_key.as_str()),
        ("the session value", session.as_str()),
    ] {
        assert!(!text.contains(secret), "{what} is in the logs");
    }
}
