//! Reloading the config while keygate runs: `SIGHUP` (README, "Reloading the
//! config").
//!
//! A reload reads the file again and validates it exactly as `keygate
//! check-config` and `keygate serve` do ([`Config::load`]), then compares it
//! with the config in force. What can change while keygate serves is applied;
//! what cannot (`fixed_keys`: the listen addresses, the store, the cluster,
//! and the keys that shape the listeners and the request path at start) makes
//! the whole reload refused, with one log line naming every such key. All or
//! nothing: a file that does not validate, or that changes a fixed key,
//! changes nothing, and keygate keeps serving on the config in force.
//!
//! What a reload changes, and where it lives so that every runtime and every
//! connection sees it (each is one shared value behind an `Arc`, never a copy
//! per runtime or per connection):
//!
//! - the upstream servers and their settings (timeouts, pool, CA file):
//!   [`ForwardReload`], an `ArcSwap` that each proxied request loads once;
//!   requests in flight finish on the settings they started with, and a
//!   keep-alive connection's next request goes by the new ones;
//! - the listeners' certificates: the resolver inside their TLS settings
//!   ([`ServerTls::renew_from`]), read at each handshake; open connections
//!   keep the certificate they shook hands with. The certificate and CA files
//!   are read again at every reload, so a renewed file at the same path is
//!   served without any key changing;
//! - the default limits: [`Store::set_defaults`], which recomputes every
//!   org's limits in force (the values an org does not override follow the
//!   new defaults);
//! - the log level (`log.level`): the filter behind `main`'s subscriber, by
//!   the hook `main` gives ([`SetLogLevel`]).
//!
//! [`Reloader`] holds these handles; [`watch_sighup`] and [`on_sighup`] run
//! it on each signal, started once per process by
//! [`serve_reloadable`](super::serve_reloadable).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use crate::config::{AdminConfig, ClusterConfig, Config, ConfigError, ProxyConfig, StoreConfig};
use crate::proxy::{ForwardConfig, ForwardReload, Upstream, UpstreamError};
use crate::server::ConnectionLimits;
use crate::store::Store;
use crate::tls::ServerTls;

/// Sets the log filter to the directives given (a validated `log.level`):
/// what `main` makes over its subscriber's reload handle.
pub type SetLogLevel = Box<dyn Fn(&str) + Send + Sync>;

/// Why a reload changed nothing. Each prints as one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The file could not be read, is not TOML, or a value is refused: the
    /// line `keygate check-config` prints.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// Keys that cannot change while keygate runs were changed.
    #[error(
        "these keys cannot change while keygate runs: {}; restart keygate to change them",
        .keys.join(", ")
    )]
    Fixed {
        /// The dotted keys, in the file's order of sections.
        keys: Vec<&'static str>,
    },
    /// An upstream URL the config accepted that the proxy cannot use.
    #[error("config: proxy.upstream: {0}")]
    Upstream(#[from] UpstreamError),
}

/// What a reload that succeeded changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// The dotted keys (or sections) whose values changed, in the file's
    /// order; empty when the file is as it was.
    pub changed: Vec<&'static str>,
}

/// A forwarder's [`ForwardReload`], whatever its body type (the proxy's
/// stack differs with the access log).
pub(super) trait ReloadForward: Send + Sync {
    fn apply(&self, config: &ForwardConfig);
}

impl<B> ReloadForward for ForwardReload<B>
where
    B: http_body::Body<Data = Bytes> + Send + 'static + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn apply(&self, config: &ForwardConfig) {
        ForwardReload::apply(self, config);
    }
}

