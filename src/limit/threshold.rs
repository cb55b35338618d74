//! The call threshold: a fixed-window counter on one atomic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::Timestamp;

/// Where a call leaves its org relative to the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// At most `threshold_calls` calls so far in this window.
    Within,
    /// This call is the first one past the threshold: the caller disables the key.
    Crossed,
    /// An earlier call already crossed the threshold in this window.
    Over,
}

/// Calls in the current window: the window's start (whole seconds since the
/// epoch) in the high 32 bits, the count in the low 32. A count of zero means no
/// window is open.
#[derive(Debug, Default)]
pub struct CallCounter(AtomicU64);

impl CallCounter {
    /// A counter with no window open.
    pub fn new() -> CallCounter {
        CallCounter::default()
    }

    /// Counts one call at `now`.
    pub fn count(&self, now: Timestamp, threshold_calls: u32, window_secs: u32) -> Count {
        self.count_opening(now, threshold_calls, window_secs).0
    }

    /// Counts one call at `now`, and tells whether it opened a new window
    /// (what the org's per-window usage figures start afresh on).
    pub fn count_opening(
        &self,
        now: Timestamp,
        threshold_calls: u32,
        window_secs: u32,
    ) -> (Count, bool) {
        // Seconds fit 32 bits until 2106.
        let now = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (start, n) = unpack(cur);
            let opened = n == 0 || u64::from(now) >= u64::from(start) + u64::from(window_secs);
            let (start, n) = if opened {
                (now, 1)
            } else {
                (start, n.saturating_add(1))
            };
            match self.0.compare_exchange_weak(
                cur,
                pack(start, n),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let count = match n.checked_sub(threshold_calls) {
                        None | Some(0) => Count::Within,
                        Some(1) => Count::Crossed,
                        Some(_) => Count::Over,
                    };
                    return (count, opened);
                }
                Err(seen) => cur = seen,
            }
        }
    }

    /// Closes the window: the next call starts a fresh count.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Release);
    }

    /// The open window, if any: what the count flusher persists. One load, so
    /// reading it costs the request path nothing.
    pub fn window(&self) -> Option<Window> {
        let (start, calls) = unpack(self.0.load(Ordering::Acquire));
        (calls > 0).then_some(Window { start, calls })
    }

    /// Reopens `window` as it was persisted before a restart, unless calls
    /// were counted since (the store resumes counters before serving, so they
    /// were not; this keeps a late resume from erasing them).
    pub fn resume(&self, window: Window) {
        let _ = self.0.compare_exchange(
            0,
            pack(window.start, window.calls),
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }
}

/// What [`CallCounter::spend`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spent {
    /// One call of the granted ones was spent; this many are left.
    Left(u32),
    /// None is left in the current window: ask the cluster for more.
    Empty,
}

/// The cluster's half: in cluster mode the same atomic holds the calls this
/// node was granted of the cluster's window and has not spent yet, counted
/// down, with the window's start as the cluster set it. A call spends one
/// ([`spend`](CallCounter::spend)); a grant adds some ([`grant`](CallCounter::grant)).
/// Never mixed with [`count`](CallCounter::count) on one counter.
impl CallCounter {
    /// Spends one granted call of the window open at `now`, if one is left.
    pub fn spend(&self, now: Timestamp, window_secs: u32) -> Spent {
        let now = now.as_secs();
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (start, left) = unpack(cur);
            if left == 0 || now >= u64::from(start) + u64::from(window_secs) {
                return Spent::Empty;
            }
            match self.0.compare_exchange_weak(
                cur,
                pack(start, left - 1),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Spent::Left(left - 1),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Adds `calls` granted of the window that started at `start`: to what
    /// is left if that window is the one held, replacing it otherwise (what
    /// was left of an older window is worth nothing now). Tells whether the
    /// grant opened a window here.
    pub fn grant(&self, start: u32, calls: u32) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (held, left) = unpack(cur);
            let next = if held == start {
                pack(start, left.saturating_add(calls))
            } else if held > start && left > 0 {
                // A newer window's grant got here first: keep it.
                return false;
            } else {
                pack(start, calls)
            };
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return held != start,
                Err(seen) => cur = seen,
            }
        }
    }

    /// Takes back every granted call not spent: the window's start and how
    /// many, if any, leaving none. What a node hands back to the cluster.
    pub fn reclaim(&self) -> Option<(u32, u32)> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (start, left) = unpack(cur);
            if left == 0 {
                return None;
            }
            match self.0.compare_exchange_weak(
                cur,
                pack(start, 0),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((start, left)),
                Err(seen) => cur = seen,
            }
        }
    }
}

/// A window's start and its count, as [`CallCounter::window`] reads it and the
/// store persists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// When the window opened: whole seconds since the Unix epoch.
    pub start: u32,
    /// Calls counted in it, at least 1.
    pub calls: u32,
}

impl Window {
    /// Whether the window has ended at `now` for a window of `window_secs`:
    /// the next call would open a new one.
    pub fn ended(&self, now: Timestamp, window_secs: u32) -> bool {
        now.as_secs() >= u64::from(self.start) + u64::from(window_secs)
    }
}

