//! Cluster mode through the tower Layer, in one process: stores on one shared
//! backend (the in-process model of a cluster), each gating its own copy of
//! the upstream. The call threshold held by several loaded nodes together,
//! and a node that has no lease refusing everything.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use keygate::clock::SystemClock;
use keygate::gate::{GateConfig, KeyGate};
use keygate::org::{Actor, LimitOverrides, Limits, OrgId};
use keygate::proxy::Ready;
use keygate::store::{
    AuditEvent, Backend, BackendError, BoxFuture, Commit, Lease, MemoryBackend, Seq, Snapshot,
    Store, Subscription,
};
use tower::{Service, ServiceExt};

type Upstream =
    tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An upstream that counts what reaches it, shared by every node.
fn upstream(forwarded: Arc<AtomicUsize>) -> Upstream {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_req| {
        forwarded.fetch_add(1, Ordering::SeqCst);
        async { Ok(Response::new(Full::from("upstream"))) }
    }))
}

fn limits(threshold: u32) -> Limits {
    Limits {
        // High enough that the rate never refuses here.
        rate_per_sec: 1_000_000,
        burst: 1_000_000,
        threshold_calls: threshold,
        threshold_window_secs: 3600,
    }
}

struct Cluster {
    nodes: Vec<(Store, KeyGate<Upstream>)>,
    forwarded: Arc<AtomicUsize>,
    key: String,
}

async fn cluster(n: usize, threshold: u32) -> Cluster {
    let backend = Arc::new(MemoryBackend::shared());
    let forwarded = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for _ in 0..n {
        let store = Store::open(
            backend.clone(),
            Arc::new(SystemClock::new()),
            limits(threshold),
        )
        .await
        .unwrap();
        let gate = KeyGate::new(
            upstream(forwarded.clone()),
            store.clone(),
            GateConfig::default(),
        );
        nodes.push((store, gate));
    }
    let view = nodes[0]
        .0
        .provision(
            OrgId::parse("acme").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    let key = view.state.key.unwrap().expose().to_owned();
    Cluster {
        nodes,
        forwarded,
        key,
    }
}

async fn call(mut gate: KeyGate<Upstream>, key: &str) -> StatusCode {
    let req = Request::get("/acme/v1/users")
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    gate.ready()
        .await
        .unwrap()
        .call(req)
        .await
        .unwrap()
        .status()
}

/// Loads every node at once with `per_node` calls from `tasks` tasks each.
async fn load(c: &Cluster, tasks: usize, per_task: usize) -> Vec<StatusCode> {
    let mut all = tokio::task::JoinSet::new();
    for (_, gate) in &c.nodes {
        for _ in 0..tasks {
            let gate = gate.clone();
            let key = c.key.clone();
            all.spawn(async move {
                let mut statuses = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    statuses.push(call(gate.clone(), &key).await);
                }
                statuses
            });
        }
    }
    let mut statuses = Vec::new();
    while let Some(done) = all.join_next().await {
        statuses.extend(done.unwrap());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_loaded_nodes_forward_the_threshold_together_and_then_disable_everywhere() {
    let c = cluster(3, 1_000).await;
    // 3 nodes x 8 tasks x 60 calls: 1,440 calls for a threshold of 1,000.
    let statuses = load(&c, 8, 60).await;
    let forwarded = c.forwarded.load(Ordering::SeqCst);
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(ok, forwarded);
    assert!(forwarded <= 1_000, "forwarded {forwarded}");
    // Exact but for the documented bound: calls a node holds unspent and
    // does not hand back within the reclaim's 0.1 s. Every node here is
    // alive and answers, so the slack is only for a starved test thread.
    assert!(forwarded >= 1_000 - 2 * 2, "forwarded {forwarded}");
    for (store, _) in &c.nodes {
        assert!(store.view("acme").unwrap().state.is_disabled());
    }
    assert!(statuses
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::FORBIDDEN));
    println!("three nodes, threshold 1,000: {forwarded} forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stranded_on_a_node_that_went_quiet_are_handed_back() {
    let c = cluster(2, 100).await;
    // Node 0 takes a grant and goes quiet.
    assert_eq!(call(c.nodes[0].1.clone(), &c.key).await, StatusCode::OK);
    // Two flushes: the first sees its grant, the second finds it unchanged.
    c.nodes[0].0.flush_counts().await.unwrap();
    assert_eq!(c.nodes[0].0.flush_counts().await.unwrap(), 1);
    // Node 1 can now forward everything but that one call.
    let mut ok = 0;
    for _ in 0..150 {
        if call(c.nodes[1].1.clone(), &c.key).await == StatusCode::OK {
            ok += 1;
        }
    }
    assert_eq!(ok, 99);
}

/// The shared backend, seen by a node whose lease the test sets by hand.
struct Leased {
    shared: Arc<MemoryBackend>,
    lease: Arc<Lease>,
}

impl Backend for Leased {
    fn load(&self) -> BoxFuture<'_, Result<Snapshot, BackendError>> {
        self.shared.load()
    }
    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Seq, BackendError>> {
        self.shared.commit(commit)
    }
    fn subscribe(&self) -> Option<Subscription> {
        self.shared.subscribe()
    }
    fn audit(&self, org: OrgId) -> BoxFuture<'_, Result<Vec<AuditEvent>, BackendError>> {
        self.shared.audit(org)
    }
    fn lease(&self) -> Option<Arc<Lease>> {
        Some(self.lease.clone())
    }
    fn feed_seen(&self) -> Option<Seq> {
        self.shared.feed_seen()
    }
}

