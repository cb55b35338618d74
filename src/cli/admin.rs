//! `keygate admin ...`: one subcommand per admin API call.
//!
//! Each subcommand makes its call and prints the answer: a table for people by
//! default, the API's JSON as it came with `--json`. The exit status is for
//! scripts: 0 when the API answered 2xx, 1 when it refused (the contract's code
//! and message on stderr, `CODE: message`), 2 for a usage error (clap's own,
//! or a deletion not confirmed, or no password on stdin) or when no answer
//! came (connection refused, timeout, bad URL).
//!
//! Progress and hints go to stderr only when it is a terminal, and a
//! question (`orgs delete` without `--yes`) is asked only when stdin is one:
//! a script sees an empty stderr for exit 0, and is never waited on.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::call::{orgs_page, request};
use super::client::{AdminClient, Answer};
use super::show::{self, Shape};

/// `keygate admin`: where the admin API is, who calls it, and the call.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API's base URL.
    #[arg(
        long,
        env = "KEYGATE_ADMIN_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    pub url: String,
    /// The bearer token: the provider's, or an admin or viewer token. Every
    /// call but health, ready, metrics and openapi needs one.
    #[arg(long, env = "KEYGATE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// For an https URL: a PEM file of the CA certificates to trust instead of
    /// the public roots compiled into keygate.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// Print the API's JSON answer as it came, instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// The call.
    #[command(subcommand)]
    pub call: Call,
}

/// One admin API call.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Call {
    /// Orgs: list, provision or delete (provider).
    #[command(subcommand)]
    Orgs(OrgsCall),
    /// An org's key: show, add, edit, regenerate, delete.
    #[command(subcommand)]
    Key(KeyCall),
    /// Disable an org's key (provider).
    Disable {
        /// The org.
        org: String,
        /// Why; shown on the key page and in the audit log.
        #[arg(long)]
        reason: String,
    },
    /// Enable an org's key; its threshold count starts afresh (provider).
    Enable {
        /// The org.
        org: String,
    },
    /// Set or clear the end of an org's subscription (provider).
    #[command(subcommand)]
    Subscription(SubscriptionCall),
    /// Override an org's limits; those not given stay as they are (provider).
    Limits {
        /// The org.
        org: String,
        /// The limits to set.
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Admin and viewer tokens: list, create, rotate or delete (provider).
    #[command(subcommand)]
    Tokens(TokensCall),
    /// An org's audit log, oldest first.
    Audit {
        /// The org.
        org: String,
    },
    /// An org's calls in its threshold window, its key's last use and its
    /// rate refusals.
    Usage {
        /// The org.
        org: String,
    },
    /// An org's API users, who log in with the session login: list, create
    /// or delete.
    #[command(subcommand)]
    ApiUsers(ApiUsersCall),
    /// The token's own name, role and org.
    Whoami,
    /// Whether the admin API answers (no token needed).
    Health,
    /// Whether this node serves proxied requests: exit 0 when it does, 1
    /// with NOT_READY when it does not (no token needed).
    Ready,
    /// The Prometheus metrics, as the API sent them (no token needed).
    Metrics,
    /// The admin API's OpenAPI 3.1 document, as the API sent it (no token
    /// needed).
    Openapi,
}

impl Call {
    /// Whether the call is made without a token: the probes and documents a
    /// load balancer or a scraper reads.
    fn anonymous(&self) -> bool {
        matches!(
            self,
            Call::Health | Call::Ready | Call::Metrics | Call::Openapi
        )
    }
}

/// `keygate admin orgs ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum OrgsCall {
    /// The orgs' key pages, ordered by id, a page at a time (100 unless
    /// --limit says), or every page with --all.
    List(ListFlags),
    /// Create an org with a random, enabled key.
    Provision {
        /// The org id: 1 to 64 of a-z, 0-9 and '-', starting with a letter or digit.
        org: String,
        /// When its subscription ends (RFC 3339); none by default.
        #[arg(long)]
        expires_at: Option<String>,
        /// Its own limits; the configured defaults otherwise.
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Delete an org with its key, its tokens and its API users, at once
    /// (its audit log stays readable by the provider). Asks first.
    Delete {
        /// The org.
        org: String,
        /// Do not ask. Without it the org's id is asked for on a terminal,
        /// and elsewhere (a script, a pipe) the deletion is refused with
        /// exit status 2.
        #[arg(long)]
        yes: bool,
    },
}

