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
//! here, not in the org, so an org costs no more memory and a request no
//! more atomics), and saves the ones that changed, all in one transaction. It
//! flushes once more when keygate stops gracefully, after the last request
//! has drained, so a graceful restart loses no count.
//!
//! After a crash (`kill -9`, power loss) what is lost is what was counted
//! since the last flush that completed: per org, at most the calls it made in
//! one flush period plus the time that flush took to reach the disk. Its rate
//! limit bounds that: `burst + rate_per_sec × (count_flush_ms + fsync time) /
//! 1000` calls. Those calls can be made again after the restart, so
//! across a crash an org can get that many calls beyond its threshold. The
//! loss grows linearly with the period; the cost of a flush is one scan of
//! every org in memory plus, when anything changed, one fsynced transaction.
//!
//! Enabling a key starts its count afresh (the contract), also on disk: the
//! store clears the org's persisted window before it commits the enable,
//! holding the flusher's lock so no flush in progress can write the old
//! window back afterwards.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{BackendError, Store};
use crate::limit::Window;
use crate::org::OrgId;

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
#[derive(Debug, Default)]
pub(super) struct Flushed {
    last: HashMap<OrgId, Window>,
}

impl Flushed {
    /// Notes that `count` is on disk.
    pub(super) fn saved(&mut self, count: CallCount) {
        match count.window {
            Some(w) => {
                self.last.insert(count.org, w);
            }
            None => {
                self.last.remove(&count.org);
            }
        }
    }
}

impl Store {
    /// Persists every org's threshold window that changed since the last
    /// flush, in one write, and returns how many it wrote. On failure nothing
    /// is marked written, so the next flush tries the same windows again.
    pub async fn flush_counts(&self) -> Result<usize, BackendError> {
        let mut flushed = self.inner.counts.lock().await;
        let changed: Vec<CallCount> = self
            .inner
            .orgs
            .iter()
            .filter_map(|e| {
                let org = &e.0;
                let now = org.calls().window();
                let before = flushed.last.get(org.id_bytes()).copied();
                (now != before).then(|| CallCount {
                    org: org.id(),
                    window: now,
                })
            })
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let n = changed.len();
        self.inner.backend.save_counts(changed.clone()).await?;
        for c in changed {
            flushed.saved(c);
        }
        Ok(n)
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
                flushed.saved(c);
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
            flush(&store, " at stop").await;
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
    match store.flush_counts().await {
        Ok(0) => {}
        Ok(orgs) => tracing::debug!(orgs, "call counts persisted{when}"),
        Err(e) => tracing::error!(
            error = %e,
            "could not persist call counts{when}; the next flush tries again"
        ),
    }
}
