//! An open-loop HTTP/1.1 load generator for `benches/compare/run.sh`: requests
//! leave on a fixed schedule whatever the server does, and each one's latency is
//! measured from the moment the schedule meant to send it (so a stalled server
//! is charged for every request it held up: no coordinated omission).
//!
//! Requests are spread over the orgs of an org list (`org<TAB>key` lines), as
//! `GET /{org}/v1/ping` with the org's key (or a wrong key) in `x-api-key`.
//!
//! ```sh
//! cargo run --release --example openloop -- --target 127.0.0.1:18080 \
//!     --orgs orgs.tsv --count 1000 --rate 20000 --duration 20 --warmup 2
//! ```
//!
//! Prints one line of `key=value` pairs: counts, status classes, latency
//! percentiles in microseconds (`p50_us`, `p90_us`, `p99_us`, `p999_us`,
//! `max_us`) and how late the pacer itself sent (`lag_p50_us`, `lag_p99_us`).
//!
//! Design: a pacer thread sleeps until each request's intended time and hands
//! it to a single-threaded runtime, where `--connections` keep-alive connections
//! take requests from one queue in turn. When every connection is busy,
//! requests wait, and the wait counts in their latency. The generator shares a
//! core with the upstream, so it is kept cheap: requests are written as bytes
//! and answers read with a minimal HTTP/1.1 parser (status line, then
//! `content-length` or chunked body), one task per connection.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

const USAGE: &str = "usage: openloop --target HOST:PORT --orgs FILE [--count N] \
[--key good|bad] [--rate PER_SEC] [--duration SECS] [--warmup SECS] [--connections N] \
[--tick-us MICROS] [--label TEXT]";

