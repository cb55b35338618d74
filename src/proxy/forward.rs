//! [`Forward`]: the last step of the request path, sending what the gate admitted
//! to the upstream over a pooled connection.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client, ResponseFuture};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::headers::{add_forwarded, strip_hop_by_hop};
use super::Upstream;
use crate::gate::{GateBody, Refusal};

/// How keygate talks to its upstream.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Where requests go.
    pub upstream: Upstream,
    /// Limit on the TCP connect; past it, 502.
    pub connect_timeout: Duration,
    /// Limit from sending the request to the upstream's response headers; past
    /// it, 504.
    pub upstream_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// How many idle connections to keep to the upstream.
    pub pool_max_idle_per_host: usize,
    /// Clients reach keygate over TLS: sets `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// What every connection's `Forward` shares: the pool and the target.
struct Shared<B> {
    client: Client<HttpConnector, B>,
    upstream: Upstream,
    timeout: Duration,
    proto: HeaderValue,
}

/// Sends requests to the upstream and streams its answers back. One per client
/// connection (it carries the client's address); cloning is a reference count.
pub struct Forward<B> {
    shared: Arc<Shared<B>>,
    client_ip: HeaderValue,
}

impl<B> Clone for Forward<B> {
    fn clone(&self) -> Self {
        Forward {
            shared: Arc::clone(&self.shared),
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
    /// A forwarder with its own connection pool.
    pub fn new(config: &ForwardConfig) -> Forward<B> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(connector);
        Forward {
            shared: Arc::new(Shared {
                client,
                upstream: config.upstream.clone(),
                timeout: config.upstream_timeout,
                proto: HeaderValue::from_static(if config.https { "https" } else { "http" }),
            }),
            client_ip: HeaderValue::from_static("unknown"),
        }
    }

    /// This forwarder for one client connection from `ip`. Its address is turned
    /// into a header value here, once per connection, not once per request.
    pub fn for_client(&self, ip: std::net::IpAddr) -> Forward<B> {
        Forward {
            shared: Arc::clone(&self.shared),
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
    type Response = Response<GateBody<Incoming>>;
    type Error = Infallible;
    type Future = ForwardFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pool queues requests itself; there is nothing to wait for here.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ForwardFuture {
        // Request hop-by-hop headers went as the request arrived (`HopByHop`).
        let (mut parts, body) = req.into_parts();
        add_forwarded(&mut parts.headers, &self.client_ip, &self.shared.proto);
        parts.uri = self.shared.upstream.target(parts.uri);
        // The upstream connection is HTTP/1.1 whatever the client spoke.
        parts.version = Version::HTTP_11;
        let fut = self.shared.client.request(Request::from_parts(parts, body));
        ForwardFuture {
            inner: tokio::time::timeout(self.shared.timeout, fut),
        }
    }
}

pin_project! {
    /// The upstream's answer, or 502/504.
    pub struct ForwardFuture {
        #[pin]
        inner: tokio::time::Timeout<ResponseFuture>,
    }
}

impl Future for ForwardFuture {
    type Output = Result<Response<GateBody<Incoming>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = match ready!(self.project().inner.poll(cx)) {
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, GateBody::inner(body))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
                Refusal::UpstreamUnavailable.into_response()
            }
            Err(_elapsed) => {
                tracing::warn!("upstream did not answer in time");
                Refusal::UpstreamTimeout.into_response()
            }
        };
        Poll::Ready(Ok(res))
    }
}
