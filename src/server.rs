//! Running keygate: the store, the proxy listener and the admin listener, and
//! their orderly end.
//!
//! [`start`] opens the store the config names ([`open_backend`]: the embedded
//! redb file, or in cluster mode the shared Redis), refusing a corrupt or
//! unreachable one before anything binds, then binds both listeners. The
//! store's tasks and the admin listener run on the current Tokio runtime; the
//! proxy listener runs there too, or, with [`ProxyWorkers::Threads`] (what
//! `keygate serve` does by default), on worker threads of its own, each a
//! current-thread runtime accepting on its own socket. The returned
//! [`Running`] tells the addresses and stops everything. [`Running::stop`]
//! stops accepting, lets requests in flight finish for at most
//! [`DRAIN_LIMIT`] (on every worker), saves the call counts once more
//! (`CountFlusher`) and returns.
//!
//! Both listeners run the same accept loop (`listener`), each with its own
//! [`ConnectionLimits`] and optional TLS: a cap on open connections, held
//! across a listener's accept loops (beyond it new clients wait),
//! a cap on the request head (431 beyond it), a timeout for each request's head
//! and one for idle keep-alive connections (`activity`).
//!
//! [`serve_reloadable`] also reads the config again at each `SIGHUP`
//! ([`reload`]): what can change while keygate runs is swapped in shared
//! state, what cannot is refused.

mod activity;
mod limits;
mod listener;
pub mod reload;

pub use limits::ConnectionLimits;
pub use reload::{ReloadError, Reloaded, Reloader};

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_layer::Layer;

use self::listener::Settings;
use crate::admin::{self, AdminState};
use crate::clock::{Clock, SystemClock};
use crate::config::{default_public_url, ClusterConfig, Config};
use crate::gate::KeyGateLayer;
use crate::metrics::{Listener as MetricsListener, Measured, Metrics};
use crate::proxy::access::CountedBody;
use crate::proxy::{AccessLogLayer, Forward, HopByHop, Ready, RequestId, RequestIds};
use crate::store::{
    Backend, BackendError, ClusterOptions, CountFlusher, RedbBackend, RedisBackend, Store,
};
use crate::timeout::TimeoutBody;

/// How long [`Running::stop`] lets requests in flight finish.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Why keygate could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The store could not be opened or read.
    #[error("store: {0}")]
    Store(#[from] BackendError),
    /// A listener could not bind.
    #[error("{listener}: cannot listen on {addr}: {source}")]
    Bind {
        /// `proxy` or `admin`.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A proxy worker's runtime or thread could not be started.
    #[error("cannot start a proxy worker: {0}")]
    Runtime(std::io::Error),
    /// The upstream URL is unusable.
    #[error("proxy.upstream: {0}")]
    Upstream(#[from] crate::proxy::UpstreamError),
    /// Cluster mode, and the cluster's Redis could not be joined: unreachable,
    /// no answer within [`CLUSTER_CONNECT_LIMIT`], or refused (for example
    /// because it does not fsync every write).
    #[error("cluster: {reason}")]
    Cluster {
        /// Why, naming Redis and its URL without the password.
        reason: String,
    },
}

/// How long joining the cluster's Redis may take at start before keygate
/// gives up: a backstop over the backend's own budget (about 25 s of tries,
/// which names why it failed), within the contract's 30 s, so an unreachable
/// or silent Redis ends the process with one clear line rather than a hang.
pub const CLUSTER_CONNECT_LIMIT: Duration = Duration::from_secs(27);

/// keygate, serving.
#[derive(Debug)]
pub struct Running {
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// The store both serve.
    pub store: Store,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Applies a reloaded config (`SIGHUP`).
    reloader: Arc<Reloader>,
    /// The proxy's worker threads, with [`ProxyWorkers::Threads`].
    workers: Vec<WorkerThread>,
    /// Saves the counts (a single node) or hands back unspent calls (a
    /// cluster's node) every `store.count_flush_ms`, and once more at stop.
    counts: Option<CountFlusher>,
}

/// Choices beyond the config, for the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Forward every request without checking keys: the same server and client
    /// code without the gate, so benchmarks can measure what the gate costs.
    /// Never for production.
    pub bare: bool,
    /// A reload may change the log level (`log.level`; `main` sets it when
    /// `KEYGATE_LOG` does not fix the level): the access log layer is then
    /// kept in the stack even when the level at start hides its lines.
    pub log_level_reloadable: bool,
    /// Where the proxy listener's connections are served.
    pub workers: ProxyWorkers,
}

/// Where the proxy listener's connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProxyWorkers {
    /// One accept loop on the runtime [`start`] runs on: for a multi-thread
    /// runtime, which spreads the connections over its threads itself
    /// (`keygate serve --runtime multi-thread`), and for tests.
    #[default]
    Here,
    /// `n` threads of their own, each a current-thread Tokio runtime that
    /// accepts on its own listening socket (`SO_REUSEPORT`) and serves its
    /// connections from accept to close: no work stealing, and no wake of
    /// another thread on a request's path, as nginx's workers. The runtime
    /// [`start`] runs on keeps everything else: the store's tasks (the count
    /// saver, a cluster's lease and feed), the admin listener and their
    /// timers, so none of it shares a thread with requests (`keygate serve`'s
    /// default, one worker per core).
    Threads(NonZeroUsize),
}

