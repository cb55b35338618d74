//! The README's quickstart, run as written: `keygate demo`, then the README's own
//! `sh` block of curl steps, checked against the status codes its comments name.
//!
//! The block and the codes are read from README.md at test time, so the README
//! and this test cannot drift apart: edit a step and this test runs the edit.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "support/child.rs"]
mod child;

use child::{Proc, BIN};

/// From spawn to the demo's four `export` lines.
const START_LIMIT: Duration = Duration::from_secs(30);
/// The whole curl block.
const STEPS_LIMIT: Duration = Duration::from_secs(60);
/// From SIGINT (the README's Ctrl-C) to exit: the 10 s drain limit and slack.
const EXIT_LIMIT: Duration = Duration::from_secs(15);
/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(10);
/// The variables the demo prints and the README's steps use.
const EXPORTS: [&str; 4] = [
    "KEYGATE_URL",
    "KEYGATE_ADMIN",
    "KEYGATE_KEY",
    "KEYGATE_TOKEN",
];

/// A port nothing listens on (bound and released).
fn free_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The README's `sh` code blocks, in order.
fn sh_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match current.as_mut() {
            None if line.trim_end() == "```sh" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    assert!(current.is_none(), "README.md: an unclosed ```sh block");
    blocks
}

/// The steps of the block: `# N. what it does: CODE`, as (N, CODE).
fn steps(block: &str) -> Vec<(u32, u16)> {
    block
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("# ")?;
            let (n, text) = rest.split_once(". ")?;
            let n: u32 = n.parse().ok()?;
            let (_, code) = text.rsplit_once(": ").unwrap_or_else(|| {
                panic!("README.md: step {n} does not end with ': CODE': {line:?}")
            });
            let code: u16 = code.trim().parse().unwrap_or_else(|_| {
                panic!("README.md: step {n} does not end with a status code: {line:?}")
            });
            Some((n, code))
        })
        .collect()
}

/// `curl` is what the README tells readers to use; without it the quickstart
/// cannot be followed, so its absence fails this test instead of skipping it.
fn require_curl() {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "curl is not installed (or does not run): the README's quickstart needs it, \
         so this test does too; install curl"
    );
}

/// The demo's flags that set its proxy, admin and upstream addresses, in the
/// order [`demo_command`] takes them.
const LISTEN_FLAGS: [&str; 3] = ["--proxy-listen", "--admin-listen", "--upstream-listen"];

/// `keygate demo --dir dir` with its three listeners at `addrs` (see
/// [`LISTEN_FLAGS`]).
fn demo_command(dir: &Path, addrs: [String; 3]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("demo").arg("--dir").arg(dir);
    for (flag, addr) in LISTEN_FLAGS.iter().zip(addrs) {
        cmd.args([*flag, &addr]);
    }
    cmd.env("KEYGATE_LOG", "info").env_remove("RUST_LOG");
    cmd
}

