//! `keygate import`: many records into a store at once. Two formats:
//!
//! * an org list, one org per line (`org`, or `org<TAB>key`): bulk
//!   provisioning, for migrations and for benchmarks at a million orgs, where
//!   provisioning through the admin API would cost one durable commit each;
//! * an export (see [`export`](super::export)), recognized by its header on the
//!   first line that is not blank: a whole store, loaded into one that holds
//!   nothing yet, all or nothing.
//!
//! Both write through the [`Backend`] seam ([`Backend::commit_all`] and
//! [`Backend::restore`]), so any backend that implements those two can be
//! imported into.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use super::backend::{Dump, Restored};
use super::export::{ExportCounts, Header, Line, EXPORT_VERSION, FIRST_VERSION, HEADER_TYPE};
use super::redb::json_error;
use super::{AuditEvent, Backend, BackendError, Change, Commit};
use crate::clock::Timestamp;
use crate::key::ApiKey;
use crate::org::{Action, Actor, LimitOverrides, OrgId, OrgState};
use crate::session::user::{digest_problem, valid_username};
use crate::token::{self, TokenDigest};

/// Orgs per write transaction of an org list: large enough that fsyncs do not
/// dominate, small enough that a transaction's dirty pages stay modest.
const BATCH: usize = 50_000;

/// Why an import stopped. For an org list, orgs of batches committed before
/// the error stay; an export is loaded whole or not at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A line is not `org` or `org<TAB>key`.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong; never the key itself.
        reason: &'static str,
    },
    /// The org is already in the store, or twice in the input.
    #[error("line {line}: org {org} exists")]
    Exists {
        /// 1-based.
        line: usize,
        /// The org.
        org: OrgId,
    },
    /// A line of an export is not what an export holds there.
    #[error("line {line}: {reason}; nothing was imported")]
    Export {
        /// 1-based.
        line: usize,
        /// What is wrong; names records by org id, token name or (org,
        /// username), never shows a key or a digest.
        reason: String,
    },
    /// The store already holds records, and an export loads only into an
    /// empty one.
    #[error(
        "the store is not empty (it holds {orgs} orgs, {tokens} tokens, {audit_events} audit \
         events): an export loads only into a store without orgs; nothing was imported"
    )]
    NotEmpty {
        /// Orgs the store holds.
        orgs: u64,
        /// Tokens it holds.
        tokens: u64,
        /// Audit events it holds.
        audit_events: u64,
    },
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// What [`import`] loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imported {
    /// An org list: this many orgs were provisioned.
    Orgs(usize),
    /// An export: the store now holds exactly these records.
    Export(ExportCounts),
}

/// Numbered lines of the input; a line that is not UTF-8 is an error naming it.
type Lines<R> = std::iter::Map<
    std::iter::Enumerate<std::io::Lines<R>>,
    fn((usize, std::io::Result<String>)) -> Result<(usize, String), ImportError>,
>;

fn numbered<R: BufRead>(input: R) -> Lines<R> {
    fn number((i, line): (usize, std::io::Result<String>)) -> Result<(usize, String), ImportError> {
        match line {
            Ok(line) => Ok((i + 1, line)),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(ImportError::Line {
                line: i + 1,
                reason: "not UTF-8 text",
            }),
            Err(e) => Err(ImportError::Read(e)),
        }
    }
    input.lines().enumerate().map(number as fn(_) -> _)
}

/// Imports `input` into `backend`: [`read_input`], then
/// [`ImportInput::load_into`].
pub async fn import(
    backend: &dyn Backend,
    input: impl BufRead,
    now: Timestamp,
) -> Result<Imported, ImportError> {
    read_input(input)?.load_into(backend, now).await
}

/// What [`read_input`] made of an input: a whole export, read and checked, or
/// an org list, still to be read line by line.
pub struct ImportInput<R: BufRead>(Input<R>);

enum Input<R: BufRead> {
    Export(Dump),
    Orgs(std::iter::Peekable<Lines<R>>),
}

impl<R: BufRead> std::fmt::Debug for ImportInput<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the records: they hold keys.
        match &self.0 {
            Input::Export(d) => write!(f, "ImportInput::Export({} orgs)", d.orgs.len()),
            Input::Orgs(_) => f.write_str("ImportInput::Orgs(..)"),
        }
    }
}

