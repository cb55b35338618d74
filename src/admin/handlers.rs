//! One function per admin endpoint. Each authenticates (the `Principal`
//! extractor), authorizes against the org in the path, then reads its body: so a
//! caller who may not make a call learns nothing from the body's validation.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use super::auth::Need;
use super::json::read_json;
use super::view::{EventView, KeyView};
use super::{reply, AdminError, AdminState, Principal};
use crate::clock::Timestamp;
use crate::org::{LimitOverrides, LimitsError, OpError, OrgId};
use crate::store::OrgView;
use crate::token::Role;

type Reply = Result<Response, AdminError>;

impl AdminState {
    fn page(&self, status: StatusCode, v: &OrgView, who: &Principal) -> Response {
        let now = self.store.clock().now();
        reply(status, &KeyView::new(v, self.base_url(&v.id), who, now))
    }

    /// The org a provider names must exist; a token's org always does.
    fn existing(&self, org: &str) -> Result<OrgView, AdminError> {
        Ok(self.store.view(org)?)
    }
}

pub(crate) async fn healthz() -> Response {
    reply(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// 200 while this node serves proxied requests; 503 `NOT_READY` while it
/// does not (cluster mode, and it cannot vouch for its state). No token: a
/// load balancer asks.
pub(crate) async fn readyz(State(s): State<AdminState>) -> Reply {
    if !s.store.serving() {
        return Err(AdminError::NotReady);
    }
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({ "status": "ready" }),
    ))
}

/// Prometheus's text format; no token (a scraper asks, and no figure names
/// an org).
pub(crate) async fn metrics(State(s): State<AdminState>) -> Response {
    let mut res = Response::new(Body::from(s.metrics.render(&s.store)));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

pub(crate) async fn get_key(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::Read, &org)?;
    let v = s.existing(&org)?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

pub(crate) async fn add_key(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::ChangeKey, &org)?;
    let v = s.store.add(&org, who.actor()).await?;
    Ok(s.page(StatusCode::CREATED, &v, &who))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditBody {
    key: String,
}

pub(crate) async fn edit_key(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::ChangeKey, &org)?;
    s.existing(&org)?;
    let EditBody { key } = read_json(&headers, body).await?;
    let v = s.store.edit(&org, &key, who.actor()).await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

pub(crate) async fn regenerate_key(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::ChangeKey, &org)?;
    let v = s.store.regenerate(&org, who.actor()).await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

pub(crate) async fn delete_key(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::ChangeKey, &org)?;
    s.store.delete(&org, who.actor()).await?;
    Ok(reply_empty(StatusCode::NO_CONTENT))
}

pub(crate) async fn audit(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::Read, &org)?;
    let events = s.store.audit(&org).await?;
    let events: Vec<EventView<'_>> = events.iter().map(EventView::from).collect();
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({ "events": events }),
    ))
}

/// `DELETE /v1/orgs/{org}`: the org, its key and its tokens go at once (on
/// every node, in cluster mode); its audit log stays readable by the provider.
pub(crate) async fn delete_org(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.provider_only()?;
    s.store.delete_org(&org, who.actor()).await?;
    Ok(reply_empty(StatusCode::NO_CONTENT))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionBody {
    org: String,
    #[serde(default)]
    subscription_expires_at: Option<Timestamp>,
    #[serde(default)]
    limits: Option<LimitsBody>,
}

pub(crate) async fn provision(
    State(s): State<AdminState>,
    who: Principal,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    who.provider_only()?;
    let b: ProvisionBody = read_json(&headers, body).await?;
    let id = OrgId::parse(&b.org).map_err(OpError::from)?;
    let limits = b
        .limits
        .map(LimitsBody::checked)
        .transpose()?
        .unwrap_or_default();
    let v = s
        .store
        .provision(id, b.subscription_expires_at, limits, who.actor())
        .await?;
    Ok(s.page(StatusCode::CREATED, &v, &who))
}

/// `GET /v1/orgs?limit=N&after=ORG&q=TEXT&status=enabled|disabled`: one page
/// of orgs, ordered by id.
pub(crate) async fn list(
    State(s): State<AdminState>,
    who: Principal,
    RawQuery(query): RawQuery,
) -> Reply {
    who.provider_only()?;
    let ListQuery {
        limit,
        after,
        q,
        disabled,
    } = ListQuery::parse(query.as_deref())?;
    let now = s.store.clock().now();
    let (views, next) = s
        .store
        .page(after.as_deref(), q.as_deref(), disabled, limit);
    let pages: Vec<KeyView<'_>> = views
        .iter()
        .map(|v| KeyView::new(v, s.base_url(&v.id), &who, now))
        .collect();
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({ "orgs": pages, "next": next.as_ref().map(OrgId::as_str) }),
    ))
}

