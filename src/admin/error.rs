//! The one home of the admin API's refusals and their HTTP mapping.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::reply;
use crate::org::OpError;

/// Why an admin call was refused. Each variant knows its status and contract code;
/// refusals of the operation itself delegate to [`OpError`], their one home.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// Malformed JSON, unknown fields, wrong types.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No token, or one keygate does not know.
    #[error("a valid bearer token is required")]
    Unauthenticated,
    /// The token's role or org does not allow this call. The same answer whether
    /// or not a foreign org exists.
    #[error("this token may not make this call")]
    Forbidden,
    /// The body is over the limit.
    #[error("the request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// The body is not `application/json`.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// The body did not arrive within `admin.body_timeout_ms`.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// No such endpoint.
    #[error("no such endpoint")]
    NotFound,
    /// The endpoint does not take this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// `GET /readyz` on a node that does not serve proxied requests now (a
    /// cluster's node that cannot vouch for its state).
    #[error("this node does not serve requests now")]
    NotReady,
    /// The operation itself was refused.
    #[error(transparent)]
    Op(#[from] OpError),
}

impl AdminError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden => StatusCode::FORBIDDEN,
            AdminError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AdminError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AdminError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AdminError::NotFound => StatusCode::NOT_FOUND,
            AdminError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AdminError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Op(e) => e.status(),
        }
    }

    /// The contract's code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::BadRequest(_) => "BAD_REQUEST",
            AdminError::Unauthenticated => "UNAUTHENTICATED",
            AdminError::Forbidden => "FORBIDDEN",
            AdminError::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            AdminError::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            AdminError::RequestTimeout => "REQUEST_TIMEOUT",
            AdminError::NotFound => "NOT_FOUND",
            AdminError::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            AdminError::NotReady => "NOT_READY",
            AdminError::Op(e) => e.code(),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            AdminError::Op(e) => e.public_message(),
            other => other.to_string(),
        };
        if status.is_server_error() {
            // The client learns nothing of internals; the log gets the whole error.
            tracing::error!(error = %self, code = self.code(), "admin call failed");
        }
        reply(
            status,
            &serde_json::json!({ "code": self.code(), "message": message }),
        )
    }
}

impl From<axum::extract::rejection::PathRejection> for AdminError {
    /// Names the path segment and the problem, never the segment's text: axum's
    /// own wording quotes the value (`Cannot parse `org` with value `...``).
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        let message = match &e {
            PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => {
                    format!("{key}: the path segment is not UTF-8 once percent-decoded")
                }
                ErrorKind::ParseErrorAtKey { key, .. }
                | ErrorKind::DeserializeError { key, .. } => {
                    format!("{key}: the path segment is not valid here")
                }
                _ => "a path segment is not valid here".to_owned(),
            },
            _ => "a path segment is not valid here".to_owned(),
        };
        AdminError::BadRequest(message)
    }
}