impl ProxyWorkers {
    /// How many listening sockets the proxy listener binds.
    fn count(self) -> usize {
        match self {
            ProxyWorkers::Here => 1,
            ProxyWorkers::Threads(n) => n.get(),
        }
    }
}

/// Opens the store the config names and starts serving.
pub async fn start(config: &Config) -> Result<Running, ServeError> {
    start_opened(config, ServeOptions::default()).await
}

/// [`start`], with options.
pub async fn start_opened(config: &Config, options: ServeOptions) -> Result<Running, ServeError> {
    let backend = open_backend(config, Purpose::Serve).await?;
    start_with_options(config, backend, Arc::new(SystemClock::new()), options).await
}

/// What a command opens the store for, which decides how the embedded store
/// is opened; in cluster mode every purpose joins the cluster's Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purpose {
    /// `keygate serve`: the store file is created on first start.
    Serve,
    /// `keygate import`: as `Serve`, created when missing.
    Import,
    /// `keygate export`: the store must exist already; a missing file is an
    /// error, not an empty export.
    Export,
}

/// The one place a command opens the store its config names: the redb file
/// at `store.path`, or, with a `[cluster]` section, the cluster's Redis
/// ([`RedisBackend::connect`], at most [`CLUSTER_CONNECT_LIMIT`]).
pub async fn open_backend(
    config: &Config,
    purpose: Purpose,
) -> Result<Arc<dyn Backend>, ServeError> {
    if let Some(cluster) = &config.cluster {
        return connect_cluster(cluster).await;
    }
    let path = config.store.path.clone();
    let backend = tokio::task::spawn_blocking(move || match purpose {
        Purpose::Export => RedbBackend::open_existing(&path),
        Purpose::Serve | Purpose::Import => RedbBackend::open(&path),
    })
    .await
    .map_err(|e| BackendError::Unavailable(format!("opening the store: {e}")))??;
    Ok(Arc::new(backend))
}

/// Joins the cluster's Redis as a node of its own name.
async fn connect_cluster(cluster: &ClusterConfig) -> Result<Arc<dyn Backend>, ServeError> {
    let redis = cluster.redis_url_redacted();
    let node = node_name();
    tracing::info!(cluster = %cluster.name, node = %node, %redis, "cluster mode: joining");
    let options = ClusterOptions {
        redis_url: cluster.redis_url.clone(),
        name: cluster.name.clone(),
        lease: cluster.lease,
        allow_unsafe_durability: cluster.allow_unsafe_durability,
        node,
    };
    let refused = |reason: String| {
        // In case a client error quotes the URL: never its password.
        let reason = reason.replace(&cluster.redis_url, &redis);
        // The contract: the last line on stderr says it is Redis.
        let reason = if reason.contains("Redis") {
            reason
        } else {
            format!("Redis at {redis}: {reason}")
        };
        ServeError::Cluster { reason }
    };
    match tokio::time::timeout(CLUSTER_CONNECT_LIMIT, RedisBackend::connect(options)).await {
        Ok(Ok(backend)) => Ok(Arc::new(backend)),
        Ok(Err(BackendError::Unavailable(why))) => Err(refused(why)),
        Ok(Err(e)) => Err(refused(e.to_string())),
        Err(_) => Err(refused(format!(
            "unreachable: no answer within {} s",
            CLUSTER_CONNECT_LIMIT.as_secs()
        ))),
    }
}

