//! Bulk provisioning: many orgs into a stopped keygate's store at once, for
//! migrations and for benchmarks at a million orgs, where provisioning through
//! the admin API would cost one durable commit each.

use std::io::BufRead;

use super::{AuditEvent, Backend, BackendError, Change, Commit, OrgRecord, RedbBackend};
use crate::clock::Timestamp;
use crate::key::ApiKey;
use crate::org::{Action, Actor, LimitOverrides, OrgId, OrgState};

/// Orgs per write transaction: large enough that fsyncs do not dominate, small
/// enough that a transaction's dirty pages stay modest.
const BATCH: usize = 50_000;

/// Why an import stopped. Orgs of batches committed before the error stay.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// A line is not `org` or `org<TAB>key`.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong; never the key itself.
        reason: &'static str,
    },
    /// The org is already in the store, or twice in the input.
    #[error("line {line}: org {org} exists")]
    Exists {
        /// 1-based.
        line: usize,
        /// The org.
        org: OrgId,
    },
    /// Reading the input failed.
    #[error("reading the input: {0}")]
    Read(#[from] std::io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] BackendError),
}

/// Provisions every org of `input` (one per line: `org`, or `org<TAB>key` to
/// set its key; blank lines and `#` comments are skipped) into `backend`, each
/// enabled, with its own random key unless one is given, audited as provisioned
/// by the provider. Returns how many were imported.
pub async fn import_orgs(
    backend: &RedbBackend,
    input: impl BufRead,
    now: Timestamp,
) -> Result<usize, ImportError> {
    let existing = backend.load().await?;
    let mut seen: std::collections::HashSet<OrgId> =
        existing.orgs.into_iter().map(|r| r.id).collect();
    let mut batch = Vec::with_capacity(BATCH);
    let mut imported = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (org, key) = match line.split_once('\t') {
            Some((org, key)) => (org, Some(key.trim())),
            None => (line, None),
        };
        let id = OrgId::parse(org).map_err(|_| ImportError::Line {
            line: n,
            reason: "not an org id",
        })?;
        let mut t = OrgState::provisioned(now, Actor::Provider, None, LimitOverrides::default());
        if let Some(key) = key {
            let key = ApiKey::parse(key.as_bytes()).map_err(|_| ImportError::Line {
                line: n,
                reason: "not a key (12 characters of A-Z, a-z, 0-9)",
            })?;
            t.detail = format!("imported with key ending {}", key.fingerprint());
            t.next.key = Some(key);
        }
        if !seen.insert(id.clone()) {
            return Err(ImportError::Exists { line: n, org: id });
        }
        batch.push(Commit {
            event: AuditEvent {
                org: id.clone(),
                at: now,
                actor: Actor::Provider,
                action: Action::Provision,
                detail: t.detail,
            },
            change: Change::Org(OrgRecord { id, state: t.next }),
        });
        if batch.len() == BATCH {
            imported += flush(backend, &mut batch).await?;
        }
    }
    imported += flush(backend, &mut batch).await?;
    Ok(imported)
}

async fn flush(backend: &RedbBackend, batch: &mut Vec<Commit>) -> Result<usize, BackendError> {
    let commits = std::mem::take(batch);
    let n = commits.len();
    if n > 0 {
        let backend = backend.clone();
        tokio::task::spawn_blocking(move || backend.import(&commits))
            .await
            .map_err(|e| BackendError::Unavailable(format!("import task: {e}")))??;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::org::Limits;
    use crate::store::Store;
    use std::sync::Arc;

    #[tokio::test]
    async fn imported_orgs_load_with_their_given_or_random_keys() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("s.redb")).unwrap();
        let input = "# comment\nacme\tAb3dEf6hIj9k\n\nbeta\n";
        let n = import_orgs(&backend, input.as_bytes(), Timestamp::from_secs(1))
            .await
            .unwrap();
        assert_eq!(n, 2);
        let store = Store::open(
            Arc::new(backend),
            Arc::new(ManualClock::default()),
            Limits::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            store.view("acme").unwrap().state.key.unwrap().expose(),
            "Ab3dEf6hIj9k"
        );
        assert!(store.view("beta").unwrap().state.key.is_some());
        assert_eq!(store.audit("acme").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn an_import_refuses_bad_lines_and_existing_orgs() {
        let dir = tempfile::tempdir().unwrap();
        let backend = RedbBackend::open(&dir.path().join("s.redb")).unwrap();
        let t = Timestamp::from_secs(1);
        assert!(matches!(
            import_orgs(&backend, "Bad Org\n".as_bytes(), t).await,
            Err(ImportError::Line { line: 1, .. })
        ));
        assert!(matches!(
            import_orgs(&backend, "acme\tshort\n".as_bytes(), t).await,
            Err(ImportError::Line { line: 1, .. })
        ));
        import_orgs(&backend, "acme\n".as_bytes(), t).await.unwrap();
        assert!(matches!(
            import_orgs(&backend, "acme\n".as_bytes(), t).await,
            Err(ImportError::Exists { line: 1, .. })
        ));
    }
}
