//! The seam every mutation passes through before it becomes visible.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::counts::CallCount;
use crate::clock::Timestamp;
use crate::org::{Action, Actor, OrgId, OrgState};
use crate::token::TokenRecord;

/// A boxed, sendable future: what a [`Backend`] returns, so the store can hold any
/// backend behind one `dyn` without making every type in keygate generic over it.
/// Only mutations and start-up go through here, never the request path.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the store makes mutations durable and reads them back at start.
///
/// The store calls [`Backend::commit`] with the org's whole next state and the
/// audit event that explains it, and makes the change visible to requests only
/// after the commit returned `Ok`. A backend therefore promises:
///
/// * `commit` returns `Ok` only once the change survives a crash of the process
///   (and, for a durable backend, of the machine), and it applies the record and
///   its event atomically: both or neither;
/// * `load` returns every record whose commit returned `Ok`, in its last committed
///   state, or an error; never an empty snapshot over data it could not read.
///
/// The store serializes the mutations of one org, so a backend may assume that
/// two commits for the same org never overlap; commits of different orgs may.
pub trait Backend: Send + Sync + 'static {
    /// Reads every org and token back.
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>>;

    /// Reads every org back as [`load`](Backend::load) does, but sends the orgs
    /// to `orgs` in batches as they are read, and returns the tokens. The store
    /// starts with this: it builds each org while the backend reads the next
    /// ones, so start-up uses two cores and never holds every record at once
    /// (a million records in one `Vec` would also leave their freed ids as holes
    /// between the orgs built after them). The default sends all of `load` as
    /// one batch.
    ///
    /// A send that fails means the store stopped reading (it found a problem it
    /// reports itself); the backend may stop too.
    fn load_into(&self, orgs: OrgBatches) -> BoxFuture<'_, Result<Vec<TokenRecord>, BackendError>> {
        Box::pin(async move {
            let Snapshot { orgs: all, tokens } = self.load().await?;
            // Closed: the store stopped reading and reports why itself.
            let _ = orgs.send(Loading::Orgs(all)).await;
            Ok(tokens)
        })
    }

    /// Makes `commit` durable.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<(), BackendError>>;

    /// The audit events of `org`, oldest first.
    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>>;

    /// The counter seam, first half: persists each org's threshold window in
    /// `counts`, replacing what was persisted for it (a `None` window removes
    /// it), all in one write that survives a crash once this returns `Ok`.
    /// The store calls it from one flusher at a time
    /// ([`CountFlusher`](super::CountFlusher) says when). The default persists nothing:
    /// such a backend opens a fresh window at every restart.
    fn save_counts(&self, counts: Vec<CallCount>) -> BoxFuture<'_, Result<(), BackendError>> {
        drop(counts);
        Box::pin(std::future::ready(Ok(())))
    }

    /// The counter seam, second half: every window [`save_counts`] left
    /// persisted, read once when the store opens.
    ///
    /// [`save_counts`]: Backend::save_counts
    fn load_counts(&self) -> BoxFuture<'_, Result<Vec<CallCount>, BackendError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Makes every commit of `commits` durable in one step, all or none, as
    /// [`commit`](Backend::commit) makes one: how `keygate import` provisions
    /// many orgs without one durable write each. The default refuses: a
    /// backend that cannot apply many changes atomically must not pretend to.
    fn commit_all(&self, commits: Vec<Commit>) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = commits;
        Box::pin(std::future::ready(Err(BackendError::Unavailable(
            "this store cannot take changes in bulk".into(),
        ))))
    }

    /// Everything the backend holds, for `keygate export`: every org, every
    /// token, and every audit event, each org's oldest first. The default reads
    /// it with [`load`](Backend::load) and one [`audit`](Backend::audit) per
    /// org, which is one consistent picture only while nothing commits; a
    /// backend that can read everything at one point in time overrides it.
    fn dump(&self) -> BoxFuture<'_, Result<Dump, BackendError>> {
        Box::pin(async move {
            let Snapshot { orgs, tokens } = self.load().await?;
            let mut audit = Vec::new();
            for org in &orgs {
                audit.extend(self.audit(org.id.clone()).await?);
            }
            Ok(Dump {
                orgs,
                tokens,
                audit,
            })
        })
    }

    /// Loads `dump` whole into a backend that holds no org, no token and no
    /// audit event, in one durable step: afterwards the backend holds exactly
    /// `dump`, or, on an error or [`Restored::NotEmpty`], exactly what it held
    /// before. The emptiness check and the writes are one atomic step, so two
    /// imports (or an import and a running node's first provision) never mix.
    /// Each org's events are appended in the order `dump` gives them. The
    /// default refuses.
    fn restore(&self, dump: Dump) -> BoxFuture<'_, Result<Restored, BackendError>> {
        let _ = dump;
        Box::pin(std::future::ready(Err(BackendError::Unavailable(
            "this store cannot load an export".into(),
        ))))
    }
}

/// Everything a backend holds: what [`Backend::dump`] reads and
/// [`Backend::restore`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dump {
    /// Every org.
    pub orgs: Vec<OrgRecord>,
    /// Every admin and viewer token (digests only: a token itself is never kept).
    pub tokens: Vec<TokenRecord>,
    /// Every audit event, each org's oldest first.
    pub audit: Vec<AuditEvent>,
}

/// How [`Backend::restore`] ended, when the backend could be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Restored {
    /// The backend now holds the dump.
    Done,
    /// The backend already held records, so nothing was written.
    NotEmpty {
        /// Orgs it holds.
        orgs: u64,
        /// Tokens it holds.
        tokens: u64,
        /// Audit events it holds.
        audit_events: u64,
    },
}

/// Where [`Backend::load_into`] sends what it reads.
pub type OrgBatches = tokio::sync::mpsc::Sender<Loading>;

/// What [`Backend::load_into`] sends, in order.
#[derive(Debug)]
pub enum Loading {
    /// How many orgs follow, sent first by a backend that knows it cheaply: the
    /// store sizes its map once instead of growing it a million times over.
    Expect(usize),
    /// The next orgs read.
    Orgs(Vec<OrgRecord>),
}

/// What a backend holds, as loaded at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every org.
    pub orgs: Vec<OrgRecord>,
    /// Every admin and viewer token.
    pub tokens: Vec<TokenRecord>,
}

/// One org as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// The org.
    pub id: OrgId,
    /// Its whole state.
    pub state: OrgState,
}

/// One entry of an org's audit log. Never carries a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// The org the change is about.
    pub org: OrgId,
    /// When the change was made.
    pub at: Timestamp,
    /// Who made it.
    pub actor: Actor,
    /// What it was.
    pub action: Action,
    /// A short description; at most a key's last four characters.
    pub detail: String,
}

/// A change to persist.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change {
    /// Create or replace an org's record.
    Org(OrgRecord),
    /// Create a token.
    PutToken(TokenRecord),
    /// Delete the token of this name.
    DeleteToken(String),
}

/// A change and the audit event that explains it, committed together. The event
/// is appended to the log of the org it names.
#[derive(Debug, Clone)]
pub struct Commit {
    /// What changes.
    pub change: Change,
    /// Why, by whom, when.
    pub event: AuditEvent,
}

/// A backend failure. The message is for the log: it never carries a key, and the
/// admin API never shows it to a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The backend could not be reached or written: the change was not made.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// What the backend holds cannot be read as keygate's data.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}
