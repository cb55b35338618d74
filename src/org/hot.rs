//! What a request reads of an org's state, and the seqlock it is read from.
//!
//! Every request of an org reads its key, its status, its subscription's
//! end, its limits and its generation. Behind a lock, each of those reads
//! would write the lock's word, and the cores serving one busy org would
//! pass that cache line between them on every call. [`HotCell`] holds them
//! as plain atomics under a sequence number instead (a seqlock, as
//! crossbeam's `AtomicCell` and the Linux kernel's `seqcount_t` do): a reader
//! loads the number, the fields, and the number again, and retries if a
//! writer came between. Every access is an atomic one, so there is nothing
//! `unsafe`, and a torn read is never used, only retried.
//!
//! Writers are serialized by the org's writer lock ([`Org`](super::Org)), so a
//! writer never meets another; a reader that holds that lock reads a stable
//! value the first time.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::clock::Timestamp;
use crate::key::ApiKey;
use crate::limit::Rate;

use super::Limits;

/// `Hot::flags`: the org has a key.
const HAS_KEY: u8 = 1;
/// `Hot::flags`: the key is disabled.
const DISABLED: u8 = 2;
/// `Hot::flags`: the subscription has an end.
const EXPIRES: u8 = 4;

/// Stands in `Hot::key` when the org has none; never compared or shown.
const NO_KEY: ApiKey = ApiKey::placeholder();

/// What a request needs of an org's state in force, with its limits
/// precomputed, so a request does no division. A copy: see [`Org::hot`](super::Org::hot).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hot {
    /// The org's rate, over the default limits.
    pub(crate) rate: Rate,
    /// Calls per threshold window, over the default limits.
    pub(crate) threshold_calls: u32,
    /// The threshold window, seconds, over the default limits.
    pub(crate) threshold_window_secs: u32,
    /// [`OrgState::generation`](super::OrgState::generation): what a session
    /// was born with, so a key change ends it.
    pub(crate) generation: u64,
    /// The key, meaningful only with [`HAS_KEY`] in `flags`.
    key: ApiKey,
    /// [`HAS_KEY`], [`DISABLED`] and [`EXPIRES`].
    flags: u8,
    /// When the subscription ends, meaningful only with [`EXPIRES`] in
    /// `flags` (every `u64` is a time, so "never" needs the flag).
    subscription_ends: Timestamp,
}

impl Hot {
    /// The hot part of a state: its key, whether the key is disabled, when
    /// its subscription ends, its `limits` over the defaults and its generation.
    pub(crate) fn new(
        key: Option<ApiKey>,
        disabled: bool,
        subscription_ends: Option<Timestamp>,
        limits: &Limits,
        generation: u64,
    ) -> Hot {
        let flags = if key.is_some() { HAS_KEY } else { 0 }
            | if disabled { DISABLED } else { 0 }
            | if subscription_ends.is_some() {
                EXPIRES
            } else {
                0
            };
        Hot {
            key: key.unwrap_or(NO_KEY),
            flags,
            subscription_ends: subscription_ends.unwrap_or_default(),
            generation,
            rate: Rate::new(limits.rate_per_sec, limits.burst),
            threshold_calls: limits.threshold_calls,
            threshold_window_secs: limits.threshold_window_secs,
        }
    }

    /// The same, with `limits` in force.
    pub(crate) fn with_limits(self, limits: &Limits) -> Hot {
        Hot {
            rate: Rate::new(limits.rate_per_sec, limits.burst),
            threshold_calls: limits.threshold_calls,
            threshold_window_secs: limits.threshold_window_secs,
            ..self
        }
    }

    /// The org's key, if it has one.
    #[inline]
    pub(crate) fn key(&self) -> Option<&ApiKey> {
        (self.flags & HAS_KEY != 0).then_some(&self.key)
    }

    /// Whether the key is disabled.
    #[inline]
    pub(crate) fn is_disabled(&self) -> bool {
        self.flags & DISABLED != 0
    }

