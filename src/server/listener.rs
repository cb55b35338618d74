//! One listener: the accept loop, the connection cap, TLS, each connection's
//! timeouts, and the drain at stop. The proxy and the admin API both run here,
//! each with its own [`ConnectionLimits`].
//!
//! - **Cap.** At most `max_connections` connections are served at once, by
//!   all of the listener's accept loops together (one per worker thread): each
//!   served connection holds a slot of one semaphore the loops share. A client
//!   accepted when no slot is free waits, TCP connected and its request unread,
//!   until a connection closes anywhere, and its loop accepts no other
//!   meanwhile, so later clients wait in the kernel's listen backlog; all are
//!   served in turn instead of being cut off. (A slot is taken after the
//!   accept, not before, so that a loop with no client to accept never holds
//!   one another loop's client waits for.) A warning is logged when the cap is
//!   reached, at most once a minute while it keeps being reached.
//! - **Sockets.** A listener served by several worker threads binds one
//!   listening socket per worker to the same address with `SO_REUSEPORT`
//!   ([`bind_group`]): the kernel spreads new connections over them, and each
//!   worker accepts on its own, as nginx's `reuseport` does.
//! - **Head size.** hyper answers 431 to a request head over
//!   `max_header_bytes` (HTTP/1: its read buffer limit; HTTP/2: the header
//!   list size) and to one with more than 100 headers, then closes.
//! - **Timeouts.** See [`activity`](super::activity): the head timeout drops the
//!   connection, the idle timeout closes it gracefully.
//! - **TLS.** The handshake runs in the connection's own task, under the head
//!   timeout, so a client that never finishes it holds one slot for a bounded
//!   time and never stalls the loop.
//! - **Stop.** The loop closes the listening socket (new connections are
//!   refused), every connection is told to finish gracefully (HTTP/1: the
//!   answer in flight carries `connection: close`; idle ones close at once;
//!   HTTP/2: GOAWAY), and after [`DRAIN_LIMIT`] the stragglers are dropped.

use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::{Listener as MetricsListener, Metrics};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::activity::{Activity, Phase, Tracked, Watched};
use super::ConnectionLimits;
use super::DRAIN_LIMIT;
use crate::timeout::TimeoutBody;

/// How a listener serves its connections.
#[derive(Clone)]
pub(super) struct Settings {
    /// `proxy` or `admin`, for the logs.
    pub(super) name: &'static str,
    /// Its limits.
    pub(super) limits: ConnectionLimits,
    /// Present when the listener serves HTTPS.
    pub(super) tls: Option<TlsAcceptor>,
    /// Where its open connections are counted, and as which listener.
    pub(super) metrics: (Arc<Metrics>, MetricsListener),
    /// One permit per connection served at once (`limits.max_connections`),
    /// shared by the listener's accept loops.
    pub(super) slots: Arc<Semaphore>,
}

impl Settings {
    /// The settings of the listener `name`, with a fresh set of slots.
    pub(super) fn new(
        name: &'static str,
        limits: ConnectionLimits,
        tls: Option<TlsAcceptor>,
        metrics: (Arc<Metrics>, MetricsListener),
    ) -> Settings {
        Settings {
            name,
            limits,
            tls,
            metrics,
            slots: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
        }
    }
}

/// `count` listening sockets bound to `addr` with `SO_REUSEPORT`, one per
/// worker thread (at least one), all on the port the first one got (so `:0`
/// works).
///
/// A port shared this way can be joined by any process of the same user that
/// also asks for `SO_REUSEPORT`; so that a port already served (by another
/// keygate, say) is still refused as it is without the option, a socket
/// without it is bound to `addr` first and closed.
pub(super) fn bind_group(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        drop(socket(addr, false)?);
    }
    let first = socket(addr, true)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(socket(bound, true)?);
    }
    Ok(sockets)
}

/// A non-blocking listening socket on `addr`, as tokio's `TcpListener::bind`
/// makes one (`SO_REUSEADDR`, a backlog of 1,024), with `SO_REUSEPORT` when
/// `shared`.
fn socket(addr: SocketAddr, shared: bool) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    if shared {
        socket.listen(1024)?;
    }
    Ok(socket.into())
}

/// Counts a connection open from its accept until its task ends, however it
/// ends.
struct OpenConnection<'a>(&'a (Arc<Metrics>, MetricsListener));

impl<'a> OpenConnection<'a> {
    fn new(m: &'a (Arc<Metrics>, MetricsListener)) -> Self {
        m.0.opened(m.1);
        OpenConnection(m)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0 .0.closed(self.0 .1);
    }
}

/// What every connection of one listener shares.
struct Shared {
    settings: Settings,
    http: auto::Builder<TokioExecutor>,
}