/// This process's name among the cluster's nodes, for its lease and the
/// logs: the host name (or `node`), the process id and 4 random hex digits,
/// so that a restarted process with a recycled pid is a new node.
fn node_name() -> String {
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(48)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// How long a node waits at start for its first lease before it listens.
const FIRST_LEASE_LIMIT: Duration = Duration::from_secs(10);

/// Waits, at most [`FIRST_LEASE_LIMIT`], until this node's first lease is
/// established (the backend's renewer runs once the node follows the feed),
/// so that a node that says it listens also serves. Past the limit it
/// listens anyway, answering 503 `CLUSTER_UNAVAILABLE` until the lease comes.
async fn await_lease(lease: &crate::store::Lease) {
    let deadline = tokio::time::Instant::now() + FIRST_LEASE_LIMIT;
    while !lease.serving() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "no lease in the cluster after {} s; listening, but answering 503 \
                 CLUSTER_UNAVAILABLE until one is established",
                FIRST_LEASE_LIMIT.as_secs()
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts serving over the given backend and clock.
pub async fn start_with(
    config: &Config,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
) -> Result<Running, ServeError> {
    start_with_options(config, backend, clock, ServeOptions::default()).await
}

/// [`start_with`], with options.
pub async fn start_with_options(
    config: &Config,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    options: ServeOptions,
) -> Result<Running, ServeError> {
    let forward = reload::forward_config(config)?;
    // A backend with a lease is shared by several nodes (cluster mode).
    let lease = backend.lease();
    let store = Store::open(backend, clock, config.limits).await?;
    tracing::info!(orgs = store.len(), "store loaded");
    if let Some(lease) = &lease {
        await_lease(lease).await;
    }
    if config.admin.has_placeholder_token() {
        tracing::warn!(
            "admin.provider_token_sha256 is the example's placeholder (all zeros): no token \
             hashes to it, so every provider call is refused 401; set it to the SHA-256 of \
             your provider token (printf %s \"$TOKEN\" | keygate digest)"
        );
    }

    let bind_error = |listener: &'static str, addr: SocketAddr| {
        move |source| ServeError::Bind {
            listener,
            addr,
            source,
        }
    };
    let proxy_sockets = listener::bind_group(config.proxy.listen, options.workers.count())
        .map_err(bind_error("proxy", config.proxy.listen))?;
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(bind_error("admin", config.admin.listen))?;
    let proxy_addr = proxy_sockets
        .first()
        .map_or(Ok(config.proxy.listen), |s| s.local_addr())
        .map_err(bind_error("proxy", config.proxy.listen))?;
    let admin_addr = local_addr("admin", &admin_listener, config.admin.listen)?;
    // A single node saves its threshold windows every period; a node of a
    // cluster saves none of its own (the cluster's windows live in the shared
    // backend) but hands back, every period, the calls granted to it that it
    // left unspent for a whole period (`Store::flush_counts`).
    let counts = Some(CountFlusher::spawn(store.clone(), config.store.count_flush));

    let (stop, stopped) = watch::channel(false);
    // A log filter that drops the access lines (`KEYGATE_LOG=warn`) leaves the
    // layer out as `proxy.access_log = false` does, when no reload can change
    // the filter: nothing it would measure could ever be written.
    let access_log = config.proxy.access_log
        && (options.log_level_reloadable
            || tracing::enabled!(target: crate::proxy::access::TARGET, tracing::Level::INFO));
    let metrics = Metrics::new();
    let proxy_settings = Settings::new(
        "proxy",
        config.proxy.connections,
        config.proxy.tls.as_ref().map(|tls| tls.acceptor()),
        (Arc::clone(&metrics), MetricsListener::Proxy),
    );
    if options.bare {
        tracing::warn!("bare mode: requests are forwarded WITHOUT key checks (benchmarks only)");
    }
    // Four stacks, each its own type: the access log is either in the stack
    // or not there at all. Outermost first: request id, access log,
    // readiness probe, metrics, hop-by-hop, gate.
    let gate = (!options.bare).then(|| {
        let layer = KeyGateLayer::new(store.clone(), config.gate());
        match &config.session {
            Some(session) => layer.with_sessions(session.clone()),
            None => layer,
        }
    });
    let access = access_log.then(|| {
        let org_from = gate.as_ref().map(|_| config.proxy.org_from.clone());
        AccessLogLayer::new(org_from, config.proxy.access_log_query)
    });
    // `GET /_keygate/ready`, answered inside the access log, before the gate.
    let ready = store.clone();
    let m = Arc::clone(&metrics);
    // What a reload swaps the forwarders' settings through (every
    // worker's); set in each arm.
    let upstream_reload: Box<dyn reload::ReloadForward>;
    let proxy = Proxy {
        workers: options.workers,
        sockets: proxy_sockets,
        settings: proxy_settings,
        stopped: stopped.clone(),
    };
    // Each accept loop builds its stack where it runs (`Proxy::spawn`): its
    // own upstream connections under the shared cap, and its own request ids
    // (a counter of its own, not a cache line every request of every worker
    // writes); the store, the gate's and the log's state and the metrics are
    // the same `Arc`s for every worker. Outermost first: request id (every
    // answer carries it), access log, readiness probe, metrics, hop-by-hop,
    // gate.
    let (proxy_tasks, proxy_threads) = match (gate, access) {
        (None, None) => {
            let forward = Forward::<TimeoutBody<Incoming>>::new(&forward);
            metrics.upstream_connections(forward.open_connections());
            upstream_reload = Box::new(forward.reload_handle());
            proxy.spawn(move || {
                let (forward, ids, m, ready) = (
                    forward.with_own_connections(),
                    RequestIds::new(),
                    m.clone(),
                    ready.clone(),
                );
                move |ip| {
                    RequestId::new(
                        Ready::new(
                            Measured::new(HopByHop::new(forward.for_client(ip)), m.clone()),
                            ready.clone(),
                        ),
                        ids.clone(),
                    )
                }
            })?
        }
        (None, Some(log)) => {
            let forward = Forward::<CountedBody<TimeoutBody<Incoming>>>::new(&forward);
            metrics.upstream_connections(forward.open_connections());
            upstream_reload = Box::new(forward.reload_handle());
            proxy.spawn(move || {
                let (forward, ids, m, ready, log) = (
                    forward.with_own_connections(),
                    RequestIds::new(),
                    m.clone(),
                    ready.clone(),
                    log.clone(),
                );
                move |ip| {
                    RequestId::new(
                        log.layer(Ready::new(
                            Measured::new(HopByHop::new(forward.for_client(ip)), m.clone()),
                            ready.clone(),
                        )),
                        ids.clone(),
                    )
                }
            })?
        }
        (Some(layer), None) => {
            let forward = Forward::<TimeoutBody<Incoming>>::new(&forward);
            metrics.upstream_connections(forward.open_connections());
            upstream_reload = Box::new(forward.reload_handle());
            proxy.spawn(move || {
                let (forward, ids, m, ready, layer) = (
                    forward.with_own_connections(),
                    RequestIds::new(),
                    m.clone(),
                    ready.clone(),
                    layer.clone(),
                );
                move |ip| {
                    RequestId::new(
                        Ready::new(
                            Measured::new(
                                HopByHop::new(layer.layer(forward.for_client(ip))),
                                m.clone(),
                            ),
                            ready.clone(),
                        ),
                        ids.clone(),
                    )
                }
            })?
        }
        (Some(layer), Some(log)) => {
            let forward = Forward::<CountedBody<TimeoutBody<Incoming>>>::new(&forward);
            metrics.upstream_connections(forward.open_connections());
            upstream_reload = Box::new(forward.reload_handle());
            proxy.spawn(move || {
                let (forward, ids, m, ready, layer, log) = (
                    forward.with_own_connections(),
                    RequestIds::new(),
                    m.clone(),
                    ready.clone(),
                    layer.clone(),
                    log.clone(),
                );
                move |ip| {
                    RequestId::new(
                        log.layer(Ready::new(
                            Measured::new(
                                HopByHop::new(layer.layer(forward.for_client(ip))),
                                m.clone(),
                            ),
                            ready.clone(),
                        )),
                        ids.clone(),
                    )
                }
            })?
        }
    };

    // A default public URL follows the port the system chose for `:0`.
    let https = config.proxy.tls.is_some();
    let public_url = if config.proxy.listen.port() == 0
        && config.proxy.public_url == default_public_url(config.proxy.listen, https)
    {
        default_public_url(proxy_addr, https)
    } else {
        config.proxy.public_url.clone()
    };
    let state = AdminState::new(
        store.clone(),
        config.admin.provider_token,
        &public_url,
        &config.proxy.org_from,
    )
    .with_metrics(Arc::clone(&metrics));
    let router = admin::router(state);
    let admin_settings = Settings::new(
        "admin",
        config.admin.connections,
        config.admin.tls.as_ref().map(|tls| tls.acceptor()),
        (Arc::clone(&metrics), MetricsListener::Admin),
    );
    let admin = tokio::spawn(listener::serve(
        admin_listener,
        admin_settings,
        move |_| router.clone(),
        stopped,
    ));
    let reloader = Arc::new(Reloader::new(
        config.clone(),
        store.clone(),
        upstream_reload,
    ));
    tracing::info!(%proxy_addr, %admin_addr, "keygate listening");
    Ok(Running {
        proxy_addr,
        admin_addr,
        store,
        stop,
        tasks: proxy_tasks.into_iter().chain([admin]).collect(),
        workers: proxy_threads,
        reloader,
        counts,
    })
}

/// The proxy listener, bound, before its accept loops start.
struct Proxy {
    workers: ProxyWorkers,
    sockets: Vec<std::net::TcpListener>,
    settings: Settings,
    stopped: watch::Receiver<bool>,
}

impl Proxy {
    /// Starts the accept loops: one task on the current runtime, or one
    /// thread per socket, each with a current-thread runtime built here (so
    /// that a failure to build one is an error of `start`, before any thread
    /// runs). `make` is called once per loop, on the loop's runtime, for the
    /// function that makes each client connection's service.
    fn spawn<M, F, S, B>(
        self,
        make: M,
    ) -> Result<(Vec<JoinHandle<()>>, Vec<WorkerThread>), ServeError>
    where
        M: Fn() -> F + Clone + Send + 'static,
        F: Fn(IpAddr) -> S + Send + 'static,
        S: tower_service::Service<
                http::Request<TimeoutBody<Incoming>>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Proxy {
            workers,
            sockets,
            settings,
            stopped,
        } = self;
        let listen = |socket: std::net::TcpListener| {
            let addr = socket.local_addr();
            TcpListener::from_std(socket).map_err(|source| ServeError::Bind {
                listener: "proxy",
                addr: addr.unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })
        };
        if workers == ProxyWorkers::Here {
            let mut tasks = Vec::new();
            for socket in sockets {
                let listener = listen(socket)?;
                tasks.push(tokio::spawn(listener::serve(
                    listener,
                    settings.clone(),
                    make(),
                    stopped.clone(),
                )));
            }
            return Ok((tasks, Vec::new()));
        }
        let mut started = Vec::new();
        for socket in sockets {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ServeError::Runtime)?;
            let listener = {
                let _inside = runtime.enter();
                listen(socket)?
            };
            started.push((runtime, listener));
        }
        let mut threads = Vec::new();
        for (i, (runtime, listener)) in started.into_iter().enumerate() {
            let (settings, make, stopped) = (settings.clone(), make.clone(), stopped.clone());
            let (done, finished) = tokio::sync::oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("keygate-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        listener::serve(listener, settings, make(), stopped).await;
                    });
                    // Waits for the worker's blocking tasks (a commit in
                    // flight), then tells `stop` the thread is ending.
                    drop(runtime);
                    let _ = done.send(());
                })
                .map_err(ServeError::Runtime)?;
            threads.push(WorkerThread { thread, finished });
        }
        Ok((Vec::new(), threads))
    }
}

