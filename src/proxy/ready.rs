//! [`Ready`]: `GET /_keygate/ready` on the proxy listener, for load balancers.
//!
//! It answers before the gate, without a key, exactly as the admin listener's
//! `GET /readyz` does: 200 `{"status":"ready"}` while the node serves proxied
//! requests ([`Store::serving`]), 503 `{"code":"NOT_READY",...}` while it does
//! not. A layer of its own rather than a step of the gate: readiness is not a
//! question about an org, so the gate's request path (resolve org, check key,
//! ...) stays as the contract orders it, and in header mode, where a request's
//! path belongs to the upstream, this one path is still keygate's. No org id
//! can start with `_`, so in path mode the path never names an org.
//!
//! It sits inside the access log, so probes are logged like any answer, and
//! outside [`HopByHop`](super::HopByHop) and the gate. Every other request
//! costs one comparison of its path.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::answer::AnswerBody;
use crate::store::Store;

/// The path of the proxy listener's readiness probe.
pub const READY_PATH: &str = "/_keygate/ready";

/// Answers [`READY_PATH`] itself; passes every other request to the inner service.
#[derive(Clone, Debug)]
pub struct Ready<S> {
    inner: S,
    store: Store,
}

impl<S> Ready<S> {
    /// Wraps `inner`; `store` says whether the node serves.
    pub fn new(inner: S, store: Store) -> Self {
        Ready { inner, store }
    }
}

/// The probe's answer now: 200 `READY` or 503 `NOT_READY`.
fn answer<B>(store: &Store) -> Response<AnswerBody<B>> {
    let (status, code, body) = if store.serving() {
        (
            StatusCode::OK,
            "READY",
            Bytes::from_static(br#"{"status":"ready"}"#),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            Bytes::from_static(
                br#"{"code":"NOT_READY","message":"this node does not serve requests now"}"#,
            ),
        )
    };
    let mut res = Response::new(AnswerBody::refusal(code, body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Ready<S>
where
    S: Service<Request<ReqBody>, Response = Response<AnswerBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ReadyFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if req.uri().path() == READY_PATH && matches!(*req.method(), Method::GET | Method::HEAD) {
            return ReadyFuture {
                kind: Kind::Answered {
                    res: Some(answer(&self.store)),
                },
            };
        }
        ReadyFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

pin_project! {
    /// The inner service's future, or the probe's answer at once.
    pub struct ReadyFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        Inner { #[pin] fut: F },
        Answered { res: Option<Response<AnswerBody<B>>> },
    }
}

impl<F, B> std::fmt::Debug for ReadyFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ReadyFuture<F, B>
where
    F: Future<Output = Result<Response<AnswerBody<B>>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut.poll(cx),
            // Polled again after Ready only by a broken executor; the probe's
            // answer is cheap to make twice, but a future has no store, so
            // answer as the contract does for a node that cannot vouch.
            KindProj::Answered { res } => Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                let mut r = Response::new(AnswerBody::refusal("NOT_READY", Bytes::new()));
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                r
            }))),
        }
    }
}
