//! The reverse proxy: step 6 of the request path, and the listener around it.
//!
//! [`Forward`] is a tower service that sends a request to the upstream over an
//! HTTP/1.1 connection kept for the client connection (the private `client`
//! module) and streams the answer back: bodies are never buffered. It removes
//! the answer's hop-by-hop headers ([`HopByHop`] removes the request's as it
//! arrives, before the gate), appends the client to `X-Forwarded-For`, sets
//! `X-Forwarded-Proto`, and answers 502 `UPSTREAM_UNAVAILABLE` when the
//! upstream cannot be reached and 504 `UPSTREAM_TIMEOUT` when it does not
//! answer in time. keygate's listener runs
//! [`KeyGate`](crate::gate::KeyGate) in front of it.

mod client;
mod connect;
mod forward;
mod headers;
mod upstream;

pub use forward::{Forward, ForwardConfig, ForwardFuture};
pub use headers::{HopByHop, X_FORWARDED_FOR, X_FORWARDED_PROTO};
pub use upstream::{Upstream, UpstreamError};