/// The HTTP/1 and HTTP/2 server settings for `limits`.
fn http_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Replaced by keygate's head and idle timeouts (see `activity`).
        .header_read_timeout(None)
        // While a head is incomplete the read buffer holds only the head, so
        // its limit is the head's; hyper refuses a larger one with 431.
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Accepts connections on `listener` until `stopped` changes, serving each with
/// the service `per_client` makes for the client's address; then drains.
pub(super) async fn serve<S, B>(
    listener: TcpListener,
    settings: Settings,
    per_client: impl Fn(IpAddr) -> S,
    mut stopped: watch::Receiver<bool>,
) where
    S: tower_service::Service<http::Request<TimeoutBody<Incoming>>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = settings.name;
    let max = settings.limits.max_connections;
    let slots = Arc::clone(&settings.slots);
    let shared = Arc::new(Shared {
        http: http_builder(&settings.limits),
        settings,
    });
    let mut connections = JoinSet::new();
    let mut cap = CapWarning::default();
    // A client accepted while every slot was taken.
    let mut waiting: Option<(TcpStream, IpAddr)> = None;

    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped.changed() => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done {
                    tracing::error!(listener = name, error = %e, "a connection task failed");
                }
                continue;
            }
            // The semaphore is never closed, so this is always a permit.
            Ok(slot) = Arc::clone(&slots).acquire_owned(), if waiting.is_some() => {
                waiting.take().map(|(stream, ip)| (stream, ip, slot))
            }
            // While a client waits for a slot this branch is off: later ones
            // wait in the backlog.
            accepted = listener.accept(), if waiting.is_none() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match Arc::clone(&slots).try_acquire_owned() {
                        Ok(slot) => Some((stream, peer.ip(), slot)),
                        Err(_) => {
                            cap.reached(name, max);
                            waiting = Some((stream, peer.ip()));
                            None
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    None
                }
            },
        };
        if let Some((stream, ip, slot)) = accepted {
            connections.spawn(connection(
                stream,
                per_client(ip),
                Arc::clone(&shared),
                stopped.clone(),
                slot,
            ));
        }
    }

    // Refuse new connections at once; the open ones saw `stopped` too.
    drop(waiting);
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            connections = connections.len(),
            "requests still in flight after the drain limit; closing"
        );
        connections.shutdown().await;
    }
}

/// Calls a connection's tower service from hyper in place, where hyper-util's
/// `TowerToHyperService` clones the whole stack for every request (about ten
/// reference counts up and down, and its `Oneshot`'s states) because a tower
/// service's `call` takes `&mut self` and hyper's `&self`. hyper calls from
/// the connection's task, one call at a time, so the `RefCell` is never
/// borrowed twice. The stack's `poll_ready` answers at once (every layer
/// forwards to `Forward`'s, which is always ready); should a service ever not
/// be ready, the request goes through `TowerToHyperService` on a clone, which
/// waits as tower's contract asks.
struct InPlace<S> {
    service: std::cell::RefCell<S>,
}

impl<S> InPlace<S> {
    fn new(service: S) -> Self {
        InPlace {
            service: std::cell::RefCell::new(service),
        }
    }
}

/// What [`InPlace`]'s service fails with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, R> hyper::service::Service<R> for InPlace<S>
where
    S: tower_service::Service<R> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = InPlaceFuture<S, R>;

    fn call(&self, req: R) -> Self::Future {
        let mut service = self.service.borrow_mut();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match service.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => InPlaceFuture::Called {
                future: service.call(req),
            },
            std::task::Poll::Ready(Err(e)) => InPlaceFuture::Failed {
                error: Some(e.into()),
            },
            std::task::Poll::Pending => InPlaceFuture::Waiting {
                future: hyper::service::Service::call(
                    &TowerToHyperService::new(service.clone()),
                    req,
                ),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer of [`InPlace`]'s service.
    #[project = InPlaceProj]
    enum InPlaceFuture<S, R>
    where
        S: tower_service::Service<R>,
    {
        Called { #[pin] future: S::Future },
        Failed { error: Option<BoxError> },
        Waiting { #[pin] future: hyper_util::service::TowerToHyperServiceFuture<S, R> },
    }
}

impl<S, R> std::future::Future for InPlaceFuture<S, R>
where
    S: tower_service::Service<R>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            InPlaceProj::Called { future } => future.poll(cx).map_err(Into::into),
            InPlaceProj::Waiting { future } => future.poll(cx).map_err(Into::into),
            InPlaceProj::Failed { error } => match error.take() {
                Some(e) => std::task::Poll::Ready(Err(e)),
                // Polled again after it answered: it has nothing more.
                None => std::task::Poll::Pending,
            },
        }
    }
}

/// Logs that the cap was reached: at once the first time, then at most once a
/// minute, with how often it was reached in between.
#[derive(Debug, Default)]
struct CapWarning {
    last: Option<Instant>,
    unreported: u64,
}

impl CapWarning {
    const EVERY: Duration = Duration::from_secs(60);