struct Args {
    target: SocketAddr,
    orgs: PathBuf,
    count: usize,
    bad_key: bool,
    rate: f64,
    duration: f64,
    warmup: f64,
    connections: usize,
    tick: Duration,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        target: "127.0.0.1:18080".parse().map_err(|e| format!("{e}"))?,
        orgs: PathBuf::new(),
        count: usize::MAX,
        bad_key: false,
        rate: 1000.0,
        duration: 10.0,
        warmup: 1.0,
        connections: 32,
        tick: Duration::from_micros(100),
        label: "-".to_owned(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--target" => a.target = value()?.parse().map_err(|e| bad(&e))?,
            "--orgs" => a.orgs = PathBuf::from(value()?),
            "--count" => a.count = value()?.parse().map_err(|e| bad(&e))?,
            "--key" => a.bad_key = value()? == "bad",
            "--rate" => a.rate = value()?.parse().map_err(|e| bad(&e))?,
            "--duration" => a.duration = value()?.parse().map_err(|e| bad(&e))?,
            "--warmup" => a.warmup = value()?.parse().map_err(|e| bad(&e))?,
            "--connections" => a.connections = value()?.parse().map_err(|e| bad(&e))?,
            "--tick-us" => {
                a.tick = Duration::from_micros(value()?.parse().map_err(|e| bad(&e))?);
            }
            "--label" => a.label = value()?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.orgs.as_os_str().is_empty() {
        return Err(format!("--orgs is required\n{USAGE}"));
    }
    if !(a.rate > 0.0 && a.duration > 0.0 && a.warmup >= 0.0 && a.connections > 0) {
        return Err("rate, duration and connections must be positive".to_owned());
    }
    // Every scheduled request's latency is kept: bound the count, so a wrong
    // rate is an error and not an attempt to allocate terabytes.
    if (a.duration + a.warmup) * a.rate > 1e9 {
        return Err(format!(
            "{} requests scheduled ({} req/s for {} s): at most 1,000,000,000",
            (a.duration + a.warmup) * a.rate,
            a.rate,
            a.duration + a.warmup
        ));
    }
    Ok(a)
}

/// One org's request line and key.
struct Target {
    path: String,
    key: String,
}

fn load_targets(a: &Args) -> Result<Vec<Target>, String> {
    let text =
        std::fs::read_to_string(&a.orgs).map_err(|e| format!("{}: {e}", a.orgs.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if out.len() == a.count {
            break;
        }
        let (org, key) = line
            .split_once('\t')
            .ok_or_else(|| format!("{}: a line without a tab", a.orgs.display()))?;
        let key = if a.bad_key {
            "WrongKey0000"
        } else {
            key.trim()
        };
        if !org.bytes().all(|b| b.is_ascii_graphic())
            || !key.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(format!("{}: a malformed line", a.orgs.display()));
        }
        out.push(Target {
            path: format!("/{org}/v1/ping"),
            key: key.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(format!("{}: no orgs", a.orgs.display()));
    }
    Ok(out)
}

/// A request the schedule wants sent.
struct Job {
    seq: u64,
    intended: Instant,
}

/// What one connection saw.
#[derive(Default)]
struct Seen {
    latencies_ns: Vec<u64>,
    by_class: [u64; 6],
    errors: u64,
    reconnects: u64,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("openloop: {e}");
            return ExitCode::from(2);
        }
    };
    let targets = match load_targets(&args) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("openloop: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("openloop: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(&args, targets)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openloop: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// What the connections share (all on one thread).
struct Shared {
    queue: RefCell<VecDeque<Job>>,
    more: Notify,
    done: Cell<bool>,
    targets: Arc<Vec<Target>>,
    host: String,
    addr: SocketAddr,
    warm: u64,
    deadline: tokio::time::Instant,
}

async fn run(a: &Args, targets: Arc<Vec<Target>>) -> Result<String, String> {
    let mut streams = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        streams.push(
            connect(a.target)
                .await
                .map_err(|e| format!("connecting to {}: {e}", a.target))?,
        );
    }
    let warm = (a.warmup * a.rate) as u64;
    let total = warm + (a.duration * a.rate) as u64;
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(a.warmup + a.duration);
    // Requests still unanswered this long after the schedule ends count as
    // unfinished.
    let deadline = tokio::time::Instant::from_std(end + Duration::from_secs(5));
    let shared = Rc::new(Shared {
        queue: RefCell::new(VecDeque::new()),
        more: Notify::new(),
        done: Cell::new(false),
        targets: Arc::clone(&targets),
        host: a.target.to_string(),
        addr: a.target,
        warm,
        deadline,
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let (rate, tick) = (a.rate, a.tick);
    let pacer = std::thread::spawn(move || pace(&tx, start, rate, total, tick));
    let feeder = {
        let shared = Rc::clone(&shared);
        tokio::task::spawn_local(async move {
            while let Some(job) = rx.recv().await {
                shared.queue.borrow_mut().push_back(job);
                shared.more.notify_one();
            }
            shared.done.set(true);
            shared.more.notify_waiters();
        })
    };
    let mut workers = Vec::with_capacity(streams.len());
    for stream in streams {
        workers.push(tokio::task::spawn_local(work(stream, Rc::clone(&shared))));
    }
    let mut seen = Seen::default();
    for w in workers {
        let s = w.await.map_err(|e| format!("worker: {e}"))?;
        seen.latencies_ns.extend_from_slice(&s.latencies_ns);
        for (sum, n) in seen.by_class.iter_mut().zip(s.by_class) {
            *sum += n;
        }
        seen.errors += s.errors;
        seen.reconnects += s.reconnects;
    }
    feeder.abort();
    let mut lags = pacer.join().map_err(|_| "the pacer panicked".to_owned())?;
    let measured = total - warm;
    let completed = seen.latencies_ns.len() as u64;
    let unfinished = measured.saturating_sub(completed + seen.errors);
    seen.latencies_ns.sort_unstable();
    lags.sort_unstable();
    let us = |v: &[u64], q: f64| quantile(v, q) as f64 / 1000.0;
    let l = &seen.latencies_ns;
    Ok(format!(
        "openloop label={label} target={target} orgs={orgs} rate={rate} duration={duration} \
         scheduled={measured} completed={completed} errors={errors} unfinished={unfinished} \
         reconnects={reconnects} s1xx={c1} s2xx={c2} s3xx={c3} s4xx={c4} s5xx={c5} \
         p50_us={p50:.1} p90_us={p90:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1} \
         lag_p50_us={lag50:.1} lag_p99_us={lag99:.1}",
        label = a.label,
        target = a.target,
        orgs = targets.len(),
        rate = a.rate,
        duration = a.duration,
        errors = seen.errors,
        reconnects = seen.reconnects,
        c1 = seen.by_class[1],
        c2 = seen.by_class[2],
        c3 = seen.by_class[3],
        c4 = seen.by_class[4],
        c5 = seen.by_class[5],
        p50 = us(l, 0.50),
        p90 = us(l, 0.90),
        p99 = us(l, 0.99),
        p999 = us(l, 0.999),
        max = us(l, 1.0),
        lag50 = us(&lags, 0.50),
        lag99 = us(&lags, 0.99),
    ))
}

/// The value at quantile `q` of sorted `v` (nearest rank), 0 when empty.
fn quantile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The schedule: request `seq` is meant to leave at `start + seq / rate`.
/// The pacer wakes at most once per `tick` and hands over every request then
/// due at once (waking the runtime once), which keeps its own cost, on the
/// core it shares with the upstream, low; the latency of each request still
/// counts from its own intended time. Returns how late each was handed over,
/// in nanoseconds.
fn pace(
    tx: &mpsc::UnboundedSender<Job>,
    start: Instant,
    rate: f64,
    total: u64,
    tick: Duration,
) -> Vec<u64> {
    // Best effort: a 1 ns timer slack instead of the default 50 us, so the
    // pacer wakes when asked (Linux; ignored elsewhere).
    let _ = std::fs::write("/proc/thread-self/timerslack_ns", "1");
    let ns_per = 1e9 / rate;
    let at = |seq: u64| start + Duration::from_nanos((seq as f64 * ns_per) as u64);
    let mut lags = Vec::with_capacity(total as usize);
    let mut seq = 0;
    while seq < total {
        let now = Instant::now();
        let next = at(seq);
        if next > now {
            std::thread::sleep((next - now).max(tick));
            continue;
        }
        let now = Instant::now();
        while seq < total && at(seq) <= now {
            let intended = at(seq);
            lags.push(now.saturating_duration_since(intended).as_nanos() as u64);
            if tx.send(Job { seq, intended }).is_err() {
                return lags;
            }
            seq += 1;
        }
    }
    lags
}

fn pick(seq: u64, n: usize) -> usize {
    // splitmix64: spreads consecutive requests over all orgs.
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % n as u64) as usize
}

/// The next job, or `None` once the schedule is over and the queue empty.
async fn next_job(shared: &Shared) -> Option<Job> {
    loop {
        if let Some(job) = shared.queue.borrow_mut().pop_front() {
            return Some(job);
        }
        if shared.done.get() {
            return None;
        }
        tokio::select! {
            () = shared.more.notified() => {}
            () = tokio::time::sleep_until(shared.deadline) => return None,
        }
    }
}

/// One keep-alive connection: takes jobs until there are none.
async fn work(stream: TcpStream, shared: Rc<Shared>) -> Seen {
    let mut seen = Seen::default();
    let mut stream = Some(stream);
    let mut req = Vec::with_capacity(256);
    let mut buf = vec![0u8; 16 * 1024];
    while let Some(job) = next_job(&shared).await {
        let measured = job.seq >= shared.warm;
        let t = &shared.targets[pick(job.seq, shared.targets.len())];
        let mut s = match stream.take() {
            Some(s) => s,
            None => {
                seen.reconnects += 1;
                match tokio::time::timeout_at(shared.deadline, connect(shared.addr)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        seen.errors += u64::from(measured);
                        continue;
                    }
                }
            }
        };
        req.clear();
        let _ = write!(
            req,
            "GET {} HTTP/1.1\r\nHost: {}\r\nx-api-key: {}\r\n\r\n",
            t.path, shared.host, t.key
        );
        match tokio::time::timeout_at(shared.deadline, exchange(&mut s, &req, &mut buf)).await {
            Ok(Ok((status, keep))) => {
                if measured {
                    seen.latencies_ns
                        .push(job.intended.elapsed().as_nanos() as u64);
                    seen.by_class[usize::from(status / 100).min(5)] += 1;
                }
                if keep {
                    stream = Some(s);
                }
            }
            Ok(Err(_)) => seen.errors += u64::from(measured),
            Err(_) => break,
        }
    }
    seen
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` (lowercase) in a response head.
fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name)
            .then(|| line[colon + 1..].trim_ascii())
    })
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Writes one request and reads its answer: the status, and whether the
/// connection may be used again.
async fn exchange(
    s: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, bool)> {
    s.write_all(req).await?;
    let mut filled = 0;
    let head_end = loop {
        if filled == buf.len() {
            return Err(bad("response head too long"));
        }
        let n = s.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(i) = find(&buf[..filled], b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = &buf[..head_end];
    let status = head
        .get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok())
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| head.starts_with(b"HTTP/1."))
        .ok_or_else(|| bad("not an HTTP/1.x status line"))?;
    let keep = !header(head, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
    if let Some(len) = header(head, b"content-length") {
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| bad("bad content-length"))?;
        let need = head_end + len;
        if buf.len() < need {
            buf.resize(need, 0);
        }
        while filled < need {
            let n = s.read(&mut buf[filled..need]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        Ok((status, keep))
    } else if header(head, b"transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked"))
    {
        // Small bodies only: read until the last chunk.
        let body_start = head_end;
        while !buf[body_start..filled].ends_with(b"0\r\n\r\n") {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = s.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            filled += n;
        }
        Ok((status, keep))
    } else if status == 204 || status == 304 || status / 100 == 1 {
        Ok((status, keep))
    } else {
        // Delimited by the end of the connection: read it and drop it.
        loop {
            if filled == buf.len() {
                filled = head_end;
            }
            if s.read(&mut buf[filled..]).await? == 0 {
                return Ok((status, false));
            }
        }
    }
}
