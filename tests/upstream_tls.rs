//! HTTPS upstreams, with certificates made in the test: keygate verifies the
//! upstream against `proxy.upstream_ca_path`, sends the URL's host as SNI,
//! speaks HTTP/2 when the upstream picks it by ALPN and HTTP/1.1 otherwise,
//! and answers 502 when the certificate is not trusted.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::config::Config;
use keygate::token::TokenDigest;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{Gateway, PROVIDER};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// One request as the TLS upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    version: Version,
    /// The URI as the server parsed it: an HTTP/2 request's carries
    /// `:authority`.
    uri: http::Uri,
    headers: HeaderMap,
    /// The SNI name of the connection it came on.
    sni: Option<String>,
    /// The whole body.
    body: Bytes,
}

/// An HTTPS upstream on 127.0.0.1 with a self-signed certificate for
/// `localhost` and `127.0.0.1`, offering `alpn`, answering `tls-upstream`.
struct TlsUpstream {
    addr: SocketAddr,
    /// The certificate as a PEM file: the CA to trust it by.
    ca_path: PathBuf,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections accepted and not yet ended.
    open: Arc<std::sync::atomic::AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl TlsUpstream {
    async fn start(alpn: &[&[u8]]) -> TlsUpstream {
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_path, made.cert.pem()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(made.key_pair.serialize_pem().as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(made.cert.der().to_vec())], key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (log, count, live) = (
            Arc::clone(&seen),
            Arc::clone(&connections),
            Arc::clone(&open),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let log = Arc::clone(&log);
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let live = Arc::clone(&live);
                tokio::spawn(async move {
                    // Counted down however the connection ends.
                    struct Ended(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Ended {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    let _ended = Ended(live);
                    // An untrusting client aborts the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, sni) = (Arc::clone(&log), sni.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes());
                            log.lock().unwrap().push(Seen {
                                version: parts.version,
                                uri: parts.uri,
                                headers: parts.headers,
                                sni,
                                body: body.unwrap_or_default(),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"tls-upstream",
                            ))))
                        }
                    });
                    let io = TokioIo::new(tls);
                    if h2 {
                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await;
                    } else {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await;
                    }
                });
            }
        });
        TlsUpstream {
            addr,
            ca_path,
            seen,
            connections,
            open,
            _dir: dir,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// keygate forwarding to `url`, trusting the CA file `ca` when given.
async fn gateway(url: &str, ca: Option<&PathBuf>) -> Gateway {
    let mut builder = Gateway::builder().upstream_toml(&format!("{url:?}"));
    if let Some(ca) = ca {
        builder = builder.proxy_keys(&format!(
            "upstream_ca_path = {:?}",
            ca.display().to_string()
        ));
    }
    builder.start().await
}

#[tokio::test]
async fn an_https_upstream_that_speaks_http1_is_reached_through_its_ca() {
    let up = TlsUpstream::start(&[b"http/1.1"]).await;
    let gw = gateway(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        Some(&up.ca_path),
    )
    .await;
    let key = gw.provision("acme").await;
    for _ in 0..2 {
        let r = gw.get_with("/acme/v1/users?x=1", &key).await;
        r.assert_status(StatusCode::OK);
        assert_eq!(r.body, "tls-upstream");
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    let first = &seen[0];
    assert_eq!(first.version, Version::HTTP_11);
    assert_eq!(first.uri, "/v1/users?x=1");
    assert_eq!(
        first.headers["host"],
        format!("127.0.0.1:{}", up.addr.port())
    );
    assert_eq!(first.headers["x-org-id"], "acme");
    assert!(first.headers.get("x-api-key").is_none());
    // One connection, kept for the second request.
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn an_https_upstream_that_picks_h2_is_spoken_to_in_http2() {
    let up = TlsUpstream::start(&[b"h2", b"http/1.1"]).await;
    let gw = gateway(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        Some(&up.ca_path),
    )
    .await;
    let key = gw.provision("acme").await;
    // Concurrent requests from separate client connections share the one
    // HTTP/2 upstream connection once it is open.
    let r = gw.get_with("/acme/v1/a", &key).await;
    r.assert_status(StatusCode::OK);
    let (a, b) = tokio::join!(
        gw.get_with("/acme/v1/b", &key),
        gw.get_with("/acme/v1/c?q=1", &key)
    );
    a.assert_status(StatusCode::OK);
    b.assert_status(StatusCode::OK);
    assert_eq!(b.body, "tls-upstream");

    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_2, "{s:?}");
        assert_eq!(s.uri.scheme_str(), Some("https"), "{s:?}");
        let authority = format!("127.0.0.1:{}", up.addr.port());
        assert_eq!(
            s.uri.authority().map(|a| a.as_str()),
            Some(authority.as_str())
        );
        assert_eq!(s.headers["x-org-id"], "acme");
    }
    assert!(seen
        .iter()
        .any(|s| s.uri.path_and_query().unwrap() == "/v1/c?q=1"));
    assert_eq!(up.connections(), 1);

    // A request body goes through on a stream, whole.
    let req = gw
        .proxy_request(http::Method::POST, "/acme/v1/items")
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"name\":\"x\"}")))
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);
    let post = up.seen().pop().unwrap();
    assert_eq!(post.version, Version::HTTP_2);
    assert_eq!(post.body, "{\"name\":\"x\"}");
    assert_eq!(post.headers["content-type"], "application/json");
}

