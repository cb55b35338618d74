//! What one connection is doing, for its two timeouts.
//!
//! hyper's own `header_read_timeout` runs from the end of one answer to the end
//! of the next request's head, so on a keep-alive connection it is also the
//! idle limit, with no way to give the two different values. keygate keeps them
//! apart, as Go's `net/http` (`ReadHeaderTimeout`, `IdleTimeout`) and nginx
//! (`client_header_timeout`, `keepalive_timeout`) do. A connection is always in
//! one [`Phase`]:
//!
//! - [`Head`](Phase::Head), from the accept (TLS handshake included) and from
//!   the first byte of each later request until that request's head is in: it
//!   has `header_read_timeout`, then the connection is dropped;
//! - [`Busy`](Phase::Busy), while requests are in flight, from their head to the
//!   end of their answer's body: no limit here (the upstream timeout bounds the
//!   wait for an answer);
//! - [`Idle`](Phase::Idle), between requests: it has `idle_timeout`, then the
//!   connection is closed gracefully (HTTP/2: GOAWAY).
//!
//! [`Watched`] wraps the socket and reports the first byte read while idle;
//! [`Tracked`] wraps the service and reports each request's start and the end
//! of its answer ([`TrackedFuture`], [`TrackedBody`]). The listener's
//! connection task asks [`Activity::deadline`] when to act.
//!
//! Two edges are deliberate. On HTTP/2 bytes arrive between requests for
//! reasons of their own (window updates, pings), so after its first request a
//! connection goes from idle to busy only with a request. And on HTTP/1 a
//! request pipelined behind one in flight has its first bytes read while the
//! connection is busy; if its head is still incomplete when the answer ends, it
//! is bounded by the idle timeout rather than the head timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use http::{Request, Response, Version};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::ConnectionLimits;
use crate::timeout::TimeoutBody;

/// What a connection is doing; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Waiting for (the rest of) a request's head.
    Head,
    /// Serving at least one request.
    Busy,
    /// Between requests.
    Idle,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// Requests whose answer has not ended.
    in_flight: usize,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: bool,
    /// When the connection task's timer fires next, if it is set. A phase
    /// change wakes the task only when its deadline is earlier than this: a
    /// timer that fires early just finds the phase moved on and is set again.
    armed: Option<Instant>,
}

impl State {
    fn deadline(&self, limits: &ConnectionLimits) -> Option<Instant> {
        match self.phase {
            Phase::Head => Some(self.since + limits.header_read_timeout),
            Phase::Idle => Some(self.since + limits.idle_timeout),
            Phase::Busy => None,
        }
    }
}

/// One connection's phase, shared by its socket, its service and its task.
///
/// A request moves a keep-alive connection through all three phases, so this
/// is on the request path: each change is a short uncontended lock and, in the
/// steady state, nothing else. The task's timer is set lazily (see
/// [`arm`](Activity::arm)), so a request neither wakes the task nor touches
/// the timer wheel; the timer fires about once per timeout period instead.
#[derive(Debug)]
pub(super) struct Activity {
    state: Mutex<State>,
    /// Set exactly while the phase is [`Phase::Idle`] on HTTP/1, so that the
    /// socket's reads, most of which carry request bodies, skip the lock.
    idle: AtomicBool,
    /// Wakes the connection task when a deadline is earlier than its timer.
    changed: Notify,
    /// The limits the deadlines come from.
    limits: ConnectionLimits,
}

