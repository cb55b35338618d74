//! The one home of keygate's own answers: each knows its status, its contract
//! code and its JSON body.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::AnswerBody;
use crate::limit::RateLimited;

/// Why keygate answered a proxied request itself. Every row of the proxy's
/// table of answers (README, "The proxy") is one variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The key header is absent or empty.
    #[error("missing API key")]
    MissingKey,
    /// The key header is repeated, or the org or key is malformed, unknown or wrong.
    #[error("invalid API key")]
    InvalidKey,
    /// The org's key is disabled.
    #[error("API key disabled")]
    KeyDisabled,
    /// This call took the org past its call threshold; the key is now disabled.
    #[error("call threshold exceeded; API key disabled")]
    ThresholdExceeded,
    /// The subscription has expired and the method writes.
    #[error("subscription expired")]
    SubscriptionExpired,
    /// The org is over its rate.
    #[error("rate limit exceeded")]
    RateLimited(RateLimited),
    /// The request's body stopped arriving (`body_read_timeout_ms`).
    #[error("request body timeout")]
    RequestTimeout,
    /// The upstream refused the connection.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// Every allowed upstream connection stayed busy for the connect timeout.
    #[error("upstream busy")]
    UpstreamBusy,
    /// Cluster mode, and this node cannot vouch for its state: its lease in
    /// the shared store ran out, or it is reloading after losing the feed.
    #[error("cluster unavailable")]
    ClusterUnavailable,
}

macro_rules! body {
    ($code:literal, $message:literal) => {
        Bytes::from_static(
            concat!(r#"{"code":""#, $code, r#"","message":""#, $message, r#""}"#).as_bytes(),
        )
    };
}

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl Refusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::MissingKey | Refusal::InvalidKey => StatusCode::UNAUTHORIZED,
            Refusal::KeyDisabled | Refusal::ThresholdExceeded | Refusal::SubscriptionExpired => {
                StatusCode::FORBIDDEN
            }
            Refusal::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Refusal::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::UpstreamBusy | Refusal::ClusterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The contract's code.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::MissingKey => "MISSING_KEY",
            Refusal::InvalidKey => "INVALID_KEY",
            Refusal::KeyDisabled | Refusal::ThresholdExceeded => "KEY_DISABLED",
            Refusal::SubscriptionExpired => "SUBSCRIPTION_EXPIRED",
            Refusal::RateLimited(_) => "RATE_LIMITED",
            Refusal::RequestTimeout => "REQUEST_TIMEOUT",
            Refusal::UpstreamUnavailable => "UPSTREAM_UNAVAILABLE",
            Refusal::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            Refusal::UpstreamBusy => "UPSTREAM_BUSY",
            Refusal::ClusterUnavailable => "CLUSTER_UNAVAILABLE",
        }
    }

    /// The JSON body: static bytes, built at compile time.
    pub fn body(&self) -> Bytes {
        match self {
            Refusal::MissingKey => body!("MISSING_KEY", "an API key is required"),
            Refusal::InvalidKey => body!("INVALID_KEY", "the API key is not valid"),
            Refusal::KeyDisabled => body!(
                "KEY_DISABLED",
                "the API key is disabled; contact your service provider"
            ),
            Refusal::ThresholdExceeded => body!(
                "KEY_DISABLED",
                "call threshold exceeded; the API key is now disabled; contact your service provider"
            ),
            Refusal::SubscriptionExpired => body!(
                "SUBSCRIPTION_EXPIRED",
                "the subscription has expired; this method is not allowed until it is renewed"
            ),
            Refusal::RateLimited(_) => body!("RATE_LIMITED", "rate limit exceeded; retry later"),
            Refusal::RequestTimeout => {
                body!("REQUEST_TIMEOUT", "the request body did not arrive in time")
            }
            Refusal::UpstreamUnavailable => {
                body!("UPSTREAM_UNAVAILABLE", "the upstream service is unavailable")
            }
            Refusal::UpstreamTimeout => {
                body!("UPSTREAM_TIMEOUT", "the upstream service did not answer in time")
            }
            Refusal::UpstreamBusy => {
                body!("UPSTREAM_BUSY", "every upstream connection is busy; retry later")
            }
            Refusal::ClusterUnavailable => body!(
                "CLUSTER_UNAVAILABLE",
                "this node cannot reach the cluster's store; retry on another node or later"
            ),
        }
    }

    /// The whole answer: status, JSON body and, for 429, `Retry-After` and the
    /// `x-ratelimit-*` headers.
    pub fn into_response<B>(self) -> Response<AnswerBody<B>> {
        let mut res = Response::new(AnswerBody::refusal(self.code(), self.body()));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(CONTENT_TYPE, APPLICATION_JSON);
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Refusal::RateLimited(limited) = self {
            let retry_after = whole_secs_at_least_one(limited.retry_after);
            h.insert(RETRY_AFTER, number(retry_after));
            h.insert(X_RATELIMIT_LIMIT, number(u64::from(limited.limit)));
            h.insert(X_RATELIMIT_REMAINING, HeaderValue::from_static("0"));
            h.insert(
                X_RATELIMIT_RESET,
                number(whole_secs_at_least_one(limited.reset_after)),
            );
        }
        res
    }
}

/// A decimal header value in one exactly sized allocation (`HeaderValue::from`
/// an integer makes two).
fn number(n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits are valid header bytes.
    HeaderValue::from_bytes(&buf[i..]).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Seconds rounded up, never zero: `Retry-After: 0` would invite a retry storm.
fn whole_secs_at_least_one(d: std::time::Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_body_is_the_contract_json_with_its_own_code() {
        let all = [
            Refusal::MissingKey,
            Refusal::InvalidKey,
            Refusal::KeyDisabled,
            Refusal::ThresholdExceeded,
            Refusal::SubscriptionExpired,
            Refusal::RateLimited(RateLimited {
                limit: 1,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
            }),
            Refusal::RequestTimeout,
            Refusal::UpstreamUnavailable,
            Refusal::UpstreamTimeout,
            Refusal::UpstreamBusy,
            Refusal::ClusterUnavailable,
        ];
        for r in all {
            let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(v["code"], r.code(), "{r:?}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert_eq!(v.as_object().unwrap().len(), 2);
        }
    }

    #[test]
    fn numbers_are_decimal() {
        for n in [0u64, 7, 10, 1234, u64::MAX] {
            assert_eq!(number(n), n.to_string().as_str());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(whole_secs_at_least_one(Duration::ZERO), 1);
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(10)), 1);
        assert_eq!(whole_secs_at_least_one(Duration::from_millis(1001)), 2);
        assert_eq!(whole_secs_at_least_one(Duration::from_secs(3)), 3);
    }
}
