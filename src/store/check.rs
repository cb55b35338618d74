//! `keygate check`: a full read of a stopped keygate's store.
//!
//! `keygate serve` reads the orgs and tokens at start and refuses a store it
//! cannot read, but it reads the audit log only when a page asks for it, and
//! redb verifies its page checksums only when it repairs a file after a crash.
//! So damage to a cleanly closed file outside the orgs and tokens tables (a
//! disk error, a bad copy, a hand edit) shows up later, as a 500 on one org's
//! audit page. Reading the whole log at every start would make start-up grow
//! with the log's history (it holds every mutation ever made), so the full read
//! is this separate command, run after a crash, before an upgrade or from cron.
//!
//! [`check_store`] opens the file as `serve` does, then reads every record of
//! every table, decodes each one, and checks what the records say about each
//! other:
//!
//! * each token names an org that exists, with a name keygate accepts, filed
//!   under its own name, and no two tokens share a digest;
//! * each API user (`api_users`) names an org that exists, has a username
//!   keygate accepts, is filed under its own `org/username`, appears once,
//!   and its password digest is an argon2id PHC string keygate can verify
//!   against (a user whose digest does not parse could never log in);
//! * each audit record is filed under the org it is about, each org's log is
//!   numbered 1, 2, 3 ... without gaps, every org has a log (provisioning
//!   writes the first record with the org), and every log belongs to an org
//!   (keygate never removes an org);
//! * each saved threshold window (`counts`) is filed under an org id (one of
//!   an org not in the store is ignored, as `serve` ignores it).
//!
//! Each problem is one [`Problem`], shown as one line that names the table and
//! the record: never a key, a token's or a password's digest or a record's
//! contents.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable};

use super::backend::AuditEvent;
use super::redb::{json_error, StoredOrg, AUDIT, COUNTS, ORGS, TOKENS, USERS};
use super::{BackendError, RedbBackend};
use crate::org::OrgId;
use crate::session::user::{digest_problem, valid_username};
use crate::session::ApiUser;
use crate::token::{self, TokenDigest, TokenRecord};

/// What [`check_store`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The store checked.
    pub path: PathBuf,
    /// Every problem, in the order found. Empty for a sound store.
    pub problems: Vec<Problem>,
    /// Records read from the orgs table.
    pub orgs: u64,
    /// Records read from the tokens table.
    pub tokens: u64,
    /// Records read from the API users table.
    pub api_users: u64,
    /// Records read from the audit table.
    pub audit_events: u64,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line per problem, each starting with the store's path.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        let path = self.path.display();
        self.problems.iter().map(move |p| match p {
            // The store's own refusal names the file already.
            Problem::Refused(why) => why.clone(),
            p => format!("{path}: {p}"),
        })
    }
}

