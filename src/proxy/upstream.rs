//! Where admitted requests go.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use rustls::pki_types::ServerName;

/// One upstream server's address, `Host` value, TLS name and optional base
/// path, worked out once at start so that each request's target is assembled
/// from reference-counted parts.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// `host:port` to connect to (port 80, or 443 for https, when the URL
    /// names none).
    addr: String,
    /// The address itself when the URL's host is an IP address: nothing to
    /// resolve.
    ip: Option<SocketAddr>,
    /// `host[:port]`, the port only when it is not the scheme's default, as
    /// `Host` carries it.
    host: HeaderValue,
    /// The same, as an HTTP/2 request's `:authority`.
    authority: Authority,
    /// The name the certificate must carry, for `https` (SNI is sent for
    /// DNS names); `None` for plain HTTP.
    tls_name: Option<ServerName<'static>>,
    /// The upstream URI's path without a trailing `/`; empty for none.
    base: String,
}

/// Why an upstream URI is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the upstream must be an absolute http or https URL without a query")]
pub struct UpstreamError;

impl Upstream {
    /// Splits `uri`, which must be absolute `http(s)://host[:port][/base]`.
    pub fn new(uri: &Uri) -> Result<Upstream, UpstreamError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(UpstreamError);
        };
        let https = *scheme == Scheme::HTTPS;
        if !(https || *scheme == Scheme::HTTP) || uri.query().is_some() {
            return Err(UpstreamError);
        }
        let default_port = if https { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let host = if port == default_port {
            authority.host().to_owned()
        } else {
            format!("{}:{port}", authority.host())
        };
        // `[::1]` is an IPv6 address in brackets.
        let bare = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let ip = bare.parse::<IpAddr>().ok();
        let tls_name = if https {
            Some(
                ServerName::try_from(bare.to_owned())
                    .map_err(|_| UpstreamError)?
                    .to_owned(),
            )
        } else {
            None
        };
        Ok(Upstream {
            addr: format!("{}:{port}", authority.host()),
            ip: ip.map(|ip| SocketAddr::new(ip, port)),
            // An authority is made of valid header value bytes.
            host: HeaderValue::from_str(&host).map_err(|_| UpstreamError)?,
            authority: host.parse().map_err(|_| UpstreamError)?,
            tls_name,
            base: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// Where to connect: `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The socket address when the URL names an IP address.
    pub(crate) fn ip(&self) -> Option<SocketAddr> {
        self.ip
    }

    /// The `Host` forwarded requests carry (unless `proxy.preserve_host`).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// [`host`](Upstream::host) as an HTTP/2 `:authority`.
    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    /// For `https`, the name to send as SNI and to verify the certificate for.
    pub(crate) fn tls_name(&self) -> Option<&ServerName<'static>> {
        self.tls_name.as_ref()
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
    fn an_https_upstream_has_port_443_and_a_tls_name_for_its_host() {
        let u = up("https://api.example.com/v2");
        assert_eq!(
            (u.addr(), u.host().to_str().unwrap()),
            ("api.example.com:443", "api.example.com")
        );
        assert_eq!(
            u.tls_name(),
            Some(&ServerName::try_from("api.example.com").unwrap())
        );
        assert_eq!(u.ip(), None);
        let u = up("https://127.0.0.1:8443");
        assert_eq!(u.host().to_str().unwrap(), "127.0.0.1:8443");
        assert_eq!(u.ip(), Some("127.0.0.1:8443".parse().unwrap()));
        assert!(matches!(u.tls_name(), Some(ServerName::IpAddress(_))));
        let u = up("https://[::1]");
        assert_eq!(u.ip(), Some("[::1]:443".parse().unwrap()));
        assert!(up("http://h").tls_name().is_none());
    }

    #[test]
    fn only_absolute_http_urls_without_a_query_are_upstreams() {
        for bad in ["/relative", "ftp://h", "http://h/?q=1"] {
            assert!(Upstream::new(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }
}
