//! The [`Backend`] several keygate nodes share: one Redis server.
//!
//! # Data model
//!
//! Every key starts with `kg:{<name>}:`, the cluster's name in a hash tag,
//! which would keep all of them in one slot of a Redis Cluster, so every
//! script below could run on one server there too (the backend talks to one
//! Redis server: it has no Redis Cluster client yet):
//!
//! * `orgs`: a hash, org id -> the [`OrgRecord`] as JSON (with its version);
//! * `tokens`: a hash, token name -> the [`TokenRecord`] as JSON (a digest,
//!   never a token);
//! * `audit:<org>`: a stream per org, one entry per [`AuditEvent`] (field
//!   `event`, JSON), and `audited`, the set of orgs that have one;
//! * `seq`: the feed's counter, and `feed`: a stream with one entry per
//!   commit (`seq`, `kind`, `payload`), trimmed to about
//!   [`FEED_MAXLEN`] entries;
//! * `login_failures:<org>` and `login_failures:<org>:<sha256 of username>`:
//!   failed session logins, counters that expire a window after their first
//!   failure (`login_failures.lua`);
//! * `nodes`: a hash, node -> the last seq it applied, and `lease:<node>`,
//!   a key that expires when the node's lease does.
//!
//! Every mutation is one Lua script (`commit.lua`, `restore.lua`), so it is
//! checked and applied atomically: a commit checks what its [`Change`]
//! expects (the org's stored version; a token name free or taken), writes
//! the record, appends the audit event, increments `seq` and appends the
//! feed entry, or writes nothing.
//!
//! # Durability
//!
//! [`RedisBackend::connect`] refuses a server that does not run with
//! `appendonly yes` and `appendfsync always` (unless told
//! `allow_unsafe_durability`). With `appendfsync always`, Redis writes a
//! script's effects to its append-only file and fsyncs it before it replies,
//! so a commit that returned `Ok` survives a crash of Redis and of its
//! machine.
//!
//! # The feed
//!
//! [`Backend::subscribe`] starts a reader task on a connection of its own
//! (`XREAD BLOCK` holds the connection), which follows `feed` from where it
//! stood when the backend connected, so the store's load that follows
//! misses nothing. An entry whose seq does not follow the last one means
//! entries were lost (the stream was trimmed past a lagging reader): the
//! reader sends [`Feed::Resync`] first. A `seq` counter found lower than
//! the reader last saw means Redis lost data (a failover to a replica that
//! lacked the last writes): the reader sends `Resync` too, and raises the
//! counter back, so later commits do not reuse seqs this node already
//! reported applied (a commit made before the raise may).
//!
//! # Leases: the timing argument
//!
//! Let L be the lease. A renewer task renews this node's lease every L/4
//! (and at once whenever the store applied more of the feed, so another
//! node's confirm sees the progress within a round trip), but only while the
//! feed reader is healthy (its last `XREAD` returned within L/2). It notes
//! its monotonic clock's `t0` just before sending the renewal, a script that
//! sets `lease:<node>` to expire after L and records the seq the node has
//! applied. On the reply, the node may serve until `t0 + 0.9 L` by its own
//! monotonic clock ([`Lease::extend`]). Redis received the renewal after
//! `t0`, so it expires the key no earlier than `t0 + L` by its own clock.
//! With the two clocks' rates within 10% of each other, the node has
//! stopped serving before Redis forgets its lease, and so before any other
//! node stops waiting for it in [`Backend::confirm`], which waits for every
//! node that holds a lease to have applied the change. A node that lapsed
//! (or starts) takes a lease and serves again only once it has applied every
//! commit made meanwhile: its renewal takes the lease only when the seq it
//! applied has reached the counter, read in the same script, so every commit
//! after that waits for it and every commit before it is one it applied;
//! until then, no one waits for a node that serves nothing (a node starting
//! with a large store does not hold the others' changes back while it loads).
//! A process paused past its deadline (a stopped VM, `SIGSTOP`) refuses from
//! its first request after it wakes: the gate compares the monotonic clock
//! with the deadline on every request ([`Lease::serving`]), before any timer
//! of the node has run.

mod acks;
mod connect;
mod feed;
mod read;
mod renew;
mod write;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::{Client, Script};

