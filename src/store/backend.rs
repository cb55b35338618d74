//! The seam every mutation passes through before it becomes visible, and by
//! which a store learns the changes other stores (other nodes) make.
//!
//! One design, several backends: the embedded [`RedbBackend`](super::RedbBackend)
//! (one node, one file), the [`MemoryBackend`](super::MemoryBackend) (tests; and,
//! shared by several stores, several nodes in one process), and later a
//! networked one shared by several nodes. What they promise, in short:
//!
//! * **Versioned records.** Every org record carries a version: 1 when it is
//!   provisioned, one more with each commit ([`OrgRecord::version`]).
//! * **Conditional commits.** Every [`Change`] says what it expects (the org's
//!   stored version, none for a provision; a token name free, or taken), and
//!   the backend checks it and applies the change in one atomic step, or
//!   refuses with [`BackendError::Conflict`] and changes nothing. This, not
//!   the store's local writer lock, is what keeps two nodes from overwriting
//!   each other.
//! * **A change feed** ([`Backend::subscribe`]) for a backend several stores
//!   share: each successful commit, as a [`Feed`] event, to every subscriber,
//!   in commit order. The feed is bounded ([`FEED_CAPACITY`]): a subscriber
//!   that falls behind loses events and is told so with [`Feed::Resync`], on
//!   which it must reload everything ([`Backend::load`]) before it trusts what
//!   it holds again. A backend that replaces everything at once
//!   ([`Backend::restore`]) sends `Resync` too. Events are idempotent for a
//!   subscriber that keeps, per org, the record of the highest version, and
//!   applies token events in order.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use super::counts::CallCount;
use crate::clock::Timestamp;
use crate::limit::Window;
use crate::org::{Action, Actor, OrgId, OrgState};
use crate::session::{ApiUser, SessionDigest, SessionRecord};
use crate::token::{TokenDigest, TokenRecord};