    /// When the subscription ends, if it does.
    pub(crate) fn subscription_ends(&self) -> Option<Timestamp> {
        (self.flags & EXPIRES != 0).then_some(self.subscription_ends)
    }

    /// Whether the subscription has ended at `now`.
    #[inline]
    pub(crate) fn subscription_expired(&self, now: Timestamp) -> bool {
        self.flags & EXPIRES != 0 && now >= self.subscription_ends
    }

    /// The words [`HotCell`] holds after its first, and the half of the
    /// first that is not the sequence number: the key's last four bytes.
    ///
    /// The rate goes as its emission interval and its burst rather than as
    /// [`Rate`]'s two `u64`s: the emission interval is at most a second in
    /// nanoseconds (30 bits) and the burst at most [`max::BURST`](super::limits_max::BURST)
    /// (24 bits), which leaves a byte beside the burst for the flags.
    fn to_words(self) -> (u32, [u64; WORDS]) {
        let (k0, k1) = self.key.words();
        let (emission, tolerance) = self.rate.to_parts();
        // Both within range for every rate `Rate::new` makes (see above);
        // saturated rather than wrapped all the same.
        let emission = u32::try_from(emission).unwrap_or(u32::MAX);
        let burst = tolerance / u64::from(emission.max(1));
        debug_assert!(burst <= BURST_MASK, "a burst within max::BURST");
        let burst = burst.min(BURST_MASK);
        (
            k1,
            [
                k0,
                self.subscription_ends.as_nanos(),
                u64::from(emission) | (burst | u64::from(self.flags) << 24) << 32,
                u64::from(self.threshold_calls) | u64::from(self.threshold_window_secs) << 32,
                self.generation,
            ],
        )
    }

    /// The value whose [`to_words`](Hot::to_words) these are.
    fn from_words(k1: u32, w: [u64; WORDS]) -> Hot {
        // The `as` casts take the parts that `to_words` put there.
        let emission = u64::from(w[2] as u32);
        let burst = (w[2] >> 32) & BURST_MASK;
        Hot {
            key: ApiKey::from_words(w[0], k1),
            flags: (w[2] >> 56) as u8,
            subscription_ends: Timestamp::from_nanos(w[1]),
            rate: Rate::from_parts(emission, emission * burst),
            threshold_calls: w[3] as u32,
            threshold_window_secs: (w[3] >> 32) as u32,
            generation: w[4],
        }
    }
}

/// The burst's 24 bits in its word.
const BURST_MASK: u64 = (1 << 24) - 1;

/// How many words a [`Hot`] takes besides the first.
const WORDS: usize = 5;

/// A [`Hot`] behind a sequence number: 48 bytes, read without writing.
#[derive(Debug)]
pub(crate) struct HotCell {
    /// The sequence number in the low half, even while the words are whole
    /// and odd while a writer is writing them; the key's last four bytes in
    /// the high half (a word of their own would make the org's record 8
    /// bytes larger, and with it every org's allocation 16).
    seq: AtomicU64,
    words: [AtomicU64; WORDS],
}

impl HotCell {
    /// A cell holding `hot`.
    pub(crate) fn new(hot: Hot) -> HotCell {
        let (k1, words) = hot.to_words();
        HotCell {
            seq: AtomicU64::new(u64::from(k1) << 32),
            words: words.map(AtomicU64::new),
        }
    }