impl Activity {
    /// A connection accepted at `accepted`, under `limits`: waiting for its
    /// first head.
    pub(super) fn new(accepted: Instant, limits: &ConnectionLimits) -> Arc<Activity> {
        Arc::new(Activity {
            state: Mutex::new(State {
                phase: Phase::Head,
                since: accepted,
                in_flight: 0,
                http2: false,
                armed: None,
            }),
            idle: AtomicBool::new(false),
            changed: Notify::new(),
            limits: *limits,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while the lock is held; a poisoned state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current phase and when it runs out; `None` while busy.
    pub(super) fn deadline(&self) -> Option<(Phase, Instant)> {
        let state = self.state();
        state.deadline(&self.limits).map(|at| (state.phase, at))
    }

    /// When the connection task should set its timer for, which this records:
    /// the current phase's deadline; while busy, the time it is already set
    /// for, if that is still ahead (it may fire for nothing, which costs less
    /// than a wake per request); `None` leaves it unset. Once `closing`, only
    /// a head's deadline counts: an idle connection is on its way out already.
    pub(super) fn arm(&self, closing: bool) -> Option<Instant> {
        let mut state = self.state();
        let at = match (state.phase, state.deadline(&self.limits)) {
            // A timer that has fired is set for nothing: left as it is, the
            // task would find it ready on every poll.
            (Phase::Busy, _) => state.armed.filter(|at| !closing && *at > Instant::now()),
            (Phase::Idle, _) if closing => None,
            (_, at) => at,
        };
        state.armed = at;
        at
    }

    /// The phase just changed to one with a deadline: wakes the task if its
    /// timer is unset or set for later than the deadline.
    fn wake_for(&self, state: MutexGuard<'_, State>) {
        let late = match (state.armed, state.deadline(&self.limits)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(armed), Some(at)) => at < armed,
        };
        drop(state);
        if late {
            self.changed.notify_one();
        }
    }

    /// Resolves after a deadline appeared earlier than the task's timer.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Bytes arrived from the client.
    fn on_read(&self) {
        if !self.idle.load(Ordering::Relaxed) {
            return;
        }
        let mut state = self.state();
        if state.phase == Phase::Idle {
            state.phase = Phase::Head;
            state.since = Instant::now();
            self.idle.store(false, Ordering::Relaxed);
            self.wake_for(state);
        }
    }

    /// A request's head is in; it is now in flight. No one is woken: a deadline
    /// only went away, and the task checks the phase when its timer fires.
    fn on_request(&self, version: Version) {
        let mut state = self.state();
        state.in_flight += 1;
        state.phase = Phase::Busy;
        state.http2 |= version == Version::HTTP_2;
        self.idle.store(false, Ordering::Relaxed);
    }

    /// A request's answer ended (or was abandoned).
    fn on_answered(&self) {
        let mut state = self.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            state.phase = Phase::Idle;
            state.since = Instant::now();
            // HTTP/2 stays idle until a request, whatever bytes arrive.
            self.idle.store(!state.http2, Ordering::Relaxed);
            self.wake_for(state);
        }
    }
}

/// One request in flight, until dropped.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>, version: Version) -> InFlight {
        activity.on_request(version);
        InFlight(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.on_answered();
    }
}

pin_project! {
    /// A client socket that reports to its [`Activity`] when bytes arrive.
    #[derive(Debug)]
    pub(super) struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
    }
}

impl<T> Watched<T> {
    pub(super) fn new(io: T, activity: Arc<Activity>) -> Watched<T> {
        Watched { io, activity }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        res
    }
}

impl<T: AsyncWrite> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A service that reports to its [`Activity`] when each request starts and
/// when its answer ends.
#[derive(Debug)]
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S: Clone> Clone for Tracked<S> {
    fn clone(&self) -> Self {
        Tracked {
            inner: self.inner.clone(),
            activity: Arc::clone(&self.activity),
        }
    }
}

impl<S, ReqBody, ResBody> tower_service::Service<Request<ReqBody>> for Tracked<S>
where
    S: tower_service::Service<Request<TimeoutBody<ReqBody>>, Response = Response<ResBody>>,
{
    type Response = Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity, req.version());
        // The body's limits count from here, the end of its head.
        let req = req.map(|body| TimeoutBody::new(body, self.activity.limits.body));
        TrackedFuture {
            inner: self.inner.call(req),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The answer of a [`Tracked`] service; the request stays in flight until
    /// the answer's body ends or this future is dropped unfinished.
    #[derive(Debug)]
    pub(super) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(res.map(|res| res.map(|inner| TrackedBody { inner, in_flight })))
    }
}

