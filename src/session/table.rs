//! The sessions a node knows, found by the SHA-256 of their cookie value; the
//! logins already made (against replay); and the failed logins (against
//! guessing).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::org::OrgId;

/// The SHA-256 of a session's cookie value: all the server keeps of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionDigest(#[serde(with = "hex_bytes")] pub [u8; 32]);

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

impl SessionDigest {
    /// The digest of a presented cookie value.
    pub fn of(value: &[u8]) -> SessionDigest {
        SessionDigest(Sha256::digest(value).into())
    }
}

impl std::fmt::Debug for SessionDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionDigest(..)")
    }
}

/// A new session's cookie value: 256 bits from the OS's CSPRNG (through
/// `rand`'s thread generator, seeded from it), as 64 hex digits.
pub fn new_session_value() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// One session as every node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The digest of its cookie value.
    pub digest: SessionDigest,
    /// The org it belongs to.
    pub org: OrgId,
    /// The API user who logged in.
    pub username: String,
    /// The org's key generation at login: a key change ends the session.
    pub generation: u64,
    /// When it was made.
    pub created_at: Timestamp,
    /// The login's timestamp, milliseconds since the epoch, kept against replay.
    pub login_timestamp_ms: u64,
}

/// A live session: its record and when it was last used on this node.
#[derive(Debug)]
pub struct Session {
    /// What was recorded at login.
    pub record: SessionRecord,
    last_used: AtomicU64,
    /// When a use was last queued for the shared backend (nanoseconds).
    published: AtomicU64,
}

impl Session {
    /// When it was last used here (nanoseconds since the epoch).
    pub fn last_used(&self) -> Timestamp {
        Timestamp::from_nanos(self.last_used.load(Ordering::Relaxed))
    }

    /// Records a use at `now`; never moves back.
    pub fn touch(&self, now: Timestamp) {
        self.last_used.fetch_max(now.as_nanos(), Ordering::Relaxed);
    }

