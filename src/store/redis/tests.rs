//! The Redis backend against a real `redis-server` each test starts on
//! 127.0.0.1 (see [`RedisServer`]).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::connect::without_password;
use super::*;
use crate::clock::{ManualClock, Timestamp};
use crate::key::ApiKey;
use crate::org::{Action, Actor, LimitOverrides, Limits, OpError, OrgState};
use crate::store::{Change, Event, Feed, Store};
use crate::token::{Role, TokenDigest};

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

/// How long a test waits for something that normally takes milliseconds
/// before it fails. Not a timing assertion: it keeps a broken feed or lease
/// from hanging the suite.
const PATIENCE: Duration = Duration::from_secs(10);

/// The lease most tests run with.
const LEASE: Duration = Duration::from_secs(2);

/// A `redis-server` of the test's own: on 127.0.0.1, a free port, a
/// temporary folder, the append-only file fsynced on every write, no RDB
/// snapshots. Killed when dropped.
pub(crate) struct RedisServer {
    child: Child,
    port: u16,
    dir: TempDir,
    /// Arguments the test added, kept for a restart.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one, or `None` (after saying so) when `redis-server` is not
    /// installed and this is not CI; under CI (`CI` set) a missing
    /// `redis-server` fails the test.
    pub(crate) async fn start() -> Option<RedisServer> {
        RedisServer::start_with(&[]).await
    }

    /// Starts one as [`start`](RedisServer::start) does, with `extra`
    /// arguments for `redis-server`.
    pub(crate) async fn start_with(extra: &[&str]) -> Option<RedisServer> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            if std::env::var_os("CI").is_some() {
                panic!("redis-server is not installed; CI runs the Redis tests (scripts/test installs it)");
            }
            eprintln!("note: redis-server is not installed; skipping this Redis test");
            return None;
        }
        for _ in 0..5 {
            let dir = TempDir::new().expect("a temporary folder");
            let port = free_port();
            let extra: Vec<String> = extra.iter().map(|&a| a.to_owned()).collect();
            let child = spawn(port, &dir, &extra);
            let mut server = RedisServer {
                child,
                port,
                dir,
                extra,
            };
            if server.answers().await {
                return Some(server);
            }
            // Most likely another process took the port meanwhile; dropping
            // the server kills it.
        }
        panic!("redis-server did not start");
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the
    /// same port and folder: it loads its append-only file.
    pub(crate) async fn crash_and_restart(&mut self) {
        self.kill();
        self.restart().await;
    }

    /// Starts the server again after [`kill`](RedisServer::kill).
    pub(crate) async fn restart(&mut self) {
        self.child = spawn(self.port, &self.dir, &self.extra);
        assert!(self.answers().await, "redis-server did not restart");
    }

    /// Options for a node named `node` of cluster `test` on this server.
    fn options(&self, node: &str, lease: Duration) -> ClusterOptions {
        ClusterOptions {
            redis_url: self.url(),
            name: "test".into(),
            lease,
            allow_unsafe_durability: false,
            node: node.into(),
        }
    }

    /// A plain connection, for what the test does to Redis behind the
    /// backend's back.
    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Waits, bounded, until the server answers PING.
    async fn answers(&mut self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        let client = Client::open(self.url()).unwrap();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the server (SIGKILL).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &TempDir, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Starts a server or skips the test.
macro_rules! server {
    () => {
        match RedisServer::start().await {
            Some(server) => server,
            None => return,
        }
    };
}

async fn node(server: &RedisServer, name: &str) -> RedisBackend {
    RedisBackend::connect(server.options(name, LEASE))
        .await
        .expect("connects")
}

fn org(id: &str) -> OrgId {
    OrgId::parse(id).unwrap()
}

fn state() -> OrgState {
    OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next
}

fn event(org_id: &str, detail: &str) -> AuditEvent {
    AuditEvent {
        org: org(org_id),
        at: T0,
        actor: Actor::Provider,
        action: Action::Provision,
        detail: detail.to_owned(),
    }
}

fn provision(id: &str) -> Commit {
    Commit {
        change: Change::provision(org(id), state()),
        event: event(id, "provisioned"),
    }
}

fn update(id: &str, from: u64, detail: &str) -> Commit {
    Commit {
        change: Change::update(org(id), state(), from),
        event: event(id, detail),
    }
}

fn token(name: &str, org_id: &str) -> TokenRecord {
    TokenRecord {
        name: name.to_owned(),
        role: Role::Admin,
        org: org(org_id),
        digest: TokenDigest::of(name),
        created_at: T0,
    }
}

fn put_token(name: &str) -> Commit {
    Commit {
        change: Change::PutToken(token(name, "acme")),
        event: event("acme", "token created"),
    }
}

fn delete_token(name: &str) -> Commit {
    Commit {
        change: Change::DeleteToken(name.to_owned()),
        event: event("acme", "token deleted"),
    }
}

fn details(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.detail.as_str()).collect()
}

/// Waits, bounded by [`PATIENCE`], until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
}

/// The next event of `sub`, bounded by [`PATIENCE`].
async fn next(sub: &mut Subscription) -> Event {
    tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .expect("an event in time")
        .expect("the feed is open")
}

/// A subscribed node, serving.
async fn serving_node(
    server: &RedisServer,
    name: &str,
    lease: Duration,
) -> (RedisBackend, Subscription) {
    let backend = RedisBackend::connect(server.options(name, lease))
        .await
        .expect("connects");
    let sub = backend.subscribe().expect("a feed");
    let lease = backend.lease().expect("a lease");
    until("the node serves", || lease.serving()).await;
    (backend, sub)
}

