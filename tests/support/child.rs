//! The `keygate` binary as a child process, for the tests that drive it from
//! outside (`process.rs`, `crash.rs`, `quickstart.rs`): the folder and config
//! it runs over, its output collected, bounded waits for its start and its
//! exit, its signals, and a guard that kills it.
//!
//! Included with `#[path = "support/child.rs"] mod child;`, apart from the
//! HTTP helpers of `support/mod.rs`, which these tests do not need.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_keygate");

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(5);

/// `keygate serve --config config` logging at `log`, with nothing of the
/// environment that could change what it reads.
pub fn serve_command(config: &Path, log: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("KEYGATE_LOG", log)
        .env_remove("RUST_LOG")
        .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256");
    cmd
}

/// A test's world: a fresh folder, an echo upstream served by the test's
/// runtime, a provider token, and a config over them, with its store in a
/// subfolder that does not exist yet. Everything listens on `127.0.0.1:0`.
pub struct Env {
    _dir: TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The store file the config names.
    pub store: PathBuf,
    /// The provider's bearer token (its SHA-256 is in the config).
    pub provider: String,
}

/// The public URL every config sets, so that `base_url` does not follow the
/// port the system picks at each start.
pub const PUBLIC_URL: &str = "http://gateway.test";

impl Env {
    /// The world, with `extra` (whole TOML sections) appended to the config.
    pub async fn new(extra: &str) -> Env {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(keygate::demo::serve_echo(echo));
        let dir = TempDir::new().unwrap();
        let store = dir.path().join("state").join("keygate.redb");
        let provider = keygate::token::generate();
        let config = dir.path().join("keygate.toml");
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{upstream}\"\n\
             public_url = \"{PUBLIC_URL}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\n\
             [store]\npath = {store:?}\n{extra}",
            digest = keygate::token::TokenDigest::of(&provider).to_hex(),
            store = store.display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        Env {
            _dir: dir,
            config,
            store,
            provider,
        }
    }
}

/// A running child whose stdout and stderr are collected by two threads.
/// Dropping it kills (SIGKILL) and reaps the child, so no test leaves one
/// behind; if the test is failing, it also prints what the child wrote.
pub struct Proc {
    name: &'static str,
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Proc {
    /// Starts `cmd`, called `name` in failure messages.
    pub fn spawn(name: &'static str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped stdout"), stdout.clone()),
            collect(child.stderr.take().expect("piped stderr"), stderr.clone()),
        ];
        Proc {
            name,
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The exit status, if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits, at most `limit`, for the child to exit, then for its output to
    /// end. Blocks the thread: for synchronous tests.
    pub fn wait_exit_blocking(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.exited() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}; stdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(POLL);
        };
        // The child is gone, so both pipes are at EOF or about to be.
        for reader in self.readers.drain(..) {
            reader.join().expect("output reader");
        }
        status
    }

    /// [`wait_exit_blocking`](Proc::wait_exit_blocking) from an async test on
    /// a multi-thread runtime: the worker hands its other tasks on first, so
    /// requests still in flight keep being served while this waits.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        tokio::task::block_in_place(|| self.wait_exit_blocking(limit))
    }

    /// Sends `signal` (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill(1)")
            .success();
        assert!(ok, "kill -{signal} {pid} failed");
    }

    /// SIGKILL, if the child is still running; the exit is left to
    /// [`wait_exit`](Proc::wait_exit).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the child, which
    /// must not have exited cleanly first.
    pub async fn kill9(&mut self, limit: Duration) {
        self.child.kill().expect("SIGKILL");
        let status = self.wait_exit(limit).await;
        assert!(!status.success(), "{status}");
    }

    /// Waits, at most `limit`, for `keygate serve`'s `keygate listening` line
    /// and returns the proxy's and the admin API's addresses from it. Fails,
    /// with what the child wrote, if it exits first.
    pub async fn listening(&mut self, limit: Duration) -> (SocketAddr, SocketAddr) {
        let deadline = Instant::now() + limit;
        let line = loop {
            if let Some(line) = self
                .stderr()
                .lines()
                .find(|l| l.contains("keygate listening"))
            {
                break line.to_owned();
            }
            if let Some(status) = self.exited() {
                let _ = self.wait_exit(limit).await;
                panic!(
                    "{} exited ({status}) before listening; stderr:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen within {limit:?}; stderr:\n{}",
                self.name,
                self.stderr()
            );
            tokio::time::sleep(POLL).await;
        };
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        (field("proxy_addr="), field("admin_addr="))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {name} stdout ---\n{}\n--- {name} stderr ---\n{}",
                self.stdout(),
                self.stderr(),
                name = self.name,
            );
        }
    }
}

/// Copies everything `from` yields into `into`, on a thread of its own.
fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}
