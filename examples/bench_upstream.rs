//! The upstream of `benches/compare/run.sh`: a minimal HTTP/1.1 server on one
//! thread that answers every request `200 {"ok":true}`, keep-alive. Given a
//! body size (the second argument, in bytes; the harness's `BODY_BYTES`), it
//! answers a JSON body of exactly that many bytes instead, padded with `"pad"`.
//!
//! Every connection accepted (every TLS handshake completed) writes one line
//! to stderr beginning `bench_upstream: new connection`; the harness counts
//! them to know when a proxy's upstream connections are all open.
//!
//! A request carrying `x-echo: 1` also gets, as response headers, what the
//! upstream received: `x-echo-path` (path and query), `x-echo-org` (the
//! `x-org-id` header, or `-`) and `x-echo-key` (`present` or `absent`: whether an
//! `x-api-key` header arrived). The harness uses it to check that every proxy
//! under test does the same job; the measured requests never send it.
//!
//! With `--tls CERT KEY` (PEM files: the certificate chain, leaf first, and
//! its key) it serves HTTPS instead (rustls, the harness's `UPSTREAM_TLS=1`),
//! offering by ALPN the protocols of `--alpn` (default `http/1.1`; `h2,http/1.1`
//! also serves HTTP/2 to a client that picks it).
//!
//! ```sh
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000 16384
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000 12 --tls cert.pem key.pem
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const BODY: &[u8] = b"{\"ok\":true}\n";
/// A padded body: this, `n - 21` of `x`, then [`PAD_TAIL`].
const PAD_HEAD: &[u8] = b"{\"ok\":true,\"pad\":\"";
const PAD_TAIL: &[u8] = b"\"}\n";
const USAGE: &str =
    "usage: bench_upstream [ADDR] [BODY_BYTES] [--tls CERT_PEM KEY_PEM] [--alpn h2,http/1.1]";

/// What the command line asks for.
struct Args {
    addr: SocketAddr,
    body: Bytes,
    /// The TLS acceptor when serving HTTPS.
    tls: Option<TlsAcceptor>,
}

fn main() -> std::io::Result<()> {
    let args = args().unwrap_or_else(|e| {
        eprintln!("bench_upstream: {e}\n{USAGE}");
        std::process::exit(2)
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

/// The address (default 127.0.0.1:18000), the answer's body, and TLS.
fn args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut tls_files = None;
    let mut alpn = "http/1.1".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tls" => {
                let cert = it.next().ok_or("--tls needs CERT_PEM KEY_PEM")?;
                let key = it.next().ok_or("--tls needs CERT_PEM KEY_PEM")?;
                tls_files = Some((cert, key));
            }
            "--alpn" => alpn = it.next().ok_or("--alpn needs a list")?,
            _ => positional.push(a),
        }
    }
    let mut positional = positional.into_iter();
    let addr = positional
        .next()
        .unwrap_or_else(|| "127.0.0.1:18000".to_owned())
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let body = match positional.next() {
        None => Bytes::from_static(BODY),
        Some(n) => {
            let n = n.parse().map_err(|e| format!("body size {n:?}: {e}"))?;
            padded(n).ok_or_else(|| {
                let least = PAD_HEAD.len() + PAD_TAIL.len();
                format!("body size {n}: {} or at least {least} bytes", BODY.len())
            })?
        }
    };
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let tls = match tls_files {
        None => None,
        Some((cert, key)) => Some(acceptor(Path::new(&cert), Path::new(&key), &alpn)?),
    };
    Ok(Args { addr, body, tls })
}

/// A rustls acceptor for the PEM chain and key, offering `alpn` (a comma
/// separated list, in order of preference).
fn acceptor(cert: &Path, key: &Path, alpn: &str) -> Result<TlsAcceptor, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = alpn
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.as_bytes().to_vec())
        .collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `{"ok":true,"pad":"xx...x"}` and a newline, exactly `n` bytes; `n` of 12
/// is the plain answer; 13 to 20 cannot be padded.
fn padded(n: usize) -> Option<Bytes> {
    if n == BODY.len() {
        return Some(Bytes::from_static(BODY));
    }
    let pad = n.checked_sub(PAD_HEAD.len() + PAD_TAIL.len())?;
    let mut body = Vec::with_capacity(n);
    body.extend_from_slice(PAD_HEAD);
    body.resize(PAD_HEAD.len() + pad, b'x');
    body.extend_from_slice(PAD_TAIL);
    Some(Bytes::from(body))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = TcpListener::bind(args.addr).await?;
    let scheme = if args.tls.is_some() { "https" } else { "http" };
    eprintln!(
        "bench_upstream listening on {scheme}://{}",
        listener.local_addr()?
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bench_upstream: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = args.body.clone();
        let tls = args.tls.clone();
        tokio::spawn(async move {
            match tls {
                None => {
                    // One line per connection: the harness counts them, so
                    // that it measures after the proxy's pool is full.
                    eprintln!("bench_upstream: new connection, plain HTTP");
                    connection(stream, false, body).await;
                }
                Some(tls) => match tls.accept(stream).await {
                    Ok(stream) => {
                        let tls = stream.get_ref().1;
                        let h2 = tls.alpn_protocol() == Some(b"h2");
                        // One line per handshake: how many the proxy made
                        // (the harness counts them), and what it negotiated.
                        eprintln!(
                            "bench_upstream: new connection, TLS {:?} {:?} alpn={}",
                            tls.protocol_version(),
                            tls.negotiated_cipher_suite().map(|s| s.suite()),
                            tls.alpn_protocol()
                                .map_or("-".into(), String::from_utf8_lossy),
                        );
                        connection(stream, h2, body).await;
                    }
                    Err(e) => eprintln!("bench_upstream: TLS handshake: {e}"),
                },
            }
        });
    }
}

/// Serves one connection, HTTP/1.1 with keep-alive or (when ALPN chose it)
/// HTTP/2, until the client closes it.
async fn connection<S>(stream: S, h2: bool, body: Bytes)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answer = hyper::service::service_fn(move |req| answer(req, body.clone()));
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), answer)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), answer)
            .await
    };
}

async fn answer(req: Request<Incoming>, body: Bytes) -> Result<Response<Full<Bytes>>, Infallible> {
    // Request bodies are not read: the benchmark sends none, and hyper drains
    // small ones before reusing the connection.
    let mut res = Response::new(Full::new(body));
    let h = res.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if req.headers().get("x-echo").is_some_and(|v| v == "1") {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        if let Ok(v) = HeaderValue::from_str(path) {
            h.insert("x-echo-path", v);
        }
        let org = req
            .headers()
            .get("x-org-id")
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("-"));
        h.insert("x-echo-org", org);
        let key = if req.headers().contains_key("x-api-key") {
            "present"
        } else {
            "absent"
        };
        h.insert("x-echo-key", HeaderValue::from_static(key));
    }
    Ok(res)
}
