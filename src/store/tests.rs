use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::ManualClock;
use crate::limit::Rate;
use crate::org::{KeyStatus, THRESHOLD_REASON};

const T0: Timestamp = Timestamp::from_secs(1_800_000_000);

struct Fixture {
    store: Store,
    backend: Arc<MemoryBackend>,
    clock: Arc<ManualClock>,
}

async fn fixture() -> Fixture {
    let backend = Arc::new(MemoryBackend::new());
    let clock = Arc::new(ManualClock::new(T0));
    let store = Store::open(backend.clone(), clock.clone(), Limits::default())
        .await
        .unwrap();
    Fixture {
        store,
        backend,
        clock,
    }
}

fn acme() -> OrgId {
    OrgId::parse("acme").unwrap()
}

fn alice() -> Actor {
    Actor::Token("alice".into())
}

impl Fixture {
    async fn provisioned(self) -> Self {
        self.store
            .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
            .await
            .unwrap();
        self
    }

    async fn reopen(&self) -> Store {
        Store::open(self.backend.clone(), self.clock.clone(), Limits::default())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn provision_creates_an_enabled_org_with_a_key() {
    let f = fixture().await.provisioned().await;
    let v = f.store.view("acme").unwrap();
    assert!(v.state.key.is_some());
    assert_eq!(v.state.status, KeyStatus::Enabled);
    assert_eq!(v.limits, Limits::default());
}

#[tokio::test]
async fn provision_refuses_an_existing_org() {
    let f = fixture().await.provisioned().await;
    let again = f
        .store
        .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
        .await;
    assert!(matches!(again, Err(OpError::OrgExists)));
}

#[tokio::test]
async fn provision_refuses_absurd_limits_before_touching_the_store() {
    let f = fixture().await;
    let zero = LimitOverrides {
        rate_per_sec: nz(u32::MAX),
        ..Default::default()
    };
    let r = f.store.provision(acme(), None, zero, Actor::Provider).await;
    assert!(matches!(r, Err(OpError::InvalidLimits(_))));
    assert!(f.store.is_empty());
    assert!(f.backend.all_audit().is_empty());
}

#[tokio::test]
async fn operations_on_an_unknown_org_are_org_not_found() {
    let f = fixture().await;
    assert!(matches!(f.store.view("nope"), Err(OpError::OrgNotFound)));
    assert!(matches!(
        f.store.regenerate("nope", alice()).await,
        Err(OpError::OrgNotFound)
    ));
    assert!(matches!(
        f.store.audit("nope").await,
        Err(OpError::OrgNotFound)
    ));
}

#[tokio::test]
async fn a_change_is_visible_to_readers_as_soon_as_it_returns() {
    let f = fixture().await.provisioned().await;
    let old = f.store.view("acme").unwrap().state.key.unwrap();
    let v = f.store.regenerate("acme", alice()).await.unwrap();
    let now = f.store.get(b"acme").unwrap().state().key.unwrap();
    assert_eq!(Some(now), v.state.key);
    assert_ne!(now, old);
    assert_eq!(v.state.last_modified_by, alice());
}

#[tokio::test]
async fn a_failed_commit_changes_nothing() {
    let f = fixture().await.provisioned().await;
    let before = f.store.view("acme").unwrap();
    let audit_before = f.backend.all_audit().len();
    f.backend.fail_commits(true);
    let r = f.store.regenerate("acme", alice()).await;
    assert!(matches!(r, Err(OpError::Store(_))));
    assert_eq!(
        r.unwrap_err().status(),
        http::StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(f.store.view("acme").unwrap(), before);
    assert_eq!(f.backend.all_audit().len(), audit_before);
    let p = f
        .store
        .provision(
            OrgId::parse("beta").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await;
    assert!(matches!(p, Err(OpError::Store(_))));
    assert!(f.store.get(b"beta").is_none());
}

#[tokio::test]
async fn every_mutation_is_audited_with_actor_and_action_and_no_key() {
    let f = fixture().await.provisioned().await;
    f.store.edit("acme", "NewKey123456", alice()).await.unwrap();
    f.store.regenerate("acme", alice()).await.unwrap();
    f.store.delete("acme", alice()).await.unwrap();
    f.store.add("acme", alice()).await.unwrap();
    f.store
        .disable("acme", "abuse", Actor::Provider)
        .await
        .unwrap();
    f.store.enable("acme", Actor::Provider).await.unwrap();
    f.store
        .set_subscription("acme", Some(T0), Actor::Provider)
        .await
        .unwrap();
    f.store
        .set_limits(
            "acme",
            LimitOverrides {
                burst: nz(5),
                ..Default::default()
            },
            Actor::Provider,
        )
        .await
        .unwrap();
    let events = f.store.audit("acme").await.unwrap();
    let actions: Vec<Action> = events.iter().map(|e| e.action).collect();
    assert_eq!(
        actions,
        [
            Action::Provision,
            Action::EditKey,
            Action::RegenerateKey,
            Action::DeleteKey,
            Action::AddKey,
            Action::Disable,
            Action::Enable,
            Action::SetSubscription,
            Action::SetLimits,
        ]
    );
    assert_eq!(events[0].actor, Actor::Provider);
    assert_eq!(events[1].actor, alice());
    let key = f.store.view("acme").unwrap().state.key.unwrap();
    for e in &events {
        assert!(!e.detail.contains("NewKey123456"), "{e:?}");
        assert!(!e.detail.contains(key.expose()), "{e:?}");
    }
}

#[tokio::test]
async fn a_reopened_store_has_every_acknowledged_change() {
    let f = fixture().await.provisioned().await;
    f.store.regenerate("acme", alice()).await.unwrap();
    f.store
        .set_subscription("acme", Some(T0), Actor::Provider)
        .await
        .unwrap();
    f.store
        .disable("acme", "abuse", Actor::Provider)
        .await
        .unwrap();
    let before = f.store.view("acme").unwrap();
    let reopened = f.reopen().await;
    assert_eq!(reopened.view("acme").unwrap(), before);
}

#[tokio::test]
async fn ten_concurrent_regenerates_leave_exactly_the_last_key() {
    let f = fixture().await.provisioned().await;
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = f.store.clone();
            tokio::spawn(async move { store.regenerate("acme", alice()).await.unwrap() })
        })
        .collect();
    let mut views = Vec::new();
    for t in tasks {
        views.push(t.await.unwrap());
    }
    let generations: std::collections::BTreeSet<u64> =
        views.iter().map(|v| v.state.generation).collect();
    assert_eq!(generations.len(), 10, "each regenerate took effect once");
    let last = views.iter().max_by_key(|v| v.state.generation).unwrap();
    let current = f.store.view("acme").unwrap();
    assert_eq!(current.state.key, last.state.key);
    assert_eq!(current.state.generation, last.state.generation);
    let works = views
        .iter()
        .filter(|v| v.state.key == current.state.key)
        .count();
    assert_eq!(works, 1);
}

#[tokio::test]
async fn enabling_starts_the_threshold_count_afresh() {
    let f = fixture().await.provisioned().await;
    let org = f.store.get(b"acme").unwrap();
    for _ in 0..5 {
        org.calls().count(f.clock.now(), 3, 3600);
    }
    f.store.disable("acme", "x", Actor::Provider).await.unwrap();
    f.store.enable("acme", Actor::Provider).await.unwrap();
    assert_eq!(
        org.calls().count(f.clock.now(), 3, 3600),
        crate::limit::Count::Within
    );
}

#[tokio::test]
async fn the_threshold_disable_is_durable_and_by_system() {
    let f = fixture().await.provisioned().await;
    let org = f.store.get(b"acme").unwrap();
    f.store.disable_over_threshold(org).await;
    let reopened = f.reopen().await;
    let v = reopened.view("acme").unwrap();
    assert_eq!(
        v.state.status,
        KeyStatus::Disabled {
            reason: THRESHOLD_REASON.into()
        }
    );
    assert_eq!(v.state.last_modified_by, Actor::System);
    let last = f.backend.all_audit().pop().unwrap();
    assert_eq!(last.action, Action::AutoDisable);
}

#[tokio::test]
async fn expiry_follows_the_clock() {
    let f = fixture().await.provisioned().await;
    let end = T0.saturating_add(Duration::from_secs(60));
    f.store
        .set_subscription("acme", Some(end), Actor::Provider)
        .await
        .unwrap();
    assert!(f.store.regenerate("acme", alice()).await.is_ok());
    f.clock.advance(Duration::from_secs(60));
    assert!(matches!(
        f.store.regenerate("acme", alice()).await,
        Err(OpError::SubscriptionExpired)
    ));
}

#[tokio::test]
async fn limits_changes_take_effect_over_the_defaults() {
    let f = fixture().await.provisioned().await;
    f.store
        .set_limits(
            "acme",
            LimitOverrides {
                rate_per_sec: nz(7),
                ..Default::default()
            },
            Actor::Provider,
        )
        .await
        .unwrap();
    let l = f.store.view("acme").unwrap().limits;
    assert_eq!(l.rate_per_sec, 7);
    assert_eq!(l.burst, Limits::default().burst);
}

#[tokio::test]
async fn new_defaults_reach_every_value_an_org_does_not_override_at_once() {
    let f = fixture().await.provisioned().await;
    let other = OrgId::parse("other").unwrap();
    f.store
        .provision(
            other.clone(),
            None,
            LimitOverrides {
                threshold_calls: nz(9),
                ..Default::default()
            },
            Actor::Provider,
        )
        .await
        .unwrap();
    let defaults = Limits {
        rate_per_sec: 3,
        burst: 4,
        threshold_calls: 5,
        threshold_window_secs: 6,
    };
    f.store.set_defaults(defaults);
    assert_eq!(f.store.defaults(), defaults);
    // What the gate reads: the limits in force, precomputed per org.
    let in_force = |id: &str| {
        let org = f.store.get(id.as_bytes()).unwrap();
        org.read(|c| (c.rate, c.threshold_calls, c.threshold_window_secs))
    };
    assert_eq!(in_force("acme"), (Rate::new(3, 4), 5, 6));
    assert_eq!(in_force("other"), (Rate::new(3, 4), 9, 6));
    assert_eq!(f.store.view("other").unwrap().limits.threshold_calls, 9);
    // An org provisioned after the reload starts on the new defaults.
    f.store
        .provision(
            OrgId::parse("later").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    assert_eq!(in_force("later"), (Rate::new(3, 4), 5, 6));
    // Nothing stored changed: a reopen starts from the configured defaults.
    assert_eq!(
        f.backend
            .org(&other)
            .await
            .unwrap()
            .unwrap()
            .state
            .limits
            .rate_per_sec,
        None
    );
}

#[tokio::test]
async fn list_is_ordered_by_id() {
    let f = fixture().await;
    for id in ["zeta", "acme", "mid"] {
        f.store
            .provision(
                OrgId::parse(id).unwrap(),
                None,
                LimitOverrides::default(),
                Actor::Provider,
            )
            .await
            .unwrap();
    }
    let ids: Vec<String> = f.store.list().iter().map(|v| v.id.to_string()).collect();
    assert_eq!(ids, ["acme", "mid", "zeta"]);
}

#[tokio::test]
async fn a_created_token_authenticates_until_deleted_and_survives_a_reopen() {
    let f = fixture().await.provisioned().await;
    let (record, secret) = f
        .store
        .create_token("alice", crate::token::Role::Admin, "acme")
        .await
        .unwrap();
    let digest = crate::token::TokenDigest::of(&secret);
    assert_eq!(f.store.token(&digest), Some(record.clone()));
    assert_eq!(f.reopen().await.token(&digest), Some(record));
    f.store.delete_token("alice").await.unwrap();
    assert_eq!(f.store.token(&digest), None);
    assert_eq!(f.reopen().await.token(&digest), None);
    let actions: Vec<Action> = f
        .store
        .audit("acme")
        .await
        .unwrap()
        .iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        [Action::Provision, Action::CreateToken, Action::DeleteToken]
    );
}

#[tokio::test]
async fn token_names_are_unique_valid_and_for_existing_orgs() {
    let f = fixture().await.provisioned().await;
    let viewer = crate::token::Role::Viewer;
    f.store.create_token("bob", viewer, "acme").await.unwrap();
    assert!(matches!(
        f.store.create_token("bob", viewer, "acme").await,
        Err(OpError::TokenExists)
    ));
    assert!(matches!(
        f.store.create_token("provider", viewer, "acme").await,
        Err(OpError::InvalidTokenName)
    ));
    assert!(matches!(
        f.store.create_token("carol", viewer, "nope").await,
        Err(OpError::OrgNotFound)
    ));
    assert!(matches!(
        f.store.delete_token("nobody").await,
        Err(OpError::TokenNotFound)
    ));
}

fn nz(n: u32) -> Option<std::num::NonZeroU32> {
    std::num::NonZeroU32::new(n)
}

/// A backend that holds fixed records: what a damaged or hand-made one could
/// return.
struct Fixed(Vec<OrgRecord>);

impl Backend for Fixed {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        let orgs = self.0.clone();
        Box::pin(std::future::ready(Ok(Snapshot {
            orgs,
            tokens: Vec::new(),
            users: Vec::new(),
        })))
    }

    fn commit(&self, _: Commit) -> BoxFuture<'_, Result<super::Seq, BackendError>> {
        Box::pin(std::future::ready(Err(BackendError::Unavailable(
            "read only".into(),
        ))))
    }

