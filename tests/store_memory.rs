//! Opening a store again and again does not grow the heap: every org id a
//! store keeps is freed with it; and the gate allocates, per allowed
//! request, only what `http` forces on it: nothing in header mode (the
//! `x-org-id` value is the request's own), two in path mode (the new path's
//! buffer, which holds the id too, and the count that shares it). A counting
//! global allocator measures the bytes live on the heap; this binary holds
//! one test so that nothing else allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use keygate::clock::ManualClock;
use keygate::gate::{GateConfig, KeyGate, OrgSource, X_ORG_ID};
use keygate::org::{Actor, LimitOverrides, Limits, OrgId};
use keygate::store::{MemoryBackend, Store};
use tower::{Service, ServiceExt};

/// The system allocator, counting the bytes it has handed out and not got back.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Calls to `alloc`, `alloc_zeroed` and `realloc`.
static ALLOCS: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed to `System` unchanged; the counter only
// observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::SeqCst);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::SeqCst);
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::SeqCst);
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::SeqCst);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ORGS: usize = 1_000;
const OPENS: usize = 50;

async fn open(backend: &Arc<MemoryBackend>) -> Store {
    let store = Store::open(
        backend.clone(),
        Arc::new(ManualClock::default()),
        Limits::default(),
    )
    .await
    .unwrap();
    assert_eq!(store.len(), ORGS);
    store
}

#[test]
fn opening_a_store_50_times_leaves_the_heap_as_it_was_and_the_gate_allocates_only_what_http_forces()
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let backend = Arc::new(MemoryBackend::new());
        let store = Store::open(
            backend.clone(),
            Arc::new(ManualClock::default()),
            Limits::default(),
        )
        .await
        .unwrap();
        for i in 0..ORGS {
            let id = OrgId::parse(&format!("memory-org-{i:04}")).unwrap();
            store
                .provision(id, None, LimitOverrides::default(), Actor::Provider)
                .await
                .unwrap();
        }
        drop(store);
        // Whatever the first opens allocate once and keep (thread locals,
        // the runtime's own structures) is not a store's.
        for _ in 0..3 {
            drop(open(&backend).await);
        }

        let before = LIVE.load(Ordering::SeqCst);
        let mut held = 0;
        for _ in 0..OPENS {
            let store = open(&backend).await;
            // The ids were really kept: the request path reads them.
            let org = store.get(b"memory-org-0042").unwrap();
            assert_eq!(org.id_str(), "memory-org-0042");
            held = held.max(LIVE.load(Ordering::SeqCst) - before);
            drop(org);
            drop(store);
        }
        let after = LIVE.load(Ordering::SeqCst);

        // What the gate allocates for each allowed request, the requests
        // built before counting, with `org_extension` off (as keygate's
        // own proxy runs).
        let clock = Arc::new(ManualClock::default());
        let store = Store::open(backend.clone(), clock.clone(), Limits::default())
            .await
            .unwrap();
        let key = "Ab3dEf6hIj9k";
        store
            .edit("memory-org-0042", key, Actor::Provider)
            .await
            .unwrap();
        for (source, uri, want) in [
            (OrgSource::Path, "/memory-org-0042/v1/users?x=1", 2),
            (OrgSource::Header(X_ORG_ID), "/v1/users?x=1", 0),
        ] {
            let config = GateConfig {
                org_from: source,
                org_extension: false,
                ..GateConfig::default()
            };
            let upstream = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
                // What the service behind the gate is given.
                assert_eq!(req.headers()[X_ORG_ID], "memory-org-0042");
                assert_eq!(req.uri(), "/v1/users?x=1");
                assert!(req.headers().get("x-api-key").is_none());
                Ok::<_, std::convert::Infallible>(Response::new(()))
            });
            let mut gate = KeyGate::new(upstream, store.clone(), config);
            // Header values as hyper makes them: slices of the connection's
            // read buffer, which clone with a reference count.
            let read_buffer = Bytes::from(b"memory-org-0042".to_vec());
            let requests: Vec<Request<Empty<Bytes>>> = (0..1_000)
                .map(|_| {
                    let org = HeaderValue::from_maybe_shared(read_buffer.slice(..)).unwrap();
                    Request::get(uri)
                        .header("x-api-key", key)
                        .header(X_ORG_ID, org)
                        .body(Empty::new())
                        .unwrap()
                })
                .collect();
            let allocs = ALLOCS.load(Ordering::SeqCst);
            for req in requests {
                // A second between calls: the org's rate (100 a second) is
                // not what this counts.
                clock.advance(std::time::Duration::from_secs(1));
                let res = gate.ready().await.unwrap().call(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
            }
            let per_request = (ALLOCS.load(Ordering::SeqCst) - allocs) as f64 / 1_000.0;
            assert_eq!(per_request, f64::from(want), "{uri}");
        }

        // An open store holds its orgs (about 200 bytes each): the count sees it.
        assert!(
            held > (ORGS * 100) as isize,
            "an open store held only {held} bytes"
        );
        // Interned ids (15 bytes each) would have grown the heap by at least
        // 15 * 1,000 * 50 = 750,000 bytes.
        assert!(
            after - before <= 1024,
            "the heap grew by {} bytes over {OPENS} opens of {ORGS} orgs",
            after - before
        );
    });
}
