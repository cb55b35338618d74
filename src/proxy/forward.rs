//! [`Forward`]: the last step of the request path, sending what the gate admitted
//! to the upstream over a connection kept for the client connection (see the
//! private `client` module).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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

/// What every connection's `Forward` shares: the idle connections and the
/// target. A config reload replaces it whole ([`ForwardReload`]).
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

impl<B> Shared<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// # Panics
    ///
    /// When `config.upstreams` is empty: a validated config has at least one.
    fn new(config: &ForwardConfig) -> Shared<B> {
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
        Shared {
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
        }
    }

    /// The same settings over connections of their own, under the same cap.
    fn sharing_cap(&self) -> Shared<B> {
        Shared {
            upstreams: self.upstreams.sharing_cap(),
            upstream: self.upstream.clone(),
            timeout: self.timeout,
            answer_timeouts: self.answer_timeouts,
            preserve_host: self.preserve_host,
            proto: self.proto.clone(),
            upstream_time: self.upstream_time,
        }
    }
}

/// Sends requests to the upstream and streams its answers back. One per client
/// connection (it carries the client's address and the upstream connection the
/// client connection uses); cloning is two reference counts.
///
/// Each request reads the settings in force once, from an [`ArcSwap`] that a
/// reload replaces ([`Forward::reload_handle`]): requests after a reload go by
/// the new settings, to the new servers, over a new set of connections, on
/// every client connection, old or new; requests in flight finish on the old.
pub struct Forward<B> {
    current: Arc<ArcSwap<Shared<B>>>,
    /// The settings slots of every forwarder made from one
    /// [`Forward::new`]: what a reload replaces.
    group: Arc<Group<B>>,
    affinity: Arc<Affinity<B>>,
    client_ip: HeaderValue,
    timers: Arc<Timers>,
}

/// The upstream timeout's timer of one client connection's HTTP/1 requests,
/// set lazily (as the connection's own head and idle timer is, in
/// `server::activity`): a request whose deadline is no earlier than the time
/// the timer is set for, and which runs in the task the timer wakes, leaves it
/// as it is; when it fires, the request in flight finds its own deadline still
/// ahead and sets the timer to it. So a request costs a short lock and a
/// comparison, not a timer of its own put into tokio's wheel and taken out
/// (about 600 instructions). A request in another task (HTTP/2 streams run in
/// tasks of their own) uses a timer of its own, as does every HTTP/2 request.
#[derive(Default)]
struct Timers(Mutex<Option<Armed>>);

/// The timer of [`Timers`] once set.
struct Armed {
    timer: Pin<Box<Sleep>>,
    /// When it fires (or fired).
    at: tokio::time::Instant,
    /// The task it wakes.
    waker: std::task::Waker,
}

impl Timers {
    /// Sees to it that the task of `cx` is woken by `deadline` (it is polled
    /// now, at `now`, and its deadline is ahead); false when the timer wakes
    /// another task, and the caller needs one of its own.
    fn watch(
        &self,
        deadline: tokio::time::Instant,
        now: tokio::time::Instant,
        cx: &mut Context<'_>,
    ) -> bool {
        let mut armed = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *armed {
            Some(a) if a.waker.will_wake(cx.waker()) => {
                if a.at > now && a.at <= deadline {
                    // It fires first and wakes this task.
                    return true;
                }
                // Fired, or set for later than this deadline.
                a.at = deadline;
                a.timer.as_mut().reset(deadline);
                register(&mut a.timer, cx);
                true
            }
            Some(_) => false,
            None => {
                let mut timer = Box::pin(tokio::time::sleep_until(deadline));
                register(&mut timer, cx);
                *armed = Some(Armed {
                    timer,
                    at: deadline,
                    waker: cx.waker().clone(),
                });
                true
            }
        }
    }
}

/// Polls `timer` once so that it wakes the task of `cx`: outside tokio's
/// cooperative budget, which could otherwise answer "not now" without
/// registering the task, and no later poll would come to register it.
fn register(timer: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) {
    // The deadline is ahead: pending.
    let _ = Pin::new(&mut tokio::task::coop::unconstrained(timer)).poll(cx);
}

/// The settings slots of a forwarder and of those made from it with
/// connections of their own ([`Forward::with_own_connections`]); weak, so
/// that a worker's slot goes with its last forwarder.
type Group<B> = Mutex<Vec<Weak<ArcSwap<Shared<B>>>>>;

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Forward {
            current: Arc::clone(&self.current),
            group: Arc::clone(&self.group),
            affinity: Arc::clone(&self.affinity),
            client_ip: self.client_ip.clone(),
            timers: Arc::clone(&self.timers),
        }
    }
}

impl<B> std::fmt::Debug for Forward<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("upstream", &self.current.load().upstream)
            .finish_non_exhaustive()
    }
}

