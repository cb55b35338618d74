//! Key rotation under load, for `benches/compare/run.sh`: while keep-alive
//! connections send requests with the current key of a set of orgs, the key of
//! one of them is regenerated through the admin API every `--period-ms`, and
//! every request is judged against what the rotation log says its key was when
//! it left.
//!
//! ```sh
//! cargo run --release --example rotation -- --proxy 127.0.0.1:18080 \
//!     --admin 127.0.0.1:18081 --token "$PROVIDER_TOKEN" --orgs 8 --duration 30
//! ```
//!
//! The orgs (`rot-0` ...) are provisioned through the admin API when missing.
//! A key's generation `g` of an org is *current* from the 2xx of the regenerate
//! that made it until the next regenerate of that org is sent, and *replaced*
//! from that next regenerate's 2xx on. Every request is recorded with its org,
//! the generation of the key it carried, when it was sent and when its answer
//! came, and is then counted as one of:
//!
//! - `current`: its key was current from before it was sent until after its
//!   answer came. A `401` here is `current_refused` (the goal: 0).
//! - `replaced`: its key had already been replaced when it was sent. A `2xx`
//!   here is `replaced_accepted` (must be 0). Besides requests that simply
//!   lost the race, every `--stale-every`-th request deliberately carries the
//!   org's previous key, to probe that replaced keys stay refused.
//! - `in_flight`: sent before a regenerate's 2xx but answered after that
//!   regenerate was sent; either answer is allowed.
//!
//! Prints `key=value` lines; exits 1 when `replaced_accepted` or
//! `current_refused` is not 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

const USAGE: &str = "usage: rotation --proxy HOST:PORT --admin HOST:PORT --token TOKEN \
[--orgs N] [--prefix rot] [--duration SECS] [--period-ms MS] [--connections N] \
[--stale-every N]";

struct Args {
    proxy: SocketAddr,
    admin: SocketAddr,
    token: String,
    orgs: usize,
    prefix: String,
    duration: f64,
    period: Duration,
    connections: usize,
    stale_every: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        proxy: "127.0.0.1:18080".parse().map_err(|e| format!("{e}"))?,
        admin: "127.0.0.1:18081".parse().map_err(|e| format!("{e}"))?,
        token: String::new(),
        orgs: 8,
        prefix: "rot".to_owned(),
        duration: 30.0,
        period: Duration::from_millis(100),
        connections: 16,
        stale_every: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--proxy" => a.proxy = value()?.parse().map_err(|e| bad(&e))?,
            "--admin" => a.admin = value()?.parse().map_err(|e| bad(&e))?,
            "--token" => a.token = value()?,
            "--orgs" => a.orgs = value()?.parse().map_err(|e| bad(&e))?,
            "--prefix" => a.prefix = value()?,
            "--duration" => a.duration = value()?.parse().map_err(|e| bad(&e))?,
            "--period-ms" => {
                a.period = Duration::from_millis(value()?.parse().map_err(|e| bad(&e))?);
            }
            "--connections" => a.connections = value()?.parse().map_err(|e| bad(&e))?,
            "--stale-every" => a.stale_every = value()?.parse().map_err(|e| bad(&e))?,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.token.is_empty() {
        // Also from the environment, so the token stays off command lines.
        a.token = std::env::var("KEYGATE_BENCH_TOKEN").unwrap_or_default();
    }
    if a.token.is_empty() {
        return Err(format!(
            "--token (or KEYGATE_BENCH_TOKEN) is required\n{USAGE}"
        ));
    }
    if a.orgs == 0 || a.connections == 0 || a.period.is_zero() || a.duration <= 0.0 {
        return Err("orgs, connections, period and duration must be positive".to_owned());
    }
    Ok(a)
}

/// One key of one org: its generation (our count, 0 = the key at the start)
/// and the times that bound it.
#[derive(Clone, Copy)]
struct Rotation {
    /// When the regenerate that made this key was sent.
    sent: Instant,
    /// When its 2xx came: the key is in force from here on.
    acked: Instant,
}

/// The keys in force, as the load sees them.
struct OrgKeys {
    generation: u32,
    current: HeaderValue,
    previous: Option<HeaderValue>,
}

/// One request of the load.
struct Record {
    org: u16,
    generation: u32,
    sent: Instant,
    answered: Instant,
    status: u16,
    probe: bool,
}

struct Shared {
    keys: Vec<Mutex<OrgKeys>>,
}

