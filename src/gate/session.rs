//! Session login in the gate (contract section 8): the login path answered by
//! the gate itself, and calls that carry a `JSESSIONID` cookie instead of a
//! key. Reached only when a request has no key header and sessions are
//! configured, so keyed calls never run any of this.

use std::sync::Arc;

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri};
use serde::Deserialize;

use super::admit::Admission;
use super::resolve::named_org;
use super::Gate;
use crate::answer::{AnswerBody, Refusal};
use crate::clock::Timestamp;
use crate::org::OrgId;
use crate::session::{
    self, new_session_value, obfuscate, set_cookie, Session, SessionConfig, SessionDigest,
    SessionRecord,
};
use crate::store::Taken;

/// The most bytes of a login's body read.
pub(crate) const MAX_LOGIN_BODY: usize = 64 * 1024;

/// The body of a successful login and of a session check.
const AUTH_BODY: &[u8] = br#"{"authType":"ADMIN_LOGIN","obfuscateApiKey":true,"passwordExpiryTime":0,"passwordExpiryDays":0}"#;

/// An answer the gate makes itself on the session path, beyond the
/// contract's [`Refusal`]s. Boxed: it travels in [`Admission`] and the
/// response future, which keyed calls return too, so it keeps them small.
#[derive(Debug, Clone)]
pub(crate) struct Answer(Box<Parts>);

#[derive(Debug, Clone)]
struct Parts {
    status: StatusCode,
    code: &'static str,
    body: Bytes,
    cookie: Option<HeaderValue>,
    retry_after: Option<u64>,
    /// A keyed call's refusal, with the vendor's `Retry-After` in the body for a 429.
    refusal: Option<Refusal>,
}

impl Answer {
    fn json(status: StatusCode, code: &'static str, body: Bytes) -> Answer {
        Answer(Box::new(Parts {
            status,
            code,
            body,
            cookie: None,
            retry_after: None,
            refusal: None,
        }))
    }

    /// 401 `INVALID_USERNAME_OR_PASSWORD`: every wrong part of a login.
    pub(crate) fn bad_login() -> Answer {
        Answer::json(
            StatusCode::UNAUTHORIZED,
            "INVALID_USERNAME_OR_PASSWORD",
            Bytes::from_static(
                br#"{"code":"INVALID_USERNAME_OR_PASSWORD","message":"the username, password, API key or timestamp is not valid"}"#,
            ),
        )
    }

    /// 401 `SESSION_NOT_VALID`: a dead, unknown or foreign session.
    pub(crate) fn not_valid() -> Answer {
        Answer::json(
            StatusCode::UNAUTHORIZED,
            "SESSION_NOT_VALID",
            Bytes::from_static(
                br#"{"code":"SESSION_NOT_VALID","message":"the session is not valid; log in again"}"#,
            ),
        )
    }

    fn logged_in(cookie: HeaderValue) -> Answer {
        let mut a = Answer::json(
            StatusCode::OK,
            "SESSION_LOGIN",
            Bytes::from_static(AUTH_BODY),
        );
        a.0.cookie = Some(cookie);
        a
    }

    fn status() -> Answer {
        Answer::json(
            StatusCode::OK,
            "SESSION_STATUS",
            Bytes::from_static(AUTH_BODY),
        )
    }

