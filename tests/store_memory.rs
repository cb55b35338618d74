//! Opening a store again and again does not grow the heap: every org id a
//! store keeps is freed with it; and the request path's copy of an org's id
//! (its `x-org-id` header value) allocates nothing. A counting global
//! allocator measures the bytes live on the heap; this binary holds one test
//! so that nothing else allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use keygate::clock::ManualClock;
use keygate::org::{Actor, LimitOverrides, Limits, OrgId};
use keygate::store::{MemoryBackend, Store};

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
fn opening_a_store_50_times_leaves_the_heap_as_it_was_and_an_ids_header_value_allocates_nothing() {
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
            assert_eq!(org.id().header_value(), "memory-org-0042");
            held = held.max(LIVE.load(Ordering::SeqCst) - before);
            drop(org);
            drop(store);
        }
        let after = LIVE.load(Ordering::SeqCst);

        // What the gate does for every admitted request: the org's id as a
        // header value, cloned into the forwarded request, then dropped.
        let store = open(&backend).await;
        let org = store.get(b"memory-org-0042").unwrap();
        let allocs = ALLOCS.load(Ordering::SeqCst);
        for _ in 0..1_000 {
            let id = org.id();
            let value = id.header_value().clone();
            assert_eq!(value.len(), "memory-org-0042".len());
        }
        assert_eq!(ALLOCS.load(Ordering::SeqCst) - allocs, 0, "allocations");

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