/// A boxed, sendable future: what a [`Backend`] returns, so the store can hold any
/// backend behind one `dyn` without making every type in keygate generic over it.
/// Only mutations and start-up go through here, never the request path.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the store makes mutations durable, reads them back, and learns of
/// the changes other nodes make.
///
/// The store calls [`Backend::commit`] with the org's whole next state, the
/// version it computed that state from, and the audit event that explains it,
/// and makes the change visible to requests only after the commit returned
/// `Ok`. A backend therefore promises:
///
/// * `commit` returns `Ok` only once the change survives a crash of the process
///   (and, for a durable backend, of the machine), and it applies the record and
///   its event atomically: both or neither;
/// * every commit is conditional: the backend checks what the [`Change`]
///   expects (the org's stored version, or that a token name is free or
///   taken) and applies the change in the same atomic step, or refuses with
///   [`BackendError::Conflict`] and changes nothing. So two writers that
///   computed from the same version (two nodes, or one node and an import)
///   never overwrite each other: one wins, the other re-reads and re-decides;
/// * `load` returns every record whose commit returned `Ok`, in its last committed
///   state, or an error; never an empty snapshot over data it could not read;
/// * a backend shared by several stores (nodes) has a feed
///   ([`subscribe`](Backend::subscribe)): every successful commit, in commit
///   order, to every subscriber, or a [`Feed::Resync`] where a subscriber
///   lost events.
///
/// One store serializes its own mutations of one org, so a backend sees two
/// overlapping commits of one org only from two stores; the version check is
/// what keeps them apart.
pub trait Backend: Send + Sync + 'static {
    /// Reads every org and token back.
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>>;

    /// Reads every org back as [`load`](Backend::load) does, but sends the orgs
    /// to `orgs` in batches as they are read, and returns the tokens. The store
    /// starts with this: it builds each org while the backend reads the next
    /// ones, so start-up uses two cores and never holds every record at once
    /// (a million records in one `Vec` would also leave their freed ids as holes
    /// between the orgs built after them). The default sends the count of
    /// `load`'s orgs, then all of them as one batch.
    ///
    /// A send that fails means the store stopped reading (it found a problem it
    /// reports itself); the backend may stop too.
    fn load_into(&self, orgs: OrgBatches) -> BoxFuture<'_, Result<Vec<TokenRecord>, BackendError>> {
        Box::pin(async move {
            let Snapshot {
                orgs: all, tokens, ..
            } = self.load().await?;
            // Closed: the store stopped reading and reports why itself.
            if orgs.send(Loading::Expect(all.len())).await.is_ok() {
                let _ = orgs.send(Loading::Orgs(all)).await;
            }
            Ok(tokens)
        })
    }

    /// Makes `commit` durable if what it expects holds, in one atomic step;
    /// otherwise refuses with [`BackendError::Conflict`] and changes nothing.
    /// Returns the commit's place on the feed ([`Event::seq`]), which
    /// [`confirm`](Backend::confirm) waits for; 0 for a backend without one.
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>>;

    /// Resolves once every node sharing this backend has applied the commit
    /// at `seq` to what it serves, or has provably stopped serving (its lease
    /// ran out): after this, no node serves the state the commit replaced.
    /// The store calls it after its own swap and before answering, for every
    /// change that can refuse a key or a token. Fails with
    /// [`BackendError::Unavailable`] if that cannot be established (this node
    /// lost the backend meanwhile): the change is made, but not confirmed.
    /// The default resolves at once: a backend only one store uses has no
    /// one else to wait for.
    fn confirm(&self, seq: Seq) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = seq;
        Box::pin(std::future::ready(Ok(())))
    }

    /// This node's lease, for a backend several nodes share: whether the node
    /// may serve, which the gate and the admin API check on every call, and
    /// how many nodes are live. `None` for a backend one node owns, which
    /// always serves.
    fn lease(&self) -> Option<std::sync::Arc<super::Lease>> {
        None
    }

    /// The last place on the change feed this node's reader has seen, for
    /// the feed lag in `GET /metrics` (it less the store's last applied).
    /// `None` for a backend without a feed.
    fn feed_seen(&self) -> Option<Seq> {
        None
    }

    /// The org `id` as last committed, if it exists: what the store reads after
    /// a [`BackendError::Conflict`] to re-decide on the newest state. The
    /// default reads everything with [`load`](Backend::load), which is correct
    /// but slow; a real backend reads the one record.
    fn org(&self, id: &OrgId) -> BoxFuture<'_, Result<Option<OrgRecord>, BackendError>> {
        let id = id.clone();
        Box::pin(async move {
            let Snapshot { orgs, .. } = self.load().await?;
            Ok(orgs.into_iter().find(|r| r.id == id))
        })
    }

    /// The token named `name` as last committed, if it exists. The default
    /// reads everything, as [`org`](Backend::org)'s does.
    fn token(&self, name: &str) -> BoxFuture<'_, Result<Option<TokenRecord>, BackendError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let Snapshot { tokens, .. } = self.load().await?;
            Ok(tokens.into_iter().find(|t| t.name == name))
        })
    }

    /// The change feed: every commit that succeeds from now on, through any
    /// store sharing this backend (this one's own included), in commit order,
    /// each as an [`Event`] with its place on the feed. The store reports
    /// each event it has applied ([`Subscription::applied`]), which is what
    /// [`confirm`](Backend::confirm) on another node waits for.
    /// `None` for a backend only one store uses (the redb file: the store
    /// applies its own commits itself, as it makes them).
    ///
    /// Subscribe before [`load`](Backend::load): a commit made between the two
    /// then arrives twice (in the snapshot and on the feed), which the store
    /// ignores by version, instead of never.
    fn subscribe(&self) -> Option<Subscription> {
        None
    }

    /// Every API user (session login), as last committed: what the store
    /// reads at start, after [`load_into`](Backend::load_into). The default
    /// reads everything with [`load`](Backend::load).
    fn users(&self) -> BoxFuture<'_, Result<Vec<ApiUser>, BackendError>> {
        Box::pin(async move { Ok(self.load().await?.users) })
    }

    /// Makes a new session known to every node sharing this backend: kept
    /// in the backend and sent on the feed ([`Feed::PutSession`]), without
    /// an audit event; the store then [`confirm`](Backend::confirm)s it
    /// before the login is answered. Returns its place on the feed. The
    /// default keeps nothing and answers 0: a backend one node owns has no
    /// one else to tell, and sessions live in that node's memory.
    fn put_session(&self, record: SessionRecord) -> BoxFuture<'_, Result<Seq, BackendError>> {
        drop(record);
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Ends a session on every node sharing this backend, as
    /// [`put_session`](Backend::put_session) makes one ([`Feed::EndSession`]).
    fn end_session(&self, digest: SessionDigest) -> BoxFuture<'_, Result<Seq, BackendError>> {
        let _ = digest;
        Box::pin(std::future::ready(Ok(0)))
    }

    /// Records when sessions were last used on this node, for the other
    /// nodes' idle checks ([`session_used`](Backend::session_used)); a
    /// node sends at most one use per session per second, in batches. The
    /// default keeps nothing.
    fn touch_sessions(
        &self,
        uses: Vec<(SessionDigest, crate::clock::Timestamp)>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        drop(uses);
        Box::pin(std::future::ready(Ok(())))
    }

    /// When a session was last used on any node, as far as
    /// [`touch_sessions`](Backend::touch_sessions) recorded it: what a node
    /// that finds a session idle by its own calls asks before it refuses.
    fn session_used(
        &self,
        digest: SessionDigest,
    ) -> BoxFuture<'_, Result<Option<crate::clock::Timestamp>, BackendError>> {
        let _ = digest;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Failed session logins, counted for every node sharing this backend:
    /// counts a failure of `username` of `org` first when `failed`, then
    /// answers the seconds until logins for the org (or that username of
    /// it) may be tried again, if the cluster's failures are over the
    /// limits of [`FAILURE_WINDOW_SECS`](crate::session::table::FAILURE_WINDOW_SECS)
    /// now. `now` is the node's time, for a backend without a clock of its
    /// own (Redis windows by its own clock). The default counts nothing and
    /// answers `None`: a backend one node owns leaves the count to that
    /// node's [`Sessions`](crate::session::Sessions).
    fn login_lockout(
        &self,
        org: &OrgId,
        username: &str,
        failed: bool,
        now: crate::clock::Timestamp,
    ) -> BoxFuture<'_, Result<Option<u64>, BackendError>> {
        let _ = (org, username, failed, now);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Every session the backend keeps, for a store that opens or reloads.
    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, BackendError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

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

    /// Whether the threshold counts are the cluster's, kept by this backend
    /// ([`take_calls`](Backend::take_calls)), rather than each node's own
    /// (counted in memory, saved with [`save_counts`](Backend::save_counts)).
    fn shares_calls(&self) -> bool {
        false
    }

    /// The counter seam of a backend several nodes share: grants this node
    /// up to `take.want` calls of the org's current threshold window, in one
    /// atomic step against every node's grants, so that the calls granted in
    /// one window never add up to more than the threshold. The window opens
    /// with the first grant after the previous one ended. A grant of 0 calls
    /// means the cluster has granted the whole threshold: the call that asked
    /// is the one past it. The backend may grant fewer than asked, and does
    /// as the remainder runs low, so that a few nodes' unspent calls cannot
    /// fire the threshold much early. `take.returned` is what this node
    /// hands back unspent of an earlier grant.
    fn take_calls(&self, take: Take) -> BoxFuture<'_, Result<Grant, BackendError>> {
        let _ = take;
        Box::pin(std::future::ready(Err(BackendError::Unavailable(
            "this store does not share threshold counts".into(),
        ))))
    }

    /// The cluster's threshold window of `org` as [`take_calls`](Backend::take_calls)
    /// keeps it: its start and the calls granted in it (spent or not), if a
    /// window was opened. For the usage call; the default has none.
    fn calls_window(&self, org: &OrgId) -> BoxFuture<'_, Result<Option<Window>, BackendError>> {
        let _ = org;
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Asks every node sharing this backend to hand back the calls of `org`'s
    /// window it holds unspent ([`Feed::Reclaim`] on the feed, applied by
    /// each node with a [`take_calls`](Backend::take_calls) that returns
    /// them): what a node does when the cluster has granted the whole
    /// threshold and it needs one more call, before it concludes that the
    /// threshold is crossed. The default does nothing: a backend one node
    /// owns has no other node to ask.
    fn reclaim_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = org;
        Box::pin(std::future::ready(Ok(())))
    }

    /// Ends `org`'s threshold window, wherever it is counted, so its next
    /// call opens a fresh one: what an enable does first. The default
    /// removes the window [`save_counts`](Backend::save_counts) persisted.
    fn reset_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        self.save_counts(vec![CallCount {
            org: org.clone(),
            window: None,
        }])
    }

    /// Makes every commit of `commits` durable in one step, all or none, as
    /// [`commit`](Backend::commit) makes one: how `keygate import` provisions
    /// many orgs without one durable write each. Each commit's expectation is
    /// checked against the state the commits before it leave; one that fails
    /// refuses the whole batch with [`BackendError::Conflict`]. The default refuses: a
    /// backend that cannot apply many changes atomically must not pretend to.
    fn commit_all(&self, commits: Vec<Commit>) -> BoxFuture<'_, Result<(), BackendError>> {
        let _ = commits;
        Box::pin(std::future::ready(Err(BackendError::Unavailable(
            "this store cannot take changes in bulk".into(),
        ))))
    }

    /// Everything the backend holds, for `keygate export`: every org, every
    /// token, every API user, and every audit event, each org's oldest first. The default reads
    /// it with [`load`](Backend::load) and one [`audit`](Backend::audit) per
    /// org, which is one consistent picture only while nothing commits; a
    /// backend that can read everything at one point in time overrides it.
    fn dump(&self) -> BoxFuture<'_, Result<Dump, BackendError>> {
        Box::pin(async move {
            let Snapshot {
                orgs,
                tokens,
                users,
            } = self.load().await?;
            let mut audit = Vec::new();
            for org in &orgs {
                audit.extend(self.audit(org.id.clone()).await?);
            }
            Ok(Dump {
                orgs,
                tokens,
                users,
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

/// A node's request for calls of an org's threshold window
/// ([`Backend::take_calls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    /// The org.
    pub org: OrgId,
    /// Its threshold: the most calls granted in one window, all nodes together.
    pub threshold: u32,
    /// Its window's length.
    pub window_secs: u32,
    /// How many calls this node would like; 0 when it only hands some back.
    pub want: u32,
    /// Nodes serving now, this one included: the backend grants each at most
    /// a share of what remains.
    pub nodes: u32,
    /// The node's time: when a window opens, for a backend without a clock of
    /// its own (one with a clock, such as Redis, uses that, so that every
    /// node's grants fall in one window).
    pub now: Timestamp,
    /// Calls of an earlier grant this node hands back unspent: the window's
    /// start and how many. Ignored unless that window is still the open one.
    pub returned: Option<(u32, u32)>,
}

/// What [`Backend::take_calls`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The open window's start, whole seconds since the Unix epoch.
    pub window_start: u32,
    /// Calls granted to this node, 0 when the threshold is reached.
    pub calls: u32,
}

impl Grant {
    /// The share a backend grants: what was asked, but at most half of what
    /// remains divided among the nodes (at least 1 while any remains), so
    /// that chunks shrink as the window's calls run out and the calls other
    /// nodes hold unspent when the last is granted stay few.
    pub fn share(want: u32, remaining: u32, nodes: u32) -> u32 {
        let fair = (remaining / nodes.max(1).saturating_mul(2)).max(1);
        want.min(fair).min(remaining)
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
    /// Every API user (password digests only: a password is never kept).
    pub users: Vec<ApiUser>,
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
    /// Every API user (session login).
    pub users: Vec<ApiUser>,
}

/// One org as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// The org.
    pub id: OrgId,
    /// Its whole state.
    pub state: OrgState,
    /// How many commits made this state: 1 when provisioned, one more with
    /// every change. A conditional commit names the version it was computed
    /// from; a feed's reader keeps the newer of two records. Records written
    /// before versions existed read as 0, and their next commit writes 1.
    #[serde(default)]
    pub version: u64,
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

/// A change to persist, with what it expects to find.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Change {
    /// Create or replace an org's record.
    Org {
        /// The record to write; its version is `expected + 1` (1 for a new org).
        record: OrgRecord,
        /// The version the record was computed from, as stored now; `None`
        /// when the org must not exist yet (provisioning).
        expected: Option<u64>,
    },
    /// Create a token; expects no token of its name.
    PutToken(TokenRecord),
    /// Delete the token of this name; expects it to exist.
    DeleteToken(String),
    /// Replace the token named `record.name` with `record` (a new secret's
    /// digest), in one step; expects the stored token of that name to have
    /// the digest `expected`, so the old secret is refused once this commits
    /// and two rotations of one token cannot both succeed.
    RotateToken {
        /// The token's new record.
        record: TokenRecord,
        /// The digest the stored token must still have.
        expected: TokenDigest,
    },
    /// Create an API user; expects no user of its (org, username).
    PutUser(ApiUser),
    /// Delete an API user; expects it to exist.
    DeleteUser {
        /// Its org.
        org: OrgId,
        /// Its username.
        username: String,
    },
    /// Delete an org, every token and API user of it and its threshold
    /// window, in the same step; expects the org at version `expected`. Its
    /// audit log stays.
    DeleteOrg {
        /// The org.
        id: OrgId,
        /// The version it must be at.
        expected: u64,
    },
}

impl Change {
    /// A provision: `state` as version 1 of the org `id`, which must not exist.
    pub fn provision(id: OrgId, state: OrgState) -> Change {
        Change::Org {
            record: OrgRecord {
                id,
                state,
                version: 1,
            },
            expected: None,
        }
    }

    /// `state` as the next version of the org `id`, computed from version
    /// `from`, which must still be the stored one.
    pub fn update(id: OrgId, state: OrgState, from: u64) -> Change {
        Change::Org {
            record: OrgRecord {
                id,
                state,
                version: from.saturating_add(1),
            },
            expected: Some(from),
        }
    }
}

impl Change {
    /// The [`BackendError::Conflict`] that refuses this change: what it
    /// expected, for the log.
    pub fn refused(&self) -> BackendError {
        BackendError::Conflict(match self {
            Change::Org {
                record,
                expected: None,
            } => format!("org {} exists", record.id),
            Change::Org {
                record,
                expected: Some(v),
            } => format!("org {} is no longer at version {v}", record.id),
            Change::PutToken(t) => format!("a token named {} exists", t.name),
            Change::DeleteToken(name) => format!("no token named {name}"),
            Change::RotateToken { record, .. } => {
                format!("the token {} is gone or was rotated", record.name)
            }
            Change::PutUser(u) => format!("org {} has an API user {}", u.org, u.username),
            Change::DeleteUser { org, username } => {
                format!("org {org} has no API user {username}")
            }
            Change::DeleteOrg { id, expected } => {
                format!("org {id} is gone or no longer at version {expected}")
            }
        })
    }
}

/// One event of a backend's change feed ([`Backend::subscribe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Feed {
    /// An org as just committed (new, or a newer version).
    Org(OrgRecord),
    /// A token just created, or rotated: it replaces any of its name.
    PutToken(TokenRecord),
    /// The token of this name was just deleted.
    DeleteToken(String),
    /// An API user just created.
    PutUser(ApiUser),
    /// The API user was just deleted.
    DeleteUser {
        /// Its org.
        org: OrgId,
        /// Its username.
        username: String,
    },
    /// The org was just deleted, with every token and API user of it.
    DeleteOrg(OrgId),
    /// Not an audited commit: a session was just made (a login on some node).
    PutSession(SessionRecord),
    /// Not an audited commit: a session was just ended (a logout).
    EndSession(SessionDigest),
    /// Not a commit: a node asks every node to hand back the calls of this
    /// org's threshold window it holds unspent ([`Backend::reclaim_calls`]).
    Reclaim(OrgId),
    /// The subscriber lost events (it fell behind, or the backend replaced
    /// everything at once, as an import does): what it holds can no longer be
    /// vouched for, and it must reload everything from the backend.
    Resync,
}

impl Feed {
    /// What the feed says of a successful `change`.
    pub fn of(change: &Change) -> Feed {
        match change {
            Change::Org { record, .. } => Feed::Org(record.clone()),
            Change::PutToken(t) => Feed::PutToken(t.clone()),
            Change::DeleteToken(name) => Feed::DeleteToken(name.clone()),
            Change::RotateToken { record, .. } => Feed::PutToken(record.clone()),
            Change::PutUser(u) => Feed::PutUser(u.clone()),
            Change::DeleteUser { org, username } => Feed::DeleteUser {
                org: org.clone(),
                username: username.clone(),
            },
            Change::DeleteOrg { id, .. } => Feed::DeleteOrg(id.clone()),
        }
    }
}

/// A place on a backend's change feed: commits are numbered 1, 2, ... in
/// commit order. 0 is before the first.
pub type Seq = u64;

/// One event of the feed, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The commit's place on the feed. For a [`Feed::Resync`], the place a
    /// reload covers: once it is done, every commit up to `seq` is applied.
    pub seq: Seq,
    /// What changed.
    pub feed: Feed,
}

