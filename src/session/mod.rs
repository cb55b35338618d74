//! ZIA-compatible session login (contract section 8).
//!
//! The vendor's clients do not send the org's key with every call: they log
//! in once at `{base_url}{path}` with the key obfuscated by a millisecond
//! timestamp ([`obfuscate`]), an API user's username and password
//! ([`user`]), and then call with the `JSESSIONID` cookie they got back.
//! This module holds the parts that do not depend on the request path: the
//! obfuscation, the users' password digests and the pool that computes them,
//! and the table of live sessions ([`Sessions`]). The gate
//! ([`crate::gate`]) answers the login path itself and runs calls with a
//! session through the same checks as keyed calls.
//!
//! A session's validity is tied to the org's state: it records the org's
//! key generation at login and is valid only while the org exists, its key
//! is present, not disabled and of the same generation, its user exists, and
//! it is neither idle past `idle_timeout_secs` nor older than `max_age_secs`.
//! The store ends the sessions an org change, an org deletion or a user
//! deletion kills, on every node, as it applies the change.

pub mod obfuscate;
pub mod table;
pub mod user;

use std::time::Duration;

pub use table::{
    new_session_value, LoginFailures, Session, SessionDigest, SessionRecord, Sessions,
};
pub use user::{ApiUser, PasswordPool};

/// The longest `max_age_secs` (and idle timeout and timestamp window) the
/// config accepts: a week. A shared backend drops sessions older than this.
pub const MAX_AGE_LIMIT_SECS: u64 = 7 * 24 * 3600;

/// The cookie the vendor's clients carry their session in.
pub const COOKIE_NAME: &str = "JSESSIONID";

/// The request header the vendor's Go SDK also sends the session in.
pub const SESSION_HEADER: &str = "jsessionid";

/// How session login is configured (`[session]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// The login path under an org's base URL, starting with `/`.
    pub path: String,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session this old ends, used or not.
    pub max_age: Duration,
    /// How far a login's timestamp may be from this node's clock, either way.
    pub timestamp_window: Duration,
    /// Whether the cookie is marked `Secure` (the proxy listener serves TLS).
    pub secure_cookie: bool,
}

impl Default for SessionConfig {
    /// The contract's defaults.
    fn default() -> Self {
        SessionConfig {
            path: "/api/v1/authenticatedSession".to_owned(),
            idle_timeout: Duration::from_secs(300),
            max_age: Duration::from_secs(43_200),
            timestamp_window: Duration::from_secs(300),
            secure_cookie: false,
        }
    }
}

/// The session cookie's value among the request's `Cookie` headers (or the
/// Go SDK's `JSessionID` header), if exactly one is sent.
pub fn presented_session(headers: &http::HeaderMap) -> Option<&[u8]> {
    let mut found: Option<&[u8]> = None;
    for v in headers.get_all(http::header::COOKIE) {
        for pair in v.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            if let Some(value) = pair
                .strip_prefix(COOKIE_NAME.as_bytes())
                .and_then(|rest| rest.strip_prefix(b"="))
            {
                if found.is_some_and(|f| f != value) {
                    return None;
                }
                found = Some(value);
            }
        }
    }
    if found.is_none() {
        let mut values = headers.get_all(SESSION_HEADER).iter();
        if let (Some(v), None) = (values.next(), values.next()) {
            found = Some(v.as_bytes());
        }
    }
    found.filter(|v| !v.is_empty())
}

/// Removes the session cookie (and the `JSessionID` header) from `headers`,
/// keeping every other cookie as it was sent.
pub fn strip_session(headers: &mut http::HeaderMap) {
    headers.remove(SESSION_HEADER);
    let cookies: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .cloned()
        .collect();
    if cookies.is_empty() {
        return;
    }
    headers.remove(http::header::COOKIE);
    for v in cookies {
        let kept: Vec<&[u8]> = v
            .as_bytes()
            .split(|b| *b == b';')
            .filter(|pair| {
                let pair = pair.trim_ascii();
                !(pair.starts_with(COOKIE_NAME.as_bytes())
                    && pair.get(COOKIE_NAME.len()) == Some(&b'='))
            })
            .collect();
        if kept.is_empty() || kept.iter().all(|p| p.trim_ascii().is_empty()) {
            continue;
        }
        let joined: Vec<u8> = kept
            .iter()
            .map(|p| p.trim_ascii())
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        // Made of bytes of a valid header value, joined by "; ".
        if let Ok(value) = http::HeaderValue::from_bytes(&joined) {
            headers.append(http::header::COOKIE, value);
        }
    }
}

/// The `Set-Cookie` value of a new session: the value followed by `;`, as the
/// vendor's clients' pattern `JSESSIONID=(.*?);` needs.
pub fn set_cookie(value: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE_NAME}={value}; Path=/; HttpOnly{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header::COOKIE, HeaderMap, HeaderValue};

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_session(&h), None);
        h.insert(COOKIE, HeaderValue::from_static("a=1; JSESSIONID=abc; b=2"));
        assert_eq!(presented_session(&h), Some(&b"abc"[..]));
        h.append(COOKIE, HeaderValue::from_static("JSESSIONID=xyz"));
        assert_eq!(presented_session(&h), None, "two different sessions");
        let mut g = HeaderMap::new();
        g.insert("JSessionID", HeaderValue::from_static("abc"));
        assert_eq!(presented_session(&g), Some(&b"abc"[..]));
    }

    #[test]
    fn stripping_keeps_every_other_cookie() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; JSESSIONID=abc; b=2"));
        h.append(COOKIE, HeaderValue::from_static("JSESSIONID=abc"));
        h.insert("jsessionid", HeaderValue::from_static("abc"));
        h.insert("x-other", HeaderValue::from_static("1"));
        strip_session(&mut h);
        let cookies: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, vec![HeaderValue::from_static("a=1; b=2")]);
        assert!(h.get("jsessionid").is_none());
        assert!(h.get("x-other").is_some());
        let mut j = HeaderMap::new();
        j.insert(COOKIE, HeaderValue::from_static("JSESSIONIDX=1"));
        strip_session(&mut j);
        assert_eq!(j.get(COOKIE).unwrap(), "JSESSIONIDX=1");
    }

    #[test]
    fn the_set_cookie_value_is_followed_by_a_semicolon() {
        let c = set_cookie("abc", false);
        assert_eq!(c, "JSESSIONID=abc; Path=/; HttpOnly");
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        let extracted = c.strip_prefix("JSESSIONID=").unwrap().split(';').next();
        assert_eq!(extracted, Some("abc"));
    }
}
