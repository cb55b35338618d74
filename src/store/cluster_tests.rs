//! Two stores over one shared [`MemoryBackend`]: two nodes on one truth, in
//! one process. What the seam promises several nodes (conditional commits, the
//! feed) is proven here before any networked backend exists.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::key::ApiKey;
use crate::org::KeyStatus;
use crate::token::Role;

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

/// How long a test waits for a node to apply the feed before it fails. Not a
/// timing assertion: the feed normally arrives within microseconds, and this
/// only keeps a broken feed from hanging the suite.
const PATIENCE: Duration = Duration::from_secs(10);

struct Nodes {
    a: Store,
    b: Store,
    backend: Arc<MemoryBackend>,
}

async fn nodes() -> Nodes {
    let backend = Arc::new(MemoryBackend::shared());
    let open = || async {
        // Each node its own clock, as two machines have.
        Store::open(
            backend.clone(),
            Arc::new(ManualClock::new(T0)),
            Limits::default(),
        )
        .await
        .unwrap()
    };
    let a = open().await;
    let b = open().await;
    Nodes { a, b, backend }
}

fn acme() -> OrgId {
    OrgId::parse("acme").unwrap()
}

impl Nodes {
    async fn provisioned(self) -> Self {
        self.a
            .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
            .await
            .unwrap();
        self.b_caught_up("acme").await;
        self
    }

    /// The version the backend holds of `org`.
    async fn stored_version(&self, org: &str) -> Option<u64> {
        let id = OrgId::parse(org).unwrap();
        self.backend.org(&id).await.unwrap().map(|r| r.version)
    }

    /// Waits until both nodes hold the backend's version of `org`.
    async fn b_caught_up(&self, org: &str) {
        let stored = self.stored_version(org).await;
        until(|| self.a.version_of(org) == stored && self.b.version_of(org) == stored).await;
    }
}

/// Waits, bounded by [`PATIENCE`], until `done` holds.
async fn until(done: impl Fn() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the nodes did not converge");
}

/// Whether `store`'s gate would let `key` through for `org` (the key check
/// and the disabled check of the request path, which reads the same map).
fn accepts(store: &Store, org: &str, key: &ApiKey) -> bool {
    store
        .with_org(org.as_bytes(), |o| {
            o.read(|c| c.key().is_some_and(|k| k.ct_eq(key)) && !c.is_disabled())
        })
        .unwrap_or(false)
}

fn key_of(view: &OrgView) -> ApiKey {
    view.state.key.expect("the org has a key")
}

#[tokio::test]
async fn a_key_regenerated_on_one_node_is_the_only_key_the_other_accepts() {
    let n = nodes().await.provisioned().await;
    let old = key_of(&n.b.view("acme").unwrap());
    assert!(accepts(&n.b, "acme", &old));

    let new = key_of(&n.a.regenerate("acme", Actor::Provider).await.unwrap());
    n.b_caught_up("acme").await;

    assert!(accepts(&n.b, "acme", &new));
    assert!(!accepts(&n.b, "acme", &old));
    assert!(!accepts(&n.a, "acme", &old));
    assert_eq!(n.b.version_of("acme"), Some(2));
}

#[tokio::test]
async fn when_a_change_returns_every_open_node_already_serves_it() {
    let n = nodes().await.provisioned().await;
    for _ in 0..50 {
        let old = key_of(&n.b.view("acme").unwrap());
        let new = key_of(&n.a.regenerate("acme", Actor::Provider).await.unwrap());
        // No waiting here: the change's confirmation waited for B.
        assert!(!accepts(&n.b, "acme", &old));
        assert!(accepts(&n.b, "acme", &new));
    }
    let (_, secret) = n.b.create_token("ops", Role::Admin, "acme").await.unwrap();
    assert!(n.a.token(&TokenDigest::of(&secret)).is_some());
    n.b.delete_token("ops").await.unwrap();
    assert!(n.a.token(&TokenDigest::of(&secret)).is_none());
}