/// The org list's query: at most `limit` orgs (100 unless given, 1 to
/// 1,000), after the org `after`, whose id contains `q`, and whose key is
/// disabled or enabled when `status` says which (`disabled`).
struct ListQuery {
    limit: usize,
    after: Option<String>,
    q: Option<String>,
    disabled: Option<bool>,
}

impl ListQuery {
    const DEFAULT_LIMIT: usize = 100;
    const MAX_LIMIT: usize = 1_000;

    fn parse(query: Option<&str>) -> Result<ListQuery, AdminError> {
        let mut list = ListQuery {
            limit: ListQuery::DEFAULT_LIMIT,
            after: None,
            q: None,
            disabled: None,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decoded(value).ok_or_else(|| {
                AdminError::BadRequest(format!("{name}: not a valid percent-encoded value"))
            })?;
            match name {
                "limit" => {
                    list.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=ListQuery::MAX_LIMIT).contains(n))
                        .ok_or_else(|| {
                            AdminError::BadRequest(format!(
                                "limit: expected a whole number from 1 to {}",
                                ListQuery::MAX_LIMIT
                            ))
                        })?;
                }
                "after" => list.after = Some(value),
                "q" => list.q = Some(value),
                "status" => {
                    list.disabled = Some(match value.as_str() {
                        "enabled" => false,
                        "disabled" => true,
                        _ => {
                            return Err(AdminError::BadRequest(
                                "status: expected `enabled` or `disabled`".into(),
                            ))
                        }
                    });
                }
                // Named without echoing what the client sent.
                _ => {
                    return Err(AdminError::BadRequest(
                        "unknown query parameter; expected one of `limit`, `after`, `q`, `status`"
                            .into(),
                    ))
                }
            }
        }
        Ok(list)
    }
}

/// `value` with `+` as a space and `%XX` escapes decoded, if it is valid
/// UTF-8 after decoding.
fn percent_decoded(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `GET /v1/tokens`: every token's name, role, org and creation time; never
/// a token or its digest.
pub(crate) async fn list_tokens(State(s): State<AdminState>, who: Principal) -> Reply {
    who.provider_only()?;
    let tokens: Vec<serde_json::Value> = s
        .store
        .tokens()
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "role": t.role.as_str(),
                "org": t.org.as_str(),
                "created_at": t.created_at,
            })
        })
        .collect();
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({ "tokens": tokens }),
    ))
}

/// `GET /v1/whoami`: the presented token's name, role and org (`null` for
/// the provider), so a console knows what to show.
pub(crate) async fn whoami(who: Principal) -> Reply {
    let body = match &who {
        Principal::Provider => {
            serde_json::json!({ "name": "provider", "role": "provider", "org": null })
        }
        Principal::Token(t) => serde_json::json!({
            "name": t.name,
            "role": t.role.as_str(),
            "org": t.org.as_str(),
        }),
    };
    Ok(reply(StatusCode::OK, &body))
}

