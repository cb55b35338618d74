//! The feed reader: follows the `feed` stream on a connection of its own
//! and hands each entry to the store as an [`Event`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;

use super::read::entry_field;
use super::{unavailable, Position, Shared, CONNECTION_TIMEOUT};
use crate::org::OrgId;
use crate::store::backend::{BackendError, Event, Feed, Seq};

/// The longest one `XREAD` blocks: a quarter lease, at most this.
const BLOCK_MAX: Duration = Duration::from_millis(250);

/// How long the reader waits before connecting again after an error,
/// doubled after each failed attempt up to the second constant.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
const RECONNECT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// How many entries one `XREAD` returns at most.
const READ_COUNT: usize = 1000;

/// What the reader learned from one entry.
enum Entry {
    /// A commit, or a restore (as [`Feed::Resync`]).
    Event(Event),
    /// An entry that is not keygate's: the reader cannot vouch for it.
    Unreadable { seq: Option<Seq>, why: String },
}

/// Follows the feed from `at`, sending each entry to `events`, until the
/// store stops reading (the receiver is gone).
pub(super) async fn read(
    shared: Arc<Shared>,
    mut at: Position,
    events: tokio::sync::mpsc::Sender<Event>,
) {
    let block = (shared.lease_len / 4)
        .min(BLOCK_MAX)
        .max(Duration::from_millis(1));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(block + super::RESPONSE_TIMEOUT));
    let mut pause = RECONNECT_PAUSE;
    loop {
        if events.is_closed() {
            return;
        }
        let mut conn = match shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(conn) => {
                pause = RECONNECT_PAUSE;
                conn
            }
            Err(e) => {
                // Said once per outage, not ten times a second.
                if pause == RECONNECT_PAUSE {
                    tracing::warn!(error = %e, "cannot reach Redis for the change feed; trying again");
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_PAUSE_MAX);
                continue;
            }
        };
        match follow(&shared, &mut conn, &mut at, block, &events).await {
            Ok(()) => return,
            Err(e) => {
                shared.reader_lost();
                tracing::warn!(error = %e, "lost the change feed; reconnecting");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Reads on `conn` until an error (returned: reconnect) or until the store
/// stops reading (`Ok`).
async fn follow(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    at: &mut Position,
    block: Duration,
    events: &tokio::sync::mpsc::Sender<Event>,
) -> Result<(), BackendError> {
    let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
    // After every (re)connect: Redis may have restarted without some of what
    // this node saw.
    if !check_counter(shared, conn, at, events).await? {
        return Ok(());
    }
    let mut ready = false;
    loop {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(&shared.keys.feed)
            .arg(&at.id)
            .query_async(conn)
            .await
            .map_err(|e| unavailable("read the feed", e))?;
        if events.is_closed() {
            // The store stopped (or never finished opening).
            return Ok(());
        }
        shared.reader_read();
        if !ready {
            ready = true;
            shared.reader_ready.notify_one();
        }
        let entries: Vec<StreamId> = reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default();
        if entries.is_empty() {
            // Quiet: a good moment to see whether Redis went back in time.
            if !check_counter(shared, conn, at, events).await? {
                return Ok(());
            }
            continue;
        }
        for entry in entries {
            let id = entry.id.clone();
            let sent = match parse(entry) {
                Entry::Event(event) if event.seq <= at.seq => {
                    // A seq handed out again: Redis lost commits. `lost`
                    // moves past the stream's end; the rest of this batch
                    // is covered by the reload.
                    tracing::error!(
                        seq = event.seq,
                        last = at.seq,
                        "the feed went back; Redis lost commits"
                    );
                    if !lost(shared, conn, at, events).await? {
                        return Ok(());
                    }
                    break;
                }
                Entry::Event(event) => {
                    let mut open = true;
                    if event.seq != at.seq + 1 {
                        tracing::warn!(
                            seq = event.seq,
                            last = at.seq,
                            "feed entries were lost; resyncing"
                        );
                        open = send(events, event.seq - 1, Feed::Resync).await;
                    }
                    let seq = event.seq;
                    shared
                        .feed_seen
                        .fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                    open = open && events.send(event).await.is_ok();
                    at.seq = seq;
                    open
                }
                Entry::Unreadable { seq, why } => {
                    tracing::error!(entry = %id, %why, "an unreadable feed entry; resyncing");
                    let seq = seq.unwrap_or(at.seq).max(at.seq);
                    at.seq = seq;
                    send(events, seq, Feed::Resync).await
                }
            };
            if !sent {
                return Ok(());
            }
            at.id = id;
        }
    }
}

/// Sends `feed` at `seq`; false once the store stopped reading.
async fn send(events: &tokio::sync::mpsc::Sender<Event>, seq: Seq, feed: Feed) -> bool {
    events.send(Event { seq, feed }).await.is_ok()
}

/// Whether the counter still covers what this node saw; if not, handles the
/// loss ([`lost`]). False once the store stopped reading.
async fn check_counter(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    at: &mut Position,
    events: &tokio::sync::mpsc::Sender<Event>,
) -> Result<bool, BackendError> {
    let counter: Option<Seq> = redis::cmd("GET")
        .arg(&shared.keys.seq)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read the feed's counter", e))?;
    if counter.unwrap_or(0) >= at.seq {
        return Ok(true);
    }
    tracing::error!(counter = ?counter, last = at.seq, "the feed's counter went back; Redis lost commits");
    lost(shared, conn, at, events).await
}

/// Redis lost commits this node saw: raises the counter back above them (a
/// seq is never handed out twice, so a node's applied seq never claims a
/// commit it has not seen), resumes after the stream's current end, and has
/// the store reload. False once the store stopped reading.
async fn lost(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    at: &mut Position,
    events: &tokio::sync::mpsc::Sender<Event>,
) -> Result<bool, BackendError> {
    let counter: Seq = shared
        .scripts
        .raise_seq
        .key(&shared.keys.seq)
        .arg(at.seq)
        .invoke_async(conn)
        .await
        .map_err(|e| unavailable("raise the feed's counter", e))?;
    let last: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&shared.keys.feed)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read the feed's position", e))?;
    at.id = last
        .ids
        .into_iter()
        .next()
        .map(|e| e.id)
        .unwrap_or_else(|| "0-0".to_owned());
    at.seq = counter;
    Ok(send(events, counter, Feed::Resync).await)
}

/// Reads one feed entry.
fn parse(entry: StreamId) -> Entry {
    let seq = entry_field(&entry.map, "seq").and_then(|s| s.parse::<Seq>().ok());
    let (Some(seq), Some(kind), Some(payload)) = (
        seq,
        entry_field(&entry.map, "kind"),
        entry_field(&entry.map, "payload"),
    ) else {
        return Entry::Unreadable {
            seq,
            why: "missing seq, kind or payload".into(),
        };
    };
    let feed = match kind.as_str() {
        "org" => serde_json::from_str(&payload).map(Feed::Org),
        "put" => serde_json::from_str(&payload).map(Feed::PutToken),
        "del" => Ok(Feed::DeleteToken(payload)),
        "putuser" => serde_json::from_str(&payload).map(Feed::PutUser),
        "putsession" => serde_json::from_str(&payload).map(Feed::PutSession),
        "endsession" => {
            let mut d = [0u8; 32];
            match hex::decode_to_slice(&payload, &mut d) {
                Ok(()) => Ok(Feed::EndSession(crate::session::SessionDigest(d))),
                Err(_) => {
                    return Entry::Unreadable {
                        seq: Some(seq),
                        why: "endsession names no session".into(),
                    }
                }
            }
        }
        "deluser" => match payload
            .split_once('/')
            .and_then(|(org, username)| Some((OrgId::parse(org).ok()?, username)))
        {
            Some((org, username)) => Ok(Feed::DeleteUser {
                org,
                username: username.to_owned(),
            }),
            None => {
                return Entry::Unreadable {
                    seq: Some(seq),
                    why: "deluser names no org/user".into(),
                }
            }
        },
        "delorg" | "reclaim" => match OrgId::parse(&payload) {
            Ok(id) if kind == "delorg" => Ok(Feed::DeleteOrg(id)),
            Ok(id) => Ok(Feed::Reclaim(id)),
            Err(_) => {
                return Entry::Unreadable {
                    seq: Some(seq),
                    why: format!("{kind} names no org"),
                }
            }
        },
        "resync" => Ok(Feed::Resync),
        other => {
            return Entry::Unreadable {
                seq: Some(seq),
                why: format!("unknown kind {other:?}"),
            }
        }
    };
    match feed {
        Ok(feed) => Entry::Event(Event { seq, feed }),
        Err(e) => Entry::Unreadable {
            seq: Some(seq),
            why: e.to_string(),
        },
    }
}