/// Applies a new config to a running keygate: the handles to everything a
/// reload changes, and the config in force. Shared by `Arc`; reloads run one
/// at a time.
pub struct Reloader {
    /// The config in force; held for the whole of a reload, so two never
    /// interleave.
    in_force: Mutex<Config>,
    store: Store,
    forward: Box<dyn ReloadForward>,
    /// The listeners' running TLS settings (clones share the resolver their
    /// acceptors read).
    proxy_tls: Option<ServerTls>,
    admin_tls: Option<ServerTls>,
    log: OnceLock<SetLogLevel>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Reloader {
    /// The reloader of a keygate started with `config`.
    pub(super) fn new(config: Config, store: Store, forward: Box<dyn ReloadForward>) -> Reloader {
        Reloader {
            proxy_tls: config.proxy.tls.clone(),
            admin_tls: config.admin.tls.clone(),
            in_force: Mutex::new(config),
            store,
            forward,
            log: OnceLock::new(),
        }
    }

    /// Lets reloads change the log level through `set`; without it a changed
    /// `log.level` is applied to nothing (a library user's own subscriber).
    /// Only the first call counts.
    pub fn set_log_level_with(&self, set: SetLogLevel) {
        let _ = self.log.set(set);
    }

    /// A copy of the config in force.
    pub fn config(&self) -> Config {
        self.lock().clone()
    }

    /// Reads and validates the file at `path` as `keygate check-config` does,
    /// then [`apply`](Reloader::apply)s it. Reads files: call it where
    /// blocking is fine.
    pub fn reload_file(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        self.apply(Config::load(path)?)
    }

    /// Makes `new` the config in force, or changes nothing and says why.
    /// Recomputes every org's limits when the defaults changed, which takes
    /// a while with many orgs: call it where blocking is fine.
    pub fn apply(&self, new: Config) -> Result<Reloaded, ReloadError> {
        let mut in_force = self.lock();
        let keys = fixed_keys(&in_force, &new);
        if !keys.is_empty() {
            return Err(ReloadError::Fixed { keys });
        }
        // Everything that can fail is done before anything changes.
        let forward = forward_config(&new)?;
        let changed = changed_keys(&in_force, &new);

        // A CA file may have been renewed at the same path: read again, so
        // the connections are renewed too.
        let upstream_changed = changed
            .iter()
            .any(|key| key.starts_with("proxy.") && *key != "proxy.tls");
        if upstream_changed || new.proxy.upstream_tls.is_some() {
            self.forward.apply(&forward);
        }
        for (running, fresh) in [
            (&self.proxy_tls, &new.proxy.tls),
            (&self.admin_tls, &new.admin.tls),
        ] {
            if let (Some(running), Some(fresh)) = (running, fresh) {
                running.renew_from(fresh);
            }
        }
        if new.limits != in_force.limits {
            self.store.set_defaults(new.limits);
        }
        if new.log_level != in_force.log_level {
            match self.log.get() {
                Some(set) => set(&new.log_level),
                None => tracing::warn!(
                    "log.level changed, but the log level is fixed for this process \
                     (KEYGATE_LOG or RUST_LOG is set): it stays"
                ),
            }
        }
        *in_force = new;
        Ok(Reloaded { changed })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Config> {
        // Nothing panics while it is held (the reload's steps cannot fail
        // once begun), so a poisoned lock still holds a whole config.
        self.in_force.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`reload_file`](Reloader::reload_file), logged: one line saying what
    /// changed, or one line saying why nothing did.
    pub fn reload_file_logged(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        let outcome = self.reload_file(path);
        match &outcome {
            Ok(Reloaded { changed }) if changed.is_empty() => tracing::info!(
                config = %path.display(),
                "config reloaded: no key changed (certificate and CA files read again)"
            ),
            Ok(Reloaded { changed }) => tracing::info!(
                config = %path.display(),
                changed = %changed.join(", "),
                "config reloaded"
            ),
            Err(ReloadError::Fixed { .. }) => tracing::error!(
                config = %path.display(),
                "config reload refused, the running config stays: {}",
                outcome.as_ref().err().map(ToString::to_string).unwrap_or_default()
            ),
            Err(e) => tracing::error!(
                config = %path.display(),
                "config reload failed, the running config stays: {e}"
            ),
        }
        outcome
    }
}

/// What keygate's forwarder needs of `config`.
pub(super) fn forward_config(config: &Config) -> Result<ForwardConfig, UpstreamError> {
    let p = &config.proxy;
    Ok(ForwardConfig {
        upstreams: p
            .upstreams
            .iter()
            .map(Upstream::new)
            .collect::<Result<Vec<_>, _>>()?,
        connect_timeout: p.connect_timeout,
        upstream_timeout: p.upstream_timeout,
        upstream_read_timeout: p.upstream_read_timeout,
        pool_idle_timeout: p.pool_idle_timeout,
        pool_max_idle_per_host: p.pool_max_idle_per_host,
        max_upstream_connections: p.max_upstream_connections,
        upstream_fail_timeout: p.upstream_fail_timeout,
        preserve_host: p.preserve_host,
        upstream_tls: p.upstream_tls.clone(),
        https: p.tls.is_some(),
        // The metrics time the upstream on every request.
        upstream_time: true,
    })
}

/// The keys that differ between `old` and `new` and that a running keygate
/// cannot take: the listen addresses, the store, the cluster, and what is
/// built into the listeners and the request path at start (the key and org
/// headers, the access log's place in the stack, the connection limits, TLS
/// on or off, the session login, the provider's token, the log's format).
///
/// Every field is named in the destructuring below, so that a new config key
/// cannot be added without deciding here whether a reload may change it.
pub(super) fn fixed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key: &'static str, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    let Config {
        proxy,
        admin,
        store,
        limits: _,
        cluster,
        session,
        log_format,
        log_level: _,
    } = new;
    let ProxyConfig {
        listen,
        upstreams: _,
        upstream_tls: _,
        max_upstream_connections: _,
        upstream_fail_timeout: _,
        preserve_host: _,
        key_header,
        org_from,
        public_url,
        blocked_when_expired,
        connect_timeout: _,
        upstream_timeout: _,
        upstream_read_timeout: _,
        pool_idle_timeout: _,
        pool_max_idle_per_host: _,
        connections,
        tls,
        access_log,
        access_log_query,
    } = proxy;
    let p = &old.proxy;
    check("proxy.listen", *listen != p.listen);
    check("proxy.key_header", *key_header != p.key_header);
    // `OrgSource` carries the header's name in header mode.
    check("proxy.org_from", org_from != &p.org_from);
    check("proxy.public_url", *public_url != p.public_url);
    check(
        "proxy.blocked_when_expired",
        *blocked_when_expired != p.blocked_when_expired,
    );
    connection_keys("proxy", connections, &p.connections, &mut check);
    check("proxy.tls", tls.is_some() != p.tls.is_some());
    check("proxy.access_log", *access_log != p.access_log);
    check(
        "proxy.access_log_query",
        *access_log_query != p.access_log_query,
    );