/// `keygate admin orgs list`'s flags: the API's paging and filters.
#[derive(Debug, Args, Default)]
pub struct ListFlags {
    /// At most this many orgs a page: 1 to 1000 (the API's default 100).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only the orgs after this id (a page's `next`).
    #[arg(long, value_name = "ORG")]
    pub after: Option<String>,
    /// Only the orgs whose id contains this text.
    #[arg(long, value_name = "TEXT")]
    pub q: Option<String>,
    /// Only the orgs whose key is enabled or disabled.
    #[arg(long, value_parser = ["enabled", "disabled"])]
    pub status: Option<String>,
    /// Follow each page's `next` to the end and show every org: one table,
    /// or with --json one `{"orgs": [...], "next": null}` of all the
    /// pages' orgs as they came.
    #[arg(long)]
    pub all: bool,
}

/// `keygate admin key ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum KeyCall {
    /// The org's key page (masked for a viewer token).
    Show {
        /// The org.
        org: String,
    },
    /// Add a random key to an org that has none.
    Add {
        /// The org.
        org: String,
    },
    /// Set the org's key: exactly 12 of A-Z, a-z, 0-9.
    Edit {
        /// The org.
        org: String,
        /// The new key.
        key: String,
    },
    /// Replace the org's key with a random one.
    Regenerate {
        /// The org.
        org: String,
    },
    /// Delete the org's key.
    Delete {
        /// The org.
        org: String,
    },
}

/// `keygate admin subscription ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum SubscriptionCall {
    /// The subscription ends at AT.
    Set {
        /// The org.
        org: String,
        /// RFC 3339, e.g. 2027-01-01T00:00:00Z.
        at: String,
    },
    /// The subscription does not end.
    Clear {
        /// The org.
        org: String,
    },
}

/// `keygate admin tokens ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum TokensCall {
    /// Every token's name, role, org and creation time (never a token).
    List,
    /// Create a token; it is printed this once.
    Create {
        /// Its name: 1 to 64 of A-Z, a-z, 0-9, '.', '_' and '-'.
        name: String,
        /// admin (reads the org, changes its key) or viewer (reads it).
        #[arg(long, value_parser = ["admin", "viewer"])]
        role: String,
        /// The org it is for.
        #[arg(long)]
        org: String,
    },
    /// Delete a token; it is refused from then on.
    Delete {
        /// Its name.
        name: String,
    },
    /// Give a token a new secret, printed this once; the old one is refused
    /// from then on.
    Rotate {
        /// Its name.
        name: String,
    },
}

/// `keygate admin api-users ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum ApiUsersCall {
    /// The org's API users' names.
    List {
        /// The org.
        org: String,
    },
    /// Create an API user. The password (at least 12 characters) is read
    /// from stdin, its first line, never from an argument.
    Create {
        /// The org.
        org: String,
        /// The username: 1 to 128 visible ASCII characters.
        username: String,
    },
    /// Delete an API user; its sessions end at once.
    Delete {
        /// The org.
        org: String,
        /// The username.
        username: String,
    },
}

/// The four limits, each optional.
#[derive(Debug, Args, Default)]
pub struct LimitFlags {
    /// Sustained calls per second, then 429.
    #[arg(long)]
    pub rate_per_sec: Option<u64>,
    /// Calls allowed at once before the rate applies.
    #[arg(long)]
    pub burst: Option<u64>,
    /// More calls than this within the window disable the key.
    #[arg(long)]
    pub threshold_calls: Option<u64>,
    /// The threshold window, in seconds.
    #[arg(long)]
    pub threshold_window_secs: Option<u64>,
}

/// The exit status for a call the API answered with 2xx.
pub const OK: u8 = 0;
/// The exit status for a call the API refused.
pub const REFUSED: u8 = 1;
/// The exit status for a usage error or a call that got no answer.
pub const NO_ANSWER: u8 = 2;

/// What a run reads and writes besides the network.
pub struct Console<'a> {
    /// Where a confirmation or a password is read.
    pub input: &'a mut dyn BufRead,
    /// Where answers go.
    pub out: &'a mut dyn Write,
    /// Where refusals and errors go, and on a terminal prompts and progress.
    pub err: &'a mut dyn Write,
    /// Whether stdin is a terminal, where a person can be asked.
    pub stdin_is_terminal: bool,
    /// Whether stderr is a terminal: progress and hints are written only
    /// then, so a script's stderr stays empty on success.
    pub stderr_is_terminal: bool,
}