pin_project! {
    /// An answer's body; its request is in flight until it ends or is dropped.
    #[derive(Debug)]
    pub(super) struct TrackedBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: http_body::Body> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // The end, or an error that ends it: no need to wait for the drop.
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 1,
            max_header_bytes: 8192,
            idle_timeout: Duration::from_secs(60),
            body: crate::timeout::BodyTimeouts {
                between_reads: Duration::from_secs(60),
                total: None,
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_head_timeout_from_its_accept() {
        let t0 = Instant::now();
        let a = Activity::new(t0, &limits());
        assert_eq!(
            a.deadline(),
            Some((Phase::Head, t0 + Duration::from_secs(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_has_no_deadline_until_its_answer_ends() {
        let a = Activity::new(Instant::now(), &limits());
        let first = InFlight::start(&a, Version::HTTP_11);
        let second = InFlight::start(&a, Version::HTTP_11);
        assert_eq!(a.deadline(), None);
        drop(first);
        assert_eq!(a.deadline(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(second);
        let idle_from = Instant::now();
        assert_eq!(
            a.deadline(),
            Some((Phase::Idle, idle_from + Duration::from_secs(60)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_of_the_next_request_starts_the_head_timeout() {
        let a = Activity::new(Instant::now(), &limits());
        drop(InFlight::start(&a, Version::HTTP_11));
        tokio::time::advance(Duration::from_secs(30)).await;
        a.on_read();
        let head_from = Instant::now();
        assert_eq!(
            a.deadline(),
            Some((Phase::Head, head_from + Duration::from_secs(10)))
        );
        // Later bytes of the same head do not move it.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.on_read();
        assert_eq!(
            a.deadline(),
            Some((Phase::Head, head_from + Duration::from_secs(10)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_between_http2_requests_leave_the_connection_idle() {
        let a = Activity::new(Instant::now(), &limits());
        drop(InFlight::start(&a, Version::HTTP_2));
        let idle_from = Instant::now();
        a.on_read();
        assert_eq!(
            a.deadline(),
            Some((Phase::Idle, idle_from + Duration::from_secs(60)))
        );
    }

    /// Whether the task was woken (a stored permit counts).
    async fn woken(a: &Activity) -> bool {
        tokio::time::timeout(Duration::from_millis(1), a.changed())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_earlier_than_the_timer_wakes_the_connection_task() {
        let a = Activity::new(Instant::now(), &limits());
        // No timer set yet: going idle wakes the task.
        let in_flight = InFlight::start(&a, Version::HTTP_11);
        drop(in_flight);
        assert!(woken(&a).await);
        let idle_until = a.arm(false).unwrap();
        // The next head's 10 s are earlier than the idle minute: a wake.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.on_read();
        assert!(woken(&a).await);
        assert!(a.arm(false).unwrap() < idle_until);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_on_a_busy_connection_neither_wake_the_task_nor_move_its_timer() {
        let a = Activity::new(Instant::now(), &limits());
        let head_until = a.arm(false).unwrap();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(100)).await;
            let in_flight = InFlight::start(&a, Version::HTTP_11);
            // Busy keeps the timer where it is.
            assert_eq!(a.arm(false), Some(head_until));
            drop(in_flight);
            tokio::time::advance(Duration::from_millis(100)).await;
            a.on_read();
            assert!(!woken(&a).await);
        }
        // When it fires, the deadline has moved on: the timer is set again.
        let next = a.arm(false).unwrap();
        assert!(next > head_until);
        assert_eq!(a.deadline().map(|(_, at)| at), Some(next));
        // A timer that fired while busy is left unset, not set in the past.
        let in_flight = InFlight::start(&a, Version::HTTP_11);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(a.arm(false), None);
        drop(in_flight);
        assert!(woken(&a).await);
    }

    #[tokio::test(start_paused = true)]
    async fn once_closing_only_a_head_keeps_the_timer() {
        let a = Activity::new(Instant::now(), &limits());
        assert!(a.arm(true).is_some());
        drop(InFlight::start(&a, Version::HTTP_11));
        assert_eq!(a.arm(true), None);
        let in_flight = InFlight::start(&a, Version::HTTP_11);
        assert_eq!(a.arm(true), None);
        drop(in_flight);
    }
}