#[tokio::test]
async fn a_token_rotated_on_one_node_is_refused_on_the_other_when_the_call_returns() {
    let n = nodes().await.provisioned().await;
    let (_, first) = n.a.create_token("ops", Role::Viewer, "acme").await.unwrap();
    let mut old = first;
    for i in 0..20 {
        // Alternate the node that rotates: each must learn the other's.
        let (rotating, other) = if i % 2 == 0 {
            (&n.b, &n.a)
        } else {
            (&n.a, &n.b)
        };
        let (record, new) = rotating.rotate_token("ops").await.unwrap();
        // No waiting here: the rotation's confirmation waited for the other.
        for node in [other, rotating] {
            assert!(node.token(&TokenDigest::of(&old)).is_none(), "round {i}");
            assert_eq!(node.token(&TokenDigest::of(&new)), Some(record.clone()));
        }
        assert_eq!((record.role, record.org.as_str()), (Role::Viewer, "acme"));
        old = new;
    }
}

#[tokio::test]
async fn a_rotation_of_a_token_deleted_on_the_other_node_is_404_and_writes_nothing() {
    let n = nodes().await.provisioned().await;
    n.a.create_token("ops", Role::Admin, "acme").await.unwrap();
    until(|| n.b.read_tokens().by_name.contains_key("ops")).await;
    let audit = n.backend.all_audit().len();
    // Deleted on A: the rotation on B finds no token, and writes neither a
    // token nor an audit event.
    n.a.delete_token("ops").await.unwrap();

    assert!(matches!(
        n.b.rotate_token("ops").await,
        Err(OpError::TokenNotFound)
    ));
    assert!(n.backend.token("ops").await.unwrap().is_none());
    assert_eq!(n.backend.all_audit().len(), audit + 1);
}

#[tokio::test]
async fn two_rotations_of_one_token_at_once_leave_one_secret_that_works() {
    let n = nodes().await.provisioned().await;
    n.a.create_token("ops", Role::Admin, "acme").await.unwrap();
    until(|| n.b.read_tokens().by_name.contains_key("ops")).await;

    let (ra, rb) = tokio::join!(n.a.rotate_token("ops"), n.b.rotate_token("ops"));
    let (ra, sa) = ra.unwrap();
    let (rb, sb) = rb.unwrap();

    // Both succeed, one after the other: the later one's secret is the token.
    let stored = n.backend.token("ops").await.unwrap().unwrap();
    assert!(stored == ra || stored == rb);
    let (live, dead) = if stored == ra { (sa, sb) } else { (sb, sa) };
    for node in [&n.a, &n.b] {
        until(|| node.token(&TokenDigest::of(&live)).is_some()).await;
        assert!(node.token(&TokenDigest::of(&dead)).is_none());
    }
}

#[tokio::test]
async fn an_org_deleted_on_one_node_is_gone_with_its_tokens_on_the_other_when_the_call_returns() {
    let n = nodes().await.provisioned().await;
    let (_, secret) = n.a.create_token("ops", Role::Admin, "acme").await.unwrap();
    let key = key_of(&n.b.view("acme").unwrap());
    assert!(n.b.token(&TokenDigest::of(&secret)).is_some());

    n.a.delete_org("acme", Actor::Provider).await.unwrap();

    assert!(!accepts(&n.b, "acme", &key));
    assert!(n.b.view("acme").is_err());
    assert!(n.b.token(&TokenDigest::of(&secret)).is_none());
    assert_eq!(n.stored_version("acme").await, None);
    // Gone everywhere: a second delete, on either node, finds nothing.
    assert!(matches!(
        n.b.delete_org("acme", Actor::Provider).await,
        Err(OpError::OrgNotFound)
    ));
    // The id can be provisioned again, and the other node learns it.
    n.b.provision(acme(), None, LimitOverrides::default(), Actor::Provider)
        .await
        .unwrap();
    assert_eq!(n.a.version_of("acme"), Some(1));
}

#[tokio::test]
async fn a_resync_drops_orgs_the_backend_no_longer_holds_and_takes_its_versions() {
    let n = nodes().await.provisioned().await;
    let deaf = MemoryBackend::shared();
    // B reloads from a backend where acme was deleted and provisioned
    // again (version 1, another key), and globex never existed.
    n.a.provision(
        OrgId::parse("globex").unwrap(),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    n.a.regenerate("acme", Actor::Provider).await.unwrap();
    assert_eq!(n.b.version_of("acme"), Some(2));
    let fresh = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    deaf.commit(Commit {
        change: Change::provision(acme(), fresh.clone()),
        event: AuditEvent {
            org: acme(),
            at: T0,
            actor: Actor::Provider,
            action: Action::Provision,
            detail: String::new(),
        },
    })
    .await
    .unwrap();
    let b = Store::open(
        Arc::new(deaf),
        Arc::new(ManualClock::new(T0)),
        Limits::default(),
    )
    .await
    .unwrap();
    // Copy B's view of the world into the store over `deaf`, then reload.
    for view in n.b.list() {
        b.install(OrgRecord {
            version: n.b.version_of(view.id.as_str()).unwrap(),
            id: view.id,
            state: view.state,
        })
        .await;
    }
    assert_eq!(b.len(), 2);
    b.resync().await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b.version_of("acme"), Some(1));
    assert_eq!(b.view("acme").unwrap().state.key, fresh.key);
}