    fn audit(&self, _: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }
}

#[tokio::test]
async fn an_org_loaded_twice_is_refused_at_open() {
    let state = OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next;
    let record = |id: &str| OrgRecord {
        id: OrgId::parse(id).unwrap(),
        state: state.clone(),
        version: 1,
    };
    let clock = Arc::new(ManualClock::new(T0));
    let ok = Fixed(vec![record("acme"), record("globex")]);
    let store = Store::open(Arc::new(ok), clock.clone(), Limits::default())
        .await
        .unwrap();
    assert_eq!(store.len(), 2);
    assert!(store.view("globex").is_ok());

    let twice = Fixed(vec![record("acme"), record("globex"), record("acme")]);
    match Store::open(Arc::new(twice), clock, Limits::default()).await {
        Err(BackendError::Corrupt(msg)) => assert!(msg.contains("acme stored twice"), "{msg}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a store with an org stored twice opened"),
    }
}

/// [`Fixed`]'s records sent to the store in batches of `size`, after a count
/// hint of `hint`: what the redb backend's load looks like to the store.
struct Batched {
    records: Fixed,
    size: usize,
    hint: usize,
}

impl Backend for Batched {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        self.records.load()
    }

    fn load_into(&self, orgs: OrgBatches) -> BoxFuture<'_, Result<Vec<TokenRecord>, BackendError>> {
        Box::pin(async move {
            let _ = orgs.send(Loading::Expect(self.hint)).await;
            for batch in self.records.0.chunks(self.size) {
                if orgs.send(Loading::Orgs(batch.to_vec())).await.is_err() {
                    break;
                }
            }
            Ok(Vec::new())
        })
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<super::Seq, BackendError>> {
        self.records.commit(commit)
    }

    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        self.records.audit(org)
    }
}

