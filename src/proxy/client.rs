//! keygate's client to its upstream servers: HTTP/1.1, or HTTP/2 when an HTTPS
//! server picks it by ALPN, over connections that stay with the client
//! connection that used them.
//!
//! Why keygate's own client and not hyper-util's legacy `Client`: a general
//! pool checks a connection out of a shared, locked map for every request,
//! boxes the request future twice and hashes the pool key each time; and it
//! takes the request before it connects, so a request whose connect failed
//! cannot be handed to the next server. Here the connection comes first and the
//! request is given to it only then, which keeps a never-sent request in hand.
//! A reverse proxy also knows more than a general client: a client connection
//! sends its requests one after another (HTTP/1) or a few at once (HTTP/2). So
//! each client connection holds the upstream connection it last used
//! ([`Affinity`]) and reuses it without any shared state; the shared idle
//! lists are touched only when a client connection needs another connection
//! and when it ends. nginx's `keepalive` cache and Pingora's connection reuse
//! work the same way.
//!
//! - A held HTTP/1 connection that is busy (an HTTP/2 client's concurrent
//!   request) or closed is not waited for: another comes from the idle list or
//!   a new connect. An HTTP/2 upstream connection is shared by every request
//!   to its server (one per server), each request on a stream of its own; it
//!   stays open until the upstream closes it (servers send GOAWAY after their
//!   own idle timeout), as the idle timeout below is for HTTP/1 connections.
//! - Connections are made as [`connect`](super::connect) describes (happy
//!   eyeballs), then TLS for `https` servers, with SNI and verification for
//!   the URL's host, bounded by the same connect timeout.
//! - At most `max_connections` upstream connections are open. A caller beyond
//!   it first takes an idle connection, from an idle list or from a client
//!   connection that holds one it is not using; otherwise it waits for a
//!   connection to close, in arrival order (tokio's semaphore is fair), and
//!   gets [`ClientError::Busy`] (503) after the connect timeout. A connection
//!   holds its permit for as long as it is open.
//! - Several servers: each request goes to the next one in turn (round robin:
//!   equal servers, and no per-request bookkeeping beyond one counter; least
//!   outstanding requests would need a count updated twice per request). A
//!   server whose connect fails is skipped for the fail timeout, and the
//!   request, never sent, goes to the next server once.
//! - A request that hyper reports as never sent (the upstream closed the idle
//!   connection as it was taken) is sent once more on a new connection; one
//!   that was sent is never repeated.
//! - HTTP/1 connections idle in a list longer than the idle timeout are closed
//!   by a reaper task; at most `max_idle` are kept per server.
//! - Each upstream connection is its own task, as with hyper-util's client.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::connect::connect;
use super::Upstream;

/// A boxed exchange: hyper's answer futures have no nameable type.
type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Why a request got no answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// No TCP connection could be made in time.
    #[error("connecting to the upstream: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake failed (an untrusted certificate, say) or took longer
    /// than the connect timeout.
    #[error("TLS handshake with the upstream: {0}")]
    Tls(std::io::Error),
    /// Every server is being skipped after failing.
    #[error("every upstream server failed recently")]
    NoServer,
    /// Every allowed connection stayed busy for the connect timeout.
    #[error("every upstream connection is busy")]
    Busy,
    /// The HTTP handshake or the exchange failed.
    #[error("upstream exchange: {0}")]
    Http(#[from] hyper::Error),
}

impl ClientError {
    /// No connection to the server could be made: it is skipped for a while,
    /// and the request, never sent, may go to another.
    fn is_connect(&self) -> bool {
        matches!(self, ClientError::Connect(_) | ClientError::Tls(_))
    }
}

/// One upstream connection: HTTP/1.1, or HTTP/2 when the server picked it.
pub(crate) enum Conn<B> {
    /// One exchange at a time.
    H1(http1::SendRequest<B>),
    /// Many streams at once; cloned for each request.
    H2(http2::SendRequest<B>),
}

