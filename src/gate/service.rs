//! [`KeyGate`], and step 6 of the request path: forward what was admitted.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, Uri};
use tower_service::Service;

use super::admit::Admission;
use super::future::Next;
use super::session::{Answer, SessionPath, MAX_LOGIN_BODY};
use super::{Gate, GateConfig, KeyGateLayer, OrgSource, ResponseFuture};
use crate::answer::Refusal;
use crate::org::OrgId;
use crate::store::Store;
use crate::store::Taken;

/// The header that tells the upstream which org a request is for. A client's own
/// is always replaced.
pub const X_ORG_ID: HeaderName = HeaderName::from_static("x-org-id");

/// Checks every request's API key against its org before the inner service sees
/// it. See the [module docs](super).
pub struct KeyGate<S> {
    inner: S,
    gate: Arc<Gate>,
}

impl<S> KeyGate<S> {
    /// Gates `inner` with `store` and `config`.
    pub fn new(inner: S, store: Store, config: GateConfig) -> Self {
        KeyGate {
            inner,
            gate: Arc::new(Gate::new(store, config, None)),
        }
    }

    /// Gates `inner` with `store` and `config`, with ZIA-compatible session
    /// login on ([`KeyGateLayer::with_sessions`]).
    pub fn with_sessions(
        inner: S,
        store: Store,
        config: GateConfig,
        session: crate::session::SessionConfig,
    ) -> Self {
        KeyGate {
            inner,
            gate: Arc::new(Gate::new(store, config, Some(session))),
        }
    }

    /// A [`KeyGateLayer`]: the same, as a tower layer.
    pub fn layer(store: Store, config: GateConfig) -> KeyGateLayer {
        KeyGateLayer::new(store, config)
    }

