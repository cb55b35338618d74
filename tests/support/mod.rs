//! Shared helpers for the HTTP integration tests: a recording upstream, keygate
//! itself on real sockets (over a memory or redb store and a [`ManualClock`]),
//! and one small HTTP client for both of keygate's listeners.
//!
//! Everything listens on `127.0.0.1:0`. Time only moves when a test moves the
//! clock, so windows and expiry are tested without sleeping; the one real wait
//! is the 504 test's, bounded by its `upstream_timeout_ms`.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::clock::{Clock, ManualClock, Timestamp};
use keygate::config::Config;
use keygate::server::{self, Running};
use keygate::store::{Backend, MemoryBackend, RedbBackend};
use keygate::token::TokenDigest;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Where every test's clock starts: 2027-01-15T08:00:00Z.
pub const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

/// The provider's bearer token; its SHA-256 is in every gateway's config.
pub const PROVIDER: &str = "the-provider-token-of-the-http-tests";

// ---------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query, as on the request line.
    pub uri: String,
    /// Every header.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

/// What the upstream answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// Headers, in order; a name may repeat.
    pub headers: Vec<(&'static str, &'static str)>,
    /// The body.
    pub body: Bytes,
    /// Wait this long after reading the request before answering.
    pub delay: Option<Duration>,
}

impl Default for Answer {
    /// `200 OK`, `text/plain`, body `upstream`, at once.
    fn default() -> Self {
        Answer {
            status: StatusCode::OK,
            headers: vec![("content-type", "text/plain")],
            body: Bytes::from_static(b"upstream"),
            delay: None,
        }
    }
}

/// An HTTP/1.1 upstream on `127.0.0.1:0` that records every request it gets
/// and answers each with the current [`Answer`].
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts one answering [`Answer::default`].
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(Answer::default()));
        let connections = Arc::default();
        let task = tokio::spawn(accept(
            listener,
            Arc::clone(&seen),
            Arc::clone(&answer),
            Arc::clone(&connections),
        ));
        Upstream {
            addr,
            seen,
            answer,
            connections,
            task,
        }
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answers every later request with `answer`.
    pub fn answer_with(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Every request received so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests it received.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The one request it received; fails the test unless there was exactly one.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "the upstream saw {seen:#?}");
        seen.into_iter().next().unwrap()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    seen: Arc<Mutex<Vec<Seen>>>,
    answer: Arc<Mutex<Answer>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let seen = Arc::clone(&seen);
        let answer = Arc::clone(&answer);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = Arc::clone(&seen);
                let answer = Arc::clone(&answer);
                async move { Ok::<_, Infallible>(record_and_answer(req, &seen, &answer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn record_and_answer(
    req: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    answer: &Mutex<Answer>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method,
        uri: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });
    let answer = answer.lock().unwrap().clone();
    if let Some(delay) = answer.delay {
        tokio::time::sleep(delay).await;
    }
    let mut res = Response::new(Full::new(answer.body));
    *res.status_mut() = answer.status;
    for (name, value) in answer.headers {
        res.headers_mut().append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    res
}

/// An address on which nothing listens: connections to it are refused.
pub async fn refusing_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// ---------------------------------------------------------------------------
// Answers
// ---------------------------------------------------------------------------

/// An answer from either listener.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// The body as JSON; `null` when it is empty or not JSON.
    pub json: Value,
}

impl Reply {
    /// Asserts the status, showing the body when it differs.
    pub fn assert_status(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.text());
        self
    }

    /// Asserts a contract refusal: this status, `application/json`, and a body
    /// of exactly `code` and a non-empty `message`.
    pub fn assert_refused(&self, status: StatusCode, code: &str) -> &Self {
        self.assert_status(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{self:?}"
        );
        assert_eq!(self.json["code"], code, "body: {}", self.text());
        assert!(
            self.json["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            self.text()
        );
        assert_eq!(
            self.json.as_object().map(|o| o.len()),
            Some(2),
            "{}",
            self.text()
        );
        self
    }

    /// The one value of header `name`, if it is there and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `key` of a KeyView answer; fails the test if it has none.
    pub fn key(&self) -> String {
        self.json["key"]
            .as_str()
            .unwrap_or_else(|| panic!("no key in {}", self.text()))
            .to_owned()
    }
}

/// The client the tests speak HTTP/1.1 with.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Sends `req` with `client` and reads the whole answer.
pub async fn send_with(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    let res = client.request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        json,
    }
}

// ---------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------