/// `GET /v1/orgs/{org}/usage`: calls in the threshold window against the
/// threshold, the window's bounds, the key's last use, and rate refusals.
pub(crate) async fn usage(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::Read, &org)?;
    let u = s.store.usage(&org).await?;
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({
            "calls_in_window": u.calls_in_window,
            "threshold_calls": u.threshold_calls,
            "window_started_at": u.window_started_at,
            "window_ends_at": u.window_ends_at,
            "last_used_at": u.last_used_at,
            "rate_limited_in_window": u.rate_limited_in_window,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisableBody {
    reason: String,
}

pub(crate) async fn disable(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let Path(org) = org?;
    who.provider_only()?;
    s.existing(&org)?;
    let DisableBody { reason } = read_json(&headers, body).await?;
    if reason.trim().is_empty() || reason.chars().count() > 512 {
        return Err(AdminError::BadRequest(
            "reason: 1 to 512 characters are required".into(),
        ));
    }
    let v = s.store.disable(&org, &reason, who.actor()).await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

pub(crate) async fn enable(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.provider_only()?;
    let v = s.store.enable(&org, who.actor()).await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscriptionBody {
    // Required, but may be null: `deserialize_with` turns off serde's "missing
    // Option is None".
    #[serde(deserialize_with = "Option::<Timestamp>::deserialize")]
    expires_at: Option<Timestamp>,
}

pub(crate) async fn set_subscription(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let Path(org) = org?;
    who.provider_only()?;
    s.existing(&org)?;
    let SubscriptionBody { expires_at } = read_json(&headers, body).await?;
    let v = s
        .store
        .set_subscription(&org, expires_at, who.actor())
        .await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

/// Limits as a client sends them: any JSON number, so that zero, negative,
/// fractional and overflowing values are all refused as 422 naming the field,
/// not as a type error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    rate_per_sec: Option<serde_json::Number>,
    burst: Option<serde_json::Number>,
    threshold_calls: Option<serde_json::Number>,
    threshold_window_secs: Option<serde_json::Number>,
}

impl LimitsBody {
    fn checked(self) -> Result<LimitOverrides, AdminError> {
        use crate::org::limits_max as max;
        let field = |name: &'static str, v: Option<serde_json::Number>, limit: u32| {
            v.map(|n| {
                whole(&n)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|n| *n <= limit)
                    .and_then(std::num::NonZeroU32::new)
                    .ok_or(OpError::InvalidLimits(LimitsError {
                        field: name,
                        max: u64::from(limit),
                    }))
            })
            .transpose()
        };
        Ok(LimitOverrides {
            rate_per_sec: field("rate_per_sec", self.rate_per_sec, max::RATE_PER_SEC)?,
            burst: field("burst", self.burst, max::BURST)?,
            threshold_calls: field(
                "threshold_calls",
                self.threshold_calls,
                max::THRESHOLD_CALLS,
            )?,
            threshold_window_secs: field(
                "threshold_window_secs",
                self.threshold_window_secs,
                max::THRESHOLD_WINDOW_SECS,
            )?,
        })
    }
}

/// `n` when it is a whole number at least 0: `959` and `959.0` alike, as JSON
/// (and JSON Schema's `integer`) does not tell them apart.
fn whole(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        // 2^64 as f64 is exact; below it every whole f64 converts exactly.
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 18_446_744_073_709_551_616.0)
            .map(|f| f as u64)
    })
}

pub(crate) async fn set_limits(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let Path(org) = org?;
    who.provider_only()?;
    s.existing(&org)?;
    let limits = read_json::<LimitsBody>(&headers, body).await?.checked()?;
    let v = s.store.set_limits(&org, limits, who.actor()).await?;
    Ok(s.page(StatusCode::OK, &v, &who))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    role: Role,
    org: String,
}

pub(crate) async fn create_token(
    State(s): State<AdminState>,
    who: Principal,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    who.provider_only()?;
    let b: TokenBody = read_json(&headers, body).await?;
    let (record, token) = s.store.create_token(&b.name, b.role, &b.org).await?;
    Ok(reply(
        StatusCode::CREATED,
        &serde_json::json!({
            "name": record.name,
            "role": record.role,
            "org": record.org,
            "token": token,
        }),
    ))
}

