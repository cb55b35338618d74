//! The file as written: [`RawConfig`] and its sections, every key at its
//! default, and the walk that names each unknown key and wrong type.

use serde::{Deserialize, Serialize};

use super::error::{invalid, ConfigError};
use crate::org::Limits;

/// The configuration file as written, every key at its default until the file
/// sets it. Nothing here is checked; [`RawConfig::validate`] does that.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// The listener clients call with their org's API key.
    pub proxy: RawProxy,
    /// The listener providers, admins and viewers call to manage keys.
    pub admin: RawAdmin,
    /// Where org state, tokens and the audit log persist.
    pub store: RawStore,
    /// The limits every org has unless the provider overrides them.
    pub limits: RawLimits,
    /// `[cluster]`: several nodes on one Redis; absent, keygate is one node
    /// over its embedded store.
    pub cluster: Option<RawCluster>,
    /// `[session]`: ZIA-compatible session login; absent, it is off.
    pub session: Option<RawSession>,
    /// `[log]`: how keygate writes its log.
    pub log: RawLog,
}

/// `[session]`: session login for the vendor's clients (contract section 8).
/// Its presence turns it on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSession {
    /// The login path under an org's base URL (path mode: after `/{org}`).
    pub path: String,
    /// Seconds without a call after which a session ends (the vendor's default, 300).
    pub idle_timeout_secs: i64,
    /// Seconds after login at which a session ends, used or not.
    pub max_age_secs: i64,
    /// How far, in seconds, a login's timestamp may be from this node's clock.
    pub timestamp_window_secs: i64,
}

impl Default for RawSession {
    /// The contract's defaults.
    fn default() -> Self {
        RawSession {
            path: "/api/v1/authenticatedSession".to_owned(),
            idle_timeout_secs: 300,
            max_age_secs: 43_200,
            timestamp_window_secs: 300,
        }
    }
}

/// `[log]`: how keygate writes its log (to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// `text` (one human line per event) or `json` (one JSON object per
    /// line, for log shippers); `--log-format` overrides it.
    pub format: String,
    /// Which events are written: a level (`info`) or `tracing` filter
    /// directives (`info,keygate::access=warn`). In the config rather than
    /// only in the environment so that a reload (`SIGHUP`) can change it;
    /// `KEYGATE_LOG`, when set, overrides it for the life of the process.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".to_owned(),
            level: "info".to_owned(),
        }
    }
}