/// Replaces the settings of a [`Forward`], its clones, every forwarder
/// [`for_client`](Forward::for_client) made from it and every forwarder
/// [`with_own_connections`](Forward::with_own_connections) made from it (one
/// per worker thread), for the requests that start after
/// [`apply`](ForwardReload::apply).
pub struct ForwardReload<B>(Arc<Group<B>>);

impl<B> std::fmt::Debug for ForwardReload<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardReload").finish_non_exhaustive()
    }
}

impl<B> ForwardReload<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// From now on requests go by `config`, over a new set of upstream
    /// connections (within `max_upstream_connections` of their own); the old
    /// connections serve the requests in flight on them and close once the
    /// last is answered and no client connection holds them.
    ///
    /// Each forwarder of the group gets connections of its own again, under
    /// one new cap that they share, as at start.
    pub fn apply(&self, config: &ForwardConfig) {
        let mut group = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        group.retain(|slot| slot.strong_count() > 0);
        let mut first: Option<Arc<Shared<B>>> = None;
        for slot in group.iter().filter_map(Weak::upgrade) {
            let shared = Arc::new(match &first {
                None => Shared::new(config),
                Some(first) => first.sharing_cap(),
            });
            slot.store(Arc::clone(&shared));
            first.get_or_insert(shared);
        }
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
        let shared = Shared::new(config);
        let affinity = Arc::new(Affinity::new(Arc::clone(&shared.upstreams)));
        let current = Arc::new(ArcSwap::from_pointee(shared));
        Forward {
            group: Arc::new(Mutex::new(vec![Arc::downgrade(&current)])),
            current,
            affinity,
            client_ip: HeaderValue::from_static("unknown"),
            timers: Arc::default(),
        }
    }

    /// The handle a config reload replaces the settings with: this
    /// forwarder's, and those of every forwarder made from it.
    pub fn reload_handle(&self) -> ForwardReload<B> {
        ForwardReload(Arc::clone(&self.group))
    }

    /// A forwarder with upstream connections of its own (idle lists, the
    /// reaper task on the current runtime) under this one's connection cap:
    /// `max_upstream_connections` counts both. One per worker thread, so that
    /// a worker's requests never go out on a connection another thread's
    /// runtime drives. A reload reaches it too ([`Forward::reload_handle`]).
    pub fn with_own_connections(&self) -> Forward<B> {
        let shared = self.current.load().sharing_cap();
        let affinity = Arc::new(Affinity::new(Arc::clone(&shared.upstreams)));
        let current = Arc::new(ArcSwap::from_pointee(shared));
        self.group
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&current));
        Forward {
            current,
            group: Arc::clone(&self.group),
            affinity,
            client_ip: self.client_ip.clone(),
            timers: Arc::default(),
        }
    }

    /// A reader of how many upstream connections of the settings in force
    /// are open now, for metrics: those of every forwarder sharing this one's
    /// cap ([`with_own_connections`](Forward::with_own_connections)).
    pub fn open_connections(&self) -> impl Fn() -> usize + Send + Sync + 'static
    where
        B: Send + 'static,
    {
        // Any live slot of the group will do: they share one cap. Not this
        // forwarder's own slot, which may be gone while the workers' serve.
        let group = Arc::clone(&self.group);
        move || {
            let group = group.lock().unwrap_or_else(PoisonError::into_inner);
            group
                .iter()
                .find_map(Weak::upgrade)
                .map_or(0, |c| c.load().upstreams.open_count())
        }
    }

    /// This forwarder for one client connection from `ip`: its own upstream
    /// connection, and its address turned into a header value once per
    /// connection, not once per request.
    pub fn for_client(&self, ip: std::net::IpAddr) -> Forward<B> {
        let upstreams = Arc::clone(&self.current.load().upstreams);
        Forward {
            current: Arc::clone(&self.current),
            group: Arc::clone(&self.group),
            affinity: Arc::new(Affinity::new(upstreams)),
            client_ip: HeaderValue::from_str(&ip.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            timers: Arc::default(),
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
        // The settings in force: one load, no lock, no reference count taken
        // (arc-swap's guard), for the whole of this call.
        let shared = self.current.load();
        // This client connection's upstream connection from the set in
        // force: the one it holds, unless a reload replaced the set since.
        let affinity = self.affinity.for_upstreams(&shared.upstreams);
        // Request hop-by-hop headers went as the request arrived (`HopByHop`).
        let (mut parts, body) = req.into_parts();
        let version = parts.version;
        add_forwarded(&mut parts.headers, &self.client_ip, &shared.proto);
        if parts.version == Version::HTTP_2 {
            // RFC 9113 section 8.2.3: HTTP/2 may split cookies into crumbs;
            // an HTTP/1.1 upstream expects one line.
            join_cookies(&mut parts.headers);
            if shared.preserve_host && !parts.headers.contains_key(HOST) {
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
        parts.uri = shared.upstream.target(parts.uri);
        let req = Request::from_parts(parts, body);
        // One clock read for the timeout and the upstream's time.
        let now = tokio::time::Instant::now();
        ForwardFuture {
            sending: affinity.send(req),
            affinity,
            answer_timeouts: shared.answer_timeouts,
            deadline: now + shared.timeout,
            called: Some(now),
            timers: (version != Version::HTTP_2).then(|| Arc::clone(&self.timers)),
            own_timer: None,
            sent: shared.upstream_time.then(|| now.into_std()),
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
        // The upstream timeout's end.
        deadline: tokio::time::Instant,
        // The clock read at the call, for the first poll.
        called: Option<tokio::time::Instant>,
        // The client connection's timer (HTTP/1), when it wakes this task.
        timers: Option<Arc<Timers>>,
        // Otherwise a timer of this request's own.
        #[pin]
        own_timer: Option<Sleep>,
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
        let mut this = self.project();
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
            let answer = match answer {
                Poll::Ready(answer) => answer,
                Poll::Pending => {
                    let now = this.called.take().unwrap_or_else(tokio::time::Instant::now);
                    if now < *this.deadline {
                        if this.own_timer.is_none() {
                            if let Some(timers) = this.timers.as_ref() {
                                if timers.watch(*this.deadline, now, cx) {
                                    return Poll::Pending;
                                }
                            }
                            this.own_timer
                                .set(Some(tokio::time::sleep_until(*this.deadline)));
                        }
                        if let Some(timer) = this.own_timer.as_mut().as_pin_mut() {
                            std::task::ready!(timer.poll(cx));
                        }
                    }
                    tracing::warn!("upstream did not answer in time");
                    return Poll::Ready(Ok(Refusal::UpstreamTimeout.into_response()));
                }
            };
            return Poll::Ready(Ok(match answer {
                Ok(res) => {
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
                Err(e) if BodyTimedOut::is_cause_of(&e) => {
                    // The client's body stopped: the client's doing, logged
                    // at debug where the body timed out.
                    Refusal::RequestTimeout.into_response()
                }
                Err(ClientError::Busy) => {
                    tracing::warn!("every upstream connection stayed busy for the connect timeout");
                    Refusal::UpstreamBusy.into_response()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "upstream request failed");
                    Refusal::UpstreamUnavailable.into_response()
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

    fn config_to(addr: std::net::SocketAddr, upstream_timeout: Duration) -> ForwardConfig {
        let uri: http::Uri = format!("http://{addr}").parse().unwrap();
        ForwardConfig {
            upstreams: vec![Upstream::new(&uri).unwrap()],
            connect_timeout: Duration::from_millis(200),
            upstream_timeout,
            upstream_read_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 4,
            max_upstream_connections: 16,
            upstream_fail_timeout: Duration::from_secs(10),
            preserve_host: false,
            upstream_tls: None,
            https: false,
            upstream_time: false,
        }
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
        // timer still set to it would answer 504. (The client connection's
        // timer fires then, and the exchange in flight sets it to its own
        // deadline: `Timers`.)
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

    /// When the client connection's timer of `forward` fires, if it is set.
    fn timer_at(forward: &Forward<Empty<Bytes>>) -> Option<tokio::time::Instant> {
        forward.timers.0.lock().unwrap().as_ref().map(|a| a.at)
    }

    #[tokio::test]
    async fn a_client_connections_later_requests_leave_its_timer_as_it_is() {
        let (addr, _) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(1)).for_client([127, 0, 0, 1].into());
        assert_eq!(timer_at(&forward), None);
        let before = tokio::time::Instant::now();
        assert_eq!(status(&forward, "/medium").await, StatusCode::OK);
        let first = timer_at(&forward).expect("set by the first request");
        assert!(first >= before + Duration::from_secs(1));
        // Its deadline is later than the timer's: no change.
        assert_eq!(status(&forward, "/medium").await, StatusCode::OK);
        assert_eq!(timer_at(&forward), Some(first));
        // Past the first deadline, the timer fired: the next request sets it
        // to its own deadline, and the one after it times out by it.
        assert_eq!(status(&forward, "/slow").await, StatusCode::GATEWAY_TIMEOUT);
        assert!(timer_at(&forward) > Some(first));
    }

    #[tokio::test]
    async fn an_http2_request_times_out_by_a_timer_of_its_own() {
        let (addr, _) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(1)).for_client([127, 0, 0, 1].into());
        let req = Request::get("/slow")
            .version(Version::HTTP_2)
            .body(Empty::new())
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), forward.clone().call(req));
        let status = answer.await.expect("an answer").unwrap().status();
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(timer_at(&forward), None);
    }

    #[tokio::test]
    async fn a_request_in_another_task_than_the_one_the_timer_wakes_still_times_out() {
        let (addr, _) = upstream().await;
        let forward = forward_to(addr, Duration::from_secs(1)).for_client([127, 0, 0, 1].into());
        // The timer now wakes this task, until a second after this request.
        assert_eq!(status(&forward, "/fast").await, StatusCode::OK);
        let other = forward.clone();
        let elsewhere = tokio::spawn(async move { status(&other, "/slow").await });
        assert_eq!(elsewhere.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
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
    async fn after_a_reload_a_client_connections_next_request_goes_by_the_new_settings() {
        let (first, first_accepted) = upstream().await;
        let (second, second_accepted) = upstream().await;
        let forward: Forward<Empty<Bytes>> =
            Forward::new(&config_to(first, Duration::from_secs(10)));
        // One client connection, opened before the reload, used across it.
        let client = forward.for_client([127, 0, 0, 1].into());
        assert_eq!(status(&client, "/medium").await, StatusCode::OK);
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);

        forward
            .reload_handle()
            .apply(&config_to(second, Duration::from_millis(100)));
        // The new server, and the new timeout: 300 ms is now too long.
        assert_eq!(status(&client, "/fast").await, StatusCode::OK);
        assert_eq!(
            status(&client, "/medium").await,
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
        assert!(second_accepted.load(Ordering::SeqCst) >= 1);
        // The client connection keeps one affinity for the new set, made
        // once, not one per request.
        let current = Arc::clone(&client.current.load().upstreams);
        assert!(Arc::ptr_eq(
            &client.affinity.for_upstreams(&current),
            &client.affinity.for_upstreams(&current)
        ));
        // A client connection opened after the reload too.
        let later = forward.for_client([127, 0, 0, 1].into());
        assert_eq!(status(&later, "/fast").await, StatusCode::OK);
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_reload_reaches_every_workers_forwarder_and_they_share_one_new_cap() {
        let (first, first_accepted) = upstream().await;
        let (second, second_accepted) = upstream().await;
        let base: Forward<Empty<Bytes>> = Forward::new(&config_to(first, Duration::from_secs(10)));
        // Two workers' forwarders, each with connections of its own.
        let (a, b) = (base.with_own_connections(), base.with_own_connections());
        let (ca, cb) = (
            a.for_client([127, 0, 0, 1].into()),
            b.for_client([127, 0, 0, 1].into()),
        );
        assert_eq!(status(&ca, "/fast").await, StatusCode::OK);
        assert_eq!(status(&cb, "/fast").await, StatusCode::OK);
        assert_eq!(first_accepted.load(Ordering::SeqCst), 2);

        base.reload_handle()
            .apply(&config_to(second, Duration::from_millis(100)));
        // Both workers go by the new settings: the new server and timeout.
        for client in [&ca, &cb] {
            assert_eq!(status(client, "/fast").await, StatusCode::OK);
            assert_eq!(status(client, "/medium").await, StatusCode::GATEWAY_TIMEOUT);
        }
        assert_eq!(first_accepted.load(Ordering::SeqCst), 2);
        assert!(second_accepted.load(Ordering::SeqCst) >= 2);
        // Each has its own new connections, under one cap they share.
        let (na, nb) = (a.current.load(), b.current.load());
        assert!(!Arc::ptr_eq(&na.upstreams, &nb.upstreams));
        assert!(na.upstreams.shares_cap_with(&nb.upstreams));
        // A worker's forwarder that is gone leaves the group at the next reload.
        drop((b, cb, nb));
        base.reload_handle()
            .apply(&config_to(second, Duration::from_secs(10)));
        assert_eq!(base.group.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_request_in_flight_at_a_reload_finishes_on_the_old_settings() {
        let (first, _) = upstream().await;
        let (second, second_accepted) = upstream().await;
        let forward: Forward<Empty<Bytes>> =
            Forward::new(&config_to(first, Duration::from_secs(10)));
        let client = forward.for_client([127, 0, 0, 1].into());
        let req = Request::get("/medium").body(Empty::new()).unwrap();
        let in_flight = client.clone().call(req);
        forward
            .reload_handle()
            .apply(&config_to(second, Duration::from_millis(100)));
        // Started under a 10 s timeout toward the first server: answered.
        let answer = tokio::time::timeout(Duration::from_secs(10), in_flight).await;
        assert_eq!(answer.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(second_accepted.load(Ordering::SeqCst), 0);
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
            answer_timeouts: forward.current.load().answer_timeouts,
            deadline: tokio::time::Instant::now() + Duration::from_secs(5),
            called: None,
            timers: None,
            own_timer: None,
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
