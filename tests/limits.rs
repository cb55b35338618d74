//! The listeners' resource limits over real sockets: the head timeout, the head
//! size cap, the idle keep-alive timeout, the connection cap and the graceful
//! stop, on the proxy listener and on the admin listener, each with its own keys.
//!
//! Clients here are raw TCP streams, so that a test controls every byte and
//! every pause. Timeouts are short (hundreds of milliseconds); waits for
//! keygate to act are bounded by generous deadlines, and nothing asserts on
//! how long keygate took.

mod support;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use keygate::clock::{Clock, ManualClock};
use keygate::config::Config;
use keygate::server::{self, ProxyWorkers, Running, ServeOptions};
use keygate::store::{Backend, MemoryBackend};
use keygate::token::TokenDigest;
use support::{Answer, Upstream, PROVIDER, T0};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for anything keygate should do, short enough to fail fast.
const PATIENCE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// keygate with chosen limits
// ---------------------------------------------------------------------------

/// keygate on `127.0.0.1:0` with a recording upstream and the org `acme`.
struct Keygate {
    proxy: SocketAddr,
    admin: SocketAddr,
    upstream: Upstream,
    /// `acme`'s key.
    key: String,
    running: Option<Running>,
}

impl Keygate {
    /// Starts keygate with extra `[proxy]` and `[admin]` keys.
    async fn start(proxy_keys: &str, admin_keys: &str) -> Keygate {
        Keygate::start_to(None, proxy_keys, admin_keys).await
    }

    /// [`start`](Keygate::start), forwarding to `to` instead of the recording
    /// upstream when given.
    async fn start_to(to: Option<SocketAddr>, proxy_keys: &str, admin_keys: &str) -> Keygate {
        Keygate::start_on(to, proxy_keys, admin_keys, ProxyWorkers::Here).await
    }

    /// [`start`](Keygate::start), the proxy served by `threads` worker
    /// threads of its own, as `keygate serve` does by default.
    async fn start_threads(threads: usize, proxy_keys: &str) -> Keygate {
        let threads = ProxyWorkers::Threads(NonZeroUsize::new(threads).unwrap());
        Keygate::start_on(None, proxy_keys, "", threads).await
    }

    async fn start_on(
        to: Option<SocketAddr>,
        proxy_keys: &str,
        admin_keys: &str,
        workers: ProxyWorkers,
    ) -> Keygate {
        let upstream = Upstream::start().await;
        let toml = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n{proxy_keys}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n{admin_keys}\n\
             [limits]\nrate_per_sec = 100000\nburst = 100000\n",
            up = to.unwrap_or(upstream.addr),
            digest = TokenDigest::of(PROVIDER).to_hex(),
        );
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let backend = Arc::new(MemoryBackend::new()) as Arc<dyn Backend>;
        let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
        let options = ServeOptions {
            workers,
            ..ServeOptions::default()
        };
        let running = server::start_with_options(&config, backend, clock, options)
            .await
            .unwrap();
        let mut keygate = Keygate {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            upstream,
            key: String::new(),
            running: Some(running),
        };
        keygate.key = keygate.provision("acme").await;
        keygate
    }

    /// Provisions `org` as the provider; returns its key.
    async fn provision(&self, org: &str) -> String {
        let body = format!(r#"{{"org":"{org}"}}"#);
        let request = format!(
            "POST /v1/orgs HTTP/1.1\r\nhost: keygate\r\nauthorization: Bearer {PROVIDER}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(self.admin).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let got = read_answer(&mut stream).await.unwrap();
        assert_eq!(got.status, 201, "{}", got.text());
        let view: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
        view["key"].as_str().unwrap().to_owned()
    }

    /// A well-formed keep-alive request to the proxy that the upstream answers.
    fn proxy_request(&self) -> String {
        format!(
            "GET /acme/v1/users HTTP/1.1\r\nhost: keygate\r\nx-api-key: {}\r\n\r\n",
            self.key
        )
    }

    /// A listener and a request it answers with 200.
    fn proxy_target(&self) -> Target {
        Target {
            addr: self.proxy,
            request: self.proxy_request(),
        }
    }

    /// The admin listener and `GET /healthz`.
    fn admin_target(&self) -> Target {
        Target {
            addr: self.admin,
            request: "GET /healthz HTTP/1.1\r\nhost: keygate\r\n\r\n".to_owned(),
        }
    }

    /// Stops keygate (as SIGTERM would).
    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }
}

