//! The lease renewer, and confirm, which waits on the other nodes' leases.
//! The module docs of [`super`] give the timing argument.

use std::sync::Arc;
use std::time::Instant;

use super::{Shared, CONFIRM_SLACK};
use crate::store::backend::{BackendError, Seq};

/// Renews this node's lease every quarter lease and when the reader
/// (re)starts reading, and acknowledges at once, without a durable write,
/// whenever the store applied more of the feed ([`acks`](super::acks));
/// stops and leaves once the store is gone (`applied` closed).
pub(super) async fn run(shared: Arc<Shared>, mut applied: tokio::sync::watch::Receiver<Seq>) {
    let period = shared.lease_len / 4;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.reader_ready.notified() => {}
            changed = applied.changed() => {
                if changed.is_err() {
                    shared.leave().await;
                    return;
                }
                let at = *applied.borrow_and_update();
                if shared.lease.serving() {
                    super::acks::publish(&shared, at).await;
                    continue;
                }
                // Not serving: a node that lapsed renews as soon as it has
                // caught up, not a quarter lease later.
            }
        }
        let at = *applied.borrow_and_update();
        renew_once(&shared, at).await;
        next = tokio::time::Instant::now() + period;
    }
}

/// One renewal, reporting `applied`; a renewal that fails changes nothing
/// here (the deadline runs out by itself).
async fn renew_once(shared: &Shared, applied: Seq) {
    let t0 = Instant::now();
    if !shared.reader_healthy(t0) {
        // Not following the feed: others must not wait for this node, and it
        // must not serve.
        return;
    }
    let lease_ms = u64::try_from(shared.lease_len.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let serving = shared.lease.serving_at(t0);
    let mut conn = shared.conn.clone();
    let renewed: Result<(u32, Seq, u8), _> = shared
        .scripts
        .renew
        .key(&shared.keys.nodes)
        .key(&shared.keys.seq)
        .arg(&shared.keys.lease_prefix)
        .arg(&shared.node)
        .arg(lease_ms)
        .arg(applied)
        .arg(u8::from(serving))
        .invoke_async(&mut conn)
        .await;
    match renewed {
        Ok((live, seq, held)) => {
            #[cfg(test)]
            shared
                .renewals
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            shared.lease.set_live_nodes(live);
            // A node that lapsed (or starts) holds a lease, and serves,
            // only once it has applied everything committed meanwhile; one
            // that served until just now and is behind holds it (others
            // wait for it) but serves only once it caught up.
            if held == 1 && (shared.lease.serving() || applied >= seq) {
                shared.lease.extend(t0 + shared.lease_len.mul_f64(0.9));
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not renew this node's lease"),
    }
}

/// Resolves once every node holding a lease has applied `seq`: asks Redis
/// which leased nodes are behind by the durable `nodes` hash, then waits for
/// their acknowledgements ([`acks`](super::acks)), asking Redis again every
/// [`RECHECK`](super::acks::RECHECK) (a lost message, a lease that ran out).
/// Fails after a lease and [`CONFIRM_SLACK`], or as soon as this node stops
/// serving itself.
pub(super) async fn confirm(shared: Arc<Shared>, seq: Seq) -> Result<(), BackendError> {
    let give_up = Instant::now() + shared.lease_len + CONFIRM_SLACK;
    let mut conn = shared.conn.clone();
    loop {
        if !shared.lease.serving() {
            return Err(BackendError::Unavailable(format!(
                "this node stopped serving while confirming change {seq}"
            )));
        }
        let behind: Result<Vec<String>, _> = shared
            .scripts
            .confirm
            .key(&shared.keys.nodes)
            .arg(&shared.keys.lease_prefix)
            .arg(seq)
            .invoke_async(&mut conn)
            .await;
        let why = match behind {
            Ok(behind) if behind.is_empty() => return Ok(()),
            Ok(behind) => {
                let recheck = tokio::time::Instant::now() + super::acks::RECHECK;
                loop {
                    // Registered before the check, so an acknowledgement
                    // that lands in between still wakes this wait.
                    let heard = shared.acks.heard.notified();
                    if shared.acks.all_at(&behind, seq) {
                        return Ok(());
                    }
                    tokio::select! {
                        () = heard => {}
                        () = tokio::time::sleep_until(recheck) => break,
                    }
                }
                format!("{} node(s) still had not applied it", behind.len())
            }
            Err(e) => format!("Redis: {e}"),
        };
        if Instant::now() >= give_up {
            return Err(BackendError::Unavailable(format!(
                "could not confirm change {seq} on every node within {:?}: {why}",
                shared.lease_len + CONFIRM_SLACK
            )));
        }
    }
}
