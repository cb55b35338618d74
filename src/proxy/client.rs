//! keygate's HTTP/1.1 client to the upstream: upstream connections that stay
//! with the client connection that used them.
//!
//! A general-purpose pool (hyper-util's legacy client) checks a connection out
//! of a shared, locked map for every request, boxes the request future twice
//! and hashes the pool key each time. A reverse proxy knows more: a client
//! connection sends its requests one after another (HTTP/1) or a few at once
//! (HTTP/2), to one upstream. So each client connection holds the upstream
//! connection it last used ([`Affinity`]) and reuses it without any shared
//! state; the shared idle list ([`Upstreams`]) is touched only when a client
//! connection starts needing one and when it ends, which hands its connection
//! back for the next client. nginx's `keepalive` cache and Pingora's
//! connection reuse work the same way.
//!
//! - A held connection that is busy (an HTTP/2 client's concurrent request) or
//!   closed is not waited for: another comes from the idle list or a new
//!   connect.
//! - A request that hyper reports as never sent (the upstream closed the idle
//!   connection as it was taken) is sent once more on a new connection; one
//!   that was sent is never repeated.
//! - Connections idle in the list longer than the idle timeout are closed by a
//!   reaper task; at most `max_idle` are kept.
//! - Each upstream connection is its own task, as with hyper-util's client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::store::BoxFuture;

/// Why a request got no answer from the upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// No connection could be made in time.
    #[error("connecting to the upstream: {0}")]
    Connect(std::io::Error),
    /// The HTTP/1 handshake or the exchange failed.
    #[error("upstream exchange: {0}")]
    Http(#[from] hyper::Error),
}