/// `[proxy]`: how clients reach keygate and how keygate reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawProxy {
    /// The address clients connect to, as `ip:port`.
    pub listen: String,
    /// Where every accepted request is forwarded: one URL, or a list of URLs
    /// of one service (same scheme and base path) that requests are spread
    /// over; required, because a gateway with nowhere to forward has no
    /// purpose.
    pub upstream: Option<RawUpstream>,
    /// A PEM file of the CA certificates that `https` upstreams' certificates
    /// must chain to, for a private CA; unset trusts the public roots built
    /// into keygate.
    pub upstream_ca_path: Option<String>,
    /// The most upstream connections open at once, all servers together, so
    /// that a burst cannot open a socket per client toward the upstream.
    pub max_upstream_connections: i64,
    /// How long an upstream server whose connect failed is skipped, when the
    /// list has several, so that requests stop paying for a dead server.
    pub upstream_fail_timeout_secs: i64,
    /// Forward the client's `Host` instead of the upstream's, for upstreams
    /// that route on the name the client used.
    pub preserve_host: bool,
    /// The request header that carries the org's API key.
    pub key_header: String,
    /// Where a request names its org: `"path"` (first segment) or `"header"`.
    pub org_from: String,
    /// The header that names the org when `org_from = "header"`.
    pub org_header: String,
    /// The base of the URL shown to admins on the key page; needed because
    /// behind a load balancer `listen` is not what clients type. Unset means
    /// `http://{listen}`.
    pub public_url: Option<String>,
    /// Methods refused while an org's subscription is expired, so that an
    /// expired org can still read but no longer write.
    pub blocked_when_expired: Vec<String>,
    /// How long to wait for the upstream's TCP connect before answering 502,
    /// so a dead upstream fails fast instead of holding the client.
    pub connect_timeout_ms: i64,
    /// How long to wait for the upstream's response headers before answering
    /// 504, so a hung upstream cannot pin connections forever.
    pub upstream_timeout_ms: i64,
    /// How long an idle pooled upstream connection is kept for reuse; shorter
    /// than the upstream's own keep-alive avoids reusing a closing socket.
    pub pool_idle_timeout_secs: i64,
    /// How many idle connections to the upstream are kept for reuse, which
    /// bounds the file descriptors a burst leaves behind.
    pub pool_max_idle_per_host: i64,
    /// How long a client may take to send a request's head (request line and
    /// headers), from the accept or from the first byte of a later request on
    /// the connection, TLS handshake included; past it the connection is
    /// closed, against slowloris-style clients.
    pub header_read_timeout_ms: i64,
    /// The most connections served at once; beyond it new connections wait in
    /// the kernel's listen backlog, so a flood cannot exhaust memory or file
    /// descriptors.
    pub max_connections: i64,
    /// The largest request head (request line and headers) accepted, in
    /// bytes; a larger one is answered 431. Bounds the memory one request can
    /// hold before keygate has looked at it.
    pub max_header_bytes: i64,
    /// How long a keep-alive connection may wait, with no request in flight,
    /// for the first byte of its next request before it is closed, so idle
    /// clients cannot hold connections forever.
    pub idle_timeout_ms: i64,
    /// How long a request body may go without a byte arriving, once the
    /// body's reader waits for it (nginx's `client_body_timeout`); past it
    /// the client gets 408 and its connection is closed, so a body that stops
    /// arriving cannot hold a connection and an upstream connection forever.
    pub body_read_timeout_ms: i64,
    /// How long the upstream's answer body may go without a byte arriving
    /// (nginx's `proxy_read_timeout`); past it both connections are closed,
    /// so an upstream that stalls mid-answer cannot hold them forever.
    pub upstream_read_timeout_ms: i64,
    /// Whether every proxied request gets one line at `info` (target
    /// `keygate::access`): what operators look for first when a client says
    /// "it failed". Off removes the access log layer from the stack entirely.
    pub access_log: bool,
    /// Whether access log lines show the query string. Off by default: a query
    /// may carry what its sender considers secret, and logs travel far.
    pub access_log_query: bool,
    /// `[proxy.tls]`: serve HTTPS on this listener; absent for plain HTTP.
    pub tls: Option<RawTls>,
}

impl Default for RawProxy {
    /// The contract's defaults, and ours for the keys it leaves to us.
    fn default() -> Self {
        RawProxy {
            listen: "127.0.0.1:8080".to_owned(),
            upstream: None,
            upstream_ca_path: None,
            max_upstream_connections: DEFAULT_MAX_UPSTREAM_CONNECTIONS,
            upstream_fail_timeout_secs: 10,
            preserve_host: false,
            key_header: "x-api-key".to_owned(),
            org_from: "path".to_owned(),
            org_header: "x-org-id".to_owned(),
            public_url: None,
            blocked_when_expired: vec!["POST".to_owned(), "PUT".to_owned()],
            connect_timeout_ms: 2_000,
            upstream_timeout_ms: 30_000,
            pool_idle_timeout_secs: 90,
            pool_max_idle_per_host: 256,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            body_read_timeout_ms: DEFAULT_BODY_READ_TIMEOUT_MS,
            upstream_read_timeout_ms: 60_000,
            access_log: true,
            access_log_query: false,
            tls: None,
        }
    }
}

/// `proxy.upstream`: one URL or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RawUpstream {
    /// `upstream = "http://..."`.
    One(String),
    /// `upstream = ["http://...", "http://..."]`.
    Many(Vec<String>),
}

impl From<String> for RawUpstream {
    fn from(url: String) -> Self {
        RawUpstream::One(url)
    }
}