    /// A consistent copy: the words as one writer left them. Spins while a
    /// writer is between its two stores of `seq` (a few nanoseconds: it
    /// writes six words) or retries when one came between the loads.
    #[inline]
    pub(crate) fn load(&self) -> Hot {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let words = std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed));
                // Orders the words' loads before the second load of `seq`.
                fence(Ordering::Acquire);
                // The same number means no writer came between; the high
                // half, written with the closing number, is part of the value.
                if self.seq.load(Ordering::Relaxed) == before {
                    return Hot::from_words((before >> 32) as u32, words);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// Replaces the value. Callers hold the org's writer lock: one writer at a time.
    pub(crate) fn store(&self, hot: Hot) {
        let (k1, words) = hot.to_words();
        let before = self.seq.load(Ordering::Relaxed);
        let seq = before as u32;
        self.seq.store(
            (before & !0xffff_ffff) | u64::from(seq.wrapping_add(1)),
            Ordering::Relaxed,
        );
        // Orders the odd number before the words' stores, for a reader that
        // sees any of them.
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(words) {
            word.store(value, Ordering::Relaxed);
        }
        self.seq.store(
            u64::from(k1) << 32 | u64::from(seq.wrapping_add(2)),
            Ordering::Release,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;

    fn limits(n: u32) -> Limits {
        Limits {
            rate_per_sec: n,
            burst: n,
            threshold_calls: n,
            threshold_window_secs: n,
        }
    }

    fn key(s: &str) -> ApiKey {
        ApiKey::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn the_cell_gives_back_every_field_it_was_given() {
        let cases = [
            Hot::new(Some(key("Ab3dEf6hIj9k")), false, None, &limits(7), 0),
            Hot::new(None, true, Some(Timestamp::EPOCH), &limits(1), u64::MAX),
            Hot::new(
                Some(key("000000000000")),
                true,
                Some(Timestamp::from_nanos(u64::MAX)),
                &limits(u32::MAX),
                3,
            ),
        ];
        for hot in cases {
            let cell = HotCell::new(hot);
            assert_eq!(cell.load(), hot);
            let other = hot.with_limits(&limits(2));
            cell.store(other);
            assert_eq!(cell.load(), other);
            assert_eq!(other.key(), hot.key());
            assert_eq!(other.generation, hot.generation);
            assert_eq!(other.rate, Rate::new(2, 2));
        }
    }

    #[test]
    fn the_cell_is_48_bytes() {
        assert_eq!(std::mem::size_of::<HotCell>(), 48);
    }

    /// The packed rate is the rate: at the largest rate and burst, the
    /// smallest, and one of each with a remainder.
    #[test]
    fn the_rate_survives_its_packing_at_the_limits() {
        use super::super::limits_max::{BURST, RATE_PER_SEC};
        for (rate, burst) in [
            (RATE_PER_SEC, BURST),
            (1, 1),
            (1, BURST),
            (RATE_PER_SEC, 1),
            (3, 7),
        ] {
            let limits = Limits {
                rate_per_sec: rate,
                burst,
                threshold_calls: u32::MAX,
                threshold_window_secs: u32::MAX,
            };
            let hot = Hot::new(None, true, None, &limits, 1);
            let cell = HotCell::new(hot);
            assert_eq!(cell.load(), hot, "{rate}/s, burst {burst}");
            assert_eq!(cell.load().rate, Rate::new(rate, burst));
            assert!(cell.load().is_disabled());
        }
    }

    /// Two values that differ in every word, written in turn by one thread
    /// while others read: every read is one of the two, never a mix.
    #[test]
    fn a_reader_never_sees_half_of_one_write_and_half_of_another() {
        let a = Hot::new(Some(key("aaaaaaaaaaaa")), false, None, &limits(10), 1);
        let b = Hot::new(
            Some(key("ZZZZZZZZZZZZ")),
            true,
            Some(Timestamp::from_secs(9)),
            &limits(30),
            2,
        );
        let (wa, wb) = (a.to_words(), b.to_words());
        assert_ne!(wa.0, wb.0);
        assert!(wa.1.iter().zip(wb.1).all(|(x, y)| *x != y));
        let cell = Arc::new(HotCell::new(a));
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (cell, done) = (Arc::clone(&cell), Arc::clone(&done));
                std::thread::spawn(move || {
                    let mut seen = [0u64; 2];
                    while !done.load(Ordering::Relaxed) {
                        let hot = cell.load();
                        if hot == a {
                            seen[0] += 1;
                        } else {
                            assert_eq!(hot, b, "a torn read");
                            seen[1] += 1;
                        }
                    }
                    seen
                })
            })
            .collect();
        for i in 0..200_000 {
            cell.store(if i % 2 == 0 { b } else { a });
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            let seen = reader.join().unwrap();
            assert!(seen[0] + seen[1] > 0);
        }
    }
}
