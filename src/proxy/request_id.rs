//! [`RequestId`]: every request on the proxy listener carries an
//! `x-request-id`, upstream and back.
//!
//! A client's own id is kept when it is 1 to 128 visible ASCII characters
//! (`!` to `~`); otherwise (absent, repeated, too long, or with other bytes)
//! keygate replaces it with one of its own: a random prefix (one per proxy
//! worker) and a counter, `kg-3f9a1c0e5b7d2468-1a2b`, unique across restarts
//! and cheap (no randomness per request). The id goes upstream in the request, back to the
//! client on every answer (keygate's own refusals too), and into a `request`
//! span around the request's handling, so every log line about it names it;
//! the access log line carries it as a field.
//!
//! The layer is the outermost on the proxy listener, so nothing answers
//! before the id is set.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Span;

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client id kept.
pub const MAX_REQUEST_ID: usize = 128;

/// Makes keygate's own ids: a random prefix and a counter (one source per
/// proxy worker thread, so that no counter is shared by every request of
/// every worker).
#[derive(Debug)]
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: format!("kg-{:016x}-", rand::random::<u64>()),
            next: AtomicU64::new(1),
        }
    }
}

impl RequestIds {
    /// A fresh source of ids.
    pub fn new() -> Arc<RequestIds> {
        Arc::new(RequestIds::default())
    }

    /// The next id.
    pub fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = String::with_capacity(self.prefix.len() + 16);
        s.push_str(&self.prefix);
        // Writing to a String cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{n:x}"));
        // The prefix and a hex number are visible ASCII.
        HeaderValue::from_maybe_shared(bytes::Bytes::from(s))
            .unwrap_or_else(|_| HeaderValue::from_static("kg-invalid"))
    }
}

/// Whether a client's id is kept: 1 to 128 visible ASCII characters.
pub fn acceptable(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// Sets every request's `x-request-id` and returns it on the answer.
#[derive(Debug, Clone)]
pub struct RequestId<S> {
    inner: S,
    ids: Arc<RequestIds>,
}

impl<S> RequestId<S> {
    /// Wraps `inner`, making ids with `ids`.
    pub fn new(inner: S, ids: Arc<RequestIds>) -> Self {
        RequestId { inner, ids }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let headers = req.headers_mut();
        let id = {
            let mut values = headers.get_all(&X_REQUEST_ID).iter();
            match (values.next(), values.next()) {
                (Some(v), None) if acceptable(v) => v.clone(),
                _ => {
                    let id = self.ids.next();
                    headers.insert(X_REQUEST_ID, id.clone());
                    id
                }
            }
        };
        let span = tracing::info_span!(
            "request",
            id = %String::from_utf8_lossy(id.as_bytes())
        );
        let inner = span.in_scope(|| self.inner.call(req));
        RequestIdFuture { inner, id, span }
    }
}

pin_project! {
    /// The inner future, in the request's span; sets the id on its answer.
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: HeaderValue,
        span: Span,
    }
}

impl<F> std::fmt::Debug for RequestIdFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestIdFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(res) = &mut result {
            res.headers_mut().insert(X_REQUEST_ID, this.id.clone());
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_only_when_it_is_1_to_128_visible_ascii() {
        let ok = |s: &[u8]| acceptable(&HeaderValue::from_bytes(s).unwrap());
        assert!(ok(b"abc-123_XYZ:/.=+"));
        assert!(ok("a".repeat(128).as_bytes()));
        assert!(!ok("a".repeat(129).as_bytes()));
        assert!(!ok(b""));
        assert!(!ok(b"has space"));
        assert!(!ok(b"tab\there"));
        assert!(!ok(&[b'a', 0x80, b'b']));
    }

    #[test]
    fn generated_ids_are_distinct_visible_ascii_with_one_prefix() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert!(acceptable(v), "{v:?}");
            assert!(v.to_str().unwrap().starts_with(&ids.prefix));
        }
    }
}
