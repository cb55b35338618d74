//! `SIGHUP` to the real binary: the config file is read again; upstreams and
//! their timeouts, default limits, certificates and the log level change
//! without a connection dropped; keys that cannot change while keygate runs,
//! and files that do not validate, are refused in one line and change nothing.
//!
//! Every test runs `keygate serve --config` on `127.0.0.1:0` listeners (no
//! `KEYGATE_LOG`, so `log.level` rules), rewrites its config file, sends
//! `kill -HUP`, and waits for the reload's log line before it looks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

#[path = "support/child.rs"]
mod child;
#[path = "support/redis.rs"]
mod redis_server;

use child::Proc;
use redis_server::Redis;

/// Any wait for keygate: generous, since nothing here depends on it.
const LIMIT: Duration = Duration::from_secs(20);

/// An upstream that answers every request with its `name`; `/slow` after
/// 1.5 s.
async fn upstream(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = service_fn(move |req: Request<Incoming>| async move {
                if req.uri().path().ends_with("/slow") {
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                    name.as_bytes(),
                ))))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), answer),
            );
        }
    });
    addr
}

/// A config folder, and keygate serving it.
struct Keygate {
    dir: TempDir,
    config: PathBuf,
    provider: String,
    proc: Proc,
    proxy: SocketAddr,
    admin: SocketAddr,
}