    fn logged_out() -> Answer {
        Answer::json(
            StatusCode::OK,
            "SESSION_LOGOUT",
            Bytes::from_static(br#"{"status":"ACTIVE"}"#),
        )
    }

    /// 429 for too many failed logins, `Retry-After` in the header and, as
    /// the vendor's clients read it, in the body.
    fn locked_out(secs: u64) -> Answer {
        let secs = secs.max(1);
        let mut a = Answer::json(
            StatusCode::TOO_MANY_REQUESTS,
            // The access log's code; the body says RATE_LIMITED, as the
            // vendor's clients expect of a 429.
            "LOGIN_LOCKED_OUT",
            Bytes::from(format!(
                r#"{{"code":"RATE_LIMITED","message":"too many failed logins; retry later","Retry-After":"{secs} seconds"}}"#
            )),
        );
        a.0.retry_after = Some(secs);
        a
    }

    /// A contract refusal on the session path.
    pub(crate) fn refused(refusal: Refusal) -> Answer {
        let mut a = Answer::json(refusal.status(), "", Bytes::new());
        a.0.refusal = Some(refusal);
        a
    }

    /// The whole answer.
    pub(crate) fn into_response<B>(self) -> Response<AnswerBody<B>> {
        let this = *self.0;
        if let Some(refusal) = this.refusal {
            let limited = match &refusal {
                Refusal::RateLimited(l) => Some(l.retry_after),
                _ => None,
            };
            let code = refusal.code();
            let mut res = refusal.into_response();
            if let Some(after) = limited {
                // The vendor's shape: the body says it too.
                let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
                let body = format!(
                    r#"{{"code":"RATE_LIMITED","message":"rate limit exceeded; retry later","Retry-After":"{} seconds"}}"#,
                    secs.max(1)
                );
                *res.body_mut() = AnswerBody::refusal(code, Bytes::from(body));
            }
            return res;
        }
        let mut res = Response::new(AnswerBody::refusal(this.code, this.body));
        *res.status_mut() = this.status;
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        if let Some(cookie) = this.cookie {
            h.insert(http::header::SET_COOKIE, cookie);
        }
        if let Some(secs) = this.retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

/// What the session path decided before any body is read.
pub(crate) enum SessionPath {
    /// A login: read the body, then [`Gate::login`].
    Login(OrgId),
    /// A logout of this live session: ended on every node, then answered.
    Logout(SessionDigest),
    /// Cluster mode: a session idle by this node's own record; ask when
    /// another node last saw it used, then decide again.
    Recheck(SessionDigest),
}

/// Whether a session lives, as this node sees it.
enum Liveness {
    Live(Arc<Session>),
    /// Idle by this node's record only; cluster mode asks the others.
    IdleHere,
    Dead,
}

/// The login's body. Not `Debug`: it holds the password.
#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "apiKey")]
    api_key: String,
    username: String,
    password: String,
    timestamp: serde_json::Value,
}

/// Milliseconds since the epoch, sent as a JSON number or a string of digits.
fn timestamp_ms(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    }
}

fn ms(t: Timestamp) -> u64 {
    t.as_nanos() / 1_000_000
}

impl Gate {
    /// The session config, if sessions are on.
    pub(crate) fn session_config(&self) -> Option<&SessionConfig> {
        self.session.as_ref()
    }