    fn reached(&mut self, listener: &'static str, max_connections: usize) {
        self.unreported += 1;
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + Self::EVERY) {
            return;
        }
        tracing::warn!(
            listener,
            max_connections,
            times = self.unreported,
            "connection limit reached: new connections wait until one closes"
        );
        self.last = Some(now);
        self.unreported = 0;
    }
}

/// Serves one accepted connection: the TLS handshake if any, then HTTP.
async fn connection<S, B>(
    stream: TcpStream,
    service: S,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) where
    S: tower_service::Service<http::Request<TimeoutBody<Incoming>>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let accepted = Instant::now();
    let _open = OpenConnection::new(&shared.settings.metrics);
    let activity = Activity::new(accepted, &shared.settings.limits);
    let name = shared.settings.name;
    let Some(acceptor) = &shared.settings.tls else {
        return drive(stream, service, &shared, activity, stopped).await;
    };
    let deadline = accepted + shared.settings.limits.header_read_timeout;
    let handshake = tokio::select! {
        done = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => done,
        _ = stopped.changed() => return,
    };
    match handshake {
        Ok(Ok(tls)) => drive(tls, service, &shared, activity, stopped).await,
        Ok(Err(e)) => tracing::debug!(listener = name, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(listener = name, "TLS handshake not done in time; closing"),
    }
}

/// Serves HTTP on `io` until the client leaves, a timeout passes, or the
/// listener stops.
async fn drive<I, S, B>(
    io: I,
    service: S,
    shared: &Shared,
    activity: Arc<Activity>,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: tower_service::Service<http::Request<TimeoutBody<Incoming>>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = shared.settings.name;
    let io = TokioIo::new(Watched::new(io, Arc::clone(&activity)));
    let service = InPlace::new(Tracked::new(service, Arc::clone(&activity)));
    let mut conn = pin!(shared.http.serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
    let mut closing = false;

    loop {
        let deadline = activity.arm(closing);
        if let Some(at) = deadline {
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(listener = name, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = stopped.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.changed() => {}
            () = &mut timer, if deadline.is_some() => {
                // The phase may have moved on since the timer was set.
                match activity.deadline() {
                    Some((Phase::Head, at)) if at <= Instant::now() => {
                        tracing::debug!(listener = name, "request head not received in time; closing");
                        return;
                    }
                    Some((Phase::Idle, at)) if at <= Instant::now() && !closing => {
                        tracing::debug!(listener = name, "idle keep-alive connection; closing");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_binds_every_socket_on_the_port_the_first_one_got() {
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(group.len(), 3);
        let port = group[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        for socket in &group {
            assert_eq!(socket.local_addr().unwrap().port(), port);
        }
    }

    /// Answers its request with how many clones of it have been made; not
    /// ready at its first `poll_ready` when `late`.
    struct Counted {
        clones: Arc<std::sync::atomic::AtomicUsize>,
        late: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Counted {
        fn new(late: bool) -> Counted {
            Counted {
                clones: Arc::default(),
                late: Arc::new(std::sync::atomic::AtomicBool::new(late)),
            }
        }
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Counted {
                clones: Arc::clone(&self.clones),
                late: Arc::clone(&self.late),
            }
        }
    }

    impl tower_service::Service<()> for Counted {
        type Response = usize;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<usize, std::convert::Infallible>>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            if self.late.swap(false, std::sync::atomic::Ordering::SeqCst) {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            std::future::ready(Ok(self.clones.load(std::sync::atomic::Ordering::SeqCst)))
        }
    }

    #[tokio::test]
    async fn a_ready_service_is_called_in_place_without_a_clone() {
        let in_place = InPlace::new(Counted::new(false));
        for _ in 0..3 {
            let clones = hyper::service::Service::call(&in_place, ()).await.unwrap();
            assert_eq!(clones, 0);
        }
    }

    #[tokio::test]
    async fn a_service_not_ready_yet_answers_through_a_clone_once_ready() {
        let in_place = InPlace::new(Counted::new(true));
        let clones = tokio::time::timeout(
            Duration::from_secs(5),
            hyper::service::Service::call(&in_place, ()),
        )
        .await
        .expect("answered once ready")
        .unwrap();
        assert!(clones > 0, "not answered through a clone");
        // Ready from then on: called in place, no further clone.
        let later = hyper::service::Service::call(&in_place, ()).await.unwrap();
        assert_eq!(later, clones);
    }

    #[test]
    fn a_group_of_one_is_one_socket() {
        assert_eq!(
            bind_group("127.0.0.1:0".parse().unwrap(), 1).unwrap().len(),
            1
        );
    }

    #[test]
    fn a_port_another_listener_holds_is_refused_as_without_the_option() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = bind_group(other.local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_port_another_group_holds_is_refused_too() {
        let first = bind_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = bind_group(first[0].local_addr().unwrap(), 2).unwrap_err();
        assert_eq!(taken.kind(), std::io::ErrorKind::AddrInUse);
    }
}
