//! The [`Backend`] several keygate nodes share: one Redis server.
//!
//! # Data model
//!
//! Every key starts with `kg:{<name>}:`, the cluster's name in a hash tag,
//! so a Redis Cluster keeps all of them in one slot and every script below
//! runs on one server:
//!
//! * `orgs`: a hash, org id -> the [`OrgRecord`] as JSON (with its version);
//! * `tokens`: a hash, token name -> the [`TokenRecord`] as JSON (a digest,
//!   never a token);
//! * `audit:<org>`: a stream per org, one entry per [`AuditEvent`] (field
//!   `event`, JSON), and `audited`, the set of orgs that have one;
//! * `seq`: the feed's counter, and `feed`: a stream with one entry per
//!   commit (`seq`, `kind`, `payload`), trimmed to about
//!   [`FEED_MAXLEN`] entries;
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
//! (or starts) renews but serves again only once it has applied every commit
//! made meanwhile (its applied seq reaches the counter the renewal returned).
//! A process paused past its deadline (a stopped VM, `SIGSTOP`) refuses from
//! its first request after it wakes: the gate compares the monotonic clock
//! with the deadline on every request ([`Lease::serving`]), before any timer
//! of the node has run.

mod feed;
mod renew;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;
use redis::{Client, RedisError, Script};

use super::backend::{
    AuditEvent, Backend, BackendError, BoxFuture, Change, Commit, Dump, Loading, OrgBatches,
    OrgRecord, Restored, Seq, Snapshot, Subscription, FEED_CAPACITY,
};
use super::Lease;
use crate::org::OrgId;
use crate::token::TokenRecord;

/// How to reach the cluster's Redis and who this node is.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The Redis server, as a `redis://` (or `rediss://`) URL; its password
    /// is never shown in an error.
    pub redis_url: String,
    /// The cluster's name: every key starts with `kg:{<name>}:`, so several
    /// clusters can share one Redis.
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

/// How long [`RedisBackend::connect`] tries to reach Redis in all.
const CONNECT_BUDGET: Duration = Duration::from_secs(25);

/// How many times `connect` tries, and the pause before the second try,
/// doubled for each one after.
const CONNECT_ATTEMPTS: u32 = 5;
const CONNECT_PAUSE: Duration = Duration::from_millis(250);

/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long one command may take: a commit waits for Redis's fsync.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many records one `HSCAN` or `XRANGE` reads.
const BATCH: usize = 1000;

/// How long [`Backend::confirm`] waits beyond a lease for the nodes still
/// behind: a lease renewed just before the wait began still runs.
const CONFIRM_SLACK: Duration = Duration::from_secs(5);

/// How often [`Backend::confirm`] asks which nodes are still behind.
const CONFIRM_POLL: Duration = Duration::from_millis(2);

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
    base: Instant,
    /// Woken when the reader first reads after (re)connecting, so the node
    /// renews at once rather than a period later.
    reader_ready: tokio::sync::Notify,
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
    seq: String,
    feed: String,
    audited: String,
    nodes: String,
    /// What precedes an org id in its audit stream's key.
    audit_prefix: String,
    /// What precedes a node's name in its lease's key.
    lease_prefix: String,
}

impl Keys {
    fn new(name: &str) -> Keys {
        let prefix = format!("kg:{{{name}}}:");
        let key = |k: &str| format!("{prefix}{k}");
        Keys {
            orgs: key("orgs"),
            tokens: key("tokens"),
            seq: key("seq"),
            feed: key("feed"),
            audited: key("audited"),
            nodes: key("nodes"),
            audit_prefix: key("audit:"),
            lease_prefix: key("lease:"),
        }
    }

    fn audit(&self, org: &str) -> String {
        format!("{}{org}", self.audit_prefix)
    }
}