/// A listener and a request it answers with 200 and keeps the connection.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    request: String,
}

impl Target {
    /// The request with `extra` header lines (each ending in `\r\n`) added.
    fn with_headers(&self, extra: &str) -> String {
        let head = self.request.strip_suffix("\r\n").unwrap();
        format!("{head}{extra}\r\n")
    }

    /// Opens a connection and has one request answered on it: 200.
    async fn served_connection(&self) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(self.request.as_bytes()).await.unwrap();
        let got = tokio::time::timeout(PATIENCE, read_answer(&mut stream))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(got.status, 200, "{}", got.text());
        stream
    }

    /// Sends `request` on a new connection and returns the first answer.
    async fn exchange(&self, request: &[u8]) -> Got {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        // keygate may answer and close before reading all of a large request.
        let _ = stream.write_all(request).await;
        tokio::time::timeout(PATIENCE, read_answer(&mut stream))
            .await
            .expect("an answer in time")
            .unwrap()
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------

/// One answer as read off the wire.
#[derive(Debug)]
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Got {
    fn text(&self) -> String {
        format!("{}{}", self.head, String::from_utf8_lossy(&self.body))
    }
}

/// Reads one HTTP/1.1 answer, its body delimited by `content-length`.
async fn read_answer(stream: &mut TcpStream) -> std::io::Result<Got> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Got { status, head, body })
}