impl std::fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("stdin_is_terminal", &self.stdin_is_terminal)
            .field("stderr_is_terminal", &self.stderr_is_terminal)
            .finish_non_exhaustive()
    }
}

/// Runs `args` on a runtime of its own over the process's standard streams
/// and returns the exit status.
pub fn main(args: AdminArgs) -> u8 {
    use std::io::IsTerminal;

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keygate admin: cannot start the runtime: {e}");
            return NO_ANSWER;
        }
    };
    let stdin_is_terminal = std::io::stdin().is_terminal();
    let stderr_is_terminal = std::io::stderr().is_terminal();
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let mut console = Console {
        input: &mut input,
        out: &mut out,
        err: &mut err,
        stdin_is_terminal,
        stderr_is_terminal,
    };
    runtime.block_on(run(args, &mut console))
}

/// Makes the call `args` names, writes its answer to the console's `out`
/// (or its refusal to `err`) and returns the exit status.
pub async fn run(args: AdminArgs, console: &mut Console<'_>) -> u8 {
    let token = args.token.as_deref().filter(|t| !t.is_empty());
    if token.is_none() && !args.call.anonymous() {
        let _ = writeln!(
            console.err,
            "keygate admin: no token: pass --token or set KEYGATE_TOKEN"
        );
        return NO_ANSWER;
    }
    // Settled before any call: a deletion not confirmed or a missing
    // password changes nothing.
    let password = match prepare(&args.call, console) {
        Ok(p) => p,
        Err(status) => return status,
    };
    let client = match AdminClient::new(&args.url, token, args.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(console.err, "keygate admin: {e}");
            return NO_ANSWER;
        }
    };
    if let Call::Orgs(OrgsCall::List(flags)) = &args.call {
        if flags.all {
            return list_all(&client, flags, args.json, console).await;
        }
    }
    let req = request(&args.call, password.as_deref().unwrap_or(""));
    let answer = match client.call(req.method, &req.path, req.body.as_ref()).await {
        Ok(answer) => answer,
        Err(e) => {
            let _ = writeln!(console.err, "keygate admin: {e}");
            return NO_ANSWER;
        }
    };
    let status = show(&answer, &req.shape, args.json, console);
    if status == OK && !args.json && console.stderr_is_terminal {
        if let Call::Orgs(OrgsCall::List(_)) = &args.call {
            more_hint(&answer, console);
        }
    }
    status
}

/// What must be settled before the call: an org deletion's confirmation
/// and an API user's password. `Err` holds the exit status.
fn prepare(call: &Call, console: &mut Console<'_>) -> Result<Option<String>, u8> {
    match call {
        Call::Orgs(OrgsCall::Delete { org, yes: false }) => confirm(org, console).map(|()| None),
        Call::ApiUsers(ApiUsersCall::Create { .. }) => password(console).map(Some),
        _ => Ok(None),
    }
}

/// Asks on a terminal for the org's id before deleting it; refuses where
/// nobody can be asked.
fn confirm(org: &str, c: &mut Console<'_>) -> Result<(), u8> {
    if !c.stdin_is_terminal {
        let _ = writeln!(
            c.err,
            "keygate admin: orgs delete {org}: not confirmed; pass --yes (stdin is not a terminal to ask on)"
        );
        return Err(NO_ANSWER);
    }
    let _ = write!(
        c.err,
        "Delete org {org} with its key, tokens and API users? Type its id to confirm: "
    );
    let _ = c.err.flush();
    let mut line = String::new();
    match c.input.read_line(&mut line) {
        Ok(_) if line.trim_end_matches(['\r', '\n']) == org => Ok(()),
        _ => {
            let _ = writeln!(
                c.err,
                "keygate admin: not confirmed; {org} is left as it was"
            );
            Err(NO_ANSWER)
        }
    }
}

