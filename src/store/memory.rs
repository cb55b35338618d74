//! An in-memory [`Backend`], for tests and for trying keygate without a disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Change, Commit, Dump, Event, Feed, Grant,
    Restored, Seq, Snapshot, Subscription, Take, FEED_CAPACITY,
};
use super::counts::CallCount;
use super::OrgRecord;
use crate::limit::Window;
use crate::org::{OrgId, OrgState};
use crate::session::{ApiUser, SessionDigest, SessionRecord};
use crate::token::{TokenDigest, TokenRecord};

/// Keeps every commit in memory. Survives a [`Store`](super::Store) being dropped
/// and reopened over it, which is how tests model a restart; fails commits on
/// request, which is how they model a full disk. Made with
/// [`shared`](MemoryBackend::shared) and shared by several stores (behind one
/// `Arc`), it is one truth for several nodes in one process: its commits are
/// version-checked under its lock, as always, and its feed tells every store
/// of every commit, in commit order, and [`confirm`](Backend::confirm) waits
/// until every store still open has applied a commit.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    data: Mutex<Data>,
    fail_commits: AtomicBool,
    /// Failed logins of every store sharing this backend (a shared one only).
    login_failures: crate::session::LoginFailures,
}

#[derive(Debug, Default)]
struct Data {
    /// Each org's version and state.
    orgs: BTreeMap<OrgId, (u64, OrgState)>,
    tokens: BTreeMap<String, TokenRecord>,
    users: BTreeMap<(OrgId, String), ApiUser>,
    /// Sessions of a shared backend, by digest.
    sessions: std::collections::HashMap<SessionDigest, SessionRecord>,
    /// When each session was last used, as the nodes reported it.
    session_uses: std::collections::HashMap<SessionDigest, crate::clock::Timestamp>,
    audit: Vec<AuditEvent>,
    counts: BTreeMap<OrgId, Window>,
    /// The feed of a shared backend; sent to under the lock, so every
    /// subscriber sees commit order.
    feed: Option<tokio::sync::broadcast::Sender<Event>>,
    /// The last commit's place on the feed.
    seq: Seq,
    /// What each subscriber has applied; a store that closed drops its end.
    applied: Vec<tokio::sync::watch::Receiver<Seq>>,
    /// The cluster's threshold windows of a shared backend: each org's
    /// window start and the calls granted in it.
    granted: BTreeMap<OrgId, (u32, u32)>,
}

impl MemoryBackend {
    /// An empty backend for one store: no feed, as with a redb file.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// An empty backend for several stores: with a change feed
    /// ([`Backend::subscribe`]), so each store learns the others' commits.
    pub fn shared() -> MemoryBackend {
        let backend = MemoryBackend::default();
        backend.lock().feed = Some(tokio::sync::broadcast::channel(FEED_CAPACITY).0);
        backend
    }

    /// From now on, every commit fails (`true`) or succeeds (`false`).
    pub fn fail_commits(&self, fail: bool) {
        self.fail_commits.store(fail, Ordering::SeqCst);
    }

    /// The threshold window persisted for `org`, if any.
    pub fn count_of(&self, org: &OrgId) -> Option<Window> {
        self.lock().counts.get(org).copied()
    }

    /// Every audit event so far, of every org, oldest first.
    pub fn all_audit(&self) -> Vec<AuditEvent> {
        self.lock().audit.clone()
    }

