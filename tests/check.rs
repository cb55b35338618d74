//! `keygate check --config PATH`, the real binary: its exit status and its
//! lines for a sound store, a file keygate would refuse, a store a running
//! keygate holds, and a config it cannot read. The damaged-audit case, which
//! needs a store with history, is in `crash.rs`.

use std::process::{Command, ExitStatus};
use std::time::Duration;

#[path = "support/child.rs"]
mod child;

use child::{serve_command, Env, Proc};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `keygate check --config config` to its end: status, stdout, stderr.
async fn check(config: &std::path::Path) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(child::BIN);
    cmd.args(["check", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("KEYGATE_LOG");
    let mut proc = Proc::spawn("keygate check", cmd);
    let status = proc.wait_exit(LIMIT).await;
    (status, proc.stdout(), proc.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_keygate_made_and_closed_is_sound_exit_0() {
    let env = Env::new("").await;
    let mut gw = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
    gw.listening(LIMIT).await;
    gw.signal("TERM");
    assert!(gw.wait_exit(LIMIT).await.success());

    let (status, stdout, stderr) = check(&env.config).await;
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&env.store.display().to_string()) && stderr.contains("no problems"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_is_not_a_store_is_one_line_naming_it_exit_1_and_is_left_alone() {
    let env = Env::new("").await;
    std::fs::create_dir_all(env.store.parent().unwrap()).unwrap();
    let bytes = b"this is not a redb file, whatever its name says".repeat(100);
    std::fs::write(&env.store, &bytes).unwrap();

    let (status, stdout, stderr) = check(&env.config).await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].contains(&env.store.display().to_string()) && lines[0].contains("redb"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&env.store).unwrap(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_a_running_keygate_holds_cannot_be_checked_exit_2() {
    let env = Env::new("").await;
    let mut gw = Proc::spawn("keygate serve", serve_command(&env.config, "info"));
    gw.listening(LIMIT).await;

    let (status, stdout, stderr) = check(&env.config).await;
    assert_eq!(status.code(), Some(2), "{stdout}\n{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("already open"), "{stderr}");

    gw.signal("TERM");
    assert!(gw.wait_exit(LIMIT).await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_it_cannot_read_is_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("missing.toml");
    let (status, stdout, stderr) = check(&config).await;
    assert_eq!(status.code(), Some(2), "{stdout}\n{stderr}");
    assert_eq!(stdout, "");
    assert!(stderr.contains("missing.toml"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_user_whose_password_digest_is_not_argon2id_is_one_line_naming_org_and_user_exit_1()
{
    let env = Env::new("").await;
    let dir = tempfile::tempdir().unwrap();
    let orgs = dir.path().join("orgs");
    std::fs::write(&orgs, "acme\n").unwrap();
    let mut cmd = Command::new(child::BIN);
    cmd.args(["import", "--config"])
        .arg(&env.config)
        .arg(&orgs)
        .env_remove("RUST_LOG");
    let mut import = Proc::spawn("keygate import", cmd);
    assert!(import.wait_exit(LIMIT).await.success());
    // A record as a hand edit or a foreign writer would leave it: a
    // plaintext where the digest belongs.
    {
        let db = redb::Database::open(&env.store).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let users: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("api_users");
            let mut t = txn.open_table(users).unwrap();
            let record = serde_json::json!({"org": "acme", "username": "ops",
                "password_digest": "hunter2hunter2", "created_at": "2026-11-30T00:00:00Z"});
            t.insert("acme/ops", record.to_string().as_bytes()).unwrap();
        }
        txn.commit().unwrap();
    }

    let (status, stdout, stderr) = check(&env.config).await;
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: table api_users: user \"ops\" of org acme: its password digest is not a PHC string\n",
            env.store.display()
        )
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(stderr.contains("1 orgs, 0 tokens, 1 API users"), "{stderr}");
}
