//! The upstream of `benches/compare/run.sh`: a minimal HTTP/1.1 server on one
//! thread that answers every request `200 {"ok":true}`, keep-alive. Given a
//! body size (the second argument, in bytes; the harness's `BODY_BYTES`), it
//! answers a JSON body of exactly that many bytes instead, padded with `"pad"`.
//!
//! A request carrying `x-echo: 1` also gets, as response headers, what the
//! upstream received: `x-echo-path` (path and query), `x-echo-org` (the
//! `x-org-id` header, or `-`) and `x-echo-key` (`present` or `absent`: whether an
//! `x-api-key` header arrived). The harness uses it to check that every proxy
//! under test does the same job; the measured requests never send it.
//!
//! ```sh
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000 16384
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const BODY: &[u8] = b"{\"ok\":true}\n";
/// A padded body: this, `n - 21` of `x`, then [`PAD_TAIL`].
const PAD_HEAD: &[u8] = b"{\"ok\":true,\"pad\":\"";
const PAD_TAIL: &[u8] = b"\"}\n";

fn main() -> std::io::Result<()> {
    let (addr, body) = args().unwrap_or_else(|e| {
        eprintln!("bench_upstream: {e}\nusage: bench_upstream [ADDR] [BODY_BYTES]");
        std::process::exit(2)
    });
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr, body))
}

/// The address (default 127.0.0.1:18000) and the answer's body.
fn args() -> Result<(SocketAddr, Bytes), String> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18000".to_owned())
        .parse()
        .map_err(|e| format!("address: {e}"))?;
    let body = match args.next() {
        None => Bytes::from_static(BODY),
        Some(n) => {
            let n = n.parse().map_err(|e| format!("body size {n:?}: {e}"))?;
            padded(n).ok_or_else(|| {
                let least = PAD_HEAD.len() + PAD_TAIL.len();
                format!("body size {n}: {} or at least {least} bytes", BODY.len())
            })?
        }
    };
    Ok((addr, body))
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

async fn serve(addr: SocketAddr, body: Bytes) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    eprintln!("bench_upstream listening on {}", listener.local_addr()?);
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
        let body = body.clone();
        tokio::spawn(async move {
            let answer = hyper::service::service_fn(move |req| answer(req, body.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
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
