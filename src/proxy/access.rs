//! The access log: one line per proxied request, at `info`, target
//! `keygate::access`.
//!
//! [`AccessLog`] wraps the whole per-client proxy stack, outside the gate. It
//! notes when a request arrives, counts the bytes of the request body as the
//! upstream reads them ([`CountedBody`]) and of the answer's body as the
//! client is sent them ([`LoggedBody`]), and writes its line once the answer's
//! body has ended, or, marked `complete=false`, when it is dropped before the
//! end (the client hung up) or the client left before the answer's head.
//!
//! A line reads (the time is the log's own, taken when the line is written):
//!
//! ```text
//! 2026-11-30T07:00:00.000000Z  INFO keygate::access: org=acme method=GET path=/acme/v1/users status=200 code=forwarded bytes_in=0 bytes_out=512 keygate_us=41 upstream_us=880 complete=true request_id=kg-3f9a1c0e5b7d2468-1a
//! ```
//!
//! - `org`: the org whose key the request presented, or `-` when it presented
//!   none that matched (`MISSING_KEY`, `INVALID_KEY`: the name a client typed
//!   is not logged as if it were an org);
//! - `path`: as the client sent it, without the query string unless
//!   `proxy.access_log_query` is on; never a header, so never a key;
//! - `code`: the contract code of keygate's own answer, `forwarded` for the
//!   upstream's, `-` when there was no answer;
//! - `bytes_in`, `bytes_out`: body bytes (request body read, answer body sent);
//! - `keygate_us`: microseconds from the request's head to its answer's head,
//!   less `upstream_us`, the time from sending the request upstream to the
//!   upstream's answer's head (`-` when keygate answered itself);
//! - `request_id`: the request's `x-request-id` ([`RequestId`](super::RequestId)).
//!   The line is written when the answer's body ends, after the request's
//!   `request` span is left, so the id is a field of its own.
//!
//! What each answer is comes from the answer itself, not from state shared
//! with the inner services: the code from the body of keygate's own answers
//! ([`OwnAnswer`]), the upstream time from the forwarder's
//! [`UpstreamBody`](super::UpstreamBody), which carries it (a marker in the answer's extensions would cost `http`
//! three allocations per answer). With the access log off,
//! or its lines filtered out by the log level at start, the layer is not in
//! the stack at all.
//!
//! Heap allocations per request when on, counted with a counting allocator
//! (2026-11-30): none in the layer for a request without a body (the method
//! and URI clones count references to hyper's buffer), one (the shared byte
//! counter) for a request with one, and three for the upstream time's
//! extension on each forwarded answer (`http`'s map, its table, the boxed
//! value); the `tracing` formatter reuses a per-thread buffer.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::UpstreamBody;
use crate::answer::AnswerBody;
use crate::gate::OrgSource;
use crate::org::OrgId;

/// The `tracing` target of access log lines, so that a filter can turn them
/// off on their own (`KEYGATE_LOG=info,keygate::access=off`).
pub const TARGET: &str = "keygate::access";

/// An answer's body that can tell whether it is one of keygate's own answers,
/// and with which contract code, or how long the upstream took to answer.
pub trait OwnAnswer {
    /// The contract code of keygate's own answer, or `None` for the upstream's.
    fn own_code(&self) -> Option<&'static str>;

    /// From sending the request upstream to the upstream's answer's head, when
    /// the upstream answered and the time was taken.
    fn upstream_time(&self) -> Option<Duration> {
        None
    }
}

impl OwnAnswer for Incoming {
    fn own_code(&self) -> Option<&'static str> {
        None
    }
}

impl OwnAnswer for UpstreamBody {
    fn own_code(&self) -> Option<&'static str> {
        None
    }

    fn upstream_time(&self) -> Option<Duration> {
        self.upstream_time()
    }
}

impl<B: OwnAnswer> OwnAnswer for AnswerBody<B> {
    fn own_code(&self) -> Option<&'static str> {
        // The gate wraps the forwarder's answers, whose 502 and 504 are
        // keygate's own too.
        self.refusal_code()
            .or_else(|| self.get_ref().and_then(OwnAnswer::own_code))
    }

    fn upstream_time(&self) -> Option<Duration> {
        self.get_ref().and_then(OwnAnswer::upstream_time)
    }
}

