//! Where admitted requests go.

use bytes::{BufMut, BytesMut};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

/// The upstream's address, `Host` value and optional base path, worked out once
/// at start so that each request's target is assembled from reference-counted
/// parts.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to (port 80 when the URL names none).
    addr: String,
    /// `host[:port]`, the port only when it is not 80, as `Host` carries it.
    host: HeaderValue,
    /// The upstream URI's path without a trailing `/`; empty for none.
    base: String,
}

/// Why an upstream URI is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream must be an absolute http URL without a query")]
pub struct UpstreamError;

impl Upstream {
    /// Splits `uri`, which must be absolute `http://host[:port][/base]`.
    pub fn new(uri: &Uri) -> Result<Upstream, UpstreamError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError);
        };
        if *scheme != Scheme::HTTP || uri.query().is_some() {
            return Err(UpstreamError);
        }
        let host = match authority.port_u16() {
            Some(port) if port != 80 => format!("{}:{port}", authority.host()),
            _ => authority.host().to_owned(),
        };
        Ok(Upstream {
            addr: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            // An authority is made of valid header value bytes.
            host: HeaderValue::from_str(&host).map_err(|_| UpstreamError)?,
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Where to connect: `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The `Host` a request gets when its client sent none (HTTP/2 clients send
    /// `:authority` instead).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// The request target sent upstream for a request to `uri`, in origin form:
    /// the request's path and query after the base path. Without a base path
    /// nothing is copied.
    pub fn target(&self, uri: Uri) -> Uri {
        let mut parts = uri.into_parts();
        let pq = parts.path_and_query.take();
        let pq = match (self.base.is_empty(), pq) {
            (true, Some(pq)) => pq,
            (_, pq) => {
                let rest = pq.as_ref().map_or("/", PathAndQuery::as_str);
                let mut buf = BytesMut::with_capacity(self.base.len() + rest.len());
                buf.put_slice(self.base.as_bytes());
                buf.put_slice(rest.as_bytes());
                // A '/'-prefixed path followed by a valid path-and-query is valid;
                // fall back to the base alone rather than forward elsewhere.
                PathAndQuery::from_maybe_shared(buf.freeze())
                    .unwrap_or_else(|_| PathAndQuery::from_static("/"))
            }
        };
        Uri::from(pq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::new(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_request_path_and_query_are_sent_in_origin_form() {
        let u = up("http://127.0.0.1:9000");
        let t = u.target("/v1/users?x=1".parse().unwrap());
        assert_eq!(t.to_string(), "/v1/users?x=1");
        let t = u.target("http://elsewhere:1/v1?y=2".parse().unwrap());
        assert_eq!(t.to_string(), "/v1?y=2");
    }

    #[test]
    fn a_base_path_is_prefixed() {
        let u = up("http://127.0.0.1:9000/api/");
        assert_eq!(
            u.target("/v1?x=1".parse().unwrap()).to_string(),
            "/api/v1?x=1"
        );
        assert_eq!(u.target("/".parse().unwrap()).to_string(), "/api/");
    }

    #[test]
    fn the_address_has_a_port_and_the_host_value_names_it_unless_it_is_80() {
        let u = up("http://127.0.0.1:9000");
        assert_eq!(
            (u.addr(), u.host().to_str().unwrap()),
            ("127.0.0.1:9000", "127.0.0.1:9000")
        );
        let u = up("http://api.internal/base");
        assert_eq!(
            (u.addr(), u.host().to_str().unwrap()),
            ("api.internal:80", "api.internal")
        );
        let u = up("http://[::1]:80");
        assert_eq!(
            (u.addr(), u.host().to_str().unwrap()),
            ("[::1]:80", "[::1]")
        );
    }

    #[test]
    fn only_absolute_http_urls_without_a_query_are_upstreams() {
        for bad in ["/relative", "https://h", "http://h/?q=1"] {
            assert!(Upstream::new(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
