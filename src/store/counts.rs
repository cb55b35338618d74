//! Call counts across restarts: the counter seam and the flusher.
//!
//! Each org's threshold window ([`CallCounter`](crate::limit::CallCounter):
//! start and count in one atomic) lives in memory, where the gate counts it
//! without a lock or a write. So that a restart does not open a fresh window
//! (and let a client through up to `threshold_calls` more calls per restart),
//! the windows are persisted through two methods of the [`Backend`] seam:
//! [`Backend::save_counts`] writes a batch of [`CallCount`]s in one durable
//! write, and [`Backend::load_counts`] reads them back when the store opens.
//! The redb backend keeps them in its `counts` table; cluster mode will keep
//! them in Redis through the same two methods.
//!
//! The request path does not change: the [`CountFlusher`] task wakes every
//! `store.count_flush_ms`, reads every org's counter (one atomic load each),
//! compares it with the window it last persisted for that org (remembered
//! here, not in the org, so a request pays no more atomics and the org's
//! record stays its size; 16 bytes per org with a saved window, plus the hash
//! table's slack), and saves the ones that changed, all in one transaction. It
//! flushes once more when keygate stops gracefully, after the last request
//! has drained, so a graceful restart loses no count.
//!
//! After a crash (`kill -9`, power loss) what is lost is what was counted
//! since the last flush that completed: per org, at most the calls it made in
//! one flush period plus the time the next flush took to reach the disk. Its
//! rate limit bounds that: `burst + rate_per_sec × (count_flush_ms + save
//! time) / 1000` calls, the save time being one fsync plus writing the
//! windows that changed (it grows with how many orgs were called in the
//! period). Those calls can be made again after the restart, so across a
//! crash an org can get that many calls beyond its threshold. The loss grows
//! linearly with the period; the cost of a flush is one scan of every org in
//! memory plus, when anything changed, one fsynced transaction.
//!
//! A window's start is wall-clock seconds, as the counter keeps it. Within a
//! run keygate's clock never steps back, but across a restart it starts
//! again from the system's: a system clock set forward meanwhile can end a
//! saved window early, one set back makes it last longer.
//!
//! Enabling a key starts its count afresh (the contract), also on disk: the
//! store clears the org's persisted window before it commits the enable,
//! holding the flusher's lock so no flush in progress can write the old
//! window back afterwards.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BackendError, OrgRef, Store};
use crate::limit::Window;
use crate::org::{Org, OrgId};

/// One org's threshold window, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCount {
    /// The org.
    pub org: OrgId,
    /// Its open window, or `None` to clear what was persisted (the key was
    /// enabled and counts afresh).
    pub window: Option<Window>,
}

/// What the flusher last persisted, per org with a window on disk.
///
/// Keyed by the address of the org's record, not its id: 16 bytes an entry
/// where an `OrgId` key would take 48, and only orgs with a saved window have
/// one. An address names one id for the life of the store (a record is
/// never moved or given to another id: `store/table.rs`); removing an org
/// forgets it here, under this lock, so the id provisioned again starts
/// afresh.
#[derive(Debug, Default)]
pub(super) struct Flushed {
    last: HashMap<usize, Window>,
}

impl Flushed {
    /// Notes that `window` is what is on disk for `org`.
    pub(super) fn saved(&mut self, org: &Org, window: Option<Window>) {
        let at = address(org);
        match window {
            Some(w) => {
                self.last.insert(at, w);
            }
            None => {
                self.last.remove(&at);
            }
        }
    }

    fn last(&self, org: &Org) -> Option<Window> {
        self.last.get(&address(org)).copied()
    }
}

fn address(org: &Org) -> usize {
    std::ptr::from_ref(org) as usize
}

impl Store {
    /// Persists every org's threshold window that changed since the last
    /// flush, in one write, and returns how many it wrote. On failure nothing
    /// is marked written, so the next flush tries the same windows again.
    pub async fn flush_counts(&self) -> Result<usize, BackendError> {
        self.flush_counts_summed().await.map(|(orgs, _)| orgs)
    }

