//! `keygate admin ...`, the real binary, against a live keygate: every
//! subcommand, its table and its `--json`, the exit status of a refusal (1,
//! with the contract's code on stderr), of a usage error and of a keygate that
//! is not there (2), and the flags' environment variables.

mod support;

use std::process::Output;

use serde_json::Value;
use support::{refusing_addr, Gateway, PROVIDER};

/// What one run of the CLI did.
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &str {
        assert_eq!(
            self.status,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }

    fn refused(&self, code: &str) {
        assert_eq!(
            self.status,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.starts_with(&format!("{code}: ")),
            "{code}: {}",
            self.stderr
        );
    }
}

/// Runs `keygate admin ARGS` with `env` and nothing else of the caller's.
async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("admin")
        .args(args)
        .env_remove("KEYGATE_ADMIN_URL")
        .env_remove("KEYGATE_TOKEN")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("keygate admin did not exit within 60 s")
        .expect("run keygate admin");
    Run {
        status: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs `keygate admin --url URL --token TOKEN ARGS`.
async fn cli(gw: &Gateway, token: &str, args: &[&str]) -> Run {
    let url = format!("http://{}", gw.admin_addr);
    let mut all = vec!["--url", &url, "--token", token];
    all.extend_from_slice(args);
    cli_env(&all, &[]).await
}

#[tokio::test]
async fn every_subcommand_makes_its_call_and_prints_its_answer() {
    let gw = Gateway::start().await;

    // orgs provision, with a subscription end and limits.
    let out = cli(
        &gw,
        PROVIDER,
        &[
            "orgs",
            "provision",
            "acme",
            "--expires-at",
            "2030-01-01T00:00:00Z",
            "--burst",
            "7",
        ],
    )
    .await;
    let text = out.ok();
    assert!(text.contains("org                   acme\n"), "{text}");
    let page = gw.page("acme").await;
    assert!(text.contains(page["key"].as_str().unwrap()), "{text}");
    assert_eq!(page["subscription_expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(page["limits"]["burst"], 7);

    // orgs list: a table with a header and one row.
    let out = cli(&gw, PROVIDER, &["orgs", "list"]).await;
    let lines: Vec<&str> = out.ok().lines().collect();
    assert!(lines[0].starts_with("ORG "), "{lines:?}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("acme ") && lines[1].contains("enabled"));

    // key show, regenerate, edit, delete, add.
    let out = cli(&gw, PROVIDER, &["key", "show", "acme"]).await;
    assert!(out.ok().contains(page["key"].as_str().unwrap()));
    cli(&gw, PROVIDER, &["key", "regenerate", "acme"])
        .await
        .ok();
    assert_ne!(gw.page("acme").await["key"], page["key"]);
    cli(&gw, PROVIDER, &["key", "edit", "acme", "Ab3dEf6hIj9k"])
        .await
        .ok();
    assert_eq!(gw.page("acme").await["key"], "Ab3dEf6hIj9k");
    let out = cli(&gw, PROVIDER, &["key", "delete", "acme"]).await;
    assert_eq!(out.ok(), "acme: key deleted\n");
    assert_eq!(gw.page("acme").await["key"], Value::Null);
    cli(&gw, PROVIDER, &["key", "add", "acme"]).await.ok();
    assert!(gw.page("acme").await["key"].is_string());

    // disable with a reason, enable.
    let out = cli(
        &gw,
        PROVIDER,
        &["disable", "acme", "--reason", "unpaid invoice"],
    )
    .await;
    assert!(out.ok().contains("unpaid invoice"));
    assert_eq!(gw.page("acme").await["status"], "disabled");
    cli(&gw, PROVIDER, &["enable", "acme"]).await.ok();
    assert_eq!(gw.page("acme").await["status"], "enabled");

    // subscription set, clear.
    cli(
        &gw,
        PROVIDER,
        &["subscription", "set", "acme", "2031-02-03T04:05:06Z"],
    )
    .await
    .ok();
    assert_eq!(
        gw.page("acme").await["subscription_expires_at"],
        "2031-02-03T04:05:06Z"
    );
    cli(&gw, PROVIDER, &["subscription", "clear", "acme"])
        .await
        .ok();
    assert_eq!(
        gw.page("acme").await["subscription_expires_at"],
        Value::Null
    );

    // limits: only those given change.
    let out = cli(&gw, PROVIDER, &["limits", "acme", "--rate-per-sec", "42"]).await;
    assert!(out.ok().contains("rate_per_sec=42"), "{}", out.stdout);
    let limits = &gw.page("acme").await["limits"];
    assert_eq!(
        (limits["rate_per_sec"].as_u64(), limits["burst"].as_u64()),
        (Some(42), Some(7))
    );

    // tokens create: the token works; tokens delete: it no longer does.
    let out = cli(
        &gw,
        PROVIDER,
        &[
            "tokens",
            "create",
            "acme-view",
            "--role",
            "viewer",
            "--org",
            "acme",
        ],
    )
    .await;
    let token = out
        .ok()
        .lines()
        .find_map(|l| l.strip_prefix("token  "))
        .unwrap_or_else(|| panic!("no token line: {}", out.stdout))
        .to_owned();
    let shown = cli(&gw, &token, &["key", "show", "acme"]).await;
    assert!(
        shown.ok().contains("key                   ********"),
        "{}",
        shown.stdout
    );
    // tokens rotate: a new token, shown once; the old one is refused.
    let out = cli(&gw, PROVIDER, &["tokens", "rotate", "acme-view"]).await;
    let old = token;
    let token = out
        .ok()
        .lines()
        .find_map(|l| l.strip_prefix("token  "))
        .unwrap_or_else(|| panic!("no token line: {}", out.stdout))
        .to_owned();
    assert_ne!(token, old);
    cli(&gw, &old, &["key", "show", "acme"])
        .await
        .refused("UNAUTHENTICATED");
    cli(&gw, &token, &["key", "show", "acme"]).await.ok();
    let out = cli(&gw, PROVIDER, &["tokens", "delete", "acme-view"]).await;
    assert_eq!(out.ok(), "acme-view: token deleted\n");
    cli(&gw, &token, &["key", "show", "acme"])
        .await
        .refused("UNAUTHENTICATED");

    // audit: every change above, oldest first.
    let out = cli(&gw, PROVIDER, &["audit", "acme"]).await;
    let lines: Vec<&str> = out.ok().lines().collect();
    assert!(lines[0].starts_with("AT "), "{lines:?}");
    let actions: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "provision",
            "regenerate_key",
            "edit_key",
            "delete_key",
            "add_key",
            "disable",
            "enable",
            "set_subscription",
            "set_subscription",
            "set_limits",
            "create_token",
            "rotate_token",
            "delete_token"
        ]
    );
}

#[tokio::test]
async fn json_output_is_the_apis_answer_as_it_came() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let page = cli(&gw, PROVIDER, &["--json", "key", "show", "acme"])
        .await
        .json();
    assert_eq!(page, gw.page("acme").await);
    let list = cli(&gw, PROVIDER, &["orgs", "list", "--json"]).await.json();
    assert_eq!(list["orgs"][0], page);
    let events = cli(&gw, PROVIDER, &["audit", "acme", "--json"])
        .await
        .json();
    assert_eq!(events["events"][0]["action"], "provision");
    let token = cli(
        &gw,
        PROVIDER,
        &[
            "--json", "tokens", "create", "t1", "--role", "admin", "--org", "acme",
        ],
    )
    .await
    .json();
    assert_eq!(token["role"], "admin");
    assert!(token["token"].is_string());
    // A 204 has no body: nothing is printed.
    let out = cli(&gw, PROVIDER, &["--json", "tokens", "delete", "t1"]).await;
    assert_eq!(out.ok(), "");
}

#[tokio::test]
async fn a_refusal_exits_1_with_the_contracts_code_on_stderr() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let out = cli(&gw, PROVIDER, &["key", "add", "acme"]).await;
    out.refused("KEY_EXISTS");
    assert!(out.stderr.contains("already has a key"), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    cli(&gw, PROVIDER, &["key", "edit", "acme", "short"])
        .await
        .refused("INVALID_KEY_FORMAT");
    cli(&gw, PROVIDER, &["key", "show", "nobody"])
        .await
        .refused("ORG_NOT_FOUND");
    cli(&gw, PROVIDER, &["orgs", "provision", "acme"])
        .await
        .refused("ORG_EXISTS");
    cli(&gw, PROVIDER, &["limits", "acme", "--burst", "0"])
        .await
        .refused("INVALID_LIMITS");
    cli(&gw, "not-a-token", &["orgs", "list"])
        .await
        .refused("UNAUTHENTICATED");
    let viewer = gw.token("v", "viewer", "acme").await;
    cli(&gw, &viewer, &["key", "regenerate", "acme"])
        .await
        .refused("FORBIDDEN");
    // With --json, the refusal's JSON is printed too.
    let out = cli(&gw, PROVIDER, &["--json", "key", "add", "acme"]).await;
    out.refused("KEY_EXISTS");
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["code"], "KEY_EXISTS");
    // Nothing was changed by the refusals.
    assert_eq!(gw.page("acme").await["last_modified_by"], "provider");
}

