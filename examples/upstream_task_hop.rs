//! What the upstream connection's own task costs a proxied exchange: a
//! planning figure for issue 17, not a benchmark of keygate.
//!
//! keygate's upstream client (`src/proxy/client.rs`, `handshake_h1`) drives
//! every HTTP/1 upstream connection in a task of its own
//! (`tokio::spawn(connection)`), so each exchange crosses tasks: the request
//! goes to the connection's task through hyper's dispatch channel, the
//! response head comes back through a oneshot, and the body through hyper's
//! body channel. nginx and Pingora do the whole exchange in one event loop.
//! This program measures the difference in one process, on one current-thread
//! tokio runtime (what a keygate worker is), without touching keygate:
//!
//! 1. a minimal upstream HTTP/1.1 server on 127.0.0.1:0 (hyper, keep-alive,
//!    `200` with the 12-byte body `{"ok":true}\n`), its own tasks in
//!    every mode;
//! 2. ONE client connection to it (`hyper::client::conn::http1::handshake`),
//!    over which N sequential `GET /` exchanges run, each reading the body to
//!    its end, in one task (as a keygate downstream connection's task would),
//!    in one of four modes:
//!    - `spawned`: the `Connection` future runs in a task of its own
//!      (`tokio::spawn`), what keygate does today;
//!    - `inline`: the `Connection` future is not spawned; the exchange's task
//!      polls it before every step (readiness, response head, each body
//!      frame), until the body ends. No task for the client connection;
//!    - `inline_lazy`: as `inline`, but each step is polled first and the
//!      connection only when the step would wait (then the step again);
//!    - `inline_quiet`: as `inline_lazy`, the steps polled with a no-op waker
//!      (only the connection's polls, all in this task, make them progress,
//!      so they need no wake of their own).
//!
//!    All modes run the same exchange code ([`exchange`] through [`Driver`]);
//!    they differ only in who polls the connection and in what order.
//! 3. It checks every answer (status `200`, the exact body) and exits with an
//!    error, printing no figure, on the first that is wrong; otherwise it
//!    prints the mode, the requests done and the wall time.
//!
//! Instructions per request, with start-up cancelled by two runs of different
//! N (N2 - N1 requests' worth of instructions):
//!
//! ```sh
//! cargo build --release --example upstream_task_hop
//! for mode in spawned inline inline_lazy inline_quiet; do for n in 10000 20000; do
//!   valgrind --tool=callgrind --callgrind-out-file=cg.$mode.$n \
//!     target/release/examples/upstream_task_hop $mode $n
//! done; done
//! # Ir per request = (Ir(cg.MODE.20000) - Ir(cg.MODE.10000)) / 10000
//! callgrind_annotate --inclusive=yes cg.inline.20000 | head -60
//! ```
//!
//! Natively: `target/release/examples/upstream_task_hop spawned 20000`.
//! BENCHMARKS.md ("Planning figure: the upstream connection's own task")
//! has the figures.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The upstream's answer body, checked byte for byte on every response.
const BODY: &[u8] = b"{\"ok\":true}\n";
/// How many exchanges without an N on the command line.
const DEFAULT_N: u64 = 20_000;
const USAGE: &str = "usage: upstream_task_hop spawned|inline|inline_lazy|inline_quiet [N]";

type Error = Box<dyn std::error::Error + Send + Sync>;
/// The client connection, as every mode holds it.
type ClientConn = Connection<TokioIo<TcpStream>, Empty<Bytes>>;

/// Who drives the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Its own task, as keygate's upstream client does.
    Spawned,
    /// The exchange's task, polling it before every step of the exchange.
    Inline,
    /// The exchange's task, polling it only when a step of the exchange
    /// would wait (then the step again).
    InlineLazy,
    /// As `InlineLazy`, the steps polled with a no-op waker: only the
    /// connection's own polls make them progress, and this task re-polls
    /// them after each, so the step needs no wake of its own.
    InlineQuiet,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("upstream_task_hop: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("spawned") => Mode::Spawned,
        Some("inline") => Mode::Inline,
        Some("inline_lazy") => Mode::InlineLazy,
        Some("inline_quiet") => Mode::InlineQuiet,
        _ => return Err(USAGE.into()),
    };
    let n = match args.next() {
        Some(n) => n.parse::<u64>().map_err(|e| format!("N: {e}; {USAGE}"))?,
        None => DEFAULT_N,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (done, elapsed) = runtime.block_on(async move {
        let addr = upstream().await?;
        // The exchanges run in a task, as a keygate downstream connection's
        // do; the runtime's main future only waits for it.
        tokio::spawn(client(addr, mode, n)).await?
    })?;
    let ns = elapsed.as_nanos() as f64 / done as f64;
    println!(
        "mode={} requests={done} wall_ms={:.1} ns_per_request={ns:.0}",
        match mode {
            Mode::Spawned => "spawned",
            Mode::Inline => "inline",
            Mode::InlineLazy => "inline_lazy",
            Mode::InlineQuiet => "inline_quiet",
        },
        elapsed.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Starts the upstream on 127.0.0.1:0: one task accepting, one per
/// connection, each answering every request `200` with [`BODY`].
async fn upstream() -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    eprintln!("upstream_task_hop: upstream connection: {e}");
                }
            });
        }
    });
    Ok(addr)
}