#[test]
fn a_url_is_shown_without_its_password() {
    assert_eq!(
        without_password("redis://user:secret@host:6379/0"),
        "redis://user:***@host:6379/0"
    );
    assert_eq!(
        without_password("redis://secret@host:6379"),
        "redis://***@host:6379"
    );
    assert_eq!(without_password("redis://host:6379/"), "redis://host:6379/");
    assert_eq!(without_password("rediss://:p@ss@h/"), "rediss://:***@h/");
}

#[tokio::test]
async fn commits_come_back_on_load_with_their_audit_events() {
    let server = server!();
    let b = node(&server, "a").await;
    let s1 = b.commit(provision("acme")).await.unwrap();
    let s2 = b.commit(update("acme", 1, "regenerated")).await.unwrap();
    let s3 = b.commit(provision("globex")).await.unwrap();
    let s4 = b.commit(put_token("ops")).await.unwrap();
    assert_eq!((s1, s2, s3, s4), (1, 2, 3, 4));

    let loaded = b.load().await.unwrap();
    let mut versions: Vec<(String, u64)> = loaded
        .orgs
        .iter()
        .map(|r| (r.id.to_string(), r.version))
        .collect();
    versions.sort();
    assert_eq!(versions, [("acme".into(), 2), ("globex".into(), 1)]);
    assert_eq!(loaded.tokens, [token("ops", "acme")]);
    assert_eq!(b.org(&org("acme")).await.unwrap().unwrap().version, 2);
    assert_eq!(b.org(&org("nobody")).await.unwrap(), None);
    assert_eq!(b.token("ops").await.unwrap(), Some(token("ops", "acme")));
    assert_eq!(
        details(&b.audit(org("acme")).await.unwrap()),
        ["provisioned", "regenerated", "token created"]
    );
    assert_eq!(
        details(&b.audit(org("globex")).await.unwrap()),
        ["provisioned"]
    );
}

#[tokio::test]
async fn load_into_sends_the_count_first_and_every_org_once_in_batches() {
    let server = server!();
    let b = node(&server, "a").await;
    let commits: Vec<Commit> = (0..2500)
        .map(|i| provision(&format!("org-{i:04}")))
        .collect();
    b.commit_all(commits).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l);
        }
        got
    });
    let tokens = b.load_into(tx).await.unwrap();
    assert!(tokens.is_empty());
    let got = reading.await.unwrap();
    assert!(matches!(got.first(), Some(Loading::Expect(2500))));
    let mut ids: Vec<String> = got
        .iter()
        .flat_map(|l| match l {
            Loading::Orgs(batch) => batch.iter().map(|r| r.id.to_string()).collect(),
            Loading::Expect(_) => Vec::new(),
        })
        .collect();
    assert!(got.len() > 2, "the orgs came in one batch");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 2500);
}

#[tokio::test]
async fn a_large_batch_is_refused_whole_when_its_last_commit_fails() {
    let server = server!();
    let b = node(&server, "a").await;
    b.commit(provision("org-0149")).await.unwrap();
    // More than a command's worth: sent on a connection of its own.
    let batch: Vec<Commit> = (0..150)
        .map(|i| provision(&format!("org-{i:04}")))
        .collect();
    let refused = b.commit_all(batch.clone()).await.unwrap_err();
    assert_eq!(refused, batch[149].change.refused());
    assert_eq!(b.load().await.unwrap().orgs.len(), 1);
    b.commit_all(batch[..149].to_vec()).await.unwrap();
    assert_eq!(b.load().await.unwrap().orgs.len(), 150);
}

#[tokio::test]
async fn a_commit_from_a_stale_version_is_refused_and_changes_nothing() {
    let server = server!();
    let b = node(&server, "a").await;
    b.commit(provision("acme")).await.unwrap();
    b.commit(update("acme", 1, "first")).await.unwrap();

    let stale = update("acme", 1, "second");
    let refused = b.commit(stale.clone()).await.unwrap_err();
    assert_eq!(refused, stale.change.refused());
    let again = provision("acme");
    assert_eq!(
        b.commit(again.clone()).await.unwrap_err(),
        again.change.refused()
    );
    let missing = update("nobody", 0, "x");
    assert!(matches!(
        b.commit(missing).await,
        Err(BackendError::Conflict(_))
    ));

    assert_eq!(b.org(&org("acme")).await.unwrap().unwrap().version, 2);
    assert_eq!(
        details(&b.audit(org("acme")).await.unwrap()),
        ["provisioned", "first"]
    );
    // No seq was spent on a refusal.
    assert_eq!(b.commit(update("acme", 2, "third")).await.unwrap(), 3);
}

#[tokio::test]
async fn a_token_is_created_only_when_its_name_is_free_and_deleted_only_when_taken() {
    let server = server!();
    let b = node(&server, "a").await;
    b.commit(put_token("ops")).await.unwrap();
    let twice = put_token("ops");
    assert_eq!(
        b.commit(twice.clone()).await.unwrap_err(),
        twice.change.refused()
    );
    b.commit(delete_token("ops")).await.unwrap();
    assert_eq!(b.token("ops").await.unwrap(), None);
    let gone = delete_token("ops");
    assert_eq!(
        b.commit(gone.clone()).await.unwrap_err(),
        gone.change.refused()
    );
    b.commit(put_token("ops")).await.unwrap();
    assert_eq!(b.load().await.unwrap().tokens, [token("ops", "acme")]);
}

fn rotate_token(name: &str, from: &str, to: &str) -> Commit {
    let mut record = token(name, "acme");
    record.digest = TokenDigest::of(to);
    Commit {
        change: Change::RotateToken {
            record,
            expected: TokenDigest::of(from),
        },
        event: event("acme", "token rotated"),
    }
}