#[tokio::test]
async fn a_closed_node_does_not_hold_back_the_others_changes() {
    let n = nodes().await.provisioned().await;
    drop(n.b);
    // Would wait forever for B's feed otherwise.
    tokio::time::timeout(PATIENCE, n.a.regenerate("acme", Actor::Provider))
        .await
        .expect("a change waited for a closed node")
        .unwrap();
}

#[tokio::test]
async fn an_org_provisioned_on_one_node_appears_on_the_other() {
    let n = nodes().await;
    assert!(n.b.view("acme").is_err());
    let made =
        n.a.provision(acme(), None, LimitOverrides::default(), Actor::Provider)
            .await
            .unwrap();
    n.b_caught_up("acme").await;
    assert_eq!(n.b.view("acme").unwrap(), made);
    assert!(accepts(&n.b, "acme", &key_of(&made)));
    // And B, knowing it now, refuses to provision it again.
    let again =
        n.b.provision(acme(), None, LimitOverrides::default(), Actor::Provider)
            .await;
    assert!(matches!(again, Err(OpError::OrgExists)), "{again:?}");
}

#[tokio::test]
async fn a_provision_racing_one_on_the_other_node_answers_org_exists() {
    // B provisions before its feed could tell it of A's: its commit expects
    // no org, the backend refuses, and B learns A's org and refuses.
    let n = nodes().await;
    let (a, b) = tokio::join!(
        n.a.provision(acme(), None, LimitOverrides::default(), Actor::Provider),
        n.b.provision(acme(), None, LimitOverrides::default(), Actor::Provider),
    );
    let (won, lost) = match (a, b) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("expected one provision to win: {other:?}"),
    };
    assert!(matches!(lost, OpError::OrgExists), "{lost:?}");
    n.b_caught_up("acme").await;
    assert_eq!(n.a.view("acme").unwrap(), won);
    assert_eq!(n.b.view("acme").unwrap(), won);
}

#[tokio::test]
async fn a_token_created_on_one_node_authenticates_on_the_other_until_deleted() {
    let n = nodes().await.provisioned().await;
    let (record, secret) =
        n.a.create_token("alice", Role::Admin, "acme")
            .await
            .unwrap();
    let digest = TokenDigest::of(&secret);
    until(|| n.b.token(&digest).is_some()).await;
    assert_eq!(n.b.token(&digest), Some(record));

    // Deleted through A; gone on B.
    n.a.delete_token("alice").await.unwrap();
    assert_eq!(n.a.token(&digest), None);
    until(|| n.b.token(&digest).is_none()).await;

    // The name is free again everywhere: created and deleted through B, gone on A.
    let (_, secret) =
        n.b.create_token("alice", Role::Viewer, "acme")
            .await
            .unwrap();
    let digest = TokenDigest::of(&secret);
    until(|| n.a.token(&digest).is_some()).await;
    n.b.delete_token("alice").await.unwrap();
    until(|| n.a.token(&digest).is_none()).await;
}

