//! The command line's parts that live in the library, so tests reach them:
//! `keygate admin ...`, a client of the admin API.
//!
//! [`admin::AdminArgs`] is the clap definition `src/main.rs` mounts under
//! `keygate admin`; [`admin::main`] runs one call and returns the exit status;
//! [`client::AdminClient`] is the small HTTP/1.1 client it uses.

pub mod admin;
pub mod client;
