//! `keygate admin ...`: one subcommand per admin API call.
//!
//! Each subcommand makes its call and prints the answer: a table for people by
//! default, the API's JSON as it came with `--json`. The exit status is for
//! scripts: 0 when the API answered 2xx, 1 when it refused (the contract's code
//! and message on stderr, `CODE: message`), 2 for a usage error (clap's own)
//! or when no answer came (connection refused, timeout, bad URL).

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use http::Method;
use serde_json::{json, Map, Value};

use super::client::{segment, AdminClient, Answer};

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
    /// The bearer token: the provider's, or an admin or viewer token.
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
    /// Orgs: list or provision (provider).
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
    /// Admin and viewer tokens: create or delete (provider).
    #[command(subcommand)]
    Tokens(TokensCall),
    /// An org's audit log, oldest first.
    Audit {
        /// The org.
        org: String,
    },
}

/// `keygate admin orgs ...`
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum OrgsCall {
    /// Every org's key page.
    List,
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

impl LimitFlags {
    /// The limits given, as the API's JSON object.
    fn to_json(&self) -> Map<String, Value> {
        let mut m = Map::new();
        for (name, v) in [
            ("rate_per_sec", self.rate_per_sec),
            ("burst", self.burst),
            ("threshold_calls", self.threshold_calls),
            ("threshold_window_secs", self.threshold_window_secs),
        ] {
            if let Some(v) = v {
                m.insert(name.to_owned(), json!(v));
            }
        }
        m
    }

    fn is_empty(&self) -> bool {
        self.to_json().is_empty()
    }
}

/// The exit status for a call the API answered with 2xx.
pub const OK: u8 = 0;
/// The exit status for a call the API refused.
pub const REFUSED: u8 = 1;
/// The exit status for a usage error or a call that got no answer.
pub const NO_ANSWER: u8 = 2;

/// How an answer is shown.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One key page.
    Page,
    /// `{"orgs": [...]}`.
    Orgs,
    /// `{"events": [...]}`.
    Events,
    /// A new token.
    Token,
    /// 204: a sentence saying what was done.
    Done(&'static str),
}

/// Runs `args` on a runtime of its own and returns the exit status.
pub fn main(args: AdminArgs) -> u8 {
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
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    runtime.block_on(run(args, &mut out, &mut err))
}

/// Makes the call `args` names, writes its answer to `out` (or its refusal to
/// `err`) and returns the exit status.
pub async fn run(args: AdminArgs, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let Some(token) = args.token.as_deref().filter(|t| !t.is_empty()) else {
        let _ = writeln!(
            err,
            "keygate admin: no token: pass --token or set KEYGATE_TOKEN"
        );
        return NO_ANSWER;
    };
    let client = match AdminClient::new(&args.url, token, args.ca_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "keygate admin: {e}");
            return NO_ANSWER;
        }
    };
    let (method, path, body, shape) = request(&args.call);
    match client.call(method, &path, body.as_ref()).await {
        Ok(answer) => show(&answer, shape, &args.call, args.json, out, err),
        Err(e) => {
            let _ = writeln!(err, "keygate admin: {e}");
            NO_ANSWER
        }
    }
}

/// The method, path, body and answer shape of a call.
fn request(call: &Call) -> (Method, String, Option<Value>, Shape) {
    let org = |o: &str, rest: &str| format!("/v1/orgs/{}{rest}", segment(o));
    match call {
        Call::Orgs(OrgsCall::List) => (Method::GET, "/v1/orgs".into(), None, Shape::Orgs),
        Call::Orgs(OrgsCall::Provision {
            org,
            expires_at,
            limits,
        }) => {
            let mut body = Map::new();
            body.insert("org".into(), json!(org));
            if let Some(at) = expires_at {
                body.insert("subscription_expires_at".into(), json!(at));
            }
            if !limits.is_empty() {
                body.insert("limits".into(), Value::Object(limits.to_json()));
            }
            (
                Method::POST,
                "/v1/orgs".into(),
                Some(Value::Object(body)),
                Shape::Page,
            )
        }
        Call::Key(KeyCall::Show { org: o }) => (Method::GET, org(o, "/key"), None, Shape::Page),
        Call::Key(KeyCall::Add { org: o }) => (Method::POST, org(o, "/key"), None, Shape::Page),
        Call::Key(KeyCall::Edit { org: o, key }) => (
            Method::PUT,
            org(o, "/key"),
            Some(json!({ "key": key })),
            Shape::Page,
        ),
        Call::Key(KeyCall::Regenerate { org: o }) => {
            (Method::POST, org(o, "/key/regenerate"), None, Shape::Page)
        }
        Call::Key(KeyCall::Delete { org: o }) => (
            Method::DELETE,
            org(o, "/key"),
            None,
            Shape::Done("key deleted"),
        ),
        Call::Disable { org: o, reason } => (
            Method::POST,
            org(o, "/disable"),
            Some(json!({ "reason": reason })),
            Shape::Page,
        ),
        Call::Enable { org: o } => (Method::POST, org(o, "/enable"), None, Shape::Page),
        Call::Subscription(SubscriptionCall::Set { org: o, at }) => (
            Method::PUT,
            org(o, "/subscription"),
            Some(json!({ "expires_at": at })),
            Shape::Page,
        ),
        Call::Subscription(SubscriptionCall::Clear { org: o }) => (
            Method::PUT,
            org(o, "/subscription"),
            Some(json!({ "expires_at": null })),
            Shape::Page,
        ),
        Call::Limits { org: o, limits } => (
            Method::PUT,
            org(o, "/limits"),
            Some(Value::Object(limits.to_json())),
            Shape::Page,
        ),
        Call::Tokens(TokensCall::Create { name, role, org }) => (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({ "name": name, "role": role, "org": org })),
            Shape::Token,
        ),
        Call::Tokens(TokensCall::Delete { name }) => (
            Method::DELETE,
            format!("/v1/tokens/{}", segment(name)),
            None,
            Shape::Done("token deleted"),
        ),
        Call::Tokens(TokensCall::Rotate { name }) => (
            Method::POST,
            format!("/v1/tokens/{}/rotate", segment(name)),
            None,
            Shape::Token,
        ),
        Call::Audit { org: o } => (Method::GET, org(o, "/audit"), None, Shape::Events),
    }
}

