//! keygate's configuration: the TOML file of CONTRACT.md §2, checked once at start.
//!
//! Two layers, as in Pingora and ripgrep:
//!
//! - [`RawConfig`] is the file as written: every key with its default, in plain
//!   strings and integers, so that serde can fill it and nothing can fail yet;
//! - [`Config`] is what the rest of keygate uses: socket addresses, an upstream
//!   [`Uri`], [`HeaderName`]s, [`Method`]s, [`Duration`]s, checked [`Limits`]
//!   and [`ConnectionLimits`], and each listener's [`ServerTls`], produced by
//!   [`RawConfig::validate`]. Validation reads the TLS certificate and key files
//!   it names, so that a bad one stops keygate before anything binds.
//!
//! [`Config::load`] runs the whole way: read the file, parse it, walk it for
//! unknown keys and wrong types (so that each is reported with its full dotted
//! path, which serde's own messages do not give), apply the
//! [`PROVIDER_TOKEN_ENV`] override, validate. Every refusal is a
//! [`ConfigError`] that prints as one line naming the key and why, which is
//! what `keygate serve` prints before exiting.
//!
//! # Example
//!
//! ```
//! use keygate::config::Config;
//!
//! let config = Config::from_toml(r#"
//!     [proxy]
//!     upstream = "http://127.0.0.1:9000/api"
//!     [admin]
//!     provider_token_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
//! "#).unwrap();
//! assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:8080");
//! assert_eq!(config.proxy.upstream.path(), "/api");
//! assert_eq!(config.proxy.public_url, "http://127.0.0.1:8080");
//!
//! let err = Config::from_toml("[proxy]\nupstreem = \"http://127.0.0.1:9000\"").unwrap_err();
//! assert_eq!(err.to_string(), "config: proxy.upstreem: unknown key");
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Uri};
use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};

use crate::gate::{GateConfig, OrgSource};
use crate::org::Limits;
use crate::tls::{ServerTls, TlsFile, UpstreamTls};
use crate::token::TokenDigest;

/// The environment variable that, when set and not empty, replaces
/// `admin.provider_token_sha256`, so that a deployment can keep the digest out
/// of the file it ships.
pub const PROVIDER_TOKEN_ENV: &str = "KEYGATE_PROVIDER_TOKEN_SHA256";

/// Why a configuration was refused. Its `Display` is always one line that starts
/// with `config: ` and names what is wrong: a dotted key, a line of the file, or
/// the file itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config: {}: {source}", one_line(&path.display().to_string()))]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// Why reading it failed.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config: {}{message}", line_prefix(*.line))]
    Syntax {
        /// The 1-based line of the error, when the parser gives one.
        line: Option<usize>,
        /// The parser's message, first line only.
        message: String,
    },
    /// A key is unknown, missing, of the wrong type or out of range.
    #[error("config: {key}: {reason}")]
    Invalid {
        /// The dotted key (`proxy.upstream`), or the environment variable the
        /// value came from.
        key: String,
        /// Why its value was refused.
        reason: String,
    },
}

impl ConfigError {
    /// The dotted key an [`Invalid`](ConfigError::Invalid) error names.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn line_prefix(line: Option<usize>) -> String {
    line.map(|n| format!("line {n}: ")).unwrap_or_default()
}

/// The one home of [`ConfigError::Invalid`]: the key and the reason are
/// echoed from the file (an unknown key, a TLS path), so their control
/// characters are escaped to keep the message on one line.
fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: one_line(&key.into()),
        reason: one_line(&reason.into()),
    }
}

/// `text` with each control character (`\n`, `\r`, NUL, ...) written as its
/// Rust escape, so that an echoed name cannot break a message into lines.
fn one_line(text: &str) -> String {
    if !text.contains(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The raw file
// ---------------------------------------------------------------------------

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
            tls: None,
        }
    }
}

/// `proxy.upstream`: one URL or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// 1,024: an HTTP/1.1 connection carries one request at a time, so this is
/// how many requests can be at the upstream at once. A tenth of the 10,000
/// client connections `max_connections` allows, because most client
/// connections sit idle between requests (and idle upstream connections are
/// handed on at the cap); and a bound on the sockets a flood of clients can
/// make keygate open toward an upstream that may not be sized for the flood.
const DEFAULT_MAX_UPSTREAM_CONNECTIONS: i64 = 1_024;
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
}

impl Default for RawStore {
    /// The contract's default.
    fn default() -> Self {
        RawStore {
            path: "data/keygate.redb".to_owned(),
        }
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

/// The type a key's value must have.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    Strs,
    /// A string or an array of strings.
    StrOrStrs,
    /// A table with these keys.
    Table(&'static [(&'static str, Kind)]),
}

impl Kind {
    fn admits(self, value: &toml::Value) -> bool {
        match self {
            Kind::Str => value.is_str(),
            Kind::Int => value.is_integer(),
            Kind::Bool => value.is_bool(),
            Kind::Strs => value
                .as_array()
                .is_some_and(|items| items.iter().all(toml::Value::is_str)),
            Kind::StrOrStrs => value.is_str() || Kind::Strs.admits(value),
            Kind::Table(_) => value.is_table(),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Str => "expected a string",
            Kind::Int => "expected an integer",
            Kind::Bool => "expected true or false",
            Kind::Strs => "expected an array of strings",
            Kind::StrOrStrs => "expected a string or an array of strings",
            Kind::Table(_) => "expected a table",
        }
    }
}

/// Every section and key [`RawConfig`] accepts, with its type. serde's
/// `deny_unknown_fields` would refuse the same keys, but without saying where;
/// walking this first gives every error its dotted path. A unit test keeps it
/// equal to the raw structs.
const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "proxy",
        &[
            ("listen", Kind::Str),
            ("upstream", Kind::StrOrStrs),
            ("upstream_ca_path", Kind::Str),
            ("max_upstream_connections", Kind::Int),
            ("upstream_fail_timeout_secs", Kind::Int),
            ("preserve_host", Kind::Bool),
            ("key_header", Kind::Str),
            ("org_from", Kind::Str),
            ("org_header", Kind::Str),
            ("public_url", Kind::Str),
            ("blocked_when_expired", Kind::Strs),
            ("connect_timeout_ms", Kind::Int),
            ("upstream_timeout_ms", Kind::Int),
            ("pool_idle_timeout_secs", Kind::Int),
            ("pool_max_idle_per_host", Kind::Int),
            ("header_read_timeout_ms", Kind::Int),
            ("max_connections", Kind::Int),
            ("max_header_bytes", Kind::Int),
            ("idle_timeout_ms", Kind::Int),
            ("tls", Kind::Table(TLS_SCHEMA)),
        ],
    ),
    (
        "admin",
        &[
            ("listen", Kind::Str),
            ("provider_token_sha256", Kind::Str),
            ("header_read_timeout_ms", Kind::Int),
            ("max_connections", Kind::Int),
            ("max_header_bytes", Kind::Int),
            ("idle_timeout_ms", Kind::Int),
            ("tls", Kind::Table(TLS_SCHEMA)),
        ],
    ),
    ("store", &[("path", Kind::Str)]),
    (
        "limits",
        &[
            ("rate_per_sec", Kind::Int),
            ("burst", Kind::Int),
            ("threshold_calls", Kind::Int),
            ("threshold_window_secs", Kind::Int),
        ],
    ),
];