/// How to build a [`Gateway`].
#[derive(Debug, Clone)]
pub struct Builder {
    upstream: Option<SocketAddr>,
    upstream_base: String,
    header_mode: bool,
    upstream_timeout_ms: u64,
    public_url: Option<String>,
    redb: bool,
    upstream_toml: Option<String>,
    proxy_keys: String,
    backend: Option<Arc<MemoryBackend>>,
}

impl Builder {
    /// Over `backend` instead of a fresh memory store: gateways started over
    /// one [`MemoryBackend::shared`] are the nodes of an in-process cluster.
    pub fn memory_backend(mut self, backend: Arc<MemoryBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// `proxy.upstream` written as given (a quoted URL or a TOML array),
    /// instead of the recording upstream's URL.
    pub fn upstream_toml(mut self, value: &str) -> Self {
        self.upstream_toml = Some(value.to_owned());
        self
    }

    /// More `[proxy]` keys, as TOML lines.
    pub fn proxy_keys(mut self, lines: &str) -> Self {
        self.proxy_keys.push_str(lines);
        self.proxy_keys.push('\n');
        self
    }

    /// Forward to `addr` instead of the recording upstream.
    pub fn upstream(mut self, addr: SocketAddr) -> Self {
        self.upstream = Some(addr);
        self
    }

    /// A base path on the upstream URL (`/api`), which forwarded paths follow.
    pub fn upstream_base(mut self, base: &str) -> Self {
        self.upstream_base = base.to_owned();
        self
    }

    /// `org_from = "header"` (the org in `x-org-id`).
    pub fn header_mode(mut self) -> Self {
        self.header_mode = true;
        self
    }

    /// `proxy.upstream_timeout_ms`.
    pub fn upstream_timeout_ms(mut self, ms: u64) -> Self {
        self.upstream_timeout_ms = ms;
        self
    }

    /// `proxy.public_url`.
    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.to_owned());
        self
    }

    /// A [`RedbBackend`] in a temporary folder instead of a [`MemoryBackend`].
    pub fn redb(mut self) -> Self {
        self.redb = true;
        self
    }

    /// Starts the recording upstream and keygate.
    pub async fn start(self) -> Gateway {
        let upstream = Upstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("keygate.redb");
        let target = self.upstream.unwrap_or(upstream.addr);
        let url = self
            .upstream_toml
            .clone()
            .unwrap_or_else(|| format!("\"http://{target}{}\"", self.upstream_base));
        let mut proxy = format!(
            "listen = \"127.0.0.1:0\"\n\
             upstream = {url}\n\
             upstream_timeout_ms = {}\n{}",
            self.upstream_timeout_ms, self.proxy_keys
        );
        if !self.proxy_keys.contains("connect_timeout_ms") {
            // The upstream timeout includes the connect, so it may not be shorter.
            let connect = self.upstream_timeout_ms.min(2_000);
            proxy.push_str(&format!("connect_timeout_ms = {connect}\n"));
        }
        if self.header_mode {
            proxy.push_str("org_from = \"header\"\norg_header = \"x-org-id\"\n");
        }
        if let Some(url) = &self.public_url {
            proxy.push_str(&format!("public_url = \"{url}\"\n"));
        }
        // Limits high enough that only tests that lower them meet them.
        let toml = format!(
            "[proxy]\n{proxy}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\n\
             [store]\npath = {path:?}\n\n\
             [limits]\nrate_per_sec = 100000\nburst = 100000\n",
            digest = TokenDigest::of(PROVIDER).to_hex(),
            path = store_path.display().to_string(),
        );
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let clock = Arc::new(ManualClock::new(T0));
        let memory = (!self.redb).then(|| {
            self.backend
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryBackend::new()))
        });
        let running = launch(&config, memory.as_ref(), &store_path, &clock).await;
        Gateway {
            proxy_addr: running.proxy_addr,
            admin_addr: running.admin_addr,
            upstream,
            clock,
            client: Client::builder(TokioExecutor::new()).build_http(),
            config,
            memory,
            store_path,
            running: Some(running),
            _dir: dir,
        }
    }
}

/// Starts keygate over the memory backend, or else over the redb file at
/// `store_path`.
async fn launch(
    config: &Config,
    memory: Option<&Arc<MemoryBackend>>,
    store_path: &Path,
    clock: &Arc<ManualClock>,
) -> Running {
    let backend: Arc<dyn Backend> = match memory {
        Some(memory) => Arc::clone(memory) as Arc<dyn Backend>,
        None => {
            let path = store_path.to_owned();
            let opened = tokio::task::spawn_blocking(move || RedbBackend::open(&path))
                .await
                .unwrap();
            Arc::new(opened.unwrap())
        }
    };
    let clock = Arc::clone(clock) as Arc<dyn Clock>;
    server::start_with(config, backend, clock).await.unwrap()
}