/// How many feed events may wait for a slow subscriber before it is told to
/// resync instead: enough for a burst of admin changes, small enough that a
/// stuck subscriber holds little.
pub const FEED_CAPACITY: usize = 4096;

/// One subscriber's end of a backend's change feed.
///
/// A bounded queue: a subscriber that falls more than [`FEED_CAPACITY`]
/// events behind loses the oldest ones, and its next [`recv`](Subscription::recv)
/// answers [`Feed::Resync`] before the events that remain. It must then reload
/// everything ([`Backend::load`]) and apply what follows as usual; the
/// reload holds every event it lost, and the events after it are older or
/// equal versions of what it loaded or newer changes, both of which the
/// version rule handles.
///
/// The subscriber reports each event once applied ([`applied`](Subscription::applied)):
/// the backend publishes it to the nodes that wait for it in
/// [`Backend::confirm`].
#[derive(Debug)]
pub struct Subscription {
    source: Source,
    applied: tokio::sync::watch::Sender<Seq>,
}

#[derive(Debug)]
enum Source {
    /// One process's subscribers, fed by one sender.
    Broadcast {
        events: tokio::sync::broadcast::Receiver<Event>,
        /// The last place received, which a lost stretch resumes after.
        last: Seq,
    },
    /// A backend's own reader task.
    Channel(tokio::sync::mpsc::Receiver<Event>),
}