    /// A request without a key header, with sessions on: the login path's
    /// calls, or a call with a session cookie; otherwise `MISSING_KEY` as
    /// before.
    pub(crate) fn admit_session(
        &self,
        config: &SessionConfig,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Admission {
        let Some(named) = named_org(&self.config.org_from, uri, headers) else {
            return Admission::Refuse(Refusal::MissingKey);
        };
        let rest = uri.path().get(named.prefix_len..).unwrap_or("");
        let on_login_path = rest == config.path;
        if on_login_path && method == Method::POST {
            // Only a well-formed org id reaches here.
            return match std::str::from_utf8(named.org).map(OrgId::parse) {
                Ok(Ok(org)) => Admission::Session(SessionPath::Login(org)),
                _ => Admission::Answer(Answer::bad_login()),
            };
        }
        let Some(value) = session::presented_session(headers) else {
            return if on_login_path && (method == Method::GET || method == Method::DELETE) {
                Admission::Answer(Answer::not_valid())
            } else {
                Admission::Refuse(Refusal::MissingKey)
            };
        };
        let digest = SessionDigest::of(value);
        let now = self.store.clock().now();
        if on_login_path && method == Method::DELETE {
            let ours = self
                .store
                .sessions()
                .get(&digest)
                .is_some_and(|s| s.record.org.as_bytes() == named.org);
            if ours {
                return Admission::Session(SessionPath::Logout(digest));
            }
            return Admission::Answer(Answer::not_valid());
        }
        let session = match self.live_session(config, &digest, named.org, now) {
            Liveness::Live(s) => s,
            Liveness::IdleHere => return Admission::Session(SessionPath::Recheck(digest)),
            Liveness::Dead => return Admission::Answer(Answer::not_valid()),
        };
        if on_login_path && method == Method::GET {
            self.store.touch_session(&session, now);
            return Admission::Answer(Answer::status());
        }
        let admitted = self
            .store
            .with_org(named.org, |org| {
                let c = org.hot();
                let same = c.key().is_some()
                    && !c.is_disabled()
                    && c.generation == session.record.generation;
                let checked = same.then_some((
                    c.threshold_calls,
                    c.threshold_window_secs,
                    c.rate,
                    c.subscription_expired(now),
                ));
                let (threshold_calls, window_secs, rate, expired) = checked?;
                Some(self.counted(
                    org,
                    method,
                    headers,
                    now,
                    (threshold_calls, window_secs, rate, expired),
                    named.prefix_len,
                    true,
                ))
            })
            .flatten();
        match admitted {
            // The vendor's shape: Retry-After in the body too.
            Some(Admission::Refuse(r @ Refusal::RateLimited(_))) => {
                self.store.touch_session(&session, now);
                Admission::Answer(Answer::refused(r))
            }
            Some(a) => {
                self.store.touch_session(&session, now);
                a
            }
            None => {
                self.store.sessions().remove(&digest);
                Admission::Answer(Answer::not_valid())
            }
        }
    }

    /// The session of `digest` if it lives and belongs to `org`: not idle
    /// past the timeout, not older than the maximum age, its org's key of
    /// its generation, enabled. A dead one is forgotten; one idle by this
    /// node's own record is, in cluster mode, asked about first.
    fn live_session(
        &self,
        config: &SessionConfig,
        digest: &SessionDigest,
        org: &[u8],
        now: Timestamp,
    ) -> Liveness {
        let sessions = self.store.sessions();
        let Some(session) = sessions.get(digest) else {
            return Liveness::Dead;
        };
        if session.record.org.as_bytes() != org {
            // Another org's session: not this org's to end.
            return Liveness::Dead;
        }
        let too_old = now > session.record.created_at.saturating_add(config.max_age);
        let idle = now > session.last_used().saturating_add(config.idle_timeout);
        if idle && !too_old && self.store.is_shared() {
            return Liveness::IdleHere;
        }
        let alive = !too_old
            && !idle
            && self
                .store
                .with_org(org, |o| {
                    let c = o.hot();
                    c.key().is_some()
                        && !c.is_disabled()
                        && c.generation == session.record.generation
                })
                .unwrap_or(false);
        if !alive {
            sessions.remove(digest);
            return Liveness::Dead;
        }
        Liveness::Live(session)
    }

    /// A session this node found idle by its own record: alive if another
    /// node saw it used within the idle timeout (it is then touched here).
    pub(crate) async fn recheck(self: Arc<Self>, digest: SessionDigest) -> bool {
        let Some(config) = self.session.as_ref() else {
            return false;
        };
        let Some(session) = self.store.sessions().get(&digest) else {
            return false;
        };
        let now = self.store.clock().now();
        match self.store.session_used(digest).await {
            Ok(Some(at)) if at.saturating_add(config.idle_timeout) >= now => {
                session.touch(at);
                true
            }
            Ok(_) => {
                self.store.sessions().remove(&digest);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not ask when a session was last used");
                false
            }
        }
    }

    /// A login, once its body is read: every wrong part one 401; then the
    /// key's checks as for a keyed call (but allowed while the subscription
    /// is expired); then the password, on the password pool.
    pub(crate) async fn login(self: Arc<Self>, org: OrgId, body: Bytes) -> Answer {
        let Some(config) = self.session.clone() else {
            return Answer::bad_login();
        };
        let store = self.store.clone();
        let sessions = store.sessions();
        let now = store.clock().now();
        let Ok(login) = serde_json::from_slice::<LoginBody>(&body) else {
            return self.failed_login(&org, "", now).await;
        };
        if let Some(wait) = self.lockout(&org, &login.username, now).await {
            return Answer::locked_out(wait);
        }
        let Some(ts) = timestamp_ms(&login.timestamp) else {
            return self.failed_login(&org, &login.username, now).await;
        };
        let window = u64::try_from(config.timestamp_window.as_millis()).unwrap_or(u64::MAX);
        if ms(now).abs_diff(ts) > window {
            return self.failed_login(&org, &login.username, now).await;
        }
        // The key, then the checks of a keyed call, in its order.
        let checked = store.with_org(org.as_bytes(), |o| {
            let c = o.hot();
            let key_ok = c
                .key()
                .is_some_and(|k| obfuscate::matches(k, ts, login.api_key.as_bytes()))
                .then_some((
                    c.is_disabled(),
                    c.generation,
                    c.threshold_calls,
                    c.threshold_window_secs,
                    c.rate,
                ));
            key_ok.map(|(disabled, generation, calls, window_secs, rate)| {
                if disabled {
                    return (Admission::Refuse(Refusal::KeyDisabled), generation);
                }
                // Allowed while the subscription is expired: `expired` false.
                let a = self.counted(
                    o,
                    &Method::POST,
                    &HeaderMap::new(),
                    now,
                    (calls, window_secs, rate, false),
                    0,
                    true,
                );
                (a, generation)
            })
        });
        let Some(Some((admission, generation))) = checked else {
            return self.failed_login(&org, &login.username, now).await;
        };
        match self.settle(admission).await {
            Ok(()) => {}
            Err(answer) => return answer,
        }
        let until = Timestamp::from_nanos(ts.saturating_add(window).saturating_mul(1_000_000));
        if !sessions.reserve_login(&org, ts, &login.username, now, until) {
            return self.failed_login(&org, &login.username, now).await;
        }
        let digest = store.user_digest(&org, &login.username);
        let ok = store
            .passwords()
            .verify(login.password.clone(), digest)
            .await;
        if !ok {
            sessions.release_login(&org, ts, &login.username);
            return self.failed_login(&org, &login.username, now).await;
        }
        let value = new_session_value();
        let record = SessionRecord {
            digest: SessionDigest::of(value.as_bytes()),
            org: org.clone(),
            username: login.username.clone(),
            generation,
            created_at: now,
            login_timestamp_ms: ts,
        };
        let digest = record.digest;
        match store.put_session(record, until).await {
            Ok(()) => {}
            Err(refusal) => return Answer::refused(refusal),
        }
        // A user deletion, key change or disable that raced the login: once
        // the session is on every node, each node has also applied every
        // change committed before it, so what this node holds now says
        // whether the session was born dead; a later change ends it itself.
        let still = store.has_user(&org, &login.username)
            && store
                .with_org(org.as_bytes(), |o| {
                    let c = o.hot();
                    c.key().is_some() && !c.is_disabled() && c.generation == generation
                })
                .unwrap_or(false);
        if !still {
            // Best effort: a session that stays is refused at use anyway,
            // unless only a disable raced it.
            let _ = store.end_session(digest).await;
            return Answer::bad_login();
        }
        tracing::info!(org = %org, "session login");
        match HeaderValue::from_str(&set_cookie(&value, config.secure_cookie)) {
            Ok(cookie) => Answer::logged_in(cookie),
            // Hex digits and fixed ASCII: always a valid header value.
            Err(_) => Answer::bad_login(),
        }
    }

    /// Seconds until logins for `org` (or `username` of it) may be tried
    /// again, if over the limits: by this node's count, and in cluster mode
    /// by the cluster's.
    async fn lockout(&self, org: &OrgId, username: &str, now: Timestamp) -> Option<u64> {
        let here = self
            .store
            .sessions()
            .locked_out(org.as_str(), username, now);
        here.max(self.cluster_failures(org, username, false).await)
    }

    /// Counts a failed login on this node and, in cluster mode, for the
    /// cluster; the one 401 every failure answers.
    async fn failed_login(&self, org: &OrgId, username: &str, now: Timestamp) -> Answer {
        self.store.sessions().failed(org.as_str(), username, now);
        self.cluster_failures(org, username, true).await;
        Answer::bad_login()
    }

    /// The cluster's lockout of `org` and `username`, counting a failure
    /// first when `failed`. Only an org that exists is counted there: a
    /// login for a made-up org fails before any argon2 work, and counting it
    /// would let a flood of made-up names fill the backend with counters
    /// (this node's own count is bounded in size). Without the backend, the
    /// node's own count still limits.
    async fn cluster_failures(&self, org: &OrgId, username: &str, failed: bool) -> Option<u64> {
        if !self.store.is_shared() || self.store.with_org(org.as_bytes(), |_| ()).is_none() {
            return None;
        }
        match self.store.login_lockout(org, username, failed).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(error = %e, "could not count failed logins for the cluster");
                None
            }
        }
    }