impl<B> Conn<B> {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    /// Can take a request now without waiting.
    fn is_ready(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_ready(),
            Conn::H2(s) => s.is_ready(),
        }
    }

    fn is_h2(&self) -> bool {
        matches!(self, Conn::H2(_))
    }
}

impl<B> Conn<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Queues `req` on this connection; its answer, boxed once.
    fn send(&mut self, req: Request<B>) -> Answer<B> {
        match self {
            Conn::H1(s) => Box::pin(s.try_send_request(req)),
            Conn::H2(s) => Box::pin(s.try_send_request(req)),
        }
    }
}

/// How the client connects and how it treats its connections.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Bound on the TCP connect to each address, on the TLS handshake, and on
    /// a wait for room under `max_connections`.
    pub(crate) connect_timeout: Duration,
    /// HTTP/1 connections idle in a list longer than this are closed.
    pub(crate) idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per server.
    pub(crate) max_idle: usize,
    /// Open upstream connections, all servers together.
    pub(crate) max_connections: usize,
    /// How long a server whose connect failed is skipped (several servers only).
    pub(crate) fail_timeout: Duration,
    /// Forward the client's `Host` rather than the server's.
    pub(crate) preserve_host: bool,
    /// For `https` servers.
    pub(crate) tls: Option<TlsConnector>,
}

/// Every upstream server, their connections not held by any client
/// connection, and how to make new ones. Shared by every client connection.
pub(crate) struct Upstreams<B> {
    servers: Box<[Server<B>]>,
    settings: Settings,
    /// Round robin over several servers.
    next: AtomicUsize,
    /// One per open connection.
    permits: Arc<Semaphore>,
    /// Every client connection's held connection, for a caller at the cap to
    /// take an idle one from.
    held: Mutex<Vec<Weak<Slot<B>>>>,
    /// Taken in arrival order by the callers waiting at the cap: only its
    /// holder looks through `held`, so that a crowd of waiters does not scan
    /// every client connection fifty times a second each.
    look: tokio::sync::Mutex<()>,
    /// What `Server::down_until` counts from.
    epoch: Instant,
}

/// One upstream server.
struct Server<B> {
    target: Upstream,
    /// HTTP/1 connections no client connection holds, most recently released
    /// last.
    idle: Mutex<VecDeque<Idle<B>>>,
    /// The server's HTTP/2 connection, shared by all.
    h2: Mutex<Option<http2::SendRequest<B>>>,
    /// Milliseconds after `epoch` until which the server is skipped; 0 when it
    /// is not.
    down_until: AtomicU64,
}

struct Idle<B> {
    sender: http1::SendRequest<B>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Idle past `timeout`: the reaper closes it, checkout does not use it.
    fn expired(&self, timeout: Duration) -> bool {
        self.since.elapsed() >= timeout
    }
}

/// A client connection's upstream connection and the server it goes to.
struct Held<B> {
    server: usize,
    conn: Conn<B>,
}

type Slot<B> = Mutex<Option<Held<B>>>;