/// By hand rather than `#[serde(untagged)]`, whose error ("data did not match
/// any variant") would not say what the key takes.
impl<'de> Deserialize<'de> for RawUpstream {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawUpstream;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawUpstream, E> {
                Ok(RawUpstream::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawUpstream, A::Error> {
                let mut urls = Vec::new();
                while let Some(url) = seq.next_element()? {
                    urls.push(url);
                }
                Ok(RawUpstream::Many(urls))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// 1,024: an HTTP/1.1 connection carries one request at a time, so this is
/// how many requests can be at the upstream at once. A tenth of the 10,000
/// client connections `max_connections` allows, because most client
/// connections sit idle between requests (and idle upstream connections are
/// handed on at the cap); and a bound on the sockets a flood of clients can
/// make keygate open toward an upstream that may not be sized for the flood.
const DEFAULT_MAX_UPSTREAM_CONNECTIONS: i64 = 1_024;

/// 60 s, nginx's `client_body_timeout`: a client that sends nothing for a
/// minute mid-body has gone.
const DEFAULT_BODY_READ_TIMEOUT_MS: i64 = 60_000;

/// 64 KiB: ten times what browsers send, a fraction of hyper's ~400 KB buffer.
const DEFAULT_MAX_HEADER_BYTES: i64 = 65_536;
/// 60 s: longer than the keep-alive of common clients' pools (curl, Go, Python
/// requests reuse within seconds), short enough to free an abandoned slot.
const DEFAULT_IDLE_TIMEOUT_MS: i64 = 60_000;

/// `[admin]`: the management listener and who is its provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAdmin {
    /// The address the admin API listens on, as `ip:port`; separate from the
    /// proxy's so it can stay on a private interface.
    pub listen: String,
    /// Lowercase hex SHA-256 of the provider's bearer token; required, because
    /// without it nobody could provision an org. Only the digest is configured
    /// so the file never holds the secret.
    pub provider_token_sha256: Option<String>,
    /// As `proxy.header_read_timeout_ms`, for the admin listener.
    pub header_read_timeout_ms: i64,
    /// As `proxy.max_connections`, for the admin listener; lower by default,
    /// since its callers are few, so a flood here leaves file descriptors for
    /// the proxy.
    pub max_connections: i64,
    /// As `proxy.max_header_bytes`, for the admin listener.
    pub max_header_bytes: i64,
    /// As `proxy.idle_timeout_ms`, for the admin listener.
    pub idle_timeout_ms: i64,
    /// As `proxy.body_read_timeout_ms`, for the admin listener.
    pub body_read_timeout_ms: i64,
    /// How long a whole admin request body (at most 64 KiB) may take, from
    /// the end of its head; past it, 408 and the connection is closed. A slow
    /// sender then holds a connection slot no longer than a slow head does, so
    /// senders trickling bodies cannot keep the provider out (README, "Limits").
    pub body_timeout_ms: i64,
    /// `[admin.tls]`: serve the admin API over HTTPS; absent for plain HTTP.
    pub tls: Option<RawTls>,
}

impl Default for RawAdmin {
    /// The contract's defaults, and ours for the keys it leaves to us.
    fn default() -> Self {
        RawAdmin {
            listen: "127.0.0.1:8081".to_owned(),
            provider_token_sha256: None,
            header_read_timeout_ms: 10_000,
            max_connections: 1_024,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            body_read_timeout_ms: 10_000,
            body_timeout_ms: 10_000,
            tls: None,
        }
    }
}

/// `[proxy.tls]` and `[admin.tls]`: the listener's certificate and key, as PEM
/// files. Both or neither: neither (or no table) means plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// The certificate chain, leaf first. A relative path is relative to the
    /// working directory.
    pub cert_path: Option<String>,
    /// The leaf certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<String>,
}

/// `[store]`: where state lives between restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawStore {
    /// The database file, created with its parent folders on first start.
    /// A relative path is relative to the working directory.
    pub path: String,
    /// How often, in milliseconds, each org's threshold window is saved to
    /// the store, so a restart resumes it. A crash loses at most the calls
    /// counted since the last save.
    pub count_flush_ms: i64,
}

impl Default for RawStore {
    /// The contract's default, and a save a second.
    fn default() -> Self {
        RawStore {
            path: "data/keygate.redb".to_owned(),
            count_flush_ms: 1_000,
        }
    }
}

/// `[cluster]`: the Redis that several keygate nodes share, and how long a
/// node that lost it may keep serving. Its presence turns cluster mode on.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    /// The Redis every node of the cluster uses (`redis://` or `unix://`; no
    /// TLS); required in the section, since it is the cluster's one
    /// truth. May carry a password, so it is never echoed in an error.
    pub redis_url: Option<String>,
    /// The prefix of every Redis key: nodes with one name share one state, so
    /// one Redis can hold several clusters.
    pub name: String,
    /// How long, in milliseconds, a node that cannot renew its lease in Redis
    /// keeps serving; it bounds how long a change waits for a node that went
    /// silent.
    pub lease_ms: i64,
    /// Start even against a Redis that does not fsync every write, giving up
    /// "no acknowledged change lost" (for tests and trials only).
    pub allow_unsafe_durability: bool,
}