    /// [`flush_counts`](Store::flush_counts), also summing the calls of the
    /// windows written, for the log line that tests wait for.
    async fn flush_counts_summed(&self) -> Result<(usize, u64), BackendError> {
        if self.inner.shares_calls {
            return self.hand_back(false).await;
        }
        let mut flushed = self.inner.counts.lock().await;
        // One load per org; an org is only cloned out when its window changed.
        let (orgs, changed): (Vec<OrgRef>, Vec<CallCount>) = self
            .inner
            .orgs
            .iter()
            .filter_map(|org| {
                // An org without a window has nothing saved: a window goes
                // back to none only by an enable, which forgets it here. So
                // an org never called costs one load and no lookup.
                let now = Some(org.calls().window()?);
                (now != flushed.last(&org)).then(|| {
                    let count = CallCount {
                        org: org.id(),
                        window: now,
                    };
                    (self.hold(org), count)
                })
            })
            .unzip();
        if changed.is_empty() {
            return Ok((0, 0));
        }
        let calls = changed
            .iter()
            .filter_map(|c| c.window)
            .map(|w| u64::from(w.calls))
            .sum();
        let windows: Vec<Option<Window>> = changed.iter().map(|c| c.window).collect();
        self.inner.backend.save_counts(changed).await?;
        for (org, window) in orgs.iter().zip(windows) {
            flushed.saved(org, window);
        }
        Ok((orgs.len(), calls))
    }

    /// Cluster mode's flush: the counts are the cluster's, so nothing is
    /// saved, but calls this node was granted and has left unspent for a
    /// whole period are handed back (every one, when `all`: at a graceful
    /// stop), so that an org's traffic moving to other nodes does not leave
    /// part of its threshold stranded here (and fire the threshold early).
    /// Returns the orgs and calls handed back.
    async fn hand_back(&self, all: bool) -> Result<(usize, u64), BackendError> {
        let mut seen = self.inner.counts.lock().await;
        let mut idle = Vec::new();
        for org in self.inner.orgs.iter() {
            // In cluster mode a window is the granted calls left unspent.
            let Some(now) = org.calls().window() else {
                continue;
            };
            if all || seen.last(&org) == Some(now) {
                idle.push(self.hold(org));
            } else {
                seen.saved(&org, Some(now));
            }
        }
        let (mut orgs, mut calls) = (0, 0);
        for org in idle {
            seen.saved(&org, None);
            let handed = self.hand_back_org(&org).await?;
            if handed > 0 {
                orgs += 1;
                calls += u64::from(handed);
            }
        }
        Ok((orgs, calls))
    }

    /// Resumes the windows `counts` persisted, before the store serves.
    /// A window that has ended is resumed too: the next call opens a new one,
    /// exactly as it would have without the restart.
    pub(super) fn resume_counts(&self, counts: Vec<CallCount>, flushed: &mut Flushed) {
        for c in counts {
            let Some(window) = c.window else { continue };
            // keygate never removes an org, so a row without one is a row
            // about nothing; it is left alone.
            if let Some(org) = self.get(c.org.as_bytes()) {
                org.calls().resume(window);
                flushed.saved(&org, Some(window));
            }
        }
    }
}

/// The task that persists call counts every period and once more at stop.
#[derive(Debug)]
pub struct CountFlusher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl CountFlusher {
    /// Starts flushing `store`'s counts every `period` on the current runtime.
    pub fn spawn(store: Store, period: Duration) -> CountFlusher {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is immediate; there is nothing to flush yet.
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => flush(&store, "").await,
                    // A send of `true` or a dropped sender: stop either way.
                    _ = stopped.changed() => break,
                }
            }
            if store.shares_calls() {
                // A node that stops keeps nothing: every unspent call goes back.
                match store.hand_back(true).await {
                    Ok((0, _)) => {}
                    Ok((orgs, calls)) => tracing::debug!(
                        orgs,
                        calls,
                        "unspent calls handed back to the cluster at stop"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not hand back unspent calls at stop")
                    }
                }
            } else {
                flush(&store, " at stop").await;
            }
        });
        CountFlusher { stop, task }
    }

    /// Flushes once more and stops. Call it after the last request drained,
    /// so every count is in the flush.
    pub async fn stop(self) {
        // The receiver lives as long as the task; if it is gone, so is the
        // task, and the join below says why.
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the call count flusher failed");
        }
    }
}

