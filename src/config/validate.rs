//! [`RawConfig::validate`]: every value checked and converted, section by
//! section, each refusal naming its key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::{Authority, Uri};
use http::{HeaderName, Method};

use super::error::{invalid, ConfigError};
use super::raw::{
    RawAdmin, RawCluster, RawConfig, RawLimits, RawProxy, RawSession, RawStore, RawTls, RawUpstream,
};
use super::{
    default_public_url, AdminConfig, ClusterConfig, Config, LogFormat, ProxyConfig, StoreConfig,
};
use crate::gate::OrgSource;
use crate::org::Limits;
use crate::server::ConnectionLimits;
use crate::timeout::BodyTimeouts;
use crate::tls::{ServerTls, TlsFile, UpstreamTls};
use crate::token::TokenDigest;

impl RawConfig {
    /// Checks every value and converts it into the [`Config`] keygate runs with.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let proxy = self.proxy.validate()?;
        let admin = self.admin.validate()?;
        let store = self.store.validate()?;
        let limits = self.limits.validate()?;
        let cluster = self.cluster.map(RawCluster::validate).transpose()?;
        let log_format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(invalid("log.format", "must be \"text\" or \"json\"")),
        };
        let log_level = log_level(self.log.level)?;
        let mut session = self.session.map(RawSession::validate).transpose()?;
        if let Some(s) = &mut session {
            s.secure_cookie = proxy.tls.is_some();
        }
        Ok(Config {
            proxy,
            admin,
            store,
            limits,
            cluster,
            log_format,
            log_level,
            session,
        })
    }
}

/// `log.level`: a filter `tracing_subscriber::EnvFilter` parses, as
/// `KEYGATE_LOG` takes; its parser's reason stays out of the message (it
/// quotes the value at length), the key and an example say enough. A bare
/// word must be a level: the parser would take `inf` for a target name and
/// quietly log nothing of keygate's.
fn log_level(level: String) -> Result<String, ConfigError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let level = level.trim().to_owned();
    let bare_words_are_levels = level
        .split(',')
        .filter(|d| !d.contains('='))
        .all(|d| LEVELS.contains(&d.trim().to_ascii_lowercase().as_str()));
    let parses = !level.is_empty()
        && bare_words_are_levels
        && tracing_subscriber::EnvFilter::builder()
            .parse(&level)
            .is_ok();
    if parses {
        Ok(level)
    } else {
        Err(invalid(
            "log.level",
            "not a log level or filter (error, warn, info, debug, trace, or \"info,keygate::access=warn\")",
        ))
    }
}

pub(super) const NOT_A_DIGEST: &str =
    "not 64 lowercase hex digits (the SHA-256 of the provider's token)";

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
    /// 1 hour: a pause longer than this in a body or an answer is a dead peer.
    pub const BODY_TIMEOUT_MS: u64 = 3_600_000;
    /// `store.count_flush_ms`: an hour. Longer only widens what a crash loses.
    pub const COUNT_FLUSH_MS: u64 = 3_600_000;
    /// `cluster.lease_ms`, least: a node renews several times per lease, and
    /// below half a second one slow Redis reply would stop it serving.
    pub const MIN_LEASE_MS: u64 = 500;
    /// `cluster.lease_ms`, most: a minute is already a long time for a
    /// change to wait on a node that went silent.
    pub const LEASE_MS: u64 = 60_000;
    /// `cluster.name`: Redis keys stay short.
    pub const CLUSTER_NAME: usize = 64;
}

impl RawProxy {
    fn validate(self) -> Result<ProxyConfig, ConfigError> {
        let listen = socket_addr("proxy.listen", &self.listen)?;
        let upstreams = match &self.upstream {
            Some(RawUpstream::One(u)) => vec![upstream(u)?],
            Some(RawUpstream::Many(list)) => upstream_list(list)?,
            None => return Err(invalid("proxy.upstream", "required")),
        };
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
            self.body_read_timeout_ms,
            None,
        )?;
        let tls = tls("proxy", self.tls)?;
        let connect_timeout = Duration::from_millis(ranged(
            "proxy.connect_timeout_ms",
            self.connect_timeout_ms,
            max::CONNECT_TIMEOUT_MS,
        )?);
        let upstream_timeout = Duration::from_millis(ranged(
            "proxy.upstream_timeout_ms",
            self.upstream_timeout_ms,
            max::UPSTREAM_TIMEOUT_MS,
        )?);
        // The upstream timeout runs from the request's start, connect
        // included: a shorter one would answer a black-holed upstream 504
        // before the connect timeout could answer 502.
        if upstream_timeout < connect_timeout {
            return Err(invalid(
                "proxy.upstream_timeout_ms",
                "must be at least proxy.connect_timeout_ms",
            ));
        }
        let public_url = match &self.public_url {
            Some(url) => public_url(url)?,
            None => default_public_url(listen, tls.is_some()),
        };
        Ok(ProxyConfig {
            listen,
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
            connect_timeout,
            upstream_timeout,
            upstream_read_timeout: Duration::from_millis(ranged(
                "proxy.upstream_read_timeout_ms",
                self.upstream_read_timeout_ms,
                max::BODY_TIMEOUT_MS,
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
            access_log: self.access_log,
            access_log_query: self.access_log_query,
        })
    }
}

/// The keys shared by `[proxy]` and `[admin]`, checked and named under `section`.
fn connection_limits(
    section: &str,
    header_read_timeout_ms: i64,
    max_connections: i64,
    max_header_bytes: i64,
    idle_timeout_ms: i64,
    body_read_timeout_ms: i64,
    body_timeout_ms: Option<i64>,
) -> Result<ConnectionLimits, ConfigError> {
    let body_timeout = |name: &str, ms| {
        ranged(&format!("{section}.{name}"), ms, max::BODY_TIMEOUT_MS).map(Duration::from_millis)
    };
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
        body: BodyTimeouts {
            between_reads: body_timeout("body_read_timeout_ms", body_read_timeout_ms)?,
            total: body_timeout_ms
                .map(|ms| body_timeout("body_timeout_ms", ms))
                .transpose()?,
        },
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
            self.body_read_timeout_ms,
            Some(self.body_timeout_ms),
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
            count_flush: Duration::from_millis(ranged_from(
                "store.count_flush_ms",
                self.count_flush_ms,
                10,
                max::COUNT_FLUSH_MS,
            )?),
        })
    }
}

