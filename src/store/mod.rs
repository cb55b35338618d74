//! The store: every org in a concurrent map, and the one path by which they change.
//!
//! Requests read orgs through the org table (`table.rs`: one slot of an
//! open-addressed index, then the org's record in an arena, then a seqlock
//! read of its hot state), so a request never waits on anything but its own
//! org's state being swapped, and writes no lock word.
//!
//! Every mutation goes through one function, which:
//!
//! 1. takes the org's writer lock (one of a fixed set of async mutexes picked by
//!    the id's hash), so the operations of one org are linearizable;
//! 2. computes the next state with the pure rules of [`OrgState`];
//! 3. commits it and its audit event through the [`Backend`] seam, and only if
//!    that succeeded,
//! 4. swaps it in, so the next request sees it, and returns.
//!
//! A failed commit leaves the org exactly as it was. The whole sequence runs in
//! its own task, so an admin client that hangs up mid-commit cannot leave a change
//! durable on disk but invisible in memory.
//!
//! Every org carries a version (1 when provisioned, one more per commit), and
//! every commit names the version it was computed from: the backend refuses
//! it with [`BackendError::Conflict`] if another writer got there first (a
//! token commit likewise expects its name free, or taken). On a conflict the
//! store reads the org back from the backend, installs it, and runs the
//! operation's pure rule again on that newest state, so "add only when none",
//! "edit must differ" and "disabled first" are judged on what is stored, not
//! on what this store last saw; after [`COMMIT_TRIES`] lost races it gives up
//! with a 5xx. A lost race that re-decides to a refusal answers that refusal
//! (`KEY_EXISTS`, `ORG_EXISTS`, `TOKEN_EXISTS`, ...).
//!
//! A backend shared by several stores (several nodes) has a change feed
//! ([`Backend::subscribe`]). A store over one runs a task that applies it:
//! an org record replaces the local org only when its version is newer (the
//! store's own commits come back too, and are ignored), an org it does not
//! know is added, tokens are put and removed, and on [`Feed::Resync`] it
//! reloads everything. The request path never waits for any of it: it reads
//! the same in-memory map as before.
//!
//! The feed arrives a moment after the commit, so a mutation on a shared
//! backend does not trust this store's copy where it would say no: an org or
//! token it does not know is looked up in the backend before `ORG_NOT_FOUND`
//! or `TOKEN_NOT_FOUND`, and a rule's refusal (`KEY_EXISTS`, `NO_KEY`,
//! `TOKEN_EXISTS`, ...) stands only once the stored state, read once, agrees.
//! A single-node backend (no feed) skips these reads: its copy is the truth.
//!
//! The threshold counts take another path, off the request path: the
//! [`CountFlusher`] saves the windows that changed through the backend's counter
//! seam every period and at stop, and [`Store::open`] resumes them (`counts`).

mod backend;
mod check;
mod counts;
mod export;
mod import;
mod lease;
mod memory;
mod redb;
mod redis;
mod table;

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;

pub use self::redis::{ClusterOptions, RedisBackend, FEED_MAXLEN, MIN_LEASE};
pub use backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Change, Commit, Dump, Event, Feed, Grant,
    Loading, OrgBatches, OrgRecord, Restored, Seq, Snapshot, Subscription, Take, FEED_CAPACITY,
};
pub use check::{check_store, CheckReport, Problem};
pub use counts::{CallCount, CountFlusher};
pub use export::{export, ExportCounts, ExportError, EXPORT_VERSION};
pub use import::{import, import_orgs, read_input, ImportError, ImportInput, Imported};
pub use lease::Lease;
pub use memory::MemoryBackend;
pub use redb::RedbBackend;
pub(crate) use table::Found;

use crate::clock::{Clock, Timestamp};
use crate::limit::Spent;
use crate::org::{
    Action, Actor, KeyStatus, LimitOverrides, Limits, OpError, Org, OrgId, OrgState, Transition,
};
use crate::session::{ApiUser, PasswordPool, Sessions};
use crate::token::{self, Role, TokenDigest, TokenRecord};
use table::{OrgTable, TableError};

/// How many writer locks the orgs share. Mutations of two orgs contend only when
/// their ids hash alike, one chance in this many, and an org costs no lock memory.
const WRITER_STRIPES: usize = 256;

/// How many times one mutation is computed and committed before the store gives
/// up on a contended org: each lost race means another writer committed in
/// between, so this many in a row is a storm, not bad luck.
pub const COMMIT_TRIES: u32 = 5;

/// The fewest calls a node asks the cluster for at once.
const MIN_WANT: u32 = 16;

/// The most calls a node asks the cluster for at once: a node that goes
/// quiet holds at most this many unspent until it hands them back.
const MAX_WANT: u32 = 4096;

/// How long a call that found the cluster's threshold all granted waits,
/// in turn, for the other nodes to hand back what they hold unspent, asking
/// again after each pause (about 0.1 s in all, once per node per window).
const RECLAIM_PAUSES: [std::time::Duration; 4] = [
    std::time::Duration::from_millis(5),
    std::time::Duration::from_millis(10),
    std::time::Duration::from_millis(25),
    std::time::Duration::from_millis(60),
];

/// What [`Store::take_calls`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The call is within the threshold, and spent.
    Within,
    /// The call is the one past the cluster's threshold.
    Crossed,
    /// The cluster's store could not be asked.
    Unavailable,
}

/// How long the feed task waits before trying a failed reload again.
const RESYNC_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How many batches of loaded orgs may wait to be built at start.
const LOAD_QUEUE: usize = 8;

/// The most orgs the map is sized for up front from a backend's count.
const PRESIZE_MAX: usize = 1 << 24;

/// The orgs the table is sized for at start beyond those loaded: an eighth
/// more. Sized for the loaded orgs alone, its index would be full (7 slots
/// in 8) after the load, and the first org provisioned after a start would
/// rebuild it at twice the size (at 1,000,000 orgs, 9 MB more and the
/// provisioning paused for the rebuild). An eighth costs about 1 byte an org.
const fn presize(loaded: usize) -> usize {
    loaded.saturating_add(loaded / 8)
}

/// The orgs, their state and the path by which it changes. Cheap to clone: every
/// clone is a handle to the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    orgs: OrgTable,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    /// The configured default limits; a config reload replaces them
    /// ([`Store::set_defaults`]). Read when an org's limits are computed,
    /// never by a request.
    defaults: ArcSwap<Limits>,
    writers: Box<[tokio::sync::Mutex<()>]>,
    stripe_hasher: std::collections::hash_map::RandomState,
    tokens: std::sync::RwLock<Tokens>,
    /// Serializes token creation and deletion, so a name is taken once.
    token_writer: tokio::sync::Mutex<()>,
    /// Committed changes by action, and commit latency, for `GET /metrics`.
    metrics: crate::metrics::StoreMetrics,
    /// Every API user, by org and username.
    users: std::sync::RwLock<HashMap<OrgId, HashMap<String, ApiUser>>>,
    /// Serializes API user creation and deletion.
    user_writer: tokio::sync::Mutex<()>,
    /// The live sessions this node knows; ended here as the changes that
    /// kill them are applied.
    sessions: Sessions,
    /// Where passwords are hashed and verified.
    passwords: PasswordPool,
    /// The windows last persisted; held by a flush and by an enable, so the
    /// two never interleave.
    counts: tokio::sync::Mutex<counts::Flushed>,
    /// Whether the backend has a feed: other stores may commit to it, so a
    /// refusal judged on this store's copy is checked against the stored one.
    shared: bool,
    /// The task applying the backend's feed, if it has one; stopped with the
    /// store.
    follower: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
    /// This node's lease, when the backend is shared by several nodes.
    lease: Option<Arc<Lease>>,
    /// Whether the threshold counts are the cluster's ([`Backend::take_calls`]).
    shares_calls: bool,
    /// One grant request in flight per org at a time (striped as `writers`),
    /// so the calls waiting for one do not each ask for more.
    takers: Box<[tokio::sync::Mutex<()>]>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let follower = self.follower.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = follower.take() {
            task.abort();
        }
    }
}