/// One thing wrong with a store. Each shows as one line naming the table and
/// the record (by org id, token name or audit sequence number), never what
/// the record holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// `keygate serve` would refuse the file (not redb, damaged beyond repair,
    /// not a keygate store, or an unknown schema version); nothing else could
    /// be read.
    #[error("{0}")]
    Refused(String),
    /// redb returned an error partway through a table; the rest of it was not
    /// read.
    #[error("table {table}: cannot be read past record {after}: {why}")]
    Unreadable {
        /// The table.
        table: &'static str,
        /// The last record read before the error, or `(start)`.
        after: String,
        /// redb's error.
        why: String,
    },
    /// Reading a table failed inside redb (it panics on some damaged pages);
    /// the rest of it was not read.
    #[error("table {table}: damaged: reading it failed inside redb past record {after}")]
    Damaged {
        /// The table.
        table: &'static str,
        /// The last record read before the failure, or `(start)`.
        after: String,
    },
    /// A record's value is not what keygate wrote there.
    #[error("table {table}: record {record} does not deserialize ({why})")]
    Undecodable {
        /// The table.
        table: &'static str,
        /// The record's key.
        record: String,
        /// The kind of JSON error and where; never its text.
        why: String,
    },
    /// A key of the orgs, audit or counts table is not an org id.
    #[error("table {table}: key {key} is not an org id")]
    NotAnOrgId {
        /// The table.
        table: &'static str,
        /// The key, quoted.
        key: String,
    },
    /// A token filed under one name says it has another.
    #[error("table tokens: record {key} is named {name}")]
    MisfiledToken {
        /// The record's key, quoted.
        key: String,
        /// The name inside the record, quoted.
        name: String,
    },
    /// A token's name is one the admin API refuses.
    #[error("table tokens: token {name} has a name keygate does not accept")]
    BadTokenName {
        /// The name, quoted.
        name: String,
    },
    /// A token names an org that is not in the store.
    #[error("table tokens: token {name} is for org {org}, which is not in the store")]
    TokenForMissingOrg {
        /// The token's name, quoted.
        name: String,
        /// The org it names.
        org: String,
    },
    /// Two tokens have one digest, so one token would sign in as either.
    #[error("table tokens: tokens {first} and {second} have the same digest")]
    SharedDigest {
        /// One token's name, quoted.
        first: String,
        /// The other's.
        second: String,
    },
    /// An API user filed under one `org/username` says it is another.
    #[error("table api_users: record {key} is user {username} of org {org}")]
    MisfiledUser {
        /// The record's key, quoted.
        key: String,
        /// The org inside the record.
        org: String,
        /// The username inside the record, quoted.
        username: String,
    },
    /// Two records are one org's user of one name: which password logs in
    /// is up to the order they are read in.
    #[error("table api_users: user {username} of org {org} appears twice")]
    DuplicateUser {
        /// The org.
        org: String,
        /// The username, quoted.
        username: String,
    },
    /// An API user's username is one the admin API refuses.
    #[error(
        "table api_users: user {username} of org {org} has a username keygate does not accept"
    )]
    BadUsername {
        /// The org.
        org: String,
        /// The username, quoted.
        username: String,
    },
    /// An API user's password digest is not one keygate can verify against:
    /// the user can never log in.
    #[error("table api_users: user {username} of org {org}: its password digest {why}")]
    BadPasswordDigest {
        /// The org.
        org: String,
        /// The username, quoted.
        username: String,
        /// What is wrong with it; never the digest.
        why: &'static str,
    },
    /// An API user of an org that is not in the store.
    #[error("table api_users: user {username} is of org {org}, which is not in the store")]
    UserOfMissingOrg {
        /// The username, quoted.
        username: String,
        /// The org it names, quoted.
        org: String,
    },
    /// An audit record is filed under one org and about another.
    #[error("table audit: record {record} is about org {about}")]
    MisfiledEvent {
        /// The record's key.
        record: String,
        /// The org inside the record.
        about: String,
    },
    /// An org's log skips sequence numbers: records were lost.
    #[error("table audit: the log of org {org} has no records {from} to {to}")]
    AuditGap {
        /// The org, quoted.
        org: String,
        /// The first missing number.
        from: u64,
        /// The last missing number.
        to: u64,
    },
    /// A log of an org that is not in the store.
    #[error("table audit: org {org} has a log but is not in the store")]
    LogOfMissingOrg {
        /// The org, quoted.
        org: String,
    },
    /// An org without a single audit record.
    #[error("table orgs: org {org} has no audit records")]
    OrgWithoutLog {
        /// The org, quoted.
        org: String,
    },
}

/// Reads every record of the store at `path` and checks them, as described in
/// the module docs.
///
/// Opens the file as `keygate serve` does, so a store left open by a crash is
/// repaired first, as a start would repair it. Fails, rather than reporting a
/// problem, only when the store cannot be reached at all (no file there,
/// permissions, I/O, or open in a running keygate: check a stopped keygate's
/// store, or a copy).
/// Blocks on file I/O.
pub fn check_store(path: &Path) -> Result<CheckReport, BackendError> {
    // `RedbBackend::open` creates a missing store; a check must not.
    if let Err(e) = std::fs::symlink_metadata(path) {
        return Err(BackendError::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        )));
    }
    let backend = match RedbBackend::open(path) {
        Ok(backend) => backend,
        Err(BackendError::Corrupt(why)) => {
            return Ok(CheckReport {
                path: path.to_owned(),
                problems: vec![Problem::Refused(why)],
                ..CheckReport::default()
            })
        }
        Err(e) => return Err(e),
    };
    let db = backend.database();
    let mut scan = Scan::default();
    scan.report.path = path.to_owned();
    let orgs_read = scan.table("orgs", |scan| scan_orgs(db, scan));
    scan.table("tokens", |scan| scan_tokens(db, scan));
    scan.table("api_users", |scan| scan_users(db, scan));
    let audit_read = scan.table("audit", |scan| scan_audit(db, scan));
    scan.table("counts", |scan| scan_counts(db, scan));
    // Against a table read only in part, every missing record would look
    // like a broken reference: the damage is reported once, above.
    if orgs_read {
        scan.check_tokens();
        scan.check_users();
        if audit_read {
            scan.check_logs();
        }
    }
    Ok(scan.report)
}