/// Tells the two formats apart and, for an export, reads and checks all of
/// it: before any store is opened, so a bad export never creates or touches
/// one. An input is an export when its first line that is not blank starts
/// with `{` (it must then be an export's header); otherwise it is an org list
/// as [`import_orgs`] reads it.
pub fn read_input<R: BufRead>(input: R) -> Result<ImportInput<R>, ImportError> {
    let mut lines = numbered(input).peekable();
    // Blank lines mean nothing in either format.
    while let Some(Ok((_, line))) = lines.peek() {
        if !line.trim().is_empty() {
            break;
        }
        lines.next();
    }
    Ok(ImportInput(match lines.peek() {
        Some(Ok((_, line))) if line.trim_start().starts_with('{') => {
            Input::Export(read_export(lines)?)
        }
        _ => Input::Orgs(lines),
    }))
}

impl<R: BufRead> ImportInput<R> {
    /// Loads the input into `backend`: an export whole, through
    /// [`Backend::restore`], into a backend that holds nothing yet; an org
    /// list in batches, through [`Backend::commit_all`], each org provisioned
    /// at `now`.
    pub async fn load_into(
        self,
        backend: &dyn Backend,
        now: Timestamp,
    ) -> Result<Imported, ImportError> {
        match self.0 {
            Input::Export(dump) => {
                let counts = ExportCounts::of(&dump);
                match backend.restore(dump).await? {
                    Restored::Done => Ok(Imported::Export(counts)),
                    Restored::NotEmpty {
                        orgs,
                        tokens,
                        audit_events,
                    } => Err(ImportError::NotEmpty {
                        orgs,
                        tokens,
                        audit_events,
                    }),
                }
            }
            Input::Orgs(lines) => import_orgs_seen(backend, lines, now)
                .await
                .map(Imported::Orgs),
        }
    }
}

/// Why a line of an export could not be read, without quoting it: serde's
/// messages can quote a value, and the value may be a key.
fn unreadable(text: &str, e: &serde_json::Error) -> String {
    /// Only the `type` of a line, to say which kind of record is wrong.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: String,
    }
    let kind = match e.classify() {
        serde_json::error::Category::Data => "unexpected or missing data",
        _ => return format!("not a record of a keygate export ({})", json_error(e)),
    };
    match serde_json::from_str::<Probe>(text) {
        Ok(Probe { kind: t })
            if [HEADER_TYPE, "org", "token", "api_user", "audit"].contains(&t.as_str()) =>
        {
            format!("a record of type {t:?} that keygate cannot read ({kind})")
        }
        _ => format!("not a record of a keygate export ({kind})"),
    }
}