#[tokio::test]
async fn a_node_without_a_lease_answers_503_on_the_proxy_and_the_admin_api_until_renewed() {
    use keygate::admin::{router, AdminState};
    use keygate::gate::OrgSource;
    use keygate::token::TokenDigest;

    let c = cluster(1, 1_000).await;
    let shared = Arc::new(MemoryBackend::shared());
    let lease = Arc::new(Lease::new());
    let backend = Arc::new(Leased {
        shared: shared.clone(),
        lease: lease.clone(),
    });
    let store = Store::open(backend, Arc::new(SystemClock::new()), limits(1_000))
        .await
        .unwrap();
    let gate = KeyGate::new(
        upstream(c.forwarded.clone()),
        store.clone(),
        GateConfig::default(),
    );
    let admin = router(AdminState::new(
        store.clone(),
        TokenDigest::of("provider-secret"),
        "http://127.0.0.1:1",
        &OrgSource::Path,
    ));
    let admin_call = |path: &'static str| {
        let admin = admin.clone();
        async move {
            let req = Request::get(path)
                .header("authorization", "Bearer provider-secret")
                .body(axum::body::Body::empty())
                .unwrap();
            admin.oneshot(req).await.unwrap().status()
        }
    };

    // Never renewed: nothing is served, and the provisioning is refused too.
    assert_eq!(
        call(gate.clone(), "abcdefABCDEF").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        admin_call("/v1/orgs").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(admin_call("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
    let refused = store
        .provision(
            OrgId::parse("acme").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "CLUSTER_UNAVAILABLE");

    // Renewed: served.
    lease.extend(std::time::Instant::now() + std::time::Duration::from_secs(60));
    assert_eq!(admin_call("/readyz").await, StatusCode::OK);
    assert_eq!(admin_call("/v1/orgs").await, StatusCode::OK);
    let view = store
        .provision(
            OrgId::parse("acme").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    let key = view.state.key.unwrap().expose().to_owned();
    assert_eq!(call(gate.clone(), &key).await, StatusCode::OK);

    // Lapsed (the renewer learned the lease is gone): refused at once.
    lease.revoke();
    assert_eq!(
        call(gate.clone(), &key).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(admin_call("/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_proxy_ready_probe_answers_503_not_ready_while_the_node_has_no_lease() {
    use http_body_util::BodyExt;

    let c = cluster(1, 1_000).await;
    let lease = Arc::new(Lease::new());
    let backend = Arc::new(Leased {
        shared: Arc::new(MemoryBackend::shared()),
        lease: lease.clone(),
    });
    let store = Store::open(backend, Arc::new(SystemClock::new()), limits(1_000))
        .await
        .unwrap();
    let gate = KeyGate::new(
        upstream(c.forwarded.clone()),
        store.clone(),
        GateConfig::default(),
    );
    let probe = Ready::new(gate, store);
    let ask = || {
        let probe = probe.clone();
        async move {
            let req = Request::get("/_keygate/ready")
                .body(Full::<Bytes>::default())
                .unwrap();
            let res = probe.oneshot(req).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            (status, json)
        }
    };

    let (status, json) = ask().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json["code"], "NOT_READY");
    lease.extend(std::time::Instant::now() + std::time::Duration::from_secs(60));
    assert_eq!(ask().await.0, StatusCode::OK);
    lease.revoke();
    assert_eq!(ask().await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(c.forwarded.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn metrics_show_the_lease_the_live_nodes_and_no_feed_lag_once_a_change_returns() {
    use keygate::metrics::Metrics;

    let shared = Arc::new(MemoryBackend::shared());
    let lease = Arc::new(Lease::new());
    let backend = Arc::new(Leased {
        shared: shared.clone(),
        lease: lease.clone(),
    });
    let store = Store::open(backend, Arc::new(SystemClock::new()), limits(1_000))
        .await
        .unwrap();
    let other = Store::open(shared.clone(), Arc::new(SystemClock::new()), limits(1_000))
        .await
        .unwrap();
    let metrics = Metrics::new();
    let read = |name: &str| -> Option<f64> {
        let text = metrics.render(&store);
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("{name} is {other:?}"),
            })
    };

    assert_eq!(read("keygate_cluster_lease"), Some(0.0));
    lease.extend(std::time::Instant::now() + std::time::Duration::from_secs(60));
    lease.set_live_nodes(3);
    assert_eq!(read("keygate_cluster_lease"), Some(1.0));
    assert_eq!(read("keygate_cluster_live_nodes"), Some(3.0));
    // A change made on the other node returns once this one applied it.
    other
        .provision(
            OrgId::parse("acme").unwrap(),
            None,
            LimitOverrides::default(),
            Actor::Provider,
        )
        .await
        .unwrap();
    assert_eq!(read("keygate_cluster_feed_lag"), Some(0.0));
    assert_eq!(read("keygate_orgs"), Some(1.0));
}