#[tokio::test]
async fn a_cold_burst_to_an_http2_upstream_settles_on_one_connection() {
    let up = TlsUpstream::start(&[b"h2", b"http/1.1"]).await;
    let gw = gateway(
        &format!("https://127.0.0.1:{}", up.addr.port()),
        Some(&up.ca_path),
    )
    .await;
    let key = gw.provision("acme").await;
    // 16 client connections at once, before any upstream connection exists:
    // each may open one, as the protocol is known only after the handshake.
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..16 {
        let client = gw.client();
        let req = gw
            .proxy_request(http::Method::GET, &format!("/acme/v1/{i}"))
            .header("x-api-key", &key)
            .body(Full::new(Bytes::new()))
            .unwrap();
        burst.spawn(async move { support::send_with(&client, req).await });
    }
    while let Some(r) = burst.join_next().await {
        r.unwrap().assert_status(StatusCode::OK);
    }
    // The extra ones are closed; the client connections stay open, each
    // still holding what it was given.
    let settled = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while up.open() > 1 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "{} upstream connections still open after a burst ({} made)",
        up.open(),
        up.connections()
    );
    // And later requests share the one that is left.
    let before = up.connections();
    for i in 0..8 {
        gw.get_with(&format!("/acme/v2/{i}"), &key)
            .await
            .assert_status(StatusCode::OK);
    }
    assert_eq!(up.connections(), before);
    assert_eq!(up.open(), 1);
}

#[tokio::test]
async fn the_urls_host_is_sent_as_sni_and_verified() {
    let up = TlsUpstream::start(&[b"http/1.1"]).await;
    // `localhost` resolves as the system resolves it (127.0.0.1, and maybe
    // ::1, which refuses: the next address is tried).
    let gw = gateway(
        &format!("https://localhost:{}", up.addr.port()),
        Some(&up.ca_path),
    )
    .await;
    let key = gw.provision("acme").await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_status(StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen[0].sni.as_deref(), Some("localhost"));
    assert_eq!(
        seen[0].headers["host"],
        format!("localhost:{}", up.addr.port())
    );
}

#[tokio::test]
async fn an_upstream_whose_certificate_is_not_trusted_answers_502() {
    let up = TlsUpstream::start(&[b"h2", b"http/1.1"]).await;
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    // The public roots do not know a self-signed certificate ...
    let gw = gateway(&url, None).await;
    let key = gw.provision("acme").await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE");
    // ... nor does another CA.
    let other = TlsUpstream::start(&[b"http/1.1"]).await;
    let gw = gateway(&url, Some(&other.ca_path)).await;
    let key = gw.provision("acme").await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn preserve_host_gives_an_http2_upstream_the_clients_host_as_authority() {
    let up = TlsUpstream::start(&[b"h2"]).await;
    let gw = Gateway::builder()
        .upstream_toml(&format!("\"https://127.0.0.1:{}\"", up.addr.port()))
        .proxy_keys(&format!(
            "upstream_ca_path = {:?}\npreserve_host = true",
            up.ca_path.display().to_string()
        ))
        .start()
        .await;
    let key = gw.provision("acme").await;
    let req = gw
        .proxy_request(http::Method::GET, "/acme/v1")
        .header("host", "client.example")
        .header("x-api-key", &key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    gw.send(req).await.assert_status(StatusCode::OK);
    let seen = up.seen();
    assert_eq!(seen[0].version, Version::HTTP_2);
    assert_eq!(
        seen[0].uri.authority().map(|a| a.as_str()),
        Some("client.example")
    );
    // The certificate is still verified for the upstream's own name.
    assert_eq!(seen[0].sni, None, "no SNI for an IP address");
}

#[tokio::test]
async fn an_upstream_that_never_finishes_the_tls_handshake_answers_502_after_the_connect_timeout() {
    // Accepts connections and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let gw = Gateway::builder()
        .upstream_toml(&format!("\"https://127.0.0.1:{}\"", addr.port()))
        .proxy_keys("connect_timeout_ms = 300")
        .start()
        .await;
    let key = gw.provision("acme").await;
    gw.get_with("/acme/v1", &key)
        .await
        .assert_refused(StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE");
    holder.abort();
}

#[test]
fn a_bad_ca_file_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("ca.pem");
    std::fs::write(
        &junk,
        "-----BEGIN CERTIFICATE-----\nbm90IGRlcg==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for path in [junk, dir.path().join("missing.pem")] {
        let toml = format!(
            "[proxy]\nupstream = \"https://127.0.0.1:9443\"\nupstream_ca_path = {:?}\n\
             [admin]\nprovider_token_sha256 = \"{}\"\n",
            path.display().to_string(),
            TokenDigest::of(PROVIDER).to_hex()
        );
        let e = Config::from_toml(&toml).unwrap_err().to_string();
        assert!(e.starts_with("config: proxy.upstream_ca_path: "), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}

#[test]
fn a_bad_ca_file_stops_keygate_with_exit_2_and_one_line_before_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    // The listen address is taken: had keygate tried to bind, it would say so
    // and exit 1 instead.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{addr}\"\nupstream = \"https://127.0.0.1:9\"\n\
             upstream_ca_path = {:?}\n\
             [admin]\nlisten = \"{addr}\"\nprovider_token_sha256 = \"{}\"\n\
             [store]\npath = {:?}\n",
            dir.path().join("missing-ca.pem").display().to_string(),
            TokenDigest::of(PROVIDER).to_hex(),
            dir.path().join("store.redb").display().to_string(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("config: proxy.upstream_ca_path: cannot read "),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!dir.path().join("store.redb").exists());
}
