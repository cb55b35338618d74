//! A small HTTP/1.1 client for the admin API: one connection per call, over
//! plain TCP or TLS, with the bearer token, a JSON body and a time limit.
//!
//! hyper's connection API is enough for a command that makes one or two calls:
//! no pool, no retries, nothing a CLI would keep.

use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tls::UpstreamTls;

/// How long one call may take, connect included.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Why a call got no answer. A refusal is an [`Answer`], not an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The admin URL is not `http://host[:port][/base]` or `https://...`.
    #[error("admin URL {0:?}: expected http://host:port or https://host:port")]
    BadUrl(String),
    /// The token cannot be sent in a header.
    #[error("the token holds characters a header cannot carry")]
    BadToken,
    /// The CA file for an https URL could not be used.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("{addr}: {source}")]
    Http {
        /// `host:port`.
        addr: String,
        /// Why.
        source: hyper::Error,
    },
    /// No whole answer within the time limit.
    #[error("{0}: no answer within 30 s")]
    Timeout(String),
}

/// One answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, as sent.
    pub body: Bytes,
}

/// The admin API at one URL, with one token.
#[derive(Clone)]
pub struct AdminClient {
    https: bool,
    host: String,
    port: u16,
    /// The URL's path without its trailing slash (`""` for the root).
    base: String,
    /// `Bearer <token>`, when a token was given: the calls that need none
    /// (health, readiness, metrics, the OpenAPI document) go without.
    authorization: Option<http::HeaderValue>,
    tls: Option<UpstreamTls>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("https", &self.https)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client for the admin API at `url` presenting `token`, if any. An
    /// https URL trusts the CA certificates in `ca_file`, or else the public
    /// roots compiled into keygate.
    pub fn new(
        url: &str,
        token: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<AdminClient, ClientError> {
        let bad = || ClientError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        // `[::1]` in a URL is `::1` to connect to.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(bad());
        }
        let base = uri.path().trim_end_matches('/').to_owned();
        let authorization = match token {
            Some(token) => {
                let mut value = http::HeaderValue::try_from(format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let tls = match (https, ca_file) {
            (false, _) => None,
            (true, Some(path)) => Some(UpstreamTls::load_ca(path)?),
            (true, None) => Some(UpstreamTls::public_roots()),
        };
        Ok(AdminClient {
            https,
            host,
            port,
            base,
            authorization,
            tls,
        })
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Sends `method path` (`path` from the API's root, each segment already
    /// encoded) with `body` as JSON, and reads the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let addr = self.addr();
        tokio::time::timeout(CALL_LIMIT, self.exchange(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout(addr))?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let addr = self.addr();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let req = self.request(method, path, body);
        match &self.tls {
            None => send(TokioIo::new(tcp), req, &addr).await,
            Some(tls) => {
                let mut config = (*tls.client_config()).clone();
                // This client speaks HTTP/1.1 only.
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|_| ClientError::BadUrl(self.host.clone()))?;
                let stream =
                    connector
                        .connect(name, tcp)
                        .await
                        .map_err(|source| ClientError::Connect {
                            addr: addr.clone(),
                            source,
                        })?;
                send(TokioIo::new(stream), req, &addr).await
            }
        }
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Request<Full<Bytes>> {
        let default_port = if self.https { 443 } else { 80 };
        let host = match (self.port == default_port, self.host.contains(':')) {
            (true, false) => self.host.clone(),
            (true, true) => format!("[{}]", self.host),
            (false, _) => self.addr(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(HOST, host);
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        // Every part was checked when the client was built, and `path` is
        // built by the CLI from encoded segments: the request is valid.
        builder
            .body(Full::new(bytes))
            .expect("the admin request is well formed")
    }
}

async fn send<I>(io: I, req: Request<Full<Bytes>>, addr: &str) -> Result<Answer, ClientError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |source| ClientError::Http {
        addr: addr.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    // The connection's errors surface through the request's own result.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await.map_err(http)?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(http)?.to_bytes();
    Ok(Answer { status, body })
}

/// `s` as one path segment: every byte but the URL's unreserved characters
/// percent-encoded, so an argument can never reach another path.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_cannot_leave_its_place_in_the_path() {
        assert_eq!(segment("acme"), "acme");
        assert_eq!(segment("../tokens"), "..%2Ftokens");
        assert_eq!(segment("a b?c#d"), "a%20b%3Fc%23d");
    }

    #[test]
    fn urls_other_than_http_and_https_are_refused() {
        for url in ["ftp://h:1", "127.0.0.1:8081", "http://", "http://h:1/?q=1"] {
            assert!(
                matches!(
                    AdminClient::new(url, Some("t"), None),
                    Err(ClientError::BadUrl(_))
                ),
                "{url}"
            );
        }
        let c = AdminClient::new("http://127.0.0.1:8081/base/", Some("t"), None).unwrap();
        assert_eq!((c.port, c.base.as_str()), (8081, "/base"));
        let c = AdminClient::new("http://[::1]", Some("t"), None).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 80));
    }

    #[test]
    fn the_token_is_sensitive_and_never_in_debug() {
        let c = AdminClient::new("http://h:1", Some("s3cret-token"), None).unwrap();
        assert!(c.authorization.as_ref().unwrap().is_sensitive());
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