/// Reads and checks a whole export: the header first, then records that
/// agree with each other and with the header's counts.
fn read_export(
    lines: impl Iterator<Item = Result<(usize, String), ImportError>>,
) -> Result<Dump, ImportError> {
    let bad = |line: usize, reason: String| ImportError::Export { line, reason };
    let mut dump = Dump::default();
    let mut header: Option<Header> = None;
    let mut last = 0;
    // What was read so far, for the checks between records; the token lines
    // name a token whose org is missing once every org has been read.
    let mut orgs_seen: HashSet<OrgId> = HashSet::new();
    let mut token_names: HashSet<String> = HashSet::new();
    let mut digests: HashMap<TokenDigest, String> = HashMap::new();
    let mut token_lines = Vec::new();
    let mut users_seen: HashSet<(OrgId, String)> = HashSet::new();
    let mut user_lines = Vec::new();
    for line in lines {
        let (n, text) = line?;
        last = n;
        if text.trim().is_empty() {
            continue;
        }
        let record: Line =
            serde_json::from_str(&text).map_err(|e| bad(n, unreadable(&text, &e)))?;
        if header.is_none() {
            match record {
                Line::Header(h) if (FIRST_VERSION..=EXPORT_VERSION).contains(&h.version) => {
                    header = Some(h);
                    continue;
                }
                Line::Header(h) => {
                    return Err(bad(
                        n,
                        format!(
                            "an export of format version {}; this keygate reads versions \
                             {FIRST_VERSION} to {EXPORT_VERSION}",
                            h.version
                        ),
                    ))
                }
                _ => {
                    return Err(bad(
                        n,
                        format!("the first line of an export is its {HEADER_TYPE} header"),
                    ))
                }
            }
        }
        match record {
            Line::Header(_) => return Err(bad(n, "a second export header".into())),
            Line::Org(org) => {
                if !orgs_seen.insert(org.id.clone()) {
                    return Err(bad(n, format!("org {} appears twice", org.id)));
                }
                dump.orgs.push(org);
            }
            Line::Token(t) => {
                if !token::valid_name(&t.name) {
                    return Err(bad(
                        n,
                        format!("token {:?} has a name keygate does not accept", t.name),
                    ));
                }
                if !token_names.insert(t.name.clone()) {
                    return Err(bad(n, format!("token {:?} appears twice", t.name)));
                }
                if let Some(other) = digests.insert(t.digest, t.name.clone()) {
                    return Err(bad(
                        n,
                        format!("tokens {other:?} and {:?} have the same digest", t.name),
                    ));
                }
                token_lines.push(n);
                dump.tokens.push(t);
            }
            Line::User(user) => {
                // Only a version 2 header can promise users; a user line
                // in version 1 is a line of another format.
                let who = format!("API user {:?} of org {}", user.username, user.org);
                if header.is_some_and(|h| h.version < 2) {
                    return Err(bad(
                        n,
                        format!("{who}: an export of format version 1 holds no API users"),
                    ));
                }
                if !valid_username(&user.username) {
                    return Err(bad(
                        n,
                        format!("{who} has a username keygate does not accept"),
                    ));
                }
                if let Some(why) = digest_problem(&user.password_digest) {
                    return Err(bad(n, format!("{who}: its password digest {why}")));
                }
                if !users_seen.insert((user.org.clone(), user.username.clone())) {
                    return Err(bad(n, format!("{who} appears twice")));
                }
                user_lines.push(n);
                dump.users.push(user);
            }
            Line::Audit(event) => {
                dump.audit.push(event);
            }
        }
    }
    let Some(header) = header else {
        return Err(bad(last + 1, "the export has no header".into()));
    };
    // Every reference, now that every org has been read, wherever it was.
    for (t, &n) in dump.tokens.iter().zip(&token_lines) {
        if !orgs_seen.contains(&t.org) {
            return Err(bad(
                n,
                format!(
                    "token {:?} is for org {}, which the export does not hold",
                    t.name, t.org
                ),
            ));
        }
    }
    for (u, &n) in dump.users.iter().zip(&user_lines) {
        if !orgs_seen.contains(&u.org) {
            return Err(bad(
                n,
                format!(
                    "API user {:?} is of org {}, which the export does not hold",
                    u.username, u.org
                ),
            ));
        }
    }
    // An audit event may name an org the export does not hold: the contract
    // keeps a deleted org's log readable by the provider.
    let found = ExportCounts::of(&dump);
    let promised = ExportCounts {
        orgs: header.orgs,
        tokens: header.tokens,
        api_users: header.api_users,
        audit_events: header.audit_events,
    };
    if found != promised {
        return Err(bad(
            last + 1,
            format!("the export ends holding {found}, but its header promises {promised}"),
        ));
    }
    Ok(dump)
}

/// Provisions every org of `input` (one per line: `org`, or `org<TAB>key` to
/// set its key; blank lines and `#` comments are skipped) into `backend`, each
/// enabled, with its own random key unless one is given, audited as provisioned
/// by the provider. Returns how many were imported.
pub async fn import_orgs(
    backend: &dyn Backend,
    input: impl BufRead,
    now: Timestamp,
) -> Result<usize, ImportError> {
    import_orgs_seen(backend, numbered(input), now).await
}

async fn import_orgs_seen(
    backend: &dyn Backend,
    lines: impl Iterator<Item = Result<(usize, String), ImportError>>,
    now: Timestamp,
) -> Result<usize, ImportError> {
    let existing = backend.load().await?;
    let mut seen: HashSet<OrgId> = existing.orgs.into_iter().map(|r| r.id).collect();
    let mut batch = Vec::with_capacity(BATCH);
    let mut imported = 0;
    for line in lines {
        let (n, line) = line?;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (org, key) = match line.split_once('\t') {
            Some((org, key)) => (org, Some(key.trim())),
            None => (line, None),
        };
        let id = OrgId::parse(org).map_err(|_| ImportError::Line {
            line: n,
            reason: "not an org id",
        })?;
        let mut t = OrgState::provisioned(now, Actor::Provider, None, LimitOverrides::default());
        if let Some(key) = key {
            let key = ApiKey::parse(key.as_bytes()).map_err(|_| ImportError::Line {
                line: n,
                reason: "not a key (12 characters of A-Z, a-z, 0-9)",
            })?;
            t.detail = format!("imported with key ending {}", key.fingerprint());
            t.next.key = Some(key);
        }
        if !seen.insert(id.clone()) {
            return Err(ImportError::Exists { line: n, org: id });
        }
        batch.push(Commit {
            event: AuditEvent {
                org: id.clone(),
                at: now,
                actor: Actor::Provider,
                action: Action::Provision,
                detail: t.detail,
            },
            change: Change::provision(id, t.next),
        });
        if batch.len() == BATCH {
            imported += flush(backend, &mut batch).await?;
        }
    }
    imported += flush(backend, &mut batch).await?;
    Ok(imported)
}