impl Subscription {
    /// A subscription to `events`, sent to by a backend in one process, which
    /// learns what the subscriber applied through `applied`.
    pub fn broadcast(
        events: tokio::sync::broadcast::Receiver<Event>,
        applied: tokio::sync::watch::Sender<Seq>,
    ) -> Subscription {
        let last = *applied.borrow();
        Subscription {
            source: Source::Broadcast { events, last },
            applied,
        }
    }

    /// A subscription to a backend's reader task, which sends each event (and
    /// a [`Feed::Resync`] where it lost some) on `events` and learns what the
    /// subscriber applied through `applied`.
    pub fn channel(
        events: tokio::sync::mpsc::Receiver<Event>,
        applied: tokio::sync::watch::Sender<Seq>,
    ) -> Subscription {
        Subscription {
            source: Source::Channel(events),
            applied,
        }
    }

    /// The next event, a [`Feed::Resync`] after lost ones, or `None` once
    /// the backend is gone.
    pub async fn recv(&mut self) -> Option<Event> {
        use tokio::sync::broadcast::error::RecvError;
        match &mut self.source {
            Source::Broadcast { events, last } => match events.recv().await {
                Ok(event) => {
                    *last = event.seq;
                    Some(event)
                }
                // The reload covers at least every event lost so far.
                Err(RecvError::Lagged(lost)) => Some(Event {
                    seq: last.saturating_add(lost),
                    feed: Feed::Resync,
                }),
                Err(RecvError::Closed) => None,
            },
            Source::Channel(events) => events.recv().await,
        }
    }

    /// Reports that every event up to `seq` is applied to what this node
    /// serves. Places only grow: an older one is ignored.
    pub fn applied(&self, seq: Seq) {
        self.applied.send_if_modified(|at| {
            let newer = seq > *at;
            if newer {
                *at = seq;
            }
            newer
        });
    }
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
    /// What the commit expected did not hold (another writer changed the org,
    /// or took or freed the token name, first): nothing was changed. The
    /// store re-reads and re-decides; a client sees this only as a 5xx, when
    /// the store gave up after several tries.
    #[error("store conflict: {0}")]
    Conflict(String),
}
