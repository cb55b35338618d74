#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Modules in the order a request meets them: the clock it is timed by, the key it
// presents, the org it names, the counters it updates, the store they live in,
// the gate that runs the checks; then what the binary builds around them.
pub mod clock;
mod de;
pub mod key;
pub mod org;
pub mod limit;
pub mod token;
pub mod store;
pub mod session;
pub mod answer;
pub mod gate;
pub mod config;
pub mod proxy;
pub mod metrics;
pub mod timeout;
pub mod tls;
pub mod admin;
pub mod server;
pub mod demo;
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
