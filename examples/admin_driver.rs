//! An admin-API driver for `benches/compare/run.sh`'s open loop: one call
//! every `--period-ms` over one keep-alive connection, until killed or
//! `--duration` ends, so that what a run measures beside the proxy's load is
//! keygate's own work for the call, not the driver's.
//!
//! The harness's first driver started five processes per call (`taskset`,
//! `curl`, `date`, `awk`, `sleep`) on the core that the load generator and
//! the upstream already saturate, and a control run showed that cost alone
//! raised the open loop's p99 as much as the key changes did (BENCHMARKS.md,
//! "Quiet rerun"). This one starts once, sleeps to an absolute schedule and
//! writes each request as bytes.
//!
//! ```sh
//! cargo run --release --example admin_driver -- --admin 127.0.0.1:18081 \
//!     --token "$TOKEN" --period-ms 100 --call regenerate --org churn
//! ```
//!
//! `--call regenerate` creates `--org` if it is missing, then calls
//! `POST /v1/orgs/{org}/key/regenerate`; `--call health` calls
//! `GET /healthz`, which changes nothing (the control). One line per call on
//! standard output, as the curl driver wrote them: seconds since the epoch,
//! the status, and seconds taken, tab-separated (status 0 for a call that got
//! no answer; the connection is then opened again).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: admin_driver --admin HOST:PORT --token TOKEN [--period-ms N] \
[--call regenerate|health] [--org ORG] [--duration SECS]";

struct Args {
    admin: SocketAddr,
    token: String,
    period: Duration,
    health: bool,
    org: String,
    duration: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut admin = None;
    let mut token = None;
    let mut period = Duration::from_millis(100);
    let mut health = false;
    let mut org = "churn".to_owned();
    let mut duration = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--admin" => admin = Some(value()?.parse().map_err(|e| format!("--admin: {e}"))?),
            "--token" => token = Some(value()?),
            "--period-ms" => {
                let ms: u64 = value()?.parse().map_err(|e| format!("--period-ms: {e}"))?;
                if ms == 0 {
                    return Err("--period-ms must be at least 1".into());
                }
                period = Duration::from_millis(ms);
            }
            "--call" => match value()?.as_str() {
                "regenerate" => health = false,
                "health" => health = true,
                other => return Err(format!("--call: {other:?} is not regenerate or health")),
            },
            "--org" => org = value()?,
            "--duration" => {
                let s: f64 = value()?.parse().map_err(|e| format!("--duration: {e}"))?;
                duration =
                    Some(Duration::try_from_secs_f64(s).map_err(|e| format!("--duration: {e}"))?);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        admin: admin.ok_or(USAGE)?,
        token: token.ok_or(USAGE)?,
        period,
        health,
        org,
        duration,
    })
}

/// One keep-alive connection to the admin listener.
struct Conn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// Sends `request` and reads the answer's status and body, opening the
    /// connection first if there is none. A failure drops the connection.
    fn call(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let result = self.try_call(request);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn try_call(&mut self, request: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            self.stream = Some(BufReader::new(s));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(bad("no connection"));
        };
        stream.get_mut().write_all(request)?;
        read_answer(stream)
    }
}

/// Reads one HTTP/1.1 answer: the status line, the headers, then a
/// `content-length` or chunked body.
fn read_answer(r: &mut impl BufRead) -> std::io::Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad("bad header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| bad("bad content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            let start = body.len();
            body.resize(start + size + 2, 0);
            r.read_exact(&mut body[start..])?;
            body.truncate(start + size);
            if size == 0 {
                break;
            }
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok((status, body))
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

fn request(method: &str, path: &str, token: &str, body: Option<&str>) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nhost: keygate\r\nauthorization: Bearer {token}\r\n");
    match body {
        Some(b) => r.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => r.push_str("content-length: 0\r\n\r\n"),
    }
    r.into_bytes()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("admin_driver: {e}");
            return ExitCode::from(2);
        }
    };
    let mut conn = Conn {
        addr: args.admin,
        stream: None,
    };
    let call = if args.health {
        request("GET", "/healthz", &args.token, None)
    } else {
        // The org may exist from an earlier run: 409 is as good as 201.
        let create = request(
            "POST",
            "/v1/orgs",
            &args.token,
            Some(&format!("{{\"org\":\"{}\"}}", args.org)),
        );
        match conn.call(&create) {
            Ok((status, _)) if status < 300 || status == 409 => {}
            Ok((status, body)) => {
                eprintln!(
                    "admin_driver: creating {:?}: {status} {}",
                    args.org,
                    String::from_utf8_lossy(&body)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("admin_driver: creating {:?}: {e}", args.org);
                return ExitCode::FAILURE;
            }
        }
        let path = format!("/v1/orgs/{}/key/regenerate", args.org);
        request("POST", &path, &args.token, None)
    };
    let out = std::io::stdout();
    let started = Instant::now();
    let mut next = started;
    loop {
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            return ExitCode::SUCCESS;
        }
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let t0 = Instant::now();
        let status = conn.call(&call).map_or(0, |(status, _)| status);
        let took = t0.elapsed();
        // One write per line: the harness stops this process with SIGTERM,
        // and every call made by then is already written.
        let line = format!(
            "{}.{:09}\t{status}\t{:.6}\n",
            at.as_secs(),
            at.subsec_nanos(),
            took.as_secs_f64()
        );
        if out.lock().write_all(line.as_bytes()).is_err() {
            return ExitCode::FAILURE;
        }
        // An absolute schedule: a slow call delays the next one, it does
        // not shift every later one.
        next += args.period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
