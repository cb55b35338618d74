//! An in-memory [`Backend`], for tests and for trying keygate without a disk.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Change, Commit, Dump, Restored, Snapshot,
};
use super::counts::CallCount;
use super::OrgRecord;
use crate::limit::Window;
use crate::org::{OrgId, OrgState};
use crate::token::TokenRecord;

/// Keeps every commit in memory. Survives a [`Store`](super::Store) being dropped
/// and reopened over it, which is how tests model a restart; fails commits on
/// request, which is how they model a full disk.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    data: Mutex<Data>,
    fail_commits: AtomicBool,
}

#[derive(Debug, Default)]
struct Data {
    orgs: BTreeMap<OrgId, OrgState>,
    tokens: BTreeMap<String, TokenRecord>,
    audit: Vec<AuditEvent>,
    counts: BTreeMap<OrgId, Window>,
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        // Nothing panics while holding the lock, so a poisoned one is whole.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Data {
    fn apply(&mut self, commit: Commit) {
        match commit.change {
            Change::Org(OrgRecord { id, state }) => {
                self.orgs.insert(id, state);
            }
            Change::PutToken(t) => {
                self.tokens.insert(t.name.clone(), t);
            }
            Change::DeleteToken(name) => {
                self.tokens.remove(&name);
            }
        }
        self.audit.push(commit.event);
    }
}

impl Backend for MemoryBackend {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        let data = self.lock();
        let orgs = data
            .orgs
            .iter()
            .map(|(id, state)| OrgRecord {
                id: id.clone(),
                state: state.clone(),
            })
            .collect();
        let tokens = data.tokens.values().cloned().collect();
        Box::pin(std::future::ready(Ok(Snapshot { orgs, tokens })))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<(), BackendError>> {
        self.commit_all(vec![commit])
    }

    fn commit_all(&self, commits: Vec<Commit>) -> BoxFuture<'_, Result<(), BackendError>> {
        let result = if self.fail_commits.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))
        } else {
            // One lock for all of them: no reader sees a part.
            let mut data = self.lock();
            for commit in commits {
                data.apply(commit);
            }
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }

    fn restore(&self, dump: Dump) -> BoxFuture<'_, Result<Restored, BackendError>> {
        let result = if self.fail_commits.load(Ordering::SeqCst) {
            Err(BackendError::Unavailable(
                "commits are failing (test)".into(),
            ))
        } else {
            let mut data = self.lock();
            if data.orgs.is_empty() && data.tokens.is_empty() && data.audit.is_empty() {
                data.orgs = dump.orgs.into_iter().map(|r| (r.id, r.state)).collect();
                data.tokens = dump
                    .tokens
                    .into_iter()
                    .map(|t| (t.name.clone(), t))
                    .collect();
                data.audit = dump.audit;
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
