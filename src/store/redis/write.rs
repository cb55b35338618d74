//! Writing to the cluster's Redis: every change through one script, checked
//! and applied in one atomic step.

use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;

use super::{unavailable, RedisBackend, CONNECTION_TIMEOUT, FEED_MAXLEN};
use crate::store::backend::{BackendError, Change, Commit, Dump, Restored, Seq};

/// How many commits one [`commit_many`](RedisBackend::commit_many) may
/// send before it takes a connection without a response timeout.
const BULK: usize = 100;

impl RedisBackend {
    /// Checks and applies `commits` in one script; the last one's seq.
    pub(super) async fn commit_many(&self, commits: &[Commit]) -> Result<Seq, BackendError> {
        let keys = &self.shared.keys;
        let mut call = self.shared.scripts.commit.prepare_invoke();
        call.key(&keys.orgs)
            .key(&keys.tokens)
            .key(&keys.seq)
            .key(&keys.feed)
            .key(&keys.audited)
            .key(&keys.users);
        for c in commits {
            call.key(keys.audit(c.event.org.as_str()));
        }
        for c in commits {
            call.key(keys.calls(c.event.org.as_str()));
        }
        call.arg(FEED_MAXLEN).arg(commits.len());
        for c in commits {
            let event = to_json(&c.event)?;
            match &c.change {
                Change::Org { record, expected } => {
                    call.arg("org")
                        .arg(record.id.as_str())
                        .arg(expected.map(|v| v.to_string()).unwrap_or_default())
                        .arg(to_json(record)?);
                }
                Change::PutToken(t) => {
                    call.arg("put").arg(&t.name).arg("").arg(to_json(t)?);
                }
                Change::DeleteToken(name) => {
                    call.arg("del").arg(name).arg("").arg("");
                }
                Change::RotateToken { record, expected } => {
                    call.arg("rotate")
                        .arg(&record.name)
                        .arg(expected.to_hex())
                        .arg(to_json(record)?);
                }
                Change::PutUser(u) => {
                    call.arg("putuser")
                        .arg(format!("{}/{}", u.org, u.username))
                        .arg("")
                        .arg(to_json(u)?);
                }
                Change::DeleteUser { org, username } => {
                    call.arg("deluser")
                        .arg(format!("{org}/{username}"))
                        .arg("")
                        .arg("");
                }
                Change::DeleteOrg { id, expected } => {
                    call.arg("delorg")
                        .arg(id.as_str())
                        .arg(expected.to_string())
                        .arg("");
                }
            }
            call.arg(c.event.org.as_str()).arg(event);
        }
        let answer = if commits.len() > BULK {
            call.invoke_async(&mut self.bulk_connection().await?).await
        } else {
            call.invoke_async(&mut self.shared.conn.clone()).await
        };
        let (outcome, n): (String, u64) = answer.map_err(|e| unavailable("commit", e))?;
        match outcome.as_str() {
            "ok" => Ok(n),
            "conflict" => {
                let failed = usize::try_from(n)
                    .ok()
                    .and_then(|i| i.checked_sub(1))
                    .and_then(|i| commits.get(i));
                Err(match failed {
                    Some(c) => c.change.refused(),
                    None => BackendError::Corrupt(format!("the commit script refused commit {n}")),
                })
            }
            other => Err(BackendError::Corrupt(format!(
                "the commit script answered {other:?}"
            ))),
        }
    }

    pub(super) async fn restore_dump(&self, dump: Dump) -> Result<Restored, BackendError> {
        let keys = &self.shared.keys;
        let mut call = self.shared.scripts.restore.prepare_invoke();
        call.key(&keys.orgs)
            .key(&keys.tokens)
            .key(&keys.seq)
            .key(&keys.feed)
            .key(&keys.audited)
            .key(&keys.users);
        // One KEYS entry per org with events, numbered from 1.
        let mut streams: std::collections::HashMap<&str, usize> = Default::default();
        for e in &dump.audit {
            let next = streams.len() + 1;
            let k = *streams.entry(e.org.as_str()).or_insert(next);
            if k == next {
                call.key(keys.audit(e.org.as_str()));
            }
        }
        call.arg(FEED_MAXLEN)
            .arg(&keys.audit_prefix)
            .arg(dump.orgs.len())
            .arg(dump.tokens.len())
            .arg(dump.audit.len())
            .arg(dump.users.len());
        for o in &dump.orgs {
            call.arg(o.id.as_str()).arg(to_json(o)?);
        }
        for t in &dump.tokens {
            call.arg(&t.name).arg(to_json(t)?);
        }
        for u in &dump.users {
            call.arg(format!("{}/{}", u.org, u.username))
                .arg(to_json(u)?);
        }
        for e in &dump.audit {
            // Every org with events got its number in the loop above.
            call.arg(streams[e.org.as_str()])
                .arg(e.org.as_str())
                .arg(to_json(e)?);
        }
        let answer: Vec<redis::Value> = call
            .invoke_async(&mut self.bulk_connection().await?)
            .await
            .map_err(|e| unavailable("restore", e))?;
        let answer: Vec<String> = answer
            .into_iter()
            .map(redis::from_redis_value)
            .collect::<Result<_, _>>()
            .map_err(|e| BackendError::Corrupt(format!("the restore script answered: {e}")))?;
        let count = |i: usize| {
            answer
                .get(i)
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match answer.first().map(String::as_str) {
            Some("done") => Ok(Restored::Done),
            Some("not_empty") => Ok(Restored::NotEmpty {
                orgs: count(1),
                tokens: count(2),
                audit_events: count(3),
            }),
            other => Err(BackendError::Corrupt(format!(
                "the restore script answered {other:?}"
            ))),
        }
    }
}

impl RedisBackend {
    /// A connection of its own without a response timeout, for one script
    /// that writes a whole import or a large batch: Redis may take longer
    /// than a command's timeout, and a timeout would report as failed a
    /// write that Redis goes on to make.
    async fn bulk_connection(&self) -> Result<MultiplexedConnection, BackendError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(None);
        self.shared
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| unavailable("connect", e))
    }
}

/// `value` as JSON.
fn to_json(value: &impl serde::Serialize) -> Result<String, BackendError> {
    // keygate's records are plain data with string keys: serializing cannot fail.
    serde_json::to_string(value)
        .map_err(|e| BackendError::Corrupt(format!("cannot encode a record: {e}")))
}