/// Nothing panics while these locks are held, so a poisoned one is whole.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B> Upstreams<B> {
    /// Keeps `conn` for the next client connection, if it is an open HTTP/1
    /// connection and there is room. (An HTTP/2 one stays in its server's
    /// shared slot.)
    fn release(&self, server: usize, conn: Conn<B>) {
        let Conn::H1(sender) = conn else { return };
        if sender.is_closed() {
            return;
        }
        let mut idle = lock(&self.servers[server].idle);
        if idle.len() < self.settings.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The server the next request goes to, or `None` when every one is being
    /// skipped. With one server, always that one.
    fn pick(&self) -> Option<usize> {
        let n = self.servers.len();
        if n == 1 {
            return Some(0);
        }
        let now = self.now_ms();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.servers[i].down_until.load(Ordering::Relaxed) <= now)
    }

    /// After `failed` could not be reached: the next server in turn that is
    /// not being skipped, if there are several.
    fn pick_after_failure(&self, failed: usize) -> Option<usize> {
        if self.servers.len() == 1 {
            return None;
        }
        self.pick().filter(|&i| i != failed)
    }

    /// Skips `server` for the fail timeout, when there are others to use.
    fn mark_down(&self, server: usize, error: &ClientError) {
        if self.servers.len() == 1 {
            return;
        }
        let until = self.now_ms() + self.settings.fail_timeout.as_millis() as u64;
        self.servers[server]
            .down_until
            .store(until.max(1), Ordering::Relaxed);
        tracing::warn!(
            upstream = self.servers[server].target.addr(),
            %error,
            skip_secs = self.settings.fail_timeout.as_secs(),
            "upstream server unreachable; skipping it"
        );
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Sets what `req` needs for `server` over `conn`'s protocol: the `Host`
    /// (the server's, unless the client's is preserved), and for HTTP/2 the
    /// `:scheme` and `:authority` in place of `Host`.
    fn prepare(&self, server: usize, req: &mut Request<B>, h2: bool) {
        let target = &self.servers[server].target;
        if req.uri().authority().is_some() {
            // Prepared for HTTP/2 before and handed back unsent: back to
            // origin form, the authority back into `Host`.
            to_origin_form(req);
        }
        let headers = req.headers_mut();
        if !self.settings.preserve_host || !headers.contains_key(HOST) {
            headers.insert(HOST, target.host().clone());
        }
        if h2 {
            to_h2(req, target.authority());
        } else {
            *req.version_mut() = Version::HTTP_11;
        }
    }
}

/// An HTTP/2 request: `Host` moves into `:authority`, with `:scheme` https
/// (HTTP/2 upstreams are the ones that picked it by ALPN, over TLS).
fn to_h2<B>(req: &mut Request<B>, fallback: &Authority) {
    let authority = req
        .headers_mut()
        .remove(HOST)
        .and_then(|host| Authority::try_from(host.as_bytes()).ok())
        .unwrap_or_else(|| fallback.clone());
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are all set, so the parts make a URI.
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    *req.version_mut() = Version::HTTP_2;
}

/// Undoes [`to_h2`].
fn to_origin_form<B>(req: &mut Request<B>) {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    if let Some(authority) = parts.authority.take() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().insert(HOST, host);
        }
    }
    parts.scheme = None;
    *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
}