use self::connect::{
    check_durability, connect_retrying, position, without_password, CONNECT_BUDGET,
};
use self::read::{hscan_page, parse_org, parse_token};
use super::backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Commit, Dump, Loading, OrgBatches, OrgRecord,
    Restored, Seq, Snapshot, Subscription, FEED_CAPACITY,
};
use super::backend::{Grant, Take};
use super::Lease;
use crate::limit::Window;
use crate::org::OrgId;
use crate::token::TokenRecord;

/// How to reach the cluster's Redis and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The Redis server, as a `redis://[user:password@]host:port[/db]` URL
    /// (TLS, `rediss://`, is not built in); its password is never shown in
    /// an error.
    pub redis_url: String,
    /// The cluster's name: every key starts with `kg:{<name>}:`, so several
    /// clusters can share one Redis. Non-empty, without braces.
    pub name: String,
    /// How long a node may serve after its last renewal (see the module's
    /// timing argument); at least [`MIN_LEASE`].
    pub lease: Duration,
    /// Starts even when Redis does not fsync every write
    /// (`appendonly yes`, `appendfsync always`): an acknowledged change may
    /// then be lost in a crash.
    pub allow_unsafe_durability: bool,
    /// This node's name, unique per process (e.g. hostname, pid and a random
    /// part): its lease and its applied seq are kept under it.
    pub node: String,
}

/// Roughly how many entries the feed stream keeps (`XADD MAXLEN ~`): a
/// reader that falls further behind resyncs.
pub const FEED_MAXLEN: u64 = 100_000;

/// The shortest lease [`RedisBackend::connect`] takes: renewals run every
/// quarter lease, and each is a durable write.
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one command may take: a commit waits for Redis's fsync.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many records one `HSCAN` or `XRANGE` reads.
const BATCH: usize = 1000;

/// How long [`Backend::confirm`] waits beyond a lease for the nodes still
/// behind: a lease renewed just before the wait began still runs.
const CONFIRM_SLACK: Duration = Duration::from_secs(5);

/// The [`Backend`] several keygate nodes share: one Redis server. See the
/// module docs for the data model, the durability rule and the leases.
pub struct RedisBackend {
    shared: Arc<Shared>,
    /// Where the feed stood when the backend connected, taken by the first
    /// [`subscribe`](Backend::subscribe).
    start: Mutex<Option<Position>>,
    /// The reader and the renewer, stopped with the backend.
    tasks: Mutex<Tasks>,
}

#[derive(Default)]
struct Tasks {
    reader: Option<tokio::task::AbortHandle>,
    renewer: Option<tokio::task::AbortHandle>,
    acks: Option<tokio::task::AbortHandle>,
}

/// What the backend's tasks share with it.
struct Shared {
    client: Client,
    conn: ConnectionManager,
    keys: Keys,
    scripts: Scripts,
    lease: Arc<Lease>,
    lease_len: Duration,
    node: String,
    /// The URL as shown in messages: without a password.
    shown_url: String,
    /// When the feed reader's last `XREAD` returned, in nanoseconds after
    /// `base`; 0: not since it (re)connected.
    reader_ok: AtomicU64,
    /// The last seq the feed reader read from Redis, for the feed lag.
    feed_seen: AtomicU64,
    base: Instant,
    /// Woken when the reader first reads after (re)connecting, so the node
    /// renews at once rather than a period later.
    reader_ready: tokio::sync::Notify,
    /// Every node's acknowledged seq, as heard on the channel.
    acks: acks::Acks,
    /// Renewals Redis answered, for tests to see that one happened.
    #[cfg(test)]
    renewals: AtomicU64,
}

/// A place on the feed stream.
#[derive(Debug, Clone)]
struct Position {
    /// The stream id of the last entry read ("0-0": before the first).
    id: String,
    /// The seq of the last entry read.
    seq: Seq,
}