/// A proxy worker thread, and the signal that its loop has drained.
#[derive(Debug)]
struct WorkerThread {
    thread: std::thread::JoinHandle<()>,
    finished: tokio::sync::oneshot::Receiver<()>,
}

impl WorkerThread {
    /// Waits until the worker's loop has drained and its runtime is gone.
    async fn finished(self) {
        if self.finished.await.is_err() {
            tracing::error!("a proxy worker thread failed");
        }
        // The thread has sent its last signal (or panicked, reported above)
        // and only returns now, so this join does not wait.
        let _ = self.thread.join();
    }
}

impl Running {
    /// What applies a reloaded config to this keygate: [`serve_reloadable`]
    /// runs it at each `SIGHUP`.
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Stops accepting, lets requests in flight finish (at most
    /// [`DRAIN_LIMIT`]), and returns once both listeners are closed and the
    /// call counts of every request served are saved.
    pub async fn stop(self) {
        // Receivers live as long as the serving tasks; if they are gone, so is
        // everything there was to stop.
        let _ = self.stop.send(true);
        for task in self.tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a listener task failed");
            }
        }
        for worker in self.workers {
            worker.finished().await;
        }
        if let Some(counts) = self.counts {
            counts.stop().await;
        }
        tracing::info!("keygate stopped");
    }
}