impl Keygate {
    /// keygate over a config whose `[proxy]` sends to `upstream` and has
    /// `proxy_keys`, followed by `extra` (whole sections).
    async fn start(upstream: SocketAddr, proxy_keys: &str, extra: &str) -> Keygate {
        let dir = TempDir::new().unwrap();
        let config = dir.path().join("keygate.toml");
        let provider = keygate::token::generate();
        let text = Config {
            dir: dir.path().to_owned(),
            provider: provider.clone(),
        }
        .text(upstream, proxy_keys, extra);
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(child::BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_remove("KEYGATE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256");
        let mut proc = Proc::spawn("keygate serve", cmd);
        let (proxy, admin) = proc.listening(LIMIT).await;
        Keygate {
            dir,
            config,
            provider,
            proc,
            proxy,
            admin,
        }
    }

    /// Rewrites the config file as [`start`](Keygate::start) wrote it, with
    /// these values.
    fn rewrite(&self, upstream: SocketAddr, proxy_keys: &str, extra: &str) {
        let config = Config {
            dir: self.dir.path().to_owned(),
            provider: self.provider.clone(),
        };
        std::fs::write(&self.config, config.text(upstream, proxy_keys, extra)).unwrap();
    }

    /// Sends SIGHUP and returns the reload's outcome line, the `n`th (from 1).
    async fn reload(&self, n: usize) -> String {
        self.proc.signal("HUP");
        let deadline = Instant::now() + LIMIT;
        loop {
            let outcomes = outcome_lines(&self.proc.stderr());
            if outcomes.len() >= n {
                assert_eq!(outcomes.len(), n, "more reloads than signals");
                return outcomes[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no reload line after SIGHUP; stderr:\n{}",
                self.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Provisions `org`; returns its key.
    async fn provision(&self, org: &str) -> String {
        let auth = format!("Bearer {}", self.provider);
        let (status, body) = http(
            &mut connect(self.admin).await,
            Method::POST,
            "/v1/orgs",
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            &format!(r#"{{"org":"{org}"}}"#),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let view: Value = serde_json::from_str(&body).unwrap();
        view["key"].as_str().unwrap().to_owned()
    }

    /// `GET path` with `key` on a new proxy connection.
    async fn get(&self, path: &str, key: &str) -> (StatusCode, String) {
        get_on(&mut connect(self.proxy).await, path, key).await
    }
}

/// What a test's config file says beyond its values.
struct Config {
    dir: PathBuf,
    provider: String,
}

impl Config {
    fn text(&self, upstream: SocketAddr, proxy_keys: &str, extra: &str) -> String {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             public_url = \"http://gateway.test\"\n{proxy_keys}\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\n\
             [store]\npath = {store:?}\n\n{extra}",
            digest = keygate::token::TokenDigest::of(&self.provider).to_hex(),
            store = self.dir.join("keygate.redb").display().to_string(),
        )
    }
}

/// The lines that end a reload: what changed, or why nothing did.
fn outcome_lines(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("config reloaded")
                || l.contains("config reload refused")
                || l.contains("config reload failed")
        })
        .map(str::to_owned)
        .collect()
}

/// An HTTP/1.1 connection to `addr`, kept open for several requests.
async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One exchange on `sender`'s connection.
async fn http(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let exchange = async {
        sender.ready().await.unwrap();
        let res = sender.send_request(req).await.unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("an answer")
}

async fn get_on(
    sender: &mut SendRequest<Full<Bytes>>,
    path: &str,
    key: &str,
) -> (StatusCode, String) {
    http(sender, Method::GET, path, &[("x-api-key", key)], "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_survives_a_reload_and_its_next_request_goes_to_the_new_upstream() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let keygate = Keygate::start(a, "", "").await;
    let key = keygate.provision("acme").await;
    let mut open = connect(keygate.proxy).await;
    assert_eq!(
        get_on(&mut open, "/acme/v1", &key).await,
        (StatusCode::OK, "A".into())
    );

    keygate.rewrite(b, "", "");
    let line = keygate.reload(1).await;
    assert!(
        line.contains("config reloaded") && line.contains("proxy.upstream"),
        "{line}"
    );

    // The same connection, still open, now reaches B; so does a new one.
    assert!(!open.is_closed());
    assert_eq!(
        get_on(&mut open, "/acme/v1", &key).await,
        (StatusCode::OK, "B".into())
    );
    assert_eq!(
        keygate.get("/acme/v1", &key).await,
        (StatusCode::OK, "B".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_timeout_takes_effect() {
    let a = upstream("A").await;
    let keygate = Keygate::start(a, "upstream_timeout_ms = 10000", "").await;
    let key = keygate.provision("acme").await;
    let mut open = connect(keygate.proxy).await;
    assert_eq!(
        get_on(&mut open, "/acme/slow", &key).await.0,
        StatusCode::OK
    );

    keygate.rewrite(a, "connect_timeout_ms = 100\nupstream_timeout_ms = 200", "");
    let line = keygate.reload(1).await;
    assert!(line.contains("proxy.upstream_timeout_ms"), "{line}");
    let (status, body) = get_on(&mut open, "/acme/slow", &key).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("UPSTREAM_TIMEOUT"), "{body}");
    assert_eq!(keygate.get("/acme/fast", &key).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_default_limit_takes_effect() {
    let a = upstream("A").await;
    let keygate = Keygate::start(a, "", "").await;
    let key = keygate.provision("acme").await;
    let mut open = connect(keygate.proxy).await;
    for _ in 0..3 {
        assert_eq!(get_on(&mut open, "/acme/v1", &key).await.0, StatusCode::OK);
    }

    // Three calls counted in the window already: the next one passes 3.
    keygate.rewrite(a, "", "[limits]\nthreshold_calls = 3\n");
    let line = keygate.reload(1).await;
    assert!(line.contains("limits"), "{line}");
    let (status, body) = get_on(&mut open, "/acme/v1", &key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("KEY_DISABLED"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_change_are_refused_in_one_line_and_nothing_changes() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let keygate = Keygate::start(a, "", "").await;
    let key = keygate.provision("acme").await;

    // A reloadable change (the upstream, the limits) beside fixed ones.
    let text = std::fs::read_to_string(&keygate.config).unwrap();
    let text = text
        .replace(&a.to_string(), &b.to_string())
        .replace(
            "listen = \"127.0.0.1:0\"\nupstream",
            "listen = \"127.0.0.1:1\"\nupstream",
        )
        .replace("keygate.redb", "elsewhere.redb")
        + "[limits]\nthreshold_calls = 1\n\n[cluster]\nredis_url = \"redis://127.0.0.1:6379/0\"\n";
    std::fs::write(&keygate.config, text).unwrap();
    let line = keygate.reload(1).await;
    assert!(line.contains("config reload refused"), "{line}");
    for fixed in ["proxy.listen", "store.path", "cluster"] {
        assert!(line.contains(fixed), "{fixed} not named: {line}");
    }
    for reloadable in ["proxy.upstream", "limits"] {
        assert!(
            !line.contains(&format!(" {reloadable}")),
            "{reloadable} named: {line}"
        );
    }
    let refusals = keygate
        .proc
        .stderr()
        .lines()
        .filter(|l| l.contains("proxy.listen"))
        .count();
    assert_eq!(refusals, 1, "{}", keygate.proc.stderr());

    // Everything as before: the old upstream, the old threshold.
    for _ in 0..3 {
        assert_eq!(
            keygate.get("/acme/v1", &key).await,
            (StatusCode::OK, "A".into())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_is_refused_with_check_configs_line_and_keygate_keeps_serving() {
    let (a, b) = (upstream("A").await, upstream("B").await);
    let keygate = Keygate::start(a, "", "").await;
    let key = keygate.provision("acme").await;
    let mut open = connect(keygate.proxy).await;

    let good = std::fs::read_to_string(&keygate.config).unwrap();
    let broken = [
        "[proxy\nlisten = 1\n".to_owned(),
        good.replace("http://", "ftp://"),
        good.replace(&a.to_string(), &b.to_string()) + "[log]\nlevel = \"loud\"\n",
    ];
    for (i, text) in broken.iter().enumerate() {
        std::fs::write(&keygate.config, text).unwrap();
        let line = keygate.reload(i + 1).await;
        assert!(line.contains("config reload failed"), "{line}");
        // The very line `keygate check-config` prints for the file.
        let checked = Command::new(child::BIN)
            .args(["check-config", "--config"])
            .arg(&keygate.config)
            .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256")
            .output()
            .unwrap();
        assert_eq!(checked.status.code(), Some(2));
        let printed = String::from_utf8(checked.stdout).unwrap();
        assert!(line.contains(printed.trim()), "{printed:?} not in {line}");
        assert_eq!(
            get_on(&mut open, "/acme/v1", &key).await,
            (StatusCode::OK, "A".into())
        );
    }

    // Fixed, the file reloads.
    keygate.rewrite(b, "", "");
    assert!(keygate
        .reload(broken.len() + 1)
        .await
        .contains("config reloaded"));
    assert_eq!(
        get_on(&mut open, "/acme/v1", &key).await,
        (StatusCode::OK, "B".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_log_level_takes_effect() {
    let a = upstream("A").await;
    let keygate = Keygate::start(a, "", "[log]\nlevel = \"info,keygate::access=warn\"\n").await;
    let key = keygate.provision("acme").await;
    let access_lines = || {
        keygate
            .proc
            .stderr()
            .lines()
            .filter(|l| l.contains("keygate::access"))
            .count()
    };
    assert_eq!(keygate.get("/acme/v1", &key).await.0, StatusCode::OK);
    assert_eq!(access_lines(), 0);

    keygate.rewrite(a, "", "[log]\nlevel = \"info\"\n");
    assert!(keygate.reload(1).await.contains("log.level"));
    assert_eq!(keygate.get("/acme/v1", &key).await.0, StatusCode::OK);
    let deadline = Instant::now() + LIMIT;
    while access_lines() == 0 {
        assert!(Instant::now() < deadline, "{}", keygate.proc.stderr());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A self-signed certificate for `localhost` and its key, written over the
/// files at `cert` and `key`; returns the certificate.
fn certificate(cert: &Path, key: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(cert, made.cert.pem()).unwrap();
    std::fs::write(key, made.key_pair.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// A TLS client that trusts `cert` alone.
fn trusting(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// An HTTPS/1.1 connection to `addr` by a client trusting `cert` alone.
async fn connect_tls(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
) -> std::io::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(LIMIT, trusting(cert).connect(name, tcp))
        .await
        .expect("a handshake")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    Ok(sender)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_to_new_connections() {
    let a = upstream("A").await;
    let files = TempDir::new().unwrap();
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    let first = certificate(&cert, &key);
    let tls = format!(
        "[proxy.tls]\ncert_path = {:?}\nkey_path = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let keygate = Keygate::start(a, "", &tls).await;
    let mut open = connect_tls(keygate.proxy, &first).await.unwrap();
    assert_eq!(
        http(&mut open, Method::GET, "/_keygate/ready", &[], "")
            .await
            .0,
        StatusCode::OK
    );

    // Renewed in place, as certbot does.
    let second = certificate(&cert, &key);
    let line = keygate.reload(1).await;
    assert!(line.contains("config reloaded"), "{line}");

    let mut renewed = connect_tls(keygate.proxy, &second).await.unwrap();
    assert_eq!(
        http(&mut renewed, Method::GET, "/_keygate/ready", &[], "")
            .await
            .0,
        StatusCode::OK
    );
    assert!(
        connect_tls(keygate.proxy, &first).await.is_err(),
        "the old certificate is still served to new connections"
    );
    // The connection made before the reload carries on.
    assert_eq!(
        http(&mut open, Method::GET, "/_keygate/ready", &[], "")
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_mode_a_reload_changes_only_the_node_that_got_the_signal() {
    let Some(redis) = Redis::start() else { return };
    let (a, b) = (upstream("A").await, upstream("B").await);
    let cluster = format!(
        "[cluster]\nredis_url = \"{}\"\nname = \"reload\"\nlease_ms = 1000\n",
        redis.url()
    );
    let one = Keygate::start(a, "", &cluster).await;
    let two = Keygate::start(a, "", &cluster).await;
    let key = one.provision("acme").await;
    assert_eq!(
        two.get("/acme/v1", &key).await,
        (StatusCode::OK, "A".into())
    );

    one.rewrite(b, "", &cluster);
    let line = one.reload(1).await;
    assert!(line.contains("proxy.upstream"), "{line}");
    assert_eq!(
        one.get("/acme/v1", &key).await,
        (StatusCode::OK, "B".into())
    );
    assert_eq!(
        two.get("/acme/v1", &key).await,
        (StatusCode::OK, "A".into())
    );

    // The cluster's keys are fixed.
    one.rewrite(
        a,
        "",
        &cluster.replace("name = \"reload\"", "name = \"other\""),
    );
    let line = one.reload(2).await;
    assert!(
        line.contains("config reload refused") && line.contains("cluster.name"),
        "{line}"
    );
    assert_eq!(
        one.get("/acme/v1", &key).await,
        (StatusCode::OK, "B".into())
    );
}
