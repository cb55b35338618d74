//! The two per-org counters a request updates: the call threshold and the rate.
//!
//! Both are a single `AtomicU64` per org, updated with a compare-and-swap loop, so
//! a request never takes a lock to be counted and an org costs 16 bytes here.
//!
//! * [`CallCounter`] counts calls in a fixed window that opens with the first call
//!   after the previous one closed. The call that takes the count one past the
//!   threshold is told so exactly once ([`Count::Crossed`]); every later call of
//!   the window sees [`Count::Over`]. The gate disables the key on either (the
//!   second covers a threshold lowered below a window's count). A window's
//!   count only grows, so under any concurrency at most `threshold_calls` calls of
//!   a window are ever told [`Count::Within`].
//! * [`RateLimiter`] is the generic cell rate algorithm (GCRA), the algorithm
//!   `governor` implements, on the org's one atomic "theoretical arrival time".
//!   It decides exactly as `governor` does (a property test checks it), and is
//!   keygate's own for the reasons `rate.rs` gives: 8 bytes per org, the rate
//!   passed with each call so a limits change keeps the state, and keygate's
//!   clock read once per request.
//!
//! The threshold windows also outlive a restart: the store saves them
//! periodically and at a graceful stop (`store::counts`), reading each
//! counter with [`CallCounter::window`] and restoring it with
//! [`CallCounter::resume`], so counting stays one compare-and-swap.

mod rate;
mod threshold;

pub use rate::{Rate, RateLimited, RateLimiter};
pub use threshold::{CallCounter, Count, Spent, Window};