#[tokio::test]
async fn usage_errors_and_no_answer_exit_2() {
    let gw = Gateway::start().await;
    // clap's own usage errors: a missing argument, an unknown subcommand, a bad role.
    for args in [
        &["key", "show"][..],
        &["orgs", "frobnicate"],
        &["tokens", "create", "n", "--role", "owner", "--org", "acme"],
        &["disable", "acme"],
    ] {
        let out = cli(&gw, PROVIDER, args).await;
        assert_eq!(out.status, Some(2), "{args:?}: {}", out.stderr);
    }
    // No token anywhere.
    let url = format!("http://{}", gw.admin_addr);
    let out = cli_env(&["--url", &url, "orgs", "list"], &[]).await;
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("KEYGATE_TOKEN"), "{}", out.stderr);
    // Nothing listening.
    let nobody = format!("http://{}", refusing_addr().await);
    let out = cli_env(
        &["--url", &nobody, "--token", PROVIDER, "orgs", "list"],
        &[],
    )
    .await;
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    // Not a URL keygate can call.
    let out = cli_env(
        &["--url", "ftp://x", "--token", PROVIDER, "orgs", "list"],
        &[],
    )
    .await;
    assert_eq!(out.status, Some(2));
}

#[tokio::test]
async fn the_url_and_token_come_from_the_environment() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let url = format!("http://{}", gw.admin_addr);
    let out = cli_env(
        &["orgs", "list", "--json"],
        &[("KEYGATE_ADMIN_URL", &url), ("KEYGATE_TOKEN", PROVIDER)],
    )
    .await;
    assert_eq!(out.json()["orgs"][0]["org"], "acme");
    // A flag wins over its variable.
    let out = cli_env(
        &["--token", "wrong", "orgs", "list"],
        &[("KEYGATE_ADMIN_URL", &url), ("KEYGATE_TOKEN", PROVIDER)],
    )
    .await;
    out.refused("UNAUTHENTICATED");
}