/// The cluster's key names.
struct Keys {
    orgs: String,
    tokens: String,
    /// API users: `org/username` -> JSON.
    users: String,
    /// Live sessions: digest (hex) -> JSON.
    sessions: String,
    /// Sessions by creation (a sorted set), to drop the oldest.
    sessions_by_time: String,
    /// When each session was last used: digest (hex) -> nanoseconds.
    session_uses: String,
    seq: String,
    feed: String,
    audited: String,
    nodes: String,
    /// What precedes an org id in its audit stream's key.
    audit_prefix: String,
    /// What precedes a node's name in its lease's key.
    lease_prefix: String,
    /// What precedes an org id in its threshold window's key.
    calls_prefix: String,
    /// What precedes an org id in its failed-login counters' keys.
    login_failures_prefix: String,
    /// The channel nodes acknowledge applied seqs on.
    acks: String,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let prefix = format!("kg:{{{name}}}:");
        let key = |k: &str| format!("{prefix}{k}");
        Keys {
            orgs: key("orgs"),
            tokens: key("tokens"),
            users: key("users"),
            sessions: key("sessions"),
            sessions_by_time: key("sessions_by_time"),
            session_uses: key("session_uses"),
            seq: key("seq"),
            feed: key("feed"),
            audited: key("audited"),
            nodes: key("nodes"),
            audit_prefix: key("audit:"),
            lease_prefix: key("lease:"),
            calls_prefix: key("calls:"),
            login_failures_prefix: key("login_failures:"),
            acks: key("acks"),
        }
    }

    fn audit(&self, org: &str) -> String {
        format!("{}{org}", self.audit_prefix)
    }

    /// The org's threshold window: a hash of `start` (by Redis's clock) and
    /// `granted` (the calls granted to nodes in it).
    fn calls(&self, org: &str) -> String {
        format!("{}{org}", self.calls_prefix)
    }

    /// The failed-login counters of `org` and of `username` of it: the
    /// username by its SHA-256, so that a key's length and bytes do not
    /// depend on what a client typed.
    fn login_failures(&self, org: &str, username: &str) -> (String, String) {
        use sha2::Digest as _;
        let user = hex::encode(sha2::Sha256::digest(username.as_bytes()));
        (
            format!("{}{org}", self.login_failures_prefix),
            format!("{}{org}:{user}", self.login_failures_prefix),
        )
    }
}

struct Scripts {
    /// Puts or ends a session, with its feed entry.
    session: Script,
    /// Counts failed logins and answers a lockout.
    login_failures: Script,
    commit: Script,
    restore: Script,
    renew: Script,
    confirm: Script,
    leave: Script,
    raise_seq: Script,
    take_calls: Script,
    reclaim: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            commit: Script::new(include_str!("commit.lua")),
            restore: Script::new(include_str!("restore.lua")),
            renew: Script::new(include_str!("renew.lua")),
            confirm: Script::new(include_str!("confirm.lua")),
            leave: Script::new(include_str!("leave.lua")),
            raise_seq: Script::new(include_str!("raise_seq.lua")),
            take_calls: Script::new(include_str!("take_calls.lua")),
            reclaim: Script::new(include_str!("reclaim.lua")),
            session: Script::new(include_str!("session.lua")),
            login_failures: Script::new(include_str!("login_failures.lua")),
        }
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("redis", &self.shared.shown_url)
            .field("node", &self.shared.node)
            .field("lease", &self.shared.lease_len)
            .finish_non_exhaustive()
    }
}

/// A Redis failure as the store reports it.
fn unavailable(what: &str, e: impl fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("Redis {what}: {e}"))
}

impl RedisBackend {
    /// Connects to the cluster's Redis, checks that it makes every write
    /// durable before replying, and notes where the feed stands (what a
    /// store opened over this backend follows from).
    ///
    /// Fails with [`BackendError::Unavailable`] when Redis cannot be reached
    /// within about 25 seconds, or when its persistence is not
    /// `appendonly yes` with `appendfsync always` and
    /// `allow_unsafe_durability` is not set (the message names the setting),
    /// or when the lease is shorter than [`MIN_LEASE`].
    pub async fn connect(opts: ClusterOptions) -> Result<RedisBackend, BackendError> {
        if opts.name.is_empty() || opts.name.contains(['{', '}']) {
            return Err(BackendError::Unavailable(format!(
                "the cluster name {:?} cannot name Redis keys: it must be non-empty, without braces",
                opts.name
            )));
        }
        if opts.lease < MIN_LEASE {
            return Err(BackendError::Unavailable(format!(
                "a lease of {:?} is too short; the cluster needs at least {MIN_LEASE:?}",
                opts.lease
            )));
        }
        let shown_url = without_password(&opts.redis_url);
        let unreachable = |why: &dyn fmt::Display| {
            BackendError::Unavailable(format!("cannot reach Redis at {shown_url}: {why}"))
        };
        let client = Client::open(opts.redis_url.as_str()).map_err(|e| unreachable(&e))?;
        let mut conn = match tokio::time::timeout(CONNECT_BUDGET, connect_retrying(&client)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => {
                return Err(unreachable(&format_args!(
                    "no answer within {CONNECT_BUDGET:?}"
                )))
            }
        };
        check_durability(&mut conn, &shown_url, opts.allow_unsafe_durability).await?;
        let keys = Keys::new(&opts.name);
        let start = position(&mut conn, &keys).await?;
        tracing::info!(redis = %shown_url, node = %opts.node, seq = start.seq, "connected to the cluster's Redis");
        let shared = Shared {
            client,
            conn,
            keys,
            scripts: Scripts::new(),
            lease: Arc::new(Lease::new()),
            lease_len: opts.lease,
            node: opts.node,
            shown_url,
            reader_ok: AtomicU64::new(0),
            feed_seen: AtomicU64::new(0),
            base: Instant::now(),
            reader_ready: tokio::sync::Notify::new(),
            acks: acks::Acks::default(),
            #[cfg(test)]
            renewals: AtomicU64::new(0),
        };
        let shared = Arc::new(shared);
        let listener = tokio::spawn(acks::listen(Arc::downgrade(&shared)));
        Ok(RedisBackend {
            shared,
            start: Mutex::new(Some(start)),
            tasks: Mutex::new(Tasks {
                acks: Some(listener.abort_handle()),
                ..Tasks::default()
            }),
        })
    }