#[tokio::test]
async fn a_token_name_taken_on_the_other_node_first_answers_token_exists() {
    let n = nodes().await.provisioned().await;
    // B's feed may not have it yet when B decides; the backend refuses then.
    let (a, b) = tokio::join!(
        n.a.create_token("alice", Role::Admin, "acme"),
        n.b.create_token("alice", Role::Admin, "acme"),
    );
    let (won, lost) = match (a, b) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("expected one create to win: {other:?}"),
    };
    assert!(matches!(lost, OpError::TokenExists), "{lost:?}");
    let digest = TokenDigest::of(&won.1);
    until(|| n.a.token(&digest).is_some() && n.b.token(&digest).is_some()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_regenerates_on_two_nodes_leave_one_key_and_version_everywhere() {
    let n = nodes().await.provisioned().await;
    for round in 0..200u64 {
        let (a, b) = tokio::join!(
            tokio::spawn({
                let a = n.a.clone();
                async move { a.regenerate("acme", Actor::Provider).await }
            }),
            tokio::spawn({
                let b = n.b.clone();
                async move { b.regenerate("acme", Actor::Provider).await }
            }),
        );
        // Both succeed: the one that lost the race decided again and won.
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert!(!key_of(&a).ct_eq(&key_of(&b)), "round {round}");
        n.b_caught_up("acme").await;
        let stored = n.backend.org(&acme()).await.unwrap().unwrap();
        assert_eq!(stored.version, 1 + 2 * (round + 1), "round {round}");
        assert_eq!(n.a.version_of("acme"), Some(stored.version));
        assert_eq!(n.b.version_of("acme"), Some(stored.version));
        let key = stored.state.key.unwrap();
        // The key stored is the one a regenerate answered last, and the only
        // one either node accepts.
        assert!(
            key.ct_eq(&key_of(&a)) || key.ct_eq(&key_of(&b)),
            "round {round}"
        );
        for node in [&n.a, &n.b] {
            assert!(accepts(node, "acme", &key), "round {round}");
            assert_eq!(node.view("acme").unwrap().state, stored.state);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_after_a_delete_let_exactly_one_win() {
    let n = nodes().await.provisioned().await;
    for round in 0..100 {
        n.a.delete("acme", Actor::Provider).await.unwrap();
        n.b_caught_up("acme").await;
        let (a, b) = tokio::join!(
            tokio::spawn({
                let a = n.a.clone();
                async move { a.add("acme", Actor::Provider).await }
            }),
            tokio::spawn({
                let b = n.b.clone();
                async move { b.add("acme", Actor::Provider).await }
            }),
        );
        let (won, lost) = match (a.unwrap(), b.unwrap()) {
            (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
            other => panic!("round {round}: expected one add to win: {other:?}"),
        };
        assert!(
            matches!(lost, OpError::KeyExists),
            "round {round}: {lost:?}"
        );
        assert_eq!(lost.code(), "KEY_EXISTS");
        n.b_caught_up("acme").await;
        let key = key_of(&won);
        assert!(accepts(&n.a, "acme", &key) && accepts(&n.b, "acme", &key));
    }
}

#[tokio::test]
async fn a_disable_on_one_node_makes_the_others_key_change_answer_key_disabled() {
    // B decides on what is stored, not on what it last saw.
    let n = nodes().await.provisioned().await;
    let b_before = n.b.version_of("acme");
    n.a.disable("acme", "abuse", Actor::Provider).await.unwrap();
    // Whether or not B has applied the feed yet, its regenerate is refused.
    let r = n.b.regenerate("acme", Actor::Provider).await;
    assert!(matches!(r, Err(OpError::KeyDisabled)), "{r:?}");
    assert_eq!(b_before, Some(1));
    assert_eq!(n.stored_version("acme").await, Some(2));
}

/// One shared backend seen through a node whose feed never arrives: what a
/// node sees in the moment before the feed brings a change, made to last.
struct Deaf(Arc<MemoryBackend>, tokio::sync::broadcast::Sender<Event>);

impl Backend for Deaf {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        self.0.load()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>> {
        self.0.commit(commit)
    }

    fn org(&self, id: &OrgId) -> BoxFuture<'_, Result<Option<OrgRecord>, BackendError>> {
        self.0.org(id)
    }

    fn token(&self, name: &str) -> BoxFuture<'_, Result<Option<TokenRecord>, BackendError>> {
        self.0.token(name)
    }

    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        self.0.audit(org)
    }

    /// A feed nothing is ever sent on: the node is shared, but hears nothing.
    fn subscribe(&self) -> Option<Subscription> {
        Some(Subscription::broadcast(
            self.1.subscribe(),
            tokio::sync::watch::channel(0).0,
        ))
    }
}

/// Two nodes on one backend, B deaf to the feed.
async fn a_and_deaf_b() -> (Store, Store) {
    let backend = Arc::new(MemoryBackend::shared());
    let clock = || Arc::new(ManualClock::new(T0));
    let a = Store::open(backend.clone(), clock(), Limits::default())
        .await
        .unwrap();
    a.provision(acme(), None, LimitOverrides::default(), Actor::Provider)
        .await
        .unwrap();
    let silent = tokio::sync::broadcast::channel(1).0;
    let b = Store::open(Arc::new(Deaf(backend, silent)), clock(), Limits::default())
        .await
        .unwrap();
    (a, b)
}

#[tokio::test]
async fn a_node_behind_the_feed_reruns_its_rule_on_the_stored_state_after_a_lost_race() {
    let (a, b) = a_and_deaf_b().await;
    a.disable("acme", "abuse", Actor::Provider).await.unwrap();
    // B still sees the key enabled; its commit loses, and the rule run again
    // on the stored state refuses.
    assert_eq!(b.view("acme").unwrap().state.status, KeyStatus::Enabled);
    let r = b.regenerate("acme", Actor::Provider).await;
    assert!(matches!(r, Err(OpError::KeyDisabled)), "{r:?}");
    assert_eq!(b.version_of("acme"), Some(2));
}

#[tokio::test]
async fn a_node_behind_the_feed_judges_edit_must_differ_on_the_stored_key() {
    let (a, b) = a_and_deaf_b().await;
    a.edit("acme", "Ab3dEf6hIj9k", Actor::Provider)
        .await
        .unwrap();
    let r = b.edit("acme", "Ab3dEf6hIj9k", Actor::Provider).await;
    assert!(matches!(r, Err(OpError::KeyUnchanged)), "{r:?}");
}

#[tokio::test]
async fn a_node_behind_the_feed_checks_a_refusal_against_the_stored_state() {
    let (a, b) = a_and_deaf_b().await;
    a.delete("acme", Actor::Provider).await.unwrap();
    // B's copy still has a key, so its rule refuses the add; the stored org
    // has none, so B looks, learns, and adds.
    let added = b.add("acme", Actor::Provider).await.unwrap();
    let stored = b.inner.backend.org(&acme()).await.unwrap().unwrap();
    assert_eq!(stored.version, 3);
    assert_eq!(stored.state.key, added.state.key);
    // A refusal that the stored state confirms stands.
    let again = b.add("acme", Actor::Provider).await;
    assert!(matches!(again, Err(OpError::KeyExists)), "{again:?}");
}

#[tokio::test]
async fn a_node_behind_the_feed_finds_orgs_and_tokens_made_elsewhere() {
    let (a, b) = a_and_deaf_b().await;
    a.provision(
        OrgId::parse("globex").unwrap(),
        None,
        LimitOverrides::default(),
        Actor::Provider,
    )
    .await
    .unwrap();
    // A change through B of an org B has not heard of yet.
    b.disable("globex", "abuse", Actor::Provider).await.unwrap();
    assert_eq!(b.version_of("globex"), Some(2));
    // A token created on A, deleted through B.
    a.create_token("alice", Role::Admin, "globex")
        .await
        .unwrap();
    b.delete_token("alice").await.unwrap();
    assert_eq!(b.inner.backend.token("alice").await.unwrap(), None);
    // A token B knows, deleted on A, and its name taken again through B.
    let (_, secret) = b.create_token("bob", Role::Viewer, "acme").await.unwrap();
    a.delete_token("bob").await.unwrap();
    assert!(b.token(&TokenDigest::of(&secret)).is_some());
    b.create_token("bob", Role::Viewer, "acme").await.unwrap();
    assert!(b.token(&TokenDigest::of(&secret)).is_none());
    // Names and orgs that exist nowhere are still refused.
    let r = b.delete_token("carol").await;
    assert!(matches!(r, Err(OpError::TokenNotFound)), "{r:?}");
    let r = b.regenerate("initech", Actor::Provider).await;
    assert!(matches!(r, Err(OpError::OrgNotFound)), "{r:?}");
}

/// A backend whose org commits always lose the race: every read-back shows a
/// version the next commit is again too late for.
struct Contended(MemoryBackend, std::sync::atomic::AtomicU64);

impl Backend for Contended {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        self.0.load()
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>> {
        match &commit.change {
            Change::Org {
                expected: Some(_), ..
            } => Box::pin(std::future::ready(Err(commit.change.refused()))),
            _ => self.0.commit(commit),
        }
    }

    fn org(&self, id: &OrgId) -> BoxFuture<'_, Result<Option<OrgRecord>, BackendError>> {
        let bump = self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 2;
        let id = id.clone();
        Box::pin(async move {
            Ok(self.0.org(&id).await?.map(|mut r| {
                r.version = bump;
                r
            }))
        })
    }

    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        self.0.audit(org)
    }
}

