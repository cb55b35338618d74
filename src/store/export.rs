//! `keygate export`: everything a store holds, as JSON lines, for moving a
//! store whole (to another machine, or from a single node into a cluster).
//!
//! The output is one JSON object per line, each with a `type`:
//!
//! * first, the header: `{"type":"keygate-export","version":2,"orgs":N,"tokens":M,"api_users":U,"audit_events":K}`;
//!   the counts let an import tell a whole file from a cut one;
//! * `org`: `{"type":"org","id":...,"state":{...}}`, the org's whole persisted
//!   state (its key, status, disabled reason, subscription, limit overrides,
//!   last modified by and on, generation), one per org, by id;
//! * `token`: a token's name, role, org, digest and creation time, one per
//!   token, by name. The digest only: keygate never holds a token itself;
//! * `api_user`: an API user's org, username, password digest (argon2id, a
//!   PHC string) and creation time, one per user, by org then username. The
//!   digest only: keygate never holds a password;
//! * `audit`: one per audit event, grouped by org in id order, each org's
//!   oldest first.
//!
//! The same store always exports to the same bytes, and an export imported
//! into an empty store exports to the same bytes again. The file holds every
//! org's API key: it is as secret as the store itself.
//!
//! Version 1 (written before API users existed) is version 2 without
//! `api_user` lines and without `api_users` in the header; an import reads
//! both. A keygate that reads only version 1 refuses a version 2 export by
//! its header, rather than dropping its users.
//!
//! [`export`] reads through [`Backend::dump`], so any backend can be exported;
//! [`import`](super::import) reads the format back.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::backend::{AuditEvent, Backend, BackendError, Dump, OrgRecord};
use super::redb::json_error;
use crate::session::ApiUser;
use crate::token::TokenRecord;

/// The format version [`export`] writes; [`import`](super::import) reads it
/// and every earlier one ([`FIRST_VERSION`] on).
pub const EXPORT_VERSION: u32 = 2;

/// The oldest format version [`import`](super::import) reads: version 1,
/// without API users.
pub const FIRST_VERSION: u32 = 1;

/// The `type` of the header line.
pub(super) const HEADER_TYPE: &str = "keygate-export";

/// One line of an export.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(super) enum Line {
    /// The first line.
    #[serde(rename = "keygate-export")]
    Header(Header),
    /// One org.
    #[serde(rename = "org")]
    Org(OrgRecord),
    /// One token.
    #[serde(rename = "token")]
    Token(TokenRecord),
    /// One API user (version 2 on).
    #[serde(rename = "api_user")]
    User(ApiUser),
    /// One audit event.
    #[serde(rename = "audit")]
    Audit(AuditEvent),
}

/// The header's fields: the format version and what follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Header {
    /// [`EXPORT_VERSION`] when written.
    pub version: u32,
    /// Org lines that follow.
    pub orgs: u64,
    /// Token lines that follow.
    pub tokens: u64,
    /// API user lines that follow; absent (0) in version 1.
    #[serde(default)]
    pub api_users: u64,
    /// Audit lines that follow.
    pub audit_events: u64,
}

/// How many records an export wrote, or an import loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportCounts {
    /// Orgs.
    pub orgs: u64,
    /// Tokens.
    pub tokens: u64,
    /// API users.
    pub api_users: u64,
    /// Audit events.
    pub audit_events: u64,
}

impl ExportCounts {
    /// What `dump` holds.
    pub(super) fn of(dump: &Dump) -> ExportCounts {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        ExportCounts {
            orgs: count(dump.orgs.len()),
            tokens: count(dump.tokens.len()),
            api_users: count(dump.users.len()),
            audit_events: count(dump.audit.len()),
        }
    }
}

impl std::fmt::Display for ExportCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} orgs, {} tokens, {} API users, {} audit events",
            self.orgs, self.tokens, self.api_users, self.audit_events
        )
    }
}

/// Why an export stopped. What was written before the error is not a whole
/// export: its header promises more records than follow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] BackendError),
    /// Writing the output failed.
    #[error("writing the export: {0}")]
    Write(#[from] std::io::Error),
    /// A record could not be written as JSON; the message says where, never
    /// what the record holds.
    #[error("cannot write a {what} record as JSON ({why})")]
    Encode {
        /// `org`, `token`, `api_user` or `audit`.
        what: &'static str,
        /// The kind of JSON error.
        why: String,
    },
}

/// Writes everything `backend` holds to `out` as described in the module
/// documentation, and returns the counts. Flushes `out` at the end.
pub async fn export(
    backend: &dyn Backend,
    out: &mut dyn Write,
) -> Result<ExportCounts, ExportError> {
    let dump = backend.dump().await?;
    write_dump(dump, out)
}

/// Puts `dump` in the export's order and writes it.
pub(super) fn write_dump(mut dump: Dump, out: &mut dyn Write) -> Result<ExportCounts, ExportError> {
    dump.orgs.sort_by(|a, b| a.id.cmp(&b.id));
    dump.tokens.sort_by(|a, b| a.name.cmp(&b.name));
    dump.users
        .sort_by(|a, b| (&a.org, &a.username).cmp(&(&b.org, &b.username)));
    // Stable: each org's events keep their order, oldest first.
    dump.audit.sort_by(|a, b| a.org.cmp(&b.org));
    let counts = ExportCounts::of(&dump);
    let header = Header {
        version: EXPORT_VERSION,
        orgs: counts.orgs,
        tokens: counts.tokens,
        api_users: counts.api_users,
        audit_events: counts.audit_events,
    };
    write_line(out, "header", &Line::Header(header))?;
    for org in dump.orgs {
        write_line(out, "org", &Line::Org(org))?;
    }
    for token in dump.tokens {
        write_line(out, "token", &Line::Token(token))?;
    }
    for user in dump.users {
        write_line(out, "api_user", &Line::User(user))?;
    }
    for event in dump.audit {
        write_line(out, "audit", &Line::Audit(event))?;
    }
    out.flush()?;
    Ok(counts)
}