/// What the scans share: the report, and what one table says that another is
/// checked against.
#[derive(Default)]
struct Scan {
    report: CheckReport,
    /// The orgs table's ids.
    orgs: HashSet<String>,
    /// Each token's name, by digest.
    digests: HashMap<TokenDigest, String>,
    /// Tokens and the org each names, checked once every org is known.
    token_orgs: Vec<(String, String)>,
    /// API users read, (org, username), checked once every org is known.
    users: Vec<(String, String)>,
    /// Orgs with at least one audit record.
    logged: HashSet<String>,
    /// Orgs whose log's last event is their deletion: a log without an org
    /// is what they leave, not damage.
    deleted: HashSet<String>,
    /// The key of the last record read in the table being scanned.
    last: Option<String>,
}

impl Scan {
    fn problem(&mut self, p: Problem) {
        self.report.problems.push(p);
    }

    /// Runs one table's scan, turning a redb error or panic into a problem.
    /// Returns whether the whole table was read.
    fn table(
        &mut self,
        table: &'static str,
        scan: impl FnOnce(&mut Scan) -> Result<(), String>,
    ) -> bool {
        self.last = None;
        // Unwind safety: after a panic the scan only reads `self.last` and
        // appends to the report; the damaged table is not read again.
        let done = std::panic::catch_unwind(AssertUnwindSafe(|| scan(self)));
        let after = self.last.take().unwrap_or_else(|| "(start)".to_owned());
        match done {
            Ok(Ok(())) => return true,
            Ok(Err(why)) => self.problem(Problem::Unreadable { table, after, why }),
            Err(_) => self.problem(Problem::Damaged { table, after }),
        }
        false
    }

    /// Each token read names an org of the orgs table.
    fn check_tokens(&mut self) {
        for (name, org) in std::mem::take(&mut self.token_orgs) {
            if !self.orgs.contains(&org) {
                self.problem(Problem::TokenForMissingOrg {
                    name: format!("{name:?}"),
                    org: format!("{org:?}"),
                });
            }
        }
    }

    /// Each API user read names an org of the orgs table.
    fn check_users(&mut self) {
        for (org, username) in std::mem::take(&mut self.users) {
            if !self.orgs.contains(&org) {
                self.problem(Problem::UserOfMissingOrg {
                    username: format!("{username:?}"),
                    org: format!("{org:?}"),
                });
            }
        }
    }

    /// Each org has a log, and each log an org.
    fn check_logs(&mut self) {
        let mut unlogged: Vec<String> = self.orgs.difference(&self.logged).cloned().collect();
        unlogged.sort();
        for org in unlogged {
            self.problem(Problem::OrgWithoutLog {
                org: format!("{org:?}"),
            });
        }
        let mut orphans: Vec<String> = self
            .logged
            .difference(&self.orgs)
            .filter(|org| !self.deleted.contains(*org))
            .cloned()
            .collect();
        orphans.sort();
        for org in orphans {
            self.problem(Problem::LogOfMissingOrg {
                org: format!("{org:?}"),
            });
        }
    }
}

fn scan_orgs(db: &Database, scan: &mut Scan) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(ORGS).map_err(|e| e.to_string())?;
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let key = key.value();
        scan.report.orgs += 1;
        scan.last = Some(format!("{key:?}"));
        if OrgId::is_valid(key.as_bytes()) {
            scan.orgs.insert(key.to_owned());
        } else {
            scan.problem(Problem::NotAnOrgId {
                table: "orgs",
                key: format!("{key:?}"),
            });
        }
        // The state holds the key: only where decoding stopped is shown.
        // Decoded as the store loads it: the state and its version.
        if let Err(e) = serde_json::from_slice::<StoredOrg>(value.value()) {
            scan.problem(Problem::Undecodable {
                table: "orgs",
                record: format!("{key:?}"),
                why: json_error(&e),
            });
        }
    }
    Ok(())
}