#[tokio::test]
async fn a_store_that_loses_every_race_gives_up_with_a_5xx_that_says_nothing_internal() {
    let backend = Arc::new(Contended(MemoryBackend::new(), Default::default()));
    let store = Store::open(
        backend.clone(),
        Arc::new(ManualClock::new(T0)),
        Limits::default(),
    )
    .await
    .unwrap();
    store
        .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
        .await
        .unwrap();
    let before = store.view("acme").unwrap();
    let e = store.regenerate("acme", Actor::Provider).await.unwrap_err();
    assert!(
        matches!(e, OpError::Store(BackendError::Conflict(_))),
        "{e:?}"
    );
    assert_eq!(e.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(e.code(), "INTERNAL");
    assert!(!e.public_message().contains("version"));
    assert!(!e.public_message().contains("acme"));
    // Tried COMMIT_TRIES times, read back in between, then stopped.
    assert_eq!(
        backend.1.load(std::sync::atomic::Ordering::SeqCst),
        u64::from(COMMIT_TRIES - 1)
    );
    // The key in force is still the one stored.
    assert_eq!(store.view("acme").unwrap().state.key, before.state.key);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_to_resync() {
    let backend = MemoryBackend::shared();
    let mut feed = backend.subscribe().unwrap();
    let state = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    let event = AuditEvent {
        org: acme(),
        at: T0,
        actor: Actor::Provider,
        action: Action::Provision,
        detail: String::new(),
    };
    backend
        .commit(Commit {
            change: Change::provision(acme(), state.clone()),
            event: event.clone(),
        })
        .await
        .unwrap();
    for from in 1..=FEED_CAPACITY as u64 {
        backend
            .commit(Commit {
                change: Change::update(acme(), state.clone(), from),
                event: event.clone(),
            })
            .await
            .unwrap();
    }
    // The resync covers every event lost: the provision.
    assert_eq!(
        feed.recv().await,
        Some(Event {
            seq: 1,
            feed: Feed::Resync
        })
    );
    // Then the events it still holds, oldest first.
    match feed.recv().await {
        Some(Event {
            seq: 2,
            feed: Feed::Org(r),
        }) => assert_eq!(r.version, 2),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_import_into_the_shared_backend_reaches_a_running_node_by_resync() {
    let backend = Arc::new(MemoryBackend::shared());
    let node = Store::open(
        backend.clone(),
        Arc::new(ManualClock::new(T0)),
        Limits::default(),
    )
    .await
    .unwrap();
    let state = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    let dump = Dump {
        orgs: vec![OrgRecord {
            id: acme(),
            state: state.clone(),
            version: 7,
        }],
        tokens: Vec::new(),
        users: Vec::new(),
        audit: Vec::new(),
    };
    assert_eq!(backend.restore(dump).await.unwrap(), Restored::Done);
    until(|| node.version_of("acme") == Some(7)).await;
    assert_eq!(node.view("acme").unwrap().state, state);
}

#[tokio::test]
async fn a_batch_is_checked_in_order_and_refused_whole() {
    let backend = MemoryBackend::new();
    let state = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    let event = AuditEvent {
        org: acme(),
        at: T0,
        actor: Actor::Provider,
        action: Action::Provision,
        detail: String::new(),
    };
    let commit = |change| Commit {
        change,
        event: event.clone(),
    };
    // Provisioned, then changed from version 1, in one batch.
    backend
        .commit_all(vec![
            commit(Change::provision(acme(), state.clone())),
            commit(Change::update(acme(), state.clone(), 1)),
        ])
        .await
        .unwrap();
    assert_eq!(backend.org(&acme()).await.unwrap().unwrap().version, 2);
    // A new org and a stale change: neither is made.
    let globex = OrgId::parse("globex").unwrap();
    let stale = backend
        .commit_all(vec![
            commit(Change::provision(globex.clone(), state.clone())),
            commit(Change::update(acme(), state.clone(), 1)),
        ])
        .await;
    assert!(matches!(stale, Err(BackendError::Conflict(_))), "{stale:?}");
    assert_eq!(backend.org(&globex).await.unwrap(), None);
    assert_eq!(backend.org(&acme()).await.unwrap().unwrap().version, 2);
    assert_eq!(backend.all_audit().len(), 2);
}

#[test]
fn a_record_written_before_versions_reads_as_version_0() {
    let state = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    let old = serde_json::json!({"id": "acme", "state": state});
    let record: OrgRecord = serde_json::from_value(old).unwrap();
    assert_eq!(record.version, 0);
    assert_eq!(record.state, state);
}