impl<B> Upstreams<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// How many upstream connections are open now (each holds a permit),
    /// under this client's cap: every client sharing it
    /// ([`sharing_cap`](Upstreams::sharing_cap)) counted.
    pub(crate) fn open_count(&self) -> usize {
        self.settings
            .max_connections
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.permits.available_permits())
    }

    /// Whether `other` counts its connections under this client's cap.
    #[cfg(test)]
    pub(crate) fn shares_cap_with(&self, other: &Upstreams<B>) -> bool {
        Arc::ptr_eq(&self.permits, &other.permits)
    }

    /// The client for `servers` (at least one). Within a Tokio runtime it
    /// starts a task that closes connections idle past the idle timeout; the
    /// task ends when the last handle is dropped.
    pub(crate) fn new(servers: Vec<Upstream>, settings: Settings) -> Arc<Upstreams<B>> {
        let permits = Arc::new(Semaphore::new(
            settings.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        Upstreams::with_permits(servers, settings, permits)
    }

    /// Connections of their own to the same servers, under the same cap
    /// (`max_connections` counts both): for another worker thread, whose
    /// requests then go out on connections its own runtime drives.
    pub(crate) fn sharing_cap(&self) -> Arc<Upstreams<B>> {
        let servers = self.servers.iter().map(|s| s.target.clone()).collect();
        Upstreams::with_permits(servers, self.settings.clone(), Arc::clone(&self.permits))
    }

    fn with_permits(
        servers: Vec<Upstream>,
        settings: Settings,
        permits: Arc<Semaphore>,
    ) -> Arc<Upstreams<B>> {
        let this = Arc::new(Upstreams {
            servers: servers
                .into_iter()
                .map(|target| Server {
                    target,
                    idle: Mutex::new(VecDeque::new()),
                    h2: Mutex::new(None),
                    down_until: AtomicU64::new(0),
                })
                .collect(),
            permits,
            settings,
            next: AtomicUsize::new(0),
            held: Mutex::new(Vec::new()),
            look: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&this)));
        }
        this
    }

    /// The server's HTTP/2 connection if it has one, else its most recently
    /// released idle HTTP/1 connection that can take a request now. One still
    /// finishing its last exchange (released by a client connection that
    /// ended just now) stays for a later checkout; closed and expired ones are
    /// left to the reaper.
    fn checkout(&self, server: usize) -> Option<Conn<B>> {
        let server = &self.servers[server];
        if let Some(h2) = lock(&server.h2).as_ref().filter(|s| !s.is_closed()) {
            return Some(Conn::H2(h2.clone()));
        }
        let mut idle = lock(&server.idle);
        let at = idle.iter().rposition(|i| i.sender.is_ready())?;
        let taken = idle.remove(at)?;
        // An expired one is dropped, which closes it.
        (!taken.expired(self.settings.idle_timeout)).then_some(Conn::H1(taken.sender))
    }

    /// An idle connection to `server` that some client connection holds but is
    /// not using, taken from it (it will get another when it needs one).
    fn steal(&self, server: usize) -> Option<Conn<B>> {
        let held = lock(&self.held);
        for slot in held.iter().filter_map(Weak::upgrade) {
            let Ok(mut slot) = slot.try_lock() else {
                continue;
            };
            let idle = matches!(
                &*slot,
                Some(Held { server: s, conn: Conn::H1(c) }) if *s == server && c.is_ready()
            );
            if idle {
                return slot.take().map(|h| h.conn);
            }
        }
        None
    }

    /// Remembers a client connection's slot for [`steal`](Self::steal).
    fn register(&self, slot: &Arc<Slot<B>>) {
        let mut held = lock(&self.held);
        if held.len() == held.capacity() {
            // Forget ended client connections before the list grows, so that
            // it stays within twice the number of live ones.
            held.retain(|w| w.strong_count() > 0);
        }
        held.push(Arc::downgrade(slot));
    }

    /// A connection to `server`: an idle one, or a new one once there is room
    /// under the cap.
    async fn obtain(&self, server: usize) -> Result<Conn<B>, ClientError> {
        if let Some(conn) = self.checkout(server) {
            return Ok(conn);
        }
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => match self.wait_for_room(server).await? {
                Room::Idle(conn) => return Ok(conn),
                Room::Permit(permit) => permit,
            },
        };
        self.open(server, permit).await
    }

    /// At the cap: an idle connection as soon as one is seen, or a permit in
    /// arrival order, for at most the connect timeout. Every waiter checks the
    /// server's idle list when it wakes; the first in line (the holder of
    /// `look`) also looks for an idle connection held by a client connection,
    /// every [`LOOK_EVERY`].
    async fn wait_for_room(&self, server: usize) -> Result<Room<B>, ClientError> {
        let permit = Arc::clone(&self.permits).acquire_owned();
        let expiry = tokio::time::sleep(self.settings.connect_timeout);
        let look = self.look.lock();
        tokio::pin!(permit, expiry, look);
        let mut turn = None;
        loop {
            let idle = self
                .checkout(server)
                .or_else(|| turn.as_ref().and_then(|_| self.steal(server)));
            if let Some(conn) = idle {
                return Ok(Room::Idle(conn));
            }
            tokio::select! {
                biased;
                // The semaphore is never closed, so this is always a permit.
                permit = &mut permit => return permit.map(Room::Permit).map_err(|_| ClientError::Busy),
                () = &mut expiry => return Err(ClientError::Busy),
                guard = &mut look, if turn.is_none() => turn = Some(guard),
                () = tokio::time::sleep(LOOK_EVERY), if turn.is_some() => {}
            }
        }
    }

    /// A new connection to `server`, its I/O driven by a task of its own that
    /// holds `permit` until the connection closes.
    async fn open(
        &self,
        server: usize,
        permit: OwnedSemaphorePermit,
    ) -> Result<Conn<B>, ClientError> {
        let target = &self.servers[server].target;
        let timeout = self.settings.connect_timeout;
        let stream = connect(target.addr(), target.ip(), timeout)
            .await
            .map_err(ClientError::Connect)?;
        let (Some(name), Some(tls)) = (target.tls_name(), &self.settings.tls) else {
            let conn = handshake_h1(TokioIo::new(stream), permit).await?;
            tracing::debug!(upstream = target.addr(), "upstream connection opened");
            return Ok(conn);
        };
        let stream = tokio::time::timeout(timeout, tls.connect(name.clone(), stream))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            })
            .map_err(ClientError::Tls)?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        tracing::debug!(
            upstream = target.addr(),
            h2,
            "upstream TLS connection opened"
        );
        if !h2 {
            return handshake_h1(TokioIo::new(stream), permit).await;
        }
        let (sender, connection) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        // Requests that found no HTTP/2 connection at once each opened one (the
        // protocol is known only after the handshake): the first to finish
        // becomes the server's, and later ones are dropped, which closes them,
        // so a cold burst settles on one connection.
        let mut shared = lock(&self.servers[server].h2);
        if let Some(first) = shared.as_ref().filter(|s| !s.is_closed()) {
            tracing::debug!(
                upstream = target.addr(),
                "a second HTTP/2 connection to one server; closing it"
            );
            return Ok(Conn::H2(first.clone()));
        }
        *shared = Some(sender.clone());
        Ok(Conn::H2(sender))
    }
}

