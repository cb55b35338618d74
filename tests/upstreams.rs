//! The upstream connection layer seen from outside: the cap on upstream
//! connections (503 `UPSTREAM_BUSY`), several upstream servers (round robin,
//! a refusing server skipped, a never-sent request tried on the next), and what
//! reaches the upstream from HTTP/1 and HTTP/2 clients alike (`Host`, cookies).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{refusing_addr, Answer, Gateway};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/1.1 server on `listener` that answers `200 server` and counts the
/// requests it got.
struct Counting {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Counting {
    async fn start() -> Counting {
        Counting::on(TcpListener::bind("127.0.0.1:0").await.unwrap())
    }

    fn on(listener: TcpListener) -> Counting {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"server"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Counting {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `proxy.upstream` as a TOML array of `http://` URLs.
fn list(addrs: &[SocketAddr]) -> String {
    let urls: Vec<String> = addrs.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!("[{}]", urls.join(", "))
}

// ---------------------------------------------------------------------------
// The cap on upstream connections
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_request_that_waits_longer_than_the_connect_timeout_for_a_connection_gets_503() {
    let gw = Gateway::builder()
        .proxy_keys("max_upstream_connections = 1\nconnect_timeout_ms = 300")
        .start()
        .await;
    let key = gw.provision("acme").await;
    // The only connection stays busy for far longer than the connect timeout.
    gw.upstream.answer_with(Answer {
        delay: Some(Duration::from_secs(3)),
        ..Answer::default()
    });
    let slow = gw.get_with("/acme/v1/slow", &key);
    let busy = async {
        while gw.upstream.count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gw.get_with("/acme/v1/busy", &key).await
    };
    let (slow, busy) = tokio::join!(slow, busy);
    busy.assert_refused(StatusCode::SERVICE_UNAVAILABLE, "UPSTREAM_BUSY");
    slow.assert_status(StatusCode::OK);
    assert_eq!(gw.upstream.count(), 1);
    assert_eq!(gw.upstream.connections(), 1);
}

#[tokio::test]
async fn a_request_at_the_cap_waits_for_the_busy_connection_and_reuses_it() {
    let gw = Gateway::builder()
        .proxy_keys("max_upstream_connections = 1\nconnect_timeout_ms = 10000")
        .start()
        .await;
    let key = gw.provision("acme").await;
    gw.upstream.answer_with(Answer {
        delay: Some(Duration::from_millis(300)),
        ..Answer::default()
    });
    // Three client connections at once, one upstream connection: each waits
    // its turn (the connection stays with the client connection that used it
    // until a waiting one takes it).
    let (a, b, c) = tokio::join!(
        gw.get_with("/acme/v1/a", &key),
        gw.get_with("/acme/v1/b", &key),
        gw.get_with("/acme/v1/c", &key)
    );
    for r in [a, b, c] {
        r.assert_status(StatusCode::OK);
    }
    assert_eq!(gw.upstream.count(), 3);
    assert_eq!(gw.upstream.connections(), 1);
}

#[tokio::test]
async fn a_closed_upstream_connection_gives_its_place_back() {
    let gw = Gateway::builder()
        .proxy_keys("max_upstream_connections = 1\nconnect_timeout_ms = 2000")
        .start()
        .await;
    let key = gw.provision("acme").await;
    // The upstream closes each connection after its answer.
    gw.upstream.answer_with(Answer {
        headers: vec![("connection", "close")],
        ..Answer::default()
    });
    for _ in 0..3 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(gw.upstream.connections(), 3);
}

// ---------------------------------------------------------------------------
// Several upstream servers
// ---------------------------------------------------------------------------

#[tokio::test]
async fn requests_are_spread_over_the_servers_in_turn() {
    let (a, b) = (Counting::start().await, Counting::start().await);
    let gw = Gateway::builder()
        .upstream_toml(&list(&[a.addr, b.addr]))
        .start()
        .await;
    let key = gw.provision("acme").await;
    for _ in 0..6 {
        let r = gw.get_with("/acme/v1", &key).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.body, "server");
    }
    assert_eq!((a.requests(), b.requests()), (3, 3));
}

#[tokio::test]
async fn a_refusing_server_is_skipped_and_its_request_goes_to_the_next() {
    let live = Counting::start().await;
    let closed = refusing_addr().await;
    let gw = Gateway::builder()
        .upstream_toml(&list(&[closed, live.addr]))
        .proxy_keys("upstream_fail_timeout_secs = 3600")
        .start()
        .await;
    let key = gw.provision("acme").await;
    for _ in 0..4 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(live.requests(), 4);
    // Something listens on the closed port now, but the server is skipped
    // for the fail timeout.
    let revived = Counting::on(TcpListener::bind(closed).await.unwrap());
    for _ in 0..4 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!((revived.requests(), live.requests()), (0, 8));
}

#[tokio::test]
async fn a_skipped_server_is_used_again_after_the_fail_timeout() {
    let live = Counting::start().await;
    let closed = refusing_addr().await;
    let gw = Gateway::builder()
        .upstream_toml(&list(&[closed, live.addr]))
        .proxy_keys("upstream_fail_timeout_secs = 1")
        .start()
        .await;
    let key = gw.provision("acme").await;
    for _ in 0..2 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    let revived = Counting::on(TcpListener::bind(closed).await.unwrap());
    // Past the fail timeout (at least a second), round robin reaches it again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..4 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(revived.requests(), 2);
}

#[tokio::test]
async fn every_server_down_answers_502() {
    let (a, b) = (refusing_addr().await, refusing_addr().await);
    let gw = Gateway::builder()
        .upstream_toml(&list(&[a, b]))
        .start()
        .await;
    let key = gw.provision("acme").await;
    for _ in 0..3 {
        gw.get_with("/acme/v1", &key)
            .await
            .assert_refused(StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE");
    }
}

// ---------------------------------------------------------------------------
// Host and cookies, from HTTP/1 and HTTP/2 clients
// ---------------------------------------------------------------------------

/// `GET /acme/v1` to keygate over HTTP/2 (prior knowledge), with
/// `:authority` `client.example` and `headers`.
async fn h2_get(gw: &Gateway, key: &str, headers: &[(&str, &str)]) -> StatusCode {
    let tcp = TcpStream::connect(gw.proxy_addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .uri("http://client.example/acme/v1")
        .header("x-api-key", key);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

/// `GET /acme/v1` to keygate over HTTP/1.1 with `Host: client.example`.
async fn h1_get(gw: &Gateway, key: &str) -> StatusCode {
    let req = gw
        .proxy_request(Method::GET, "/acme/v1")
        .header("host", "client.example")
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    gw.send(req).await.status
}

#[tokio::test]
async fn the_upstream_gets_its_own_host_from_http1_and_http2_clients_alike() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    assert_eq!(h1_get(&gw, &key).await, StatusCode::OK);
    assert_eq!(h2_get(&gw, &key, &[]).await, StatusCode::OK);
    let seen = gw.upstream.seen();
    let upstream_host = gw.upstream.addr.to_string();
    for s in &seen {
        let hosts: Vec<_> = s.headers.get_all("host").iter().collect();
        assert_eq!(hosts, [upstream_host.as_str()], "{s:?}");
    }
}

#[tokio::test]
async fn preserve_host_keeps_the_clients_host_from_http1_and_http2_clients_alike() {
    let gw = Gateway::builder()
        .proxy_keys("preserve_host = true")
        .start()
        .await;
    let key = gw.provision("acme").await;
    assert_eq!(h1_get(&gw, &key).await, StatusCode::OK);
    assert_eq!(h2_get(&gw, &key, &[]).await, StatusCode::OK);
    for s in gw.upstream.seen() {
        let hosts: Vec<_> = s.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["client.example"], "{s:?}");
    }
}

#[tokio::test]
async fn http2_cookie_crumbs_reach_an_http1_upstream_as_one_cookie_line() {
    let gw = Gateway::start().await;
    let key = gw.provision("acme").await;
    let status = h2_get(
        &gw,
        &key,
        &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let seen = gw.upstream.only();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
}