    pub(crate) fn from_parts(inner: S, gate: Arc<Gate>) -> Self {
        KeyGate { inner, gate }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

// By hand: a derive would require `S: Clone` only through `Arc<Gate>`'s bounds,
// which it cannot see.
impl<S: Clone> Clone for KeyGate<S> {
    fn clone(&self) -> Self {
        KeyGate {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for KeyGate<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGate")
            .field("inner", &self.inner)
            .field("config", &self.gate.config)
            .finish_non_exhaustive()
    }
}

/// `S: Clone + Send`, as tower-http's `AsyncRequireAuthorization` asks: in
/// cluster mode a call may wait for the cluster to grant calls of its org's
/// threshold before the inner service sees it, and then it holds the service
/// that was made ready for it, leaving a clone behind.
impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KeyGate<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: http_body::Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<crate::answer::AnswerBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The key header is not marked sensitive: it is taken out of the
        // request here, and a refused request is dropped.
        let presented = self.gate.presented(req.headers_mut());
        match self
            .gate
            .admit(presented, req.method(), req.uri(), req.headers())
        {
            Admission::Allow { prefix_len } => {
                forward(&mut req, &self.gate, prefix_len, false);
                ResponseFuture::inner(self.inner.call(req))
            }
            Admission::Refuse(refusal) => ResponseFuture::refused(refusal),
            Admission::AllowSession { prefix_len } => {
                forward(&mut req, &self.gate, prefix_len, true);
                ResponseFuture::inner(self.inner.call(req))
            }
            Admission::Answer(answer) => ResponseFuture::answered(answer),
            Admission::Session(SessionPath::Login(org)) => {
                let gate = Arc::clone(&self.gate);
                let body = req.into_body();
                ResponseFuture::taking(Box::pin(async move {
                    use http_body_util::BodyExt;
                    let read = http_body_util::Limited::new(body, MAX_LOGIN_BODY)
                        .collect()
                        .await;
                    let answer = match read {
                        Ok(collected) => gate.login(org, collected.to_bytes()).await,
                        Err(_) => Answer::bad_login(),
                    };
                    Next::Answer(answer)
                }))
            }
            Admission::Session(SessionPath::Logout(digest)) => {
                let gate = Arc::clone(&self.gate);
                ResponseFuture::taking(Box::pin(
                    async move { Next::Answer(gate.logout(digest).await) },
                ))
            }
            Admission::Session(SessionPath::Recheck(digest)) => {
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let gate = Arc::clone(&self.gate);
                ResponseFuture::taking(Box::pin(async move {
                    if !Arc::clone(&gate).recheck(digest).await {
                        return Next::Answer(Answer::not_valid());
                    }
                    // Touched with the other node's use: decided again.
                    let presented = gate.presented(req.headers_mut());
                    let admission = gate.admit(presented, req.method(), req.uri(), req.headers());
                    let admission = match admission {
                        Admission::Take {
                            org,
                            prefix_len,
                            session,
                        } => {
                            match gate.store.take_calls(org.clone()).await {
                                Taken::Within => {}
                                Taken::Crossed => {
                                    return Next::Disable(Box::pin(
                                        gate.store.disable_over_threshold(org),
                                    ))
                                }
                                Taken::Unavailable => {
                                    return Next::Refuse(Refusal::ClusterUnavailable)
                                }
                            }
                            gate.finish(&org, req.method(), req.headers(), prefix_len, session)
                        }
                        other => other,
                    };
                    match admission {
                        Admission::Allow { prefix_len } => {
                            forward(&mut req, &gate, prefix_len, false);
                            Next::Call(inner.call(req))
                        }
                        Admission::AllowSession { prefix_len } => {
                            forward(&mut req, &gate, prefix_len, true);
                            Next::Call(inner.call(req))
                        }
                        Admission::Refuse(r @ Refusal::RateLimited(_)) => {
                            Next::Answer(Answer::refused(r))
                        }
                        Admission::Refuse(refusal) => Next::Refuse(refusal),
                        Admission::Answer(answer) => Next::Answer(answer),
                        Admission::Disable(org) => {
                            Next::Disable(Box::pin(gate.store.disable_over_threshold(org)))
                        }
                        // Decided once more only: a session idle again, a
                        // login or logout here, is not valid.
                        Admission::Take { .. } | Admission::Session(_) => {
                            Next::Answer(Answer::not_valid())
                        }
                    }
                }))
            }
            Admission::Disable(org) => {
                ResponseFuture::disabling(Box::pin(self.gate.store.disable_over_threshold(org)))
            }
            Admission::Take {
                org,
                prefix_len,
                session,
            } => {
                // The service polled ready is the one that takes the call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let gate = Arc::clone(&self.gate);
                ResponseFuture::taking(Box::pin(async move {
                    match gate.store.take_calls(org.clone()).await {
                        Taken::Within => {}
                        Taken::Crossed => {
                            return Next::Disable(Box::pin(gate.store.disable_over_threshold(org)))
                        }
                        Taken::Unavailable => return Next::Refuse(Refusal::ClusterUnavailable),
                    }
                    match gate.finish(&org, req.method(), req.headers(), prefix_len, session) {
                        Admission::Allow { prefix_len } => {
                            forward(&mut req, &gate, prefix_len, false);
                            Next::Call(inner.call(req))
                        }
                        Admission::AllowSession { prefix_len } => {
                            forward(&mut req, &gate, prefix_len, true);
                            Next::Call(inner.call(req))
                        }
                        Admission::Refuse(r @ Refusal::RateLimited(_)) if session => {
                            Next::Answer(Answer::refused(r))
                        }
                        Admission::Refuse(refusal) => Next::Refuse(refusal),
                        Admission::Answer(answer) => Next::Answer(answer),
                        // `finish` only allows or refuses.
                        Admission::Disable(_) | Admission::Take { .. } | Admission::Session(_) => {
                            Next::Refuse(Refusal::ClusterUnavailable)
                        }
                    }
                }))
            }
        }
    }
}

/// Prepares an admitted request for the inner service: the key header is
/// gone already ([`Gate::presented`]; here only when it names the org too),
/// and for a call with a session the session's cookie goes; the org goes in
/// `x-org-id` (and the extensions, if configured), and in path mode the
/// org's segment leaves the path.
///
/// The org's id is taken from the request, not from the store: in header
/// mode the value it came in (a reference count on the connection's read
/// buffer, and nothing at all when that header is `x-org-id` itself), in
/// path mode a copy of the segment. Made from the org's record instead, it
/// was one more cache line to fetch per request at a million orgs
/// (BENCHMARKS.md, "Issue 17, seventh round").
///
/// Allocations here are the ones `http` forces: the extensions map on its
/// first insert, and, in path mode, the new path and the id's copy (its
/// segment is in the old path's buffer, which `http` does not hand out),
/// one more copy of it when it goes in the extensions too.
fn forward<B>(req: &mut Request<B>, gate: &Gate, prefix_len: usize, session: bool) {
    let config = &gate.config;
    // The org named in `x-org-id` itself: that header, checked by the gate
    // to be there once and well-formed, is forwarded as it came.
    let own_header = gate.roles.org_in_x_org_id;
    // Read before the key is removed: a layer's config may name one
    // header for both the key and the org.
    let id = match &config.org_from {
        OrgSource::Path => Some(strip_path_prefix(req.uri_mut(), prefix_len)),
        OrgSource::Header(_) if own_header && !config.org_extension => None,
        // The one well-formed value the gate admitted the request by.
        OrgSource::Header(name) => req.headers().get(name).cloned(),
    };
    let headers = req.headers_mut();
    // Taken out already ([`Gate::presented`]), unless it names the org too.
    if gate.roles.key_names_org {
        headers.remove(&config.key_header);
    }
    if session {
        crate::session::strip_session(headers);
    }
    match id {
        Some(id) if config.org_extension => {
            if !own_header {
                // A copy, not a clone: in path mode the id is a copy of
                // its own, and a clone would make it shared (an allocation,
                // a compare-and-swap, an atomic decrement per drop), dearer
                // than this allocation (BENCHMARKS.md, "Issue 17, ninth
                // round"). In header mode it measured the same.
                let copy = HeaderValue::from_bytes(id.as_bytes())
                    .expect("a header value's bytes make one");
                headers.insert(X_ORG_ID, copy);
            }
            req.extensions_mut().insert(OrgId::from_admitted(id));
        }
        Some(id) => {
            headers.insert(X_ORG_ID, id);
        }
        None if own_header => {}
        // Not reached: the gate admitted the request by this header. A
        // client's own `x-org-id` must not reach the service in any case.
        None => {
            headers.remove(X_ORG_ID);
        }
    }
}

/// `/acme/v1/users?x=1` with `prefix_len` 5 becomes `/v1/users?x=1`; `/acme` and
/// `/acme?x=1` become `/` and `/?x=1`. Returns a copy of the id (`acme`).
fn strip_path_prefix(uri: &mut Uri, prefix_len: usize) -> HeaderValue {
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let id = pq.get(1..prefix_len).unwrap_or("");
    // The segment the gate admitted the request by: a well-formed id, and
    // so a valid header value.
    let id = HeaderValue::from_str(id).expect("an org id is a valid header value");
    let rest = pq.get(prefix_len..).unwrap_or("");
    // Exactly sized: a spare byte would make `freeze` reallocate.
    let mut buf = BytesMut::with_capacity(rest.len() + usize::from(!rest.starts_with('/')));
    if !rest.starts_with('/') {
        buf.put_u8(b'/');
    }
    buf.put_slice(rest.as_bytes());
    let mut parts = std::mem::take(uri).into_parts();
    // A suffix of a valid path-and-query, after a '/', is a valid path-and-query,
    // and replacing the path of a valid URI keeps it valid.
    parts.path_and_query =
        Some(PathAndQuery::from_maybe_shared(buf.freeze()).expect("suffix of a valid path"));
    *uri = Uri::from_parts(parts).expect("a valid URI with a valid path");
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stripped(uri: &str, n: usize) -> String {
        let mut uri: Uri = uri.parse().unwrap();
        let id = strip_path_prefix(&mut uri, n);
        assert_eq!(id, "acme");
        uri.to_string()
    }

    #[test]
    fn the_org_segment_leaves_the_path_and_the_query_stays() {
        assert_eq!(stripped("/acme/v1/users?x=1", 5), "/v1/users?x=1");
        assert_eq!(stripped("/acme", 5), "/");
        assert_eq!(stripped("/acme/", 5), "/");
        assert_eq!(stripped("/acme?x=1", 5), "/?x=1");
        assert_eq!(stripped("http://h:1/acme/v1", 5), "http://h:1/v1");
    }
}