    /// The Redis server, as shown in messages (without a password).
    pub fn redis_url(&self) -> &str {
        &self.shared.shown_url
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.shared.node
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks> {
        // Nothing panics while holding the lock, so a poisoned one is whole.
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops renewing this node's lease without leaving, as a node that
    /// froze: the lease then runs out in Redis by itself.
    #[cfg(test)]
    fn stop_renewing(&self) {
        if let Some(task) = self.tasks().renewer.take() {
            task.abort();
        }
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *self.tasks());
        let started = tasks.renewer.is_some();
        for task in [tasks.reader, tasks.renewer, tasks.acks]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
        // A node that stops leaves at once, so no one waits for its lease to
        // run out; best effort, and only where a runtime still runs.
        if started {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let shared = Arc::clone(&self.shared);
                rt.spawn(async move { shared.leave().await });
            }
        }
    }
}

impl Shared {
    /// Whether the feed reader read within half a lease.
    fn reader_healthy(&self, now: Instant) -> bool {
        let ok = self.reader_ok.load(Ordering::Acquire);
        ok != 0 && self.nanos(now).saturating_sub(ok) < nanos_of(self.lease_len / 2)
    }

    fn reader_read(&self) {
        self.reader_ok
            .store(self.nanos(Instant::now()).max(1), Ordering::Release);
    }

    fn reader_lost(&self) {
        self.reader_ok.store(0, Ordering::Release);
    }

    fn nanos(&self, t: Instant) -> u64 {
        nanos_of(t.saturating_duration_since(self.base))
    }

    /// Drops this node's lease and entry in Redis: it serves nothing more.
    async fn leave(&self) {
        self.lease.revoke();
        let mut conn = self.conn.clone();
        let left = self
            .scripts
            .leave
            .key(&self.keys.nodes)
            .arg(&self.keys.lease_prefix)
            .arg(&self.node)
            .invoke_async::<()>(&mut conn)
            .await;
        if let Err(e) = left {
            tracing::warn!(error = %e, "could not leave the cluster; its lease runs out by itself");
        }
    }
}