#[tokio::test]
async fn a_token_is_rotated_only_from_the_digest_it_still_has_and_the_feed_says_put() {
    let server = server!();
    let b = node(&server, "a").await;
    let mut feed = b.subscribe().unwrap();
    b.commit(put_token("ops")).await.unwrap();
    // `token("ops")` has the digest of "ops".
    let rotated = rotate_token("ops", "ops", "second");
    let seq = b.commit(rotated.clone()).await.unwrap();
    assert_eq!(
        b.token("ops").await.unwrap().map(|t| t.digest),
        Some(TokenDigest::of("second"))
    );
    // From the old digest again: refused, nothing written.
    let stale = rotate_token("ops", "ops", "third");
    assert_eq!(
        b.commit(stale.clone()).await.unwrap_err(),
        stale.change.refused()
    );
    assert_eq!(
        b.token("ops").await.unwrap().map(|t| t.digest),
        Some(TokenDigest::of("second"))
    );
    // A token that is not there cannot be rotated.
    let missing = rotate_token("nobody", "nobody", "x");
    assert_eq!(
        b.commit(missing.clone()).await.unwrap_err(),
        missing.change.refused()
    );
    // Within one batch, the second rotation sees the first's digest.
    b.commit_all(vec![
        rotate_token("ops", "second", "fourth"),
        rotate_token("ops", "fourth", "fifth"),
    ])
    .await
    .unwrap();
    assert_eq!(
        b.token("ops").await.unwrap().map(|t| t.digest),
        Some(TokenDigest::of("fifth"))
    );
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next(&mut feed).await);
    }
    assert_eq!(
        seen[1],
        Event {
            seq,
            feed: Feed::of(&rotated.change)
        }
    );
    assert!(matches!(&seen[1].feed, Feed::PutToken(t) if t.digest == TokenDigest::of("second")));
}

#[tokio::test]
async fn commit_all_checks_each_commit_against_the_ones_before_it_and_applies_all_or_none() {
    let server = server!();
    let b = node(&server, "a").await;
    b.commit_all(vec![
        provision("acme"),
        update("acme", 1, "then"),
        put_token("ops"),
    ])
    .await
    .unwrap();
    assert_eq!(b.org(&org("acme")).await.unwrap().unwrap().version, 2);

    // The last one fails (its name was taken by the first): none is applied.
    let batch = vec![provision("globex"), put_token("dev"), put_token("dev")];
    let refused = b.commit_all(batch.clone()).await.unwrap_err();
    assert_eq!(refused, batch[2].change.refused());
    assert_eq!(b.org(&org("globex")).await.unwrap(), None);
    assert_eq!(b.token("dev").await.unwrap(), None);
    assert_eq!(
        details(&b.audit(org("globex")).await.unwrap()),
        Vec::<&str>::new()
    );
}

#[tokio::test]
async fn restore_fills_an_empty_store_with_a_dump_and_refuses_a_store_that_holds_anything() {
    let server = server!();
    let source = RedisBackend::connect(ClusterOptions {
        name: "source".into(),
        ..server.options("a", LEASE)
    })
    .await
    .unwrap();
    source.commit(provision("acme")).await.unwrap();
    source
        .commit(update("acme", 1, "regenerated"))
        .await
        .unwrap();
    source.commit(provision("globex")).await.unwrap();
    source.commit(put_token("ops")).await.unwrap();
    source
        .commit(Commit {
            change: crate::store::Change::PutUser(crate::session::ApiUser {
                org: org("globex"),
                username: "ops@globex.example".into(),
                password_digest: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA".into(),
                created_at: T0,
            }),
            event: event("globex", "api user"),
        })
        .await
        .unwrap();
    let dump = source.dump().await.unwrap();
    assert_eq!(dump.orgs.len(), 2);
    assert_eq!(dump.users.len(), 1);
    assert_eq!(dump.audit.len(), 5);

    let target = node(&server, "b").await;
    let mut sub = target.subscribe().unwrap();
    assert_eq!(target.restore(dump.clone()).await.unwrap(), Restored::Done);
    assert_eq!(
        next(&mut sub).await,
        Event {
            seq: 1,
            feed: Feed::Resync
        }
    );
    let mut copied = target.dump().await.unwrap();
    let mut original = dump.clone();
    for d in [&mut copied, &mut original] {
        d.orgs.sort_by(|a, b| a.id.cmp(&b.id));
    }
    assert_eq!(copied, original);

    assert_eq!(
        target.restore(dump).await.unwrap(),
        Restored::NotEmpty {
            orgs: 2,
            tokens: 1,
            audit_events: 5
        }
    );
}

#[tokio::test]
async fn a_commit_on_one_node_arrives_on_the_others_feed_with_its_seq() {
    let server = server!();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let mut feed = b.subscribe().unwrap();
    let seq = a.commit(provision("acme")).await.unwrap();
    let got = next(&mut feed).await;
    assert_eq!(got.seq, seq);
    let Feed::Org(record) = got.feed else {
        panic!("not an org: {got:?}")
    };
    assert_eq!((record.id.as_str(), record.version), ("acme", 1));
    a.commit(put_token("ops")).await.unwrap();
    a.commit(delete_token("ops")).await.unwrap();
    assert_eq!(
        next(&mut feed).await,
        Event {
            seq: seq + 1,
            feed: Feed::PutToken(token("ops", "acme"))
        }
    );
    assert_eq!(
        next(&mut feed).await,
        Event {
            seq: seq + 2,
            feed: Feed::DeleteToken("ops".into())
        }
    );
}