/// The keys of `[proxy.tls]` and `[admin.tls]`.
const TLS_SCHEMA: &[(&str, Kind)] = &[("cert_path", Kind::Str), ("key_path", Kind::Str)];

/// Refuses the first unknown key or wrongly typed value, naming it.
fn check_shape(doc: &toml::Table) -> Result<(), ConfigError> {
    for (section, value) in doc {
        let Some((_, keys)) = SCHEMA.iter().find(|(name, _)| name == section) else {
            return Err(invalid(section, "unknown key"));
        };
        let Some(table) = value.as_table() else {
            return Err(invalid(section, "expected a table"));
        };
        check_table(section, table, keys)?;
    }
    Ok(())
}

/// [`check_shape`] for the keys of the table at `path`, and of the tables in it.
fn check_table(path: &str, table: &toml::Table, keys: &[(&str, Kind)]) -> Result<(), ConfigError> {
    for (key, value) in table {
        let dotted = format!("{path}.{key}");
        let Some((_, kind)) = keys.iter().find(|(name, _)| name == key) else {
            return Err(invalid(dotted, "unknown key"));
        };
        if !kind.admits(value) {
            return Err(invalid(dotted, kind.expected()));
        }
        if let (Kind::Table(inner), Some(table)) = (kind, value.as_table()) {
            check_table(&dotted, table, inner)?;
        }
    }
    Ok(())
}

impl RawConfig {
    /// Parses TOML text, refusing syntax errors, unknown keys and wrong types.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::Syntax {
                line: e.span().map(|span| line_of(text, span.start)),
                message: first_line(e.message()),
            })?;
        check_shape(&doc)?;
        // After the walk every key is known and of its type, and every integer
        // fits an i64, so this only fails if SCHEMA and the structs disagree.
        RawConfig::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Syntax {
            line: None,
            message: first_line(e.message()),
        })
    }

    /// Checks every value and converts it into the [`Config`] keygate runs with.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let proxy = self.proxy.validate()?;
        let admin = self.admin.validate()?;
        let store = self.store.validate()?;
        let limits = self.limits.validate()?;
        Ok(Config {
            proxy,
            admin,
            store,
            limits,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|&b| b == b'\n').count() + 1
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}

// ---------------------------------------------------------------------------
// The checked config
// ---------------------------------------------------------------------------

/// The checked configuration keygate runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The proxy listener and the upstream.
    pub proxy: ProxyConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// The store.
    pub store: StoreConfig,
    /// Every org's default limits, each within `1..=`[`limits_max`](crate::org::limits_max).
    pub limits: Limits,
}

/// The checked `[proxy]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The address the proxy listener binds.
    pub listen: SocketAddr,
    /// Where accepted requests go: scheme `http` or `https`, an authority
    /// without credentials, no query. Its path is `/` or a base path without a
    /// trailing slash (`/api`) that the forwarded path is appended to. The
    /// first of `upstreams`.
    pub upstream: Uri,
    /// Every upstream server, `upstream` first; one scheme and one base path.
    pub upstreams: Vec<Uri>,
    /// How `https` upstreams are verified: the CA file of
    /// `upstream_ca_path`, read and checked at start; `None` for the roots
    /// built into keygate.
    pub upstream_tls: Option<UpstreamTls>,
    /// Open upstream connections at most; beyond it a request waits up to
    /// `connect_timeout`, then 503.
    pub max_upstream_connections: usize,
    /// How long a server whose connect failed is skipped (several servers).
    pub upstream_fail_timeout: Duration,
    /// Forward the client's `Host` instead of the upstream's.
    pub preserve_host: bool,
    /// The header that carries the API key, lowercase.
    pub key_header: HeaderName,
    /// Where a request names its org.
    pub org_from: OrgSource,
    /// `http(s)://host[:port][/base]` with no trailing slash; an org's
    /// `base_url` is this plus `/` and the org id in path mode.
    pub public_url: String,
    /// Methods refused while a subscription is expired, uppercase, no repeats.
    pub blocked_when_expired: Vec<Method>,
    /// Upstream TCP connect timeout; past it the client gets 502.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers; past it, 504.
    pub upstream_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// How many idle upstream connections are kept.
    pub pool_max_idle_per_host: usize,
    /// How the proxy listener treats client connections.
    pub connections: ConnectionLimits,
    /// The certificate and key when the proxy listener serves HTTPS.
    pub tls: Option<ServerTls>,
}

/// The checked `[admin]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The address the admin listener binds.
    pub listen: SocketAddr,
    /// The digest a bearer token must have to act as the provider.
    pub provider_token: TokenDigest,
    /// How the admin listener treats client connections.
    pub connections: ConnectionLimits,
    /// The certificate and key when the admin listener serves HTTPS.
    pub tls: Option<ServerTls>,
}

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
}

/// The checked `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file; relative paths are relative to the working directory.
    pub path: PathBuf,
}

impl Config {
    /// Parses and validates TOML text, ignoring the environment.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, |_| None)
    }

    /// Parses TOML text, applies the overrides `env` returns (see
    /// [`PROVIDER_TOKEN_ENV`]), and validates. `env` stands for
    /// `std::env::var`, so tests need not touch the process environment.
    pub fn from_toml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::from_toml(text)?;
        // Empty counts as unset, as `KEY=` in an env file or compose file means.
        if let Some(digest) = env(PROVIDER_TOKEN_ENV).filter(|d| !d.is_empty()) {
            // Checked here too, so that a bad value names where it came from.
            if TokenDigest::from_hex(&digest).is_none() {
                return Err(invalid(PROVIDER_TOKEN_ENV, NOT_A_DIGEST));
            }
            raw.admin.provider_token_sha256 = Some(digest);
        }
        raw.validate()
    }

    /// Reads the file at `path`, applies the process environment's overrides,
    /// and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, |name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        })
    }

    /// [`load`](Config::load) with the environment given by `env`.
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml_with_env(&text, env)
    }

    /// What the gate middleware needs of this config. The org goes upstream in
    /// `x-org-id` only: the proxy's forwarder reads no extensions.
    pub fn gate(&self) -> GateConfig {
        GateConfig {
            org_from: self.proxy.org_from.clone(),
            key_header: self.proxy.key_header.clone(),
            blocked_when_expired: self.proxy.blocked_when_expired.clone(),
            org_extension: false,
        }
    }
}

// ---------------------------------------------------------------------------
// Validation, section by section
// ---------------------------------------------------------------------------