struct Scripts {
    commit: Script,
    restore: Script,
    renew: Script,
    confirm: Script,
    leave: Script,
    raise_seq: Script,
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

/// `url` without its password, for messages and logs.
fn without_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or("");
    let shown_user = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        // A lone userinfo is the password in Redis URLs (`redis://secret@host`)
        // when no user is given, so it is hidden too.
        "***".to_owned()
    };
    format!("{}{shown_user}{}", &url[..scheme_end + 3], &rest[at..])
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
            base: Instant::now(),
            reader_ready: tokio::sync::Notify::new(),
        };
        Ok(RedisBackend {
            shared: Arc::new(shared),
            start: Mutex::new(Some(start)),
            tasks: Mutex::new(Tasks::default()),
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

    /// Every org, read in batches.
    async fn read_orgs(&self) -> Result<Vec<OrgRecord>, BackendError> {
        let mut orgs = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.orgs, cursor).await?;
            for (id, json) in pairs {
                // HSCAN may return one field twice; the store refuses a
                // twice-loaded org as corrupt, so only the first counts.
                if seen.insert(id.clone()) {
                    orgs.push(parse_org(&id, &json)?);
                }
            }
            if next == 0 {
                return Ok(orgs);
            }
            cursor = next;
        }
    }

    /// Every token, read in batches.
    async fn read_tokens(&self) -> Result<Vec<TokenRecord>, BackendError> {
        let mut tokens = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.tokens, cursor).await?;
            for (name, json) in pairs {
                if seen.insert(name.clone()) {
                    tokens.push(parse_token(&name, &json)?);
                }
            }
            if next == 0 {
                return Ok(tokens);
            }
            cursor = next;
        }
    }

    async fn read_audit(&self, org: &str) -> Result<Vec<AuditEvent>, BackendError> {
        let key = self.shared.keys.audit(org);
        let mut conn = self.shared.conn.clone();
        let mut events = Vec::new();
        let mut from = "-".to_owned();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read audit", e))?;
            let n = page.ids.len();
            for entry in page.ids {
                let json = entry_field(&entry.map, "event").ok_or_else(|| {
                    BackendError::Corrupt(format!("audit entry {} of {org} has no event", entry.id))
                })?;
                events.push(serde_json::from_str(&json).map_err(|e| {
                    BackendError::Corrupt(format!("audit entry {} of {org}: {e}", entry.id))
                })?);
                from = format!("({}", entry.id);
            }
            if n < BATCH {
                return Ok(events);
            }
        }
    }

    /// Checks and applies `commits` in one script; the last one's seq.
    async fn commit_many(&self, commits: &[Commit]) -> Result<Seq, BackendError> {
        let keys = &self.shared.keys;
        let mut call = self.shared.scripts.commit.prepare_invoke();
        call.key(&keys.orgs)
            .key(&keys.tokens)
            .key(&keys.seq)
            .key(&keys.feed)
            .key(&keys.audited);
        for c in commits {
            call.key(keys.audit(c.event.org.as_str()));
        }
        call.arg(FEED_MAXLEN).arg(commits.len());
        for c in commits {
            let event = to_json(&c.event)?;
            match &c.change {
                Change::Org { record, expected } => {
                    call.arg("org")
                        .arg(record.id.as_str())
                        .arg(expected.map(|v| v.to_string()).unwrap_or_default())
                        .arg(to_json(record)?);
                }
                Change::PutToken(t) => {
                    call.arg("put").arg(&t.name).arg("").arg(to_json(t)?);
                }
                Change::DeleteToken(name) => {
                    call.arg("del").arg(name).arg("").arg("");
                }
            }
            call.arg(c.event.org.as_str()).arg(event);
        }
        let mut conn = self.shared.conn.clone();
        let (outcome, n): (String, u64) = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("commit", e))?;
        match outcome.as_str() {
            "ok" => Ok(n),
            "conflict" => {
                let failed = usize::try_from(n)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| commits.get(i));
                Err(match failed {
                    Some(c) => c.change.refused(),
                    None => BackendError::Corrupt(format!("the commit script refused commit {n}")),
                })
            }
            other => Err(BackendError::Corrupt(format!(
                "the commit script answered {other:?}"
            ))),
        }
    }

    async fn restore_dump(&self, dump: Dump) -> Result<Restored, BackendError> {
        let keys = &self.shared.keys;
        let mut call = self.shared.scripts.restore.prepare_invoke();
        call.key(&keys.orgs)
            .key(&keys.tokens)
            .key(&keys.seq)
            .key(&keys.feed)
            .key(&keys.audited);
        // One KEYS entry per org with events, numbered from 1.
        let mut streams: std::collections::HashMap<&str, usize> = Default::default();
        for e in &dump.audit {
            let next = streams.len() + 1;
            let k = *streams.entry(e.org.as_str()).or_insert(next);
            if k == next {
                call.key(keys.audit(e.org.as_str()));
            }
        }
        call.arg(FEED_MAXLEN)
            .arg(&keys.audit_prefix)
            .arg(dump.orgs.len())
            .arg(dump.tokens.len())
            .arg(dump.audit.len());
        for o in &dump.orgs {
            call.arg(o.id.as_str()).arg(to_json(o)?);
        }
        for t in &dump.tokens {
            call.arg(&t.name).arg(to_json(t)?);
        }
        for e in &dump.audit {
            call.arg(streams[e.org.as_str()])
                .arg(e.org.as_str())
                .arg(to_json(e)?);
        }
        let mut conn = self.shared.conn.clone();
        let answer: Vec<redis::Value> = call
            .invoke_async(&mut conn)
            .await
            .map_err(|e| unavailable("restore", e))?;
        let answer: Vec<String> = answer
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|e| BackendError::Corrupt(format!("the restore script answered: {e}")))?;
        let count = |i: usize| {
            answer
                .get(i)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match answer.first().map(String::as_str) {
            Some("done") => Ok(Restored::Done),
            Some("not_empty") => Ok(Restored::NotEmpty {
                orgs: count(1),
                tokens: count(2),
                audit_events: count(3),
            }),
            other => Err(BackendError::Corrupt(format!(
                "the restore script answered {other:?}"
            ))),
        }
    }

    async fn read_dump(&self) -> Result<Dump, BackendError> {
        let orgs = self.read_orgs().await?;
        let tokens = self.read_tokens().await?;
        let mut conn = self.shared.conn.clone();
        let mut audited: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.shared.keys.audited)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("read audit", e))?;
        audited.sort();
        let mut audit = Vec::new();
        for org in audited {
            audit.extend(self.read_audit(&org).await?);
        }
        Ok(Dump {
            orgs,
            tokens,
            audit,
        })
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        let tasks = std::mem::take(&mut *self.tasks());
        let started = tasks.renewer.is_some();
        for task in [tasks.reader, tasks.renewer].into_iter().flatten() {
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

/// Connects, trying [`CONNECT_ATTEMPTS`] times with a growing pause.
async fn connect_retrying(client: &Client) -> Result<ConnectionManager, RedisError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    let mut pause = CONNECT_PAUSE;
    let mut attempt = 1;
    loop {
        let tried = async {
            let mut conn = client
                .get_connection_manager_with_config(config.clone())
                .await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok(conn)
        };
        match tried.await {
            Ok(conn) => return Ok(conn),
            Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, "cannot reach Redis yet; trying again");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
        }
    }
}