fn pack(start: u32, n: u32) -> u64 {
    (u64::from(start) << 32) | u64::from(n)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_secs(1_000);

    fn secs(s: u64) -> Timestamp {
        Timestamp::from_secs(T0.as_secs() + s)
    }

    #[test]
    fn calls_up_to_the_threshold_are_within() {
        let c = CallCounter::new();
        for _ in 0..3 {
            assert_eq!(c.count(T0, 3, 60), Count::Within);
        }
    }

    #[test]
    fn exactly_one_call_crosses_then_the_rest_are_over() {
        let c = CallCounter::new();
        for _ in 0..3 {
            c.count(T0, 3, 60);
        }
        assert_eq!(c.count(T0, 3, 60), Count::Crossed);
        assert_eq!(c.count(T0, 3, 60), Count::Over);
        assert_eq!(c.count(secs(59), 3, 60), Count::Over);
    }

    #[test]
    fn a_new_window_starts_the_count_afresh() {
        let c = CallCounter::new();
        for _ in 0..3 {
            c.count(T0, 3, 60);
        }
        assert_eq!(c.count(secs(60), 3, 60), Count::Within);
    }

    #[test]
    fn reset_starts_the_count_afresh() {
        let c = CallCounter::new();
        for _ in 0..5 {
            c.count(T0, 3, 60);
        }
        c.reset();
        assert_eq!(c.count(T0, 3, 60), Count::Within);
    }

    #[test]
    fn a_resumed_window_keeps_counting_where_it_stopped() {
        let c = CallCounter::new();
        c.resume(Window {
            start: 1_000,
            calls: 3,
        });
        assert_eq!(c.count(secs(10), 3, 60), Count::Crossed);
        assert_eq!(
            c.window(),
            Some(Window {
                start: 1_000,
                calls: 4
            })
        );
    }

    #[test]
    fn a_resumed_window_that_has_ended_opens_a_new_one_at_the_next_call() {
        let c = CallCounter::new();
        let w = Window {
            start: 1_000,
            calls: 3,
        };
        assert!(w.ended(secs(60), 60));
        c.resume(w);
        assert_eq!(c.count(secs(60), 3, 60), Count::Within);
        assert_eq!(
            c.window(),
            Some(Window {
                start: 1_060,
                calls: 1
            })
        );
    }

    #[test]
    fn resume_never_overwrites_calls_already_counted() {
        let c = CallCounter::new();
        c.count(T0, 3, 60);
        c.resume(Window {
            start: 900,
            calls: 2,
        });
        assert_eq!(
            c.window(),
            Some(Window {
                start: 1_000,
                calls: 1
            })
        );
    }

    #[test]
    fn a_counter_without_calls_has_no_window() {
        let c = CallCounter::new();
        assert_eq!(c.window(), None);
        c.count(T0, 3, 60);
        c.reset();
        assert_eq!(c.window(), None);
    }

    #[test]
    fn granted_calls_are_spent_one_at_a_time_and_then_empty() {
        let c = CallCounter::new();
        assert_eq!(c.spend(T0, 60), Spent::Empty);
        c.grant(1_000, 2);
        assert_eq!(c.spend(T0, 60), Spent::Left(1));
        assert_eq!(c.spend(secs(59), 60), Spent::Left(0));
        assert_eq!(c.spend(secs(59), 60), Spent::Empty);
    }

    #[test]
    fn a_grant_of_an_ended_window_is_worth_nothing() {
        let c = CallCounter::new();
        c.grant(1_000, 5);
        assert_eq!(c.spend(secs(60), 60), Spent::Empty);
    }

    #[test]
    fn grants_of_one_window_add_up_and_a_newer_window_replaces_them() {
        let c = CallCounter::new();
        c.grant(1_000, 2);
        c.grant(1_000, 3);
        assert_eq!(c.reclaim(), Some((1_000, 5)));
        assert_eq!(c.reclaim(), None);
        c.grant(1_000, 2);
        c.grant(1_060, 1);
        assert_eq!(c.reclaim(), Some((1_060, 1)));
        // An older window's grant arriving late does not replace a newer one.
        c.grant(1_060, 1);
        c.grant(1_000, 9);
        assert_eq!(c.reclaim(), Some((1_060, 1)));
    }

    #[test]
    fn concurrent_spenders_spend_each_granted_call_once() {
        let c = std::sync::Arc::new(CallCounter::new());
        c.grant(1_000, 2_000);
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| matches!(c.spend(T0, 60), Spent::Left(_)))
                        .count()
                })
            })
            .collect();
        let spent: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(spent, 2_000);
    }

    #[test]
    fn concurrent_calls_cross_exactly_once() {
        let c = std::sync::Arc::new(CallCounter::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    (0..1000).map(|_| c.count(T0, 2000, 60)).collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Count> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.iter().filter(|c| **c == Count::Within).count(), 2000);
        assert_eq!(all.iter().filter(|c| **c == Count::Crossed).count(), 1);
        assert_eq!(all.iter().filter(|c| **c == Count::Over).count(), 1999);
    }
}
