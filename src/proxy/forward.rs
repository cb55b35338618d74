//! [`Forward`]: the last step of the request path, sending what the gate admitted
//! to the upstream over a connection kept for the client connection (see the
//! private `client` module).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_service::Service;

use super::client::{Affinity, ClientError, Sending, Settings, Upstreams};
use super::headers::{add_forwarded, join_cookies, strip_hop_by_hop};
use super::Upstream;
use crate::answer::{AnswerBody, Refusal};
use crate::timeout::{BodyTimedOut, BodyTimeouts, TimeoutBody};
use crate::tls::UpstreamTls;

pin_project! {
    /// The upstream's answer body as the client gets it: bounded between
    /// reads, and carrying how long the upstream took to answer when that was
    /// measured (for the access log; in the body, not the answer's extensions,
    /// whose first entry costs three allocations).
    #[derive(Debug)]
    pub struct UpstreamBody {
        #[pin]
        body: TimeoutBody<Incoming>,
        upstream_time: Option<Duration>,
    }
}

impl UpstreamBody {
    /// From sending the request to the answer's head, when it was measured.
    pub fn upstream_time(&self) -> Option<Duration> {
        self.upstream_time
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How keygate talks to its upstream.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Where requests go: one server or several, all with the same base path
    /// (the first one's is used).
    pub upstreams: Vec<Upstream>,
    /// Limit on the TCP connect to each of a server's addresses, and on the
    /// TLS handshake; past it, 502.
    pub connect_timeout: Duration,
    /// Limit from sending the request to the upstream's response headers; past
    /// it, 504.
    pub upstream_timeout: Duration,
    /// The longest wait for the next bytes of the upstream's answer body; past
    /// it both connections are closed.
    pub upstream_read_timeout: Duration,
    /// How long an idle upstream connection no client connection holds is kept.
    pub pool_idle_timeout: Duration,
    /// How many such idle connections to keep, per server.
    pub pool_max_idle_per_host: usize,
    /// Open upstream connections at most; beyond it a request waits up to
    /// `connect_timeout` for one, then 503.
    pub max_upstream_connections: usize,
    /// How long a server whose connect failed is skipped, when there are
    /// several.
    pub upstream_fail_timeout: Duration,
    /// Forward the client's `Host` (or HTTP/2 `:authority`) instead of the
    /// server's.
    pub preserve_host: bool,
    /// How `https` servers are verified; `None` uses the compiled-in roots.
    pub upstream_tls: Option<UpstreamTls>,
    /// Clients reach keygate over TLS: sets `X-Forwarded-Proto: https`.
    pub https: bool,
    /// Measure how long the upstream takes to answer, for the access log
    /// and the metrics ([`UpstreamBody::upstream_time`]); off, no clock is
    /// read. keygate's server always turns it on (`GET /metrics` has the
    /// upstream's histogram).
    pub upstream_time: bool,
}

/// What every connection's `Forward` shares: the idle connections and the target.
struct Shared<B> {
    upstreams: Arc<Upstreams<B>>,
    /// The first server: its base path is every server's.
    upstream: Upstream,
    timeout: Duration,
    answer_timeouts: BodyTimeouts,
    preserve_host: bool,
    proto: HeaderValue,
    upstream_time: bool,
}

/// Sends requests to the upstream and streams its answers back. One per client
/// connection (it carries the client's address and the upstream connection the
/// client connection uses); cloning is two reference counts.
pub struct Forward<B> {
    shared: Arc<Shared<B>>,
    affinity: Arc<Affinity<B>>,
    client_ip: HeaderValue,
}

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Forward {
            shared: Arc::clone(&self.shared),
            affinity: Arc::clone(&self.affinity),
            client_ip: self.client_ip.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Forward<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl<B> Forward<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// A forwarder with its own upstream connections. Its clones share one
    /// upstream connection at a time, like one client connection's requests;
    /// [`for_client`](Forward::for_client) makes one per client connection.
    ///
    /// # Panics
    ///
    /// When `config.upstreams` is empty: a validated config has at least one.
    pub fn new(config: &ForwardConfig) -> Forward<B> {
        let upstream = config
            .upstreams
            .first()
            .expect("a validated config names at least one upstream")
            .clone();
        let https = config.upstreams.iter().any(|u| u.tls_name().is_some());
        let tls = https.then(|| {
            config
                .upstream_tls
                .clone()
                .unwrap_or_else(UpstreamTls::public_roots)
                .connector()
        });
        let upstreams = Upstreams::new(
            config.upstreams.clone(),
            Settings {
                connect_timeout: config.connect_timeout,
                idle_timeout: config.pool_idle_timeout,
                max_idle: config.pool_max_idle_per_host,
                max_connections: config.max_upstream_connections,
                fail_timeout: config.upstream_fail_timeout,
                preserve_host: config.preserve_host,
                tls,
            },
        );
        Forward {
            affinity: Arc::new(Affinity::new(Arc::clone(&upstreams))),
            shared: Arc::new(Shared {
                upstreams,
                upstream,
                timeout: config.upstream_timeout,
                answer_timeouts: BodyTimeouts {
                    between_reads: config.upstream_read_timeout,
                    total: None,
                },
                preserve_host: config.preserve_host,
                proto: HeaderValue::from_static(if config.https { "https" } else { "http" }),
                upstream_time: config.upstream_time,
            }),
            client_ip: HeaderValue::from_static("unknown"),
        }
    }

    /// A forwarder with upstream connections of its own (idle lists, the
    /// reaper task on the current runtime) under this one's connection cap:
    /// `max_upstream_connections` counts both. One per worker thread, so that
    /// a worker's requests never go out on a connection another thread's
    /// runtime drives.
    pub fn with_own_connections(&self) -> Forward<B> {
        let upstreams = self.shared.upstreams.sharing_cap();
        let shared = &self.shared;
        Forward {
            affinity: Arc::new(Affinity::new(Arc::clone(&upstreams))),
            shared: Arc::new(Shared {
                upstreams,
                upstream: shared.upstream.clone(),
                timeout: shared.timeout,
                answer_timeouts: shared.answer_timeouts,
                preserve_host: shared.preserve_host,
                proto: shared.proto.clone(),
                upstream_time: shared.upstream_time,
            }),
            client_ip: self.client_ip.clone(),
        }
    }

    /// A reader of how many upstream connections are open now, for metrics:
    /// those of every forwarder sharing this one's cap
    /// ([`with_own_connections`](Forward::with_own_connections)).
    pub fn open_connections(&self) -> impl Fn() -> usize + Send + Sync + 'static
    where
        B: Send + 'static,
    {
        self.shared.upstreams.open_counter()
    }

    /// This forwarder for one client connection from `ip`: its own upstream
    /// connection, and its address turned into a header value once per
    /// connection, not once per request.
    pub fn for_client(&self, ip: std::net::IpAddr) -> Forward<B> {
        Forward {
            shared: Arc::clone(&self.shared),
            affinity: Arc::new(Affinity::new(Arc::clone(&self.shared.upstreams))),
            client_ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

impl<B> Service<Request<B>> for Forward<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<AnswerBody<UpstreamBody>>;
    type Error = Infallible;
    type Future = ForwardFuture<B>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A busy upstream connection is not waited for (another is used), so
        // there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ForwardFuture<B> {
        // Request hop-by-hop headers went as the request arrived (`HopByHop`).
        let (mut parts, body) = req.into_parts();
        add_forwarded(&mut parts.headers, &self.client_ip, &self.shared.proto);
        if parts.version == Version::HTTP_2 {
            // RFC 9113 section 8.2.3: HTTP/2 may split cookies into crumbs;
            // an HTTP/1.1 upstream expects one line.
            join_cookies(&mut parts.headers);
            if self.shared.preserve_host && !parts.headers.contains_key(HOST) {
                // The client's host came as `:authority`.
                if let Some(host) = parts.uri.authority() {
                    if let Ok(host) = HeaderValue::from_str(host.as_str()) {
                        parts.headers.insert(HOST, host);
                    }
                }
            }
        }
        // `Host` and the version are set for the server and the protocol the
        // request goes out on (the client module's `prepare`).
        parts.uri = self.shared.upstream.target(parts.uri);
        let req = Request::from_parts(parts, body);
        ForwardFuture {
            sending: self.affinity.send(req),
            affinity: Arc::clone(&self.affinity),
            answer_timeouts: self.shared.answer_timeouts,
            timeout: tokio::time::sleep(self.shared.timeout),
            sent: self.shared.upstream_time.then(Instant::now),
        }
    }
}

pin_project! {
    /// The upstream's answer, or 502/504.
    ///
    /// A named future rather than an `async` block: the request is queued on
    /// its upstream connection when [`Forward::call`] returns, and what is
    /// left to wait for (hyper's answer, boxed once because its type has no
    /// name) and the timer sit inline in the server's per-connection state.
    pub struct ForwardFuture<B> {
        sending: Sending<B>,
        affinity: Arc<Affinity<B>>,
        answer_timeouts: BodyTimeouts,
        #[pin]
        timeout: Sleep,
        sent: Option<Instant>,
    }
}

impl<B> std::fmt::Debug for ForwardFuture<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardFuture").finish_non_exhaustive()
    }
}