    let AdminConfig {
        listen,
        provider_token,
        connections,
        tls,
    } = admin;
    let a = &old.admin;
    check("admin.listen", *listen != a.listen);
    check(
        "admin.provider_token_sha256",
        *provider_token != a.provider_token,
    );
    connection_keys("admin", connections, &a.connections, &mut check);
    check("admin.tls", tls.is_some() != a.tls.is_some());

    let StoreConfig { path, count_flush } = store;
    check("store.path", *path != old.store.path);
    check(
        "store.count_flush_ms",
        *count_flush != old.store.count_flush,
    );

    match (cluster, &old.cluster) {
        (Some(new), Some(old)) => {
            let ClusterConfig {
                redis_url,
                name,
                lease,
                allow_unsafe_durability,
            } = new;
            check("cluster.redis_url", *redis_url != old.redis_url);
            check("cluster.name", *name != old.name);
            check("cluster.lease_ms", *lease != old.lease);
            check(
                "cluster.allow_unsafe_durability",
                *allow_unsafe_durability != old.allow_unsafe_durability,
            );
        }
        (new, old) => check("cluster", new.is_some() != old.is_some()),
    }
    check("session", *session != old.session);
    check("log.format", *log_format != old.log_format);
    keys
}

/// The connection limits of `[section]`, named as in the file.
fn connection_keys(
    section: &'static str,
    new: &ConnectionLimits,
    old: &ConnectionLimits,
    check: &mut impl FnMut(&'static str, bool),
) {
    let ConnectionLimits {
        header_read_timeout,
        max_connections,
        max_header_bytes,
        idle_timeout,
        body,
    } = new;
    let name = |key: &str| -> &'static str {
        match (section, key) {
            ("proxy", "header_read_timeout_ms") => "proxy.header_read_timeout_ms",
            ("proxy", "max_connections") => "proxy.max_connections",
            ("proxy", "max_header_bytes") => "proxy.max_header_bytes",
            ("proxy", "idle_timeout_ms") => "proxy.idle_timeout_ms",
            ("proxy", "body_read_timeout_ms") => "proxy.body_read_timeout_ms",
            ("admin", "header_read_timeout_ms") => "admin.header_read_timeout_ms",
            ("admin", "max_connections") => "admin.max_connections",
            ("admin", "max_header_bytes") => "admin.max_header_bytes",
            ("admin", "idle_timeout_ms") => "admin.idle_timeout_ms",
            ("admin", "body_read_timeout_ms") => "admin.body_read_timeout_ms",
            _ => "admin.body_timeout_ms",
        }
    };
    check(
        name("header_read_timeout_ms"),
        *header_read_timeout != old.header_read_timeout,
    );
    check(
        name("max_connections"),
        *max_connections != old.max_connections,
    );
    check(
        name("max_header_bytes"),
        *max_header_bytes != old.max_header_bytes,
    );
    check(name("idle_timeout_ms"), *idle_timeout != old.idle_timeout);
    check(
        name("body_read_timeout_ms"),
        body.between_reads != old.body.between_reads,
    );
    check(name("body_timeout_ms"), body.total != old.body.total);
}

