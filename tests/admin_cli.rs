//! `keygate admin ...`, the real binary, against a live keygate: every
//! subcommand, its table and its `--json`, the exit status of a refusal (1,
//! with the contract's code on stderr), of a usage error and of a keygate that
//! is not there (2), and the flags' environment variables; `orgs list
//! --all` across pages; the README's block as printed.

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

/// Runs `keygate admin ARGS` with `env` and nothing else of the caller's,
/// stdin empty (not a terminal).
async fn cli_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    cli_io(args, env, "").await
}

/// Runs `keygate admin ARGS` with `env`, writing `input` to its stdin (a
/// pipe, not a terminal).
async fn cli_io(args: &[&str], env: &[(&str, &str)], input: &str) -> Run {
    use std::process::Stdio;
    use tokio::io::AsyncWriteExt;

    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.arg("admin")
        .args(args)
        .env_remove("KEYGATE_ADMIN_URL")
        .env_remove("KEYGATE_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("run keygate admin");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // A command that reads nothing may exit before the write: a broken pipe
    // then is no failure of the test.
    let _ = stdin.write_all(input.as_bytes()).await;
    drop(stdin);
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("keygate admin did not exit within 60 s")
        .expect("wait for keygate admin");
    Run {
        status: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs `keygate admin --url URL --token TOKEN ARGS`.
async fn cli(gw: &Gateway, token: &str, args: &[&str]) -> Run {
    cli_stdin(gw, token, args, "").await
}

/// Runs `keygate admin --url URL --token TOKEN ARGS` with `input` on stdin.
async fn cli_stdin(gw: &Gateway, token: &str, args: &[&str], input: &str) -> Run {
    let url = format!("http://{}", gw.admin_addr);
    let mut all = vec!["--url", &url, "--token", token];
    all.extend_from_slice(args);
    cli_io(&all, &[], input).await
}

/// The lines of a table's first column, header included.
fn first_column(text: &str) -> Vec<&str> {
    text.lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect()
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
    // whoami: the token's own name, role and org.
    let out = cli(&gw, &token, &["whoami"]).await;
    assert_eq!(out.ok(), "name acme-view\nrole viewer\norg  acme\n");
    // tokens list: the token, never its secret.
    let out = cli(&gw, PROVIDER, &["tokens", "list"]).await;
    let text = out.ok();
    assert_eq!(first_column(text), ["NAME", "acme-view"], "{text}");
    assert!(
        text.lines().nth(1).unwrap().contains("  viewer  acme  "),
        "{text}"
    );
    assert!(!text.contains(&token), "{text}");
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

    // usage: one keyed call in the window.
    let key = gw.page("acme").await["key"].as_str().unwrap().to_owned();
    gw.call(http::Method::GET, "/acme/v1/x", Some(&key))
        .await
        .assert_status(http::StatusCode::OK);
    let out = cli(&gw, PROVIDER, &["usage", "acme"]).await;
    let text = out.ok();
    assert!(text.starts_with("calls in window        1\n"), "{text}");
    assert!(text.contains("\nthreshold calls        100000\n"), "{text}");

    // api-users create (the password on stdin), list, delete.
    let out = cli_stdin(
        &gw,
        PROVIDER,
        &["api-users", "create", "acme", "ops@acme.example"],
        "a password long enough\n",
    )
    .await;
    assert_eq!(out.ok(), "acme: API user ops@acme.example created\n");
    let out = cli(&gw, PROVIDER, &["api-users", "list", "acme"]).await;
    assert_eq!(out.ok(), "USERNAME\nops@acme.example\n");
    let out = cli(
        &gw,
        PROVIDER,
        &["api-users", "delete", "acme", "ops@acme.example"],
    )
    .await;
    assert_eq!(out.ok(), "acme: API user ops@acme.example deleted\n");
    let out = cli(&gw, PROVIDER, &["api-users", "list", "acme"]).await;
    assert_eq!(out.ok(), "USERNAME\n");

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
            "delete_token",
            "create_api_user",
            "delete_api_user"
        ]
    );

    // orgs delete --yes: gone, its audit log still readable.
    let out = cli(&gw, PROVIDER, &["orgs", "delete", "acme", "--yes"]).await;
    assert_eq!(out.ok(), "acme: org deleted\n");
    cli(&gw, PROVIDER, &["key", "show", "acme"])
        .await
        .refused("ORG_NOT_FOUND");
    let out = cli(&gw, PROVIDER, &["audit", "acme"]).await;
    let last = out.ok().lines().last().unwrap().to_owned();
    assert_eq!(last.split_whitespace().nth(2), Some("delete_org"), "{last}");
    let out = cli(&gw, PROVIDER, &["orgs", "list"]).await;
    assert_eq!(first_column(out.ok()), ["ORG"]);
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
async fn whoami_tokens_list_and_usage_print_tables_json_and_refusals() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    gw.provision("other").await;
    let viewer = gw.token("acme-view", "viewer", "acme").await;
    gw.token("acme-admin", "admin", "acme").await;

    // whoami: the provider has no org; --json is the API's answer.
    let out = cli(&gw, PROVIDER, &["whoami"]).await;
    assert_eq!(out.ok(), "name provider\nrole provider\norg  -\n");
    let me = cli(&gw, &viewer, &["whoami", "--json"]).await.json();
    assert_eq!(
        me,
        serde_json::json!({ "name": "acme-view", "role": "viewer", "org": "acme" })
    );
    cli(&gw, "not-a-token", &["whoami"])
        .await
        .refused("UNAUTHENTICATED");

    // tokens list: ordered by name, as the API answers it.
    let out = cli(&gw, PROVIDER, &["tokens", "list"]).await;
    let text = out.ok();
    assert_eq!(
        first_column(text),
        ["NAME", "acme-admin", "acme-view"],
        "{text}"
    );
    assert!(
        text.starts_with("NAME        ROLE    ORG   CREATED AT\n"),
        "{text}"
    );
    let listed = cli(&gw, PROVIDER, &["--json", "tokens", "list"])
        .await
        .json();
    assert_eq!(listed, gw.get("/v1/tokens", Some(PROVIDER)).await.json);
    assert_eq!(listed["tokens"][1]["role"], "viewer");
    cli(&gw, &viewer, &["tokens", "list"])
        .await
        .refused("FORBIDDEN");

    // usage: the org's own, for a viewer too; another org's is refused.
    let out = cli(&gw, &viewer, &["usage", "acme"]).await;
    assert_eq!(
        out.ok(),
        "calls in window        0\n\
         threshold calls        100000\n\
         window started at      -\n\
         window ends at         -\n\
         last used at           -\n\
         rate limited in window 0\n"
    );
    let usage = cli(&gw, PROVIDER, &["usage", "acme", "--json"])
        .await
        .json();
    assert_eq!(
        usage,
        gw.get("/v1/orgs/acme/usage", Some(PROVIDER)).await.json
    );
    cli(&gw, &viewer, &["usage", "other"])
        .await
        .refused("FORBIDDEN");
    cli(&gw, PROVIDER, &["usage", "nobody"])
        .await
        .refused("ORG_NOT_FOUND");
}

#[tokio::test]
async fn api_users_read_the_password_from_stdin_and_answer_with_the_contracts_codes() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let admin = gw.token("acme-admin", "admin", "acme").await;
    let viewer = gw.token("acme-view", "viewer", "acme").await;
    let create = ["api-users", "create", "acme", "alice"];

    // No password on stdin: a usage error, nothing sent.
    let out = cli(&gw, &admin, &create).await;
    assert_eq!(out.status, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("no password on stdin"),
        "{}",
        out.stderr
    );
    // The API's refusals: a weak password, a viewer.
    cli_stdin(&gw, &admin, &create, "too short\n")
        .await
        .refused("WEAK_PASSWORD");
    cli_stdin(&gw, &viewer, &create, "a password long enough\n")
        .await
        .refused("FORBIDDEN");
    let listed = cli(&gw, PROVIDER, &["api-users", "list", "acme", "--json"])
        .await
        .json();
    assert_eq!(listed, serde_json::json!({ "api_users": [] }));

    // An admin creates; --json prints the 201's answer.
    let made = cli_stdin(
        &gw,
        &admin,
        &["--json", "api-users", "create", "acme", "alice"],
        "a password long enough\n",
    )
    .await
    .json();
    assert_eq!(
        made,
        serde_json::json!({ "org": "acme", "username": "alice" })
    );
    cli_stdin(&gw, &admin, &create, "another long password\n")
        .await
        .refused("API_USER_EXISTS");
    cli_stdin(
        &gw,
        &admin,
        &["api-users", "create", "acme", "bob"],
        "bob's password 1\n",
    )
    .await
    .ok();

    // A viewer lists (a table of names, or the API's JSON).
    let out = cli(&gw, &viewer, &["api-users", "list", "acme"]).await;
    assert_eq!(out.ok(), "USERNAME\nalice\nbob\n");
    let listed = cli(&gw, &viewer, &["--json", "api-users", "list", "acme"])
        .await
        .json();
    assert_eq!(
        listed,
        gw.get("/v1/orgs/acme/api-users", Some(PROVIDER)).await.json
    );

    // Delete: a sentence, or nothing with --json; then it is not there.
    let out = cli(&gw, &admin, &["api-users", "delete", "acme", "alice"]).await;
    assert_eq!(out.ok(), "acme: API user alice deleted\n");
    let out = cli(
        &gw,
        &admin,
        &["--json", "api-users", "delete", "acme", "bob"],
    )
    .await;
    assert_eq!(out.ok(), "");
    cli(&gw, &admin, &["api-users", "delete", "acme", "alice"])
        .await
        .refused("API_USER_NOT_FOUND");
    cli(&gw, &viewer, &["api-users", "delete", "acme", "alice"])
        .await
        .refused("FORBIDDEN");
}