/// An org of a store, held past its lookup: what work on an org across an
/// await (a grant from the cluster, a disable, an admin's change) keeps.
/// Derefs to the org's record, which lasts as long as the store (see the
/// table's docs in `store/table.rs`): held after the org is deleted, it
/// reads the state the org had then, and after the same id is provisioned
/// again, the new org's.
#[derive(Clone)]
pub struct OrgRef {
    inner: Arc<Inner>,
    number: u32,
}

impl std::ops::Deref for OrgRef {
    type Target = Org;

    fn deref(&self) -> &Org {
        // `number` came from a lookup of this table, and a record, once
        // made, is never taken out of it.
        self.inner
            .orgs
            .record(self.number)
            .expect("a record lasts as long as its table")
    }
}

impl std::fmt::Debug for OrgRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("OrgRef").field(&self.id_str()).finish()
    }
}

/// Admin and viewer tokens, found by digest (to authenticate) or name (to delete).
#[derive(Default)]
struct Tokens {
    by_digest: HashMap<TokenDigest, TokenRecord>,
    by_name: HashMap<String, TokenDigest>,
}

impl Tokens {
    fn insert(&mut self, t: TokenRecord) {
        if let Some(old) = self.by_name.insert(t.name.clone(), t.digest) {
            self.by_digest.remove(&old);
        }
        self.by_digest.insert(t.digest, t);
    }

    fn remove(&mut self, name: &str) {
        if let Some(digest) = self.by_name.remove(name) {
            self.by_digest.remove(&digest);
        }
    }
}