fn scan_tokens(db: &Database, scan: &mut Scan) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(TOKENS).map_err(|e| e.to_string())?;
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let key = key.value();
        scan.report.tokens += 1;
        scan.last = Some(format!("{key:?}"));
        let token: TokenRecord = match serde_json::from_slice(value.value()) {
            Ok(token) => token,
            Err(e) => {
                scan.problem(Problem::Undecodable {
                    table: "tokens",
                    record: format!("{key:?}"),
                    why: json_error(&e),
                });
                continue;
            }
        };
        if token.name != key {
            scan.problem(Problem::MisfiledToken {
                key: format!("{key:?}"),
                name: format!("{:?}", token.name),
            });
        }
        if !token::valid_name(&token.name) {
            scan.problem(Problem::BadTokenName {
                name: format!("{:?}", token.name),
            });
        }
        if let Some(first) = scan.digests.insert(token.digest, token.name.clone()) {
            scan.problem(Problem::SharedDigest {
                first: format!("{first:?}"),
                second: format!("{:?}", token.name),
            });
        }
        scan.token_orgs
            .push((token.name, token.org.as_str().to_owned()));
    }
    Ok(())
}

/// The API users. A store without a user has no such table (the first
/// user's commit makes it), which is sound.
fn scan_users(db: &Database, scan: &mut Scan) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(USERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let mut seen: HashSet<(OrgId, String)> = HashSet::new();
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let key = key.value();
        scan.report.api_users += 1;
        scan.last = Some(format!("{key:?}"));
        let user: ApiUser = match serde_json::from_slice(value.value()) {
            Ok(user) => user,
            Err(e) => {
                scan.problem(Problem::Undecodable {
                    table: "api_users",
                    record: format!("{key:?}"),
                    why: json_error(&e),
                });
                continue;
            }
        };
        let (org, username) = (user.org.as_str().to_owned(), user.username.clone());
        let quoted = format!("{username:?}");
        if format!("{org}/{username}") != key {
            scan.problem(Problem::MisfiledUser {
                key: format!("{key:?}"),
                org: org.clone(),
                username: quoted.clone(),
            });
        }
        if !seen.insert((user.org.clone(), username.clone())) {
            scan.problem(Problem::DuplicateUser {
                org: org.clone(),
                username: quoted.clone(),
            });
        }
        if !valid_username(&username) {
            scan.problem(Problem::BadUsername {
                org: org.clone(),
                username: quoted.clone(),
            });
        }
        if let Some(why) = digest_problem(&user.password_digest) {
            scan.problem(Problem::BadPasswordDigest {
                org: org.clone(),
                username: quoted,
                why,
            });
        }
        scan.users.push((org, username));
    }
    Ok(())
}

/// The saved threshold windows: keyed by org id, as `serve` reads them. A
/// store written before the table existed has none, which is sound.
fn scan_counts(db: &Database, scan: &mut Scan) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(COUNTS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (key, _) = entry.map_err(|e| e.to_string())?;
        let key = key.value();
        scan.last = Some(format!("{key:?}"));
        if !OrgId::is_valid(key.as_bytes()) {
            scan.problem(Problem::NotAnOrgId {
                table: "counts",
                key: format!("{key:?}"),
            });
        }
    }
    Ok(())
}

fn scan_audit(db: &Database, scan: &mut Scan) -> Result<(), String> {
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let table = txn.open_table(AUDIT).map_err(|e| e.to_string())?;
    // The org whose log is being read, and the number its next record has.
    let mut current: Option<(String, u64)> = None;
    for entry in table.iter().map_err(|e| e.to_string())? {
        let (key, value) = entry.map_err(|e| e.to_string())?;
        let (org, seq) = key.value();
        let record = format!("({org:?}, {seq})");
        scan.report.audit_events += 1;
        scan.last = Some(record.clone());
        let next = match &current {
            Some((o, next)) if o == org => *next,
            _ => {
                if !OrgId::is_valid(org.as_bytes()) {
                    scan.problem(Problem::NotAnOrgId {
                        table: "audit",
                        key: format!("{org:?}"),
                    });
                }
                scan.logged.insert(org.to_owned());
                1
            }
        };
        // Keygate numbers each org's records 1, 2, 3 ...: a jump lost some.
        if seq > next {
            scan.problem(Problem::AuditGap {
                org: format!("{org:?}"),
                from: next,
                to: seq.saturating_sub(1),
            });
        }
        current = Some((org.to_owned(), seq.saturating_add(1)));
        match serde_json::from_slice::<AuditEvent>(value.value()) {
            Ok(event) if event.org.as_str() != org => scan.problem(Problem::MisfiledEvent {
                record,
                about: format!("{:?}", event.org.as_str()),
            }),
            // Only the last event counts: an org deleted and provisioned
            // again has a later one.
            Ok(event) if event.action == crate::org::Action::DeleteOrg => {
                scan.deleted.insert(org.to_owned());
            }
            Ok(_) => {
                scan.deleted.remove(org);
            }
            Err(e) => scan.problem(Problem::Undecodable {
                table: "audit",
                record,
                why: json_error(&e),
            }),
        }
    }
    Ok(())
}