type Sender = SendRequest<Full<Bytes>>;

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rotation: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rotation: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rotation: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One admin call; the answer's status and JSON body.
async fn admin_call(
    s: &mut Sender,
    a: &Args,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> Result<(StatusCode, serde_json::Value), String> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, a.admin.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {}", a.token));
    if body.is_some() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .map_err(|e| e.to_string())?;
    s.ready().await.map_err(|e| format!("admin: {e}"))?;
    let res = s
        .send_request(req)
        .await
        .map_err(|e| format!("admin: {e}"))?;
    let status = res.status();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin: {e}"))?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

fn key_of(view: &serde_json::Value) -> Result<HeaderValue, String> {
    view.get("key")
        .and_then(serde_json::Value::as_str)
        .and_then(|k| HeaderValue::from_str(k).ok())
        .ok_or_else(|| "a KeyView without a key".to_owned())
}

async fn run(a: Args) -> Result<bool, String> {
    let mut admin = connect(a.admin).await?;
    let names: Vec<String> = (0..a.orgs).map(|i| format!("{}-{i}", a.prefix)).collect();
    let mut keys = Vec::with_capacity(a.orgs);
    for name in &names {
        let body = format!("{{\"org\":\"{name}\"}}");
        let (status, view) =
            admin_call(&mut admin, &a, Method::POST, "/v1/orgs", Some(&body)).await?;
        let view = match status {
            StatusCode::CREATED => view,
            StatusCode::CONFLICT => {
                let path = format!("/v1/orgs/{name}/key");
                let (status, view) = admin_call(&mut admin, &a, Method::GET, &path, None).await?;
                if status != StatusCode::OK {
                    return Err(format!("GET {path}: {status}"));
                }
                view
            }
            other => return Err(format!("provisioning {name}: {other} {view}")),
        };
        if view.get("status").and_then(serde_json::Value::as_str) != Some("enabled") {
            return Err(format!("{name} is not enabled: {view}"));
        }
        keys.push(Mutex::new(OrgKeys {
            generation: 0,
            current: key_of(&view)?,
            previous: None,
        }));
    }
    let shared = Arc::new(Shared { keys });
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let initial = Rotation {
        sent: start,
        acked: start,
    };
    let log: Arc<Mutex<Vec<Vec<Rotation>>>> = Arc::new(Mutex::new(vec![vec![initial]; a.orgs]));

    let mut workers = Vec::new();
    for w in 0..a.connections {
        let sender = connect(a.proxy).await?;
        workers.push(tokio::spawn(load(
            sender,
            a.proxy,
            Arc::clone(&shared),
            a.prefix.clone(),
            w,
            a.stale_every,
            end,
        )));
    }

    // The rotations: one org after the other, every period.
    let mut ticker = tokio::time::interval(a.period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut admin_ns = Vec::new();
    let mut admin_errors = 0u64;
    let mut generation_jumps = 0u64;
    let mut round = 0usize;
    while Instant::now() + a.period < end {
        ticker.tick().await;
        let i = round % a.orgs;
        round += 1;
        let path = format!("/v1/orgs/{}/key/regenerate", names[i]);
        let before = shared.keys[i]
            .lock()
            .map_err(|_| "poisoned")?
            .current
            .clone();
        let sent = Instant::now();
        let (status, view) = match admin_call(&mut admin, &a, Method::POST, &path, None).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("rotation: {e}");
                admin_errors += 1;
                admin = connect(a.admin).await?;
                continue;
            }
        };
        let acked = Instant::now();
        if status != StatusCode::OK {
            eprintln!("rotation: {path}: {status} {view}");
            admin_errors += 1;
            continue;
        }
        let new = key_of(&view)?;
        if new == before {
            generation_jumps += 1;
        }
        admin_ns.push(acked.duration_since(sent).as_nanos() as u64);
        // Log first, then let the load use the key: a request carrying it is
        // always sent after `acked`.
        log.lock().map_err(|_| "poisoned")?[i].push(Rotation { sent, acked });
        let mut k = shared.keys[i].lock().map_err(|_| "poisoned")?;
        k.previous = Some(std::mem::replace(&mut k.current, new));
        k.generation += 1;
    }

    let mut records = Vec::new();
    let mut load_errors = 0u64;
    for w in workers {
        let (r, e) = w.await.map_err(|e| format!("load task: {e}"))?;
        records.extend(r);
        load_errors += e;
    }
    let log = log.lock().map_err(|_| "poisoned")?;
    let c = classify(&records, &log);
    admin_ns.sort_unstable();
    let q = |v: &[u64], p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1] as f64 / 1000.0
    };
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "rotation orgs={orgs} duration_s={elapsed:.1} rotations={rot} admin_errors={admin_errors} \
         same_key_after_regenerate={generation_jumps} \
         admin_p50_us={ap50:.0} admin_p99_us={ap99:.0} admin_max_us={amax:.0} \
         requests={n} rps={rps:.0} load_errors={load_errors}",
        orgs = a.orgs,
        rot = admin_ns.len(),
        ap50 = q(&admin_ns, 0.5),
        ap99 = q(&admin_ns, 0.99),
        amax = q(&admin_ns, 1.0),
        n = records.len(),
        rps = records.len() as f64 / elapsed,
    );
    println!(
        "rotation current={} current_accepted={} current_refused={} current_other={} \
         replaced={} replaced_refused={} replaced_accepted={} replaced_other={} \
         replaced_probes={} in_flight={} in_flight_accepted={} in_flight_refused={}",
        c.current,
        c.current_accepted,
        c.current_refused,
        c.current_other,
        c.replaced,
        c.replaced_refused,
        c.replaced_accepted,
        c.replaced_other,
        c.replaced_probes,
        c.in_flight,
        c.in_flight_accepted,
        c.in_flight_refused,
    );
    Ok(c.replaced_accepted == 0 && c.current_refused == 0 && !records.is_empty())
}