#[tokio::test]
async fn orgs_delete_needs_yes_where_nobody_can_be_asked() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    gw.provision("other").await;
    let admin = gw.token("acme-admin", "admin", "acme").await;

    // stdin is a pipe here, not a terminal: refused with 2, nothing deleted,
    // whatever is typed.
    for input in ["", "acme\n", "y\n"] {
        let out = cli_stdin(&gw, PROVIDER, &["orgs", "delete", "acme"], input).await;
        assert_eq!(out.status, Some(2), "{}", out.stderr);
        assert!(out.stderr.contains("--yes"), "{}", out.stderr);
        assert_eq!(out.stdout, "");
    }
    assert_eq!(gw.page("acme").await["org"], "acme");

    // With --yes: deleted, with its tokens.
    let out = cli(&gw, PROVIDER, &["orgs", "delete", "acme", "--yes"]).await;
    assert_eq!(out.ok(), "acme: org deleted\n");
    gw.get("/v1/orgs/acme/key", Some(PROVIDER))
        .await
        .assert_refused(http::StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
    cli(&gw, &admin, &["whoami"])
        .await
        .refused("UNAUTHENTICATED");
    // Again: the API's refusal.
    cli(&gw, PROVIDER, &["orgs", "delete", "acme", "--yes"])
        .await
        .refused("ORG_NOT_FOUND");
    // --json: a 204 prints nothing.
    let out = cli(
        &gw,
        PROVIDER,
        &["--json", "orgs", "delete", "other", "--yes"],
    )
    .await;
    assert_eq!(out.ok(), "");
    let list = cli(&gw, PROVIDER, &["orgs", "list", "--json"]).await.json();
    assert_eq!(list, serde_json::json!({ "orgs": [], "next": null }));
}

