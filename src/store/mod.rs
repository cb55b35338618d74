//! The store: every org in a concurrent map, and the one path by which they change.
//!
//! Requests read orgs through [`Store::get`] (a `DashSet` lookup by the org id's
//! bytes, then a short read lock on that org alone), so a request never waits on
//! anything but its own org's state being swapped.
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
//! The threshold counts take another path, off the request path: the
//! [`CountFlusher`] saves the windows that changed through the backend's counter
//! seam every period and at stop, and [`Store::open`] resumes them (`counts`).

mod backend;
mod check;
mod counts;
mod export;
mod import;
mod memory;
mod redb;

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use dashmap::DashSet;

pub use backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Change, Commit, Dump, Loading, OrgBatches,
    OrgRecord, Restored, Snapshot,
};
pub use check::{check_store, CheckReport, Problem};
pub use counts::{CallCount, CountFlusher};
pub use export::{export, ExportCounts, ExportError, EXPORT_VERSION};
pub use import::{import, import_orgs, read_input, ImportError, ImportInput, Imported};
pub use memory::MemoryBackend;
pub use redb::RedbBackend;

use crate::clock::{Clock, Timestamp};
use crate::org::{
    Action, Actor, IdPages, LimitOverrides, Limits, OpError, Org, OrgId, OrgState, Transition,
};
use crate::token::{self, Role, TokenDigest, TokenRecord};

/// How many writer locks the orgs share. Mutations of two orgs contend only when
/// their ids hash alike, one chance in this many, and an org costs no lock memory.
const WRITER_STRIPES: usize = 256;

/// How many batches of loaded orgs may wait to be built at start.
const LOAD_QUEUE: usize = 8;

/// The most orgs the map is sized for up front from a backend's count.
const PRESIZE_MAX: usize = 1 << 24;

/// The orgs, their state and the path by which it changes. Cheap to clone: every
/// clone is a handle to the same store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    orgs: DashSet<Entry>,
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    defaults: Limits,
    writers: Box<[tokio::sync::Mutex<()>]>,
    stripe_hasher: std::collections::hash_map::RandomState,
    tokens: std::sync::RwLock<Tokens>,
    /// Serializes token creation and deletion, so a name is taken once.
    token_writer: tokio::sync::Mutex<()>,
    /// Where provisioning keeps new orgs' ids; dropped with the store, and the
    /// ids' pages with their last org.
    id_pages: std::sync::Mutex<IdPages>,
    /// The windows last persisted; held by a flush and by an enable, so the
    /// two never interleave.
    counts: tokio::sync::Mutex<counts::Flushed>,
}

/// Admin and viewer tokens, found by digest (to authenticate) or name (to delete).
#[derive(Default)]
struct Tokens {
    by_digest: HashMap<TokenDigest, TokenRecord>,
    by_name: HashMap<String, TokenDigest>,
}

impl Tokens {
    fn insert(&mut self, t: TokenRecord) {
        self.by_name.insert(t.name.clone(), t.digest);
        self.by_digest.insert(t.digest, t);
    }
}

/// A map entry: the org, found by its id's bytes.
struct Entry(Arc<Org>);

impl Hash for Entry {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id_bytes().hash(state)
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.0.id_bytes() == other.0.id_bytes()
    }
}