/// Refuses a Redis that may lose an acknowledged write, unless told not to.
async fn check_durability(
    conn: &mut ConnectionManager,
    url: &str,
    allow_unsafe: bool,
) -> Result<(), BackendError> {
    let needs =
        "keygate needs appendonly yes and appendfsync always (or allow_unsafe_durability = true)";
    let setting = |name: &'static str| {
        let mut conn = conn.clone();
        async move {
            let pairs: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await?;
            Ok::<_, RedisError>(pairs.get(1).cloned().unwrap_or_default())
        }
    };
    let read = async {
        Ok::<_, RedisError>((setting("appendonly").await?, setting("appendfsync").await?))
    };
    let problem = match read.await {
        Ok((appendonly, _)) if appendonly != "yes" => {
            format!("Redis at {url} has appendonly {appendonly}; {needs}")
        }
        Ok((_, appendfsync)) if appendfsync != "always" => {
            format!("Redis at {url} has appendfsync {appendfsync}; {needs}")
        }
        Ok(_) => return Ok(()),
        Err(e) => format!("could not verify that Redis at {url} fsyncs every write (CONFIG GET failed: {e}); {needs}"),
    };
    if allow_unsafe {
        tracing::warn!(
            "{problem}; starting anyway: an acknowledged change may be lost if Redis crashes"
        );
        Ok(())
    } else {
        Err(BackendError::Unavailable(problem))
    }
}

/// Where the feed stands now: its last entry and the counter, read in one
/// step.
async fn position(conn: &mut ConnectionManager, keys: &Keys) -> Result<Position, BackendError> {
    let (seq, last): (Option<u64>, StreamRangeReply) = redis::pipe()
        .atomic()
        .cmd("GET")
        .arg(&keys.seq)
        .cmd("XREVRANGE")
        .arg(&keys.feed)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read the feed's position", e))?;
    Ok(Position {
        id: last
            .ids
            .into_iter()
            .next()
            .map(|e| e.id)
            .unwrap_or_else(|| "0-0".to_owned()),
        seq: seq.unwrap_or(0),
    })
}

/// One `HSCAN` page of the hash `key`: the next cursor (0 when done) and
/// (field, value) pairs.
async fn hscan_page(
    conn: &mut ConnectionManager,
    key: &str,
    cursor: u64,
) -> Result<(u64, Vec<(String, String)>), BackendError> {
    let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
        .arg(key)
        .arg(cursor)
        .arg("COUNT")
        .arg(BATCH)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read", e))?;
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        pairs.push((k, v));
    }
    Ok((next, pairs))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, BackendError> {
    // keygate's records are plain data with string keys: serializing cannot fail.
    serde_json::to_string(value)
        .map_err(|e| BackendError::Corrupt(format!("cannot encode a record: {e}")))
}

fn parse_org(id: &str, json: &str) -> Result<OrgRecord, BackendError> {
    let record: OrgRecord = serde_json::from_str(json)
        .map_err(|e| BackendError::Corrupt(format!("org {id} in Redis: {e}")))?;
    if record.id.as_str() != id {
        return Err(BackendError::Corrupt(format!(
            "org {id} in Redis holds the record of {}",
            record.id
        )));
    }
    Ok(record)
}

fn parse_token(name: &str, json: &str) -> Result<TokenRecord, BackendError> {
    let record: TokenRecord = serde_json::from_str(json)
        .map_err(|e| BackendError::Corrupt(format!("token {name} in Redis: {e}")))?;
    if record.name != name {
        return Err(BackendError::Corrupt(format!(
            "token {name} in Redis holds the record of {}",
            record.name
        )));
    }
    Ok(record)
}

/// A stream entry's field as a string.
fn entry_field(
    map: &std::collections::HashMap<String, redis::Value>,
    name: &str,
) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
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

fn nanos_of(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backend for RedisBackend {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        Box::pin(async move {
            let orgs = self.read_orgs().await?;
            let tokens = self.read_tokens().await?;
            Ok(Snapshot { orgs, tokens })
        })
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

    fn lease(&self) -> Option<Arc<Lease>> {
        Some(Arc::clone(&self.shared.lease))
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