async fn flush(store: &Store, when: &str) {
    match store.flush_counts_summed().await {
        Ok((0, _)) => {}
        Ok((orgs, calls)) if store.shares_calls() => {
            tracing::debug!(
                orgs,
                calls,
                "unspent calls handed back to the cluster{when}"
            )
        }
        // `calls`: the calls counted in the windows written, summed.
        Ok((orgs, calls)) => tracing::debug!(orgs, calls, "call counts persisted{when}"),
        Err(e) => tracing::error!(
            error = %e,
            "could not persist call counts{when}; the next flush tries again"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tempfile::TempDir;

    use super::*;
    use crate::clock::{Clock, ManualClock, Timestamp};
    use crate::limit::Count;
    use crate::org::{Actor, LimitOverrides, Limits};
    use crate::store::{Backend, MemoryBackend, RedbBackend};

    const T0: Timestamp = Timestamp::from_secs(1_800_000_000);
    const WINDOW_SECS: u32 = 3_600;

    fn acme() -> OrgId {
        OrgId::parse("acme").unwrap()
    }

    fn window(calls: u32) -> Window {
        Window {
            start: u32::try_from(T0.as_secs()).unwrap(),
            calls,
        }
    }

    struct Fixture {
        store: Store,
        backend: Arc<dyn Backend>,
        clock: Arc<ManualClock>,
    }

    impl Fixture {
        async fn over(backend: Arc<dyn Backend>) -> Fixture {
            let clock = Arc::new(ManualClock::new(T0));
            let store = Store::open(backend.clone(), clock.clone(), Limits::default())
                .await
                .unwrap();
            store
                .provision(acme(), None, LimitOverrides::default(), Actor::Provider)
                .await
                .unwrap();
            Fixture {
                store,
                backend,
                clock,
            }
        }

        /// Counts `n` calls of acme against a threshold of 10 and returns the last outcome.
        fn call(&self, store: &Store, n: usize) -> Count {
            let org = store.get(b"acme").unwrap();
            let mut last = Count::Within;
            for _ in 0..n {
                last = org.calls().count(self.clock.now(), 10, WINDOW_SECS);
            }
            last
        }

        /// The store as a restart finds it.
        async fn restart(&self) -> Store {
            Store::open(self.backend.clone(), self.clock.clone(), Limits::default())
                .await
                .unwrap()
        }

        fn window_of(&self, store: &Store) -> Option<Window> {
            store.get(b"acme").unwrap().calls().window()
        }
    }

    async fn on_memory() -> (Fixture, Arc<MemoryBackend>) {
        let memory = Arc::new(MemoryBackend::new());
        (Fixture::over(memory.clone()).await, memory)
    }

    #[tokio::test]
    async fn a_flush_saves_only_the_windows_that_changed_since_the_last() {
        let (f, memory) = on_memory().await;
        assert_eq!(f.store.flush_counts().await, Ok(0));
        f.call(&f.store, 3);
        assert_eq!(f.store.flush_counts().await, Ok(1));
        assert_eq!(memory.count_of(&acme()), Some(window(3)));
        assert_eq!(f.store.flush_counts().await, Ok(0));
        f.call(&f.store, 1);
        assert_eq!(f.store.flush_counts().await, Ok(1));
        assert_eq!(memory.count_of(&acme()), Some(window(4)));
    }

    #[tokio::test]
    async fn a_restart_resumes_the_window_and_loses_only_what_was_counted_after_the_last_flush() {
        let (f, _) = on_memory().await;
        f.call(&f.store, 6);
        f.store.flush_counts().await.unwrap();
        // Counted, never flushed: what a crash now loses.
        f.call(&f.store, 2);
        let after = f.restart().await;
        assert_eq!(f.window_of(&after), Some(window(6)));
        // 4 more calls are within the threshold of 10; the 5th crosses it.
        assert_eq!(f.call(&after, 4), Count::Within);
        assert_eq!(f.call(&after, 1), Count::Crossed);
    }

    #[tokio::test]
    async fn a_resumed_store_flushes_nothing_until_a_count_changes() {
        let (f, _) = on_memory().await;
        f.call(&f.store, 2);
        f.store.flush_counts().await.unwrap();
        let after = f.restart().await;
        assert_eq!(after.flush_counts().await, Ok(0));
        f.call(&after, 1);
        assert_eq!(after.flush_counts().await, Ok(1));
    }

    #[tokio::test]
    async fn a_window_that_ended_before_the_restart_does_not_count_against_the_next() {
        let (f, _) = on_memory().await;
        f.call(&f.store, 9);
        f.store.flush_counts().await.unwrap();
        f.clock
            .advance(std::time::Duration::from_secs(u64::from(WINDOW_SECS)));
        let after = f.restart().await;
        assert_eq!(f.call(&after, 10), Count::Within);
        assert_eq!(f.call(&after, 1), Count::Crossed);
    }

    #[tokio::test]
    async fn enabling_clears_the_saved_window_so_a_restart_counts_afresh() {
        let (f, memory) = on_memory().await;
        assert_eq!(f.call(&f.store, 11), Count::Crossed);
        f.store.flush_counts().await.unwrap();
        f.store.disable("acme", "x", Actor::Provider).await.unwrap();
        f.store.enable("acme", Actor::Provider).await.unwrap();
        // Cleared by the enable itself, not by a later flush.
        assert_eq!(memory.count_of(&acme()), None);
        assert_eq!(f.store.flush_counts().await, Ok(0));
        let after = f.restart().await;
        assert_eq!(f.window_of(&after), None);
        assert_eq!(f.call(&after, 10), Count::Within);
    }

    #[tokio::test]
    async fn a_failed_flush_is_tried_again_by_the_next() {
        let (f, memory) = on_memory().await;
        f.call(&f.store, 3);
        memory.fail_commits(true);
        assert!(f.store.flush_counts().await.is_err());
        memory.fail_commits(false);
        assert_eq!(f.store.flush_counts().await, Ok(1));
        assert_eq!(memory.count_of(&acme()), Some(window(3)));
    }

    #[tokio::test]
    async fn an_enable_that_fails_leaves_the_window_to_be_saved_again() {
        let (f, memory) = on_memory().await;
        f.call(&f.store, 11);
        f.store.flush_counts().await.unwrap();
        f.store.disable("acme", "x", Actor::Provider).await.unwrap();
        memory.fail_commits(true);
        assert!(f.store.enable("acme", Actor::Provider).await.is_err());
        memory.fail_commits(false);
        assert_eq!(memory.count_of(&acme()), Some(window(11)));
        assert_eq!(f.window_of(&f.store), Some(window(11)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_flusher_saves_every_period_and_once_more_at_stop() {
        let (f, memory) = on_memory().await;
        let period = std::time::Duration::from_millis(1_000);
        let flusher = CountFlusher::spawn(f.store.clone(), period);
        f.call(&f.store, 2);
        tokio::time::sleep(period / 2).await;
        assert_eq!(memory.count_of(&acme()), None);
        tokio::time::sleep(period).await;
        assert_eq!(memory.count_of(&acme()), Some(window(2)));
        f.call(&f.store, 3);
        flusher.stop().await;
        assert_eq!(memory.count_of(&acme()), Some(window(5)));
    }

    #[tokio::test]
    async fn redb_keeps_saved_windows_across_a_reopen_and_removes_cleared_ones() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("keygate.redb");
        let globex = OrgId::parse("globex").unwrap();
        {
            let backend = RedbBackend::open(&path).unwrap();
            backend
                .save_counts(vec![
                    CallCount {
                        org: acme(),
                        window: Some(window(7)),
                    },
                    CallCount {
                        org: globex.clone(),
                        window: Some(window(1)),
                    },
                ])
                .await
                .unwrap();
            backend
                .save_counts(vec![CallCount {
                    org: globex,
                    window: None,
                }])
                .await
                .unwrap();
        }
        let backend = RedbBackend::open(&path).unwrap();
        assert_eq!(
            backend.load_counts().await.unwrap(),
            vec![CallCount {
                org: acme(),
                window: Some(window(7)),
            }]
        );
    }

    #[tokio::test]
    async fn a_redb_store_written_before_the_counts_table_opens_and_gains_it_at_the_first_flush() {
        let dir = TempDir::new().unwrap();
        let path = dir.path().join("keygate.redb");
        {
            let backend = RedbBackend::open(&path).unwrap();
            let txn = backend.database().begin_write().unwrap();
            assert!(txn.delete_table(super::super::redb::COUNTS).unwrap());
            txn.commit().unwrap();
        }
        let backend: Arc<dyn Backend> = Arc::new(RedbBackend::open(&path).unwrap());
        assert_eq!(backend.load_counts().await.unwrap(), vec![]);
        let f = Fixture::over(backend).await;
        f.call(&f.store, 4);
        assert_eq!(f.store.flush_counts().await, Ok(1));
        let after = f.restart().await;
        assert_eq!(f.window_of(&after), Some(window(4)));
    }
}
