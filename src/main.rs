//! The `keygate` command: parses flags and calls into the library.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// keygate: one API key per organization, in front of your HTTP APIs.
#[derive(Parser)]
#[command(name = "keygate", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `keygate serve` spreads its work over threads.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RuntimeKind {
    /// One current-thread runtime per worker, as nginx's worker processes.
    CurrentThread,
    /// Tokio's work-stealing runtime.
    MultiThread,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        /// The TOML config (see config/keygate.toml).
        #[arg(long)]
        config: PathBuf,
        /// Worker threads serving the proxy listener (default: one per core).
        #[arg(long)]
        workers: Option<NonZeroUsize>,
        /// `current-thread`: each worker is a single-threaded runtime on its
        /// own thread, accepting on its own socket, with the store's tasks and
        /// the admin listener on the main thread. `multi-thread`: one
        /// work-stealing runtime of `--workers` threads serves everything.
        #[arg(long, value_enum, default_value_t = RuntimeKind::CurrentThread)]
        runtime: RuntimeKind,
        /// Benchmarks only: forward every request WITHOUT checking keys, to
        /// measure what the checks cost.
        #[arg(long, hide = true)]
        bare: bool,
        /// `text` or `json` (one JSON object per line); overrides the config's
        /// `log.format`.
        #[arg(long, value_enum)]
        log_format: Option<keygate::config::LogFormat>,
    },
    /// Load a stopped keygate's store in bulk from FILE (or standard input):
    /// either an org list, one per line, `org` or `org<TAB>key`, or a whole
    /// `keygate export`, into a store that holds no orgs yet.
    Import {
        /// The TOML config naming the store.
        #[arg(long)]
        config: PathBuf,
        /// The org list or export; `-` for standard input.
        file: PathBuf,
    },
    /// Write every org (with its key), token digest, limit and audit event of a
    /// stopped keygate's store to standard output as JSON lines; counts on
    /// standard error. Exit status 2 when the store is missing or in use.
    Export {
        /// The TOML config naming the store.
        #[arg(long)]
        config: PathBuf,
    },
    /// Read every record of a stopped keygate's store and check it: one line per
    /// problem on standard output; exit status 0 when sound, 1 when a problem
    /// was found, 2 when the store could not be checked.
    Check {
        /// The TOML config naming the store.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a config file without starting anything: one line per problem
    /// on standard output; exit status 0 when it is valid, 2 when it is not.
    CheckConfig {
        /// The TOML config to check.
        #[arg(long)]
        config: PathBuf,
    },
    /// Call the admin API of a running keygate: `keygate admin orgs list`.
    /// Exit status 0 on success, 1 when the API refused (its code on stderr),
    /// 2 for a usage error or when no answer came.
    Admin(keygate::cli::admin::AdminArgs),
    /// Try keygate: an echo upstream, a demo org and the gateway, on this machine.
    Demo {
        /// Where the demo keeps its token, config and store.
        #[arg(long, default_value = "data/demo")]
        dir: PathBuf,
        /// The proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        proxy_listen: SocketAddr,
        /// The admin listener.
        #[arg(long, default_value = "127.0.0.1:8081")]
        admin_listen: SocketAddr,
        /// The echo upstream's listener.
        #[arg(long, default_value = "127.0.0.1:9000")]
        upstream_listen: SocketAddr,
    },
    /// Print the SHA-256 of a token read from standard input, for
    /// admin.provider_token_sha256.
    Digest,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config: config_path,
            workers,
            runtime,
            bare,
            log_format,
        } => {
            let config = match load_config(&config_path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let log_level =
                init_logs_as(log_format.unwrap_or(config.log_format), &config.log_level);
            let workers = workers.unwrap_or_else(|| {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            });
            let (runtime, workers) = match runtime {
                // The main thread's runtime keeps the store, the admin
                // listener and the signals; the proxy gets threads of its own.
                RuntimeKind::CurrentThread => (
                    tokio::runtime::Builder::new_current_thread(),
                    keygate::server::ProxyWorkers::Threads(workers),
                ),
                RuntimeKind::MultiThread => {
                    let mut b = tokio::runtime::Builder::new_multi_thread();
                    b.worker_threads(workers.get());
                    (b, keygate::server::ProxyWorkers::Here)
                }
            };
            let options = keygate::server::ServeOptions {
                bare,
                log_level_reloadable: log_level.is_some(),
                workers,
            };
            let reload = keygate::server::ReloadFrom {
                path: config_path,
                log_level,
            };
            run_on(runtime, async {
                keygate::server::serve_reloadable(&config, options, Some(reload)).await
            })
        }
        Command::Import { config, file } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logs();
            run(async move { import(&config, &file).await })
        }
        Command::Export { config } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logs();
            export(&config)
        }
        Command::Check { config } => {
            let config = match load_config(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if config.cluster.is_some() {
                eprintln!(
                    "keygate check: checks the embedded store only ({}); in cluster mode \
                     the state is in Redis, which this does not check",
                    config.store.path.display()
                );
            }
            check(&config.store.path)
        }
        Command::CheckConfig { config } => check_config(&config),
        Command::Admin(args) => ExitCode::from(keygate::cli::admin::main(args)),
        Command::Demo {
            dir,
            proxy_listen,
            admin_listen,
            upstream_listen,
        } => {
            init_logs();
            let opts = keygate::demo::DemoOptions {
                dir,
                proxy_listen,
                admin_listen,
                upstream_listen,
            };
            run(async { keygate::demo::run(&opts, &mut std::io::stdout()).await })
        }
        Command::Digest => {
            let mut token = String::new();
            if let Err(e) = std::io::stdin().read_line(&mut token) {
                eprintln!("keygate: reading the token: {e}");
                return ExitCode::FAILURE;
            }
            println!(
                "{}",
                keygate::token::TokenDigest::of(token.trim_end_matches(['\r', '\n'])).to_hex()
            );
            ExitCode::SUCCESS
        }
    }
}