/// What the layer and its services share.
#[derive(Debug)]
struct Settings {
    /// Where requests name their org; `None` when no gate checks them (bare
    /// mode), so no org is ever vouched for.
    org_from: Option<OrgSource>,
    /// Whether the query string is logged.
    query: bool,
}

/// Applies [`AccessLog`] to a service. Cloning it is one reference count.
#[derive(Debug, Clone)]
pub struct AccessLogLayer {
    settings: Arc<Settings>,
}

impl AccessLogLayer {
    /// A layer logging requests whose org is named as `org_from` says (`None`
    /// when no gate checks keys: every org is logged as `-`), with their
    /// query strings when `query` is true.
    pub fn new(org_from: Option<OrgSource>, query: bool) -> Self {
        AccessLogLayer {
            settings: Arc::new(Settings { org_from, query }),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            settings: Arc::clone(&self.settings),
        }
    }
}

/// Logs one line per request `inner` answers. See the [module docs](self).
#[derive(Debug)]
pub struct AccessLog<S> {
    inner: S,
    settings: Arc<Settings>,
}

// By hand: a derive would require more than `S: Clone`.
impl<S: Clone> Clone for AccessLog<S> {
    fn clone(&self) -> Self {
        AccessLog {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AccessLog<S>
where
    S: Service<Request<CountedBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body,
    ResBody: Body + OwnAnswer,
{
    type Response = Response<LoggedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        // Most requests have no body: they need no counter, so no allocation.
        let bytes_in = (!req.body().is_end_stream()).then(|| Arc::new(AtomicU64::new(0)));
        let org_header = match &self.settings.org_from {
            Some(OrgSource::Header(name)) => req.headers().get(name).cloned(),
            _ => None,
        };
        // Both clones count a reference to the bytes hyper read; neither copies.
        let entry = Entry {
            settings: Arc::clone(&self.settings),
            start,
            method: req.method().clone(),
            uri: req.uri().clone(),
            org_header,
            // A reference count: the value shares the request's bytes.
            request_id: req.headers().get(super::X_REQUEST_ID).cloned(),
            bytes_in: bytes_in.clone(),
        };
        let req = req.map(|inner| CountedBody {
            inner,
            count: bytes_in,
        });
        ResponseFuture {
            inner: self.inner.call(req),
            entry: Some(entry),
        }
    }
}

pin_project! {
    /// A request body that counts its data bytes as they are read.
    #[derive(Debug)]
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        count: Option<Arc<AtomicU64>>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let (Some(Ok(frame)), Some(count)) = (&frame, this.count.as_ref()) {
            if let Some(data) = frame.data_ref() {
                count.fetch_add(bytes::Buf::remaining(data) as u64, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known of a request when it arrives.
#[derive(Debug)]
struct Entry {
    settings: Arc<Settings>,
    start: Instant,
    method: Method,
    uri: Uri,
    /// The org header's value, in header mode.
    org_header: Option<HeaderValue>,
    /// The request's `x-request-id`, as [`RequestId`](super::RequestId) set it.
    request_id: Option<HeaderValue>,
    bytes_in: Option<Arc<AtomicU64>>,
}

/// What is known once the answer's head is there.
#[derive(Debug, Clone, Copy)]
struct Answered {
    status: StatusCode,
    /// keygate's own answer's code, or `None` for the upstream's.
    code: Option<&'static str>,
    /// Head to head, less the upstream's time.
    keygate: Duration,
    upstream: Option<Duration>,
}

impl Entry {
    /// The org, when the answer shows its key matched.
    fn org(&self, answered: Option<&Answered>) -> Option<&[u8]> {
        // Only these are answered before the key (or a session) is found to
        // match: for them the org named is only what the client typed.
        let vouched = answered.is_some_and(|a| {
            !matches!(
                a.code,
                Some(
                    "MISSING_KEY"
                        | "INVALID_KEY"
                        | "INVALID_USERNAME_OR_PASSWORD"
                        | "SESSION_NOT_VALID"
                        | "LOGIN_LOCKED_OUT"
                )
            )
        });
        if !vouched {
            return None;
        }
        let org = match self.settings.org_from.as_ref()? {
            OrgSource::Path => {
                let rest = self.uri.path().strip_prefix('/')?;
                rest.split('/').next().unwrap_or(rest).as_bytes()
            }
            OrgSource::Header(_) => self.org_header.as_ref()?.as_bytes(),
        };
        OrgId::is_valid(org).then_some(org)
    }

    /// Writes the line.
    fn log(&self, answered: Option<&Answered>, bytes_out: u64, complete: bool) {
        let path = if self.settings.query {
            self.uri
                .path_and_query()
                .map_or(self.uri.path(), |pq| pq.as_str())
        } else {
            self.uri.path()
        };
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |c| c.load(Ordering::Relaxed));
        let (status, code, keygate, upstream) = match answered {
            Some(a) => (
                Dash(Some(a.status.as_u16())),
                a.code.unwrap_or("forwarded"),
                a.keygate,
                a.upstream,
            ),
            None => (Dash(None), "-", self.start.elapsed(), None),
        };
        tracing::info!(
            target: TARGET,
            org = %Org(self.org(answered)),
            method = %self.method,
            path = %path,
            status = %status,
            code = %code,
            bytes_in,
            bytes_out,
            keygate_us = micros(keygate),
            upstream_us = %Dash(upstream.map(micros)),
            complete,
            request_id = %RequestIdField(self.request_id.as_ref()),
        );
    }
}

/// The request id as text, or `-`. An id keygate kept is visible ASCII; any
/// other byte is shown escaped, never raw into the log.
struct RequestIdField<'a>(Option<&'a HeaderValue>);

impl fmt::Display for RequestIdField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{}", v.as_bytes().escape_ascii()),
            None => f.write_str("-"),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A value, or `-`.
struct Dash<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for Dash<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// A well-formed org id's bytes (ASCII by [`OrgId::is_valid`]), or `-`.
struct Org<'a>(Option<&'a [u8]>);

impl fmt::Display for Org<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            self.0
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or("-"),
        )
    }
}