    /// Checks and applies `commits` in one step, as [`Backend::commit_all`]
    /// promises; the last one's place on the feed.
    fn commit_many(&self, commits: Vec<Commit>) -> Result<Seq, BackendError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ));
        }
        // One lock for all of them: no reader sees a part.
        let mut data = self.lock();
        check_all(&data, &commits)?;
        for commit in commits {
            data.seq += 1;
            if let Some(feed) = &data.feed {
                // No subscriber is not an error: the feed is for those there are.
                let _ = feed.send(Event {
                    seq: data.seq,
                    feed: Feed::of(&commit.change),
                });
            }
            data.apply(commit);
        }
        Ok(data.seq)
    }

    /// Sends `feed` to every store of a shared backend, as a commit does;
    /// its place on the feed.
    fn publish(&self, change: impl FnOnce(&mut Data) -> Feed) -> Result<Seq, BackendError> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ));
        }
        let mut data = self.lock();
        let feed = change(&mut data);
        if data.feed.is_none() {
            return Ok(0);
        }
        data.seq += 1;
        let seq = data.seq;
        if let Some(sender) = &data.feed {
            let _ = sender.send(Event { seq, feed });
        }
        Ok(seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        // Nothing panics while holding the lock, so a poisoned one is whole.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Data {
    fn apply(&mut self, commit: Commit) {
        match commit.change {
            Change::Org { record, .. } => {
                self.orgs.insert(record.id, (record.version, record.state));
            }
            Change::PutToken(t) => {
                self.tokens.insert(t.name.clone(), t);
            }
            Change::DeleteToken(name) => {
                self.tokens.remove(&name);
            }
            Change::RotateToken { record, .. } => {
                self.tokens.insert(record.name.clone(), record);
            }
            Change::PutUser(u) => {
                self.users.insert((u.org.clone(), u.username.clone()), u);
            }
            Change::DeleteUser { org, username } => {
                self.sessions
                    .retain(|_, s| !(s.org == org && s.username == username));
                self.users.remove(&(org, username));
            }
            Change::DeleteOrg { id, .. } => {
                self.orgs.remove(&id);
                self.tokens.retain(|_, t| t.org != id);
                self.users.retain(|(org, _), _| *org != id);
                self.sessions.retain(|_, s| s.org != id);
                self.counts.remove(&id);
                self.granted.remove(&id);
            }
        }
        self.audit.push(commit.event);
    }

    fn record(&self, id: &OrgId) -> Option<OrgRecord> {
        self.orgs.get(id).map(|(version, state)| OrgRecord {
            id: id.clone(),
            state: state.clone(),
            version: *version,
        })
    }
}

/// Checks what every commit of `commits` expects, each against the state the
/// ones before it leave: a batch may provision an org and then change it.
fn check_all(data: &Data, commits: &[Commit]) -> Result<(), BackendError> {
    let mut orgs: BTreeMap<&OrgId, Option<u64>> = BTreeMap::new();
    // Each token name's digest, `None` once it is gone.
    let mut tokens: BTreeMap<&str, Option<TokenDigest>> = BTreeMap::new();
    let mut users: BTreeMap<(&OrgId, &str), bool> = BTreeMap::new();
    for commit in commits {
        let holds = match &commit.change {
            Change::Org { record, expected } => {
                let now = orgs
                    .entry(&record.id)
                    .or_insert_with(|| data.orgs.get(&record.id).map(|(v, _)| *v));
                let holds = *now == *expected;
                *now = Some(record.version);
                holds
            }
            Change::PutToken(t) => {
                let now = tokens
                    .entry(&t.name)
                    .or_insert_with(|| data.tokens.get(&t.name).map(|t| t.digest));
                let holds = now.is_none();
                *now = Some(t.digest);
                holds
            }
            Change::DeleteToken(name) => {
                let now = tokens
                    .entry(name)
                    .or_insert_with(|| data.tokens.get(name).map(|t| t.digest));
                let holds = now.is_some();
                *now = None;
                holds
            }
            Change::RotateToken { record, expected } => {
                let now = tokens
                    .entry(&record.name)
                    .or_insert_with(|| data.tokens.get(&record.name).map(|t| t.digest));
                let holds = *now == Some(*expected);
                *now = Some(record.digest);
                holds
            }
            Change::PutUser(u) => {
                let taken = users.entry((&u.org, &u.username)).or_insert_with(|| {
                    data.users
                        .contains_key(&(u.org.clone(), u.username.clone()))
                });
                let holds = !*taken;
                *taken = true;
                holds
            }
            Change::DeleteUser { org, username } => {
                let taken = users
                    .entry((org, username))
                    .or_insert_with(|| data.users.contains_key(&(org.clone(), username.clone())));
                let holds = *taken;
                *taken = false;
                holds
            }
            Change::DeleteOrg { id, expected } => {
                users.retain(|(org, _), _| *org != id);
                let now = orgs
                    .entry(id)
                    .or_insert_with(|| data.orgs.get(id).map(|(v, _)| *v));
                let holds = *now == Some(*expected);
                *now = None;
                holds
            }
        };
        if !holds {
            return Err(commit.change.refused());
        }
    }
    Ok(())
}

