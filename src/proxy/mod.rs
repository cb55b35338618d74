//! The reverse proxy: step 6 of the request path, and the listener around it.
//!
//! [`Forward`] is a tower service that sends a request to an upstream server
//! over a connection kept for the client connection (the private `client`
//! module: HTTP/1.1, or HTTP/2 when an HTTPS server picks it by ALPN; at most
//! `max_upstream_connections` open; several servers in turn, a failing one
//! skipped) and streams the answer back: bodies are never buffered. Connections
//! are opened by the private `connect` module (happy eyeballs), then TLS for
//! `https` servers ([`UpstreamTls`](crate::tls::UpstreamTls)). It removes the
//! answer's hop-by-hop headers ([`HopByHop`] removes the request's as it
//! arrives, before the gate), appends the client to `X-Forwarded-For`, sets
//! `X-Forwarded-Proto` and the upstream's `Host`, and answers 502
//! `UPSTREAM_UNAVAILABLE` when no server can be reached, 503 `UPSTREAM_BUSY`
//! when every allowed connection stays busy, 504 `UPSTREAM_TIMEOUT` when the
//! upstream does not answer in time, and 408 `REQUEST_TIMEOUT` when the
//! client's body stops arriving. keygate's listener runs
//! [`KeyGate`](crate::gate::KeyGate) in front of it, and, unless
//! `proxy.access_log` is off, [`AccessLog`] around both; [`Ready`] answers the
//! load balancers' `GET /_keygate/ready` inside the access log, before the gate.

pub mod access;
mod client;
mod connect;
mod forward;
mod headers;
mod ready;
mod request_id;
mod upstream;

pub use access::{AccessLog, AccessLogLayer};
pub use forward::{Forward, ForwardConfig, ForwardFuture, ForwardReload, UpstreamBody};
pub use headers::{HopByHop, X_FORWARDED_FOR, X_FORWARDED_PROTO};
pub use ready::{Ready, ReadyFuture, READY_PATH};
pub use request_id::{RequestId, RequestIdFuture, RequestIds, X_REQUEST_ID};
pub use upstream::{Upstream, UpstreamError};