/// The longest a session's timeouts and window may be: a week.
const MAX_SESSION_SECS: i64 = crate::session::MAX_AGE_LIMIT_SECS as i64;

impl RawSession {
    fn validate(self) -> Result<crate::session::SessionConfig, ConfigError> {
        let path_ok = self.path.starts_with('/')
            && self.path.len() > 1
            && !self.path.ends_with('/')
            && self
                .path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !path_ok {
            return Err(invalid(
                "session.path",
                "a path starting with '/', not ending with '/', of visible ASCII without '?' or '#'",
            ));
        }
        let secs = |name: &'static str, v: i64| {
            if (1..=MAX_SESSION_SECS).contains(&v) {
                Ok(Duration::from_secs(v.unsigned_abs()))
            } else {
                Err(invalid(name, "between 1 and 604800 seconds"))
            }
        };
        Ok(crate::session::SessionConfig {
            idle_timeout: secs("session.idle_timeout_secs", self.idle_timeout_secs)?,
            max_age: secs("session.max_age_secs", self.max_age_secs)?,
            timestamp_window: secs("session.timestamp_window_secs", self.timestamp_window_secs)?,
            path: self.path,
            secure_cookie: false,
        })
    }
}

impl RawCluster {
    fn validate(self) -> Result<ClusterConfig, ConfigError> {
        let Some(redis_url) = self.redis_url else {
            return Err(invalid(
                "cluster.redis_url",
                "required in [cluster] (for example redis://127.0.0.1:6379/0)",
            ));
        };
        redis_url_shape(&redis_url).map_err(|why| invalid("cluster.redis_url", why))?;
        let name_ok = (1..=max::CLUSTER_NAME).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(invalid(
                "cluster.name",
                format!(
                    "must be 1 to {} characters of A-Z a-z 0-9 _ - .",
                    max::CLUSTER_NAME
                ),
            ));
        }
        let lease = Duration::from_millis(ranged_from(
            "cluster.lease_ms",
            self.lease_ms,
            max::MIN_LEASE_MS,
            max::LEASE_MS,
        )?);
        Ok(ClusterConfig {
            redis_url,
            name: self.name,
            lease,
            allow_unsafe_durability: self.allow_unsafe_durability,
        })
    }
}

/// Whether `url` is a Redis URL the client can use: `redis://` with a host,
/// a port if any that reads, and a database number if any; or `unix://`
/// (also `redis+unix://`) with an absolute socket path. `rediss://` (TLS) is
/// refused: keygate's Redis client is built without TLS. The reason never
/// quotes the URL, which may hold a password.
fn redis_url_shape(url: &str) -> Result<(), &'static str> {
    const NOT_REDIS: &str = "not a redis:// or unix:// URL";
    if url.contains(char::is_whitespace) {
        return Err(NOT_REDIS);
    }
    let (scheme, rest) = url.split_once("://").ok_or(NOT_REDIS)?;
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    if rest.contains('#') {
        return Err("must not have a fragment");
    }
    match scheme.to_ascii_lowercase().as_str() {
        "rediss" => Err("rediss:// (TLS to Redis) is not built in: reach Redis over a private network, a Unix socket or a TLS tunnel, with redis:// or unix://"),
        "redis" => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = match host_port.strip_prefix('[') {
                // An IPv6 literal: `[::1]:6379`.
                Some(v6) => {
                    let (host, after) = v6.split_once(']').ok_or(NOT_REDIS)?;
                    (host, after.strip_prefix(':'))
                }
                None => match host_port.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (host_port, None),
                },
            };
            if host.is_empty() {
                return Err("has no host");
            }
            if port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0)) {
                return Err("has a port that is not 1 to 65535");
            }
            let db = path.trim_start_matches('/');
            if !db.is_empty() && db.parse::<u32>().is_err() {
                return Err("the path must be a database number (redis://host:6379/0)");
            }
            Ok(())
        }
        "unix" | "redis+unix" => {
            if rest.starts_with('/') && rest.len() > 1 {
                Ok(())
            } else {
                Err("must name an absolute socket path (unix:///run/redis.sock)")
            }
        }
        _ => Err(NOT_REDIS),
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