pub(crate) async fn delete_token(
    State(s): State<AdminState>,
    who: Principal,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(name) = name?;
    who.provider_only()?;
    s.store.delete_token(&name).await?;
    Ok(reply_empty(StatusCode::NO_CONTENT))
}

/// A new secret for a token; the old one is refused once this answers.
pub(crate) async fn rotate_token(
    State(s): State<AdminState>,
    who: Principal,
    name: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(name) = name?;
    who.provider_only()?;
    let (record, token) = s.store.rotate_token(&name).await?;
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({
            "name": record.name,
            "role": record.role,
            "org": record.org,
            "token": token,
        }),
    ))
}

/// `GET /v1/orgs/{org}/api-users`: the org's API users' names (every role).
pub(crate) async fn list_users(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::Read, &org)?;
    let names = s.store.users(&org)?;
    let users: Vec<serde_json::Value> = names
        .into_iter()
        .map(|username| serde_json::json!({ "username": username }))
        .collect();
    Ok(reply(
        StatusCode::OK,
        &serde_json::json!({ "api_users": users }),
    ))
}

/// The body of `POST /v1/orgs/{org}/api-users`. Never logged: no `Debug`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserBody {
    username: String,
    password: String,
}

/// `POST /v1/orgs/{org}/api-users`: a new API user (provider, admin).
pub(crate) async fn create_user(
    State(s): State<AdminState>,
    who: Principal,
    org: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let Path(org) = org?;
    who.allow(Need::ChangeKey, &org)?;
    s.existing(&org)?;
    let UserBody { username, password } = read_json(&headers, body).await?;
    s.store
        .create_user(&org, &username, password, who.actor())
        .await?;
    Ok(reply(
        StatusCode::CREATED,
        &serde_json::json!({ "org": org, "username": username }),
    ))
}

/// `DELETE /v1/orgs/{org}/api-users/{username}`: the user and its sessions
/// go at once (provider, admin).
pub(crate) async fn delete_user(
    State(s): State<AdminState>,
    who: Principal,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
) -> Reply {
    let Path((org, username)) = path?;
    who.allow(Need::ChangeKey, &org)?;
    s.existing(&org)?;
    s.store.delete_user(&org, &username, who.actor()).await?;
    Ok(reply_empty(StatusCode::NO_CONTENT))
}

pub(crate) async fn not_found() -> AdminError {
    AdminError::NotFound
}

pub(crate) async fn method_not_allowed() -> AdminError {
    AdminError::MethodNotAllowed
}

fn reply_empty(status: StatusCode) -> Response {
    let mut res = Response::new(Body::empty());
    *res.status_mut() = status;
    res.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(v: serde_json::Value) -> Result<LimitOverrides, AdminError> {
        serde_json::from_value::<LimitsBody>(v).unwrap().checked()
    }

    #[test]
    fn a_limit_written_as_a_whole_float_is_the_same_limit() {
        let a = limits(serde_json::json!({ "burst": 959, "threshold_calls": 16159 })).unwrap();
        let b = limits(serde_json::json!({ "burst": 959.0, "threshold_calls": 16159.0 })).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.burst.map(std::num::NonZeroU32::get), Some(959));
    }

    #[test]
    fn fractional_negative_zero_and_huge_limits_are_still_refused() {
        for bad in [
            serde_json::json!(1.5),
            serde_json::json!(-1.0),
            serde_json::json!(0.0),
            serde_json::json!(1e30),
            serde_json::json!(4_294_967_296.0),
        ] {
            assert!(
                matches!(
                    limits(serde_json::json!({ "rate_per_sec": bad })),
                    Err(AdminError::Op(OpError::InvalidLimits(_)))
                ),
                "{bad}"
            );
        }
    }
}