impl Default for RawCluster {
    /// The contract's defaults; `redis_url` has none.
    fn default() -> Self {
        RawCluster {
            redis_url: None,
            name: "keygate".to_owned(),
            lease_ms: 3_000,
            allow_unsafe_durability: false,
        }
    }
}

/// By hand: the URL may carry a password.
impl std::fmt::Debug for RawCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawCluster")
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(super::redacted_url),
            )
            .field("name", &self.name)
            .field("lease_ms", &self.lease_ms)
            .field("allow_unsafe_durability", &self.allow_unsafe_durability)
            .finish()
    }
}

/// `[limits]`: the default [`Limits`] of every org. Integers are kept as TOML
/// wrote them (signed, 64-bit) so that a negative or huge value is reported as
/// out of range rather than as a type error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    /// Sustained calls per second per org before 429.
    pub rate_per_sec: i64,
    /// Calls an org may make at once before the rate applies.
    pub burst: i64,
    /// More calls than this within one window disable the org's key.
    pub threshold_calls: i64,
    /// The length of the threshold window, in seconds.
    pub threshold_window_secs: i64,
}

impl Default for RawLimits {
    /// The contract's defaults, the same as [`Limits::default`].
    fn default() -> Self {
        let d = Limits::default();
        RawLimits {
            rate_per_sec: d.rate_per_sec.into(),
            burst: d.burst.into(),
            threshold_calls: d.threshold_calls.into(),
            threshold_window_secs: d.threshold_window_secs.into(),
        }
    }
}

impl RawConfig {
    /// Parses TOML text, refusing syntax errors, unknown keys and wrong types,
    /// each named by its dotted key.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                line: e.span().map(|span| line_of(text, span.start)),
                message: first_line(e.message()),
            })?;
        // serde's own messages say what is wrong but not where;
        // serde_path_to_error keeps the path to the value that failed.
        serde_path_to_error::deserialize(toml::Value::Table(doc)).map_err(|e| {
            let (key, in_array) = dotted(e.path());
            invalid(key, shape_error(&e.inner().to_string(), in_array))
        })
    }
}

/// The dotted key of `path` (an array's own key for one of its items), and
/// whether the path went into an array.
fn dotted(path: &serde_path_to_error::Path) -> (String, bool) {
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Map { key: name } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(name);
            }
            serde_path_to_error::Segment::Seq { .. } => return (key, true),
            _ => {}
        }
    }
    (key, false)
}

/// serde's message for an unknown key or a wrong type, in keygate's words and
/// without the value (a config file may hold a secret in the wrong place).
fn shape_error(message: &str, in_array: bool) -> String {
    let message = first_line(message);
    if message.starts_with("unknown field") {
        return "unknown key".to_owned();
    }
    if in_array {
        return "expected an array of strings".to_owned();
    }
    let Some((_, expected)) = message.rsplit_once(", expected ") else {
        return message;
    };
    let what = match expected {
        "i64" => "an integer",
        "a string" => "a string",
        "a sequence" => "an array of strings",
        "a boolean" => "true or false",
        s if s.starts_with("struct ") => "a table",
        other => other,
    };
    format!("expected {what}")
}

fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|&b| b == b'\n').count() + 1
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}