impl fmt::Display for CheckReport {
    /// One line: what was read and how many problems were found.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} orgs, {} tokens, {} API users, {} audit records read: ",
            self.orgs, self.tokens, self.api_users, self.audit_events
        )?;
        match self.problems.len() {
            0 => f.write_str("no problems"),
            1 => f.write_str("1 problem"),
            n => write!(f, "{n} problems"),
        }
    }
}

#[cfg(test)]
mod tests {
    use tempfile::TempDir;

    use super::*;
    use crate::clock::Timestamp;
    use crate::org::{Action, Actor, LimitOverrides, OrgState};
    use crate::store::{Backend, Change, Commit};
    use crate::token::Role;

    const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
    const KEY: &str = "Ab3dEf6hIj9k";

    fn event(org: &str) -> AuditEvent {
        AuditEvent {
            org: OrgId::parse(org).unwrap(),
            at: T0,
            actor: Actor::Provider,
            action: Action::Provision,
            detail: "provisioned".into(),
        }
    }

    fn token(name: &str, org: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            role: Role::Admin,
            org: OrgId::parse(org).unwrap(),
            digest: TokenDigest::of(secret),
            created_at: T0,
        }
    }

    /// A store as keygate writes it: two orgs (one with a known key), a token,
    /// and a few audit records each.
    async fn sound_store(dir: &TempDir) -> std::path::PathBuf {
        let path = dir.path().join("keygate.redb");
        let b = RedbBackend::open(&path).unwrap();
        for org in ["acme", "globex"] {
            let mut t =
                OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
            t.key = Some(crate::key::ApiKey::parse(KEY.as_bytes()).unwrap());
            let id = OrgId::parse(org).unwrap();
            for change in [
                Change::provision(id.clone(), t.clone()),
                Change::update(id, t, 1),
            ] {
                b.commit(Commit {
                    change,
                    event: event(org),
                })
                .await
                .unwrap();
            }
        }
        b.commit(Commit {
            change: Change::PutToken(token("alice", "acme", "s1")),
            event: event("acme"),
        })
        .await
        .unwrap();
        path
    }

    /// Writes raw records into the store at `path`, as damage or a foreign
    /// writer would.
    fn write_raw(
        path: &Path,
        orgs: &[(&str, &[u8])],
        tokens: &[(&str, &[u8])],
        audit: &[((&str, u64), &[u8])],
        remove_audit: &[(&str, u64)],
    ) {
        let db = Database::open(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(ORGS).unwrap();
            for (k, v) in orgs {
                t.insert(*k, *v).unwrap();
            }
            let mut t = txn.open_table(TOKENS).unwrap();
            for (k, v) in tokens {
                t.insert(*k, *v).unwrap();
            }
            let mut t = txn.open_table(AUDIT).unwrap();
            for (k, v) in audit {
                t.insert(*k, *v).unwrap();
            }
            for k in remove_audit {
                t.remove(*k).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    #[tokio::test]
    async fn a_store_keygate_wrote_is_clean_and_every_record_is_counted() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        let report = check_store(&path).unwrap();
        assert_eq!(report.problems, vec![]);
        assert!(report.is_clean());
        assert_eq!((report.orgs, report.tokens, report.audit_events), (2, 1, 5));
        assert_eq!(
            report.to_string(),
            "2 orgs, 1 tokens, 0 API users, 5 audit records read: no problems"
        );
    }

    #[tokio::test]
    async fn a_deleted_orgs_log_without_the_org_is_clean() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        {
            let b = RedbBackend::open(&path).unwrap();
            let mut event = event("acme");
            event.action = crate::org::Action::DeleteOrg;
            b.commit(Commit {
                change: Change::DeleteOrg {
                    id: OrgId::parse("acme").unwrap(),
                    expected: 2,
                },
                event,
            })
            .await
            .unwrap();
        }
        let report = check_store(&path).unwrap();
        assert_eq!(report.problems, vec![]);
        // The org and its token are gone; its log stays.
        assert_eq!((report.orgs, report.tokens, report.audit_events), (1, 0, 6));
    }

    #[tokio::test]
    async fn saved_windows_are_checked_for_org_ids_and_a_store_without_them_is_clean() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(COUNTS).unwrap();
                t.insert("acme", (1_800_000_000, 3)).unwrap();
                t.insert("Not An Id", (1_800_000_000, 1)).unwrap();
            }
            txn.commit().unwrap();
        }
        let report = check_store(&path).unwrap();
        assert_eq!(
            report.problems,
            vec![Problem::NotAnOrgId {
                table: "counts",
                key: "\"Not An Id\"".to_owned(),
            }]
        );
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            assert!(txn.delete_table(COUNTS).unwrap());
            txn.commit().unwrap();
        }
        assert_eq!(check_store(&path).unwrap().problems, vec![]);
    }

    #[tokio::test]
    async fn an_org_whose_version_is_not_a_number_is_undecodable() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        let state =
            OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
        let mut bad = serde_json::to_value(&state).unwrap();
        bad["version"] = serde_json::json!("two");
        write_raw(&path, &[("acme", &json(&bad))], &[], &[], &[]);
        let report = check_store(&path).unwrap();
        assert!(
            matches!(
                report.problems.as_slice(),
                [Problem::Undecodable { table: "orgs", record, .. }] if record == "\"acme\""
            ),
            "{:?}",
            report.problems
        );
        // And the store refuses to load it, as check said.
        let b = RedbBackend::open(&path).unwrap();
        assert!(matches!(b.load().await, Err(BackendError::Corrupt(_))));
    }

    #[tokio::test]
    async fn each_damaged_or_inconsistent_record_is_one_problem_naming_table_and_record() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        // A state cut short, right after the key.
        let cut = format!(r#"{{"key":"{KEY}","status""#);
        let misfiled = event("acme");
        write_raw(
            &path,
            &[("acme", cut.as_bytes()), ("lonely", &json(&"x"))],
            &[
                ("bob", &json(&token("bob", "nowhere", "s2"))),
                ("carol", &json(&token("dave", "acme", "s3"))),
                ("erin", &json(&token("erin", "acme", "s1"))),
            ],
            &[
                (("acme", 3), b"\xff not json"),
                (("acme", 7), &json(&event("acme"))),
                (("ghost", 1), &json(&event("ghost"))),
                (("globex", 3), &json(&misfiled)),
            ],
            &[("globex", 1)],
        );
        let report = check_store(&path).unwrap();
        assert_eq!(
            report.problems,
            vec![
                (Problem::Undecodable {
                    table: "orgs",
                    record: "\"acme\"".into(),
                    why: "truncated JSON at line 1 column 30".into()
                }),
                (Problem::Undecodable {
                    table: "orgs",
                    record: "\"lonely\"".into(),
                    why: "unexpected data at line 1 column 3".into()
                }),
                (Problem::MisfiledToken {
                    key: "\"carol\"".into(),
                    name: "\"dave\"".into()
                }),
                (Problem::SharedDigest {
                    first: "\"alice\"".into(),
                    second: "\"erin\"".into()
                }),
                (Problem::Undecodable {
                    table: "audit",
                    record: "(\"acme\", 3)".into(),
                    why: "malformed JSON at line 1 column 1".into()
                }),
                (Problem::AuditGap {
                    org: "\"acme\"".into(),
                    from: 4,
                    to: 6
                }),
                (Problem::AuditGap {
                    org: "\"globex\"".into(),
                    from: 1,
                    to: 1
                }),
                (Problem::MisfiledEvent {
                    record: "(\"globex\", 3)".into(),
                    about: "\"acme\"".into()
                }),
                (Problem::TokenForMissingOrg {
                    name: "\"bob\"".into(),
                    org: "\"nowhere\"".into()
                }),
                (Problem::OrgWithoutLog {
                    org: "\"lonely\"".into()
                }),
                (Problem::LogOfMissingOrg {
                    org: "\"ghost\"".into()
                }),
            ]
        );
        let lines: Vec<String> = report.lines().collect();
        assert_eq!(lines.len(), report.problems.len());
        for line in &lines {
            assert!(line.starts_with(&path.display().to_string()), "{line}");
            assert!(!line.contains(KEY), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    fn user(org: &str, username: &str, digest: &str) -> ApiUser {
        ApiUser {
            org: OrgId::parse(org).unwrap(),
            username: username.into(),
            password_digest: digest.into(),
            created_at: T0,
        }
    }

    #[tokio::test]
    async fn api_users_are_counted_and_each_bad_one_is_a_problem_naming_org_and_user() {
        let dir = TempDir::new().unwrap();
        let path = sound_store(&dir).await;
        let digest = crate::session::user::hash_password("correct horse battery").unwrap();
        {
            let b = RedbBackend::open(&path).unwrap();
            b.commit(Commit {
                change: Change::PutUser(user("acme", "ann", &digest)),
                event: event("acme"),
            })
            .await
            .unwrap();
        }
        let report = check_store(&path).unwrap();
        assert_eq!(report.problems, vec![]);
        assert_eq!(report.api_users, 1);
        assert_eq!(
            report.to_string(),
            "2 orgs, 1 tokens, 1 API users, 6 audit records read: no problems"
        );

        let records: [(&str, ApiUser); 4] = [
            (
                "acme/bob",
                user("acme", "bob", "$argon2id$v=19$not a digest"),
            ),
            (
                "acme/cat",
                user("acme", "cat", &digest.replace("$argon2id$", "$argon2i$")),
            ),
            ("acme/dan", user("acme", "ann", &digest)),
            ("ghost/eve", user("ghost", "eve", &digest)),
        ];
        {
            let db = Database::open(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(USERS).unwrap();
                for (k, u) in &records {
                    t.insert(*k, json(u).as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        let report = check_store(&path).unwrap();
        assert_eq!(report.api_users, 5);
        assert_eq!(
            report.problems,
            vec![
                Problem::BadPasswordDigest {
                    org: "acme".into(),
                    username: "\"bob\"".into(),
                    why: "is not a PHC string"
                },
                Problem::BadPasswordDigest {
                    org: "acme".into(),
                    username: "\"cat\"".into(),
                    why: "is not an argon2id digest"
                },
                Problem::MisfiledUser {
                    key: "\"acme/dan\"".into(),
                    org: "acme".into(),
                    username: "\"ann\"".into()
                },
                Problem::DuplicateUser {
                    org: "acme".into(),
                    username: "\"ann\"".into()
                },
                Problem::UserOfMissingOrg {
                    username: "\"eve\"".into(),
                    org: "\"ghost\"".into()
                },
            ]
        );
        let lines: Vec<String> = report.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "{}: table api_users: user \"bob\" of org acme: its password digest is not a PHC string",
                path.display()
            )
        );
        let salt_and_hash = digest.split('$').skip(4).collect::<Vec<_>>().join("$");
        for line in &lines {
            assert!(!line.contains(&salt_and_hash), "{line}");
        }
    }

    #[test]
    fn a_file_serve_would_refuse_is_one_problem_naming_it() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("keygate.redb");
        std::fs::write(&path, b"not a database at all, just some bytes").unwrap();
        let report = check_store(&path).unwrap();
        assert!(
            matches!(&report.problems[..], [Problem::Refused(_)]),
            "{report:?}"
        );
        let lines: Vec<String> = report.lines().collect();
        assert!(lines[0].contains(&path.display().to_string()), "{lines:?}");
    }

    #[test]
    fn a_missing_store_cannot_be_checked_and_is_not_created() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("keygate.redb");
        assert!(matches!(
            check_store(&path),
            Err(BackendError::Unavailable(_))
        ));
        assert!(!path.exists());
    }

    #[test]
    fn a_store_open_elsewhere_cannot_be_checked() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("keygate.redb");
        let _open = RedbBackend::open(&path).unwrap();
        assert!(matches!(
            check_store(&path),
            Err(BackendError::Unavailable(_))
        ));
    }
}
