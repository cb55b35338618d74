//! `keygate check-config --config PATH`, the real binary: a valid file passes
//! with exit status 0 and nothing created, an invalid one fails with exit
//! status 2 and one line naming the key, and so does a file it cannot read.

use std::process::{Command, ExitStatus};
use std::time::Duration;

#[path = "support/child.rs"]
mod child;

use child::{Env, Proc};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `keygate check-config --config config` to its end.
async fn check_config(config: &std::path::Path) -> (ExitStatus, String, String) {
    let mut cmd = Command::new(child::BIN);
    cmd.args(["check-config", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("KEYGATE_LOG")
        .env_remove("KEYGATE_PROVIDER_TOKEN_SHA256");
    let mut proc = Proc::spawn("keygate check-config", cmd);
    let status = proc.wait_exit(LIMIT).await;
    (status, proc.stdout(), proc.stderr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_config_exits_0_and_starts_nothing() {
    let env = Env::new("").await;
    let (status, stdout, stderr) = check_config(&env.config).await;
    assert_eq!(status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, format!("{}: ok\n", env.config.display()));
    // Nothing was opened or created: not the store, not its folder.
    assert!(!env.store.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_value_exits_2_with_one_line_naming_the_key() {
    let env = Env::new("").await;
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.replace("upstream = \"http://", "upstream = \"ftp://");
    std::fs::write(&env.config, text).unwrap();
    let (status, stdout, _) = check_config(&env.config).await;
    assert_eq!(status.code(), Some(2));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("config: proxy.upstream: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_and_a_syntax_error_exit_2() {
    let env = Env::new("[limits]\nrate_per_second = 5\n").await;
    let (status, stdout, _) = check_config(&env.config).await;
    assert_eq!(status.code(), Some(2));
    assert!(stdout.contains("limits"), "{stdout}");
    assert!(stdout.contains("rate_per_second"), "{stdout}");

    std::fs::write(&env.config, "[proxy\nlisten = 1\n").unwrap();
    let (status, stdout, _) = check_config(&env.config).await;
    assert_eq!(status.code(), Some(2));
    assert!(stdout.starts_with("config: line 1"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_level_that_is_not_one_exits_2_naming_the_key() {
    let env = Env::new("[log]\nlevel = \"inf\"\n").await;
    let (status, stdout, _) = check_config(&env.config).await;
    assert_eq!(status.code(), Some(2));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("config: log.level: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_exits_2_naming_it() {
    let env = Env::new("").await;
    let missing = env.config.with_file_name("nope.toml");
    let (status, stdout, _) = check_config(&missing).await;
    assert_eq!(status.code(), Some(2));
    assert!(stdout.contains("nope.toml"), "{stdout}");
}