impl<B> Future for ForwardFuture<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Output = Result<Response<AnswerBody<UpstreamBody>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        loop {
            let answer = match this.sending {
                Sending::Sent(answer) => match answer.as_mut().poll(cx) {
                    Poll::Ready(Ok(res)) => Poll::Ready(Ok(res)),
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(mut e)) => match e.take_message() {
                        // Never written: the connection closed as it was taken.
                        Some(req) => {
                            tracing::debug!(error = %e.error(), "stale upstream connection; reconnecting");
                            *this.sending = this.affinity.resend(req);
                            continue;
                        }
                        None => Poll::Ready(Err(ClientError::from(e.into_error()))),
                    },
                },
                Sending::Connecting(exchange) => exchange.as_mut().poll(cx),
            };
            return Poll::Ready(Ok(match answer {
                Poll::Ready(Ok(res)) => {
                    let (mut parts, body) = res.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    let body = UpstreamBody {
                        body: TimeoutBody::new(body, *this.answer_timeouts).warn_on_timeout(
                            "the upstream's answer stopped arriving; closing both connections",
                        ),
                        upstream_time: this.sent.map(|sent| sent.elapsed()),
                    };
                    Response::from_parts(parts, AnswerBody::inner(body))
                }
                Poll::Ready(Err(e)) if BodyTimedOut::is_cause_of(&e) => {
                    // The client's body stopped: the client's doing, logged
                    // at debug where the body timed out.
                    Refusal::RequestTimeout.into_response()
                }
                Poll::Ready(Err(ClientError::Busy)) => {
                    tracing::warn!("every upstream connection stayed busy for the connect timeout");
                    Refusal::UpstreamBusy.into_response()
                }
                Poll::Ready(Err(e)) => {
                    tracing::warn!(error = %e, "upstream request failed");
                    Refusal::UpstreamUnavailable.into_response()
                }
                Poll::Pending => {
                    std::task::ready!(this.timeout.poll(cx));
                    tracing::warn!("upstream did not answer in time");
                    Refusal::UpstreamTimeout.into_response()
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::StatusCode;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::client::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// An upstream answering `ok` on every connection: `/medium` after 300 ms,
    /// `/slow` after a minute, anything else at once. Counts its connections.
    async fn upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let ok = service_fn(|req: Request<Incoming>| async move {
                    let delay = match req.uri().path() {
                        "/medium" => Duration::from_millis(300),
                        "/slow" => Duration::from_secs(60),
                        _ => Duration::ZERO,
                    };
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), ok),
                );
            }
        });
        (addr, accepted)
    }

    /// A forwarder to `addr` whose clones share one client connection's state,
    /// as the requests of one client connection do.
    fn forward_to(addr: std::net::SocketAddr, upstream_timeout: Duration) -> Forward<Empty<Bytes>> {
        forward_capped(addr, upstream_timeout, 1024)
    }

    /// [`forward_to`] with at most `cap` upstream connections.
    fn forward_capped(
        addr: std::net::SocketAddr,
        upstream_timeout: Duration,
        cap: usize,
    ) -> Forward<Empty<Bytes>> {
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        Forward::new(&ForwardConfig {
            upstreams: vec![Upstream::new(&uri).unwrap()],
            connect_timeout: Duration::from_secs(5),
            upstream_timeout,
            upstream_read_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 4,
            max_upstream_connections: cap,
            upstream_fail_timeout: Duration::from_secs(10),
            preserve_host: false,
            upstream_tls: None,
            https: false,
            upstream_time: false,
        })
    }

    /// The status `forward` answers `GET path` with (a test that would hang
    /// fails after 10 s instead).
    async fn status(forward: &Forward<Empty<Bytes>>, path: &str) -> StatusCode {
        let req = Request::get(path).body(Empty::new()).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), forward.clone().call(req));
        answer.await.expect("an answer").unwrap().status()
    }

    // Each exchange has its own deadline, counted from its own start, however
    // the exchanges before it on the same client connection went: answered,
    // idle past the timeout since, or running at the same time.

    /// A fast exchange, `idle`, then a 300 ms one (answered) and one that
    /// outlasts the timeout (504), all on one client connection.
    async fn exchanges_after_an_idle(idle: Duration) {
        let (addr, _) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(1));
        assert_eq!(status(&forward, "/fast").await, StatusCode::OK);
        tokio::time::sleep(idle).await;
        assert_eq!(status(&forward, "/medium").await, StatusCode::OK);
        assert_eq!(status(&forward, "/slow").await, StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn a_later_exchange_is_not_cut_short_by_an_earlier_ones_deadline() {
        // The first exchange's deadline passes while the 300 ms one runs: a
        // timer still set to it would answer 504. (A timer shared by the
        // connection's exchanges, to save tokio's timer wheel an insert and a
        // removal per request, was tried this way: BENCHMARKS.md.)
        exchanges_after_an_idle(Duration::from_millis(800)).await;
    }

    #[tokio::test]
    async fn an_exchange_after_an_idle_timeout_period_still_times_out() {
        exchanges_after_an_idle(Duration::from_millis(1200)).await;
    }

    #[tokio::test]
    async fn concurrent_exchanges_on_one_client_connection_each_have_a_timer() {
        let (addr, _) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(1));
        let (a, b) = tokio::join!(status(&forward, "/slow"), status(&forward, "/slow"));
        assert_eq!(
            (a, b),
            (StatusCode::GATEWAY_TIMEOUT, StatusCode::GATEWAY_TIMEOUT)
        );
        assert_eq!(status(&forward, "/medium").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn client_connections_waiting_at_the_cap_take_turns_on_the_one_connection() {
        let (addr, accepted) = upstream().await;
        let forward = forward_capped(addr, Duration::from_secs(10), 1);
        // Six client connections, each with one 300 ms exchange, one upstream
        // connection: the waiters are handed the idle connection one by one
        // (the first in line looks; the others wait their turn).
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let client = forward.for_client([127, 0, 0, 1].into());
            clients.spawn(async move { status(&client, "/medium").await });
        }
        while let Some(answer) = clients.join_next().await {
            assert_eq!(answer.unwrap(), StatusCode::OK);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_request_given_back_unsent_goes_once_more_on_a_new_connection() {
        let (addr, accepted) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(5));
        // A connection whose I/O half is gone, as when the upstream closed it
        // just as it was taken: hyper hands the request back unwritten.
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut dead, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        drop(connection);
        let req = Request::get("/v1/x")
            .header(HOST, "upstream")
            .body(Empty::new())
            .unwrap();
        let answer = ForwardFuture {
            sending: Sending::Sent(Box::pin(dead.try_send_request(req))),
            affinity: Arc::clone(&forward.affinity),
            answer_timeouts: forward.shared.answer_timeouts,
            timeout: tokio::time::sleep(Duration::from_secs(5)),
            sent: None,
        }
        .await
        .unwrap();

        assert_eq!(answer.status(), StatusCode::OK);
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        // The dead connection and the one the request went on.
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
