//! keygate's configuration: the TOML file (README, "Config"), checked once at start.
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
//! [`Config::load`] runs the whole way: read the file, parse it (each unknown
//! key and wrong type reported with its full dotted path, which
//! `serde_path_to_error` keeps and serde's own messages do not give), apply the
//! [`PROVIDER_TOKEN_ENV`] override, validate. Every refusal is a
//! [`ConfigError`] that prints as one line naming the key and why, which is
//! what `keygate serve` prints before exiting.
//!
//! The files follow those steps: `raw` (the file as written, and its parse),
//! `validate` (section by section), `error` (the one-line refusals), and this
//! module (the checked types and the loading), with the tests in `tests`.
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
//! assert_eq!(config.proxy.upstream().path(), "/api");
//! assert_eq!(config.proxy.public_url, "http://127.0.0.1:8080");
//!
//! let err = Config::from_toml("[proxy]\nupstreem = \"http://127.0.0.1:9000\"").unwrap_err();
//! assert_eq!(err.to_string(), "config: proxy.upstreem: unknown key");
//! ```

mod error;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Uri;
use http::{HeaderName, Method};

pub use error::ConfigError;
pub use raw::{
    RawAdmin, RawCluster, RawConfig, RawLimits, RawProxy, RawSession, RawStore, RawTls, RawUpstream,
};

use crate::gate::{GateConfig, OrgSource};
use crate::org::Limits;
use crate::server::ConnectionLimits;
use crate::tls::{ServerTls, UpstreamTls};
use crate::token::TokenDigest;
use error::invalid;
use validate::NOT_A_DIGEST;

/// The environment variable that, when set and not empty, replaces
/// `admin.provider_token_sha256`, so that a deployment can keep the digest out
/// of the file it ships.
pub const PROVIDER_TOKEN_ENV: &str = "KEYGATE_PROVIDER_TOKEN_SHA256";

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
    /// Cluster mode (`[cluster]`): several nodes on one Redis. `None`: one
    /// node over the embedded store at `store.path`.
    pub cluster: Option<ClusterConfig>,
    /// Session login (`[session]`); `None`: off. Its `secure_cookie` is set
    /// when the proxy listener serves TLS.
    pub session: Option<crate::session::SessionConfig>,
    /// `log.format`: how the log is written.
    pub log_format: LogFormat,
    /// `log.level`: which events are written, as `tracing` filter directives
    /// (checked to parse); `KEYGATE_LOG` overrides it.
    pub log_level: String,
}

/// How keygate writes its log: `log.format`, or `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, with the request span's fields.
    Json,
}

/// The checked `[proxy]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The address the proxy listener binds.
    pub listen: SocketAddr,
    /// Where accepted requests go, at least one server: each of scheme `http`
    /// or `https`, an authority without credentials, no query, and all with one
    /// scheme and one path, `/` or a base path without a trailing slash
    /// (`/api`) that the forwarded path is appended to.
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
    /// Time allowed until the upstream's response headers; past it, 504. At
    /// least `connect_timeout`, which it includes.
    pub upstream_timeout: Duration,
    /// The longest wait for the next bytes of the upstream's answer body.
    pub upstream_read_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// How many idle upstream connections are kept.
    pub pool_max_idle_per_host: usize,
    /// How the proxy listener treats client connections.
    pub connections: ConnectionLimits,
    /// The certificate and key when the proxy listener serves HTTPS.
    pub tls: Option<ServerTls>,
    /// Whether each proxied request is logged at `info`, target
    /// `keygate::access`.
    pub access_log: bool,
    /// Whether the access log shows query strings.
    pub access_log_query: bool,
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

impl ProxyConfig {
    /// The first upstream server: its scheme and base path are every server's.
    ///
    /// # Panics
    ///
    /// When `upstreams` is empty, which validation never lets through.
    pub fn upstream(&self) -> &Uri {
        &self.upstreams[0]
    }
}

impl AdminConfig {
    /// Whether the provider's digest is the all-zeros placeholder that
    /// `config/keygate.toml` ships with. No token hashes to it, so every
    /// provider call is refused 401; keygate still starts (the proxy serves
    /// orgs provisioned before, or imported) but warns at start, naming the key.
    pub fn has_placeholder_token(&self) -> bool {
        self.provider_token.to_hex().bytes().all(|b| b == b'0')
    }
}

/// The checked `[store]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The database file; relative paths are relative to the working directory.
    pub path: PathBuf,
    /// How often the call counts are saved (`count_flush_ms`): the most a
    /// crash can lose of them is what was counted in one period.
    pub count_flush: Duration,
}

/// The checked `[cluster]` section.
///
/// `Debug` shows the URL without its password; so does
/// [`redis_url_redacted`](ClusterConfig::redis_url_redacted), for logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis URL as written (`redis://` or `unix://`; no TLS),
    /// checked to be one; it may carry a password, so never log it as is.
    pub redis_url: String,
    /// The prefix of every Redis key: 1 to 64 of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// How long a node that cannot renew its lease keeps serving, 500 ms to 60 s.
    pub lease: Duration,
    /// Start against a Redis that does not fsync every write.
    pub allow_unsafe_durability: bool,
}

impl ClusterConfig {
    /// The Redis URL with any password replaced by `***`, for logs and errors.
    pub fn redis_url_redacted(&self) -> String {
        redacted_url(&self.redis_url)
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &self.redis_url_redacted())
            .field("name", &self.name)
            .field("lease", &self.lease)
            .field("allow_unsafe_durability", &self.allow_unsafe_durability)
            .finish()
    }
}

/// `url` with the password of its user part (`redis://user:secret@host`)
/// and of its `pass` / `password` query parameters (`unix:///sock?pass=secret`)
/// replaced by `***`; everything else as written.
pub fn redacted_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            // The user part ends at the last `@` before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None => format!("***@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
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

/// `http://{listen}`, or `https://` when the listener serves TLS: the URL a
/// client on this machine would type.
pub fn default_public_url(listen: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{listen}")
}
