//! How one listener treats its client connections: the limits the accept loop
//! (`listener`) and each connection's phases (`activity`) enforce. The config
//! fills them from the keys of the same names in `[proxy]` and in `[admin]`.

use std::time::Duration;

use crate::timeout::BodyTimeouts;

/// How one listener treats client connections: the keys of the same names in
/// `[proxy]` and in `[admin]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time to receive a request's head, from the accept (TLS handshake
    /// included) or from the first byte of a later request; past it the
    /// connection is dropped.
    pub header_read_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// The largest request head accepted; beyond it, 431.
    pub max_header_bytes: usize,
    /// Time a keep-alive connection may sit with no request in flight and no
    /// byte of a next one; past it the connection is closed.
    pub idle_timeout: Duration,
    /// How long a request body may take: between two reads, and in all (the
    /// admin listener); past it, 408.
    pub body: BodyTimeouts,
}
