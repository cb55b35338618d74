//! Acknowledgements: how a node tells the others, at once, that it applied
//! the feed up to a seq, without a durable write.
//!
//! Every write Redis answers has been fsynced (`appendfsync always`), and a
//! node's progress is not worth an fsync per change: it is news, not state.
//! So a node that applied more of the feed `PUBLISH`es `"<node> <seq>"` on the
//! cluster's acknowledgement channel (a publish is not written to the
//! append-only file), and every node listens on one connection of its own,
//! keeping each node's highest seq. [`confirm`](super::renew::confirm) asks
//! Redis which leased nodes are behind (the durable `nodes` hash, renewed
//! every quarter lease) and then waits for their acknowledgements here,
//! asking Redis again every [`RECHECK`] for the ones that are still behind,
//! since a message can be lost (a reconnect) and a lease can run out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::Shared;
use crate::store::backend::Seq;

/// How long a confirm waits for acknowledgements before it asks Redis again
/// which nodes are behind (and whose lease ran out).
pub(super) const RECHECK: Duration = Duration::from_millis(25);

/// How long the listener waits before it connects again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// The highest seq each node acknowledged, as heard on the channel.
#[derive(Debug, Default)]
pub(super) struct Acks {
    seen: Mutex<HashMap<String, Seq>>,
    /// Woken on every acknowledgement.
    pub(super) heard: tokio::sync::Notify,
}

impl Acks {
    /// Whether every node of `nodes` acknowledged `seq`.
    pub(super) fn all_at(&self, nodes: &[String], seq: Seq) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .all(|n| seen.get(n).is_some_and(|at| *at >= seq))
    }

    fn heard(&self, message: &str) {
        let Some((node, seq)) = message.rsplit_once(' ') else {
            return;
        };
        let Ok(seq) = seq.parse::<Seq>() else {
            return;
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let at = seen.entry(node.to_owned()).or_default();
            // A node that restarted from a lower seq after Redis lost data
            // reports lower: its newest report is what it holds.
            *at = seq;
        }
        self.heard.notify_waiters();
    }
}

/// Listens on the acknowledgement channel until the backend is gone.
pub(super) async fn listen(weak: Weak<Shared>) {
    use futures_core::Stream;
    loop {
        let Some(shared) = weak.upgrade() else { return };
        let client = shared.client.clone();
        let channel = shared.keys.acks.clone();
        drop(shared);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        let mut messages = match subscribed.await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::debug!(error = %e, "could not listen for acknowledgements; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        while let Some(msg) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut messages).poll_next(cx)).await
        {
            let Some(shared) = weak.upgrade() else { return };
            if let Ok(text) = msg.get_payload::<String>() {
                shared.acks.heard(&text);
            }
        }
        // The connection ended: confirms fall back to asking Redis meanwhile.
        tokio::time::sleep(RETRY).await;
    }
}

/// Tells every node that this one applied the feed up to `seq`.
pub(super) async fn publish(shared: &Arc<Shared>, seq: Seq) {
    let message = format!("{} {seq}", shared.node);
    let sent: Result<i64, _> = redis::cmd("PUBLISH")
        .arg(&shared.keys.acks)
        .arg(message)
        .query_async(&mut shared.conn.clone())
        .await;
    if let Err(e) = sent {
        // The periodic renewal reports it durably within a quarter lease.
        tracing::debug!(error = %e, seq, "could not publish an acknowledgement");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_report_of_each_node_is_kept_and_compared() {
        let acks = Acks::default();
        acks.heard("node-a 5");
        acks.heard("node-b 3");
        acks.heard("not a message");
        let both = ["node-a".to_owned(), "node-b".to_owned()];
        assert!(acks.all_at(&both, 3));
        assert!(!acks.all_at(&both, 4));
        acks.heard("node-b 7");
        assert!(acks.all_at(&both, 5));
        assert!(!acks.all_at(&["node-c".to_owned()], 1));
        // Names with spaces: the seq is after the last one.
        acks.heard("host with space-1-ab12 9");
        assert!(acks.all_at(&["host with space-1-ab12".to_owned()], 9));
    }
}