/// keygate on `127.0.0.1:0`, with its recording upstream, its clock and a client.
pub struct Gateway {
    /// The proxy listener.
    pub proxy_addr: SocketAddr,
    /// The admin listener.
    pub admin_addr: SocketAddr,
    /// The recording upstream (the target unless the builder named another).
    pub upstream: Upstream,
    /// keygate's clock; only tests move it.
    pub clock: Arc<ManualClock>,
    client: HttpClient,
    config: Config,
    memory: Option<Arc<MemoryBackend>>,
    store_path: PathBuf,
    running: Option<Running>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// The defaults: path mode, a memory store, a 10 s upstream timeout.
    pub fn builder() -> Builder {
        Builder {
            upstream: None,
            upstream_base: String::new(),
            header_mode: false,
            upstream_timeout_ms: 10_000,
            public_url: None,
            redb: false,
            upstream_toml: None,
            proxy_keys: String::new(),
            backend: None,
        }
    }

    /// A gateway with the defaults.
    pub async fn start() -> Gateway {
        Gateway::builder().start().await
    }

    /// Stops keygate and starts it again over the same store (reopening the
    /// file when it is redb), with the same clock. The addresses change.
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        // A fresh client: the old one's pooled connections went with the old
        // listeners.
        self.client = Client::builder(TokioExecutor::new()).build_http();
        let running = launch(
            &self.config,
            self.memory.as_ref(),
            &self.store_path,
            &self.clock,
        )
        .await;
        self.proxy_addr = running.proxy_addr;
        self.admin_addr = running.admin_addr;
        self.running = Some(running);
    }

    /// The store's backend, when it is a [`MemoryBackend`] (to make its
    /// commits fail).
    pub fn memory(&self) -> &MemoryBackend {
        self.memory
            .as_deref()
            .expect("a gateway over a memory store")
    }

    /// Writes `request` as it is to the proxy listener and returns everything
    /// keygate answers until it closes the connection (send `Connection: close`).
    pub async fn raw(&self, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.proxy_addr)
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// The current time of keygate's clock.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Moves keygate's clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    // --- the proxy listener ----------------------------------------------

    /// A request to the proxy listener at `path` (`/acme/v1/users?x=1`).
    pub fn proxy_request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy_addr))
    }

    /// Sends any request and reads the whole answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        send_with(&self.client, req).await
    }

    /// A handle to the gateway's client, for requests sent from other tasks
    /// with [`send_with`].
    pub fn client(&self) -> HttpClient {
        self.client.clone()
    }

    /// `method path` through the proxy, with `x-api-key: key` when given.
    pub async fn call(&self, method: Method, path: &str, key: Option<&str>) -> Reply {
        let mut req = self.proxy_request(method, path);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        self.send(req.body(Full::default()).unwrap()).await
    }

    /// `GET path` through the proxy with `key`.
    pub async fn get_with(&self, path: &str, key: &str) -> Reply {
        self.call(Method::GET, path, Some(key)).await
    }

    // --- the admin listener ----------------------------------------------

    /// `method path` on the admin listener, with a bearer token and a JSON body
    /// when given.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        match body {
            Some(body) => {
                self.admin_raw(
                    method,
                    path,
                    token,
                    Some("application/json"),
                    serde_json::to_vec(body).unwrap(),
                )
                .await
            }
            None => self.admin_raw(method, path, token, None, Vec::new()).await,
        }
    }

    /// `method path` on the admin listener with exactly this content type and body.
    pub async fn admin_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin_addr));
        if let Some(token) = token {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            req = req.header(CONTENT_TYPE, content_type);
        }
        self.send(req.body(Full::new(body.into())).unwrap()).await
    }

    /// `GET path` on the admin listener.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.admin(Method::GET, path, token, None).await
    }

    /// `POST path` on the admin listener.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        self.admin(Method::POST, path, token, body.as_ref()).await
    }

    /// `PUT path` on the admin listener.
    pub async fn put(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        self.admin(Method::PUT, path, token, body.as_ref()).await
    }

    /// `DELETE path` on the admin listener.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.admin(Method::DELETE, path, token, None).await
    }

    // --- the provider's chores -------------------------------------------

    /// Provisions `org` as the provider and returns its key.
    pub async fn provision(&self, org: &str) -> String {
        let r = self
            .post("/v1/orgs", Some(PROVIDER), Some(json!({ "org": org })))
            .await;
        r.assert_status(StatusCode::CREATED);
        r.key()
    }

    /// Creates a token as the provider and returns it.
    pub async fn token(&self, name: &str, role: &str, org: &str) -> String {
        let r = self
            .post(
                "/v1/tokens",
                Some(PROVIDER),
                Some(json!({ "name": name, "role": role, "org": org })),
            )
            .await;
        r.assert_status(StatusCode::CREATED);
        r.json["token"].as_str().unwrap().to_owned()
    }

    /// The org's key page as the provider sees it.
    pub async fn page(&self, org: &str) -> Value {
        let r = self
            .get(&format!("/v1/orgs/{org}/key"), Some(PROVIDER))
            .await;
        r.assert_status(StatusCode::OK);
        r.json
    }

    /// Sets the org's limits as the provider.
    pub async fn set_limits(&self, org: &str, limits: Value) {
        self.put(
            &format!("/v1/orgs/{org}/limits"),
            Some(PROVIDER),
            Some(limits),
        )
        .await
        .assert_status(StatusCode::OK);
    }

    /// Disables the org's key as the provider.
    pub async fn disable(&self, org: &str, reason: &str) {
        self.post(
            &format!("/v1/orgs/{org}/disable"),
            Some(PROVIDER),
            Some(json!({ "reason": reason })),
        )
        .await
        .assert_status(StatusCode::OK);
    }

    /// Ends the org's subscription an hour from now, then moves the clock two
    /// hours on.
    pub async fn expire(&self, org: &str) {
        let end = self.now().saturating_add(Duration::from_secs(3600));
        self.put(
            &format!("/v1/orgs/{org}/subscription"),
            Some(PROVIDER),
            Some(json!({ "expires_at": end.to_rfc3339() })),
        )
        .await
        .assert_status(StatusCode::OK);
        self.advance(Duration::from_secs(2 * 3600));
    }
}