fn loaded_org(id: &str) -> OrgRecord {
    OrgRecord {
        id: OrgId::parse(id).unwrap(),
        state: OrgState::provisioned(T0, Actor::Provider, None, LimitOverrides::default()).next,
        version: 1,
    }
}

#[tokio::test]
async fn orgs_loaded_in_batches_are_each_found_by_their_id_whatever_the_count_hint() {
    let ids: Vec<String> = (0..5_000).map(|i| format!("org-{i}")).collect();
    // A hint of the count, one far too low (the map grows as it fills) and none.
    for hint in [5_000, 10, 0] {
        let backend = Batched {
            records: Fixed(ids.iter().map(|id| loaded_org(id)).collect()),
            size: 256,
            hint,
        };
        let clock = Arc::new(ManualClock::new(T0));
        let store = Store::open(Arc::new(backend), clock, Limits::default())
            .await
            .unwrap();
        assert_eq!(store.len(), ids.len(), "hint {hint}");
        for id in &ids {
            let org = store
                .get(id.as_bytes())
                .unwrap_or_else(|| panic!("{id} missing"));
            assert_eq!(org.id_str(), id);
            assert!(store.view(id).is_ok(), "{id}");
        }
        assert!(store.get(b"org-5000").is_none());
    }
}

#[tokio::test]
async fn an_org_loaded_again_in_a_later_batch_is_refused_at_open() {
    let mut records: Vec<OrgRecord> = (0..600).map(|i| loaded_org(&format!("org-{i}"))).collect();
    records.push(loaded_org("org-7"));
    let backend = Batched {
        records: Fixed(records),
        size: 256,
        hint: 601,
    };
    let clock = Arc::new(ManualClock::new(T0));
    match Store::open(Arc::new(backend), clock, Limits::default()).await {
        Err(BackendError::Corrupt(msg)) => assert!(msg.contains("org-7 stored twice"), "{msg}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a store with an org stored twice opened"),
    }
}