/// The config at `path`, checked before a runtime starts or anything binds;
/// on a refusal its one line goes to stderr and the exit status is 2.
fn load_config(path: &std::path::Path) -> Result<keygate::config::Config, ExitCode> {
    keygate::config::Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Logs to stderr as text; `KEYGATE_LOG` (or `RUST_LOG`) sets the level,
/// `info` by default.
fn init_logs() {
    let _ = init_logs_as(keygate::config::LogFormat::Text, "info");
}

/// Logs to stderr in `format`: text lines, or one JSON object per line with
/// the current span's fields (the request id) in `span`. The level is
/// `KEYGATE_LOG` (or `RUST_LOG`) when set, fixed for the process; otherwise
/// `level` (the config's `log.level`), and then the returned hook changes it
/// (a reload), through tracing-subscriber's reload layer.
fn init_logs_as(
    format: keygate::config::LogFormat,
    level: &str,
) -> Option<keygate::server::reload::SetLogLevel> {
    let fixed = std::env::var("KEYGATE_LOG")
        .ok()
        .and_then(|s| EnvFilter::try_new(s).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok());
    let reloadable = fixed.is_none();
    let filter = fixed.unwrap_or_else(|| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt().with_writer(std::io::stderr);
    match format {
        keygate::config::LogFormat::Text => {
            let logs = logs
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            reloadable.then(|| set_level_through(handle))
        }
        keygate::config::LogFormat::Json => {
            let logs = logs
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_env_filter(filter)
                .with_filter_reloading();
            let handle = logs.reload_handle();
            logs.init();
            reloadable.then(|| set_level_through(handle))
        }
    }
}

/// A reload's way to the log filter behind `handle`.
fn set_level_through<S: 'static>(
    handle: tracing_subscriber::reload::Handle<EnvFilter, S>,
) -> keygate::server::reload::SetLogLevel
where
    tracing_subscriber::reload::Handle<EnvFilter, S>: Send + Sync,
{
    Box::new(move |level| match handle.reload(EnvFilter::new(level)) {
        Ok(()) => tracing::info!(level, "log level set"),
        Err(e) => tracing::warn!(error = %e, "could not set the log level"),
    })
}

async fn import(config: &keygate::config::Config, file: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    use keygate::store::Imported;
    let started = std::time::Instant::now();
    let imported = if file.as_os_str() == "-" {
        import_from(config, std::io::stdin().lock()).await?
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("{}", file.display()))?;
        import_from(config, std::io::BufReader::new(f)).await?
    };
    let secs = started.elapsed().as_secs_f64();
    match imported {
        Imported::Orgs(n) => eprintln!("imported {n} orgs in {secs:.1} s"),
        Imported::Export(counts) => eprintln!("imported an export: {counts} in {secs:.1} s"),
    }
    Ok(())
}

/// Reads the input (a whole export, checked) before opening, and so perhaps
/// creating, the store.
async fn import_from(
    config: &keygate::config::Config,
    input: impl std::io::BufRead,
) -> anyhow::Result<keygate::store::Imported> {
    use keygate::clock::Clock;
    let input = keygate::store::read_input(input)?;
    let backend = keygate::server::open_backend(config, keygate::server::Purpose::Import).await?;
    let now = keygate::clock::SystemClock::new().now();
    Ok(input.load_into(&*backend, now).await?)
}

/// `keygate export`: exit 2 when the store cannot be opened (missing, in use,
/// refused; or the cluster's Redis unreachable), 1 when reading or writing
/// failed partway.
fn export(config: &keygate::config::Config) -> ExitCode {
    let source = match &config.cluster {
        Some(cluster) => format!(
            "cluster {} at {}",
            cluster.name,
            cluster.redis_url_redacted()
        ),
        None => config.store.path.display().to_string(),
    };
    // One runtime for the open and the export: a cluster backend's tasks
    // (lease, feed) live on the runtime it was opened on.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let backend =
            match keygate::server::open_backend(config, keygate::server::Purpose::Export).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("keygate export: {e}");
                    return ExitCode::from(2);
                }
            };
        let mut out = std::io::BufWriter::new(std::io::stdout());
        match keygate::store::export(&*backend, &mut out).await {
            Ok(counts) => {
                eprintln!("keygate export: {source}: {counts}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keygate: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `keygate check-config`: the checks `serve` makes before it binds (the
/// environment's overrides and the TLS files included), and nothing more.
fn check_config(path: &std::path::Path) -> ExitCode {
    match keygate::config::Config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            // A ConfigError is always one line naming the key or file.
            println!("{e}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    // redb panics on some damaged pages; `check_store` catches each panic and
    // reports it as a problem line, so the default hook's text is noise.
    std::panic::set_hook(Box::new(|_| {}));
    let checked = std::panic::catch_unwind(|| keygate::store::check_store(path));
    match checked {
        Err(_) => {
            eprintln!(
                "keygate check: {}: the check itself failed; the store was not fully checked",
                path.display()
            );
            ExitCode::from(2)
        }
        Ok(Ok(report)) => {
            for line in report.lines() {
                println!("{line}");
            }
            eprintln!("keygate check: {}: {report}", path.display());
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("keygate check: {e}");
            ExitCode::from(2)
        }
    }
}

fn run<E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    run_on(tokio::runtime::Builder::new_multi_thread(), fut)
}

fn run_on<E: std::fmt::Display>(
    mut builder: tokio::runtime::Builder,
    fut: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keygate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keygate: {e}");
            ExitCode::FAILURE
        }
    }
}