/// The reloadable keys whose values differ, for the log.
fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    let (p, q) = (&old.proxy, &new.proxy);
    [
        ("proxy.upstream", p.upstreams != q.upstreams),
        ("proxy.upstream_ca_path", p.upstream_tls != q.upstream_tls),
        (
            "proxy.max_upstream_connections",
            p.max_upstream_connections != q.max_upstream_connections,
        ),
        (
            "proxy.upstream_fail_timeout_secs",
            p.upstream_fail_timeout != q.upstream_fail_timeout,
        ),
        ("proxy.preserve_host", p.preserve_host != q.preserve_host),
        (
            "proxy.connect_timeout_ms",
            p.connect_timeout != q.connect_timeout,
        ),
        (
            "proxy.upstream_timeout_ms",
            p.upstream_timeout != q.upstream_timeout,
        ),
        (
            "proxy.upstream_read_timeout_ms",
            p.upstream_read_timeout != q.upstream_read_timeout,
        ),
        (
            "proxy.pool_idle_timeout_secs",
            p.pool_idle_timeout != q.pool_idle_timeout,
        ),
        (
            "proxy.pool_max_idle_per_host",
            p.pool_max_idle_per_host != q.pool_max_idle_per_host,
        ),
        ("proxy.tls", p.tls != q.tls),
        ("admin.tls", old.admin.tls != new.admin.tls),
        ("limits", old.limits != new.limits),
        ("log.level", old.log_level != new.log_level),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// `SIGHUP`, watched from now on: from this call the signal no longer ends
/// the process (its default), so call it before keygate says it listens.
#[cfg(unix)]
pub fn watch_sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads the config from `path` at each `SIGHUP` that `hup` yields, one
/// reload at a time, each on a blocking thread (it reads files, and
/// recomputing every org's limits takes a while with many orgs), logged.
#[cfg(unix)]
pub async fn on_sighup(
    reloader: Arc<Reloader>,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let (reloader, path) = (Arc::clone(&reloader), path.clone());
        let done = tokio::task::spawn_blocking(move || {
            let _ = reloader.reload_file_logged(&path);
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "the config reload failed to run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn config(extra: &str) -> Config {
        Config::from_toml(&format!(
            "proxy.upstream = \"http://127.0.0.1:9000\"\n\
             admin.provider_token_sha256 = \"{DIGEST}\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_same_config_has_no_fixed_key_and_nothing_changed() {
        let c = config("");
        assert!(fixed_keys(&c, &c.clone()).is_empty());
        assert!(changed_keys(&c, &c.clone()).is_empty());
    }

    #[test]
    fn listen_addresses_store_and_cluster_are_fixed_and_each_is_named() {
        let old = config("[cluster]\nredis_url = \"redis://127.0.0.1:6379/0\"\n");
        let new = config(
            "proxy.listen = \"127.0.0.1:1\"\nadmin.listen = \"127.0.0.1:2\"\n\
             store.path = \"elsewhere.redb\"\n\
             [cluster]\nredis_url = \"redis://127.0.0.1:6380/0\"\n",
        );
        assert_eq!(
            fixed_keys(&old, &new),
            [
                "proxy.listen",
                // Unset, it follows the listen address.
                "proxy.public_url",
                "admin.listen",
                "store.path",
                "cluster.redis_url"
            ]
        );
        assert_eq!(fixed_keys(&config(""), &old), ["cluster"]);
    }

    #[test]
    fn upstreams_timeouts_limits_and_log_level_may_change() {
        let old = config("");
        let new = Config::from_toml(&format!(
            "proxy.upstream = [\"http://127.0.0.1:9001\", \"http://127.0.0.1:9002\"]\n\
             proxy.upstream_timeout_ms = 5000\nproxy.connect_timeout_ms = 100\n\
             admin.provider_token_sha256 = \"{DIGEST}\"\n\
             limits.rate_per_sec = 7\nlog.level = \"debug\"\n"
        ))
        .unwrap();
        assert!(
            fixed_keys(&old, &new).is_empty(),
            "{:?}",
            fixed_keys(&old, &new)
        );
        assert_eq!(
            changed_keys(&old, &new),
            [
                "proxy.upstream",
                "proxy.connect_timeout_ms",
                "proxy.upstream_timeout_ms",
                "limits",
                "log.level"
            ]
        );
    }

    #[test]
    fn keys_built_into_the_request_path_are_fixed() {
        let old = config("");
        let new = config(
            "proxy.key_header = \"x-key\"\nproxy.access_log = false\n\
             proxy.max_connections = 5\nadmin.body_timeout_ms = 5\nlog.format = \"json\"\n\
             [session]\n",
        );
        assert_eq!(
            fixed_keys(&old, &new),
            [
                "proxy.key_header",
                "proxy.max_connections",
                "proxy.access_log",
                "admin.body_timeout_ms",
                "session",
                "log.format"
            ]
        );
    }

    #[test]
    fn a_fixed_key_error_is_one_line_naming_every_key() {
        let e = ReloadError::Fixed {
            keys: vec!["proxy.listen", "store.path"],
        };
        assert_eq!(
            e.to_string(),
            "these keys cannot change while keygate runs: proxy.listen, store.path; \
             restart keygate to change them"
        );
    }
}