/// Whether the server closes `stream` within `within`; returns what it sent
/// before closing.
async fn closes_within(stream: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

/// Whether nothing at all arrives on `stream` for `quiet`.
async fn stays_silent(stream: &mut TcpStream, quiet: Duration) -> bool {
    let mut byte = [0u8; 1];
    tokio::time::timeout(quiet, stream.read(&mut byte))
        .await
        .is_err()
}

// ---------------------------------------------------------------------------
// Checks shared by both listeners
// ---------------------------------------------------------------------------

/// A client sending its head a line at a time, slower than the head timeout
/// allows in total, is cut off without an answer; a client on another
/// connection meanwhile is served.
async fn check_trickler_is_cut_off(target: &Target) {
    let stream = TcpStream::connect(target.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let first_line = target.request.lines().next().unwrap();
    write
        .write_all(format!("{first_line}\r\nhost: keygate\r\n").as_bytes())
        .await
        .unwrap();
    let trickle = tokio::spawn(async move {
        // Bounded: 100 lines over 5 s, far past the head timeout.
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if write
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    });

    // Another client is served while the trickler is being cut off.
    target.served_connection().await;

    let mut got = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, read.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the trickling client was not cut off");
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "the trickler got {:?}",
        String::from_utf8_lossy(&got)
    );
    trickle.abort();
    target.served_connection().await;
}

/// A client that connects and sends nothing is closed after the head timeout.
async fn check_silent_client_is_cut_off(target: &Target) {
    let mut silent = TcpStream::connect(target.addr).await.unwrap();
    let got = closes_within(&mut silent, PATIENCE).await;
    assert_eq!(
        got.as_deref(),
        Some(&b""[..]),
        "the silent client was not cut off"
    );
}

/// A head over 8 KiB is answered 431; one under it and a later request are
/// served.
async fn check_head_size_cap(target: &Target) {
    let small = target.with_headers(&format!("x-padding: {}\r\n", "p".repeat(4 * 1024)));
    assert_eq!(target.exchange(small.as_bytes()).await.status, 200);
    let big = target.with_headers(&format!("x-padding: {}\r\n", "p".repeat(40 * 1024)));
    let got = target.exchange(big.as_bytes()).await;
    assert_eq!(got.status, 431, "{}", got.text());
    target.served_connection().await;
}

/// An idle keep-alive connection is closed after the idle timeout, without an
/// answer to anything.
async fn check_idle_connection_is_closed(target: &Target) {
    let mut stream = target.served_connection().await;
    let got = closes_within(&mut stream, PATIENCE).await;
    assert_eq!(
        got.as_deref(),
        Some(&b""[..]),
        "the idle connection stayed open"
    );
}

/// With `max_connections = 2`, a third client waits unanswered while two are
/// open, and is served as soon as one of them closes.
async fn check_third_connection_waits_for_a_slot(target: &Target) {
    let first = target.served_connection().await;
    let _second = target.served_connection().await;

    let mut third = TcpStream::connect(target.addr).await.unwrap();
    third.write_all(target.request.as_bytes()).await.unwrap();
    assert!(
        stays_silent(&mut third, Duration::from_millis(500)).await,
        "the third connection was answered at once"
    );

    drop(first);
    let got = tokio::time::timeout(PATIENCE, read_answer(&mut third))
        .await
        .expect("the third connection was not served after one closed")
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
}

// ---------------------------------------------------------------------------
// The proxy listener
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_trickling_its_head_is_cut_off_while_others_are_served() {
    let keygate = Keygate::start("header_read_timeout_ms = 300", "").await;
    check_trickler_is_cut_off(&keygate.proxy_target()).await;
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_cut_off_after_the_head_timeout() {
    let keygate = Keygate::start("header_read_timeout_ms = 300", "").await;
    check_silent_client_is_cut_off(&keygate.proxy_target()).await;
}

#[tokio::test]
async fn a_head_over_max_header_bytes_gets_431_and_the_proxy_keeps_serving() {
    let keygate = Keygate::start("max_header_bytes = 8192", "").await;
    check_head_size_cap(&keygate.proxy_target()).await;
    // The refused request never reached the upstream.
    assert_eq!(keygate.upstream.count(), 2);
}

#[tokio::test]
async fn the_default_head_cap_is_64_kib() {
    let keygate = Keygate::start("", "").await;
    let target = keygate.proxy_target();
    let fits = target.with_headers(&format!("x-padding: {}\r\n", "p".repeat(30 * 1024)));
    assert_eq!(target.exchange(fits.as_bytes()).await.status, 200);
    let over = target.with_headers(&format!("x-padding: {}\r\n", "p".repeat(300 * 1024)));
    assert_eq!(target.exchange(over.as_bytes()).await.status, 431);
}

#[tokio::test]
async fn more_than_100_headers_get_431_on_either_listener() {
    let keygate = Keygate::start("", "").await;
    let headers = |n: usize| (0..n).map(|i| format!("x-h{i}: v\r\n")).collect::<String>();
    // The admin answers itself: host and 99 more make 100, still served.
    let admin = keygate.admin_target();
    let at_limit = admin.with_headers(&headers(99));
    assert_eq!(admin.exchange(at_limit.as_bytes()).await.status, 200);
    let got = admin
        .exchange(admin.with_headers(&headers(100)).as_bytes())
        .await;
    assert_eq!(got.status, 431, "{}", got.text());
    // The proxy refuses 101 itself: nothing reaches the upstream.
    let proxy = keygate.proxy_target();
    let got = proxy
        .exchange(proxy.with_headers(&headers(99)).as_bytes())
        .await;
    assert_eq!(got.status, 431, "{}", got.text());
    assert_eq!(keygate.upstream.count(), 0);
    proxy.served_connection().await;
    admin.served_connection().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // The head timeout is far longer: what closes the connection is the idle one.
    let keygate = Keygate::start("idle_timeout_ms = 200\nheader_read_timeout_ms = 60000", "").await;
    check_idle_connection_is_closed(&keygate.proxy_target()).await;
}

#[tokio::test]
async fn a_keep_alive_connection_may_idle_longer_than_the_head_timeout() {
    // hyper's own header timeout would close this connection after 200 ms.
    let keygate = Keygate::start("header_read_timeout_ms = 200\nidle_timeout_ms = 60000", "").await;
    let target = keygate.proxy_target();
    let mut stream = target.served_connection().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream.write_all(target.request.as_bytes()).await.unwrap();
    let got = read_answer(&mut stream).await.unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
}

#[tokio::test]
async fn a_request_in_flight_outlasts_the_head_and_idle_timeouts() {
    let keygate = Keygate::start("header_read_timeout_ms = 200\nidle_timeout_ms = 200", "").await;
    keygate.upstream.answer_with(Answer {
        delay: Some(Duration::from_millis(700)),
        ..Answer::default()
    });
    keygate.proxy_target().served_connection().await;
}

#[tokio::test]
async fn at_max_connections_a_new_client_waits_and_is_served_when_one_closes() {
    let keygate = Keygate::start("max_connections = 2", "").await;
    check_third_connection_waits_for_a_slot(&keygate.proxy_target()).await;
}

#[tokio::test]
async fn with_worker_threads_the_cap_holds_across_them_and_a_waiting_client_is_served() {
    // Three worker threads with a cap of two: whichever sockets the kernel
    // gives the three clients to, the third waits for one of the first two.
    let keygate = Keygate::start_threads(3, "max_connections = 2").await;
    check_third_connection_waits_for_a_slot(&keygate.proxy_target()).await;
}

#[tokio::test]
async fn with_worker_threads_every_worker_serves_the_gate_and_the_readiness_probe() {
    let keygate = Keygate::start_threads(2, "").await;
    // Enough connections that the kernel's spread reaches both sockets.
    for _ in 0..8 {
        let mut stream = TcpStream::connect(keygate.proxy).await.unwrap();
        let wrong = format!(
            "GET /acme/v1/x HTTP/1.1\r\nhost: keygate\r\nx-api-key: {}\r\n\r\n",
            "Wrong0000000"
        );
        for (request, status) in [
            (keygate.proxy_request(), 200),
            (wrong, 401),
            (
                "GET /_keygate/ready HTTP/1.1\r\nhost: keygate\r\n\r\n".to_owned(),
                200,
            ),
        ] {
            stream.write_all(request.as_bytes()).await.unwrap();
            let got = tokio::time::timeout(PATIENCE, read_answer(&mut stream))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.status, status, "{}", got.text());
        }
    }
}

#[tokio::test]
async fn stop_finishes_requests_in_flight_and_refuses_new_connections() {
    check_stop_drains(Keygate::start("", "").await).await;
}

#[tokio::test]
async fn stop_drains_every_worker_thread() {
    check_stop_drains(Keygate::start_threads(2, "").await).await;
}

/// Stop lets the request in flight finish, closes an idle keep-alive
/// connection, and refuses new connections on both listeners.
async fn check_stop_drains(mut keygate: Keygate) {
    let target = keygate.proxy_target();
    let mut idle = target.served_connection().await;
    keygate.upstream.answer_with(Answer {
        delay: Some(Duration::from_millis(300)),
        ..Answer::default()
    });
    let mut busy = TcpStream::connect(keygate.proxy).await.unwrap();
    busy.write_all(target.request.as_bytes()).await.unwrap();
    let in_flight = tokio::spawn(async move { read_answer(&mut busy).await });
    // The upstream has the request (and is sitting on it) before stop begins.
    tokio::time::timeout(PATIENCE, async {
        while keygate.upstream.count() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();

    let (proxy, admin) = (keygate.proxy, keygate.admin);
    let stopping = tokio::spawn(async move {
        keygate.stop().await;
        keygate
    });

    // New connections are refused on both listeners once stop has begun.
    for addr in [proxy, admin] {
        tokio::time::timeout(PATIENCE, async {
            while TcpStream::connect(addr).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{addr} still accepts connections"));
    }

    // The request in flight is answered in full, and its connection then ends.
    let got = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, b"upstream");
    // The idle keep-alive connection is closed, not left to its timeout.
    assert_eq!(
        closes_within(&mut idle, PATIENCE).await.as_deref(),
        Some(&b""[..])
    );
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("stop returned")
        .unwrap();
}

// ---------------------------------------------------------------------------
// The admin listener: the same limits, its own keys
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_admin_listener_cuts_off_a_trickling_client() {
    let keygate = Keygate::start("", "header_read_timeout_ms = 300").await;
    check_trickler_is_cut_off(&keygate.admin_target()).await;
    check_silent_client_is_cut_off(&keygate.admin_target()).await;
}

#[tokio::test]
async fn the_admin_listener_answers_431_to_a_head_over_its_cap() {
    let keygate = Keygate::start("", "max_header_bytes = 8192").await;
    check_head_size_cap(&keygate.admin_target()).await;
    // The proxy keeps its own, larger cap.
    let target = keygate.proxy_target();
    let fits = target.with_headers(&format!("x-padding: {}\r\n", "p".repeat(30 * 1024)));
    assert_eq!(target.exchange(fits.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn the_admin_listener_closes_idle_connections() {
    let keygate = Keygate::start("", "idle_timeout_ms = 200").await;
    check_idle_connection_is_closed(&keygate.admin_target()).await;
}

#[tokio::test]
async fn the_admin_listener_has_its_own_connection_cap() {
    let keygate = Keygate::start("", "max_connections = 2").await;
    check_third_connection_waits_for_a_slot(&keygate.admin_target()).await;
    // The proxy is not held by the admin listener's cap.
    let proxy = keygate.proxy_target();
    let _a = proxy.served_connection().await;
    let _b = proxy.served_connection().await;
    let _c = proxy.served_connection().await;
}

// ---------------------------------------------------------------------------
// Bodies: nothing is held forever after the head
// ---------------------------------------------------------------------------

/// The head of a request to `path` with a `content-length` of `length`.
fn post_head(path: &str, auth: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: keygate\r\n{auth}content-type: application/json\r\n\
         content-length: {length}\r\n\r\n"
    )
}

/// Sends a head promising 1,000 body bytes and 10 of them, then nothing: the
/// answer is 408 `REQUEST_TIMEOUT` and the connection is closed.
async fn check_stalled_body_gets_408(addr: SocketAddr, head: &str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[b'x'; 10]).await.unwrap();
    let got = tokio::time::timeout(PATIENCE, read_answer(&mut stream))
        .await
        .expect("an answer once the body timed out")
        .unwrap();
    assert_eq!(got.status, 408, "{}", got.text());
    let body: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(body["code"], "REQUEST_TIMEOUT", "{}", got.text());
    assert!(
        closes_within(&mut stream, PATIENCE).await.is_some(),
        "the connection stayed open after the body timed out"
    );
}

#[tokio::test]
async fn a_proxied_request_body_that_stops_arriving_gets_408_and_is_closed() {
    let keygate = Keygate::start("body_read_timeout_ms = 300", "").await;
    let head = post_head(
        "/acme/v1/upload",
        &format!("x-api-key: {}\r\n", keygate.key),
        1000,
    );
    check_stalled_body_gets_408(keygate.proxy, &head).await;
    // The upstream saw the request start but never a whole body.
    assert!(keygate.upstream.seen().iter().all(|s| s.body.len() < 1000));
    keygate.proxy_target().served_connection().await;
}

#[tokio::test]
async fn a_proxied_body_arriving_slowly_but_steadily_is_forwarded_whole() {
    // 20 bytes, one every 100 ms: 2 s in all, each gap under the 400 ms limit.
    let keygate = Keygate::start("body_read_timeout_ms = 400", "").await;
    let mut stream = TcpStream::connect(keygate.proxy).await.unwrap();
    let head = post_head(
        "/acme/v1/upload",
        &format!("x-api-key: {}\r\n", keygate.key),
        20,
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stream.write_all(b"y").await.unwrap();
    }
    let got = tokio::time::timeout(PATIENCE, read_answer(&mut stream))
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(keygate.upstream.only().body, vec![b'y'; 20]);
}

#[tokio::test]
async fn an_admin_body_that_stops_arriving_gets_408_and_is_closed() {
    let keygate = Keygate::start("", "body_timeout_ms = 300").await;
    let head = post_head(
        "/v1/orgs",
        &format!("authorization: Bearer {PROVIDER}\r\n"),
        1000,
    );
    check_stalled_body_gets_408(keygate.admin, &head).await;
}

#[tokio::test]
async fn clients_trickling_admin_bodies_on_every_slot_do_not_lock_the_provider_out() {
    // The issue's flood, scaled down: more tricklers than slots, each sending
    // the head of `POST /v1/orgs` and then one body byte every 200 ms, for up
    // to 30 s. Without a deadline for the whole body they hold every slot for
    // the full 30 s; with it, each is cut off after 500 ms and the provider's
    // call, waiting in the listen backlog behind a few of them, is served.
    let keygate = Keygate::start("", "max_connections = 8\nbody_timeout_ms = 500").await;
    let head = post_head(
        "/v1/orgs",
        &format!("authorization: Bearer {PROVIDER}\r\n"),
        65_536,
    );
    let mut tricklers = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (addr, head) = (keygate.admin, head.clone());
        tricklers.spawn(async move {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                return None;
            };
            if stream.write_all(head.as_bytes()).await.is_err() {
                return None;
            }
            for _ in 0..150 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
            }
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
            Some(rest)
        });
    }
    // Let the tricklers take every slot first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let list = format!(
        "GET /v1/orgs HTTP/1.1\r\nhost: keygate\r\nauthorization: Bearer {PROVIDER}\r\n\r\n"
    );
    let target = Target {
        addr: keygate.admin,
        request: list,
    };
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        target.exchange(target.request.as_bytes()).await
    })
    .await
    .expect("the provider was locked out by the tricklers");
    assert_eq!(got.status, 200, "{}", got.text());
    // Every trickler that got in was answered 408, not left hanging.
    let mut answered = 0;
    while let Some(done) = tricklers.join_next().await {
        if let Some(rest) = done.unwrap() {
            assert!(
                rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&rest)
            );
            answered += usize::from(!rest.is_empty());
        }
    }
    assert!(answered >= 8, "only {answered} tricklers were answered 408");
}

#[tokio::test]
async fn an_upstream_answer_that_stops_arriving_closes_both_connections() {
    // An upstream that sends its answer's head and 10 of 1,000 promised bytes,
    // then goes silent; it reports whether keygate closed its connection.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    let upstream_closed = tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut head = Vec::new();
        let mut chunk = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "keygate closed before sending the request");
            head.extend_from_slice(&chunk[..n]);
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await
            .unwrap();
        closes_within(&mut conn, PATIENCE).await.is_some()
    });
    let keygate = Keygate::start_to(Some(addr), "upstream_read_timeout_ms = 300", "").await;
    let mut client = TcpStream::connect(keygate.proxy).await.unwrap();
    client
        .write_all(keygate.proxy_request().as_bytes())
        .await
        .unwrap();
    let got = closes_within(&mut client, PATIENCE)
        .await
        .expect("the client's connection stayed open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("0123456789"), "{got}");
    assert!(
        upstream_closed.await.unwrap(),
        "the upstream connection stayed open"
    );
}