/// The upstream connections not held by any client connection, and how to make
/// new ones. One per upstream; shared by every client connection.
pub(crate) struct Upstreams<B> {
    /// `host:port`, resolved at each connect as the system resolves it.
    addr: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently released last.
    idle: Mutex<VecDeque<Idle<B>>>,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<B> Idle<B> {
    /// Idle past `timeout`: the reaper closes it, checkout does not use it.
    fn expired(&self, timeout: Duration) -> bool {
        self.since.elapsed() >= timeout
    }
}

impl<B> Upstreams<B> {
    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle<B>>> {
        // Nothing panics while the lock is held: a poisoned list is whole.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `sender` for the next client connection, if it is reusable and
    /// there is room.
    fn release(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < self.max_idle {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl<B> Upstreams<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The client for `addr` (`host:port`). Within a Tokio runtime it starts a
    /// task that closes connections idle past `idle_timeout`; the task ends when
    /// the last handle is dropped.
    pub(crate) fn new(
        addr: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Upstreams<B>> {
        let this = Arc::new(Upstreams {
            addr,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(reap(Arc::downgrade(&this)));
        }
        this
    }

    /// The most recently released idle connection that can take a request now.
    /// One still finishing its last exchange (released by a client connection
    /// that ended just now) stays for a later checkout; closed and expired ones
    /// are left to the reaper.
    fn checkout(&self) -> Option<SendRequest<B>> {
        let mut idle = self.idle();
        let at = idle.iter().rposition(|i| i.sender.is_ready())?;
        let taken = idle.remove(at)?;
        // An expired one is dropped, which closes it.
        (!taken.expired(self.idle_timeout)).then_some(taken.sender)
    }

    /// A new connection, its I/O driven by a task of its own.
    async fn connect(&self) -> Result<SendRequest<B>, ClientError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&*self.addr))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))
            })
            .map_err(ClientError::Connect)?;
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tracing::debug!(upstream = %self.addr, "upstream connection opened");
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Closes idle connections past the idle timeout, checking at a quarter of it
/// (so one lives at most 1.25 times the timeout), until the client is gone.
async fn reap<B>(upstreams: Weak<Upstreams<B>>) {
    let period = match upstreams.upgrade() {
        Some(u) => (u.idle_timeout / 4).max(Duration::from_millis(100)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(u) = upstreams.upgrade() else { return };
        let expired: VecDeque<Idle<B>> = {
            let mut idle = u.idle();
            let keep = |i: &Idle<B>| !i.sender.is_closed() && !i.expired(u.idle_timeout);
            let (kept, expired) = idle.drain(..).partition(keep);
            *idle = kept;
            expired
        };
        // Dropped outside the lock.
        drop(expired);
    }
}

/// One client connection's upstream connection: reused for its next request,
/// handed back to the idle list when the client connection ends.
pub(crate) struct Affinity<B> {
    upstreams: Arc<Upstreams<B>>,
    held: Mutex<Option<SendRequest<B>>>,
}

impl<B> Affinity<B>
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub(crate) fn new(upstreams: Arc<Upstreams<B>>) -> Affinity<B> {
        Affinity {
            upstreams,
            held: Mutex::new(None),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<SendRequest<B>>> {
        // Nothing panics while the lock is held.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held connection if it can take a request now.
    fn take(&self) -> Option<SendRequest<B>> {
        let mut held = self.held();
        match held.as_ref() {
            Some(s) if s.is_ready() => held.take(),
            Some(s) if s.is_closed() => {
                *held = None;
                None
            }
            // Busy with another request of this client, or none.
            _ => None,
        }
    }

    /// Keeps `sender` for this client's next request; a second one (after
    /// concurrent requests) goes back to the idle list.
    fn put(&self, sender: SendRequest<B>) {
        let spare = {
            let mut held = self.held();
            match held.as_ref() {
                Some(s) if !s.is_closed() => Some(sender),
                _ => {
                    *held = Some(sender);
                    None
                }
            }
        };
        if let Some(spare) = spare {
            self.upstreams.release(spare);
        }
    }

    /// Sends `req` upstream. On a connection this client connection holds, or
    /// one from the idle list, the request is queued on it at once and only
    /// the answer is waited for ([`Sending::Sent`]); otherwise a connection is
    /// made first ([`Sending::Connecting`]). The answer's body streams from the
    /// connection, which takes the next request once it is read.
    pub(crate) fn send(self: &Arc<Self>, req: Request<B>) -> Sending<B> {
        match self.take().or_else(|| self.upstreams.checkout()) {
            Some(mut sender) => {
                let answer = Box::pin(sender.try_send_request(req));
                // Back at once: busy until its answer is read, it is not taken
                // again before (`take` wants it ready).
                self.put(sender);
                Sending::Sent(answer)
            }
            None => Sending::Connecting(Box::pin(Arc::clone(self).send_new(req))),
        }
    }

    /// A request [`Sending::Sent`] that the connection closed before writing:
    /// sent once more, on a new connection.
    pub(crate) fn resend(self: &Arc<Self>, req: Request<B>) -> Sending<B> {
        Sending::Connecting(Box::pin(Arc::clone(self).send_new(req)))
    }

    /// Sends `req` on a new connection, which this client connection keeps.
    async fn send_new(self: Arc<Self>, req: Request<B>) -> Result<Response<Incoming>, ClientError> {
        let mut sender = self.upstreams.connect().await?;
        let answer = sender.try_send_request(req);
        self.put(sender);
        answer.await.map_err(|e| e.into_error().into())
    }
}

/// The exchange [`Affinity::send`] started.
pub(crate) enum Sending<B> {
    /// Queued on an open connection: its answer. If the connection closed
    /// before writing the request, the error gives it back.
    Sent(Answer<B>),
    /// Connecting first, then sending.
    Connecting(BoxFuture<'static, Result<Response<Incoming>, ClientError>>),
}

/// hyper's answer to one request on one connection.
pub(crate) type Answer<B> =
    BoxFuture<'static, Result<Response<Incoming>, TrySendError<Request<B>>>>;

impl<B> Drop for Affinity<B> {
    fn drop(&mut self) {
        let held = self
            .held
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(sender) = held {
            self.upstreams.release(sender);
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

    #[tokio::test]
    async fn idle_connections_past_the_timeout_are_closed_and_at_most_max_idle_are_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstreams: Arc<Upstreams<Body>> =
            Upstreams::new(addr, Duration::from_secs(1), Duration::from_millis(300), 2);
        let mut accepted = Vec::new();
        for _ in 0..3 {
            let sender = upstreams.connect().await.unwrap();
            accepted.push(listener.accept().await.unwrap().0);
            upstreams.release(sender);
        }
        assert_eq!(upstreams.idle().len(), 2, "max_idle is 2");

        // The third was dropped at once; the two kept ones go after the timeout.
        let mut buf = [0u8; 1];
        for (i, mut stream) in accepted.into_iter().enumerate() {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(Ok(0))),
                "connection {i} was not closed: {read:?}"
            );
        }
        assert_eq!(upstreams.idle().len(), 0);
        assert!(upstreams.checkout().is_none());
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let upstreams: Arc<Upstreams<Body>> =
            Upstreams::new(addr, Duration::from_secs(1), Duration::from_secs(1), 2);
        assert!(matches!(
            upstreams.connect().await,
            Err(ClientError::Connect(_))
        ));
    }
}