impl Backend for MemoryBackend {
    fn feed_seen(&self) -> Option<Seq> {
        // In one process every commit is on the feed as it is made.
        let data = self.lock();
        data.feed.as_ref().map(|_| data.seq)
    }

    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        let data = self.lock();
        let orgs = data
            .orgs
            .iter()
            .map(|(id, (version, state))| OrgRecord {
                id: id.clone(),
                state: state.clone(),
                version: *version,
            })
            .collect();
        let tokens = data.tokens.values().cloned().collect();
        let users = data.users.values().cloned().collect();
        Box::pin(std::future::ready(Ok(Snapshot {
            orgs,
            tokens,
            users,
        })))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(std::future::ready(self.commit_many(vec![commit])))
    }

    fn commit_all(&self, commits: Vec<Commit>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(std::future::ready(self.commit_many(commits).map(drop)))
    }

    fn confirm(&self, seq: Seq) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut waiting = {
            let mut data = self.lock();
            // Stores that closed hold nothing back.
            data.applied.retain(|a| a.has_changed().is_ok());
            data.applied.clone()
        };
        Box::pin(async move {
            for applied in &mut waiting {
                // An error: that store closed meanwhile, and serves nothing.
                let _ = applied.wait_for(|at| *at >= seq).await;
            }
            Ok(())
        })
    }

    fn restore(&self, dump: Dump) -> BoxFuture<'_, Result<Restored, BackendError>> {
        let result = if self.fail_commits.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))
        } else {
            let mut data = self.lock();
            if data.orgs.is_empty() && data.tokens.is_empty() && data.audit.is_empty() {
                data.orgs = dump
                    .orgs
                    .into_iter()
                    .map(|r| (r.id, (r.version, r.state)))
                    .collect();
                data.tokens = dump
                    .tokens
                    .into_iter()
                    .map(|t| (t.name.clone(), t))
                    .collect();
                data.users = dump
                    .users
                    .into_iter()
                    .map(|u| ((u.org.clone(), u.username.clone()), u))
                    .collect();
                data.audit = dump.audit;
                data.seq += 1;
                if let Some(feed) = &data.feed {
                    // Everything changed at once: subscribers reload.
                    let _ = feed.send(Event {
                        seq: data.seq,
                        feed: Feed::Resync,
                    });
                }
                Ok(Restored::Done)
            } else {
                let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
                Ok(Restored::NotEmpty {
                    orgs: count(data.orgs.len()),
                    tokens: count(data.tokens.len()),
                    audit_events: count(data.audit.len()),
                })
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn org(&self, id: &OrgId) -> BoxFuture<'_, Result<Option<OrgRecord>, BackendError>> {
        Box::pin(std::future::ready(Ok(self.lock().record(id))))
    }

    fn token(&self, name: &str) -> BoxFuture<'_, Result<Option<TokenRecord>, BackendError>> {
        Box::pin(std::future::ready(Ok(self
            .lock()
            .tokens
            .get(name)
            .cloned())))
    }

    fn put_session(&self, record: SessionRecord) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(std::future::ready(self.publish(|data| {
            if data.feed.is_some() {
                data.sessions.insert(record.digest, record.clone());
            }
            Feed::PutSession(record)
        })))
    }

    fn end_session(&self, digest: SessionDigest) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(std::future::ready(self.publish(|data| {
            data.sessions.remove(&digest);
            Feed::EndSession(digest)
        })))
    }

    fn touch_sessions(
        &self,
        uses: Vec<(SessionDigest, crate::clock::Timestamp)>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut data = self.lock();
        for (digest, at) in uses {
            let last = data.session_uses.entry(digest).or_default();
            *last = (*last).max(at);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn session_used(
        &self,
        digest: SessionDigest,
    ) -> BoxFuture<'_, Result<Option<crate::clock::Timestamp>, BackendError>> {
        let at = self.lock().session_uses.get(&digest).copied();
        Box::pin(std::future::ready(Ok(at)))
    }

    fn login_lockout(
        &self,
        org: &OrgId,
        username: &str,
        failed: bool,
        now: crate::clock::Timestamp,
    ) -> BoxFuture<'_, Result<Option<u64>, BackendError>> {
        // One node's backend: that node counts its own.
        if self.lock().feed.is_none() {
            return Box::pin(std::future::ready(Ok(None)));
        }
        if failed {
            self.login_failures.failed(org.as_str(), username, now);
        }
        let wait = self.login_failures.locked_out(org.as_str(), username, now);
        Box::pin(std::future::ready(Ok(wait)))
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<SessionRecord>, BackendError>> {
        let all = self.lock().sessions.values().cloned().collect();
        Box::pin(std::future::ready(Ok(all)))
    }

    fn subscribe(&self) -> Option<Subscription> {
        let mut data = self.lock();
        let events = data.feed.as_ref()?.subscribe();
        // A new store loads after this, so it holds every commit so far.
        let (applied, watched) = tokio::sync::watch::channel(data.seq);
        data.applied.push(watched);
        Some(Subscription::broadcast(events, applied))
    }

    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        let events = self
            .lock()
            .audit
            .iter()
            .filter(|e| e.org == org)
            .cloned()
            .collect();
        Box::pin(std::future::ready(Ok(events)))
    }

    fn shares_calls(&self) -> bool {
        self.lock().feed.is_some()
    }

    fn take_calls(&self, take: Take) -> BoxFuture<'_, Result<Grant, BackendError>> {
        let result = if self.fail_commits.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))
        } else {
            let now = u32::try_from(take.now.as_secs()).unwrap_or(u32::MAX);
            let mut data = self.lock();
            let (start, granted) = data.granted.entry(take.org).or_insert((now, 0));
            if u64::from(now) >= u64::from(*start) + u64::from(take.window_secs) {
                (*start, *granted) = (now, 0);
            }
            if let Some((from, unused)) = take.returned {
                if from == *start {
                    *granted = granted.saturating_sub(unused);
                }
            }
            let calls = Grant::share(
                take.want,
                take.threshold.saturating_sub(*granted),
                take.nodes,
            );
            *granted += calls;
            Ok(Grant {
                window_start: *start,
                calls,
            })
        };
        Box::pin(std::future::ready(result))
    }

    fn calls_window(&self, org: &OrgId) -> BoxFuture<'_, Result<Option<Window>, BackendError>> {
        let window = self
            .lock()
            .granted
            .get(org)
            .map(|&(start, calls)| Window { start, calls });
        Box::pin(std::future::ready(Ok(window)))
    }

    fn reclaim_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        let mut data = self.lock();
        data.seq += 1;
        if let Some(feed) = &data.feed {
            let _ = feed.send(Event {
                seq: data.seq,
                feed: Feed::Reclaim(org.clone()),
            });
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn reset_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        if self.fail_commits.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))));
        }
        let mut data = self.lock();
        data.granted.remove(org);
        data.counts.remove(org);
        Box::pin(std::future::ready(Ok(())))
    }

    fn save_counts(&self, counts: Vec<CallCount>) -> BoxFuture<'_, Result<(), BackendError>> {
        let result = if self.fail_commits.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))
        } else {
            let mut data = self.lock();
            for c in counts {
                match c.window {
                    Some(w) => data.counts.insert(c.org, w),
                    None => data.counts.remove(&c.org),
                };
            }
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn load_counts(&self) -> BoxFuture<'_, Result<Vec<CallCount>, BackendError>> {
        let counts = self
            .lock()
            .counts
            .iter()
            .map(|(org, w)| CallCount {
                org: org.clone(),
                window: Some(*w),
            })
            .collect();
        Box::pin(std::future::ready(Ok(counts)))
    }
}