pin_project! {
    /// The inner service's answer with its body wrapped in a [`LoggedBody`].
    /// Dropped before the answer (the client left), it logs the request as
    /// incomplete.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Entry>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(entry) = this.project().entry.take() {
                entry.log(None, 0, false);
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
    B: Body + OwnAnswer,
{
    type Output = Result<Response<LoggedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let head = Instant::now();
        // Polled again after `Ready` is a caller's bug; the line is written once.
        let Some(entry) = this.entry.take() else {
            return Poll::Ready(result.map(|res| res.map(LoggedBody::unlogged)));
        };
        let res = match result {
            Ok(res) => res,
            Err(e) => {
                entry.log(None, 0, false);
                return Poll::Ready(Err(e));
            }
        };
        let upstream = res.body().upstream_time();
        let answered = Answered {
            status: res.status(),
            code: res.body().own_code(),
            keygate: head
                .saturating_duration_since(entry.start)
                .saturating_sub(upstream.unwrap_or_default()),
            upstream,
        };
        // hyper sends no body for these, and may drop it unread.
        let bodiless = entry.method == Method::HEAD
            || answered.status.is_informational()
            || answered.status == StatusCode::NO_CONTENT
            || answered.status == StatusCode::NOT_MODIFIED;
        if bodiless || res.body().is_end_stream() {
            entry.log(Some(&answered), 0, true);
            return Poll::Ready(Ok(res.map(LoggedBody::unlogged)));
        }
        Poll::Ready(Ok(res.map(|inner| LoggedBody {
            inner,
            record: Some((entry, answered)),
            bytes_out: 0,
        })))
    }
}

pin_project! {
    /// An answer's body that counts its data bytes and writes the request's
    /// line when it ends, or, as incomplete, when it is dropped before.
    pub struct LoggedBody<B> {
        #[pin]
        inner: B,
        record: Option<(Entry, Answered)>,
        bytes_out: u64,
    }

    impl<B> PinnedDrop for LoggedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((entry, answered)) = this.record.take() {
                entry.log(Some(&answered), *this.bytes_out, false);
            }
        }
    }
}

