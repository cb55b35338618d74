//! The command line's parts that live in the library, so tests reach them:
//! `keygate admin ...`, a client of the admin API.
//!
//! [`admin::AdminArgs`] is the clap definition `src/main.rs` mounts under
//! `keygate admin`, and [`admin::main`] runs one command and returns the exit
//! status; [`call`] turns a command into its method, path and body (and a
//! unit test there checks that every route of the admin API has a command);
//! [`show`] prints an answer for people; [`client::AdminClient`] is the small
//! HTTP/1.1 client that makes the call.

pub mod admin;
pub mod call;
pub mod client;
pub mod show;
