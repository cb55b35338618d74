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
        crate::gate::mark_sensitive(&mut parts.headers, &AUTHORIZATION);
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