/// Starts `keygate demo` in `dir` on free ports and returns it with the
/// variables of its four `export` lines.
fn start_demo(dir: &Path) -> (Proc, BTreeMap<String, String>) {
    let cmd = demo_command(dir, [free_port(), free_port(), free_port()]);
    let mut demo = Proc::spawn("keygate demo", cmd);
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let vars: BTreeMap<String, String> = demo
            .stdout()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("export ")?.split_once('='))
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect();
        if EXPORTS.iter().all(|name| vars.contains_key(*name)) {
            assert_eq!(
                vars.keys().collect::<Vec<_>>(),
                {
                    let mut names = EXPORTS.to_vec();
                    names.sort();
                    names
                },
                "the demo exports exactly the four variables"
            );
            return (demo, vars);
        }
        if let Some(status) = demo.exited() {
            panic!("keygate demo exited ({status}) before printing its export lines");
        }
        assert!(
            Instant::now() < deadline,
            "keygate demo printed no export lines within {START_LIMIT:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn the_readme_quickstart_runs_as_written_against_the_demo() {
    require_curl();
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    let blocks: Vec<String> = sh_blocks(&readme)
        .into_iter()
        .filter(|b| b.contains("# 1."))
        .collect();
    assert_eq!(
        blocks.len(),
        1,
        "README.md must have exactly one ```sh block with the steps `# 1.` ..."
    );
    let block = &blocks[0];
    let steps = steps(block);
    let numbers: Vec<u32> = steps.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (1..=steps.len() as u32).collect::<Vec<_>>(),
        "README.md: steps are numbered 1, 2, 3, ..."
    );
    let expected: Vec<u16> = steps.iter().map(|(_, code)| *code).collect();
    assert_eq!(
        expected,
        [200, 401, 200, 401, 200],
        "README.md: the quickstart's steps changed; update this test on purpose"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut demo, vars) = start_demo(&dir.path().join("demo"));

    // Only the README's block runs; curl's own settings are pinned so that
    // a user's ~/.curlrc or proxy cannot change its output, and every call is
    // bounded. The block itself is untouched.
    let curl_home = dir.path().join("curl-home");
    std::fs::create_dir(&curl_home).unwrap();
    std::fs::write(curl_home.join(".curlrc"), "max-time = 10\n").unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-e")
        .arg("-c")
        .arg(block)
        .envs(&vars)
        .env("CURL_HOME", &curl_home)
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for proxy in ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"] {
        cmd.env_remove(proxy);
    }
    let mut steps_run = Proc::spawn("the quickstart block", cmd);
    let status = steps_run.wait_exit_blocking(STEPS_LIMIT);
    let output = steps_run.stdout();
    assert!(
        status.success(),
        "the quickstart block failed ({status}):\n{output}\n{}",
        steps_run.stderr()
    );

    // One answer per `curl -i`: a status line, headers, a blank line, a body.
    // Bodies do not end with a newline, so the next status line may follow a
    // body on the same line: split at the status lines themselves.
    let answers: Vec<(u16, &str)> = output
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|answer| {
            let code = answer
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("not a status line: HTTP/1.1 {answer:?}"));
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            (code, body)
        })
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|(code, _)| *code).collect();
    assert_eq!(
        statuses, expected,
        "the HTTP/1.1 status lines of the quickstart vs. its README comments:\n{output}"
    );

    // "note that `x-api-key` is gone and `x-org-id: demo` is there"
    let echoes: Vec<serde_json::Value> = answers
        .iter()
        .filter_map(|(_, body)| serde_json::from_str::<serde_json::Value>(body.trim()).ok())
        .filter(|v| v["echo"] == serde_json::json!(true))
        .collect();
    assert_eq!(
        echoes.len(),
        2,
        "two answers of the echo upstream:\n{output}"
    );
    for echo in echoes {
        assert_eq!(echo["headers"]["x-org-id"], "demo", "{echo}");
        assert!(echo["headers"].get("x-api-key").is_none(), "{echo}");
    }

    // Ctrl-C, as the demo's banner says, stops it cleanly.
    demo.signal("INT");
    let status = demo.wait_exit_blocking(EXIT_LIMIT);
    assert_eq!(status.code(), Some(0), "the demo after Ctrl-C");
}

#[test]
fn a_taken_port_stops_the_demo_with_an_error_naming_the_flag_that_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    for (i, flag) in LISTEN_FLAGS.iter().enumerate() {
        // Held for the whole run, as another program would hold it.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap().to_string();
        let mut addrs = [free_port(), free_port(), free_port()];
        addrs[i] = taken_addr.clone();
        let mut demo = Proc::spawn(
            "keygate demo",
            demo_command(&dir.path().join("demo"), addrs),
        );
        let status = demo.wait_exit_blocking(START_LIMIT);
        assert!(
            !status.success(),
            "{flag}: the demo started on a taken port"
        );
        let stderr = demo.stderr();
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            last.contains(&taken_addr) && last.contains(&format!("{flag} ")),
            "{flag}: the error does not name the address and the flag:\n{stderr}"
        );
        assert!(
            !demo.stdout().contains("export "),
            "{flag}: export lines printed by a demo that did not start"
        );
    }
}