/// An org's use of its limits: what `GET /v1/orgs/{org}/usage` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Calls counted in the open threshold window (in cluster mode, granted
    /// to the nodes, spent or not); 0 when none is open.
    pub calls_in_window: u32,
    /// The threshold in force.
    pub threshold_calls: u32,
    /// When the open window started.
    pub window_started_at: Option<Timestamp>,
    /// When it ends.
    pub window_ends_at: Option<Timestamp>,
    /// When the key was last presented valid, to the second.
    pub last_used_at: Option<Timestamp>,
    /// Calls the rate refused in the open window.
    pub rate_limited_in_window: u32,
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// A copy of one org as it stood at one moment: what the admin API shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgView {
    /// The org.
    pub id: OrgId,
    /// Its state.
    pub state: OrgState,
    /// The limits in force: the defaults with the org's overrides.
    pub limits: Limits,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("orgs", &self.inner.orgs.len())
            .field("defaults", &self.defaults())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a store over `backend`, loading every org it holds.
    ///
    /// Fails, rather than starting empty, when the backend cannot be read.
    /// When the backend has a change feed, the store follows it from before
    /// the load on, in a task of its own that stops with the store.
    pub async fn open(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        defaults: Limits,
    ) -> Result<Store, BackendError> {
        // Before the load: a commit between the two then comes twice, which
        // the versions absorb, rather than never.
        let feed = backend.subscribe();
        // The backend reads on its own thread while this one builds the orgs.
        let (batches, mut received) = tokio::sync::mpsc::channel(LOAD_QUEUE);
        let build = async {
            let mut orgs = OrgTable::with_capacity(0);
            while let Some(loading) = received.recv().await {
                match loading {
                    // A hint, not a promise: a damaged file could claim any count.
                    Loading::Expect(n) if orgs.len() == 0 => {
                        orgs = OrgTable::with_capacity(presize(n.min(PRESIZE_MAX)));
                    }
                    Loading::Expect(_) => {}
                    Loading::Orgs(batch) => {
                        for OrgRecord { id, state, version } in batch {
                            let made = orgs.insert(
                                id.as_bytes(),
                                || Org::new(&id, state, version, defaults),
                                |_| {},
                            );
                            match made {
                                Ok(_) => {}
                                Err(TableError::Exists) => {
                                    return Err(BackendError::Corrupt(format!(
                                        "org {id} stored twice"
                                    )))
                                }
                                Err(e @ TableError::Full) => {
                                    return Err(BackendError::Corrupt(e.to_string()))
                                }
                            }
                        }
                    }
                }
            }
            Ok(orgs)
        };
        let (loaded, orgs) = tokio::try_join!(backend.load_into(batches), build)?;
        let persisted_counts = backend.load_counts().await?;
        let backend_lease = backend.lease();
        let shares_calls = backend.shares_calls();
        let mut tokens = Tokens::default();
        for t in loaded {
            tokens.insert(t);
        }
        let mut users: HashMap<OrgId, HashMap<String, ApiUser>> = HashMap::new();
        for u in backend.users().await? {
            users
                .entry(u.org.clone())
                .or_default()
                .insert(u.username.clone(), u);
        }
        let store = Store {
            inner: Arc::new(Inner {
                orgs,
                backend,
                clock,
                defaults: ArcSwap::from_pointee(defaults),
                writers: (0..WRITER_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                stripe_hasher: Default::default(),
                tokens: std::sync::RwLock::new(tokens),
                token_writer: tokio::sync::Mutex::new(()),
                metrics: Default::default(),
                users: std::sync::RwLock::new(users),
                user_writer: tokio::sync::Mutex::new(()),
                sessions: Sessions::default(),
                passwords: PasswordPool::default(),
                counts: Default::default(),
                shared: feed.is_some(),
                follower: std::sync::Mutex::new(None),
                lease: backend_lease,
                shares_calls,
                takers: (0..WRITER_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        };
        for record in store.inner.backend.sessions().await? {
            // A session whose user is gone died with it.
            if store.has_user(&record.org, &record.username) {
                let until = replay_until(&record);
                store.inner.sessions.insert(record, until);
            }
        }
        if let Some(feed) = feed {
            tokio::spawn(tell_session_uses(Arc::downgrade(&store.inner)));
            let task = tokio::spawn(follow(Arc::downgrade(&store.inner), feed));
            *store
                .inner
                .follower
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        }
        {
            // No one else holds the store yet.
            let mut flushed = store.inner.counts.lock().await;
            store.resume_counts(persisted_counts, &mut flushed);
        }
        Ok(store)
    }

    /// An empty store over a fresh [`MemoryBackend`].
    pub async fn in_memory(clock: Arc<dyn Clock>, defaults: Limits) -> Store {
        match Store::open(Arc::new(MemoryBackend::new()), clock, defaults).await {
            Ok(store) => store,
            // A new MemoryBackend loads an empty snapshot and cannot fail.
            Err(e) => unreachable!("an empty memory backend failed to load: {e}"),
        }
    }

    /// The org with id `id`, if there is one, held (see [`OrgRef`]).
    pub fn get(&self, id: &[u8]) -> Option<OrgRef> {
        self.inner.orgs.get(id).map(|found| self.hold(found))
    }

    /// Runs `f` on the org with id `id`: the request path's lookup. Nothing
    /// is locked and no reference count is touched, so the cores serving a
    /// hot org do not pass a cache line between them to find it.
    #[inline]
    pub(crate) fn with_org<R>(&self, id: &[u8], f: impl FnOnce(Found<'_>) -> R) -> Option<R> {
        self.inner.orgs.get(id).map(f)
    }

    /// `found`, held past the lookup: for work on the org across an await.
    pub(crate) fn hold(&self, found: Found<'_>) -> OrgRef {
        OrgRef {
            inner: Arc::clone(&self.inner),
            number: found.number(),
        }
    }

    /// This node's lease, in cluster mode: whether it may serve now
    /// ([`Lease::serving`]). `None` for a store one node owns, which always may.
    #[inline]
    pub fn lease(&self) -> Option<&Lease> {
        self.inner.lease.as_deref()
    }

    /// Whether this node may serve now: always, unless it is one of a
    /// cluster's nodes and cannot vouch for its state.
    #[inline]
    pub fn serving(&self) -> bool {
        self.inner.lease.as_ref().is_none_or(|l| l.serving())
    }

    /// Whether the threshold counts are the cluster's: the gate spends calls
    /// granted to this node ([`CallCounter::spend`](crate::limit::CallCounter::spend))
    /// and asks for more with [`take_calls`](Store::take_calls), instead of
    /// counting them itself.
    #[inline]
    pub(crate) fn shares_calls(&self) -> bool {
        self.inner.shares_calls
    }

    /// Asks the cluster for calls of `org`'s threshold window, for a call
    /// that found none granted here: [`Taken::Within`] with the call spent,
    /// [`Taken::Crossed`] when the cluster has granted the whole threshold
    /// (this call is the one past it), [`Taken::Unavailable`] when the
    /// cluster's store could not be asked. One request per org at a time:
    /// the calls that wait for it spend what it brought.
    pub(crate) fn take_calls(&self, org: OrgRef) -> impl Future<Output = Taken> + Send + 'static {
        let store = self.clone();
        async move {
            let _taker = store.taker(&org).lock().await;
            let now = store.inner.clock.now();
            let window_secs = org.hot().threshold_window_secs;
            if let Spent::Left(_) = org.calls().spend(now, window_secs) {
                return Taken::Within;
            }
            // The whole threshold granted: ask the other nodes to hand back
            // what they hold unspent, and ask again while it comes in.
            // Crossed only once nothing came back: every granted call spent.
            for pause in std::iter::once(None).chain(RECLAIM_PAUSES.map(Some)) {
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                let grant = match store.fetch_calls(&org).await {
                    Ok(grant) => grant,
                    Err(e) => {
                        tracing::warn!(org = %org.id(), error = %e, "could not take calls from the cluster");
                        return Taken::Unavailable;
                    }
                };
                if grant.calls > 0 {
                    if org.calls().grant(grant.window_start, grant.calls - 1) {
                        org.window_opened();
                    }
                    return Taken::Within;
                }
                if pause.is_none() {
                    if let Err(e) = store.inner.backend.reclaim_calls(&org.id()).await {
                        tracing::warn!(org = %org.id(), error = %e, "could not ask the cluster for unspent calls");
                        return Taken::Unavailable;
                    }
                }
            }
            Taken::Crossed
        }
    }

    /// Asks the cluster for more of `org`'s calls in the background, before
    /// the ones granted here run out, unless a request for them is in flight.
    pub(crate) fn prefetch_calls(&self, org: Found<'_>) {
        let store = self.clone();
        let org = self.hold(org);
        tokio::spawn(async move {
            let Ok(_taker) = store.taker(&org).try_lock() else {
                return;
            };
            match store.fetch_calls(&org).await {
                Ok(grant) if grant.calls > 0 => {
                    if org.calls().grant(grant.window_start, grant.calls) {
                        org.window_opened();
                    }
                }
                // The threshold is reached: the call that finds none left
                // here asks again, and fires it.
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(org = %org.id(), error = %e, "could not prefetch calls");
                }
            }
        });
    }

    /// One grant of `org`'s calls: about a second of this node's share of
    /// its rate, at least [`MIN_WANT`], at most [`MAX_WANT`].
    async fn fetch_calls(&self, org: &Org) -> Result<Grant, BackendError> {
        let nodes = self.lease().map_or(1, Lease::live_nodes);
        let (threshold, window_secs, per_sec) = {
            let c = org.hot();
            (c.threshold_calls, c.threshold_window_secs, c.rate.per_sec())
        };
        let take = Take {
            org: org.id(),
            threshold,
            window_secs,
            want: (per_sec / nodes).clamp(MIN_WANT, MAX_WANT),
            nodes,
            now: self.inner.clock.now(),
            returned: None,
        };
        self.inner.backend.take_calls(take).await
    }

    /// Hands back to the cluster every call of `org` granted here and not
    /// spent.
    pub(crate) async fn hand_back_org(&self, org: &Org) -> Result<u32, BackendError> {
        let Some(returned) = org.calls().reclaim() else {
            return Ok(0);
        };
        let c = org.hot();
        let (threshold, window_secs) = (c.threshold_calls, c.threshold_window_secs);
        let take = Take {
            org: org.id(),
            threshold,
            window_secs,
            want: 0,
            nodes: self.lease().map_or(1, Lease::live_nodes),
            now: self.inner.clock.now(),
            returned: Some(returned),
        };
        self.inner.backend.take_calls(take).await?;
        Ok(returned.1)
    }

    fn taker(&self, org: &Org) -> &tokio::sync::Mutex<()> {
        let h = self.inner.stripe_hasher.hash_one(org.id_bytes());
        &self.inner.takers[(h as usize) % self.inner.takers.len()]
    }

    /// The clock the store's rules read.
    pub fn clock(&self) -> &dyn Clock {
        &*self.inner.clock
    }

    /// How many orgs there are.
    pub fn len(&self) -> usize {
        self.inner.orgs.len()
    }

    /// Whether there are no orgs.
    pub fn is_empty(&self) -> bool {
        self.inner.orgs.len() == 0
    }

    /// The configured default limits.
    pub fn defaults(&self) -> Limits {
        **self.inner.defaults.load()
    }

    /// Makes `defaults` the default limits, as a config reload does: every
    /// org's limits in force are recomputed at once, each value the org does
    /// not override following the new defaults; the orgs' counts (the rate's
    /// state, the threshold's window) carry on. Changes nothing stored: the
    /// defaults live in the config, so in cluster mode each node has its own.
    pub fn set_defaults(&self, defaults: Limits) {
        self.inner.defaults.store(Arc::new(defaults));
        // An install racing this pass either takes an org's lock after it
        // (and checks the defaults it used: `follow_defaults`) or before it
        // (and this pass recomputes what it installed).
        for org in self.inner.orgs.iter() {
            org.refresh_limits(|| self.defaults());
        }
    }

    /// After installing a state into `org` over `used` defaults: follows a
    /// reload ([`Store::set_defaults`]) that replaced them meanwhile.
    fn follow_defaults(&self, org: &Org, used: Limits) {
        if self.defaults() != used {
            org.refresh_limits(|| self.defaults());
        }
    }

    /// A view of one org.
    pub fn view(&self, id: &str) -> Result<OrgView, OpError> {
        let org = self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
        Ok(self.view_of(&org))
    }

    /// One page of orgs, ordered by id: at most `limit` of those whose id
    /// comes after `after` and contains `q` and, when `disabled` is given,
    /// whose key is disabled (`Some(true)`) or enabled (`Some(false)`), and
    /// the id to ask for the next page after, if there are more. One pass
    /// over the map keeping the `limit + 1` smallest ids that qualify (a
    /// heap), so a page costs `n log limit` at `n` orgs and nothing is held
    /// per org between pages.
    pub fn page(
        &self,
        after: Option<&str>,
        q: Option<&str>,
        disabled: Option<bool>,
        limit: usize,
    ) -> (Vec<OrgView>, Option<OrgId>) {
        let limit = limit.max(1);
        // Ids are kept as `OrgId`s (a reference count each, no copy), so no
        // shard of the map stays locked past its own entries.
        let mut smallest: std::collections::BinaryHeap<OrgId> = std::collections::BinaryHeap::new();
        for e in self.inner.orgs.iter() {
            let id = e.id_bytes();
            if after.is_some_and(|a| id <= a.as_bytes()) {
                continue;
            }
            if q.is_some_and(|q| !contains(id, q.as_bytes())) {
                continue;
            }
            let full = smallest.len() > limit;
            if full
                && smallest
                    .peek()
                    .is_some_and(|largest| id >= largest.as_bytes())
            {
                continue;
            }
            // The state read only for ids that would make the page.
            if disabled.is_some_and(|want| e.hot().is_disabled() != want) {
                continue;
            }
            if full {
                smallest.pop();
            }
            smallest.push(e.id());
        }
        let mut ids = smallest.into_sorted_vec();
        let more = ids.len() > limit;
        ids.truncate(limit);
        let views: Vec<OrgView> = ids
            .iter()
            .filter_map(|id| self.get(id.as_bytes()))
            .map(|org| self.view_of(&org))
            .collect();
        let next = if more {
            views.last().map(|v| v.id.clone())
        } else {
            None
        };
        (views, next)
    }

    /// Every admin and viewer token, ordered by name.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut all: Vec<TokenRecord> = self.read_tokens().by_digest.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// An org's use of its limits now: its threshold window (the cluster's,
    /// in cluster mode), when its key was last presented valid and how many
    /// calls the rate refused in the window (this node's, in cluster mode).
    pub async fn usage(&self, id: &str) -> Result<Usage, OpError> {
        let org = self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
        let now = self.inner.clock.now();
        let hot = org.hot();
        let (threshold_calls, window_secs) = (hot.threshold_calls, hot.threshold_window_secs);
        let window = if self.inner.shares_calls {
            self.inner.backend.calls_window(&org.id()).await?
        } else {
            org.calls().window()
        };
        let (last_used, limited) = org.usage();
        let window = window.filter(|w| !w.ended(now, window_secs));
        Ok(Usage {
            calls_in_window: window.map_or(0, |w| w.calls),
            threshold_calls,
            window_started_at: window.map(|w| Timestamp::from_secs(u64::from(w.start))),
            window_ends_at: window
                .map(|w| Timestamp::from_secs(u64::from(w.start) + u64::from(window_secs))),
            last_used_at: last_used,
            rate_limited_in_window: if window.is_some() { limited } else { 0 },
        })
    }

    /// Views of every org, ordered by id.
    pub fn list(&self) -> Vec<OrgView> {
        let mut all: Vec<OrgView> = self.inner.orgs.iter().map(|e| self.view_of(&e)).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The audit log of one org, oldest first; a deleted org's too (the log
    /// outlives the org).
    pub async fn audit(&self, id: &str) -> Result<Vec<AuditEvent>, OpError> {
        let (id, live) = match self.get(id.as_bytes()) {
            Some(org) => (org.id(), true),
            None => (OrgId::parse(id).map_err(|_| OpError::OrgNotFound)?, false),
        };
        let events = self.inner.backend.audit(id).await?;
        if !live && events.is_empty() {
            // Never provisioned: no log to show.
            return Err(OpError::OrgNotFound);
        }
        Ok(events)
    }

    /// Creates an org with a random, enabled key.
    pub async fn provision(
        &self,
        id: OrgId,
        subscription_expires_at: Option<Timestamp>,
        limits: LimitOverrides,
        actor: Actor,
    ) -> Result<OrgView, OpError> {
        limits.validate()?;
        let store = self.clone();
        self.run(async move {
            let writer = store.writer(&id).lock().await;
            if store.inner.orgs.get(id.as_bytes()).is_some() {
                return Err(OpError::OrgExists);
            }
            let now = store.inner.clock.now();
            let t = OrgState::provisioned(now, actor, subscription_expires_at, limits);
            let change = Change::provision(id.clone(), t.next.clone());
            let seq = match store.commit(change, &id, &t).await {
                Ok(seq) => seq,
                Err(BackendError::Conflict(why)) => {
                    // Provisioned elsewhere first: learn it, and refuse as
                    // if it had been here all along.
                    tracing::debug!(org = %id, %why, "provision lost a race");
                    if let Some(record) = store.inner.backend.org(&id).await? {
                        store.install_locked(record);
                        return Err(OpError::OrgExists);
                    }
                    return Err(BackendError::Conflict(why).into());
                }
                Err(e) => return Err(e.into()),
            };
            let org = store.add_org(&id, t.next, 1)?;
            let view = store.view_of(&org);
            drop(writer);
            store.confirm(seq).await?;
            Ok(view)
        })
        .await
    }

    /// Adds a random key to an org that has none.
    pub async fn add(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.add(now, actor.clone()))
            .await
    }

    /// Replaces an org's key with `new`.
    pub async fn edit(&self, id: &str, new: &str, actor: Actor) -> Result<OrgView, OpError> {
        let new = new.to_owned();
        self.apply(id, move |s, now| s.edit(&new, now, actor.clone()))
            .await
    }

    /// Replaces an org's key with a random one.
    pub async fn regenerate(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.regenerate(now, actor.clone()))
            .await
    }

    /// Removes an org's key.
    pub async fn delete(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.delete(now, actor.clone()))
            .await
    }

    /// Disables an org's key.
    pub async fn disable(&self, id: &str, reason: &str, actor: Actor) -> Result<OrgView, OpError> {
        let reason = reason.to_owned();
        self.apply(id, move |s, now| Ok(s.disable(&reason, now, actor.clone())))
            .await
    }

    /// Enables an org's key; its call count starts afresh.
    pub async fn enable(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| Ok(s.enable(now, actor.clone())))
            .await
    }

    /// Sets or clears the end of an org's subscription.
    pub async fn set_subscription(
        &self,
        id: &str,
        expires_at: Option<Timestamp>,
        actor: Actor,
    ) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| {
            Ok(s.set_subscription(expires_at, now, actor.clone()))
        })
        .await
    }

    /// Changes an org's limits.
    pub async fn set_limits(
        &self,
        id: &str,
        limits: LimitOverrides,
        actor: Actor,
    ) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.set_limits(&limits, now, actor.clone()))
            .await
    }

    /// Disables `org`'s key because it crossed its call threshold. Resolves once
    /// the disable is durable and visible, or has failed (logged).
    pub(crate) fn disable_over_threshold(
        &self,
        org: OrgRef,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.clone();
        async move {
            let id = org.id();
            let confirming = store.clone();
            let done = confirming
                .run(async move {
                    let (view, seq) = store
                        .apply_to(org, |s, now| s.disable_over_threshold(now))
                        .await?;
                    store.confirm(seq).await?;
                    Ok(view)
                })
                .await;
            match done {
                Ok(_) => tracing::warn!(org = %id, "call threshold exceeded: key disabled"),
                // A provider disabled it first: nothing to do.
                Err(OpError::KeyDisabled) => {}
                Err(e) => {
                    tracing::error!(org = %id, error = %e, "could not disable key over threshold")
                }
            }
        }
    }

    /// The token whose digest is `digest`, if any.
    ///
    /// Found by hashing the digest: a timing difference could only tell an
    /// attacker about the SHA-256 of the token they sent, which reveals nothing
    /// about any stored token.
    pub fn token(&self, digest: &TokenDigest) -> Option<TokenRecord> {
        self.read_tokens().by_digest.get(digest).cloned()
    }

    /// Creates an admin or viewer token for `org`. Returns its record and the
    /// token itself, which is never available again.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        org: &str,
    ) -> Result<(TokenRecord, String), OpError> {
        if !token::valid_name(name) {
            return Err(OpError::InvalidTokenName);
        }
        let org = self.find(org).await?;
        let name = name.to_owned();
        let store = self.clone();
        self.run(async move {
            let writer = store.inner.token_writer.lock().await;
            if store.read_tokens().by_name.contains_key(&name) {
                // Deleted elsewhere, with the feed not here yet? Only a
                // refusal the stored tokens confirm stands.
                if !store.inner.shared || store.inner.backend.token(&name).await?.is_some() {
                    return Err(OpError::TokenExists);
                }
                store.write_tokens().remove(&name);
            }
            let secret = token::generate();
            let now = store.inner.clock.now();
            let record = TokenRecord {
                name,
                role,
                org: org.id(),
                digest: TokenDigest::of(&secret),
                created_at: now,
            };
            let event = AuditEvent {
                org: record.org.clone(),
                at: now,
                actor: Actor::Provider,
                action: Action::CreateToken,
                detail: format!("{} token {} created", role.as_str(), record.name),
            };
            let committed = store
                .commit_measured(Commit {
                    change: Change::PutToken(record.clone()),
                    event,
                })
                .await;
            let seq = match committed {
                Ok(seq) => seq,
                Err(BackendError::Conflict(why)) => {
                    // Another node took the name first: learn its token.
                    tracing::debug!(token = %record.name, %why, "token create lost a race");
                    if let Some(theirs) = store.inner.backend.token(&record.name).await? {
                        store.write_tokens().insert(theirs);
                    }
                    return Err(OpError::TokenExists);
                }
                Err(e) => return Err(e.into()),
            };
            store.write_tokens().insert(record.clone());
            drop(writer);
            store.confirm(seq).await?;
            Ok((record, secret))
        })
        .await
    }

    /// Deletes a token; it stops working before this returns.
    pub async fn delete_token(&self, name: &str) -> Result<(), OpError> {
        let name = name.to_owned();
        let store = self.clone();
        self.run(async move {
            let writer = store.inner.token_writer.lock().await;
            let record = store.find_token(&name).await?;
            let event = AuditEvent {
                org: record.org.clone(),
                at: store.inner.clock.now(),
                actor: Actor::Provider,
                action: Action::DeleteToken,
                detail: format!("{} token {} deleted", record.role.as_str(), record.name),
            };
            let committed = store
                .commit_measured(Commit {
                    change: Change::DeleteToken(record.name.clone()),
                    event,
                })
                .await;
            let seq = match committed {
                Ok(seq) => seq,
                Err(BackendError::Conflict(why)) => {
                    // Deleted elsewhere first: it is gone here too.
                    tracing::debug!(token = %record.name, %why, "token delete lost a race");
                    store.write_tokens().remove(&record.name);
                    return Err(OpError::TokenNotFound);
                }
                Err(e) => return Err(e.into()),
            };
            store.write_tokens().remove(&record.name);
            drop(writer);
            store.confirm(seq).await?;
            Ok(())
        })
        .await
    }

    /// Gives the token `name` a new secret, in one conditional commit: the
    /// old secret is refused on this node before this returns, and on every
    /// node once the change is confirmed (as every change is). Returns the
    /// new record (its `created_at` the rotation's time) and the new token,
    /// which is never available again.
    pub async fn rotate_token(&self, name: &str) -> Result<(TokenRecord, String), OpError> {
        let name = name.to_owned();
        let store = self.clone();
        self.run(async move {
            let writer = store.inner.token_writer.lock().await;
            // The stored token after a lost race; this store's first.
            let mut known: Option<TokenRecord> = None;
            // Each conflict means another node changed the token first; a
            // few tries settle it, and a token rotated that often in a row
            // is refused as the store's failure rather than looped on.
            for _ in 0..COMMIT_TRIES {
                let old = match known.take() {
                    Some(record) => record,
                    None => store.find_token(&name).await?,
                };
                let secret = token::generate();
                let now = store.inner.clock.now();
                let record = TokenRecord {
                    name: old.name.clone(),
                    role: old.role,
                    org: old.org.clone(),
                    digest: TokenDigest::of(&secret),
                    created_at: now,
                };
                let event = AuditEvent {
                    org: record.org.clone(),
                    at: now,
                    actor: Actor::Provider,
                    action: Action::RotateToken,
                    detail: format!("{} token {} rotated", record.role.as_str(), record.name),
                };
                let committed = store
                    .commit_measured(Commit {
                        change: Change::RotateToken {
                            record: record.clone(),
                            expected: old.digest,
                        },
                        event,
                    })
                    .await;
                let seq = match committed {
                    Ok(seq) => seq,
                    Err(BackendError::Conflict(why)) => {
                        // Deleted or rotated elsewhere first: learn which.
                        tracing::debug!(token = %record.name, %why, "token rotation lost a race");
                        match store.inner.backend.token(&record.name).await? {
                            Some(theirs) => {
                                store.write_tokens().insert(theirs.clone());
                                known = Some(theirs);
                                continue;
                            }
                            None => {
                                store.write_tokens().remove(&record.name);
                                return Err(OpError::TokenNotFound);
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                };
                store.write_tokens().insert(record.clone());
                drop(writer);
                store.confirm(seq).await?;
                return Ok((record, secret));
            }
            Err(BackendError::Conflict(format!("the token {name} kept changing")).into())
        })
        .await
    }

    /// The live sessions this node knows.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// Makes a new session live on every node before it returns (on a
    /// single node, in this node's memory only). `replay_until` is when its
    /// login leaves the timestamp window.
    pub async fn put_session(
        &self,
        record: crate::session::SessionRecord,
        replay_until: Timestamp,
    ) -> Result<(), crate::answer::Refusal> {
        if !self.inner.shared {
            self.inner.sessions.insert(record, replay_until);
            return Ok(());
        }
        let seq = self
            .inner
            .backend
            .put_session(record.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "a session could not be made");
                crate::answer::Refusal::ClusterUnavailable
            })?;
        // The feed brings it here too; inserted now so this node's answer
        // never outruns its own copy.
        self.inner.sessions.insert(record, replay_until);
        self.confirm(seq)
            .await
            .map_err(|_| crate::answer::Refusal::ClusterUnavailable)
    }

    /// Ends a session on every node before it returns.
    pub async fn end_session(
        &self,
        digest: crate::session::SessionDigest,
    ) -> Result<(), crate::answer::Refusal> {
        self.inner.sessions.remove(&digest);
        if !self.inner.shared {
            return Ok(());
        }
        let seq = self.inner.backend.end_session(digest).await.map_err(|e| {
            tracing::warn!(error = %e, "a session could not be ended");
            crate::answer::Refusal::ClusterUnavailable
        })?;
        self.confirm(seq)
            .await
            .map_err(|_| crate::answer::Refusal::ClusterUnavailable)
    }

    /// Records a use of `session` at `now`; in cluster mode, the first use
    /// in each second is queued for the other nodes' idle checks.
    pub fn touch_session(&self, session: &crate::session::Session, now: Timestamp) {
        session.touch(now);
        if self.inner.shared && session.publish(now) {
            self.inner.sessions.queue_use(session.record.digest, now);
        }
    }

    /// Whether other stores (nodes) share this store's backend.
    pub fn is_shared(&self) -> bool {
        self.inner.shared
    }

    /// Sends the session uses queued here to the backend now (a task does
    /// it every second in cluster mode).
    pub async fn tell_session_uses(&self) -> Result<(), BackendError> {
        let uses = self.inner.sessions.take_uses();
        if uses.is_empty() {
            return Ok(());
        }
        self.inner.backend.touch_sessions(uses).await
    }

    /// When the session of `digest` was last used on any node, as the
    /// backend knows it (cluster mode; `None` on a single node).
    pub async fn session_used(
        &self,
        digest: crate::session::SessionDigest,
    ) -> Result<Option<Timestamp>, BackendError> {
        if !self.inner.shared {
            return Ok(None);
        }
        self.inner.backend.session_used(digest).await
    }

    /// The cluster's count of failed logins ([`Backend::login_lockout`]):
    /// counts a failure of `username` of `org` first when `failed`, then
    /// answers the seconds until logins for it may be tried again, if the
    /// cluster's failures are over the limits. `None` on a single node,
    /// whose [`Sessions`] counts alone.
    pub async fn login_lockout(
        &self,
        org: &OrgId,
        username: &str,
        failed: bool,
    ) -> Result<Option<u64>, BackendError> {
        if !self.inner.shared {
            return Ok(None);
        }
        let now = self.clock().now();
        self.inner
            .backend
            .login_lockout(org, username, failed, now)
            .await
    }

    /// Where passwords are hashed and verified.
    pub fn passwords(&self) -> &PasswordPool {
        &self.inner.passwords
    }

    /// The usernames of `org`'s API users, sorted.
    pub fn users(&self, org: &str) -> Result<Vec<String>, OpError> {
        let id = OrgId::parse(org).map_err(|_| OpError::OrgNotFound)?;
        if self.get(id.as_bytes()).is_none() {
            return Err(OpError::OrgNotFound);
        }
        let mut names: Vec<String> = self
            .read_users()
            .get(&id)
            .map(|theirs| theirs.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// The password digest of `org`'s API user `username`, if it exists.
    pub fn user_digest(&self, org: &OrgId, username: &str) -> Option<String> {
        self.read_users()
            .get(org)
            .and_then(|theirs| theirs.get(username))
            .map(|u| u.password_digest.clone())
    }

    /// Whether `org` has the API user `username`.
    pub fn has_user(&self, org: &OrgId, username: &str) -> bool {
        self.read_users()
            .get(org)
            .is_some_and(|theirs| theirs.contains_key(username))
    }

    /// Creates an API user of `org`, its password kept only as an argon2id
    /// digest (computed on the password pool).
    pub async fn create_user(
        &self,
        org: &str,
        username: &str,
        password: String,
        actor: Actor,
    ) -> Result<(), OpError> {
        if !crate::session::user::valid_username(username) {
            return Err(OpError::InvalidUsername);
        }
        if !crate::session::user::acceptable_password(&password) {
            return Err(OpError::WeakPassword);
        }
        let org = self.find(org).await?;
        let id = org.id();
        if self.has_user(&id, username) {
            return Err(OpError::ApiUserExists);
        }
        let digest = self.inner.passwords.hash(password).await.ok_or_else(|| {
            OpError::Store(BackendError::Unavailable("password hashing failed".into()))
        })?;
        let username = username.to_owned();
        let store = self.clone();
        self.run(async move {
            let writer = store.inner.user_writer.lock().await;
            if store.has_user(&id, &username) {
                return Err(OpError::ApiUserExists);
            }
            let now = store.inner.clock.now();
            let user = ApiUser {
                org: id.clone(),
                username,
                password_digest: digest,
                created_at: now,
            };
            let event = AuditEvent {
                org: id.clone(),
                at: now,
                actor,
                action: Action::CreateApiUser,
                detail: format!("API user {} created", user.username),
            };
            let committed = store
                .inner
                .backend
                .commit(Commit {
                    change: Change::PutUser(user.clone()),
                    event,
                })
                .await;
            let seq = match committed {
                Ok(seq) => seq,
                Err(BackendError::Conflict(why)) => {
                    tracing::debug!(org = %id, %why, "API user create lost a race");
                    return Err(OpError::ApiUserExists);
                }
                Err(e) => return Err(e.into()),
            };
            store.insert_user(user);
            drop(writer);
            store.confirm(seq).await
        })
        .await
    }

    /// What the store counts: committed changes by action, commit latency.
    pub fn metrics(&self) -> &crate::metrics::StoreMetrics {
        &self.inner.metrics
    }

    /// How far this node's store is behind the change feed: the last seq
    /// its backend's reader saw, less the last it applied. `None` without a
    /// feed.
    pub fn feed_lag(&self) -> Option<u64> {
        let seen = self.inner.backend.feed_seen()?;
        Some(seen.saturating_sub(self.inner.metrics.last_applied()))
    }

    /// Commits through the backend, counting the change and timing it.
    async fn commit_measured(&self, commit: Commit) -> Result<Seq, BackendError> {
        let action = commit.event.action;
        let start = std::time::Instant::now();
        let committed = self.inner.backend.commit(commit).await;
        self.inner
            .metrics
            .commit(committed.is_ok().then_some(action), start.elapsed());
        committed
    }

    /// Deletes `org`'s API user `username`; its sessions end on every node
    /// before this returns.
    pub async fn delete_user(
        &self,
        org: &str,
        username: &str,
        actor: Actor,
    ) -> Result<(), OpError> {
        let org = self.find(org).await?;
        let id = org.id();
        let username = username.to_owned();
        let store = self.clone();
        self.run(async move {
            let writer = store.inner.user_writer.lock().await;
            if !store.has_user(&id, &username) && !store.inner.shared {
                return Err(OpError::ApiUserNotFound);
            }
            let event = AuditEvent {
                org: id.clone(),
                at: store.inner.clock.now(),
                actor,
                action: Action::DeleteApiUser,
                detail: format!("API user {username} deleted, with its sessions"),
            };
            let committed = store
                .inner
                .backend
                .commit(Commit {
                    change: Change::DeleteUser {
                        org: id.clone(),
                        username: username.clone(),
                    },
                    event,
                })
                .await;
            let seq = match committed {
                Ok(seq) => seq,
                Err(BackendError::Conflict(_)) => {
                    store.remove_user(&id, &username);
                    return Err(OpError::ApiUserNotFound);
                }
                Err(e) => return Err(e.into()),
            };
            store.remove_user(&id, &username);
            drop(writer);
            store.confirm(seq).await
        })
        .await
    }

    fn insert_user(&self, user: ApiUser) {
        self.write_users()
            .entry(user.org.clone())
            .or_default()
            .insert(user.username.clone(), user);
    }

    /// Forgets the user and ends its sessions.
    fn remove_user(&self, org: &OrgId, username: &str) {
        let mut users = self.write_users();
        if let Some(theirs) = users.get_mut(org) {
            theirs.remove(username);
            if theirs.is_empty() {
                users.remove(org);
            }
        }
        drop(users);
        self.inner.sessions.remove_user(org, username);
    }

    fn read_users(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<OrgId, HashMap<String, ApiUser>>> {
        // Writers only insert and remove; a poisoned lock still holds whole maps.
        self.inner.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_users(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<OrgId, HashMap<String, ApiUser>>> {
        self.inner.users.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The token `name` for a change: this store's, or, on a shared
    /// backend, the stored one when it was created elsewhere and the feed
    /// has not brought it yet. The caller holds the token writer.
    async fn find_token(&self, name: &str) -> Result<TokenRecord, OpError> {
        let known = {
            let tokens = self.read_tokens();
            tokens
                .by_name
                .get(name)
                .and_then(|digest| tokens.by_digest.get(digest))
                .cloned()
        };
        match known {
            Some(record) => Ok(record),
            None if self.inner.shared => {
                let theirs = self
                    .inner
                    .backend
                    .token(name)
                    .await?
                    .ok_or(OpError::TokenNotFound)?;
                self.write_tokens().insert(theirs.clone());
                Ok(theirs)
            }
            None => Err(OpError::TokenNotFound),
        }
    }

    fn read_tokens(&self) -> std::sync::RwLockReadGuard<'_, Tokens> {
        // Writers only insert and remove; a poisoned lock still holds whole maps.
        self.inner.tokens.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_tokens(&self) -> std::sync::RwLockWriteGuard<'_, Tokens> {
        self.inner.tokens.write().unwrap_or_else(|e| e.into_inner())
    }

    async fn apply<F>(&self, id: &str, op: F) -> Result<OrgView, OpError>
    where
        F: FnMut(&OrgState, Timestamp) -> Result<Transition, OpError> + Send + 'static,
    {
        let org = self.find(id).await?;
        let store = self.clone();
        self.run(async move {
            let (view, seq) = store.apply_to(org, op).await?;
            store.confirm(seq).await?;
            Ok(view)
        })
        .await
    }

    /// Runs one mutation to completion ([`run_to_completion`]), on a node
    /// that may serve: a cluster's node that cannot vouch for its state
    /// refuses with [`OpError::ClusterUnavailable`], and so does one that
    /// lost the shared store while committing or confirming (the change may
    /// or may not have been made; the client reads it back).
    async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, OpError>> + Send + 'static,
    ) -> Result<T, OpError> {
        if !self.serving() {
            return Err(OpError::ClusterUnavailable);
        }
        match run_to_completion(fut).await {
            Err(OpError::Store(BackendError::Unavailable(why))) if self.inner.lease.is_some() => {
                tracing::warn!(error = %why, "the cluster's store failed a change");
                Err(OpError::ClusterUnavailable)
            }
            other => other,
        }
    }

    /// Waits until every node serves the commit at `seq` or has stopped
    /// serving ([`Backend::confirm`]).
    async fn confirm(&self, seq: Seq) -> Result<(), OpError> {
        if !self.inner.shared {
            return Ok(());
        }
        self.inner.backend.confirm(seq).await.map_err(|e| {
            tracing::warn!(error = %e, seq, "a change was made but could not be confirmed on every node");
            OpError::ClusterUnavailable
        })
    }

    /// The org `id` for a mutation: this store's, or, on a shared backend,
    /// the stored one when it was provisioned elsewhere and the feed has not
    /// brought it yet.
    async fn find(&self, id: &str) -> Result<OrgRef, OpError> {
        if let Some(org) = self.get(id.as_bytes()) {
            return Ok(org);
        }
        if !self.inner.shared {
            return Err(OpError::OrgNotFound);
        }
        let id = OrgId::parse(id).map_err(|_| OpError::OrgNotFound)?;
        let record = self
            .inner
            .backend
            .org(&id)
            .await?
            .ok_or(OpError::OrgNotFound)?;
        self.install(record).await;
        self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)
    }

    /// Computes `op` on the org's state and commits it, again on the stored
    /// state after each lost race (at most [`COMMIT_TRIES`] times in all).
    async fn apply_to<F>(&self, org: OrgRef, mut op: F) -> Result<(OrgView, Seq), OpError>
    where
        F: FnMut(&OrgState, Timestamp) -> Result<Transition, OpError>,
    {
        let id = org.id();
        let _writer = self.writer(&id).lock().await;
        let mut counts = None;
        let mut tries = 0;
        let mut checked = false;
        let (from, seq, t) = loop {
            tries += 1;
            let now = self.inner.clock.now();
            let (from, t) = match org.read(|c| op(&c.state(), now).map(|t| (c.version(), t))) {
                Ok(decided) => decided,
                // Another node may have changed the org since this copy was
                // installed (the feed is not instant): a refusal must hold on
                // the stored state, so look once, and decide again if newer.
                Err(refusal) if self.inner.shared && !checked => {
                    checked = true;
                    match self.inner.backend.org(&id).await? {
                        Some(record) if record.version > org.version() => {
                            self.install_into(&org, record);
                            continue;
                        }
                        _ => return Err(refusal),
                    }
                }
                Err(refusal) => return Err(refusal),
            };
            if t.action == Action::Enable && counts.is_none() {
                // The count starts afresh on disk too, and first: a crash after
                // the enable's commit must not bring the old window back. Held
                // until the reset below, so no flush writes the old window again.
                let mut flushed = self.inner.counts.lock().await;
                self.inner.backend.reset_calls(&id).await?;
                // Should the commit fail, the window is still in memory and
                // differs from this, so the next flush writes it back.
                flushed.saved(&org, None);
                counts = Some(flushed);
            }
            let change = Change::update(id.clone(), t.next.clone(), from);
            match self.commit(change, &id, &t).await {
                Ok(seq) => break (from, seq, t),
                Err(BackendError::Conflict(why)) if tries < COMMIT_TRIES => {
                    tracing::debug!(org = %id, %why, tries, "commit lost a race; deciding again");
                    let record = self
                        .inner
                        .backend
                        .org(&id)
                        .await?
                        .ok_or(OpError::OrgNotFound)?;
                    self.install_into(&org, record);
                }
                Err(BackendError::Conflict(why)) => {
                    tracing::warn!(org = %id, %why, tries, "commit lost every race; giving up");
                    return Err(BackendError::Conflict(why).into());
                }
                Err(e) => return Err(e.into()),
            }
        };
        if t.action == Action::Enable {
            // Before the swap: until it, requests still see the key disabled and
            // are not counted, so none is counted against the old window.
            org.calls().reset();
        }
        let defaults = self.defaults();
        let dead = self.end_dead_sessions(&id, &t.next);
        self.forget_sessions(dead);
        // False only if the feed already brought a newer version still.
        org.replace_if_newer(t.next.clone(), from.saturating_add(1), defaults);
        self.follow_defaults(&org, defaults);
        drop(counts);
        let view = OrgView {
            id,
            limits: defaults.with(&t.next.limits),
            state: t.next,
        };
        Ok((view, seq))
    }

    /// Commits `change`, an org's, with the audit event of `t`.
    async fn commit(
        &self,
        change: Change,
        id: &OrgId,
        t: &Transition,
    ) -> Result<Seq, BackendError> {
        let commit = Commit {
            change,
            event: AuditEvent {
                org: id.clone(),
                at: t.next.last_modified_on,
                actor: t.next.last_modified_by.clone(),
                action: t.action,
                detail: t.detail.clone(),
            },
        };
        self.commit_measured(commit).await
    }

    /// Adds the org `id`, new here, with `state` at `version`: in a new
    /// record, or in the record it had
    /// before it was deleted, its counts started over. Its limits are
    /// computed once more after the insert, so that a reload's pass
    /// ([`Store::set_defaults`]) that did not see it yet cannot leave it on
    /// the old defaults. The caller holds the id's writer lock.
    fn add_org(&self, id: &OrgId, state: OrgState, version: u64) -> Result<OrgRef, OpError> {
        let defaults = self.defaults();
        let made = self.inner.orgs.insert(
            id.as_bytes(),
            || Org::new(id, state.clone(), version, defaults),
            |org| {
                org.restart_counts();
                org.replace(state.clone(), version, defaults);
            },
        );
        let org = match made {
            Ok(found) => self.hold(found),
            Err(TableError::Exists) => return Err(OpError::OrgExists),
            Err(e @ TableError::Full) => {
                return Err(BackendError::Unavailable(e.to_string()).into())
            }
        };
        org.refresh_limits(|| self.defaults());
        Ok(org)
    }

    /// Makes `record` the state of `org` if it is newer. An org enabled
    /// elsewhere starts its count afresh here too, as [`Store::enable`] does.
    fn install_into(&self, org: &Org, record: OrgRecord) {
        let was_disabled = org.hot().is_disabled();
        let enabled = record.state.status == KeyStatus::Enabled;
        if was_disabled && enabled && org.version() < record.version {
            org.calls().reset();
        }
        let _ = self.end_dead_sessions(&record.id, &record.state);
        let defaults = self.defaults();
        org.replace_if_newer(record.state, record.version, defaults);
        self.follow_defaults(org, defaults);
    }

    /// Ends the sessions of `id` that `state` kills: all of them when its key
    /// is gone or disabled, those of another key generation otherwise.
    fn end_dead_sessions(
        &self,
        id: &OrgId,
        state: &OrgState,
    ) -> Vec<crate::session::SessionDigest> {
        if self.inner.sessions.is_empty() {
            return Vec::new();
        }
        if state.key.is_none() || state.is_disabled() {
            self.inner.sessions.remove_org(id)
        } else {
            self.inner.sessions.remove_stale(id, state.generation)
        }
    }

    /// Removes the sessions a change this store committed killed from a
    /// shared backend too, so a node that reloads later (a restart, a lost
    /// feed) does not bring them back after, say, an enable. The change
    /// itself already ended them on every node; this is housekeeping, in
    /// the background.
    fn forget_sessions(&self, dead: Vec<crate::session::SessionDigest>) {
        if dead.is_empty() || !self.inner.shared {
            return;
        }
        let backend = Arc::clone(&self.inner.backend);
        tokio::spawn(async move {
            for digest in dead {
                if let Err(e) = backend.end_session(digest).await {
                    tracing::warn!(error = %e, "could not remove an ended session from the shared store");
                    return;
                }
            }
        });
    }

    /// Installs `record`: into its org if this store knows it, as a new org
    /// otherwise. The caller holds the org's writer lock, so a provision here
    /// and one arriving on the feed never both insert.
    fn install_locked(&self, record: OrgRecord) {
        match self.get(record.id.as_bytes()) {
            Some(org) => self.install_into(&org, record),
            None => {
                if let Err(e) = self.add_org(&record.id, record.state, record.version) {
                    tracing::error!(org = %record.id, error = %e, "could not add an org from the backend");
                }
            }
        }
    }

    /// Installs `record` as [`install_locked`](Store::install_locked) does,
    /// taking the writer lock only when the org is new here.
    async fn install(&self, record: OrgRecord) {
        if let Some(org) = self.get(record.id.as_bytes()) {
            self.install_into(&org, record);
            return;
        }
        let _writer = self.writer(&record.id).lock().await;
        self.install_locked(record);
    }

    /// Applies one event of the backend's feed.
    async fn apply_feed(&self, feed: Feed) -> Result<(), BackendError> {
        if let Feed::Resync = feed {
            // What this node holds cannot be vouched for until it reloaded.
            if let Some(lease) = &self.inner.lease {
                lease.hold(true);
            }
            let reloaded = self.resync().await;
            if let (Some(lease), Ok(())) = (&self.inner.lease, &reloaded) {
                lease.hold(false);
            }
            return reloaded;
        }
        match feed {
            Feed::Org(record) => self.install(record).await,
            // Under the token writer: the store's own create or delete, which
            // commits and then updates the map under it, is never overtaken
            // by a later event of the same name.
            Feed::PutToken(t) => {
                let _writer = self.inner.token_writer.lock().await;
                self.write_tokens().insert(t);
            }
            Feed::DeleteToken(name) => {
                let _writer = self.inner.token_writer.lock().await;
                self.write_tokens().remove(&name);
            }
            Feed::PutUser(u) => {
                let _writer = self.inner.user_writer.lock().await;
                self.insert_user(u);
            }
            Feed::DeleteUser { org, username } => {
                let _writer = self.inner.user_writer.lock().await;
                self.remove_user(&org, &username);
            }
            Feed::DeleteOrg(id) => {
                let _writer = self.writer(&id).lock().await;
                self.remove_org(&id).await;
            }
            Feed::PutSession(record) => {
                let until = replay_until(&record);
                self.inner.sessions.insert(record, until);
            }
            Feed::EndSession(digest) => {
                self.inner.sessions.remove(&digest);
            }
            Feed::Reclaim(id) => {
                if let Some(org) = self.get(id.as_bytes()) {
                    self.hand_back_org(&org).await?;
                }
            }
            Feed::Resync => {}
        }
        Ok(())
    }

    /// Reloads every org and token from the backend: after the feed lost
    /// events, what this store holds cannot be vouched for.
    ///
    /// The backend's records replace this store's whatever their versions:
    /// an org deleted and provisioned again starts over at version 1. A
    /// change this store made after the backend was read comes back on the
    /// feed after this reload and is installed again; it was not confirmed
    /// before then, since this store had not reported it applied.
    async fn resync(&self) -> Result<(), BackendError> {
        let _writer = self.inner.token_writer.lock().await;
        let _users_writer = self.inner.user_writer.lock().await;
        let Snapshot {
            orgs,
            tokens,
            users,
        } = self.inner.backend.load().await?;
        let mut stored = std::collections::HashSet::with_capacity(orgs.len());
        for record in orgs {
            stored.insert(record.id.clone());
            match self.get(record.id.as_bytes()) {
                Some(org) => {
                    if org.version() != record.version {
                        self.install_into(&org, record.clone());
                        let defaults = self.defaults();
                        org.replace(record.state, record.version, defaults);
                        self.follow_defaults(&org, defaults);
                    }
                }
                None => self.install(record).await,
            }
        }
        let gone: Vec<OrgId> = self
            .inner
            .orgs
            .iter()
            .map(|e| e.id())
            .filter(|id| !stored.contains(id))
            .collect();
        for id in gone {
            let _writer = self.writer(&id).lock().await;
            self.remove_org(&id).await;
        }
        let mut fresh = Tokens::default();
        for t in tokens {
            fresh.insert(t);
        }
        *self.write_tokens() = fresh;
        let mut fresh: HashMap<OrgId, HashMap<String, ApiUser>> = HashMap::new();
        for u in users {
            fresh
                .entry(u.org.clone())
                .or_default()
                .insert(u.username.clone(), u);
        }
        // Sessions of users gone meanwhile end with them.
        let gone: Vec<(OrgId, String)> = self
            .read_users()
            .iter()
            .flat_map(|(org, theirs)| {
                theirs
                    .keys()
                    .filter(|name| !fresh.get(org).is_some_and(|f| f.contains_key(*name)))
                    .map(|name| (org.clone(), name.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        *self.write_users() = fresh;
        for (org, name) in gone {
            self.inner.sessions.remove_user(&org, &name);
        }
        let mut sessions = self.inner.backend.sessions().await?;
        // A session whose user is gone died with it.
        sessions.retain(|r| self.has_user(&r.org, &r.username));
        self.inner.sessions.replace_all(sessions, replay_until);
        Ok(())
    }

    /// Removes the org `id` from this store: from the map, with its tokens and
    /// what the count flusher keeps of it. The caller holds its writer lock.
    async fn remove_org(&self, id: &OrgId) {
        let Some(org) = self.inner.orgs.remove(id.as_bytes()) else {
            return;
        };
        // Keyed by the record's address, which only this id takes again:
        // forgotten here, so that a provisioning of it starts afresh.
        self.inner.counts.lock().await.saved(&org, None);
        let mut tokens = self.write_tokens();
        let theirs: Vec<String> = tokens
            .by_digest
            .values()
            .filter(|t| t.org == *id)
            .map(|t| t.name.clone())
            .collect();
        for name in theirs {
            tokens.remove(&name);
        }
        drop(tokens);
        self.write_users().remove(id);
        self.inner.sessions.remove_org(id);
    }

    /// Deletes an org with its key and its tokens; they stop working on
    /// every node before this returns. Its audit log stays.
    pub async fn delete_org(&self, id: &str, actor: Actor) -> Result<(), OpError> {
        let org = self.find(id).await?;
        let store = self.clone();
        self.run(async move {
            let id = org.id();
            let writer = store.writer(&id).lock().await;
            let mut org = org;
            let mut tries = 0;
            let seq = loop {
                tries += 1;
                let change = Change::DeleteOrg {
                    id: id.clone(),
                    expected: org.version(),
                };
                let event = AuditEvent {
                    org: id.clone(),
                    at: store.inner.clock.now(),
                    actor: actor.clone(),
                    action: Action::DeleteOrg,
                    detail: "org deleted, with its key and its tokens".to_owned(),
                };
                match store.commit_measured(Commit { change, event }).await {
                    Ok(seq) => break seq,
                    Err(BackendError::Conflict(why)) if tries < COMMIT_TRIES => {
                        tracing::debug!(org = %id, %why, tries, "org delete lost a race");
                        match store.inner.backend.org(&id).await? {
                            // Deleted elsewhere first.
                            None => {
                                store.remove_org(&id).await;
                                return Err(OpError::OrgNotFound);
                            }
                            Some(record) => {
                                store.install_locked(record);
                                org = store.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            store.remove_org(&id).await;
            drop(writer);
            store.confirm(seq).await
        })
        .await
    }

    /// The version of org `id`'s state in force here, if this store knows it.
    #[cfg(test)]
    pub(crate) fn version_of(&self, id: &str) -> Option<u64> {
        self.get(id.as_bytes()).map(|org| org.version())
    }

    fn writer(&self, id: &OrgId) -> &tokio::sync::Mutex<()> {
        let h = self.inner.stripe_hasher.hash_one(id.as_bytes());
        &self.inner.writers[(h as usize) % self.inner.writers.len()]
    }
}

impl Store {
    fn view_of(&self, org: &Org) -> OrgView {
        org.read(|c| OrgView {
            id: org.id(),
            limits: self.defaults().with(&c.limits()),
            state: c.state(),
        })
    }
}

/// Applies `feed` to the store behind `inner` until the backend or the store
/// is gone. A reload that fails is tried again until it succeeds: the events
/// after it are applied only once the store has caught up.
async fn follow(weak: Weak<Inner>, mut feed: Subscription) {
    while let Some(Event { seq, feed: event }) = feed.recv().await {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut store = Store { inner };
        let mut event = event;
        while let Err(e) = store.apply_feed(event).await {
            tracing::error!(error = %e, "could not reload the store after losing its feed; retrying");
            // Not holding the store while waiting, so it can stop meanwhile.
            drop(store);
            tokio::time::sleep(RESYNC_RETRY).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            store = Store { inner };
            event = Feed::Resync;
        }
        // Now serving it: what another node's confirm waits for.
        feed.applied(seq);
        store.inner.metrics.applied(seq);
    }
}

/// Tells the backend, once a second, the session uses this node queued,
/// until the store is gone.
async fn tell_session_uses(weak: Weak<Inner>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let store = Store { inner };
        if let Err(e) = store.tell_session_uses().await {
            tracing::warn!(error = %e, "could not record session uses; other nodes may find them idle sooner");
        }
    }
}

/// When a session's login leaves the timestamp window, for a node that
/// learns of it from the feed: replay is judged against the login's own
/// timestamp, so an hour's margin covers any configured window.
fn replay_until(record: &crate::session::SessionRecord) -> Timestamp {
    Timestamp::from_nanos(record.login_timestamp_ms.saturating_mul(1_000_000))
        .saturating_add(std::time::Duration::from_secs(3600))
}

/// Runs `fut` in its own task and waits for it, so that dropping the caller does
/// not stop a mutation between its commit and its swap.
async fn run_to_completion<T: Send + 'static>(
    fut: impl Future<Output = Result<T, OpError>> + Send + 'static,
) -> Result<T, OpError> {
    match tokio::spawn(fut).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(OpError::Store(BackendError::Unavailable(format!(
            "mutation task cancelled: {e}"
        )))),
    }
}

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod tests;