#[derive(Default)]
struct Counts {
    current: u64,
    current_accepted: u64,
    current_refused: u64,
    current_other: u64,
    replaced: u64,
    replaced_refused: u64,
    replaced_accepted: u64,
    replaced_other: u64,
    replaced_probes: u64,
    in_flight: u64,
    in_flight_accepted: u64,
    in_flight_refused: u64,
}

fn classify(records: &[Record], log: &[Vec<Rotation>]) -> Counts {
    let mut c = Counts::default();
    for r in records {
        let next = log[usize::from(r.org)].get(r.generation as usize + 1);
        let accepted = (200..300).contains(&r.status);
        let refused = r.status == 401;
        match next {
            Some(n) if r.sent >= n.acked => {
                c.replaced += 1;
                c.replaced_probes += u64::from(r.probe);
                if accepted {
                    c.replaced_accepted += 1;
                } else if refused {
                    c.replaced_refused += 1;
                } else {
                    c.replaced_other += 1;
                }
            }
            Some(n) if r.answered > n.sent => {
                c.in_flight += 1;
                c.in_flight_accepted += u64::from(accepted);
                c.in_flight_refused += u64::from(refused);
            }
            _ => {
                c.current += 1;
                if accepted {
                    c.current_accepted += 1;
                } else if refused {
                    c.current_refused += 1;
                } else {
                    c.current_other += 1;
                }
            }
        }
    }
    c
}

/// One connection's load until `end`: round-robin over the orgs, each
/// `stale_every`-th request with the org's previous key when it has one.
async fn load(
    sender: Sender,
    addr: SocketAddr,
    shared: Arc<Shared>,
    prefix: String,
    worker: usize,
    stale_every: u64,
    end: Instant,
) -> (Vec<Record>, u64) {
    let host = HeaderValue::from_str(&addr.to_string()).expect("an address is a header value");
    let uris: Vec<String> = (0..shared.keys.len())
        .map(|i| format!("/{prefix}-{i}/v1/ping"))
        .collect();
    let mut records = Vec::new();
    let mut errors = 0u64;
    let mut sender = Some(sender);
    let mut n: u64 = 0;
    while Instant::now() < end {
        let org = (worker + n as usize) % shared.keys.len();
        n += 1;
        let mut s = match sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => match connect(addr).await {
                Ok(s) => s,
                Err(_) => {
                    errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if s.ready().await.is_err() {
            errors += 1;
            continue;
        }
        let (generation, key, probe) = {
            let k = shared.keys[org].lock().expect("not poisoned");
            match (&k.previous, stale_every > 0 && n % stale_every == 0) {
                (Some(prev), true) => (k.generation - 1, prev.clone(), true),
                _ => (k.generation, k.current.clone(), false),
            }
        };
        let req = Request::get(uris[org].as_str())
            .header(http::header::HOST, host.clone())
            .header("x-api-key", key)
            .body(Full::new(Bytes::new()))
            .expect("a valid request");
        let sent = Instant::now();
        let answer = async {
            let res = s.send_request(req).await?;
            let status = res.status().as_u16();
            res.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        }
        .await;
        let answered = Instant::now();
        match answer {
            Ok(status) => {
                records.push(Record {
                    org: org as u16,
                    generation,
                    sent,
                    answered,
                    status,
                    probe,
                });
                sender = Some(s);
            }
            Err(_) => errors += 1,
        }
    }
    (records, errors)
}
