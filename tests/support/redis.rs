//! A real `redis-server` for the cluster tests: on `127.0.0.1` with a port of
//! its own, persisting to a temporary folder with an append-only file fsynced
//! on every write (what cluster mode requires), killed on drop, and
//! restartable from the same folder and port (the AOF test).
//!
//! Included with `#[path = "support/redis.rs"] mod redis_server;` (not `mod
//! redis`, which would clash with the `redis` crate's name).
//!
//! When `redis-server` is not installed, [`Redis::start`] returns `None` after
//! a note on stderr, and the test returns early; under `CI=true` it fails the
//! test instead, so that CI cannot pass by skipping (the test script installs
//! Debian's `redis-server`).

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary started.
const SERVER: &str = "redis-server";

/// How long a start may take until the server answers `PING`.
const START_LIMIT: Duration = Duration::from_secs(15);

/// How often the start looks again.
const POLL: Duration = Duration::from_millis(20);

/// One `redis-server` process and the folder it persists to.
pub struct Redis {
    dir: TempDir,
    port: u16,
    appendfsync: &'static str,
    child: Option<Child>,
}

impl Redis {
    /// A server with `appendonly yes` and `appendfsync always`, answering
    /// `PING`; `None` (after a note) when `redis-server` is not installed and
    /// this is not CI.
    pub fn start() -> Option<Redis> {
        Redis::start_with("always")
    }

    /// As [`start`](Redis::start), with `appendfsync` set to `appendfsync`
    /// (`always`, `everysec` or `no`).
    pub fn start_with(appendfsync: &'static str) -> Option<Redis> {
        if !installed() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{SERVER} is not installed, and CI=true: the cluster tests must run \
                 (apt-get install -y redis-server)"
            );
            eprintln!(
                "note: {SERVER} is not installed; skipping this cluster test \
                 (apt-get install -y redis-server)"
            );
            return None;
        }
        let dir = TempDir::new().expect("a folder for redis");
        let port = free_port();
        let mut redis = Redis {
            dir,
            port,
            appendfsync,
            child: None,
        };
        redis.spawn();
        Some(redis)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The folder it persists to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether it answers `PING` now.
    pub fn answers(&self) -> bool {
        ping(self.addr())
    }

    /// Kills it with SIGKILL, as a crash would, and reaps it: only what its
    /// append-only file holds survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port from the same folder, so it loads its
    /// append-only file, and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(SERVER);
        cmd.args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--appendonly", "yes", "--appendfsync", self.appendfsync])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {SERVER}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        while !self.answers() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{SERVER} on port {} exited at start: {status}", self.port);
            }
            assert!(
                Instant::now() < deadline,
                "{SERVER} on port {} did not answer PING within {START_LIMIT:?}",
                self.port
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `redis-server --version` runs.
fn installed() -> bool {
    Command::new(SERVER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A port nothing listens on now. The system may hand it to someone else
/// before the server binds it; the start then fails loudly, not silently.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Sends an inline `PING` and reads `+PONG`, within a second.
fn ping(addr: SocketAddr) -> bool {
    let limit = Duration::from_secs(1);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, limit) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(limit));
    let _ = stream.set_write_timeout(Some(limit));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}
