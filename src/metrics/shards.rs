//! Counters and histograms that many threads add to without sharing a cache
//! line: each thread adds to one of [`SHARDS`] padded shards, and a scrape
//! sums them. No lock and no allocation when counting.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many shards each figure is split over: more than the cores keygate
/// usually runs on, few enough that a scrape's sum is trivial.
pub(crate) const SHARDS: usize = 16;

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard, dealt round robin on first use.
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's shard index.
#[inline]
pub(crate) fn shard() -> usize {
    SHARD.with(|s| {
        let i = s.get();
        if i != usize::MAX {
            return i;
        }
        let i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
        s.set(i);
        i
    })
}

/// `N` counters in one shard, on their own cache lines.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Padded<const N: usize>(pub(crate) [AtomicU64; N]);

impl<const N: usize> Default for Padded<N> {
    fn default() -> Self {
        Padded(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// `N` counters, sharded.
#[derive(Debug)]
pub(crate) struct Counters<const N: usize> {
    shards: Box<[Padded<N>]>,
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Counters {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

impl<const N: usize> Counters<N> {
    /// Adds `n` to counter `i` (ignored when out of range).
    #[inline]
    pub(crate) fn add(&self, i: usize, n: u64) {
        if let Some(c) = self.shards[shard() % self.shards.len()].0.get(i) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counter `i`, summed over the shards.
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.get(i).map_or(0, |c| c.load(Ordering::Relaxed)))
            .fold(0u64, u64::wrapping_add)
    }
}

/// A histogram of durations with fixed upper bounds in microseconds:
/// `B` buckets (the last one +Inf), then the sum of microseconds.
#[derive(Debug)]
pub(crate) struct Histogram<const N: usize> {
    /// Upper bounds in microseconds, ascending; one fewer than the buckets.
    bounds: &'static [u64],
    /// Per bucket (not cumulative), then the sum at index `bounds.len() + 1`.
    counts: Counters<N>,
}

impl<const N: usize> Histogram<N> {
    /// A histogram over `bounds`; `N` must be `bounds.len() + 2`.
    pub(crate) fn new(bounds: &'static [u64]) -> Self {
        debug_assert_eq!(N, bounds.len() + 2);
        Histogram {
            bounds,
            counts: Counters::default(),
        }
    }

    /// Records one observation of `micros`.
    #[inline]
    pub(crate) fn observe(&self, micros: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(self.bounds.len());
        self.counts.add(bucket, 1);
        self.counts.add(self.bounds.len() + 1, micros);
    }

    /// Writes the histogram's lines for `name`.
    pub(crate) fn render(&self, name: &str, labels: &str, out: &mut String) {
        use std::fmt::Write;
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.counts.get(i);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                seconds(*b)
            );
        }
        cumulative += self.counts.get(self.bounds.len());
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.counts.get(self.bounds.len() + 1);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", seconds(sum));
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Microseconds as seconds, in decimal.
pub(crate) fn seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_added_on_many_threads_sum_to_the_total() {
        let c = std::sync::Arc::new(Counters::<2>::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(1, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((c.get(0), c.get(1)), (0, 8000));
    }

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        static BOUNDS: [u64; 2] = [10, 100];
        let h = Histogram::<4>::new(&BOUNDS);
        for us in [5, 10, 50, 1000] {
            h.observe(us);
        }
        let mut out = String::new();
        h.render("x", "", &mut out);
        assert_eq!(
            out,
            "x_bucket{le=\"0.000010\"} 2\nx_bucket{le=\"0.000100\"} 3\nx_bucket{le=\"+Inf\"} 4\n\
             x_sum 0.001065\nx_count 4\n"
        );
    }
}
