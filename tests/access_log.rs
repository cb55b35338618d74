//! The access log, read from the stderr of the real binary: one line per
//! proxied request, with what the README promises in it and never a key or,
//! unless switched on, a query string; none at all when switched off.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc};

/// From spawn to the `keygate listening` line.
const START_LIMIT: Duration = Duration::from_secs(20);
/// One exchange, or the wait for a log line.
const LIMIT: Duration = Duration::from_secs(10);
/// The target every access line is logged under.
const TARGET: &str = "keygate::access:";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// `keygate serve` over `env`, with `[proxy]` keys `proxy_keys` added.
struct Gateway {
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
    client: HttpClient,
}

impl Gateway {
    async fn start(env: &Env, proxy_keys: &str, upstream: Option<SocketAddr>) -> Gateway {
        let mut text = std::fs::read_to_string(&env.config).unwrap();
        text = text.replacen("[proxy]\n", &format!("[proxy]\n{proxy_keys}\n"), 1);
        if let Some(addr) = upstream {
            let start = text.find("upstream = ").unwrap();
            let end = start + text[start..].find('\n').unwrap();
            text.replace_range(start..end, &format!("upstream = \"http://{addr}\""));
        }
        std::fs::write(&env.config, text).unwrap();
        let mut proc = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
        let (proxy, admin) = proc.listening(START_LIMIT).await;
        Gateway {
            proc,
            proxy,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Status and body of one exchange.
    async fn send(&self, req: Request<Full<Bytes>>) -> (u16, Bytes) {
        let exchange = async {
            let res = self.client.request(req).await.unwrap();
            let status = res.status().as_u16();
            (status, res.into_body().collect().await.unwrap().to_bytes())
        };
        tokio::time::timeout(LIMIT, exchange)
            .await
            .expect("an answer")
    }

    /// Provisions `org` and returns its key.
    async fn provision(&self, env: &Env, org: &str) -> String {
        let req = Request::post(format!("http://{}/v1/orgs", self.admin))
            .header("authorization", format!("Bearer {}", env.provider))
            .header("content-type", "application/json")
            .body(Full::from(format!(r#"{{"org":"{org}"}}"#)))
            .unwrap();
        let (status, body) = self.send(req).await;
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
        let page: Value = serde_json::from_slice(&body).unwrap();
        page["key"].as_str().unwrap().to_owned()
    }

    /// A proxied call.
    async fn proxy(&self, method: Method, path: &str, key: &str, body: &str) -> (u16, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.proxy))
            .header("x-api-key", key)
            .body(Full::from(body.to_owned()))
            .unwrap();
        self.send(req).await
    }

    /// The access lines written so far.
    fn access_lines(&self) -> Vec<String> {
        self.proc
            .stderr()
            .lines()
            .filter(|l| l.contains(TARGET))
            .map(str::to_owned)
            .collect()
    }

    /// Waits, at most [`LIMIT`], for `n` access lines.
    async fn wait_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + LIMIT;
        loop {
            let lines = self.access_lines();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} access lines, not {n}:\n{}",
                lines.len(),
                self.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The value of `name=` in `line`.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_request_and_a_refusal_each_get_one_line_without_key_or_query() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "", None).await;
    let key = gw.provision(&env, "acme").await;

    let (status, answer) = gw
        .proxy(
            Method::POST,
            "/acme/v1/hello?secret=s3cr3t",
            &key,
            "hello world",
        )
        .await;
    assert_eq!(status, 200);
    let wrong = "WrongKey1234";
    let (status, refusal) = gw
        .proxy(Method::GET, "/acme/v1/users?token=t0k3n", wrong, "")
        .await;
    assert_eq!(status, 401);

    let lines = gw.wait_lines(2).await;
    assert_eq!(lines.len(), 2, "{lines:#?}");
    let forwarded = &lines[0];
    assert_eq!(field(forwarded, "org"), "acme", "{forwarded}");
    assert_eq!(field(forwarded, "method"), "POST", "{forwarded}");
    assert_eq!(field(forwarded, "path"), "/acme/v1/hello", "{forwarded}");
    assert_eq!(field(forwarded, "status"), "200", "{forwarded}");
    assert_eq!(field(forwarded, "code"), "forwarded", "{forwarded}");
    assert_eq!(field(forwarded, "bytes_in"), "11", "{forwarded}");
    assert_eq!(
        field(forwarded, "bytes_out"),
        answer.len().to_string(),
        "{forwarded}"
    );
    assert_eq!(field(forwarded, "complete"), "true", "{forwarded}");
    field(forwarded, "keygate_us").parse::<u64>().unwrap();
    field(forwarded, "upstream_us").parse::<u64>().unwrap();

    let refused = &lines[1];
    assert_eq!(field(refused, "org"), "-", "{refused}");
    assert_eq!(field(refused, "method"), "GET", "{refused}");
    assert_eq!(field(refused, "path"), "/acme/v1/users", "{refused}");
    assert_eq!(field(refused, "status"), "401", "{refused}");
    assert_eq!(field(refused, "code"), "INVALID_KEY", "{refused}");
    assert_eq!(field(refused, "bytes_in"), "0", "{refused}");
    assert_eq!(
        field(refused, "bytes_out"),
        refusal.len().to_string(),
        "{refused}"
    );
    assert_eq!(field(refused, "upstream_us"), "-", "{refused}");

    let stderr = gw.proc.stderr();
    for secret in [key.as_str(), wrong, "s3cr3t", "t0k3n", "secret=", "token="] {
        assert!(!stderr.contains(secret), "{secret:?} logged:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusal_after_the_key_matched_names_the_org() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "", None).await;
    let key = gw.provision(&env, "acme").await;
    let req = Request::post(format!("http://{}/v1/orgs/acme/disable", gw.admin))
        .header("authorization", format!("Bearer {}", env.provider))
        .header("content-type", "application/json")
        .body(Full::from(r#"{"reason":"test"}"#))
        .unwrap();
    assert_eq!(gw.send(req).await.0, 200);

    assert_eq!(gw.proxy(Method::GET, "/acme/x", &key, "").await.0, 403);
    let lines = gw.wait_lines(1).await;
    assert_eq!(field(&lines[0], "org"), "acme", "{}", lines[0]);
    assert_eq!(field(&lines[0], "code"), "KEY_DISABLED", "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_query_is_logged_only_when_switched_on() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "access_log_query = true", None).await;
    let key = gw.provision(&env, "acme").await;
    assert_eq!(
        gw.proxy(Method::GET, "/acme/v1?x=1&y=2", &key, "").await.0,
        200
    );
    let lines = gw.wait_lines(1).await;
    assert_eq!(field(&lines[0], "path"), "/acme/v1?x=1&y=2", "{}", lines[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_access_log_off_no_line_is_written() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "access_log = false", None).await;
    let key = gw.provision(&env, "acme").await;
    assert_eq!(gw.proxy(Method::GET, "/acme/v1", &key, "").await.0, 200);
    assert_eq!(gw.proxy(Method::GET, "/acme/v1", "nope", "").await.0, 401);
    // The other requests' lines would have been written before their answers'
    // ends; a request after them is a marker that all of it is on stderr.
    assert_eq!(gw.proxy(Method::GET, "/acme/v1", &key, "").await.0, 200);
    let stderr = gw.proc.stderr();
    assert!(stderr.contains("keygate listening"), "{stderr}");
    assert!(gw.access_lines().is_empty(), "{stderr}");
}

/// An upstream that answers every request with the head of a 1,000-byte body
/// and its first 10 bytes, then holds the connection open.
async fn stalling_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_mid_body_still_gets_a_line_marked_incomplete() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "", Some(stalling_upstream().await)).await;
    let key = gw.provision(&env, "acme").await;

    let mut client = TcpStream::connect(gw.proxy).await.unwrap();
    let head = format!("GET /acme/big HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    // Read until the 10 body bytes are in, then hang up.
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while !got.ends_with(b"0123456789") {
            let mut buf = [0u8; 1024];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the head and 10 bytes");
    assert!(gw.access_lines().is_empty());
    drop(client);

    let lines = gw.wait_lines(1).await;
    let line = &lines[0];
    assert_eq!(field(line, "status"), "200", "{line}");
    assert_eq!(field(line, "bytes_out"), "10", "{line}");
    assert_eq!(field(line, "complete"), "false", "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_line_names_the_request_id_the_client_got() {
    let env = Env::new("").await;
    let gw = Gateway::start(&env, "", None).await;
    let key = gw.provision(&env, "acme").await;

    let mut got = Vec::new();
    for id in [Some("trace-me-1"), None] {
        let mut req =
            Request::get(format!("http://{}/acme/v1/users", gw.proxy)).header("x-api-key", &key);
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        let res = gw
            .client
            .request(req.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        got.push(res.headers()["x-request-id"].to_str().unwrap().to_owned());
        res.into_body().collect().await.unwrap();
    }

    assert_eq!(got[0], "trace-me-1");
    let lines = gw.wait_lines(2).await;
    for (line, id) in lines.iter().zip(&got) {
        assert_eq!(field(line, "request_id"), id, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_log_format_json_every_line_is_json_and_the_access_line_has_the_request_id() {
    let env = Env::new("[log]\nformat = \"json\"\n").await;
    let mut proc = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
    let deadline = Instant::now() + START_LIMIT;
    let listening: Value = loop {
        if let Some(line) = proc
            .stderr()
            .lines()
            .find(|l| l.contains("keygate listening"))
        {
            break serde_json::from_str(line).expect("a JSON line");
        }
        assert!(proc.exited().is_none(), "exited:\n{}", proc.stderr());
        assert!(
            Instant::now() < deadline,
            "not listening:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let addr =
        |name: &str| -> SocketAddr { listening["fields"][name].as_str().unwrap().parse().unwrap() };
    let (proxy, _admin) = (addr("proxy_addr"), addr("admin_addr"));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let res = client
        .request(
            Request::get(format!("http://{proxy}/acme/v1/users"))
                .header("x-request-id", "json-req-9")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    res.into_body().collect().await.unwrap();

    let deadline = Instant::now() + LIMIT;
    let access: Value = loop {
        let found = proc
            .stderr()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|v| v["target"] == "keygate::access");
        if let Some(v) = found {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no access line:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(access["fields"]["request_id"], "json-req-9", "{access}");
    assert_eq!(access["fields"]["code"], "MISSING_KEY", "{access}");
    proc.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_format_flag_overrides_the_config() {
    let env = Env::new("[log]\nformat = \"text\"\n").await;
    let mut cmd = serve_command(&env.config, "info");
    cmd.args(["--log-format", "json"]);
    let mut proc = Proc::spawn("keygate serve", cmd);
    let deadline = Instant::now() + START_LIMIT;
    let line = loop {
        if let Some(line) = proc
            .stderr()
            .lines()
            .find(|l| l.contains("keygate listening"))
        {
            break line.to_owned();
        }
        assert!(proc.exited().is_none(), "exited:\n{}", proc.stderr());
        assert!(
            Instant::now() < deadline,
            "not listening:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["fields"]["message"], "keygate listening", "{v}");
    proc.kill();
}
