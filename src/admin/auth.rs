//! Who is calling, and what they may do.

use axum::extract::FromRequestParts;
use http::header::AUTHORIZATION;
use http::request::Parts;

use super::{AdminError, AdminState};
use crate::org::Actor;
use crate::token::{Role, TokenDigest, TokenRecord};

/// The authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The service provider: every org, every endpoint.
    Provider,
    /// An admin or viewer token of one org.
    Token(TokenRecord),
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Read an org's page or audit: provider, or any token of that org.
    Read,
    /// Change an org's key: provider, or an admin token of that org.
    ChangeKey,
}

impl Principal {
    /// The actor recorded for changes this caller makes.
    pub fn actor(&self) -> Actor {
        match self {
            Principal::Provider => Actor::Provider,
            Principal::Token(t) => Actor::Token(t.name.as_str().into()),
        }
    }

    /// Whether the caller is the provider.
    pub fn is_provider(&self) -> bool {
        matches!(self, Principal::Provider)
    }

    /// Checks the caller may do `need` on `org`. A token of another org is
    /// refused before anything looks at whether `org` exists.
    pub(crate) fn allow(&self, need: Need, org: &str) -> Result<(), AdminError> {
        match self {
            Principal::Provider => Ok(()),
            Principal::Token(t) if t.org.as_str() != org => Err(AdminError::Forbidden),
            Principal::Token(t) => match (need, t.role) {
                (Need::Read, _) | (Need::ChangeKey, Role::Admin) => Ok(()),
                (Need::ChangeKey, Role::Viewer) => Err(AdminError::Forbidden),
            },
        }
    }

    /// Checks the caller is the provider.
    pub(crate) fn provider_only(&self) -> Result<(), AdminError> {
        if self.is_provider() {
            Ok(())
        } else {
            Err(AdminError::Forbidden)
        }
    }
}

impl FromRequestParts<AdminState> for Principal {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, AdminError> {
        mark_sensitive(&mut parts.headers);
        // A cluster's node that cannot vouch for what it holds answers
        // nothing from it, not even who a token is.
        if !state.store.serving() {
            return Err(AdminError::Op(crate::org::OpError::ClusterUnavailable));
        }
        let token = bearer(parts).ok_or(AdminError::Unauthenticated)?;
        let digest = TokenDigest::of(token);
        if digest.ct_eq(&state.provider) {
            return Ok(Principal::Provider);
        }
        state
            .store
            .token(&digest)
            .map(Principal::Token)
            .ok_or(AdminError::Unauthenticated)
    }
}

/// Marks every `Authorization` value sensitive: from here on `Debug` of the
/// request shows `Sensitive` instead of the token.
fn mark_sensitive(headers: &mut http::HeaderMap) {
    if let http::header::Entry::Occupied(mut values) = headers.entry(AUTHORIZATION) {
        values.iter_mut().for_each(|v| v.set_sensitive(true));
    }
}

/// The token of a single `Authorization: Bearer <token>` header.
fn bearer(parts: &Parts) -> Option<&str> {
    let mut values = parts.headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn every_authorization_value_is_marked_sensitive_and_others_are_not() {
        let mut h = http::HeaderMap::new();
        h.append(AUTHORIZATION, "Bearer s3cr3t-token".parse().unwrap());
        h.append(AUTHORIZATION, "Bearer other".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        mark_sensitive(&mut h);
        assert!(h
            .get_all(AUTHORIZATION)
            .iter()
            .all(HeaderValue::is_sensitive));
        assert!(!h["x-other"].is_sensitive());
        assert!(format!("{h:?}").contains("Sensitive"));
        assert!(!format!("{h:?}").contains("s3cr3t-token"));
    }
}