const NOT_A_DIGEST: &str = "not 64 lowercase hex digits (the SHA-256 of the provider's token)";

/// The largest values of our own keys. Beyond them a value is a typo (seconds
/// written as milliseconds twice over), not a policy.
mod max {
    /// 5 minutes: no healthy upstream takes longer to accept a connection.
    pub const CONNECT_TIMEOUT_MS: u64 = 300_000;
    /// 1 hour: long polls and large exports, but not forever.
    pub const UPSTREAM_TIMEOUT_MS: u64 = 3_600_000;
    /// Well past what one process's file descriptors allow.
    pub const MAX_UPSTREAM_CONNECTIONS: u64 = 1_000_000;
    /// 1 hour.
    pub const UPSTREAM_FAIL_TIMEOUT_SECS: u64 = 3_600;
    /// 1 day.
    pub const POOL_IDLE_TIMEOUT_SECS: u64 = 86_400;
    /// More idle sockets than this to one host is a leak, not a pool.
    pub const POOL_MAX_IDLE_PER_HOST: u64 = 65_536;
    /// 5 minutes.
    pub const HEADER_READ_TIMEOUT_MS: u64 = 300_000;
    /// Well past what one process's file descriptors allow.
    pub const MAX_CONNECTIONS: u64 = 1_000_000;
    /// The smallest read buffer hyper accepts, which is how the limit is enforced.
    pub const MIN_HEADER_BYTES: u64 = 8_192;
    /// 1 MiB: no legitimate request head comes near it.
    pub const MAX_HEADER_BYTES: u64 = 1_048_576;
    /// 1 day.
    pub const IDLE_TIMEOUT_MS: u64 = 86_400_000;
}

impl RawProxy {
    fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let listen = socket_addr("proxy.listen", &self.listen)?;
        let upstreams = match &self.upstream {
            Some(RawUpstream::One(u)) => vec![upstream(u)?],
            Some(RawUpstream::Many(list)) => upstream_list(list)?,
            None => return Err(invalid("proxy.upstream", "required")),
        };
        let upstream = upstreams[0].clone();
        let upstream_tls = match self.upstream_ca_path.as_deref() {
            None => None,
            Some("") => return Err(invalid("proxy.upstream_ca_path", "must not be empty")),
            Some(path) => Some(
                UpstreamTls::load_ca(Path::new(path))
                    .map_err(|e| invalid("proxy.upstream_ca_path", e.to_string()))?,
            ),
        };
        let key_header = header_name("proxy.key_header", &self.key_header)?;
        if RESERVED_HEADERS.contains(&key_header.as_str()) {
            return Err(invalid(
                "proxy.key_header",
                "must not be x-org-id, host, content-length or a hop-by-hop header",
            ));
        }
        let org_header = header_name("proxy.org_header", &self.org_header)?;
        if org_header != X_ORG_ID && RESERVED_HEADERS.contains(&org_header.as_str()) {
            return Err(invalid(
                "proxy.org_header",
                "must not be host, content-length or a hop-by-hop header",
            ));
        }
        let org_from = match self.org_from.as_str() {
            "path" => OrgSource::Path,
            "header" if org_header == key_header => {
                return Err(invalid(
                    "proxy.org_header",
                    "must differ from proxy.key_header",
                ))
            }
            "header" => OrgSource::Header(org_header),
            _ => return Err(invalid("proxy.org_from", r#"must be "path" or "header""#)),
        };
        let connections = connection_limits(
            "proxy",
            self.header_read_timeout_ms,
            self.max_connections,
            self.max_header_bytes,
            self.idle_timeout_ms,
        )?;
        let tls = tls("proxy", self.tls)?;
        let public_url = match &self.public_url {
            Some(url) => public_url(url)?,
            None => default_public_url(listen, tls.is_some()),
        };
        Ok(ProxyConfig {
            listen,
            upstream,
            upstreams,
            upstream_tls,
            max_upstream_connections: ranged_usize(
                "proxy.max_upstream_connections",
                self.max_upstream_connections,
                1,
                max::MAX_UPSTREAM_CONNECTIONS,
            )?,
            upstream_fail_timeout: Duration::from_secs(ranged(
                "proxy.upstream_fail_timeout_secs",
                self.upstream_fail_timeout_secs,
                max::UPSTREAM_FAIL_TIMEOUT_SECS,
            )?),
            preserve_host: self.preserve_host,
            key_header,
            org_from,
            public_url,
            blocked_when_expired: methods(
                "proxy.blocked_when_expired",
                &self.blocked_when_expired,
            )?,
            connect_timeout: Duration::from_millis(ranged(
                "proxy.connect_timeout_ms",
                self.connect_timeout_ms,
                max::CONNECT_TIMEOUT_MS,
            )?),
            upstream_timeout: Duration::from_millis(ranged(
                "proxy.upstream_timeout_ms",
                self.upstream_timeout_ms,
                max::UPSTREAM_TIMEOUT_MS,
            )?),
            pool_idle_timeout: Duration::from_secs(ranged(
                "proxy.pool_idle_timeout_secs",
                self.pool_idle_timeout_secs,
                max::POOL_IDLE_TIMEOUT_SECS,
            )?),
            pool_max_idle_per_host: ranged_usize(
                "proxy.pool_max_idle_per_host",
                self.pool_max_idle_per_host,
                1,
                max::POOL_MAX_IDLE_PER_HOST,
            )?,
            connections,
            tls,
        })
    }
}

/// `http://{listen}`, or `https://` when the listener serves TLS: the URL a
/// client on this machine would type.
pub fn default_public_url(listen: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{listen}")
}

/// The keys shared by `[proxy]` and `[admin]`, checked and named under `section`.
fn connection_limits(
    section: &str,
    header_read_timeout_ms: i64,
    max_connections: i64,
    max_header_bytes: i64,
    idle_timeout_ms: i64,
) -> Result<ConnectionLimits, ConfigError> {
    Ok(ConnectionLimits {
        header_read_timeout: Duration::from_millis(ranged(
            &format!("{section}.header_read_timeout_ms"),
            header_read_timeout_ms,
            max::HEADER_READ_TIMEOUT_MS,
        )?),
        max_connections: ranged_usize(
            &format!("{section}.max_connections"),
            max_connections,
            1,
            max::MAX_CONNECTIONS,
        )?,
        max_header_bytes: ranged_usize(
            &format!("{section}.max_header_bytes"),
            max_header_bytes,
            max::MIN_HEADER_BYTES,
            max::MAX_HEADER_BYTES,
        )?,
        idle_timeout: Duration::from_millis(ranged(
            &format!("{section}.idle_timeout_ms"),
            idle_timeout_ms,
            max::IDLE_TIMEOUT_MS,
        )?),
    })
}

/// `[section.tls]`: both files or neither; both are read and checked now.
fn tls(section: &str, raw: Option<RawTls>) -> Result<Option<ServerTls>, ConfigError> {
    let RawTls {
        cert_path,
        key_path,
    } = raw.unwrap_or_default();
    let key = |name: &str| format!("{section}.tls.{name}");
    let (cert_path, key_path) = match (cert_path, key_path) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(invalid(
                key("key_path"),
                format!("required when {} is set", key("cert_path")),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                key("cert_path"),
                format!("required when {} is set", key("key_path")),
            ))
        }
        (Some(cert), Some(k)) => (cert, k),
    };
    for (name, value) in [("cert_path", &cert_path), ("key_path", &key_path)] {
        if value.is_empty() {
            return Err(invalid(key(name), "must not be empty"));
        }
    }
    ServerTls::load(Path::new(&cert_path), Path::new(&key_path))
        .map(Some)
        .map_err(|e| {
            let name = match e.file() {
                TlsFile::Certificate => "cert_path",
                TlsFile::Key => "key_path",
            };
            invalid(key(name), e.to_string())
        })
}