#[tokio::test]
async fn the_readmes_cli_examples_run_as_printed() {
    let gw = Gateway::start().await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .find(|block| block.contains("keygate admin orgs provision"))
        .expect("README.md: the admin CLI's ```sh block");
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_keygate"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // What the quickstart's demo exports, for this gateway.
    let admin = format!("http://{}", gw.admin_addr);
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-e", "-c", block])
        .env("PATH", path)
        .env("KEYGATE_ADMIN", &admin)
        .env("KEYGATE_TOKEN", PROVIDER)
        .env_remove("KEYGATE_ADMIN_URL")
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(120), cmd.output())
        .await
        .expect("the README's block did not end within 120 s")
        .expect("run bash");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("refused with exit status 1"), "{stdout}");
    assert!(stderr.contains("KEY_EXISTS: "), "{stderr}");
    let page = gw.page("acme").await;
    assert_eq!(page["status"], "enabled");
    assert_eq!(page["subscription_expires_at"], Value::Null);
    assert_eq!(page["limits"]["burst"], 20);
    assert_eq!(page["limits"]["rate_per_sec"], 50);
}

#[tokio::test]
async fn an_https_admin_api_is_called_with_its_ca_and_refused_without_it() {
    use std::sync::Arc;

    use keygate::clock::{Clock, ManualClock};
    use keygate::store::{Backend, MemoryBackend};

    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://{up}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\nprovider_token_sha256 = \"{digest}\"\n\n\
         [admin.tls]\ncert_path = {cert:?}\nkey_path = {key:?}\n",
        up = refusing_addr().await,
        digest = keygate::token::TokenDigest::of(PROVIDER).to_hex(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
    );
    let config = keygate::config::Config::from_toml(&toml).unwrap();
    let backend = Arc::new(MemoryBackend::new()) as Arc<dyn Backend>;
    let clock = Arc::new(ManualClock::new(support::T0)) as Arc<dyn Clock>;
    let running = keygate::server::start_with(&config, backend, clock)
        .await
        .unwrap();

    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}", running.admin_addr.port());
        let ca = cert.display().to_string();
        let out = cli_env(
            &[
                "--url",
                &url,
                "--token",
                PROVIDER,
                "--ca-file",
                &ca,
                "orgs",
                "provision",
                host.replace('.', "-").as_str(),
            ],
            &[],
        )
        .await;
        out.ok();
        // The public roots do not know a self-signed certificate: no answer.
        let out = cli_env(&["--url", &url, "--token", PROVIDER, "orgs", "list"], &[]).await;
        assert_eq!(out.status, Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    }
    running.stop().await;
}