/// Runs keygate until SIGTERM or SIGINT, then stops it gracefully.
pub async fn serve(config: &Config) -> Result<(), ServeError> {
    serve_with(config, ServeOptions::default()).await
}

/// [`serve`], with options.
pub async fn serve_with(config: &Config, options: ServeOptions) -> Result<(), ServeError> {
    serve_reloadable(config, options, None).await
}

/// Where a reload reads the config, and how it sets the log level.
pub struct ReloadFrom {
    /// The config file, read again at each `SIGHUP`.
    pub path: std::path::PathBuf,
    /// Sets the log filter to a reloaded `log.level`; `None` when the level
    /// is fixed (`KEYGATE_LOG`).
    pub log_level: Option<reload::SetLogLevel>,
}

impl std::fmt::Debug for ReloadFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadFrom")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// [`serve_with`], and with `reload`, the config read again from its file at
/// each `SIGHUP` (module [`reload`]). The signal is watched once per process,
/// from before keygate listens.
pub async fn serve_reloadable(
    config: &Config,
    options: ServeOptions,
    reload: Option<ReloadFrom>,
) -> Result<(), ServeError> {
    #[cfg(unix)]
    let hup = match &reload {
        Some(_) => match reload::watch_sighup() {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; the config cannot be reloaded");
                None
            }
        },
        None => None,
    };
    let running = start_opened(config, options).await?;
    #[cfg(unix)]
    let watcher = match (reload, hup) {
        (Some(ReloadFrom { path, log_level }), Some(hup)) => {
            if let Some(set) = log_level {
                running.reloader().set_log_level_with(set);
            }
            Some(tokio::spawn(reload::on_sighup(
                Arc::clone(running.reloader()),
                path,
                hup,
            )))
        }
        _ => None,
    };
    shutdown_signal().await;
    #[cfg(unix)]
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    tracing::info!("shutdown signal received; draining");
    running.stop().await;
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn local_addr(
    listener: &'static str,
    l: &TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, ServeError> {
    l.local_addr().map_err(|source| ServeError::Bind {
        listener,
        addr,
        source,
    })
}