async fn flush(backend: &dyn Backend, batch: &mut Vec<Commit>) -> Result<usize, BackendError> {
    let commits = std::mem::take(batch);
    let n = commits.len();
    if n > 0 {
        backend.commit_all(commits).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::org::Limits;
    use crate::store::{RedbBackend, Store};
    use std::sync::Arc;

    #[tokio::test]
    async fn imported_orgs_load_with_their_given_or_random_keys() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("s.redb")).unwrap();
        let input = "# comment\nacme\tAb3dEf6hIj9k\n\nbeta\n";
        let n = import_orgs(&backend, input.as_bytes(), Timestamp::from_secs(1))
            .await
            .unwrap();
        assert_eq!(n, 2);
        let store = Store::open(
            Arc::new(backend),
            Arc::new(ManualClock::default()),
            Limits::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            store.view("acme").unwrap().state.key.unwrap().expose(),
            "Ab3dEf6hIj9k"
        );
        assert!(store.view("beta").unwrap().state.key.is_some());
        assert_eq!(store.audit("acme").await.unwrap().len(), 1);
    }

    /// A redb store with history: two orgs, a regenerated key, a disabled
    /// one, a subscription, limits, two tokens (one deleted, one kept), a
    /// deleted key, an API user. Returns the backend (the store is dropped).
    async fn store_with_history(path: &std::path::Path) -> RedbBackend {
        let backend = RedbBackend::open(path).unwrap();
        let store = Store::open(
            Arc::new(backend.clone()),
            Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000))),
            Limits::default(),
        )
        .await
        .unwrap();
        let id = |s: &str| OrgId::parse(s).unwrap();
        store
            .provision(
                id("globex"),
                None,
                LimitOverrides::default(),
                Actor::Provider,
            )
            .await
            .unwrap();
        store
            .provision(id("acme"), None, LimitOverrides::default(), Actor::Provider)
            .await
            .unwrap();
        store.regenerate("acme", Actor::Provider).await.unwrap();
        store
            .set_subscription(
                "acme",
                Some(Timestamp::from_secs(1_900_000_000)),
                Actor::Provider,
            )
            .await
            .unwrap();
        let limits = LimitOverrides {
            burst: std::num::NonZeroU32::new(9),
            ..LimitOverrides::default()
        };
        store
            .set_limits("acme", limits, Actor::Provider)
            .await
            .unwrap();
        store.delete("globex", Actor::Provider).await.unwrap();
        store
            .disable("globex", "unpaid invoice", Actor::Provider)
            .await
            .unwrap();
        store
            .create_token("alice", crate::token::Role::Admin, "acme")
            .await
            .unwrap();
        store
            .create_token("bob", crate::token::Role::Viewer, "globex")
            .await
            .unwrap();
        store.delete_token("bob").await.unwrap();
        store
            .create_user(
                "acme",
                "ops@acme.example",
                "a long enough password".into(),
                Actor::Provider,
            )
            .await
            .unwrap();
        backend
    }

    async fn exported(backend: &dyn Backend) -> String {
        let mut out = Vec::new();
        crate::store::export(backend, &mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn an_export_loads_whole_into_an_empty_store_and_exports_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let first = exported(&source).await;
        let target = RedbBackend::open(&dir.path().join("b.redb")).unwrap();
        let t = Timestamp::from_secs(5);
        let imported = import(&target, first.as_bytes(), t).await.unwrap();
        assert_eq!(
            imported,
            Imported::Export(crate::store::ExportCounts {
                orgs: 2,
                tokens: 1,
                api_users: 1,
                audit_events: 11
            })
        );
        assert_eq!(exported(&target).await, first);
        assert_eq!(target.dump().await.unwrap(), source.dump().await.unwrap());
        // And into the other backend, through the same seam.
        let memory = crate::store::MemoryBackend::new();
        import(&memory, first.as_bytes(), t).await.unwrap();
        assert_eq!(exported(&memory).await, first);
    }

    #[tokio::test]
    async fn an_export_into_a_store_holding_an_org_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        let target = RedbBackend::open(&dir.path().join("b.redb")).unwrap();
        import_orgs(&target, "initech\n".as_bytes(), Timestamp::from_secs(5))
            .await
            .unwrap();
        let before = target.dump().await.unwrap();
        let refused = import(&target, export.as_bytes(), Timestamp::from_secs(6)).await;
        assert!(
            matches!(
                refused,
                Err(ImportError::NotEmpty {
                    orgs: 1,
                    tokens: 0,
                    audit_events: 1
                })
            ),
            "{refused:?}"
        );
        assert_eq!(target.dump().await.unwrap(), before);
    }

    /// Why an import of `input` into an empty backend is refused, which must
    /// leave the backend empty.
    async fn refusal(input: &str) -> String {
        let backend = crate::store::MemoryBackend::new();
        let e = import(&backend, input.as_bytes(), Timestamp::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(backend.dump().await.unwrap(), Dump::default(), "{e}");
        e.to_string()
    }

    #[tokio::test]
    async fn a_malformed_export_line_is_refused_by_its_number_never_showing_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        let key = source.dump().await.unwrap().orgs[0]
            .state
            .key
            .unwrap()
            .expose()
            .to_owned();
        let mut lines: Vec<String> = export.lines().map(str::to_owned).collect();
        // The acme line with its generation made a string: the key stays on it.
        assert!(lines[1].contains(&key));
        lines[1] = lines[1].replace("\"generation\":", "\"generation\":\"x\",\"g\":");
        let msg = refusal(&lines.join("\n")).await;
        assert!(msg.starts_with("line 2: "), "{msg}");
        assert!(msg.contains("\"org\""), "{msg}");
        assert!(!msg.contains(&key), "{msg}");

        lines = export.lines().map(str::to_owned).collect();
        lines[3].truncate(20);
        let msg = refusal(&lines.join("\n")).await;
        assert!(msg.starts_with("line 4: "), "{msg}");
    }

    #[tokio::test]
    async fn an_export_refuses_a_missing_header_an_unknown_version_and_a_cut_end() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        let lines: Vec<&str> = export.lines().collect();

        let msg = refusal(&lines[1..].join("\n")).await;
        assert!(
            msg.starts_with("line 1: ") && msg.contains("header"),
            "{msg}"
        );

        let v3 = export.replacen("\"version\":2", "\"version\":3", 1);
        let msg = refusal(&v3).await;
        assert!(
            msg.starts_with("line 1: ") && msg.contains("version 3"),
            "{msg}"
        );

        let cut = lines[..lines.len() - 1].join("\n");
        let msg = refusal(&cut).await;
        assert!(msg.contains("promises"), "{msg}");

        let twice = format!("{export}{}\n", lines[1]);
        let msg = refusal(&twice).await;
        assert!(
            msg.starts_with(&format!("line {}: ", lines.len() + 1)),
            "{msg}"
        );
        assert!(msg.contains("appears twice"), "{msg}");
    }

    #[tokio::test]
    async fn an_export_refuses_a_token_of_an_org_it_does_not_hold() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        // Lines: header, acme, globex, the token alice (of acme), events.
        let without_acme: Vec<&str> = export
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        let msg = refusal(&without_acme.join("\n")).await;
        assert!(
            msg.starts_with("line 3: ") && msg.contains("alice"),
            "{msg}"
        );
    }

    /// `export` as a keygate before API users wrote it: version 1, no
    /// `api_users` count, no user lines.
    fn as_version_1(export: &str) -> String {
        let mut lines: Vec<serde_json::Value> = export
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l["type"] != "api_user")
            .collect();
        lines[0]["version"] = 1.into();
        lines[0].as_object_mut().unwrap().remove("api_users");
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[tokio::test]
    async fn an_api_user_moves_with_its_digest_and_logs_in_after_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        assert!(!export.contains("a long enough password"));
        let target = RedbBackend::open(&dir.path().join("b.redb")).unwrap();
        import(&target, export.as_bytes(), Timestamp::from_secs(5))
            .await
            .unwrap();
        let users = target.users().await.unwrap();
        assert_eq!(users, source.users().await.unwrap());
        let store = Store::open(
            Arc::new(target),
            Arc::new(ManualClock::default()),
            Limits::default(),
        )
        .await
        .unwrap();
        let acme = OrgId::parse("acme").unwrap();
        let digest = store.user_digest(&acme, "ops@acme.example");
        let pool = crate::session::PasswordPool::new(1);
        assert!(
            pool.verify("a long enough password".into(), digest.clone())
                .await
        );
        assert!(!pool.verify("a long enough passwore".into(), digest).await);
    }

    #[tokio::test]
    async fn a_version_1_export_without_users_still_imports() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let old = as_version_1(&exported(&source).await);
        let header = old.lines().next().unwrap();
        assert!(
            header.contains(r#""version":1"#) && !header.contains("api_users"),
            "{header}"
        );
        let target = crate::store::MemoryBackend::new();
        let imported = import(&target, old.as_bytes(), Timestamp::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            imported,
            Imported::Export(crate::store::ExportCounts {
                orgs: 2,
                tokens: 1,
                api_users: 0,
                audit_events: 11
            })
        );
        assert!(target.users().await.unwrap().is_empty());
        // A user line has no place in version 1.
        let source_export = exported(&source).await;
        let user_line = source_export
            .lines()
            .find(|l| l.contains(r#""type":"api_user""#))
            .unwrap();
        let mut lines: Vec<&str> = old.lines().collect();
        lines.insert(4, user_line);
        let msg = refusal(&lines.join("\n")).await;
        assert!(
            msg.starts_with("line 5: ") && msg.contains("version 1 holds no API users"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn an_export_refuses_a_bad_api_user_naming_its_line_org_and_username() {
        let dir = tempfile::tempdir().unwrap();
        let source = store_with_history(&dir.path().join("a.redb")).await;
        let export = exported(&source).await;
        let lines: Vec<&str> = export.lines().collect();
        // Lines: header, acme, globex, the token alice, the user, events.
        let at = lines
            .iter()
            .position(|l| l.contains(r#""type":"api_user""#))
            .unwrap();
        assert_eq!(at, 4);
        let user: serde_json::Value = serde_json::from_str(lines[at]).unwrap();
        let digest = user["password_digest"].as_str().unwrap().to_owned();
        let with_user = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut u = user.clone();
            edit(&mut u);
            let mut l: Vec<String> = lines.iter().map(|s| (*s).to_owned()).collect();
            l[at] = u.to_string();
            l.join("\n")
        };

        let msg = refusal(&with_user(&|u| {
            u["password_digest"] = "plaintext password".into()
        }))
        .await;
        assert_eq!(
            msg,
            "line 5: API user \"ops@acme.example\" of org acme: its password digest is not a \
             PHC string; nothing was imported"
        );
        let msg = refusal(&with_user(&|u| {
            u["password_digest"] = digest.replace("$argon2id$", "$argon2i$").into()
        }))
        .await;
        assert!(msg.contains("is not an argon2id digest"), "{msg}");
        let salt_and_hash = digest.split('$').skip(4).collect::<Vec<_>>().join("$");
        assert!(!msg.contains(&salt_and_hash), "{msg}");

        let msg = refusal(&with_user(&|u| u["username"] = "two words".into())).await;
        assert!(
            msg.starts_with("line 5: ") && msg.contains("username keygate does not accept"),
            "{msg}"
        );

        let msg = refusal(&with_user(&|u| u["org"] = "initech".into())).await;
        assert!(
            msg.starts_with("line 5: ")
                && msg.contains(
                    "\"ops@acme.example\" is of org initech, which the export does not hold"
                ),
            "{msg}"
        );

        let mut twice: Vec<&str> = lines.clone();
        twice.insert(at, lines[at]);
        let twice = twice
            .join("\n")
            .replacen("\"api_users\":1", "\"api_users\":2", 1);
        let msg = refusal(&twice).await;
        assert!(
            msg.starts_with("line 6: ") && msg.contains("appears twice"),
            "{msg}"
        );

        let without: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != at)
            .map(|(_, l)| *l)
            .collect();
        let msg = refusal(&without.join("\n")).await;
        assert!(
            msg.contains("0 API users") && msg.contains("promises"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn an_import_refuses_bad_lines_and_existing_orgs() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("s.redb")).unwrap();
        let t = Timestamp::from_secs(1);
        assert!(matches!(
            import_orgs(&backend, "Bad Org\n".as_bytes(), t).await,
            Err(ImportError::Line { line: 1, .. })
        ));
        assert!(matches!(
            import_orgs(&backend, "acme\tshort\n".as_bytes(), t).await,
            Err(ImportError::Line { line: 1, .. })
        ));
        import_orgs(&backend, "acme\n".as_bytes(), t).await.unwrap();
        assert!(matches!(
            import_orgs(&backend, "acme\n".as_bytes(), t).await,
            Err(ImportError::Exists { line: 1, .. })
        ));
    }
}