/// An HTTP/1.1 connection over `io`, driven by its own task, which holds
/// `permit` until the connection closes.
async fn handshake_h1<B, T>(io: T, permit: OwnedSemaphorePermit) -> Result<Conn<B>, ClientError>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io).await?;
    tokio::spawn(async move {
        let _permit = permit;
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(Conn::H1(sender))
}

/// How often the first caller waiting at the cap looks for a connection that
/// went idle: no event tells when an HTTP/1 exchange's answer has been read.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// What a wait at the cap ended with.
enum Room<B> {
    Idle(Conn<B>),
    Permit(OwnedSemaphorePermit),
}

/// Closes idle connections past the idle timeout, checking at a quarter of it
/// (so one lives at most 1.25 times the timeout), until the client is gone.
async fn reap<B>(upstreams: Weak<Upstreams<B>>) {
    let period = match upstreams.upgrade() {
        Some(u) => (u.settings.idle_timeout / 4).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstreams.upgrade() else { return };
        for server in u.servers.iter() {
            let expired: VecDeque<Idle<B>> = {
                let mut idle = lock(&server.idle);
                let timeout = u.settings.idle_timeout;
                let keep = |i: &Idle<B>| !i.sender.is_closed() && !i.expired(timeout);
                let (kept, expired) = idle.drain(..).partition(keep);
                *idle = kept;
                expired
            };
            // Dropped outside the lock.
            drop(expired);
        }
    }
}

/// One client connection's upstream connection: reused for its next request,
/// handed back to the idle list when the client connection ends.
pub(crate) struct Affinity<B> {
    upstreams: Arc<Upstreams<B>>,
    slot: Arc<Slot<B>>,
    /// After a config reload replaced `upstreams`: this client connection's
    /// affinity for the set that replaced them, made by its first request
    /// after the reload (`for_upstreams`).
    next: OnceLock<Arc<Affinity<B>>>,
}

impl<B> Affinity<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(upstreams: Arc<Upstreams<B>>) -> Affinity<B> {
        let slot = Arc::new(Mutex::new(None));
        upstreams.register(&slot);
        Affinity {
            upstreams,
            slot,
            next: OnceLock::new(),
        }
    }

    /// This client connection's affinity for `upstreams`, the set in force:
    /// itself, unless a config reload replaced its set since the connection
    /// opened. Then the connection's affinity for the new set, made once, by
    /// the first request after the reload (which also hands the connection
    /// held from the old set back to it), and found again by the later ones
    /// through `next` (one link per reload since the connection opened).
    pub(crate) fn for_upstreams(self: &Arc<Self>, upstreams: &Arc<Upstreams<B>>) -> Arc<Self> {
        let mut at = self;
        while !Arc::ptr_eq(&at.upstreams, upstreams) {
            at = at.next.get_or_init(|| {
                let held = lock(&at.slot).take();
                if let Some(Held { server, conn }) = held {
                    at.upstreams.release(server, conn);
                }
                Arc::new(Affinity::new(Arc::clone(upstreams)))
            });
        }
        Arc::clone(at)
    }

    /// The held connection to `server` if it can take a request now: the
    /// HTTP/1 one itself, or a clone of the HTTP/2 one (which stays held).
    fn take(&self, server: usize) -> Option<Conn<B>> {
        let mut slot = lock(&self.slot);
        let held = slot.as_ref()?;
        if held.server != server {
            return None;
        }
        match &held.conn {
            Conn::H2(s) if s.is_ready() => Some(Conn::H2(s.clone())),
            c if c.is_ready() => slot.take().map(|h| h.conn),
            c if c.is_closed() => {
                *slot = None;
                None
            }
            // Busy with another request of this client.
            _ => None,
        }
    }

    /// Keeps `conn` for this client's next request; a second one (after
    /// concurrent requests, or to another server) goes back to the idle list.
    fn put(&self, server: usize, conn: Conn<B>) {
        let spare = {
            let mut slot = lock(&self.slot);
            match slot.as_ref() {
                Some(held) if !held.conn.is_closed() => Some(conn),
                _ => {
                    *slot = Some(Held { server, conn });
                    None
                }
            }
        };
        if let Some(spare) = spare {
            self.upstreams.release(server, spare);
        }
    }

    /// Sends `req` upstream. On a connection this client connection holds, or
    /// one from the idle list, the request is queued on it at once and only
    /// the answer is waited for ([`Sending::Sent`]); otherwise a connection is
    /// made first ([`Sending::Connecting`]). The answer's body streams from the
    /// connection, which takes the next request once it is read.
    pub(crate) fn send(self: &Arc<Self>, req: Request<B>) -> Sending<B> {
        let Some(server) = self.upstreams.pick() else {
            return Sending::Connecting(Box::pin(std::future::ready(Err(ClientError::NoServer))));
        };
        match self
            .take(server)
            .or_else(|| self.upstreams.checkout(server))
        {
            Some(conn) => Sending::Sent(self.send_on(server, conn, req)),
            None => Sending::Connecting(Box::pin(Arc::clone(self).send_new(server, req))),
        }
    }

    /// Queues `req` on `conn` and keeps `conn`: busy until its answer is read,
    /// it is not taken again before (`take` wants it ready).
    fn send_on(&self, server: usize, mut conn: Conn<B>, mut req: Request<B>) -> Answer<B> {
        self.upstreams.prepare(server, &mut req, conn.is_h2());
        let answer = conn.send(req);
        self.put(server, conn);
        answer
    }

    /// A request [`Sending::Sent`] that the connection closed before writing:
    /// sent once more, on a new connection.
    pub(crate) fn resend(self: &Arc<Self>, req: Request<B>) -> Sending<B> {
        match self.upstreams.pick() {
            Some(server) => Sending::Connecting(Box::pin(Arc::clone(self).send_new(server, req))),
            None => Sending::Connecting(Box::pin(std::future::ready(Err(ClientError::NoServer)))),
        }
    }

    /// Sends `req` on a new connection to `server` (or, when that server cannot
    /// be reached, to the next one), which this client connection keeps.
    async fn send_new(
        self: Arc<Self>,
        server: usize,
        req: Request<B>,
    ) -> Result<Response<Incoming>, ClientError> {
        let (server, conn) = match self.upstreams.obtain(server).await {
            Ok(conn) => (server, conn),
            Err(e) if e.is_connect() => {
                self.upstreams.mark_down(server, &e);
                let Some(next) = self.upstreams.pick_after_failure(server) else {
                    return Err(e);
                };
                match self.upstreams.obtain(next).await {
                    Ok(conn) => (next, conn),
                    Err(e) => {
                        if e.is_connect() {
                            self.upstreams.mark_down(next, &e);
                        }
                        return Err(e);
                    }
                }
            }
            Err(e) => return Err(e),
        };
        let answer = self.send_on(server, conn, req);
        answer.await.map_err(|e| e.into_error().into())
    }
}

