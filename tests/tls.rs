//! TLS termination on both listeners, with a certificate made in the test: HTTPS
//! clients (HTTP/1.1, and HTTP/2 by ALPN) are served, plaintext and silent
//! clients are not, and bad certificate or key files stop keygate at start.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::clock::{Clock, ManualClock};
use keygate::config::Config;
use keygate::server::{self, Running};
use keygate::store::{Backend, MemoryBackend};
use keygate::token::TokenDigest;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use support::{Upstream, PROVIDER, T0};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// Long enough for anything keygate should do, short enough to fail fast.
const PATIENCE: Duration = Duration::from_secs(5);

/// A self-signed certificate for `localhost` and `127.0.0.1`, its key, and both
/// as PEM files in a temporary folder.
struct Cert {
    der: CertificateDer<'static>,
    cert_path: PathBuf,
    key_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Cert {
    fn new() -> Cert {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, made.cert.pem()).unwrap();
        std::fs::write(&key_path, made.key_pair.serialize_pem()).unwrap();
        Cert {
            der: made.cert.der().clone(),
            cert_path,
            key_path,
            dir,
        }
    }

    /// `[section.tls]` naming these files.
    fn table(&self, section: &str) -> String {
        tls_table(section, &self.cert_path, &self.key_path)
    }

