//! `keygate demo`: everything needed to try keygate at once, with nothing else
//! installed: an echo upstream, a config, a provider token, a demo org.
//!
//! On first start it creates, under its folder, a random provider token (kept in
//! `provider-token`, mode 0600, so later starts can print it again), the config
//! `keygate.toml` holding only the token's digest, and the store with the org
//! `demo`. Later starts reuse all three.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::org::{Actor, LimitOverrides, OrgId};
use crate::server;
use crate::token::{self, TokenDigest};

/// Where the demo puts things and listens.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Its folder: token, config and store.
    pub dir: PathBuf,
    /// The proxy listener.
    pub proxy_listen: SocketAddr,
    /// The admin listener.
    pub admin_listen: SocketAddr,
    /// The echo upstream's listener.
    pub upstream_listen: SocketAddr,
}

/// The org the demo provisions.
pub const DEMO_ORG: &str = "demo";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    /// A file of the demo's could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One of the demo's three listeners could not bind: most often another
    /// program (or another demo) holds the port. The message names the flag
    /// that moves it.
    #[error(
        "{listener}: cannot listen on {addr}: {source}; is another program on that port? \
         Stop it, or move this listener with --{flag} (e.g. --{flag} 127.0.0.1:0 for any \
         free port)"
    )]
    Bind {
        /// `proxy`, `admin` or `echo upstream`.
        listener: &'static str,
        /// The `keygate demo` flag that sets its address.
        flag: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The generated config is invalid (a bad listen address, say).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// keygate itself could not start.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// The demo org could not be provisioned.
    #[error("provisioning the demo org: {0}")]
    Provision(#[from] crate::org::OpError),
}

/// Starts the echo upstream and keygate, provisions the demo org if needed,
/// prints how to use them to `out`, and serves until SIGTERM or SIGINT.
pub async fn run(opts: &DemoOptions, out: &mut (dyn Write + Send)) -> Result<(), DemoError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DemoError::Io { path, source }
    };
    std::fs::create_dir_all(&opts.dir).map_err(io(&opts.dir))?;
    let token_path = opts.dir.join("provider-token");
    let token = provider_token(&token_path).map_err(io(&token_path))?;

    let echo_bind = |source| DemoError::Bind {
        listener: "echo upstream",
        flag: UPSTREAM_FLAG,
        addr: opts.upstream_listen,
        source,
    };
    let echo = TcpListener::bind(opts.upstream_listen)
        .await
        .map_err(echo_bind)?;
    let echo_addr = echo.local_addr().map_err(echo_bind)?;
    let echo_task = tokio::spawn(serve_echo(echo));

    let config_path = opts.dir.join("keygate.toml");
    let text = config_text(opts, echo_addr, &TokenDigest::of(&token));
    std::fs::write(&config_path, &text).map_err(io(&config_path))?;
    let config = Config::from_toml(&text)?;

    let running = server::start(&config).await.map_err(|e| match e {
        server::ServeError::Bind {
            listener,
            addr,
            source,
        } => DemoError::Bind {
            listener,
            flag: if listener == "admin" {
                ADMIN_FLAG
            } else {
                PROXY_FLAG
            },
            addr,
            source,
        },
        e => DemoError::Serve(e),
    })?;
    if running.store.view(DEMO_ORG).is_err() {
        let id = OrgId::parse(DEMO_ORG).map_err(crate::org::OpError::from)?;
        running
            .store
            .provision(id, None, LimitOverrides::default(), Actor::Provider)
            .await?;
    }
    let page = running.store.view(DEMO_ORG)?;
    let proxy = format!("http://{}", running.proxy_addr);
    let key = key_lines(page.state.key.as_ref().map(|k| k.expose()));
    let _ = writeln!(
        out,
        "keygate demo is running (stop it with Ctrl-C).\n\
         \n  base URL of org '{DEMO_ORG}': {proxy}/{DEMO_ORG}\
         \n  admin API:                 http://{admin}\
         \n  echo upstream:             http://{echo_addr}\
         \n  config and store:          {dir}\
         \n\nPaste these lines into a shell to follow the README:\n\
         \nexport KEYGATE_URL={proxy}/{DEMO_ORG}\
         \nexport KEYGATE_ADMIN=http://{admin}\
         \n{key}\
         \nexport KEYGATE_TOKEN={token}\n",
        admin = running.admin_addr,
        dir = opts.dir.display(),
    );
    let _ = out.flush();

    server::shutdown_signal().await;
    running.stop().await;
    echo_task.abort();
    Ok(())
}

/// The `keygate demo` flags that move its listeners (see `src/main.rs`),
/// named by the error when a port is taken.
const PROXY_FLAG: &str = "proxy-listen";
/// See [`PROXY_FLAG`].
const ADMIN_FLAG: &str = "admin-listen";
/// See [`PROXY_FLAG`].
const UPSTREAM_FLAG: &str = "upstream-listen";

/// The shell lines that set `KEYGATE_KEY`: the key, or, when the demo org has
/// none (its key was deleted through the admin API before this start), an
/// empty value after comments saying how to add one. Either way the lines can
/// be pasted into a shell as they are.
fn key_lines(key: Option<&str>) -> String {
    match key {
        Some(key) => format!("export KEYGATE_KEY={key}"),
        None => format!(
            "# org '{DEMO_ORG}' has no key now; add one, then set KEYGATE_KEY to its \"key\":\n\
             #   curl -X POST \"$KEYGATE_ADMIN/v1/orgs/{DEMO_ORG}/key\" -H \"authorization: Bearer $KEYGATE_TOKEN\"\n\
             export KEYGATE_KEY="
        ),
    }
}

/// The provider token: read back, or made and saved (mode 0600) on first start.
fn provider_token(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = token::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}

fn config_text(opts: &DemoOptions, upstream: SocketAddr, digest: &TokenDigest) -> String {
    let store = opts.dir.join("keygate.redb");
    format!(
        "# Written by `keygate demo`; rewritten at every demo start.\n\
         [proxy]\nlisten = \"{proxy}\"\nupstream = \"http://{upstream}\"\n\n\
         [admin]\nlisten = \"{admin}\"\n\
         # SHA-256 of the token in provider-token, beside this file.\n\
         provider_token_sha256 = \"{digest}\"\n\n\
         [store]\npath = {store:?}\n",
        proxy = opts.proxy_listen,
        upstream = upstream,
        admin = opts.admin_listen,
        digest = digest.to_hex(),
        store = store.display().to_string(),
    )
}

/// An upstream that answers every request with what it received, as JSON:
/// method, path and query, headers and body length. Lets a newcomer see what
/// keygate forwards (no key header, `x-org-id` set).
pub async fn serve_echo(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(echo);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let headers: BTreeMap<&str, &str> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.to_str().unwrap_or("<binary>")))
        .collect();
    let answer = serde_json::json!({
        "echo": true,
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body_bytes": body_len,
    });
    // A trailing newline keeps `curl -i` output of successive calls apart.
    let mut res = Response::new(Full::from(format!("{answer}\n")));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}