impl RawAdmin {
    fn validate(self) -> Result<AdminConfig, ConfigError> {
        let listen = socket_addr("admin.listen", &self.listen)?;
        let Some(hex) = &self.provider_token_sha256 else {
            return Err(invalid("admin.provider_token_sha256", "required"));
        };
        let provider_token = TokenDigest::from_hex(hex)
            .ok_or_else(|| invalid("admin.provider_token_sha256", NOT_A_DIGEST))?;
        let connections = connection_limits(
            "admin",
            self.header_read_timeout_ms,
            self.max_connections,
            self.max_header_bytes,
            self.idle_timeout_ms,
        )?;
        Ok(AdminConfig {
            listen,
            provider_token,
            connections,
            tls: tls("admin", self.tls)?,
        })
    }
}

impl RawStore {
    fn validate(self) -> Result<StoreConfig, ConfigError> {
        if self.path.is_empty() {
            return Err(invalid("store.path", "must not be empty"));
        }
        Ok(StoreConfig {
            path: PathBuf::from(self.path),
        })
    }
}

impl RawLimits {
    fn validate(self) -> Result<Limits, ConfigError> {
        // Out-of-u32 values saturate to 0 or u32::MAX, both outside every
        // limit's range, so `Limits::validate` refuses them with its own bounds.
        let narrow = |v: i64| u32::try_from(v).unwrap_or(if v < 0 { 0 } else { u32::MAX });
        let limits = Limits {
            rate_per_sec: narrow(self.rate_per_sec),
            burst: narrow(self.burst),
            threshold_calls: narrow(self.threshold_calls),
            threshold_window_secs: narrow(self.threshold_window_secs),
        };
        limits.validate().map_err(|e| {
            invalid(
                format!("limits.{}", e.field),
                format!("must be between 1 and {}", e.max),
            )
        })?;
        Ok(limits)
    }
}

const X_ORG_ID: &str = "x-org-id";

/// Headers the key header must not be: the one keygate sets on forwarded
/// requests, the ones hyper and the upstream connection need intact (the gate
/// strips the key header before forwarding), and the hop-by-hop headers of
/// RFC 9110 §7.6.1, which never reach the upstream as sent.
const RESERVED_HEADERS: &[&str] = &[
    X_ORG_ID,
    "host",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn socket_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| invalid(key, "not a socket address (host:port)"))
}

fn header_name(key: &str, s: &str) -> Result<HeaderName, ConfigError> {
    // `from_bytes` lowercases, so `X-Api-Key` is accepted as `x-api-key`.
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| invalid(key, "not a valid header name"))
}

/// `1..=max`, or an error naming `key` and the range.
fn ranged(key: &str, value: i64, max: u64) -> Result<u64, ConfigError> {
    ranged_from(key, value, 1, max)
}

/// `min..=max`, or an error naming `key` and the range.
fn ranged_from(key: &str, value: i64, min: u64, max: u64) -> Result<u64, ConfigError> {
    u64::try_from(value)
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| invalid(key, format!("must be between {min} and {max}")))
}

fn ranged_usize(key: &str, value: i64, min: u64, max: u64) -> Result<usize, ConfigError> {
    let v = ranged_from(key, value, min, max)?;
    usize::try_from(v).map_err(|_| invalid(key, format!("must be between {min} and {max}")))
}

/// The authority of a URL already known to be `http` or `https`, after refusing
/// a missing host, credentials, an unreadable port, a query and a fragment.
fn web_url<'a>(
    key: &str,
    s: &str,
    uri: &'a Uri,
    not_a_url: &str,
) -> Result<&'a Authority, ConfigError> {
    let authority = uri
        .authority()
        .filter(|a| !a.host().is_empty())
        .ok_or_else(|| invalid(key, not_a_url))?;
    if authority.as_str().contains('@') {
        return Err(invalid(key, "must not contain credentials"));
    }
    // `Authority` keeps a port it cannot read (`:99999`, `:`) and reports none.
    let port = authority
        .as_str()
        .strip_prefix(authority.host())
        .unwrap_or_default();
    let readable = port
        .strip_prefix(':')
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| p != 0);
    if !port.is_empty() && !readable {
        return Err(invalid(key, not_a_url));
    }
    if uri.query().is_some() {
        return Err(invalid(key, "must not have a query"));
    }
    if s.contains('#') {
        return Err(invalid(key, "must not have a fragment"));
    }
    Ok(authority)
}

/// A list of upstream URLs: at least one, no repeats, and one service: the
/// same scheme and base path for all, as the servers of an nginx `upstream`
/// block share `proxy_pass`'s.
fn upstream_list(list: &[String]) -> Result<Vec<Uri>, ConfigError> {
    const KEY: &str = "proxy.upstream";
    let uris = list
        .iter()
        .map(|u| upstream(u))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = uris.first() else {
        return Err(invalid(KEY, "an empty list; name at least one URL"));
    };
    for (i, uri) in uris.iter().enumerate() {
        if uri.scheme() != first.scheme() || uri.path() != first.path() {
            return Err(invalid(
                KEY,
                "every URL of the list must have the same scheme and base path",
            ));
        }
        if uris[..i].contains(uri) {
            return Err(invalid(KEY, format!("{uri} is listed twice")));
        }
    }
    Ok(uris)
}

fn upstream(s: &str) -> Result<Uri, ConfigError> {
    const KEY: &str = "proxy.upstream";
    // The contract's own example of a config error; https is an http URL here.
    const NOT_HTTP: &str = "not an http URL";
    let uri: Uri = s.parse().map_err(|_| invalid(KEY, NOT_HTTP))?;
    let scheme = match uri.scheme_str() {
        Some(scheme @ ("http" | "https")) => scheme.to_owned(),
        _ => return Err(invalid(KEY, NOT_HTTP)),
    };
    let authority = web_url(KEY, s, &uri, NOT_HTTP)?;
    // The proxy appends the request's path to this one; a trailing slash would
    // double the slash between them.
    let base = match uri.path().trim_end_matches('/') {
        "" => "/",
        base => base,
    };
    Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority.clone())
        .path_and_query(base)
        .build()
        .map_err(|_| invalid(KEY, NOT_HTTP))
}

