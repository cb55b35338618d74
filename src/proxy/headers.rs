//! Headers a proxy must not pass on (RFC 9110, section 7.6.1), and the
//! `X-Forwarded-*` headers it adds.

use http::header::{
    Entry, HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, TE, TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Added by keygate: the client's address, after any the client sent.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Added by keygate: the scheme the client used.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes the hop-by-hop headers of requests as they arrive, before any inner
/// layer sees them: they belong to the client's connection, and a `Connection`
/// header naming, say, `x-org-id` must not be able to remove what the gate adds
/// later. (The answer's hop-by-hop headers are removed by [`Forward`](super::Forward).)
#[derive(Debug, Clone)]
pub struct HopByHop<S> {
    inner: S,
}

impl<S> HopByHop<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        HopByHop { inner }
    }
}

impl<S, B> tower_service::Service<http::Request<B>> for HopByHop<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        strip_hop_by_hop(req.headers_mut());
        self.inner.call(req)
    }
}

/// Removes the hop-by-hop headers: the fixed set, and every header the
/// `Connection` header names. Allocates only when `Connection` is present.
///
/// Runs twice per forwarded request (its head and its answer's), and most
/// carry none of these headers: one pass over the names present (a standard
/// name compares as a small integer) answers that for about a tenth of the
/// instructions that six hashed lookups take.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(is_hop_by_hop) {
        remove_hop_by_hop(headers);
    }
}

/// The hop-by-hop headers every message may carry; `Connection` may name more.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether `name` is in [`HOP_BY_HOP`]: by length first, so that most names
/// cost one comparison.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        _ => false,
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderValue> = headers.get_all(CONNECTION).iter().cloned().collect();
        for value in &named {
            let Ok(list) = value.to_str() else { continue };
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                headers.remove(name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP[1..] {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For` (after every value the
/// client sent) and sets `X-Forwarded-Proto`. `client` is built once per
/// connection; only a client that sent its own `X-Forwarded-For` costs an
/// allocation.
pub(crate) fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, proto: &HeaderValue) {
    // One lookup of `X-Forwarded-For` either way.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        Entry::Occupied(mut e) => {
            // Every value the client sent, in order, then its address.
            let mut v = Vec::with_capacity(64);
            for prior in e.iter() {
                v.extend_from_slice(prior.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(client.as_bytes());
            let joined = HeaderValue::from_bytes(&v).unwrap_or_else(|_| client.clone());
            e.insert(joined);
        }
    }
    headers.insert(X_FORWARDED_PROTO, proto.clone());
}

/// Joins several `Cookie` fields into one, their values separated by "; ", as
/// RFC 9113 section 8.2.3 asks of a request passed from HTTP/2 (where a client
/// may send each cookie as a field of its own) to HTTP/1.1. One field or none:
/// nothing to do, and nothing allocated.
pub(crate) fn join_cookies(headers: &mut HeaderMap) {
    let Entry::Occupied(mut cookies) = headers.entry(COOKIE) else {
        return;
    };
    if cookies.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(cookies.iter().map(|v| v.len() + 2).sum());
    for value in cookies.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Header value bytes joined by "; " are header value bytes.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        cookies.insert(joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert(KEEP_ALIVE, "timeout=5".parse().unwrap());
        h.insert(TE, "trailers".parse().unwrap());
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "1");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        // Listed here, not taken from `HOP_BY_HOP`, so that a name dropped
        // from the table fails this test.
        for name in [
            CONNECTION,
            KEEP_ALIVE,
            PROXY_CONNECTION,
            TE,
            TRANSFER_ENCODING,
            UPGRADE,
        ] {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), "x-named".parse().unwrap());
            h.insert("x-named", "1".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(&name), "{name} kept: {h:?}");
            let named_kept = name != CONNECTION;
            assert_eq!(h.contains_key("x-named"), named_kept, "{name}: {h:?}");
            assert_eq!(h["x-kept"], "1");
        }
    }

    #[test]
    fn the_quick_check_knows_exactly_the_hop_by_hop_names() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            "t",
            "tk",
            "upgrades",
            "connections",
            "keep-alivf",
            "x-connection",
            "proxy-connectiom",
            "transfer-encodinf",
            "content-length",
            "host",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn headers_with_no_hop_by_hop_name_are_left_as_they_are() {
        let mut h = HeaderMap::new();
        h.insert("x-connection", "keep-alive".parse().unwrap());
        h.insert("keep-alive-ish", "1".parse().unwrap());
        h.append(http::header::ACCEPT, "a".parse().unwrap());
        h.append(http::header::ACCEPT, "b".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn cookie_crumbs_are_joined_into_one_field_in_order() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, "a=1".parse().unwrap());
        h.append(COOKIE, "b=2".parse().unwrap());
        h.append(COOKIE, "c=3; d=4".parse().unwrap());
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3; d=4"]);

        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h[COOKIE], "a=1");
        let mut h = HeaderMap::new();
        join_cookies(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarded_for_is_set_or_appended() {
        let client = HeaderValue::from_static("10.0.0.1");
        let http = HeaderValue::from_static("http");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client, &http);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.1");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        add_forwarded(&mut h, &client, &http);
        assert_eq!(h[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.1");

        // Two headers from the client: both kept, in order, in one value;
        // its own X-Forwarded-Proto is replaced.
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        h.append(X_FORWARDED_FOR, "5.6.7.8".parse().unwrap());
        h.insert(X_FORWARDED_PROTO, "https".parse().unwrap());
        add_forwarded(&mut h, &client, &http);
        let all: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        assert_eq!(all, ["1.2.3.4, 5.6.7.8, 10.0.0.1"]);
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }
}