#[tokio::test]
async fn orgs_list_pages_filters_and_follows_next_to_the_end_with_all() {
    let gw = Gateway::start().await;
    let ids: Vec<String> = (1..=7).map(|i| format!("org-{i}")).collect();
    for id in &ids {
        gw.provision(id).await;
    }
    gw.disable("org-2", "r").await;
    gw.disable("org-5", "r").await;
    let everything = gw.get("/v1/orgs?limit=1000", Some(PROVIDER)).await.json;
    assert_eq!(everything["orgs"].as_array().unwrap().len(), 7);

    // One page: the first 3, and nothing on stderr (not a terminal).
    let out = cli(&gw, PROVIDER, &["orgs", "list", "--limit", "3"]).await;
    assert_eq!(first_column(out.ok()), ["ORG", "org-1", "org-2", "org-3"]);
    assert_eq!(out.stderr, "");
    let page = cli(&gw, PROVIDER, &["orgs", "list", "--limit", "3", "--json"])
        .await
        .json();
    assert_eq!(page["next"], "org-3");
    let page = cli(
        &gw,
        PROVIDER,
        &["orgs", "list", "--limit", "3", "--after", "org-3", "--json"],
    )
    .await
    .json();
    let orgs: Vec<&str> = page["orgs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["org"].as_str().unwrap())
        .collect();
    assert_eq!(
        (orgs, &page["next"]),
        (vec!["org-4", "org-5", "org-6"], &serde_json::json!("org-6"))
    );

    // --all: three pages of 3, 3 and 1 in one table, stderr still empty.
    let out = cli(&gw, PROVIDER, &["orgs", "list", "--all", "--limit", "3"]).await;
    let mut expected = vec!["ORG"];
    expected.extend(ids.iter().map(String::as_str));
    assert_eq!(first_column(out.ok()), expected);
    assert_eq!(out.stderr, "");
    // --all --json: every org as the API answers it, in one document.
    let all = cli(
        &gw,
        PROVIDER,
        &["orgs", "list", "--all", "--limit", "2", "--json"],
    )
    .await
    .json();
    assert_eq!(all, everything);
    // The filters hold on every page.
    let out = cli(
        &gw,
        PROVIDER,
        &[
            "orgs", "list", "--all", "--limit", "1", "--status", "disabled",
        ],
    )
    .await;
    assert_eq!(first_column(out.ok()), ["ORG", "org-2", "org-5"]);
    let out = cli(
        &gw,
        PROVIDER,
        &[
            "orgs", "list", "--all", "--limit", "1", "--after", "org-5", "--q", "org",
        ],
    )
    .await;
    assert_eq!(first_column(out.ok()), ["ORG", "org-6", "org-7"]);
    // A limit the API does not take: its refusal, with or without --all.
    for args in [
        &["orgs", "list", "--limit", "0"][..],
        &["orgs", "list", "--all", "--limit", "1001"],
    ] {
        cli(&gw, PROVIDER, args).await.refused("BAD_REQUEST");
    }
    // A status clap does not know: a usage error.
    let out = cli(&gw, PROVIDER, &["orgs", "list", "--status", "gone"]).await;
    assert_eq!(out.status, Some(2), "{}", out.stderr);
}

#[tokio::test]
async fn health_ready_metrics_and_openapi_need_no_token() {
    let gw = Gateway::start().await;
    gw.provision("acme").await;
    let url = format!("http://{}", gw.admin_addr);
    let anon = |args: &'static [&'static str]| {
        let url = url.clone();
        async move {
            let mut all = vec!["--url", url.as_str()];
            all.extend_from_slice(args);
            cli_env(&all, &[]).await
        }
    };
    assert_eq!(anon(&["health"]).await.ok(), "ok\n");
    assert_eq!(anon(&["ready"]).await.ok(), "ready\n");
    assert_eq!(
        anon(&["ready", "--json"]).await.json(),
        serde_json::json!({ "status": "ready" })
    );
    let metrics = anon(&["metrics"]).await;
    assert!(
        metrics.ok().contains("\nkeygate_orgs 1\n"),
        "{}",
        metrics.stdout
    );
    let doc = anon(&["openapi"]).await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    assert_eq!(doc, anon(&["openapi", "--json"]).await.json());
    // A call that needs a token still says so.
    let out = anon(&["whoami"]).await;
    assert_eq!(out.status, Some(2));
    assert!(out.stderr.contains("KEYGATE_TOKEN"), "{}", out.stderr);

    // A node that does not serve: `ready` exits 1 with NOT_READY, and a
    // call without a token sends no Authorization header. (A stand-in for
    // the admin API: the recording upstream, answering as a node without
    // its lease does.)
    let standin = support::Upstream::start().await;
    standin.answer_with(support::Answer {
        status: http::StatusCode::SERVICE_UNAVAILABLE,
        headers: vec![("content-type", "application/json")],
        body: bytes::Bytes::from_static(
            br#"{"code":"NOT_READY","message":"this node is not serving"}"#,
        ),
        delay: None,
    });
    let out = cli_env(
        &["--url", &format!("http://{}", standin.addr), "ready"],
        &[],
    )
    .await;
    out.refused("NOT_READY");
    let seen = standin.only();
    assert_eq!(seen.uri, "/readyz");
    assert!(seen.headers.get("authorization").is_none(), "{seen:?}");
}

