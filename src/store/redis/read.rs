//! Reading what the cluster's Redis holds: orgs and tokens in `HSCAN`
//! batches, audit streams in `XRANGE` pages, and their JSON.

use std::collections::HashSet;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use super::{unavailable, RedisBackend, BATCH};
use crate::store::backend::{AuditEvent, BackendError, Dump, OrgRecord};
use crate::token::TokenRecord;

impl RedisBackend {
    /// Every org, read in batches.
    pub(super) async fn read_orgs(&self) -> Result<Vec<OrgRecord>, BackendError> {
        let mut orgs = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.orgs, cursor).await?;
            for (id, json) in pairs {
                // HSCAN may return one field twice; the store refuses a
                // twice-loaded org as corrupt, so only the first counts.
                if seen.insert(id.clone()) {
                    orgs.push(parse_org(&id, &json)?);
                }
            }
            if next == 0 {
                return Ok(orgs);
            }
            cursor = next;
        }
    }

    /// Every token, read in batches.
    pub(super) async fn read_tokens(&self) -> Result<Vec<TokenRecord>, BackendError> {
        let mut tokens = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.tokens, cursor).await?;
            for (name, json) in pairs {
                if seen.insert(name.clone()) {
                    tokens.push(parse_token(&name, &json)?);
                }
            }
            if next == 0 {
                return Ok(tokens);
            }
            cursor = next;
        }
    }

    pub(super) async fn read_users(&self) -> Result<Vec<crate::session::ApiUser>, BackendError> {
        let mut users = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.users, cursor).await?;
            for (name, json) in pairs {
                if seen.insert(name.clone()) {
                    let user: crate::session::ApiUser = serde_json::from_str(&json)
                        .map_err(|e| BackendError::Corrupt(format!("API user {name:?}: {e}")))?;
                    users.push(user);
                }
            }
            if next == 0 {
                return Ok(users);
            }
            cursor = next;
        }
    }

    pub(super) async fn read_sessions(
        &self,
    ) -> Result<Vec<crate::session::SessionRecord>, BackendError> {
        let mut all = Vec::new();
        let mut conn = self.shared.conn.clone();
        let mut seen = HashSet::new();
        let mut cursor = 0;
        loop {
            let (next, pairs) = hscan_page(&mut conn, &self.shared.keys.sessions, cursor).await?;
            for (digest, json) in pairs {
                if seen.insert(digest.clone()) {
                    let record = serde_json::from_str(&json)
                        .map_err(|e| BackendError::Corrupt(format!("session: {e}")))?;
                    all.push(record);
                }
            }
            if next == 0 {
                return Ok(all);
            }
            cursor = next;
        }
    }

    pub(super) async fn read_audit(&self, org: &str) -> Result<Vec<AuditEvent>, BackendError> {
        let key = self.shared.keys.audit(org);
        let mut conn = self.shared.conn.clone();
        let mut events = Vec::new();
        let mut from = "-".to_owned();
        loop {
            let page: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut conn)
                .await
                .map_err(|e| unavailable("read audit", e))?;
            let n = page.ids.len();
            for entry in page.ids {
                let json = entry_field(&entry.map, "event").ok_or_else(|| {
                    BackendError::Corrupt(format!("audit entry {} of {org} has no event", entry.id))
                })?;
                events.push(serde_json::from_str(&json).map_err(|e| {
                    BackendError::Corrupt(format!("audit entry {} of {org}: {e}", entry.id))
                })?);
                from = format!("({}", entry.id);
            }
            if n < BATCH {
                return Ok(events);
            }
        }
    }

    pub(super) async fn read_dump(&self) -> Result<Dump, BackendError> {
        let orgs = self.read_orgs().await?;
        let tokens = self.read_tokens().await?;
        let users = self.read_users().await?;
        let mut conn = self.shared.conn.clone();
        let mut audited: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&self.shared.keys.audited)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("read audit", e))?;
        audited.sort();
        let mut audit = Vec::new();
        for org in audited {
            audit.extend(self.read_audit(&org).await?);
        }
        Ok(Dump {
            orgs,
            tokens,
            users,
            audit,
        })
    }
}

/// One `HSCAN` page of the hash `key`: the next cursor (0 when done) and
/// (field, value) pairs.
pub(super) async fn hscan_page(
    conn: &mut ConnectionManager,
    key: &str,
    cursor: u64,
) -> Result<(u64, Vec<(String, String)>), BackendError> {
    let (next, flat): (u64, Vec<String>) = redis::cmd("HSCAN")
        .arg(key)
        .arg(cursor)
        .arg("COUNT")
        .arg(BATCH)
        .query_async(conn)
        .await
        .map_err(|e| unavailable("read", e))?;
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
        pairs.push((k, v));
    }
    Ok((next, pairs))
}

pub(super) fn parse_org(id: &str, json: &str) -> Result<OrgRecord, BackendError> {
    let record: OrgRecord = serde_json::from_str(json)
        .map_err(|e| BackendError::Corrupt(format!("org {id} in Redis: {e}")))?;
    if record.id.as_str() != id {
        return Err(BackendError::Corrupt(format!(
            "org {id} in Redis holds the record of {}",
            record.id
        )));
    }
    Ok(record)
}

pub(super) fn parse_token(name: &str, json: &str) -> Result<TokenRecord, BackendError> {
    let record: TokenRecord = serde_json::from_str(json)
        .map_err(|e| BackendError::Corrupt(format!("token {name} in Redis: {e}")))?;
    if record.name != name {
        return Err(BackendError::Corrupt(format!(
            "token {name} in Redis holds the record of {}",
            record.name
        )));
    }
    Ok(record)
}

/// A stream entry's field as a string.
pub(super) fn entry_field(
    map: &std::collections::HashMap<String, redis::Value>,
    name: &str,
) -> Option<String> {
    map.get(name)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
}