fn write_line(out: &mut dyn Write, what: &'static str, line: &Line) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, line).map_err(|e| match e.classify() {
        serde_json::error::Category::Io => ExportError::Write(e.into()),
        _ => ExportError::Encode {
            what,
            why: json_error(&e),
        },
    })?;
    out.write_all(b"\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::org::{Action, Actor, LimitOverrides, OrgId, OrgState};
    use crate::store::{Change, Commit, MemoryBackend};
    use crate::token::{Role, TokenDigest};

    fn org(id: &str) -> OrgId {
        OrgId::parse(id).unwrap()
    }

    fn event(id: &str, detail: &str) -> AuditEvent {
        AuditEvent {
            org: org(id),
            at: Timestamp::from_secs(7),
            actor: Actor::Provider,
            action: Action::Provision,
            detail: detail.to_owned(),
        }
    }

    async fn backend() -> MemoryBackend {
        let b = MemoryBackend::new();
        let state = OrgState::provisioned(
            Timestamp::from_secs(7),
            Actor::Provider,
            None,
            LimitOverrides::default(),
        )
        .next;
        // Committed out of id order, interleaving the two logs.
        for (id, detail, from) in [
            ("globex", "g1", None),
            ("acme", "a1", None),
            ("globex", "g2", Some(1)),
        ] {
            let change = match from {
                None => Change::provision(org(id), state.clone()),
                Some(v) => Change::update(org(id), state.clone(), v),
            };
            b.commit(Commit {
                change,
                event: event(id, detail),
            })
            .await
            .unwrap();
        }
        b.commit(Commit {
            change: Change::PutToken(TokenRecord {
                name: "zed".into(),
                role: Role::Viewer,
                org: org("acme"),
                digest: TokenDigest::of("kg_secret"),
                created_at: Timestamp::from_secs(8),
            }),
            event: event("acme", "a2"),
        })
        .await
        .unwrap();
        b.commit(Commit {
            change: Change::PutUser(ApiUser {
                org: org("globex"),
                username: "ops".into(),
                password_digest: DIGEST.into(),
                created_at: Timestamp::from_secs(9),
            }),
            event: event("globex", "g3"),
        })
        .await
        .unwrap();
        b
    }

    /// An argon2id PHC string (of no password anyone knows).
    const DIGEST: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA";

    fn lines(out: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn an_export_is_a_header_then_orgs_by_id_tokens_and_each_orgs_log_oldest_first() {
        let b = backend().await;
        let mut out = Vec::new();
        let counts = export(&b, &mut out).await.unwrap();
        assert_eq!(
            counts,
            ExportCounts {
                orgs: 2,
                tokens: 1,
                api_users: 1,
                audit_events: 5
            }
        );
        let lines = lines(&out);
        assert_eq!(
            lines[0],
            serde_json::json!({"type": "keygate-export", "version": 2, "orgs": 2, "tokens": 1, "api_users": 1, "audit_events": 5})
        );
        let summary: Vec<String> = lines[1..]
            .iter()
            .map(|l| {
                let field = match l["type"].as_str().unwrap() {
                    "org" => "id",
                    "token" => "name",
                    "api_user" => "username",
                    _ => "detail",
                };
                format!(
                    "{}:{}",
                    l["type"].as_str().unwrap(),
                    l[field].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                "org:acme",
                "org:globex",
                "token:zed",
                "api_user:ops",
                "audit:a1",
                "audit:a2",
                "audit:g1",
                "audit:g2",
                "audit:g3"
            ]
        );
    }

    #[tokio::test]
    async fn a_token_line_carries_its_digest_and_an_org_line_its_whole_state() {
        let b = backend().await;
        let mut out = Vec::new();
        export(&b, &mut out).await.unwrap();
        let lines = lines(&out);
        assert_eq!(
            lines[3]["digest"].as_str().unwrap(),
            TokenDigest::of("kg_secret").to_hex()
        );
        assert!(!String::from_utf8(out.clone())
            .unwrap()
            .contains("kg_secret"));
        let state: OrgState = serde_json::from_value(lines[1]["state"].clone()).unwrap();
        let loaded = b.load().await.unwrap();
        assert_eq!(state, loaded.orgs[0].state);
    }

    #[tokio::test]
    async fn an_api_user_line_carries_its_org_and_password_digest_only() {
        let b = backend().await;
        let mut out = Vec::new();
        export(&b, &mut out).await.unwrap();
        let lines = lines(&out);
        assert_eq!(
            lines[4],
            serde_json::json!({
                "type": "api_user",
                "org": "globex",
                "username": "ops",
                "password_digest": DIGEST,
                "created_at": "1970-01-01T00:00:09Z"
            })
        );
    }

    #[tokio::test]
    async fn the_same_store_exports_to_the_same_bytes() {
        let b = backend().await;
        let (mut first, mut second) = (Vec::new(), Vec::new());
        export(&b, &mut first).await.unwrap();
        export(&b, &mut second).await.unwrap();
        assert_eq!(first, second);
    }
}
