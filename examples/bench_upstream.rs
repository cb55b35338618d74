//! The upstream of `benches/compare/run.sh`: a minimal HTTP/1.1 server on one
//! thread that answers every request `200 {"ok":true}`, keep-alive.
//!
//! A request carrying `x-echo: 1` also gets, as response headers, what the
//! upstream received: `x-echo-path` (path and query), `x-echo-org` (the
//! `x-org-id` header, or `-`) and `x-echo-key` (`present` or `absent`: whether an
//! `x-api-key` header arrived). The harness uses it to check that every proxy
//! under test does the same job; the measured requests never send it.
//!
//! ```sh
//! cargo run --release --example bench_upstream -- 127.0.0.1:18000
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

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18000".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(addr))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
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
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Request bodies are not read: the benchmark sends none, and hyper drains
    // small ones before reusing the connection.
    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
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