#[tokio::test]
async fn a_reader_whose_entries_were_trimmed_away_resyncs_before_the_next_entry() {
    let server = server!();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    // B's place on the feed is taken now; it reads from it only later.
    for i in 0..3 {
        a.commit(provision(&format!("org-{i}"))).await.unwrap();
    }
    let mut conn = server.conn().await;
    let _: u64 = redis::cmd("XTRIM")
        .arg("kg:{test}:feed")
        .arg("MAXLEN")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut feed = b.subscribe().unwrap();
    assert_eq!(
        next(&mut feed).await,
        Event {
            seq: 2,
            feed: Feed::Resync
        }
    );
    let last = next(&mut feed).await;
    assert_eq!(last.seq, 3);
    assert!(matches!(last.feed, Feed::Org(r) if r.id.as_str() == "org-2"));
}

#[tokio::test]
async fn a_counter_that_went_back_makes_the_reader_resync_and_is_raised_again() {
    let server = server!();
    let a = node(&server, "a").await;
    let mut feed = a.subscribe().unwrap();
    a.commit(provision("acme")).await.unwrap();
    a.commit(provision("globex")).await.unwrap();
    assert_eq!(next(&mut feed).await.seq, 1);
    assert_eq!(next(&mut feed).await.seq, 2);
    // As if Redis came back without its last writes.
    let mut conn = server.conn().await;
    let _: () = redis::cmd("SET")
        .arg("kg:{test}:seq")
        .arg(0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        next(&mut feed).await,
        Event {
            seq: 2,
            feed: Feed::Resync
        }
    );
    let counter: u64 = redis::cmd("GET")
        .arg("kg:{test}:seq")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(counter, 2);
    // The next commit follows what the node saw, not the lost counter.
    assert_eq!(a.commit(provision("initech")).await.unwrap(), 3);
    assert_eq!(next(&mut feed).await.seq, 3);
}

#[tokio::test]
async fn seqs_handed_out_again_make_the_reader_resync_once_and_go_on() {
    let server = server!();
    let a = node(&server, "a").await;
    let mut feed = a.subscribe().unwrap();
    a.commit(provision("acme")).await.unwrap();
    a.commit(provision("globex")).await.unwrap();
    assert_eq!(next(&mut feed).await.seq, 1);
    assert_eq!(next(&mut feed).await.seq, 2);
    // As if a promoted replica had handed out 1 and 2 again: both entries
    // arrive in one read.
    let mut conn = server.conn().await;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for seq in [1, 2] {
        pipe.cmd("XADD")
            .arg("kg:{test}:feed")
            .arg("*")
            .arg("seq")
            .arg(seq)
            .arg("kind")
            .arg("del")
            .arg("payload")
            .arg("ops");
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();
    assert_eq!(
        next(&mut feed).await,
        Event {
            seq: 2,
            feed: Feed::Resync
        }
    );
    assert_eq!(a.commit(provision("initech")).await.unwrap(), 3);
    assert_eq!(next(&mut feed).await.seq, 3);
}

#[tokio::test]
async fn a_node_serves_once_subscribed_and_counts_the_live_nodes() {
    let server = server!();
    let a = node(&server, "a").await;
    let lease = a.lease().unwrap();
    assert!(!lease.serving(), "served before following the feed");
    let (_b, _feed_b) = serving_node(&server, "b", LEASE).await;
    let _feed_a = a.subscribe().unwrap();
    until("A serves", || lease.serving()).await;
    until("A counts both nodes", || lease.live_nodes() == 2).await;
}

#[tokio::test]
async fn confirm_waits_until_every_node_reports_it_applied_the_commit() {
    let server = server!();
    let (a, feed_a) = serving_node(&server, "a", LEASE).await;
    let (b, feed_b) = serving_node(&server, "b", LEASE).await;
    let a = Arc::new(a);
    let seq = a.commit(provision("acme")).await.unwrap();
    feed_a.applied(seq);

    let confirming = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.confirm(seq).await }
    });
    // B has not applied it: A keeps waiting (however long this sleep is,
    // A must not have returned).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !confirming.is_finished(),
        "confirmed before B applied the change"
    );

    feed_b.applied(seq);
    tokio::time::timeout(PATIENCE, confirming)
        .await
        .expect("confirm returned once B applied")
        .unwrap()
        .unwrap();
    drop(b);
}

#[tokio::test]
async fn confirm_stops_waiting_for_a_node_whose_lease_ran_out() {
    let server = server!();
    let lease = Duration::from_millis(1500);
    let (a, feed_a) = serving_node(&server, "a", lease).await;
    let (b, _feed_b) = serving_node(&server, "b", lease).await;
    let seq = a.commit(provision("acme")).await.unwrap();
    feed_a.applied(seq);
    // B freezes: it neither applies nor renews, nor leaves.
    b.stop_renewing();
    tokio::time::timeout(PATIENCE, a.confirm(seq))
        .await
        .expect("confirm returned once B's lease ran out")
        .unwrap();
    until("B stops serving", || !b.lease().unwrap().serving()).await;
    assert!(a.lease().unwrap().serving());
}

#[tokio::test]
async fn a_node_that_stops_leaves_at_once() {
    let server = server!();
    let (a, feed_a) = serving_node(&server, "a", Duration::from_secs(60)).await;
    let (b, feed_b) = serving_node(&server, "b", Duration::from_secs(60)).await;
    let seq = a.commit(provision("acme")).await.unwrap();
    feed_a.applied(seq);
    // Its store is gone: B's renewer takes it off the nodes, whose 60 s
    // lease would otherwise hold A's confirm far beyond the patience below.
    drop(feed_b);
    tokio::time::timeout(PATIENCE, a.confirm(seq))
        .await
        .expect("confirm did not wait for a node that left")
        .unwrap();
    assert!(!b.lease().unwrap().serving());
}