fn public_url(s: &str) -> Result<String, ConfigError> {
    const KEY: &str = "proxy.public_url";
    const NOT_WEB: &str = "not an http or https URL";
    let uri: Uri = s.parse().map_err(|_| invalid(KEY, NOT_WEB))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid(KEY, NOT_WEB));
    }
    web_url(KEY, s, &uri, NOT_WEB)?;
    // `base_url` is this plus "/" and the org id; a trailing slash would double it.
    Ok(s.trim_end_matches('/').to_owned())
}

fn methods(key: &str, names: &[String]) -> Result<Vec<Method>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let method = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| invalid(key, format!("{name:?} is not an HTTP method")))?;
        if seen.insert(method.clone()) {
            out.push(method);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEROS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const EXAMPLE: &str = include_str!("../config/keygate.toml");

    /// The two required keys, as root-level dotted keys so that tests can add
    /// more dotted keys after them.
    fn with(extra: &str) -> String {
        format!(
            "proxy.upstream = \"http://127.0.0.1:9000\"\n\
             admin.provider_token_sha256 = \"{ZEROS}\"\n{extra}"
        )
    }

    fn with_upstream(url: &str) -> String {
        format!("proxy.upstream = \"{url}\"\nadmin.provider_token_sha256 = \"{ZEROS}\"\n")
    }

    fn error(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = Config::from_toml(&with("")).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.proxy.upstream, "http://127.0.0.1:9000/");
        assert_eq!(c.proxy.key_header, "x-api-key");
        assert_eq!(c.proxy.org_from, OrgSource::Path);
        assert_eq!(c.proxy.public_url, "http://127.0.0.1:8080");
        assert_eq!(c.proxy.blocked_when_expired, [Method::POST, Method::PUT]);
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(2_000));
        assert_eq!(c.proxy.upstream_timeout, Duration::from_millis(30_000));
        assert_eq!(c.proxy.pool_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.proxy.pool_max_idle_per_host, 256);
        assert_eq!(
            c.proxy.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(10_000),
                max_connections: 10_000,
                max_header_bytes: 65_536,
                idle_timeout: Duration::from_millis(60_000),
            }
        );
        assert_eq!(c.proxy.tls, None);
        assert_eq!(c.admin.listen, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(
            c.admin.provider_token,
            TokenDigest::from_hex(ZEROS).unwrap()
        );
        assert_eq!(
            c.admin.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(10_000),
                max_connections: 1_024,
                max_header_bytes: 65_536,
                idle_timeout: Duration::from_millis(60_000),
            }
        );
        assert_eq!(c.admin.tls, None);
        assert_eq!(c.store.path, PathBuf::from("data/keygate.redb"));
        assert_eq!(
            c.limits,
            Limits {
                rate_per_sec: 100,
                burst: 100,
                threshold_calls: 100_000,
                threshold_window_secs: 3600,
            }
        );
        let gate = GateConfig::default();
        assert_eq!(c.gate().org_from, gate.org_from);
        assert_eq!(c.gate().key_header, gate.key_header);
        assert_eq!(c.gate().blocked_when_expired, gate.blocked_when_expired);
    }

    #[test]
    fn the_example_file_parses_and_validates() {
        let c = Config::from_toml(EXAMPLE).unwrap();
        assert_eq!(c, Config::from_toml(&with("")).unwrap());
    }

    /// Every key of `SCHEMA` (tables included), dotted.
    fn schema_keys() -> Vec<String> {
        fn walk(path: &str, keys: &[(&str, Kind)], out: &mut Vec<String>) {
            for (key, kind) in keys {
                let dotted = format!("{path}.{key}");
                if let Kind::Table(inner) = kind {
                    walk(&dotted, inner, out);
                }
                out.push(dotted);
            }
        }
        let mut out = Vec::new();
        for (section, keys) in SCHEMA {
            walk(section, keys, &mut out);
        }
        out.sort();
        out
    }

    /// Every key below the sections of `doc` (tables included), dotted.
    fn doc_keys(doc: &toml::Table) -> Vec<String> {
        fn walk(path: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                let dotted = format!("{path}.{key}");
                if let Some(inner) = value.as_table() {
                    walk(&dotted, inner, out);
                }
                out.push(dotted);
            }
        }
        let mut out = Vec::new();
        for (section, value) in doc {
            walk(section, value.as_table().unwrap(), &mut out);
        }
        out.sort();
        out
    }

    #[test]
    fn the_example_file_sets_every_known_key() {
        // Except inside the TLS tables: their files must exist, so the example
        // shows those keys commented out.
        let doc: toml::Table = EXAMPLE.parse().unwrap();
        let set = doc_keys(&doc);
        for key in schema_keys() {
            if key.ends_with(".tls.cert_path")
                || key.ends_with(".tls.key_path")
                || key == "proxy.upstream_ca_path"
            {
                continue;
            }
            assert!(set.contains(&key), "{key}");
        }
    }

    #[test]
    fn the_schema_names_exactly_the_raw_fields() {
        let mut raw = RawConfig::default();
        raw.proxy.upstream = Some(String::new().into());
        raw.proxy.upstream_ca_path = Some(String::new());
        raw.proxy.public_url = Some(String::new());
        raw.admin.provider_token_sha256 = Some(String::new());
        let both = RawTls {
            cert_path: Some(String::new()),
            key_path: Some(String::new()),
        };
        raw.proxy.tls = Some(both.clone());
        raw.admin.tls = Some(both);
        let doc = toml::Table::try_from(&raw).unwrap();
        assert_eq!(doc_keys(&doc), schema_keys());
        check_shape(&doc).unwrap();
    }

    #[test]
    fn a_missing_upstream_is_reported_as_required() {
        let text = format!("[admin]\nprovider_token_sha256 = \"{ZEROS}\"");
        assert_eq!(error(&text), "config: proxy.upstream: required");
    }

    #[test]
    fn a_missing_provider_token_is_reported_as_required() {
        assert_eq!(
            error("[proxy]\nupstream = \"http://127.0.0.1:9000\""),
            "config: admin.provider_token_sha256: required"
        );
    }

    #[test]
    fn an_unknown_key_is_reported_with_its_dotted_path() {
        assert_eq!(
            error(&with("proxy.upstreem = \"http://x\"")),
            "config: proxy.upstreem: unknown key"
        );
    }

    #[test]
    fn an_unknown_section_is_reported_by_name() {
        assert_eq!(
            error(&with("[proxxy]\nlisten = 1")),
            "config: proxxy: unknown key"
        );
    }

    #[test]
    fn control_characters_in_an_echoed_key_or_path_are_escaped_onto_one_line() {
        assert_eq!(error("\"a\\nb\" = 1"), "config: a\\nb: unknown key");
        assert_eq!(
            error(&with("proxy.\"x\\ry\" = 1")),
            "config: proxy.x\\ry: unknown key"
        );
        let shown = error(&with(
            "proxy.tls.cert_path = \"no\\nsuch\"\nproxy.tls.key_path = \"k\"",
        ));
        assert!(
            shown.starts_with("config: proxy.tls.cert_path: "),
            "{shown}"
        );
        assert!(shown.contains("no\\nsuch"), "{shown}");
        assert!(!shown.contains(['\n', '\r']), "{shown:?}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        assert_eq!(
            error(&with("limits.burst = \"100\"")),
            "config: limits.burst: expected an integer"
        );
        assert_eq!(
            error(&with("proxy.listen = 8080")),
            "config: proxy.listen: expected a string"
        );
        assert_eq!(
            error(&with("proxy.blocked_when_expired = \"POST\"")),
            "config: proxy.blocked_when_expired: expected an array of strings"
        );
    }

    #[test]
    fn a_section_that_is_not_a_table_is_refused() {
        assert_eq!(error("limits = 5"), "config: limits: expected a table");
    }

    #[test]
    fn a_syntax_error_names_its_line_on_one_line() {
        let e = error("[proxy]\nupstream = \"http://127.0.0.1:9000\"\nlisten = \n");
        assert!(e.starts_with("config: line 3: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_duplicate_key_is_a_syntax_error() {
        let e = error("[proxy]\nlisten = \"a\"\nlisten = \"b\"\n");
        assert!(e.starts_with("config: line 3: "), "{e}");
    }

    #[test]
    fn an_unreadable_file_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("config: {}: ", path.display())),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn load_reads_and_validates_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let c = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(c.proxy.upstream, "http://127.0.0.1:9000/");
    }

    #[test]
    fn out_of_range_limits_name_their_key() {
        assert_eq!(
            error(&with("limits.burst = 0")),
            "config: limits.burst: must be between 1 and 10000000"
        );
        assert_eq!(
            error(&with("limits.rate_per_sec = -1")),
            "config: limits.rate_per_sec: must be between 1 and 10000000"
        );
        assert_eq!(
            error(&with("limits.threshold_calls = 99999999999")),
            "config: limits.threshold_calls: must be between 1 and 4000000000"
        );
    }

    #[test]
    fn a_listen_that_is_not_a_socket_address_is_refused() {
        assert_eq!(
            error(&with("proxy.listen = \"localhost\"")),
            "config: proxy.listen: not a socket address (host:port)"
        );
        assert_eq!(
            error(&with("admin.listen = \"127.0.0.1\"")),
            "config: admin.listen: not a socket address (host:port)"
        );
    }

    #[test]
    fn an_upstream_that_is_not_a_url_is_refused() {
        for bad in [
            "not a url",
            "127.0.0.1:9000",
            "/api",
            "http://",
            "http://h:99999",
            "http://h:",
            "http://h:0",
        ] {
            assert_eq!(
                error(&with_upstream(bad)),
                "config: proxy.upstream: not an http URL",
                "{bad}"
            );
        }
    }

    #[test]
    fn https_upstreams_are_accepted_and_ftp_ones_refused() {
        let c = Config::from_toml(&with_upstream("https://api.example.com/v1/")).unwrap();
        assert_eq!(c.proxy.upstream, "https://api.example.com/v1");
        assert_eq!(c.proxy.upstreams, std::slice::from_ref(&c.proxy.upstream));
        assert_eq!(c.proxy.upstream_tls, None);
        assert_eq!(
            error(&with_upstream("ftp://127.0.0.1:21")),
            "config: proxy.upstream: not an http URL"
        );
    }

    #[test]
    fn the_upstream_may_be_a_list_of_one_service() {
        let text = format!(
            "proxy.upstream = [\"http://10.0.0.1:9000/api\", \"http://10.0.0.2:9000/api/\"]\n\
             admin.provider_token_sha256 = \"{ZEROS}\"\n"
        );
        let c = Config::from_toml(&text).unwrap();
        assert_eq!(
            c.proxy.upstreams,
            ["http://10.0.0.1:9000/api", "http://10.0.0.2:9000/api"]
        );
        assert_eq!(c.proxy.upstream, "http://10.0.0.1:9000/api");
        let list = |items: &str| {
            error(&format!(
                "proxy.upstream = [{items}]\nadmin.provider_token_sha256 = \"{ZEROS}\"\n"
            ))
        };
        assert_eq!(
            list(""),
            "config: proxy.upstream: an empty list; name at least one URL"
        );
        assert_eq!(
            list(r#""http://a:1", "https://b:1""#),
            "config: proxy.upstream: every URL of the list must have the same scheme and base path"
        );
        assert_eq!(
            list(r#""http://a:1/x", "http://b:1/y""#),
            "config: proxy.upstream: every URL of the list must have the same scheme and base path"
        );
        assert_eq!(
            list(r#""http://a:1", "http://a:1/""#),
            "config: proxy.upstream: http://a:1/ is listed twice"
        );
        assert_eq!(
            list(r#""ftp://a""#),
            "config: proxy.upstream: not an http URL"
        );
        assert_eq!(
            list("1"),
            "config: proxy.upstream: expected a string or an array of strings"
        );
    }

    #[test]
    fn upstream_keys_have_their_defaults_and_ranges() {
        let c = Config::from_toml(&with("")).unwrap();
        assert_eq!(c.proxy.max_upstream_connections, 1024);
        assert_eq!(c.proxy.upstream_fail_timeout, Duration::from_secs(10));
        assert!(!c.proxy.preserve_host);
        let c = Config::from_toml(&with(
            "proxy.preserve_host = true\nproxy.max_upstream_connections = 2\n\
             proxy.upstream_fail_timeout_secs = 1",
        ))
        .unwrap();
        assert!(c.proxy.preserve_host);
        assert_eq!(c.proxy.max_upstream_connections, 2);
        assert_eq!(c.proxy.upstream_fail_timeout, Duration::from_secs(1));
        assert_eq!(
            error(&with("proxy.max_upstream_connections = 0")),
            "config: proxy.max_upstream_connections: must be between 1 and 1000000"
        );
        assert_eq!(
            error(&with("proxy.upstream_fail_timeout_secs = 0")),
            "config: proxy.upstream_fail_timeout_secs: must be between 1 and 3600"
        );
        assert_eq!(
            error(&with("proxy.preserve_host = \"yes\"")),
            "config: proxy.preserve_host: expected true or false"
        );
    }

    #[test]
    fn a_bad_or_missing_upstream_ca_file_is_a_one_line_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-ca.pem");
        let e = error(&with(&format!(
            "proxy.upstream_ca_path = {:?}",
            missing.display().to_string()
        )));
        assert!(
            e.starts_with("config: proxy.upstream_ca_path: cannot read "),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = error(&with(&format!(
            "proxy.upstream_ca_path = {:?}",
            junk.display().to_string()
        )));
        assert!(e.starts_with("config: proxy.upstream_ca_path: "), "{e}");
        assert!(e.ends_with("no PEM certificate in it"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(
            error(&with("proxy.upstream_ca_path = \"\"")),
            "config: proxy.upstream_ca_path: must not be empty"
        );

        let ca = dir.path().join("ca.pem");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, made.cert.pem()).unwrap();
        let c = Config::from_toml(&with(&format!(
            "proxy.upstream_ca_path = {:?}",
            ca.display().to_string()
        )))
        .unwrap();
        assert_eq!(
            c.proxy.upstream_tls.as_ref().and_then(|t| t.ca_path()),
            Some(ca.as_path())
        );
    }

    #[test]
    fn a_base_path_in_the_upstream_is_kept() {
        let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/api/v2")).unwrap();
        assert_eq!(c.proxy.upstream, "http://127.0.0.1:9000/api/v2");
        assert_eq!(c.proxy.upstream.path(), "/api/v2");
    }

    #[test]
    fn the_upstream_base_path_loses_its_trailing_slash() {
        let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/api/")).unwrap();
        assert_eq!(c.proxy.upstream.path(), "/api");
        let c = Config::from_toml(&with_upstream("http://127.0.0.1:9000/")).unwrap();
        assert_eq!(c.proxy.upstream.path(), "/");
        let c = Config::from_toml(&with_upstream("http://[::1]:9000")).unwrap();
        assert_eq!(c.proxy.upstream.port_u16(), Some(9000));
    }

    #[test]
    fn an_upstream_with_a_query_fragment_or_credentials_is_refused() {
        assert_eq!(
            error(&with_upstream("http://127.0.0.1:9000/api?x=1")),
            "config: proxy.upstream: must not have a query"
        );
        assert_eq!(
            error(&with_upstream("http://127.0.0.1:9000/api#top")),
            "config: proxy.upstream: must not have a fragment"
        );
        assert_eq!(
            error(&with_upstream("http://user:pw@127.0.0.1:9000")),
            "config: proxy.upstream: must not contain credentials"
        );
    }

    #[test]
    fn a_provider_token_that_is_not_lowercase_hex_is_refused() {
        let upper = format!(
            "proxy.upstream = \"http://127.0.0.1:9000\"\nadmin.provider_token_sha256 = \"{}\"",
            "A".repeat(64)
        );
        assert_eq!(
            error(&upper),
            format!("config: admin.provider_token_sha256: {NOT_A_DIGEST}")
        );
    }

    #[test]
    fn the_environment_token_overrides_the_file() {
        let digest = TokenDigest::of("secret");
        let c = Config::from_toml_with_env(&with(""), |name| {
            (name == PROVIDER_TOKEN_ENV).then(|| digest.to_hex())
        })
        .unwrap();
        assert_eq!(c.admin.provider_token, digest);
    }

    #[test]
    fn the_environment_token_supplies_a_missing_one() {
        let digest = TokenDigest::of("secret");
        let text = "[proxy]\nupstream = \"http://127.0.0.1:9000\"";
        let c = Config::from_toml_with_env(text, |_| Some(digest.to_hex())).unwrap();
        assert_eq!(c.admin.provider_token, digest);
    }

    #[test]
    fn an_empty_environment_token_is_ignored() {
        let c = Config::from_toml_with_env(&with(""), |_| Some(String::new())).unwrap();
        assert_eq!(
            c.admin.provider_token,
            TokenDigest::from_hex(ZEROS).unwrap()
        );
    }

    #[test]
    fn a_malformed_environment_token_names_the_variable() {
        let e = Config::from_toml_with_env(&with(""), |_| Some("nope".to_owned()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("config: KEYGATE_PROVIDER_TOKEN_SHA256: {NOT_A_DIGEST}")
        );
    }

    #[test]
    fn header_mode_builds_org_source_header() {
        let c = Config::from_toml(&with(
            "proxy.org_from = \"header\"\nproxy.org_header = \"X-Tenant\"",
        ))
        .unwrap();
        assert_eq!(
            c.proxy.org_from,
            OrgSource::Header(HeaderName::from_static("x-tenant"))
        );
        assert_eq!(c.gate().org_from, c.proxy.org_from);
    }

    #[test]
    fn header_mode_refuses_an_org_header_equal_to_the_key_header() {
        assert_eq!(
            error(&with(
                "proxy.org_from = \"header\"\nproxy.org_header = \"X-API-KEY\""
            )),
            "config: proxy.org_header: must differ from proxy.key_header"
        );
    }

    #[test]
    fn org_from_must_be_path_or_header() {
        assert_eq!(
            error(&with("proxy.org_from = \"query\"")),
            r#"config: proxy.org_from: must be "path" or "header""#
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_must_be_valid() {
        let c = Config::from_toml(&with("proxy.key_header = \"X-Key\"")).unwrap();
        assert_eq!(c.proxy.key_header, "x-key");
        assert_eq!(
            error(&with("proxy.key_header = \"x key\"")),
            "config: proxy.key_header: not a valid header name"
        );
        assert_eq!(
            error(&with("proxy.org_header = \"\"")),
            "config: proxy.org_header: not a valid header name"
        );
    }

    #[test]
    fn reserved_headers_cannot_carry_the_key() {
        for name in ["x-org-id", "Host", "connection", "transfer-encoding", "te"] {
            assert_eq!(
                error(&with(&format!("proxy.key_header = \"{name}\""))),
                "config: proxy.key_header: must not be x-org-id, host, content-length or a hop-by-hop header",
                "{name}"
            );
        }
    }

    #[test]
    fn the_public_url_defaults_to_http_listen() {
        let c = Config::from_toml(&with("proxy.listen = \"[::1]:9090\"")).unwrap();
        assert_eq!(c.proxy.public_url, "http://[::1]:9090");
    }

    #[test]
    fn the_public_url_loses_its_trailing_slash() {
        let c =
            Config::from_toml(&with("proxy.public_url = \"https://api.example.com/gw/\"")).unwrap();
        assert_eq!(c.proxy.public_url, "https://api.example.com/gw");
    }

    #[test]
    fn a_public_url_that_is_not_http_is_refused() {
        for bad in ["api.example.com", "ftp://api.example.com", "http://"] {
            assert_eq!(
                error(&with(&format!("proxy.public_url = \"{bad}\""))),
                "config: proxy.public_url: not an http or https URL",
                "{bad}"
            );
        }
    }

    #[test]
    fn blocked_methods_are_uppercased_and_deduplicated() {
        let c = Config::from_toml(&with(
            "proxy.blocked_when_expired = [\"delete\", \"PATCH\", \"Delete\"]",
        ))
        .unwrap();
        assert_eq!(
            c.proxy.blocked_when_expired,
            [Method::DELETE, Method::PATCH]
        );
        let c = Config::from_toml(&with("proxy.blocked_when_expired = []")).unwrap();
        assert!(c.proxy.blocked_when_expired.is_empty());
    }

    #[test]
    fn a_method_that_is_not_a_token_is_refused() {
        assert_eq!(
            error(&with("proxy.blocked_when_expired = [\"PO ST\"]")),
            "config: proxy.blocked_when_expired: \"PO ST\" is not an HTTP method"
        );
    }

    #[test]
    fn zero_timeouts_and_sizes_are_refused() {
        for key in [
            "proxy.connect_timeout_ms",
            "proxy.upstream_timeout_ms",
            "proxy.pool_idle_timeout_secs",
            "proxy.pool_max_idle_per_host",
            "proxy.header_read_timeout_ms",
            "proxy.max_connections",
            "proxy.idle_timeout_ms",
            "admin.header_read_timeout_ms",
            "admin.max_connections",
            "admin.idle_timeout_ms",
        ] {
            let e = error(&with(&format!("{key} = 0")));
            assert!(
                e.starts_with(&format!("config: {key}: must be between 1 and ")),
                "{e}"
            );
        }
    }

    #[test]
    fn connection_limits_are_read_per_listener() {
        let c = Config::from_toml(&with(
            "proxy.header_read_timeout_ms = 300\n\
             proxy.max_connections = 2\n\
             proxy.max_header_bytes = 8192\n\
             proxy.idle_timeout_ms = 200\n\
             admin.header_read_timeout_ms = 400\n\
             admin.max_connections = 3\n\
             admin.max_header_bytes = 1048576\n\
             admin.idle_timeout_ms = 500\n",
        ))
        .unwrap();
        assert_eq!(
            c.proxy.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(300),
                max_connections: 2,
                max_header_bytes: 8192,
                idle_timeout: Duration::from_millis(200),
            }
        );
        assert_eq!(
            c.admin.connections,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(400),
                max_connections: 3,
                max_header_bytes: 1_048_576,
                idle_timeout: Duration::from_millis(500),
            }
        );
    }

    #[test]
    fn max_header_bytes_must_fit_hypers_buffer_limits() {
        for section in ["proxy", "admin"] {
            for bad in ["8191", "0", "1048577"] {
                assert_eq!(
                    error(&with(&format!("{section}.max_header_bytes = {bad}"))),
                    format!("config: {section}.max_header_bytes: must be between 8192 and 1048576")
                );
            }
        }
    }

    /// A self-signed certificate and its key, written to `dir`.
    fn cert_files(dir: &Path, prefix: &str) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join(format!("{prefix}-cert.pem"));
        let key = dir.join(format!("{prefix}-key.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    #[test]
    fn tls_tables_load_their_files_and_make_the_default_public_url_https() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_files(dir.path(), "a");
        let c = Config::from_toml(&with(&format!(
            "[proxy.tls]\ncert_path = {cert:?}\nkey_path = {key:?}\n\
             [admin.tls]\ncert_path = {cert:?}\nkey_path = {key:?}\n"
        )))
        .unwrap();
        let tls = c.proxy.tls.as_ref().unwrap();
        assert_eq!(tls.cert_path(), Path::new(&cert));
        assert_eq!(tls.key_path(), Path::new(&key));
        assert_eq!(c.admin.tls, c.proxy.tls);
        assert_eq!(c.proxy.public_url, "https://127.0.0.1:8080");
    }

    #[test]
    fn an_empty_tls_table_means_plain_http() {
        let c = Config::from_toml(&with(
            "[proxy.tls]
[admin.tls]
",
        ))
        .unwrap();
        assert_eq!(c.proxy.tls, None);
        assert_eq!(c.admin.tls, None);
        assert_eq!(c.proxy.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn tls_needs_both_files_or_neither() {
        assert_eq!(
            error(&with("proxy.tls.cert_path = \"c.pem\"")),
            "config: proxy.tls.key_path: required when proxy.tls.cert_path is set"
        );
        assert_eq!(
            error(&with("admin.tls.key_path = \"k.pem\"")),
            "config: admin.tls.cert_path: required when admin.tls.key_path is set"
        );
        assert_eq!(
            error(&with(
                "admin.tls.key_path = \"k.pem\"\nadmin.tls.cert_path = \"\""
            )),
            "config: admin.tls.cert_path: must not be empty"
        );
    }

    #[test]
    fn unknown_or_mistyped_tls_keys_are_named_in_full() {
        assert_eq!(
            error(&with("proxy.tls.cert = \"c.pem\"")),
            "config: proxy.tls.cert: unknown key"
        );
        assert_eq!(
            error(&with("admin.tls.key_path = 1")),
            "config: admin.tls.key_path: expected a string"
        );
        assert_eq!(
            error(&with("proxy.tls = \"on\"")),
            "config: proxy.tls: expected a table"
        );
    }

    #[test]
    fn bad_tls_files_name_the_key_of_the_file_at_fault() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = cert_files(dir.path(), "a");
        let (_, other_key) = cert_files(dir.path(), "b");
        let missing = dir.path().join("missing.pem").display().to_string();
        let config = |section: &str, cert: &str, key: &str| {
            with(&format!(
                "{section}.tls.cert_path = {cert:?}\n{section}.tls.key_path = {key:?}\n"
            ))
        };
        let e = error(&config("proxy", &missing, &key));
        assert!(
            e.starts_with(&format!(
                "config: proxy.tls.cert_path: cannot read {missing}: "
            )),
            "{e}"
        );
        let e = error(&config("admin", &key, &key));
        assert!(
            e.starts_with("config: admin.tls.cert_path: ")
                && e.ends_with("no PEM certificate in it"),
            "{e}"
        );
        let e = error(&config("proxy", &cert, &cert));
        assert!(
            e.starts_with("config: proxy.tls.key_path: ")
                && e.ends_with("no PEM private key in it"),
            "{e}"
        );
        let e = error(&config("admin", &cert, &other_key));
        assert!(
            e.starts_with("config: admin.tls.key_path: ")
                && e.contains("not the private key of the certificate"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn absurd_timeouts_and_sizes_are_refused() {
        assert_eq!(
            error(&with("proxy.upstream_timeout_ms = 3600001")),
            "config: proxy.upstream_timeout_ms: must be between 1 and 3600000"
        );
        for key in [
            "connect_timeout_ms",
            "max_upstream_connections",
            "upstream_fail_timeout_secs",
            "pool_idle_timeout_secs",
            "pool_max_idle_per_host",
            "header_read_timeout_ms",
            "max_connections",
            "idle_timeout_ms",
        ] {
            let e = error(&with(&format!("proxy.{key} = 9223372036854775807")));
            assert!(
                e.starts_with(&format!("config: proxy.{key}: must be between 1 and ")),
                "{e}"
            );
        }
    }

    #[test]
    fn an_empty_store_path_is_refused() {
        assert_eq!(
            error(&with("store.path = \"\"")),
            "config: store.path: must not be empty"
        );
    }
}