/// Prints an answer and returns the exit status.
fn show(
    answer: &Answer,
    shape: Shape,
    call: &Call,
    as_json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> u8 {
    let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
    if !answer.status.is_success() {
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
        let _ = writeln!(err, "{code}: {message}");
        if as_json && json.is_some() {
            let _ = out.write_all(&answer.body);
            let _ = writeln!(out);
        }
        return REFUSED;
    }
    let written = if as_json {
        if answer.body.is_empty() {
            Ok(())
        } else {
            out.write_all(&answer.body).and_then(|()| writeln!(out))
        }
    } else {
        match (shape, &json) {
            (Shape::Done(what), _) => writeln!(out, "{}: {what}", subject(call)),
            (Shape::Page, Some(v)) => page(v, out),
            (Shape::Orgs, Some(v)) => orgs(v, out),
            (Shape::Events, Some(v)) => events(v, out),
            (Shape::Token, Some(v)) => token(v, out),
            (_, None) => {
                let _ = writeln!(
                    err,
                    "keygate admin: the API answered {} without JSON",
                    answer.status
                );
                return NO_ANSWER;
            }
        }
    };
    match written {
        Ok(()) => OK,
        // A closed stdout (`| head`) is the reader's choice, not a failure of
        // the call, which has been made.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => OK,
        Err(e) => {
            let _ = writeln!(err, "keygate admin: writing the answer: {e}");
            NO_ANSWER
        }
    }
}

/// What a 204 was about: the org or the token.
fn subject(call: &Call) -> &str {
    match call {
        Call::Key(KeyCall::Delete { org }) => org,
        Call::Tokens(TokensCall::Delete { name }) => name,
        _ => "",
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One key page, a field per line.
fn page(v: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let rows = [
        ("org", "org"),
        ("base url", "base_url"),
        ("key", "key"),
        ("status", "status"),
        ("disabled reason", "disabled_reason"),
        ("subscription ends", "subscription_expires_at"),
        ("subscription expired", "subscription_expired"),
        ("last modified by", "last_modified_by"),
        ("last modified on", "last_modified_on"),
    ];
    for (label, field) in rows {
        writeln!(out, "{label:<21} {}", cell(&v[field]))?;
    }
    if let Some(limits) = v["limits"].as_object() {
        let shown: Vec<String> = limits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "{:<21} {}", "limits", shown.join(" "))?;
    }
    Ok(())
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>], out: &mut impl Write) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

fn orgs(v: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = v["orgs"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|o| {
            [
                "org",
                "status",
                "key",
                "subscription_expires_at",
                "last_modified_by",
                "last_modified_on",
            ]
            .iter()
            .map(|f| cell(&o[*f]))
            .collect()
        })
        .collect();
    table(
        &[
            "ORG",
            "STATUS",
            "KEY",
            "SUBSCRIPTION ENDS",
            "LAST MODIFIED BY",
            "LAST MODIFIED ON",
        ],
        &rows,
        out,
    )
}

fn events(v: &Value, out: &mut impl Write) -> std::io::Result<()> {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = v["events"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|e| {
            ["at", "actor", "action", "detail"]
                .iter()
                .map(|f| cell(&e[*f]))
                .collect()
        })
        .collect();
    table(&["AT", "ACTOR", "ACTION", "DETAIL"], &rows, out)
}

fn token(v: &Value, out: &mut impl Write) -> std::io::Result<()> {
    for field in ["name", "role", "org", "token"] {
        writeln!(out, "{field:<6} {}", cell(&v[field]))?;
    }
    writeln!(
        out,
        "(the token is shown this once; keygate keeps only its SHA-256)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_argument_cannot_reach_another_path() {
        let (_, path, _, _) = request(&Call::Key(KeyCall::Show {
            org: "../../tokens".into(),
        }));
        assert_eq!(path, "/v1/orgs/..%2F..%2Ftokens/key");
    }

    #[test]
    fn only_the_limits_given_are_sent() {
        let (_, _, body, _) = request(&Call::Limits {
            org: "acme".into(),
            limits: LimitFlags {
                burst: Some(5),
                ..LimitFlags::default()
            },
        });
        assert_eq!(body, Some(json!({ "burst": 5 })));
    }

    #[test]
    fn a_table_pads_every_column_but_the_last() {
        let mut out = Vec::new();
        table(
            &["A", "B", "C"],
            &[vec!["xyz".into(), "1".into(), "end".into()]],
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "A    B  C\nxyz  1  end\n");
    }

    #[test]
    fn a_refusal_prints_its_code_and_exits_1() {
        let answer = Answer {
            status: http::StatusCode::CONFLICT,
            body: r#"{"code":"KEY_EXISTS","message":"the organization already has a key"}"#.into(),
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let call = Call::Key(KeyCall::Add { org: "acme".into() });
        assert_eq!(
            show(&answer, Shape::Page, &call, false, &mut out, &mut err),
            REFUSED
        );
        assert_eq!(
            String::from_utf8(err).unwrap(),
            "KEY_EXISTS: the organization already has a key\n"
        );
        assert!(out.is_empty());
    }
}