/// `keygate admin` as `src/main.rs` parses it.
#[derive(clap::Parser)]
struct AdminCli {
    #[command(flatten)]
    admin: keygate::cli::admin::AdminArgs,
}

/// Runs `keygate admin ARGS` in this process as if stdin and stderr were a
/// terminal, with `typed` on stdin: its exit status, stdout and stderr.
async fn on_a_terminal(gw: &Gateway, args: &[&str], typed: &str) -> (u8, String, String) {
    use clap::Parser;

    let url = format!("http://{}", gw.admin_addr);
    let argv = ["keygate-admin", "--url", &url, "--token", PROVIDER]
        .into_iter()
        .chain(args.iter().copied());
    let args = AdminCli::try_parse_from(argv).unwrap().admin;
    let mut input = std::io::Cursor::new(typed.as_bytes().to_vec());
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut console = keygate::cli::admin::Console {
        input: &mut input,
        out: &mut out,
        err: &mut err,
        stdin_is_terminal: true,
        stderr_is_terminal: true,
    };
    let status = keygate::cli::admin::run(args, &mut console).await;
    (
        status,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[tokio::test]
async fn on_a_terminal_paging_shows_progress_and_hints_and_a_deletion_asks() {
    let gw = Gateway::start().await;
    for i in 1..=5 {
        gw.provision(&format!("org-{i}")).await;
    }

    // --all: a progress line after each page but the last, wiped at the end.
    let (status, out, err) =
        on_a_terminal(&gw, &["orgs", "list", "--all", "--limit", "2"], "").await;
    assert_eq!(status, 0, "{err}");
    assert_eq!(
        first_column(&out),
        ["ORG", "org-1", "org-2", "org-3", "org-4", "org-5"]
    );
    assert_eq!(
        err,
        "\rorgs list --all: 2 orgs so far\rorgs list --all: 4 orgs so far\r\x1b[2K"
    );
    // One page that is not the last: how to see the next.
    let (status, out, err) = on_a_terminal(&gw, &["orgs", "list", "--limit", "2"], "").await;
    assert_eq!((status, first_column(&out).len()), (0, 3));
    assert_eq!(
        err,
        "(more orgs: --after org-2 for the next page, or --all for every one)\n"
    );
    // The last page, or --json (which carries `next`): no hint.
    let (_, _, err) = on_a_terminal(&gw, &["orgs", "list", "--after", "org-3"], "").await;
    assert_eq!(err, "");
    let (_, _, err) = on_a_terminal(&gw, &["orgs", "list", "--limit", "2", "--json"], "").await;
    assert_eq!(err, "");

    // orgs delete asks for the org's id: anything else leaves it.
    for typed in ["y\n", "org-\n", ""] {
        let (status, out, err) = on_a_terminal(&gw, &["orgs", "delete", "org-1"], typed).await;
        assert_eq!((status, out.as_str()), (2, ""), "{typed:?}: {err}");
        assert!(
            err.starts_with("Delete org org-1 with its key, tokens and API users? "),
            "{err}"
        );
        assert!(
            err.ends_with("not confirmed; org-1 is left as it was\n"),
            "{err}"
        );
    }
    assert_eq!(gw.page("org-1").await["org"], "org-1");
    let (status, out, _) = on_a_terminal(&gw, &["orgs", "delete", "org-1"], "org-1\n").await;
    assert_eq!((status, out.as_str()), (0, "org-1: org deleted\n"));
    gw.get("/v1/orgs/org-1/key", Some(PROVIDER))
        .await
        .assert_refused(http::StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
    // A password is never read from a terminal: nothing is sent.
    let (status, _, err) = on_a_terminal(
        &gw,
        &["api-users", "create", "org-2", "alice"],
        "a password long enough\n",
    )
    .await;
    assert_eq!(status, 2, "{err}");
    let users = gw
        .get("/v1/orgs/org-2/api-users", Some(PROVIDER))
        .await
        .json;
    assert_eq!(users["api_users"], serde_json::json!([]));
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
    // The token, the API user and the scratch org it made are gone again.
    let tokens = gw.get("/v1/tokens", Some(PROVIDER)).await.json;
    assert_eq!(tokens["tokens"], serde_json::json!([]));
    let users = gw.get("/v1/orgs/acme/api-users", Some(PROVIDER)).await.json;
    assert_eq!(users["api_users"], serde_json::json!([]));
    let audit = gw.get("/v1/orgs/acme/audit", Some(PROVIDER)).await.json;
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "create_api_user"),
        "{audit}"
    );
    gw.get("/v1/orgs/scratch/key", Some(PROVIDER))
        .await
        .assert_refused(http::StatusCode::NOT_FOUND, "ORG_NOT_FOUND");
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