/// The API user's password: stdin's first line, without its line end.
fn password(c: &mut Console<'_>) -> Result<String, u8> {
    if c.stdin_is_terminal {
        // A terminal would echo it, and an argument would show in `ps`.
        let _ = writeln!(
            c.err,
            "keygate admin: api-users create reads the password from stdin; pipe it in, e.g. \
             printf '%s\\n' \"$PASSWORD\" | keygate admin api-users create ORG USERNAME"
        );
        return Err(NO_ANSWER);
    }
    let mut line = String::new();
    if let Err(e) = c.input.read_line(&mut line) {
        let _ = writeln!(c.err, "keygate admin: reading the password from stdin: {e}");
        return Err(NO_ANSWER);
    }
    let password = line
        .strip_suffix('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .unwrap_or(&line);
    if password.is_empty() {
        let _ = writeln!(
            c.err,
            "keygate admin: api-users create: no password on stdin"
        );
        return Err(NO_ANSWER);
    }
    Ok(password.to_owned())
}

/// One page of `GET /v1/orgs`, each org's JSON kept as it came.
#[derive(Deserialize)]
struct OrgsPage {
    orgs: Vec<Box<RawValue>>,
    next: Option<String>,
}

/// `orgs list --all`: follows `next` from page to page and shows every org
/// at the end, in one table or one JSON document.
async fn list_all(
    client: &AdminClient,
    flags: &ListFlags,
    as_json: bool,
    c: &mut Console<'_>,
) -> u8 {
    let mut orgs: Vec<Box<RawValue>> = Vec::new();
    let mut after = flags.after.clone();
    let mut progress = false;
    let status = loop {
        let answer = match client
            .call(http::Method::GET, &orgs_page(flags, after.as_deref()), None)
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                clear(progress, c);
                let _ = writeln!(c.err, "keygate admin: {e}");
                break NO_ANSWER;
            }
        };
        if !answer.status.is_success() {
            clear(progress, c);
            break refusal(&answer, as_json, c);
        }
        let Ok(page) = serde_json::from_slice::<OrgsPage>(&answer.body) else {
            clear(progress, c);
            let _ = writeln!(
                c.err,
                "keygate admin: the API answered {} without an org list",
                answer.status
            );
            break NO_ANSWER;
        };
        orgs.extend(page.orgs);
        match page.next {
            None => {
                clear(progress, c);
                break OK;
            }
            // Ids only grow from page to page; a `next` that does not would
            // send this loop round forever.
            Some(next) if after.as_ref().is_some_and(|a| next <= *a) => {
                clear(progress, c);
                let _ = writeln!(
                    c.err,
                    "keygate admin: the API's next page ({next}) is not after the last one"
                );
                break NO_ANSWER;
            }
            Some(next) => {
                if c.stderr_is_terminal {
                    let _ = write!(c.err, "\rorgs list --all: {} orgs so far", orgs.len());
                    let _ = c.err.flush();
                    progress = true;
                }
                after = Some(next);
            }
        }
    };
    if status != OK {
        return status;
    }
    let written = if as_json {
        let items: Vec<&str> = orgs.iter().map(|o| o.get()).collect();
        writeln!(c.out, "{{\"orgs\":[{}],\"next\":null}}", items.join(","))
    } else {
        let values: Vec<Value> = orgs
            .iter()
            .filter_map(|o| serde_json::from_str(o.get()).ok())
            .collect();
        show::orgs(&values, c.out)
    };
    finish(written, c)
}

/// Wipes the progress line, if one was written.
fn clear(progress: bool, c: &mut Console<'_>) {
    if progress {
        let _ = write!(c.err, "\r\x1b[2K");
        let _ = c.err.flush();
    }
}

/// After one page of orgs, on a terminal: how to see the next.
fn more_hint(answer: &Answer, c: &mut Console<'_>) {
    let next = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v["next"].as_str().map(str::to_owned));
    if let Some(next) = next {
        let _ = writeln!(
            c.err,
            "(more orgs: --after {next} for the next page, or --all for every one)"
        );
    }
}

/// Prints an answer and returns the exit status.
fn show(answer: &Answer, shape: &Shape, as_json: bool, c: &mut Console<'_>) -> u8 {
    if !answer.status.is_success() {
        return refusal(answer, as_json, c);
    }
    let written = if as_json {
        show::raw(&answer.body, c.out)
    } else if shape.needs_json() {
        match serde_json::from_slice::<Value>(&answer.body) {
            Ok(v) => show::human(shape, &v, &answer.body, c.out),
            Err(_) => {
                let _ = writeln!(
                    c.err,
                    "keygate admin: the API answered {} without JSON",
                    answer.status
                );
                return NO_ANSWER;
            }
        }
    } else {
        show::human(shape, &Value::Null, &answer.body, c.out)
    };
    finish(written, c)
}