// ---------------------------------------------------------------------------
// Raw bytes on the wire
// ---------------------------------------------------------------------------

impl Gateway {
    /// Writes `request` byte for byte to the proxy listener and parses what
    /// keygate answers until it closes the connection (send `Connection:
    /// close`). For requests the `http` types refuse to build.
    pub async fn raw_proxy(&self, request: &[u8]) -> Reply {
        parse_reply(&raw_exchange(self.proxy_addr, request).await)
    }

    /// [`Gateway::raw_proxy`] for the admin listener.
    pub async fn raw_admin(&self, request: &[u8]) -> Reply {
        parse_reply(&raw_exchange(self.admin_addr, request).await)
    }
}

impl Upstream {
    /// Forgets every request received so far and returns how many there were,
    /// so a test that sends many large requests does not measure the record
    /// kept here as keygate's memory.
    pub fn forget(&self) -> usize {
        let mut seen = self.seen.lock().unwrap();
        let n = seen.len();
        seen.clear();
        n
    }
}

/// Writes `request` to `addr` and reads until the peer closes. A reset after
/// an answer (a server that closes with unread request bytes) ends the read
/// with what arrived.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading all of a large request.
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    answer
}

/// Parses one HTTP/1.1 answer (status line, headers, a body by
/// `content-length`, chunks or the end of the connection) into a [`Reply`].
/// Fails the test on anything that is not an HTTP/1.1 answer.
pub fn parse_reply(answer: &[u8]) -> Reply {
    let shown = || String::from_utf8_lossy(answer).into_owned();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", shown()));
    let head = std::str::from_utf8(&answer[..split]).unwrap_or_else(|_| panic!("{}", shown()));
    let rest = &answer[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or_else(|| panic!("no status line in {:?}", shown()));
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("bad header line {line:?}"));
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            HeaderValue::from_str(value.trim()).unwrap(),
        );
    }
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let body = if chunked {
        dechunk(rest)
    } else if let Some(len) = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        rest[..len.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    let body = Bytes::from(body);
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        json,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size = std::str::from_utf8(&rest[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 {
            return body;
        }
        let start = eol + 2;
        let end = (start + size).min(rest.len());
        body.extend_from_slice(&rest[start..end]);
        rest = rest.get(end + 2..).unwrap_or_default();
    }
}

/// The resident set size of this process (where keygate runs in the tests),
/// in bytes, from `/proc/self/status`; `None` where there is no such file.
pub fn vm_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