    /// A client that trusts this certificate alone and offers `alpn`.
    fn connector(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

fn tls_table(section: &str, cert: &Path, key: &Path) -> String {
    format!(
        "[{section}.tls]\ncert_path = {:?}\nkey_path = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// keygate serving HTTPS on both listeners.
struct Keygate {
    proxy: SocketAddr,
    admin: SocketAddr,
    upstream: Upstream,
    cert: Cert,
    _running: Running,
}

impl Keygate {
    async fn start(proxy_keys: &str) -> Keygate {
        let upstream = Upstream::start().await;
        let cert = Cert::new();
        let toml = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n{proxy_keys}\n\
             {proxy_tls}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\
             {admin_tls}\n",
            up = upstream.addr,
            proxy_tls = cert.table("proxy"),
            admin_tls = cert.table("admin"),
            digest = TokenDigest::of(PROVIDER).to_hex(),
        );
        let config = Config::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let backend = Arc::new(MemoryBackend::new()) as Arc<dyn Backend>;
        let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
        let running = server::start_with(&config, backend, clock).await.unwrap();
        Keygate {
            proxy: running.proxy_addr,
            admin: running.admin_addr,
            upstream,
            cert,
            _running: running,
        }
    }

    /// A TLS connection to `addr`, offering `alpn`.
    async fn connect(&self, addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.cert
            .connector(alpn)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    /// `method path` over HTTPS and HTTP/1.1 to `addr`.
    async fn https(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (StatusCode, Version, Bytes) {
        let tls = self.connect(addr, &[b"http/1.1"]).await;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let res = sender.send_request(req).await.unwrap();
        let (status, version) = (res.status(), res.version());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, version, body)
    }

    /// Provisions `org` over HTTPS; returns its KeyView.
    async fn provision(&self, org: &str) -> Value {
        let auth = format!("Bearer {PROVIDER}");
        let (status, _, body) = self
            .https(
                self.admin,
                Method::POST,
                "/v1/orgs",
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                &format!(r#"{{"org":"{org}"}}"#),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body:?}");
        serde_json::from_slice(&body).unwrap()
    }
}

#[tokio::test]
async fn https_clients_reach_the_upstream_and_the_admin_api() {
    let keygate = Keygate::start("").await;
    let view = keygate.provision("acme").await;
    let key = view["key"].as_str().unwrap().to_owned();
    // The default public URL follows the proxy's scheme.
    assert_eq!(
        view["base_url"],
        format!("https://{}/acme", keygate.proxy),
        "{view}"
    );

    let (status, version, body) = keygate
        .https(
            keygate.proxy,
            Method::GET,
            "/acme/v1/users?x=1",
            &[("x-api-key", &key)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "upstream");
    let seen = keygate.upstream.only();
    assert_eq!(seen.uri, "/v1/users?x=1");
    assert_eq!(seen.headers["x-org-id"], "acme");
    assert!(seen.headers.get("x-api-key").is_none());

    let auth = format!("Bearer {PROVIDER}");
    let (status, _, body) = keygate
        .https(
            keygate.admin,
            Method::GET,
            "/v1/orgs/acme/key",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["org"], "acme");
    assert_eq!(page["key"], key.as_str());
    assert_eq!(page["status"], "enabled");
}

#[tokio::test]
async fn forwarded_proto_is_https_for_tls_clients() {
    let keygate = Keygate::start("").await;
    let key = keygate.provision("acme").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _, _) = keygate
        .https(
            keygate.proxy,
            Method::GET,
            "/acme/v1",
            &[("x-api-key", &key)],
            "",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        keygate.upstream.only().headers["x-forwarded-proto"],
        "https"
    );
}

#[tokio::test]
async fn http2_is_offered_by_alpn_and_served() {
    let keygate = Keygate::start("").await;
    for addr in [keygate.proxy, keygate.admin] {
        let tls = keygate.connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        // Unauthenticated on purpose: keygate's own answers, no org needed.
        let path = if addr == keygate.proxy {
            "/acme/v1"
        } else {
            "/healthz"
        };
        let req = Request::builder()
            .uri(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.version(), Version::HTTP_2);
        let expected = if addr == keygate.proxy {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        };
        assert_eq!(res.status(), expected, "{path}");
    }
}

#[tokio::test]
async fn a_plaintext_request_to_a_tls_port_gets_no_http_answer() {
    let keygate = Keygate::start("").await;
    for addr in [keygate.proxy, keygate.admin] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        tokio::time::timeout(PATIENCE, async {
            loop {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the connection was closed");
        assert!(
            !got.starts_with(b"HTTP/"),
            "{addr} answered plaintext: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // Both still serve HTTPS.
    let (status, _, _) = keygate
        .https(keygate.admin, Method::GET, "/healthz", &[], "")
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_cut_off() {
    let keygate = Keygate::start("header_read_timeout_ms = 300").await;
    let mut tcp = TcpStream::connect(keygate.proxy).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut rest))
        .await
        .expect("the silent TLS client was not cut off")
        .unwrap();
    assert!(rest.is_empty());
}

/// Runs `keygate serve` with `config`; returns the exit code and stderr.
fn serve_with_config(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("keygate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_tls_files_stop_keygate_with_exit_2_before_it_binds() {
    let cert = Cert::new();
    let other = Cert::new();
    // The listen address is taken: had keygate tried to bind, it would say so
    // and exit 1 instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let base = format!(
        "[proxy]\nlisten = \"{addr}\"\nupstream = \"http://127.0.0.1:9\"\n\
         [admin]\nlisten = \"{addr}\"\nprovider_token_sha256 = \"{}\"\n\
         [store]\npath = {:?}\n",
        TokenDigest::of(PROVIDER).to_hex(),
        cert.dir.path().join("store.redb").display().to_string(),
    );
    let missing = cert.dir.path().join("missing.pem");
    let cases = [
        (
            tls_table("proxy", &missing, &cert.key_path),
            "config: proxy.tls.cert_path: cannot read ",
        ),
        (
            tls_table("admin", &cert.key_path, &cert.key_path),
            "config: admin.tls.cert_path: ",
        ),
        (
            tls_table("proxy", &cert.cert_path, &cert.cert_path),
            "config: proxy.tls.key_path: ",
        ),
        (
            tls_table("admin", &cert.cert_path, &other.key_path),
            "config: admin.tls.key_path: ",
        ),
    ];
    for (table, start) in cases {
        let (code, stderr) = serve_with_config(other.dir.path(), &format!("{base}{table}"));
        assert_eq!(code, Some(2), "{table}: {stderr}");
        assert!(stderr.starts_with(start), "{table}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    }
    assert!(!cert.dir.path().join("store.redb").exists());
}