    /// Ends the session `digest` everywhere, then answers.
    pub(crate) async fn logout(self: Arc<Self>, digest: SessionDigest) -> Answer {
        match self.store.end_session(digest).await {
            Ok(()) => Answer::logged_out(),
            Err(r) => Answer::refused(r),
        }
    }

    /// Carries a login's count through to its end: a crossing disables the
    /// key, a node without granted calls asks the cluster.
    async fn settle(&self, admission: Admission) -> Result<(), Answer> {
        match admission {
            Admission::Allow { .. } | Admission::AllowSession { .. } => Ok(()),
            Admission::Refuse(r) => Err(Answer::refused(r)),
            Admission::Disable(org) => {
                self.store.disable_over_threshold(org).await;
                Err(Answer::refused(Refusal::ThresholdExceeded))
            }
            Admission::Take { org, .. } => match self.store.take_calls(org.clone()).await {
                Taken::Within => {
                    let now = self.store.clock().now();
                    let rate = org.hot().rate;
                    match self.after_count(
                        &org,
                        &Method::POST,
                        &HeaderMap::new(),
                        now,
                        false,
                        rate,
                        0,
                        true,
                    ) {
                        Admission::Refuse(r) => Err(Answer::refused(r)),
                        _ => Ok(()),
                    }
                }
                Taken::Crossed => {
                    self.store.disable_over_threshold(org).await;
                    Err(Answer::refused(Refusal::ThresholdExceeded))
                }
                Taken::Unavailable => Err(Answer::refused(Refusal::ClusterUnavailable)),
            },
            Admission::Answer(a) => Err(a),
            Admission::Session(_) => Err(Answer::bad_login()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_answer_is_one_pointer_so_keyed_calls_carry_nothing_more() {
        assert_eq!(std::mem::size_of::<Answer>(), std::mem::size_of::<usize>());
    }

    #[test]
    fn a_timestamp_is_a_number_or_a_string_of_digits() {
        assert_eq!(
            timestamp_ms(&serde_json::json!(1_700_000_000_123u64)),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            timestamp_ms(&serde_json::json!("1700000000123")),
            Some(1_700_000_000_123)
        );
        assert_eq!(timestamp_ms(&serde_json::json!("17e5")), None);
        assert_eq!(timestamp_ms(&serde_json::json!(-1)), None);
        assert_eq!(timestamp_ms(&serde_json::json!(1.5)), None);
        assert_eq!(timestamp_ms(&serde_json::json!("")), None);
    }
}