/// Opens one connection to `addr` and runs `n` checked exchanges over it,
/// returning how many were done and how long they took.
async fn client(addr: SocketAddr, mode: Mode, n: u64) -> Result<(u64, std::time::Duration), Error> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
    let host = addr.to_string();
    // The connection, where the inline modes keep it while they poll it.
    let mut slot;
    let mut driver = match mode {
        Mode::Spawned => {
            // What `handshake_h1` in src/proxy/client.rs does.
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    eprintln!("upstream_task_hop: client connection: {e}");
                }
            });
            Driver {
                conn: None,
                lazy: false,
                quiet: false,
            }
        }
        Mode::Inline | Mode::InlineLazy | Mode::InlineQuiet => {
            slot = conn;
            Driver {
                conn: Some(Pin::new(&mut slot)),
                lazy: mode != Mode::Inline,
                quiet: mode == Mode::InlineQuiet,
            }
        }
    };
    let start = Instant::now();
    for i in 0..n {
        let req = Request::get("/")
            .header(header::HOST, host.as_str())
            .body(Empty::new())?;
        let (status, body) = exchange(&mut sender, &mut driver, req).await?;
        if status != StatusCode::OK || body != BODY {
            let want = Bytes::from_static(BODY);
            return Err(format!("exchange {i}: {status} {body:?}, not 200 {want:?}").into());
        }
    }
    Ok((n, start.elapsed()))
}

/// One exchange: waits until the connection takes a request, sends `req`,
/// reads the response head and its body to the end, every step through
/// `driver` (which polls the connection beside it in the inline modes).
async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    driver: &mut Driver<'_>,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, BytesMut), Error> {
    poll_fn(|cx| driver.step(cx, |cx| sender.poll_ready(cx).map_err(Error::from))).await?;
    let mut response = pin!(sender.send_request(req));
    let response =
        poll_fn(|cx| driver.step(cx, |cx| response.as_mut().poll(cx).map_err(Error::from))).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut got = BytesMut::with_capacity(BODY.len());
    poll_fn(|cx| loop {
        let frame = driver.step(cx, |cx| {
            Pin::new(&mut body)
                .poll_frame(cx)
                .map(|frame| frame.transpose().map_err(Error::from))
        });
        match frame {
            Poll::Ready(Ok(Some(frame))) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Poll::Ready(Ok(None)) => return Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await?;
    Ok((status, got))
}

/// How an exchange's steps are polled: alone (the connection has its own
/// task), or with the client connection polled by the same task. Every waker
/// an inline step registers (the dispatch channel's, the oneshot's, the body
/// channel's, the socket's) is this task's, so whatever either side waits
/// for re-polls this task.
struct Driver<'c> {
    /// The connection, if this task drives it.
    conn: Option<Pin<&'c mut ClientConn>>,
    /// Poll the step first and the connection only when the step would wait
    /// (then the step again), instead of the connection before every step.
    lazy: bool,
    /// Poll the step with a no-op waker (only with `lazy`).
    quiet: bool,
}

impl Driver<'_> {
    /// Polls `step` once, with the connection as the mode says.
    fn step<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut step: impl FnMut(&mut Context<'_>) -> Poll<Result<T, Error>>,
    ) -> Poll<Result<T, Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return step(cx);
        };
        let mut quiet = Context::from_waker(Waker::noop());
        if self.lazy {
            let step_cx = if self.quiet { &mut quiet } else { &mut *cx };
            if let Poll::Ready(done) = step(step_cx) {
                return Poll::Ready(done);
            }
        }
        // The connection future ends only when the connection does, which
        // mid-exchange is an error.
        match conn.as_mut().poll(cx) {
            Poll::Pending => step(if self.quiet { &mut quiet } else { cx }),
            Poll::Ready(Ok(())) => Poll::Ready(Err("the client connection closed".into())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::from(e))),
        }
    }
}
