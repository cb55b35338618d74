//! [`Measured`]: counts every proxied request's outcome and times.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::Metrics;
use crate::proxy::access::OwnAnswer;

/// Counts each request's outcome (`forwarded` or keygate's own answer's code)
/// and times it when its answer's head is ready: what keygate added, and the
/// upstream's time when the upstream answered.
#[derive(Debug, Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Measured<S> {
    /// Measures `inner` into `metrics`.
    pub fn new(inner: S, metrics: Arc<Metrics>) -> Self {
        Measured { inner, metrics }
    }
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Measured<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: OwnAnswer,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = MeasuredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        MeasuredFuture {
            start: Instant::now(),
            metrics: Arc::clone(&self.metrics),
            inner: self.inner.call(req),
        }
    }
}

pin_project! {
    /// The inner future; counts the answer when its head is ready.
    pub struct MeasuredFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        metrics: Arc<Metrics>,
    }
}

impl<F> std::fmt::Debug for MeasuredFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeasuredFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for MeasuredFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: OwnAnswer,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(res) = &result {
            let body = res.body();
            let upstream = body.upstream_time();
            let keygate = this
                .start
                .elapsed()
                .saturating_sub(upstream.unwrap_or_default());
            this.metrics.request(body.own_code(), keygate, upstream);
        }
        Poll::Ready(result)
    }
}