/// An org deleted and provisioned again is a new org in the old one's
/// record: its counts start over, the old key is refused, a handle held
/// from before reads the new org, and the flusher saves its window again.
#[tokio::test]
async fn an_org_provisioned_again_after_its_delete_starts_with_fresh_counts() {
    let f = fixture().await.provisioned().await;
    let held = f.store.get(b"acme").unwrap();
    let old_key = held.hot().key().copied().unwrap();
    for _ in 0..5 {
        held.calls().count(f.clock.now(), 3, 3600);
    }
    let rate = Rate::new(1, 1);
    held.rate_limiter().check(f.clock.now(), &rate).unwrap();
    assert!(held.rate_limiter().check(f.clock.now(), &rate).is_err());
    held.touch(f.clock.now());
    assert_eq!(f.store.flush_counts().await.unwrap(), 1);

    f.store.delete_org("acme", Actor::Provider).await.unwrap();
    assert!(f.store.get(b"acme").is_none());
    assert_eq!(f.store.len(), 0);
    assert!(matches!(f.store.view("acme"), Err(OpError::OrgNotFound)));

    let again = f
        .store
        .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
        .await
        .unwrap();
    let org = f.store.get(b"acme").unwrap();
    let new_key = org.hot().key().copied().unwrap();
    assert_eq!(again.state.key, Some(new_key));
    assert!(!new_key.ct_eq(&old_key));
    assert_eq!(
        held.hot().key().copied(),
        Some(new_key),
        "the handle reads the org now"
    );
    assert_eq!(org.calls().window(), None);
    assert_eq!(org.usage(), (None, 0));
    assert!(org.rate_limiter().check(f.clock.now(), &rate).is_ok());
    assert_eq!(
        org.calls().count(f.clock.now(), 3, 3600),
        crate::limit::Count::Within
    );
    // Forgotten at the delete: the new window is saved, not taken for the old.
    assert_eq!(f.store.flush_counts().await.unwrap(), 1);
    assert_eq!(f.store.len(), 1);
}

/// A store opened over orgs has room for an eighth more before its index is
/// rebuilt: the first provisionings after a start do not double it.
#[tokio::test]
async fn a_reopened_store_provisions_an_eighth_more_orgs_without_rebuilding_its_index() {
    async fn provision(store: &Store, ids: std::ops::Range<usize>) {
        for i in ids {
            let id = OrgId::parse(&format!("org-{i}")).unwrap();
            store
                .provision(id, None, LimitOverrides::default(), Actor::Provider)
                .await
                .unwrap();
        }
    }
    let f = fixture().await;
    provision(&f.store, 0..64).await;
    let reopened = f.reopen().await;
    assert_eq!(reopened.len(), 64);
    assert_eq!(reopened.inner.orgs.rebuilds(), 0);
    provision(&reopened, 64..72).await;
    assert_eq!(reopened.len(), 72);
    assert_eq!(reopened.inner.orgs.rebuilds(), 0);
    assert!(reopened.get(b"org-0").is_some() && reopened.get(b"org-71").is_some());
}