    /// Whether a use at `now` should be told to the other nodes: the first
    /// in each second since the last one told.
    pub fn publish(&self, now: Timestamp) -> bool {
        let last = self.published.load(Ordering::Relaxed);
        now.as_nanos() >= last.saturating_add(PUBLISH_EVERY_NANOS)
            && self
                .published
                .compare_exchange(last, now.as_nanos(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// A node tells the others of a session's use at most once per this many
/// nanoseconds (a second).
const PUBLISH_EVERY_NANOS: u64 = 1_000_000_000;

/// How failed logins are limited: at most [`USER_FAILURES`] per (org,
/// username) and [`ORG_FAILURES`] per org within a fixed window of
/// [`FAILURE_WINDOW_SECS`]; past either, logins for it answer 429 until the
/// window ends, before any argon2 work is done. Each node counts in its own
/// [`LoginFailures`]; in cluster mode the backend counts for every node too
/// ([`Backend::login_lockout`](crate::store::Backend::login_lockout)).
pub const FAILURE_WINDOW_SECS: u64 = 60;
/// Failed logins one username of one org may make per window.
pub const USER_FAILURES: u32 = 5;
/// Failed logins one org may take per window, all usernames together.
pub const ORG_FAILURES: u32 = 30;

/// Failed logins: per org (username `None`) and per (org, username), the
/// window's start (seconds) and its count.
type Failures = HashMap<(String, Option<String>), (u64, u32)>;

/// The most (org) and (org, username) failure counts kept at once.
const MAX_FAILURE_ENTRIES: usize = 100_000;

/// The most failure and replay entries kept before expired ones are swept.
const SWEEP_AT: usize = 4096;

/// Failed logins counted in one process: per org and per (org, username),
/// each in its fixed window, bounded in size (see [`FAILURE_WINDOW_SECS`]).
#[derive(Debug, Default)]
pub struct LoginFailures {
    /// Per org (username `None`) and per (org, username), the window's start
    /// and its count.
    failures: Mutex<Failures>,
    /// The second of the last sweep of `failures`.
    swept: AtomicU64,
}

/// Every session this node knows, and its login bookkeeping.
#[derive(Debug, Default)]
pub struct Sessions {
    live: DashMap<SessionDigest, Arc<Session>>,
    /// (org, login timestamp, username) of logins made, until they leave the window.
    seen: Mutex<HashMap<(OrgId, u64, String), Timestamp>>,
    /// This node's failed logins.
    failures: LoginFailures,
    /// Uses to tell the other nodes, in cluster mode.
    uses: Mutex<Vec<(SessionDigest, Timestamp)>>,
}

impl Sessions {
    /// The live session of `digest`, if this node knows it.
    pub fn get(&self, digest: &SessionDigest) -> Option<Arc<Session>> {
        self.live.get(digest).map(|s| Arc::clone(&s))
    }

    /// Adds a session (this node's login, or one another node made), last used
    /// at its creation, and remembers its login against replay until
    /// `replay_until`.
    pub fn insert(&self, record: SessionRecord, replay_until: Timestamp) {
        let key = (
            record.org.clone(),
            record.login_timestamp_ms,
            record.username.clone(),
        );
        self.lock_seen().insert(key, replay_until);
        let session = Session {
            last_used: AtomicU64::new(record.created_at.as_nanos()),
            published: AtomicU64::new(record.created_at.as_nanos()),
            record,
        };
        self.live.insert(session.record.digest, Arc::new(session));
    }

    /// Queues a use of `digest` at `at` for the other nodes.
    pub fn queue_use(&self, digest: SessionDigest, at: Timestamp) {
        self.uses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((digest, at));
    }

    /// Takes the queued uses.
    pub fn take_uses(&self) -> Vec<(SessionDigest, Timestamp)> {
        std::mem::take(&mut *self.uses.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Ends the session of `digest`; whether it was live here.
    pub fn remove(&self, digest: &SessionDigest) -> bool {
        self.live.remove(digest).is_some()
    }

    /// Ends every session of `org`; the digests of those it ended.
    pub fn remove_org(&self, org: &OrgId) -> Vec<SessionDigest> {
        let mut gone = Vec::new();
        self.live.retain(|d, s| {
            let keep = s.record.org != *org;
            if !keep {
                gone.push(*d);
            }
            keep
        });
        gone
    }

    /// Ends every session of `username` in `org`.
    pub fn remove_user(&self, org: &OrgId, username: &str) {
        self.live
            .retain(|_, s| !(s.record.org == *org && s.record.username == username));
    }

    /// Ends every session of `org` made under another key generation; the
    /// digests of those it ended.
    pub fn remove_stale(&self, org: &OrgId, generation: u64) -> Vec<SessionDigest> {
        let mut gone = Vec::new();
        self.live.retain(|d, s| {
            let keep = !(s.record.org == *org && s.record.generation != generation);
            if !keep {
                gone.push(*d);
            }
            keep
        });
        gone
    }

    /// How many sessions this node holds.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Every session, for a node that reloads.
    pub fn records(&self) -> Vec<SessionRecord> {
        self.live.iter().map(|s| s.record.clone()).collect()
    }

    /// Replaces every session with `records` (a reload), keeping the last use
    /// of those this node already knew.
    pub fn replace_all(
        &self,
        records: Vec<SessionRecord>,
        replay_until: impl Fn(&SessionRecord) -> Timestamp,
    ) {
        let mut keep = std::collections::HashSet::with_capacity(records.len());
        for r in records {
            keep.insert(r.digest);
            if !self.live.contains_key(&r.digest) {
                let until = replay_until(&r);
                self.insert(r, until);
            }
        }
        self.live.retain(|d, _| keep.contains(d));
    }

    /// Reserves the login (org, timestamp, username) until `until`: false if
    /// it was made already (a replay). A failed login gives it back
    /// ([`release_login`](Sessions::release_login)).
    pub fn reserve_login(
        &self,
        org: &OrgId,
        timestamp_ms: u64,
        username: &str,
        now: Timestamp,
        until: Timestamp,
    ) -> bool {
        let mut seen = self.lock_seen();
        if seen.len() >= SWEEP_AT {
            seen.retain(|_, t| *t > now);
        }
        let key = (org.clone(), timestamp_ms, username.to_owned());
        match seen.get(&key) {
            Some(t) if *t > now => false,
            _ => {
                seen.insert(key, until);
                true
            }
        }
    }

    /// Gives back a login reserved by [`reserve_login`](Sessions::reserve_login) that failed.
    pub fn release_login(&self, org: &OrgId, timestamp_ms: u64, username: &str) {
        self.lock_seen()
            .remove(&(org.clone(), timestamp_ms, username.to_owned()));
    }

    /// Seconds until logins for `org` (or this `username` of it) may be tried
    /// again, if this node's count of its failures is over the limit now.
    pub fn locked_out(&self, org: &str, username: &str, now: Timestamp) -> Option<u64> {
        self.failures.locked_out(org, username, now)
    }

    /// Counts a failed login for `org` and `username` on this node.
    pub fn failed(&self, org: &str, username: &str, now: Timestamp) {
        self.failures.failed(org, username, now);
    }

    fn lock_seen(&self) -> std::sync::MutexGuard<'_, HashMap<(OrgId, u64, String), Timestamp>> {
        // Only inserts and removes under it: a poisoned map is whole.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LoginFailures {
    /// Seconds until logins for `org` (or this `username` of it) may be tried
    /// again, if its failures are over the limit now.
    pub fn locked_out(&self, org: &str, username: &str, now: Timestamp) -> Option<u64> {
        let failures = self.lock_failures();
        let now = now.as_secs();
        let over = |key: &(String, Option<String>), limit: u32| {
            failures.get(key).and_then(|(start, n)| {
                let end = start + FAILURE_WINDOW_SECS;
                (now < end && *n >= limit).then_some(end - now)
            })
        };
        let org_wait = over(&(org.to_owned(), None), ORG_FAILURES);
        let user_wait = over(&(org.to_owned(), Some(username.to_owned())), USER_FAILURES);
        org_wait.max(user_wait)
    }

    /// Counts a failed login for `org` and `username`.
    pub fn failed(&self, org: &str, username: &str, now: Timestamp) {
        let mut failures = self.lock_failures();
        let now = now.as_secs();
        // At most once a second: a sweep reads every entry.
        if failures.len() >= SWEEP_AT && self.swept.swap(now, Ordering::Relaxed) != now {
            failures.retain(|_, (start, _)| now < *start + FAILURE_WINDOW_SECS);
        }
        for key in [
            (org.to_owned(), None),
            (org.to_owned(), Some(username.to_owned())),
        ] {
            // A flood of made-up orgs and usernames within one window must
            // not grow the map without bound: past the cap only the names
            // already counted are counted further.
            if failures.len() >= MAX_FAILURE_ENTRIES && !failures.contains_key(&key) {
                continue;
            }
            let entry = failures.entry(key).or_insert((now, 0));
            if now >= entry.0 + FAILURE_WINDOW_SECS {
                *entry = (now, 0);
            }
            entry.1 = entry.1.saturating_add(1);
        }
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, Failures> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    fn record(value: &str, org_id: &str, user: &str, generation: u64) -> SessionRecord {
        SessionRecord {
            digest: SessionDigest::of(value.as_bytes()),
            org: org(org_id),
            username: user.into(),
            generation,
            created_at: Timestamp::from_secs(100),
            login_timestamp_ms: 100_000,
        }
    }

    #[test]
    fn session_values_are_256_random_bits_in_hex() {
        let a = new_session_value();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_session_value());
    }

    #[test]
    fn sessions_die_by_org_by_user_and_by_generation() {
        let s = Sessions::default();
        let far = Timestamp::from_secs(1000);
        s.insert(record("a", "acme", "ann", 1), far);
        s.insert(record("b", "acme", "bob", 2), far);
        s.insert(record("c", "globex", "ann", 1), far);
        s.remove_stale(&org("acme"), 2);
        assert!(s.get(&SessionDigest::of(b"a")).is_none());
        assert!(s.get(&SessionDigest::of(b"b")).is_some());
        s.remove_user(&org("acme"), "bob");
        assert!(s.get(&SessionDigest::of(b"b")).is_none());
        assert!(s.get(&SessionDigest::of(b"c")).is_some());
        s.remove_org(&org("globex"));
        assert!(s.is_empty());
    }

    #[test]
    fn a_login_is_reserved_once_until_it_leaves_the_window() {
        let s = Sessions::default();
        let now = Timestamp::from_secs(100);
        let until = Timestamp::from_secs(400);
        assert!(s.reserve_login(&org("acme"), 5, "ann", now, until));
        assert!(!s.reserve_login(&org("acme"), 5, "ann", now, until));
        assert!(s.reserve_login(&org("acme"), 5, "bob", now, until));
        s.release_login(&org("acme"), 5, "ann");
        assert!(s.reserve_login(&org("acme"), 5, "ann", now, until));
        assert!(s.reserve_login(&org("acme"), 5, "ann", Timestamp::from_secs(401), until));
    }

    #[test]
    fn five_failures_lock_a_username_and_thirty_lock_the_org_until_the_window_ends() {
        let s = Sessions::default();
        let t = Timestamp::from_secs(1_000);
        for _ in 0..USER_FAILURES {
            assert_eq!(s.locked_out("acme", "ann", t), None);
            s.failed("acme", "ann", t);
        }
        assert_eq!(s.locked_out("acme", "ann", t), Some(60));
        assert_eq!(s.locked_out("acme", "bob", t), None);
        for i in 0..(ORG_FAILURES - USER_FAILURES) {
            s.failed("acme", &format!("u{i}"), t);
        }
        assert_eq!(
            s.locked_out("acme", "bob", Timestamp::from_secs(1_010)),
            Some(50)
        );
        assert_eq!(s.locked_out("globex", "bob", t), None);
        assert_eq!(
            s.locked_out("acme", "ann", Timestamp::from_secs(1_060)),
            None
        );
    }
}