impl RedisBackend {
    async fn session_script(
        &self,
        kind: &str,
        digest: &crate::session::SessionDigest,
        json: &str,
        created: u64,
        oldest: u64,
    ) -> Result<Seq, BackendError> {
        let keys = &self.shared.keys;
        self.shared
            .scripts
            .session
            .key(&keys.sessions)
            .key(&keys.sessions_by_time)
            .key(&keys.seq)
            .key(&keys.feed)
            .key(&keys.session_uses)
            .arg(FEED_MAXLEN)
            .arg(kind)
            .arg(hex::encode(digest.0))
            .arg(json)
            .arg(created)
            .arg(oldest)
            .invoke_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| unavailable("session", e))
    }
}

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backend for RedisBackend {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        Box::pin(async move {
            let orgs = self.read_orgs().await?;
            let tokens = self.read_tokens().await?;
            let users = self.read_users().await?;
            Ok(Snapshot {
                orgs,
                tokens,
                users,
            })
        })
    }

    fn users(&self) -> BoxFuture<'_, Result<Vec<crate::session::ApiUser>, BackendError>> {
        Box::pin(self.read_users())
    }

    fn load_into(&self, orgs: OrgBatches) -> BoxFuture<'_, Result<Vec<TokenRecord>, BackendError>> {
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let n: usize = redis::cmd("HLEN")
                .arg(&self.shared.keys.orgs)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read", e))?;
            // Closed: the store stopped reading and reports why itself.
            if orgs.send(Loading::Expect(n)).await.is_err() {
                return Ok(Vec::new());
            }
            let mut open = true;
            let mut seen = HashSet::new();
            let mut cursor = 0;
            while open {
                let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.orgs, cursor).await?;
                let mut batch = Vec::with_capacity(pairs.len());
                for (id, json) in pairs {
                    // HSCAN may return one field twice; the first counts.
                    if seen.insert(id.clone()) {
                        batch.push(parse_org(&id, &json)?);
                    }
                }
                if !batch.is_empty() {
                    open = orgs.send(Loading::Orgs(batch)).await.is_ok();
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            if !open {
                return Ok(Vec::new());
            }
            self.read_tokens().await
        })
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(async move { self.commit_many(std::slice::from_ref(&commit)).await })
    }

    fn commit_all(&self, commits: Vec<Commit>) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if commits.is_empty() {
                return Ok(());
            }
            self.commit_many(&commits).await.map(drop)
        })
    }

    fn confirm(&self, seq: Seq) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(renew::confirm(Arc::clone(&self.shared), seq))
    }

    fn feed_seen(&self) -> Option<Seq> {
        Some(
            self.shared
                .feed_seen
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn lease(&self) -> Option<Arc<Lease>> {
        Some(Arc::clone(&self.shared.lease))
    }

    fn shares_calls(&self) -> bool {
        true
    }

    fn take_calls(&self, take: Take) -> BoxFuture<'_, Result<Grant, BackendError>> {
        Box::pin(async move {
            let (start, unused) = take.returned.unwrap_or((0, 0));
            let (window_start, calls): (u32, u32) = self
                .shared
                .scripts
                .take_calls
                .key(self.shared.keys.calls(take.org.as_str()))
                .arg(take.threshold)
                .arg(take.window_secs)
                .arg(take.want)
                .arg(take.nodes)
                .arg(start)
                .arg(unused)
                .invoke_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("take calls", e))?;
            Ok(Grant {
                window_start,
                calls,
            })
        })
    }

    fn calls_window(&self, org: &OrgId) -> BoxFuture<'_, Result<Option<Window>, BackendError>> {
        let key = self.shared.keys.calls(org.as_str());
        Box::pin(async move {
            let (start, granted): (Option<u32>, Option<u32>) = redis::cmd("HMGET")
                .arg(key)
                .arg("start")
                .arg("granted")
                .query_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("read calls", e))?;
            Ok(start.map(|start| Window {
                start,
                calls: granted.unwrap_or(0),
            }))
        })
    }

    fn put_session(
        &self,
        record: crate::session::SessionRecord,
    ) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&record)
                .map_err(|e| BackendError::Corrupt(format!("session: {e}")))?;
            let created = record.created_at.as_secs();
            // No session lives longer than the longest maximum age accepted.
            let oldest = created.saturating_sub(crate::session::MAX_AGE_LIMIT_SECS);
            self.session_script("putsession", &record.digest, &json, created, oldest)
                .await
        })
    }

    fn end_session(
        &self,
        digest: crate::session::SessionDigest,
    ) -> BoxFuture<'_, Result<Seq, BackendError>> {
        Box::pin(async move { self.session_script("endsession", &digest, "", 0, 0).await })
    }

    fn touch_sessions(
        &self,
        uses: Vec<(crate::session::SessionDigest, crate::clock::Timestamp)>,
    ) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            if uses.is_empty() {
                return Ok(());
            }
            // Each node sends only uses of the last second or so: a newer
            // one overwritten by a slightly older one moves idleness by
            // about that second, never more.
            let mut cmd = redis::cmd("HSET");
            cmd.arg(&self.shared.keys.session_uses);
            for (digest, at) in uses {
                cmd.arg(hex::encode(digest.0)).arg(at.as_nanos());
            }
            cmd.query_async::<()>(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("session uses", e))
        })
    }

    fn session_used(
        &self,
        digest: crate::session::SessionDigest,
    ) -> BoxFuture<'_, Result<Option<crate::clock::Timestamp>, BackendError>> {
        Box::pin(async move {
            let at: Option<u64> = redis::cmd("HGET")
                .arg(&self.shared.keys.session_uses)
                .arg(hex::encode(digest.0))
                .query_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("session uses", e))?;
            Ok(at.map(crate::clock::Timestamp::from_nanos))
        })
    }

    fn sessions(&self) -> BoxFuture<'_, Result<Vec<crate::session::SessionRecord>, BackendError>> {
        Box::pin(self.read_sessions())
    }

    fn login_lockout(
        &self,
        org: &OrgId,
        username: &str,
        failed: bool,
        now: crate::clock::Timestamp,
    ) -> BoxFuture<'_, Result<Option<u64>, BackendError>> {
        use crate::session::table::{FAILURE_WINDOW_SECS, ORG_FAILURES, USER_FAILURES};
        // Windows by Redis's clock, so every node's failures fall in one.
        let _ = now;
        let (org_key, user_key) = self.shared.keys.login_failures(org.as_str(), username);
        Box::pin(async move {
            let wait: u64 = self
                .shared
                .scripts
                .login_failures
                .key(org_key)
                .key(user_key)
                .arg(if failed { "1" } else { "0" })
                .arg(FAILURE_WINDOW_SECS)
                .arg(USER_FAILURES)
                .arg(ORG_FAILURES)
                .invoke_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("login failures", e))?;
            Ok((wait > 0).then_some(wait))
        })
    }

    fn reclaim_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        let org = org.clone();
        Box::pin(async move {
            let _: Seq = self
                .shared
                .scripts
                .reclaim
                .key(&self.shared.keys.seq)
                .key(&self.shared.keys.feed)
                .arg(FEED_MAXLEN)
                .arg(org.as_str())
                .invoke_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("reclaim calls", e))?;
            Ok(())
        })
    }

    fn reset_calls(&self, org: &OrgId) -> BoxFuture<'_, Result<(), BackendError>> {
        let key = self.shared.keys.calls(org.as_str());
        Box::pin(async move {
            let _: i64 = redis::cmd("DEL")
                .arg(key)
                .query_async(&mut self.shared.conn.clone())
                .await
                .map_err(|e| unavailable("reset calls", e))?;
            Ok(())
        })
    }

    fn org(&self, id: &OrgId) -> BoxFuture<'_, Result<Option<OrgRecord>, BackendError>> {
        let id = id.clone();
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let json: Option<String> = redis::cmd("HGET")
                .arg(&self.shared.keys.orgs)
                .arg(id.as_str())
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read", e))?;
            json.map(|j| parse_org(id.as_str(), &j)).transpose()
        })
    }

    fn token(&self, name: &str) -> BoxFuture<'_, Result<Option<TokenRecord>, BackendError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let mut conn = self.shared.conn.clone();
            let json: Option<String> = redis::cmd("HGET")
                .arg(&self.shared.keys.tokens)
                .arg(&name)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read", e))?;
            json.map(|j| parse_token(&name, &j)).transpose()
        })
    }

    fn subscribe(&self) -> Option<Subscription> {
        let start = self.start.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(start) = start else {
            // One store per backend: its lease is the one node's.
            tracing::error!("a second store subscribed to one RedisBackend; it gets no feed");
            return None;
        };
        let (events, received) = tokio::sync::mpsc::channel(FEED_CAPACITY);
        // A store that loads after this holds every commit up to here.
        let (applied, watched) = tokio::sync::watch::channel(start.seq);
        let reader = tokio::spawn(feed::read(Arc::clone(&self.shared), start, events));
        let renewer = tokio::spawn(renew::run(Arc::clone(&self.shared), watched));
        let mut tasks = self.tasks();
        tasks.reader = Some(reader.abort_handle());
        tasks.renewer = Some(renewer.abort_handle());
        Some(Subscription::channel(received, applied))
    }

    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        Box::pin(async move { self.read_audit(org.as_str()).await })
    }

    fn dump(&self) -> BoxFuture<'_, Result<Dump, BackendError>> {
        Box::pin(self.read_dump())
    }

    fn restore(&self, dump: Dump) -> BoxFuture<'_, Result<Restored, BackendError>> {
        Box::pin(self.restore_dump(dump))
    }
}
