//! keygate's own answers on the proxy listener: every status from 401 to 504
//! that keygate gives instead of the upstream, in one place.
//!
//! Both sides of the request path answer for themselves: the gate refuses a
//! key, a disabled org, an expired subscription or a rate (401 to 429), and
//! the forwarder answers for the body and the upstream (408, 502 to 504). Each
//! answer is a [`Refusal`], which knows its status, its contract code and its
//! JSON body; an answer's body is an [`AnswerBody`], either the inner service's
//! body untouched or a refusal's bytes. The module belongs to neither side, as
//! linkerd2-proxy keeps its synthetic answers in one `errors/respond.rs`: the
//! gate and the proxy both import it, and neither imports the other.

mod body;
mod refusal;

pub use body::AnswerBody;
pub use refusal::Refusal;