/// `curl -s -w '%{http_code}'` and its arguments: the status code.
fn curl_status(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "10",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .env("NO_PROXY", "*")
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0)
}

#[test]
fn a_demo_org_without_a_key_prints_lines_a_shell_can_run() {
    require_curl();
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let (mut demo, vars) = start_demo(&demo_dir);
    let auth = format!("authorization: Bearer {}", vars["KEYGATE_TOKEN"]);
    let key_url = format!("{}/v1/orgs/demo/key", vars["KEYGATE_ADMIN"]);
    assert_eq!(curl_status(&["-X", "DELETE", &key_url, "-H", &auth]), 204);
    demo.signal("INT");
    assert_eq!(demo.wait_exit_blocking(EXIT_LIMIT).code(), Some(0));

    // Started again, the demo org has no key.
    let (mut demo, vars) = start_demo(&demo_dir);
    assert_eq!(vars["KEYGATE_KEY"], "", "{}", demo.stdout());
    let stdout = demo.stdout();
    let (_, pasted) = stdout
        .split_once("Paste these lines into a shell to follow the README:")
        .unwrap_or_else(|| panic!("no paste section in:\n{stdout}"));
    // What a reader pastes must run, and leave the four variables set.
    let check = format!(
        "{pasted}\ntest -n \"$KEYGATE_URL\" && test -n \"$KEYGATE_ADMIN\" && \
         test -n \"$KEYGATE_TOKEN\" && test -z \"$KEYGATE_KEY\" && echo ok"
    );
    let out = Command::new("sh")
        .args(["-e", "-c", &check])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "the pasted lines fail in sh ({}):\n{pasted}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // And the advice in them works: the commented curl adds a key.
    let advice = pasted
        .lines()
        .find_map(|l| l.strip_prefix("#   "))
        .unwrap_or_else(|| panic!("no command to add a key in:\n{pasted}"));
    let run = format!("{pasted}\n{advice} -s -o /dev/null -w '%{{http_code}}'");
    let out = Command::new("sh")
        .args(["-e", "-c", &run])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{advice}");

    demo.signal("INT");
    assert_eq!(demo.wait_exit_blocking(EXIT_LIMIT).code(), Some(0));
}

/// `config/keygate.toml` as shipped, but on free ports and with its store in
/// `dir`, so that the test neither collides with anything nor writes into the
/// repository.
fn shipped_config(dir: &Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/keygate.toml"))
            .unwrap();
    let store = dir.join("keygate.redb");
    let text = text
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("listen = \"127.0.0.1:8081\"", "listen = \"127.0.0.1:0\"")
        .replace(
            "path = \"data/keygate.redb\"",
            &format!("path = {:?}", store.display().to_string()),
        );
    assert_eq!(
        text.matches("127.0.0.1:0").count(),
        2,
        "the listeners moved"
    );
    assert!(
        !text.contains("path = \"data/keygate.redb\""),
        "the store moved"
    );
    let path = dir.join("keygate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `keygate serve` with `cmd`, waits for it to listen, and returns what
/// it wrote to stderr by then.
fn serve_stderr(cmd: Command) -> String {
    let mut gw = Proc::spawn("keygate serve", cmd);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(gw.listening(START_LIMIT));
    gw.stderr()
}

#[test]
fn the_shipped_config_starts_but_warns_that_its_provider_digest_is_a_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let config = shipped_config(dir.path());
    let stderr = serve_stderr(child::serve_command(&config, "info"));
    let warning = stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("admin.provider_token_sha256"))
        .unwrap_or_else(|| panic!("no warning naming the key:\n{stderr}"));
    assert!(
        warning.contains("401") && warning.contains("keygate digest"),
        "{warning}"
    );

    // With a real digest, from the environment as a deployment might set it,
    // there is nothing to warn about.
    let mut cmd = child::serve_command(&config, "info");
    cmd.env(
        "KEYGATE_PROVIDER_TOKEN_SHA256",
        keygate::token::TokenDigest::of("a real token").to_hex(),
    );
    let stderr = serve_stderr(cmd);
    assert!(!stderr.contains("WARN"), "{stderr}");
}