impl<B> LoggedBody<B> {
    /// A body whose request has been logged already.
    fn unlogged(inner: B) -> Self {
        LoggedBody {
            inner,
            record: None,
            bytes_out: 0,
        }
    }
}

impl<B> fmt::Debug for LoggedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoggedBody")
            .field("bytes_out", &self.bytes_out)
            .finish_non_exhaustive()
    }
}

impl<B: Body> Body for LoggedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let complete = match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes_out += bytes::Buf::remaining(data) as u64;
                }
                // hyper stops polling once a body says it has ended.
                this.inner.is_end_stream().then_some(true)
            }
            None => Some(true),
            Some(Err(_)) => Some(false),
        };
        if let Some(complete) = complete {
            if let Some((entry, answered)) = this.record.take() {
                entry.log(Some(&answered), *this.bytes_out, complete);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::answer::Refusal;

    /// The test upstream's answers: each took it 5 ms.
    impl OwnAnswer for Full<Bytes> {
        fn own_code(&self) -> Option<&'static str> {
            None
        }

        fn upstream_time(&self) -> Option<Duration> {
            Some(Duration::from_millis(5))
        }
    }

    /// What is logged on this thread while it lives.
    struct Capture {
        buf: Arc<Mutex<Vec<u8>>>,
        _guard: tracing::subscriber::DefaultGuard,
    }

    #[derive(Clone)]
    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn start() -> Capture {
            let buf = Arc::new(Mutex::new(Vec::new()));
            let writer = Writer(Arc::clone(&buf));
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            Capture {
                buf,
                _guard: tracing::subscriber::set_default(subscriber),
            }
        }

        fn text(&self) -> String {
            String::from_utf8(self.buf.lock().unwrap().clone()).unwrap()
        }
    }

    /// Everything logged while `f` runs, as text.
    async fn logged<F: Future<Output = ()>>(f: F) -> String {
        let capture = Capture::start();
        f.await;
        capture.text()
    }

    /// The access lines of `text`.
    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| l.contains(TARGET)).collect()
    }

    fn layer() -> AccessLogLayer {
        AccessLogLayer::new(Some(OrgSource::Path), false)
    }

    /// An upstream stand-in: reads the whole request body, answers `answer`
    /// with an upstream time of 5 ms.
    fn upstream(
        answer: &'static str,
    ) -> impl Service<
        Request<CountedBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
    > {
        tower::service_fn(move |req: Request<CountedBody<Full<Bytes>>>| async move {
            let _ = req.into_body().collect().await;
            Ok(Response::new(Full::new(Bytes::from_static(
                answer.as_bytes(),
            ))))
        })
    }

    fn post(uri: &str, body: &'static str) -> Request<Full<Bytes>> {
        Request::post(uri)
            .header("x-api-key", "Secret123456")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap()
    }

    #[tokio::test]
    async fn a_forwarded_answer_is_logged_once_when_its_body_ends() {
        let capture = Capture::start();
        let mut svc = layer().layer(upstream("7 bytes"));
        let res = svc
            .call(post("/acme/v1/x?q=secret", "hello"))
            .await
            .unwrap();
        assert!(lines(&capture.text()).is_empty(), "a line before the end");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"7 bytes");
        let text = capture.text();
        let lines = lines(&text);
        assert_eq!(lines.len(), 1, "{text}");
        let line = lines[0];
        for field in [
            "org=acme",
            "method=POST",
            "path=/acme/v1/x ",
            "status=200",
            "code=forwarded",
            "bytes_in=5",
            "bytes_out=7",
            "upstream_us=5000",
            "complete=true",
        ] {
            assert!(line.contains(field), "{field} not in {line}");
        }
        assert!(
            !line.contains("secret") && !line.contains("Secret123456"),
            "{line}"
        );
    }

    #[tokio::test]
    async fn the_query_is_logged_when_switched_on() {
        let text = logged(async {
            let mut svc = AccessLogLayer::new(Some(OrgSource::Path), true).layer(upstream("ok"));
            let res = svc.call(post("/acme/v1/x?q=1", "")).await.unwrap();
            let _ = res.into_body().collect().await;
        })
        .await;
        assert!(text.contains("path=/acme/v1/x?q=1 "), "{text}");
    }

    #[tokio::test]
    async fn the_org_is_named_only_when_the_answer_shows_the_key_matched() {
        for (refusal, org) in [
            (Refusal::MissingKey, "org=-"),
            (Refusal::InvalidKey, "org=-"),
            (Refusal::KeyDisabled, "org=acme"),
            (Refusal::UpstreamTimeout, "org=acme"),
        ] {
            let text = logged(async {
                let inner =
                    tower::service_fn(move |_req: Request<CountedBody<Full<Bytes>>>| async move {
                        Ok::<_, Infallible>(refusal.into_response::<Full<Bytes>>())
                    });
                let res = layer()
                    .layer(inner)
                    .call(post("/acme/v1", ""))
                    .await
                    .unwrap();
                let _ = res.into_body().collect().await;
            })
            .await;
            let line = lines(&text).concat();
            assert!(line.contains(org), "{refusal:?}: {line}");
            assert!(
                line.contains(&format!("code={} ", refusal.code())),
                "{line}"
            );
            assert!(line.contains("upstream_us=-"), "{line}");
        }
    }

    #[tokio::test]
    async fn in_header_mode_the_org_comes_from_the_org_header() {
        let text = logged(async {
            let mut svc = AccessLogLayer::new(
                Some(OrgSource::Header(http::HeaderName::from_static("x-org-id"))),
                false,
            )
            .layer(upstream("ok"));
            let mut req = post("/v1/x", "");
            req.headers_mut()
                .insert("x-org-id", HeaderValue::from_static("globex"));
            let _ = svc.call(req).await.unwrap().into_body().collect().await;
        })
        .await;
        assert!(text.contains("org=globex "), "{text}");
    }

    #[tokio::test]
    async fn without_a_gate_no_org_is_vouched_for() {
        let text = logged(async {
            let mut svc = AccessLogLayer::new(None, false).layer(upstream("ok"));
            let _ = svc
                .call(post("/acme/v1", ""))
                .await
                .unwrap()
                .into_body()
                .collect()
                .await;
        })
        .await;
        assert!(text.contains("org=- "), "{text}");
    }

    /// A body that yields one frame, then never ends.
    struct Stalling(Option<Bytes>);

    impl Body for Stalling {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    impl OwnAnswer for Stalling {
        fn own_code(&self) -> Option<&'static str> {
            None
        }
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_logged_as_incomplete() {
        let text = logged(async {
            let inner = tower::service_fn(|_req: Request<CountedBody<Full<Bytes>>>| async {
                Ok::<_, Infallible>(Response::new(Stalling(Some(Bytes::from_static(b"0123")))))
            });
            let res = layer()
                .layer(inner)
                .call(post("/acme/v1", ""))
                .await
                .unwrap();
            let mut body = res.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.into_data().unwrap().len(), 4);
            drop(body);
        })
        .await;
        let line = lines(&text).concat();
        assert!(line.contains("bytes_out=4 "), "{line}");
        assert!(line.contains("complete=false"), "{line}");
    }

    #[tokio::test]
    async fn a_client_gone_before_the_answer_is_logged_without_a_status() {
        let text = logged(async {
            let inner = tower::service_fn(|_req: Request<CountedBody<Full<Bytes>>>| {
                std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
            });
            let fut = layer().layer(inner).call(post("/acme/v1", ""));
            // Polled once, then dropped, as hyper does when the client hangs up.
            let _ = tokio::time::timeout(Duration::from_millis(1), fut).await;
        })
        .await;
        let line = lines(&text).concat();
        for field in ["org=-", "status=-", "code=-", "complete=false"] {
            assert!(line.contains(field), "{field} not in {line}");
        }
    }

    #[test]
    fn the_forwarders_own_answers_are_found_inside_the_gates_body() {
        let upstream_502 = AnswerBody::<AnswerBody<Incoming>>::inner(AnswerBody::refusal(
            "UPSTREAM_UNAVAILABLE",
            Bytes::new(),
        ));
        assert_eq!(upstream_502.own_code(), Some("UPSTREAM_UNAVAILABLE"));
        let gate_401 = AnswerBody::<AnswerBody<Incoming>>::refusal("INVALID_KEY", Bytes::new());
        assert_eq!(gate_401.own_code(), Some("INVALID_KEY"));
    }
}