#[tokio::test]
async fn connect_refuses_a_redis_that_does_not_fsync_every_write_unless_allowed() {
    let server = server!();
    let mut conn = server.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("everysec")
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = RedisBackend::connect(server.options("a", LEASE))
        .await
        .unwrap_err();
    let BackendError::Unavailable(why) = refused else {
        panic!("not unavailable: {refused:?}")
    };
    assert!(why.contains("appendfsync everysec"), "{why}");
    assert!(why.contains("allow_unsafe_durability"), "{why}");
    RedisBackend::connect(ClusterOptions {
        allow_unsafe_durability: true,
        ..server.options("a", LEASE)
    })
    .await
    .expect("allowed");

    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async(&mut conn)
        .await
        .unwrap();
    let refused = RedisBackend::connect(server.options("a", LEASE))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("appendonly no"), "{refused}");
}

#[tokio::test]
async fn connect_refuses_a_redis_whose_persistence_it_cannot_read_unless_allowed() {
    let server = match RedisServer::start_with(&["--rename-command", "CONFIG", ""]).await {
        Some(server) => server,
        None => return,
    };
    let refused = RedisBackend::connect(server.options("a", LEASE))
        .await
        .unwrap_err();
    let why = refused.to_string();
    assert!(why.contains("could not verify"), "{why}");
    assert!(why.contains("allow_unsafe_durability"), "{why}");
    RedisBackend::connect(ClusterOptions {
        allow_unsafe_durability: true,
        ..server.options("a", LEASE)
    })
    .await
    .expect("allowed");
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_within_its_bound_naming_the_url_without_its_password() {
    let port = free_port();
    let started = Instant::now();
    let refused = RedisBackend::connect(ClusterOptions {
        redis_url: format!("redis://keygate:hunter2@127.0.0.1:{port}/"),
        name: "test".into(),
        lease: LEASE,
        allow_unsafe_durability: false,
        node: "a".into(),
    })
    .await
    .unwrap_err();
    // The bound connect promises, not a measurement of this machine.
    assert!(started.elapsed() < Duration::from_secs(30));
    let BackendError::Unavailable(why) = refused else {
        panic!("not unavailable: {refused:?}")
    };
    assert!(
        why.starts_with(&format!(
            "cannot reach Redis at redis://keygate:***@127.0.0.1:{port}/: "
        )),
        "{why}"
    );
    assert!(!why.contains("hunter2"), "{why}");
}

#[tokio::test]
async fn every_committed_change_survives_a_crash_of_redis() {
    let mut server = server!();
    {
        let b = node(&server, "a").await;
        b.commit(provision("acme")).await.unwrap();
        b.commit(update("acme", 1, "regenerated")).await.unwrap();
        b.commit(put_token("ops")).await.unwrap();
    }
    server.crash_and_restart().await;
    let b = node(&server, "a").await;
    let loaded = b.load().await.unwrap();
    assert_eq!(loaded.orgs.len(), 1);
    assert_eq!(loaded.orgs[0].version, 2);
    assert_eq!(loaded.tokens, [token("ops", "acme")]);
    assert_eq!(
        details(&b.audit(org("acme")).await.unwrap()),
        ["provisioned", "regenerated", "token created"]
    );
    assert_eq!(b.commit(update("acme", 2, "after")).await.unwrap(), 4);
}

#[tokio::test]
async fn a_subscribed_node_follows_the_feed_across_a_crash_of_redis() {
    let mut server = server!();
    let (a, mut feed) = serving_node(&server, "a", LEASE).await;
    assert_eq!(a.commit(provision("acme")).await.unwrap(), 1);
    assert_eq!(next(&mut feed).await.seq, 1);
    server.crash_and_restart().await;
    // The first command after the crash may fail as the connection is
    // found broken (a commit is never retried blindly: it may have been
    // made); the manager reconnects for the next.
    let seq = tokio::time::timeout(PATIENCE, async {
        loop {
            match a.commit(provision("globex")).await {
                Ok(seq) => return seq,
                Err(BackendError::Unavailable(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("a commit after the restart");
    assert_eq!(seq, 2);
    let got = next(&mut feed).await;
    assert_eq!(got.seq, 2);
    assert!(matches!(got.feed, Feed::Org(r) if r.id.as_str() == "globex"));
}

#[tokio::test]
async fn a_node_stops_serving_when_redis_is_gone_and_serves_again_once_it_is_back() {
    let mut server = server!();
    let (a, _feed) = serving_node(&server, "a", Duration::from_millis(800)).await;
    let lease = a.lease().unwrap();
    server.kill();
    until("A stops serving", || !lease.serving()).await;
    server.restart().await;
    until("A serves again", || lease.serving()).await;
}

#[tokio::test]
async fn a_node_that_is_behind_takes_no_lease_and_serves_only_once_it_applied_what_was_committed() {
    let server = server!();
    let (a, feed_a) = serving_node(&server, "a", LEASE).await;
    // B's place on the feed is taken before A's commit.
    let b = node(&server, "b").await;
    let seq = a.commit(provision("acme")).await.unwrap();
    feed_a.applied(seq);
    let feed_b = b.subscribe().unwrap();
    // B renews twice, but holds no lease: it serves nothing, and A's
    // changes do not wait for it.
    let renewed = &b.shared.renewals;
    until("B renewed twice", || renewed.load(Ordering::Relaxed) >= 2).await;
    let lease = b.lease().unwrap();
    assert!(!lease.serving());
    tokio::time::timeout(PATIENCE, a.confirm(seq))
        .await
        .expect("A's change waited for a node that serves nothing")
        .unwrap();
    // Once B applied it, it takes the lease and serves, and the next change
    // waits for it.
    feed_b.applied(seq);
    until("B serves", || lease.serving()).await;
    until("A counts B", || a.lease().unwrap().live_nodes() == 2).await;
    let next_seq = a.commit(provision("globex")).await.unwrap();
    feed_a.applied(next_seq);
    let confirming = tokio::spawn({
        let a = Arc::new(a);
        async move { a.confirm(next_seq).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!confirming.is_finished(), "confirmed before B applied it");
    feed_b.applied(next_seq);
    tokio::time::timeout(PATIENCE, confirming)
        .await
        .expect("confirmed once B applied it")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connect_refuses_a_lease_too_short_to_renew_and_a_name_that_breaks_the_hash_tag() {
    let server = server!();
    let refused = RedisBackend::connect(server.options("a", Duration::from_millis(10)))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("too short"), "{refused}");
    for name in ["", "a}b"] {
        let refused = RedisBackend::connect(ClusterOptions {
            name: name.into(),
            ..server.options("a", LEASE)
        })
        .await
        .unwrap_err();
        assert!(refused.to_string().contains("without braces"), "{refused}");
    }
}

/// Whether `store`'s gate would let `key` through for `org`.
fn accepts(store: &Store, org: &str, key: &ApiKey) -> bool {
    store
        .with_org(org.as_bytes(), |o| {
            o.read(|c| c.key().is_some_and(|k| k.ct_eq(key)) && !c.is_disabled())
        })
        .unwrap_or(false)
}

async fn store(server: &RedisServer, node: &str) -> Store {
    let backend = RedisBackend::connect(server.options(node, LEASE))
        .await
        .unwrap();
    let store = Store::open(
        Arc::new(backend),
        Arc::new(ManualClock::new(T0)),
        Limits::default(),
    )
    .await
    .unwrap();
    until("the store serves", || store.serving()).await;
    store
}

#[tokio::test]
async fn a_key_regenerated_on_one_store_is_the_only_key_the_other_accepts_when_it_returns() {
    let server = server!();
    let a = store(&server, "a").await;
    let b = store(&server, "b").await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    until("B knows acme", || b.view("acme").is_ok()).await;
    for _ in 0..20 {
        let old = b.view("acme").unwrap().state.key.unwrap();
        let new = a
            .regenerate("acme", Actor::Provider)
            .await
            .unwrap()
            .state
            .key
            .unwrap();
        // No waiting here: the regenerate's confirmation waited for B.
        assert!(!accepts(&b, "acme", &old));
        assert!(accepts(&b, "acme", &new));
    }
    let (_, secret) = b.create_token("ops", Role::Admin, "acme").await.unwrap();
    assert!(a.token(&TokenDigest::of(&secret)).is_some());
    b.delete_token("ops").await.unwrap();
    assert!(a.token(&TokenDigest::of(&secret)).is_none());
}

#[tokio::test]
async fn a_store_reopened_over_redis_holds_what_was_committed() {
    let server = server!();
    let key = {
        let a = store(&server, "a").await;
        a.provision(
            org("acme"),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
        a.regenerate("acme", Actor::Provider)
            .await
            .unwrap()
            .state
            .key
            .unwrap()
    };
    let a = store(&server, "a2").await;
    assert!(accepts(&a, "acme", &key));
    assert_eq!(a.version_of("acme"), Some(2));
    assert_eq!(a.audit("acme").await.unwrap().len(), 2);
}

/// Two stores (two nodes) over one Redis, and the backend the test reads
/// the stored truth from.
async fn two_stores(server: &RedisServer) -> (Store, Store, RedisBackend) {
    let a = store(server, "a").await;
    let b = store(server, "b").await;
    let reader = node(server, "reader").await;
    (a, b, reader)
}

#[tokio::test]
async fn a_provision_racing_one_on_the_other_store_answers_org_exists() {
    let server = server!();
    let (a, b, _) = two_stores(&server).await;
    let (ra, rb) = tokio::join!(
        a.provision(
            org("acme"),
            None,
            LimitOverrides::default(),
            Actor::Provider
        ),
        b.provision(
            org("acme"),
            None,
            LimitOverrides::default(),
            Actor::Provider
        ),
    );
    let (won, lost) = match (ra, rb) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("expected one provision to win: {other:?}"),
    };
    assert!(matches!(lost, OpError::OrgExists), "{lost:?}");
    // The winner's confirm waited for both: no waiting here.
    assert_eq!(a.view("acme").unwrap(), won);
    assert_eq!(b.view("acme").unwrap(), won);
}

#[tokio::test]
async fn a_token_rotated_on_one_store_is_refused_on_the_other_when_the_call_returns() {
    let server = server!();
    let (a, b, _) = two_stores(&server).await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    let (_, old) = a.create_token("alice", Role::Admin, "acme").await.unwrap();

    let (record, new) = b.rotate_token("alice").await.unwrap();

    // No waiting: the rotation's confirm waited for both stores.
    for s in [&a, &b] {
        assert!(s.token(&TokenDigest::of(&old)).is_none());
        assert_eq!(s.token(&TokenDigest::of(&new)), Some(record.clone()));
    }
}

#[tokio::test]
async fn a_token_name_taken_on_the_other_store_first_answers_token_exists() {
    let server = server!();
    let (a, b, _) = two_stores(&server).await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    let (ra, rb) = tokio::join!(
        a.create_token("alice", Role::Admin, "acme"),
        b.create_token("alice", Role::Admin, "acme"),
    );
    let (won, lost) = match (ra, rb) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("expected one create to win: {other:?}"),
    };
    assert!(matches!(lost, OpError::TokenExists), "{lost:?}");
    let digest = TokenDigest::of(&won.1);
    until("both know the token", || {
        a.token(&digest).is_some() && b.token(&digest).is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_regenerates_on_two_stores_leave_one_key_and_version_everywhere() {
    let server = server!();
    let (a, b, reader) = two_stores(&server).await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    for round in 0..50u64 {
        let (ra, rb) = tokio::join!(
            tokio::spawn({
                let a = a.clone();
                async move { a.regenerate("acme", Actor::Provider).await }
            }),
            tokio::spawn({
                let b = b.clone();
                async move { b.regenerate("acme", Actor::Provider).await }
            }),
        );
        // Both succeed: the one that lost the race decided again and won;
        // each returned only once both stores served its key.
        let (ra, rb) = (ra.unwrap().unwrap(), rb.unwrap().unwrap());
        let stored = reader.org(&org("acme")).await.unwrap().unwrap();
        assert_eq!(stored.version, 1 + 2 * (round + 1), "round {round}");
        let key = stored.state.key.unwrap();
        let (ka, kb) = (ra.state.key.unwrap(), rb.state.key.unwrap());
        assert!(key.ct_eq(&ka) || key.ct_eq(&kb), "round {round}");
        for s in [&a, &b] {
            assert_eq!(s.version_of("acme"), Some(stored.version), "round {round}");
            assert!(accepts(s, "acme", &key), "round {round}");
        }
    }
}

#[tokio::test]
async fn an_import_into_redis_reaches_a_running_store_by_resync() {
    let server = server!();
    let running = store(&server, "a").await;
    let importer = node(&server, "import").await;
    let imported = state();
    let dump = Dump {
        orgs: vec![OrgRecord {
            id: org("acme"),
            state: imported.clone(),
            version: 7,
        }],
        tokens: vec![token("ops", "acme")],
        users: Vec::new(),
        audit: vec![event("acme", "provisioned")],
    };
    assert_eq!(importer.restore(dump).await.unwrap(), Restored::Done);
    until("the running store reloaded", || {
        running.version_of("acme") == Some(7) && running.token(&TokenDigest::of("ops")).is_some()
    })
    .await;
    until("it serves again", || running.serving()).await;
    assert_eq!(running.view("acme").unwrap().state, imported);
}

#[tokio::test]
async fn an_org_deleted_on_one_store_is_gone_with_its_tokens_everywhere_when_the_call_returns() {
    let server = server!();
    let (a, b, reader) = two_stores(&server).await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    let (_, secret) = a.create_token("ops", Role::Admin, "acme").await.unwrap();
    let key = b.view("acme").unwrap().state.key.unwrap();

    b.delete_org("acme", Actor::Provider).await.unwrap();

    assert!(!accepts(&a, "acme", &key));
    assert!(a.view("acme").is_err());
    assert!(a.token(&TokenDigest::of(&secret)).is_none());
    assert_eq!(reader.org(&org("acme")).await.unwrap(), None);
    assert_eq!(reader.token("ops").await.unwrap(), None);
    // The log stays, its last event the deletion.
    let log = reader.audit(org("acme")).await.unwrap();
    assert_eq!(log.last().map(|e| e.action), Some(Action::DeleteOrg));
    assert!(matches!(
        a.delete_org("acme", Actor::Provider).await,
        Err(OpError::OrgNotFound)
    ));
}

/// A store over Redis on the system clock: grants' windows are opened by
/// Redis's clock, and a node compares them with its own.
async fn timed_store(server: &RedisServer, node: &str, threshold: u32) -> Store {
    let backend = RedisBackend::connect(server.options(node, LEASE))
        .await
        .unwrap();
    let limits = Limits {
        rate_per_sec: 1_000_000,
        burst: 1_000_000,
        threshold_calls: threshold,
        threshold_window_secs: 3600,
    };
    let store = Store::open(
        Arc::new(backend),
        Arc::new(crate::clock::SystemClock::new()),
        limits,
    )
    .await
    .unwrap();
    until("the store serves", || store.serving()).await;
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_loaded_stores_on_redis_forward_exactly_the_threshold_and_disable_everywhere() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower_service::Service;

    let server = server!();
    let mut stores = Vec::new();
    for node in ["a", "b", "c"] {
        stores.push(timed_store(&server, node, 300).await);
    }
    let key = stores[0]
        .provision(
            org("acme"),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap()
        .state
        .key
        .unwrap();
    let forwarded = Arc::new(AtomicUsize::new(0));
    let mut calls = tokio::task::JoinSet::new();
    for store in &stores {
        for _ in 0..4 {
            let upstream = {
                let forwarded = forwarded.clone();
                tower::service_fn(
                    move |_req: http::Request<http_body_util::Empty<bytes::Bytes>>| {
                        forwarded.fetch_add(1, Ordering::SeqCst);
                        async { Ok::<_, std::convert::Infallible>(http::Response::new(())) }
                    },
                )
            };
            let mut gate = crate::gate::KeyGate::new(
                upstream,
                store.clone(),
                crate::gate::GateConfig::default(),
            );
            let key = key.expose().to_owned();
            calls.spawn(async move {
                let mut ok = 0;
                for _ in 0..40 {
                    let req = http::Request::get("/acme/v1")
                        .header("x-api-key", &key)
                        .body(http_body_util::Empty::new())
                        .unwrap();
                    let status = gate.call(req).await.unwrap().status();
                    ok += usize::from(status == http::StatusCode::OK);
                }
                ok
            });
        }
    }
    let mut ok = 0;
    while let Some(n) = calls.join_next().await {
        ok += n.unwrap();
    }
    // 3 nodes x 4 tasks x 40 calls = 480 for a threshold of 300.
    assert_eq!(ok, forwarded.load(Ordering::SeqCst));
    assert!(ok <= 300, "forwarded {ok}");
    assert!(ok >= 300 - 4, "forwarded {ok}");
    for store in &stores {
        assert!(store.view("acme").unwrap().state.is_disabled());
    }
    // The cluster's window counts every call granted.
    let usage = stores[1].usage("acme").await.unwrap();
    assert_eq!(usage.calls_in_window, 300);
    println!("three nodes on Redis, threshold 300: {ok} forwarded");
}

fn session_record(value: &str) -> crate::session::SessionRecord {
    crate::session::SessionRecord {
        digest: crate::session::SessionDigest::of(value.as_bytes()),
        org: org("acme"),
        username: "ops".into(),
        generation: 1,
        created_at: T0,
        login_timestamp_ms: T0.as_nanos() / 1_000_000,
    }
}

#[tokio::test]
async fn api_users_and_sessions_reach_the_other_store_before_the_answer_and_go_with_their_org() {
    let server = server!();
    let a = store(&server, "a").await;
    let b = store(&server, "b").await;
    a.provision(
        org("acme"),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    a.create_user(
        "acme",
        "ops",
        "a long enough password".into(),
        Actor::Provider,
    )
    .await
    .unwrap();
    assert!(
        b.has_user(&org("acme"), "ops"),
        "confirmed before the answer"
    );
    assert!(matches!(
        b.create_user(
            "acme",
            "ops",
            "a long enough password".into(),
            Actor::Provider
        )
        .await,
        Err(OpError::ApiUserExists)
    ));
    let far = T0.saturating_add(Duration::from_secs(3600));
    a.put_session(session_record("s1"), far).await.unwrap();
    let d1 = crate::session::SessionDigest::of(b"s1");
    assert!(
        b.sessions().get(&d1).is_some(),
        "confirmed before the answer"
    );
    b.end_session(d1).await.unwrap();
    assert!(a.sessions().get(&d1).is_none());
    a.put_session(session_record("s2"), far).await.unwrap();
    // A store opened now loads the users and the live sessions.
    let c = store(&server, "c").await;
    assert!(c.has_user(&org("acme"), "ops"));
    assert!(c
        .sessions()
        .get(&crate::session::SessionDigest::of(b"s2"))
        .is_some());
    assert!(c.sessions().get(&d1).is_none());
    b.delete_user("acme", "ops", Actor::Provider).await.unwrap();
    assert!(!a.has_user(&org("acme"), "ops"));
    assert!(a.sessions().is_empty(), "the user's sessions went with it");
    a.create_user(
        "acme",
        "ops",
        "a long enough password".into(),
        Actor::Provider,
    )
    .await
    .unwrap();
    a.delete_org("acme", Actor::Provider).await.unwrap();
    assert!(!b.has_user(&org("acme"), "ops"));
    let backend = RedisBackend::connect(server.options("d", LEASE))
        .await
        .unwrap();
    assert!(
        backend.load().await.unwrap().users.is_empty(),
        "gone with the org"
    );
}

#[tokio::test]
async fn failed_logins_count_for_every_node_and_their_window_expires_in_redis() {
    use crate::session::table::{FAILURE_WINDOW_SECS, ORG_FAILURES, USER_FAILURES};
    let server = server!();
    let a = node(&server, "a").await;
    let b = node(&server, "b").await;
    let acme = org("acme");
    assert_eq!(
        a.login_lockout(&acme, "ann", false, T0).await.unwrap(),
        None
    );
    // Failures of one user on two nodes add up: the last one locks it out.
    for i in 0..USER_FAILURES {
        let on = if i % 2 == 0 { &a } else { &b };
        let wait = on.login_lockout(&acme, "ann", true, T0).await.unwrap();
        assert_eq!(wait.is_some(), i + 1 == USER_FAILURES, "failure {i}");
    }
    for on in [&a, &b] {
        let wait = on.login_lockout(&acme, "ann", false, T0).await.unwrap();
        assert!(
            wait.is_some_and(|w| (1..=FAILURE_WINDOW_SECS).contains(&w)),
            "{wait:?}"
        );
    }
    assert_eq!(
        b.login_lockout(&acme, "bob", false, T0).await.unwrap(),
        None
    );
    // The org's limit, all usernames together.
    for i in USER_FAILURES..ORG_FAILURES {
        a.login_lockout(&acme, &format!("u{i}"), true, T0)
            .await
            .unwrap();
    }
    assert!(b
        .login_lockout(&acme, "bob", false, T0)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        b.login_lockout(&org("globex"), "bob", false, T0)
            .await
            .unwrap(),
        None
    );
    // Each counter expires a window after its first failure, by Redis's
    // clock; no counter is left without an expiry, and the username is
    // kept only as its digest.
    let mut conn = server.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("kg:{*}:login_failures:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        keys.len(),
        1 + usize::try_from(ORG_FAILURES - USER_FAILURES).unwrap() + 1
    );
    for k in &keys {
        assert!(!k.contains("ann"), "{k}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(k)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=60).contains(&ttl), "{k}: {ttl}");
    }
}
