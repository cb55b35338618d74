//! The one home of every refusal of an org operation, and its HTTP mapping.

use http::StatusCode;

use super::{LimitsError, OrgIdError};
use crate::store::BackendError;

/// Why an operation on an org (an admin call, or the automatic disable) did not
/// happen. Each variant knows its status and its contract code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Add while the org still has a key.
    #[error("the organization already has a key; delete it before adding one")]
    KeyExists,
    /// Edit, regenerate or delete while the org has no key.
    #[error("the organization has no key")]
    NoKey,
    /// Edit to the key already in force.
    #[error("the new key must differ from the current key")]
    KeyUnchanged,
    /// Edit to something that is not 12 characters of A-Z a-z 0-9.
    #[error("an API key is exactly 12 characters of A-Z, a-z and 0-9")]
    InvalidKeyFormat,
    /// A key change while the key is disabled.
    #[error("the key is disabled; only the provider can enable it")]
    KeyDisabled,
    /// A key change while the subscription is expired.
    #[error("the subscription has expired; renew it to change the key")]
    SubscriptionExpired,
    /// No org with that id.
    #[error("no such organization")]
    OrgNotFound,
    /// Provisioning an id that is taken.
    #[error("the organization already exists")]
    OrgExists,
    /// Provisioning a malformed id.
    #[error(transparent)]
    InvalidOrg(#[from] OrgIdError),
    /// Creating a token under a name that is taken.
    #[error("a token of that name exists")]
    TokenExists,
    /// Deleting a token that does not exist.
    #[error("no such token")]
    TokenNotFound,
    /// A token name that is not 1 to 64 of `A-Z a-z 0-9 . _ -`, or is reserved.
    #[error("a token name is 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-', and not 'provider' or 'system'")]
    InvalidTokenName,
    /// A limit out of range.
    #[error(transparent)]
    InvalidLimits(#[from] LimitsError),
    /// Creating an API user under a username the org already has.
    #[error("the organization has an API user of that username")]
    ApiUserExists,
    /// Deleting an API user the org does not have.
    #[error("no such API user")]
    ApiUserNotFound,
    /// A password under 12 characters (or over 1024 bytes).
    #[error("a password is at least 12 characters (and at most 1024 bytes)")]
    WeakPassword,
    /// A username that is not 1 to 128 visible ASCII characters.
    #[error("a username is 1 to 128 visible ASCII characters")]
    InvalidUsername,
    /// Cluster mode, and this node cannot vouch for its state (its lease ran
    /// out, or it is reloading), or a change it made could not be confirmed
    /// on every node: the change may have been made, and the client reads
    /// the state back to know.
    #[error("this node cannot reach the cluster's store")]
    ClusterUnavailable,
    /// The store could not make the change durable; nothing changed.
    #[error("store: {0}")]
    Store(#[from] BackendError),
}

impl OpError {
    /// The HTTP status the contract gives this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            OpError::KeyExists
            | OpError::OrgExists
            | OpError::TokenExists
            | OpError::ApiUserExists => StatusCode::CONFLICT,
            OpError::NoKey
            | OpError::OrgNotFound
            | OpError::TokenNotFound
            | OpError::ApiUserNotFound => StatusCode::NOT_FOUND,
            OpError::WeakPassword | OpError::InvalidUsername => StatusCode::UNPROCESSABLE_ENTITY,
            OpError::KeyUnchanged
            | OpError::InvalidKeyFormat
            | OpError::InvalidTokenName
            | OpError::InvalidOrg(_)
            | OpError::InvalidLimits(_) => StatusCode::UNPROCESSABLE_ENTITY,
            OpError::KeyDisabled | OpError::SubscriptionExpired => StatusCode::FORBIDDEN,
            OpError::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OpError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code the contract gives this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            OpError::KeyExists => "KEY_EXISTS",
            OpError::NoKey => "NO_KEY",
            OpError::KeyUnchanged => "KEY_UNCHANGED",
            OpError::InvalidKeyFormat => "INVALID_KEY_FORMAT",
            OpError::KeyDisabled => "KEY_DISABLED",
            OpError::SubscriptionExpired => "SUBSCRIPTION_EXPIRED",
            OpError::OrgNotFound => "ORG_NOT_FOUND",
            OpError::OrgExists => "ORG_EXISTS",
            OpError::InvalidOrg(_) => "INVALID_ORG",
            OpError::InvalidLimits(_) => "INVALID_LIMITS",
            OpError::TokenExists => "TOKEN_EXISTS",
            OpError::TokenNotFound => "TOKEN_NOT_FOUND",
            OpError::InvalidTokenName => "INVALID_TOKEN_NAME",
            OpError::ApiUserExists => "API_USER_EXISTS",
            OpError::ApiUserNotFound => "API_USER_NOT_FOUND",
            OpError::WeakPassword => "WEAK_PASSWORD",
            OpError::InvalidUsername => "INVALID_USERNAME",
            OpError::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
            OpError::Store(_) => "INTERNAL",
        }
    }

    /// The message a client sees. A store failure says nothing about internals;
    /// the full error goes to the log.
    pub fn public_message(&self) -> String {
        match self {
            OpError::Store(_) => {
                "internal error: the store could not be read or written; nothing was changed"
                    .to_owned()
            }
            OpError::ClusterUnavailable => "this node cannot reach the cluster's store; \
                 a change may or may not have been made: read the state back, on another node or later"
                .to_owned(),
            other => other.to_string(),
        }
    }
}
