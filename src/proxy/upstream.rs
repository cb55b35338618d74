//! Where admitted requests go.

use bytes::{BufMut, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::Uri;

/// The upstream's scheme, authority and optional base path, split once at start
/// so that each request's URI is assembled from reference-counted parts.
#[derive(Debug, Clone)]
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
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
        Ok(Upstream {
            scheme: scheme.clone(),
            authority: authority.clone(),
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The upstream URI for a request to `uri`: the request's path and query,
    /// after the base path. Without a base path nothing is copied.
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
        let mut out = http::uri::Parts::default();
        out.scheme = Some(self.scheme.clone());
        out.authority = Some(self.authority.clone());
        out.path_and_query = Some(pq);
        // Scheme, authority and path-and-query are each valid, so is the whole.
        Uri::from_parts(out).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(s: &str) -> Upstream {
        Upstream::new(&s.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_request_path_and_query_go_to_the_upstream_authority() {
        let u = up("http://127.0.0.1:9000");
        let t = u.target("/v1/users?x=1".parse().unwrap());
        assert_eq!(t.to_string(), "http://127.0.0.1:9000/v1/users?x=1");
    }

    #[test]
    fn a_base_path_is_prefixed() {
        let u = up("http://127.0.0.1:9000/api/");
        assert_eq!(
            u.target("/v1?x=1".parse().unwrap()).to_string(),
            "http://127.0.0.1:9000/api/v1?x=1"
        );
        assert_eq!(
            u.target("/".parse().unwrap()).to_string(),
            "http://127.0.0.1:9000/api/"
        );
    }

    #[test]
    fn only_absolute_http_urls_without_a_query_are_upstreams() {
        for bad in ["/relative", "https://h", "http://h/?q=1"] {
            assert!(Upstream::new(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