/// A refusal: `CODE: message` on stderr (with `--json`, its JSON on stdout
/// too), exit status 1.
fn refusal(answer: &Answer, as_json: bool, c: &mut Console<'_>) -> u8 {
    let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
    let (code, message) = match &json {
        Some(v) => (
            v["code"].as_str().unwrap_or("HTTP_ERROR").to_owned(),
            v["message"].as_str().unwrap_or("").to_owned(),
        ),
        None => ("HTTP_ERROR".to_owned(), String::new()),
    };
    let message = if message.is_empty() {
        format!("HTTP {}", answer.status)
    } else {
        message
    };
    let _ = writeln!(c.err, "{code}: {message}");
    if as_json && json.is_some() {
        let _ = show::raw(&answer.body, c.out);
    }
    REFUSED
}

/// The exit status once the answer is written (or not).
fn finish(written: std::io::Result<()>, c: &mut Console<'_>) -> u8 {
    match written.and_then(|()| c.out.flush()) {
        Ok(()) => OK,
        // A closed stdout (`| head`) is the reader's choice, not a failure of
        // the call, which has been made.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => OK,
        Err(e) => {
            let _ = writeln!(c.err, "keygate admin: writing the answer: {e}");
            NO_ANSWER
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A console over buffers: `input` on stdin, neither stream a terminal
    /// unless the test says so.
    struct Buffers {
        input: std::io::Cursor<Vec<u8>>,
        out: Vec<u8>,
        err: Vec<u8>,
    }

    impl Buffers {
        fn new(input: &str) -> Buffers {
            Buffers {
                input: std::io::Cursor::new(input.as_bytes().to_vec()),
                out: Vec::new(),
                err: Vec::new(),
            }
        }

        fn console(&mut self, terminal: bool) -> Console<'_> {
            Console {
                input: &mut self.input,
                out: &mut self.out,
                err: &mut self.err,
                stdin_is_terminal: terminal,
                stderr_is_terminal: terminal,
            }
        }

        fn err(&self) -> String {
            String::from_utf8(self.err.clone()).unwrap()
        }
    }

    #[test]
    fn a_refusal_prints_its_code_and_exits_1() {
        let answer = Answer {
            status: http::StatusCode::CONFLICT,
            body: r#"{"code":"KEY_EXISTS","message":"the organization already has a key"}"#.into(),
        };
        let mut b = Buffers::new("");
        assert_eq!(
            show(&answer, &Shape::Page, false, &mut b.console(false)),
            REFUSED
        );
        assert_eq!(b.err(), "KEY_EXISTS: the organization already has a key\n");
        assert!(b.out.is_empty());
    }

    #[test]
    fn an_org_deletion_is_refused_where_nobody_can_be_asked() {
        let mut b = Buffers::new("acme\n");
        assert_eq!(confirm("acme", &mut b.console(false)), Err(NO_ANSWER));
        assert!(b.err().contains("pass --yes"), "{}", b.err());
    }

    #[test]
    fn an_org_deletion_goes_ahead_on_a_terminal_only_when_its_id_is_typed() {
        let mut b = Buffers::new("acme\n");
        assert_eq!(confirm("acme", &mut b.console(true)), Ok(()));
        assert!(b.err().starts_with("Delete org acme "), "{}", b.err());
        for typed in ["y\n", "acm\n", ""] {
            let mut b = Buffers::new(typed);
            assert_eq!(
                confirm("acme", &mut b.console(true)),
                Err(NO_ANSWER),
                "{typed:?}"
            );
            assert!(b.err().contains("not confirmed"), "{}", b.err());
        }
    }

    #[test]
    fn the_password_is_stdins_first_line_without_its_end() {
        let mut b = Buffers::new("a password of 12+\r\nmore\n");
        assert_eq!(
            password(&mut b.console(false)),
            Ok("a password of 12+".to_owned())
        );
        let mut b = Buffers::new("");
        assert_eq!(password(&mut b.console(false)), Err(NO_ANSWER));
        assert!(b.err().contains("no password"), "{}", b.err());
        // Never read from a terminal, which would echo it.
        let mut b = Buffers::new("typed\n");
        assert_eq!(password(&mut b.console(true)), Err(NO_ANSWER));
    }

    #[test]
    fn a_204_prints_nothing_with_json_and_a_sentence_without() {
        let answer = Answer {
            status: http::StatusCode::NO_CONTENT,
            body: bytes::Bytes::new(),
        };
        let done = Shape::Done("acme: org deleted".into());
        let mut b = Buffers::new("");
        assert_eq!(show(&answer, &done, true, &mut b.console(false)), OK);
        assert!(b.out.is_empty());
        let mut b = Buffers::new("");
        assert_eq!(show(&answer, &done, false, &mut b.console(false)), OK);
        assert_eq!(b.out, b"acme: org deleted\n");
    }
}