impl Eq for Entry {}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.0.id_bytes()
    }
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
            .field("defaults", &self.inner.defaults)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a store over `backend`, loading every org it holds.
    ///
    /// Fails, rather than starting empty, when the backend cannot be read.
    pub async fn open(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        defaults: Limits,
    ) -> Result<Store, BackendError> {
        // The backend reads on its own thread while this one builds the orgs.
        let (batches, mut received) = tokio::sync::mpsc::channel(LOAD_QUEUE);
        let build = async {
            let mut orgs = DashSet::new();
            let mut pages = IdPages::default();
            while let Some(loading) = received.recv().await {
                match loading {
                    // A hint, not a promise: a damaged file could claim any count.
                    Loading::Expect(n) if orgs.is_empty() => {
                        orgs = DashSet::with_capacity(n.min(PRESIZE_MAX));
                    }
                    Loading::Expect(_) => {}
                    Loading::Orgs(batch) => {
                        for OrgRecord { id, state } in batch {
                            let org = Arc::new(Org::new(&id, &mut pages, state, defaults));
                            if !orgs.insert(Entry(Arc::clone(&org))) {
                                return Err(BackendError::Corrupt(format!(
                                    "org {} stored twice",
                                    org.id()
                                )));
                            }
                        }
                    }
                }
            }
            Ok((orgs, pages))
        };
        let (loaded, (orgs, id_pages)) = tokio::try_join!(backend.load_into(batches), build)?;
        let persisted_counts = backend.load_counts().await?;
        let mut tokens = Tokens::default();
        for t in loaded {
            tokens.insert(t);
        }
        let store = Store {
            inner: Arc::new(Inner {
                orgs,
                backend,
                clock,
                defaults,
                writers: (0..WRITER_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                stripe_hasher: Default::default(),
                tokens: std::sync::RwLock::new(tokens),
                token_writer: tokio::sync::Mutex::new(()),
                id_pages: std::sync::Mutex::new(id_pages),
                counts: Default::default(),
            }),
        };
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

    /// The org with id `id`, if there is one. This is the request path's lookup.
    pub fn get(&self, id: &[u8]) -> Option<Arc<Org>> {
        self.inner.orgs.get(id).map(|e| Arc::clone(&e.0))
    }

    /// Runs `f` on the org with id `id` while holding only the map's shard read
    /// lock: no reference count is touched, so a hot org's cache line is not
    /// bounced between cores by lookups.
    pub(crate) fn with_org<R>(&self, id: &[u8], f: impl FnOnce(&Arc<Org>) -> R) -> Option<R> {
        self.inner.orgs.get(id).map(|e| f(&e.0))
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
        self.inner.orgs.is_empty()
    }

    /// The configured default limits.
    pub fn defaults(&self) -> Limits {
        self.inner.defaults
    }

    /// A view of one org.
    pub fn view(&self, id: &str) -> Result<OrgView, OpError> {
        let org = self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
        Ok(self.view_of(&org))
    }

    /// Views of every org, ordered by id.
    pub fn list(&self) -> Vec<OrgView> {
        let mut all: Vec<OrgView> = self.inner.orgs.iter().map(|e| self.view_of(&e.0)).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// The audit log of one org, oldest first.
    pub async fn audit(&self, id: &str) -> Result<Vec<AuditEvent>, OpError> {
        let org = self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
        Ok(self.inner.backend.audit(org.id()).await?)
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
        run_to_completion(async move {
            let _writer = store.writer(&id).lock().await;
            if store.inner.orgs.contains(id.as_bytes()) {
                return Err(OpError::OrgExists);
            }
            let now = store.inner.clock.now();
            let t = OrgState::provisioned(now, actor, subscription_expires_at, limits);
            store.commit(&id, &t).await?;
            let org = {
                // Nothing panics while the lock is held, so a poisoned one is whole.
                let mut pages = store
                    .inner
                    .id_pages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                Arc::new(Org::new(&id, &mut pages, t.next, store.inner.defaults))
            };
            let view = store.view_of(&org);
            store.inner.orgs.insert(Entry(org));
            Ok(view)
        })
        .await
    }

    /// Adds a random key to an org that has none.
    pub async fn add(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.add(now, actor)).await
    }

    /// Replaces an org's key with `new`.
    pub async fn edit(&self, id: &str, new: &str, actor: Actor) -> Result<OrgView, OpError> {
        let new = new.to_owned();
        self.apply(id, move |s, now| s.edit(&new, now, actor)).await
    }

    /// Replaces an org's key with a random one.
    pub async fn regenerate(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.regenerate(now, actor)).await
    }

    /// Removes an org's key.
    pub async fn delete(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| s.delete(now, actor)).await
    }

    /// Disables an org's key.
    pub async fn disable(&self, id: &str, reason: &str, actor: Actor) -> Result<OrgView, OpError> {
        let reason = reason.to_owned();
        self.apply(id, move |s, now| Ok(s.disable(&reason, now, actor)))
            .await
    }

    /// Enables an org's key; its call count starts afresh.
    pub async fn enable(&self, id: &str, actor: Actor) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| Ok(s.enable(now, actor))).await
    }

    /// Sets or clears the end of an org's subscription.
    pub async fn set_subscription(
        &self,
        id: &str,
        expires_at: Option<Timestamp>,
        actor: Actor,
    ) -> Result<OrgView, OpError> {
        self.apply(id, move |s, now| {
            Ok(s.set_subscription(expires_at, now, actor))
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
        self.apply(id, move |s, now| s.set_limits(&limits, now, actor))
            .await
    }

    /// Disables `org`'s key because it crossed its call threshold. Resolves once
    /// the disable is durable and visible, or has failed (logged).
    pub(crate) fn disable_over_threshold(
        &self,
        org: Arc<Org>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let store = self.clone();
        async move {
            let id = org.id();
            let done = run_to_completion(async move {
                store
                    .apply_to(org, |s, now| s.disable_over_threshold(now))
                    .await
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
        let org = self.get(org.as_bytes()).ok_or(OpError::OrgNotFound)?;
        let name = name.to_owned();
        let store = self.clone();
        run_to_completion(async move {
            let _writer = store.inner.token_writer.lock().await;
            if store.read_tokens().by_name.contains_key(&name) {
                return Err(OpError::TokenExists);
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
                detail: format!("{} token {} created", role_name(role), record.name),
            };
            store
                .inner
                .backend
                .commit(Commit {
                    change: Change::PutToken(record.clone()),
                    event,
                })
                .await?;
            store.write_tokens().insert(record.clone());
            Ok((record, secret))
        })
        .await
    }

    /// Deletes a token; it stops working before this returns.
    pub async fn delete_token(&self, name: &str) -> Result<(), OpError> {
        let name = name.to_owned();
        let store = self.clone();
        run_to_completion(async move {
            let _writer = store.inner.token_writer.lock().await;
            let record = {
                let tokens = store.read_tokens();
                let digest = tokens.by_name.get(&name).ok_or(OpError::TokenNotFound)?;
                tokens
                    .by_digest
                    .get(digest)
                    .cloned()
                    .ok_or(OpError::TokenNotFound)?
            };
            let event = AuditEvent {
                org: record.org.clone(),
                at: store.inner.clock.now(),
                actor: Actor::Provider,
                action: Action::DeleteToken,
                detail: format!("{} token {} deleted", role_name(record.role), record.name),
            };
            store
                .inner
                .backend
                .commit(Commit {
                    change: Change::DeleteToken(record.name.clone()),
                    event,
                })
                .await?;
            let mut tokens = store.write_tokens();
            tokens.by_name.remove(&record.name);
            tokens.by_digest.remove(&record.digest);
            Ok(())
        })
        .await
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
        F: FnOnce(&OrgState, Timestamp) -> Result<Transition, OpError> + Send + 'static,
    {
        let org = self.get(id.as_bytes()).ok_or(OpError::OrgNotFound)?;
        let store = self.clone();
        run_to_completion(async move { store.apply_to(org, op).await }).await
    }

    async fn apply_to<F>(&self, org: Arc<Org>, op: F) -> Result<OrgView, OpError>
    where
        F: FnOnce(&OrgState, Timestamp) -> Result<Transition, OpError>,
    {
        let _writer = self.writer(&org.id()).lock().await;
        let now = self.inner.clock.now();
        let t = org.read(|c| op(&c.state, now))?;
        let _counts = if t.action == Action::Enable {
            // The count starts afresh on disk too, and first: a crash after
            // the enable's commit must not bring the old window back. Held
            // until the reset below, so no flush writes the old window again.
            let mut flushed = self.inner.counts.lock().await;
            let cleared = CallCount {
                org: org.id(),
                window: None,
            };
            self.inner.backend.save_counts(vec![cleared]).await?;
            // Should the commit fail, the window is still in memory and
            // differs from this, so the next flush writes it back.
            flushed.saved(&org, None);
            Some(flushed)
        } else {
            None
        };
        self.commit(&org.id(), &t).await?;
        if t.action == Action::Enable {
            // Before the swap: until it, requests still see the key disabled and
            // are not counted, so none is counted against the old window.
            org.calls().reset();
        }
        org.replace(t.next, self.inner.defaults);
        Ok(self.view_of(&org))
    }

    async fn commit(&self, id: &OrgId, t: &Transition) -> Result<(), BackendError> {
        let commit = Commit {
            change: Change::Org(OrgRecord {
                id: id.clone(),
                state: t.next.clone(),
            }),
            event: AuditEvent {
                org: id.clone(),
                at: t.next.last_modified_on,
                actor: t.next.last_modified_by.clone(),
                action: t.action,
                detail: t.detail.clone(),
            },
        };
        self.inner.backend.commit(commit).await
    }

    fn writer(&self, id: &OrgId) -> &tokio::sync::Mutex<()> {
        let h = self.inner.stripe_hasher.hash_one(id.as_bytes());
        &self.inner.writers[(h as usize) % self.inner.writers.len()]
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

impl Store {
    fn view_of(&self, org: &Org) -> OrgView {
        org.read(|c| OrgView {
            id: org.id(),
            limits: self.inner.defaults.with(&c.state.limits),
            state: c.state.clone(),
        })
    }
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
mod tests;