/// The exchange [`Affinity::send`] started.
pub(crate) enum Sending<B> {
    /// Queued on an open connection: its answer. If the connection closed
    /// before writing the request, the error gives it back.
    Sent(Answer<B>),
    /// Connecting first, then sending.
    Connecting(BoxFuture<Result<Response<Incoming>, ClientError>>),
}

/// hyper's answer to one request on one connection.
pub(crate) type Answer<B> = BoxFuture<Result<Response<Incoming>, TrySendError<Request<B>>>>;

impl<B> Drop for Affinity<B> {
    fn drop(&mut self) {
        let held = lock(&self.slot).take();
        if let Some(Held { server, conn }) = held {
            self.upstreams.release(server, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    type Body = Empty<Bytes>;

    fn settings(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Settings {
        Settings {
            connect_timeout,
            idle_timeout,
            max_idle,
            max_connections: 1024,
            fail_timeout: Duration::from_secs(10),
            preserve_host: false,
            tls: None,
        }
    }

    fn server(addr: std::net::SocketAddr) -> Upstream {
        Upstream::new(&format!("http://{addr}").parse().unwrap()).unwrap()
    }

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed_and_at_most_max_idle_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstreams: Arc<Upstreams<Body>> = Upstreams::new(
            vec![server(addr)],
            settings(Duration::from_secs(1), Duration::from_millis(300), 2),
        );
        let mut accepted = Vec::new();
        for _ in 0..3 {
            // New connections, not the idle one: `open` rather than `obtain`.
            let permit = Arc::clone(&upstreams.permits).try_acquire_owned().unwrap();
            let conn = upstreams.open(0, permit).await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            upstreams.release(0, conn);
        }
        assert_eq!(lock(&upstreams.servers[0].idle).len(), 2, "max_idle is 2");

        // The third was dropped at once; the two kept ones go after the timeout.
        let mut buf = [0u8; 1];
        for (i, mut stream) in accepted.into_iter().enumerate() {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0))),
                "connection {i} was not closed: {read:?}"
            );
        }
        assert_eq!(lock(&upstreams.servers[0].idle).len(), 0);
        assert!(upstreams.checkout(0).is_none());
    }

    #[test]
    fn a_request_prepared_for_http2_and_given_back_is_prepared_again_for_another_server() {
        for preserve_host in [false, true] {
            let a = server("127.0.0.1:1".parse().unwrap());
            let b = server("127.0.0.1:2".parse().unwrap());
            let upstreams: Arc<Upstreams<Body>> = Upstreams::new(
                vec![a, b],
                Settings {
                    preserve_host,
                    ..settings(Duration::from_secs(1), Duration::from_secs(1), 2)
                },
            );
            let mut req = Request::get("/v1?x=1")
                .header(HOST, "client.example")
                .body(Body::new())
                .unwrap();
            let (first, second) = if preserve_host {
                ("client.example", "client.example")
            } else {
                ("127.0.0.1:1", "127.0.0.1:2")
            };
            upstreams.prepare(0, &mut req, true);
            assert_eq!(req.uri().to_string(), format!("https://{first}/v1?x=1"));
            assert_eq!(req.version(), Version::HTTP_2);
            assert!(req.headers().get(HOST).is_none());
            upstreams.prepare(1, &mut req, false);
            assert_eq!(req.uri().to_string(), "/v1?x=1");
            assert_eq!(req.version(), Version::HTTP_11);
            assert_eq!(req.headers()[HOST], second);
        }
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let upstreams: Arc<Upstreams<Body>> = Upstreams::new(
            vec![server(addr)],
            settings(Duration::from_secs(1), Duration::from_secs(1), 2),
        );
        assert!(matches!(
            upstreams.obtain(0).await,
            Err(ClientError::Connect(_))
        ));
    }
}
