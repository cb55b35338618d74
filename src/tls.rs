//! TLS for keygate: termination on its listeners, and verification of HTTPS
//! upstreams.
//!
//! Either listener may serve HTTPS itself: `[proxy.tls]` and `[admin.tls]` name a
//! certificate chain and its private key as PEM files. [`ServerTls::load`] reads
//! and checks both when the config is validated, before anything binds, so a
//! missing file, a file without a certificate or a key, a key rustls cannot use
//! and a key that does not belong to the certificate all stop keygate at start
//! with a [`TlsError`] that says which file is at fault (the config names its
//! key: `config: proxy.tls.key_path: ...`).
//!
//! The crypto is rustls with its `ring` provider, which builds with a C
//! compiler alone (no cmake, no nasm). Protocol versions are rustls's safe
//! defaults, TLS 1.2 and 1.3; ALPN offers `h2` and `http/1.1`, the two protocols
//! every listener serves. The certificate sits behind a swappable resolver
//! ([`ServerTls::renew_from`]), so a config reload (`SIGHUP`) serves a renewed
//! certificate to new connections while open ones keep the one they shook
//! hands with.
//!
//! Toward an `https://` upstream, [`UpstreamTls`] verifies the upstream's
//! certificate against the Mozilla roots compiled into keygate (the
//! `webpki-roots` crate) or, with `proxy.upstream_ca_path`, against the CA
//! certificates of one PEM file instead. Compiled-in roots rather than the
//! system's store (`rustls-native-certs`): a fresh Debian or a distroless image
//! has no `ca-certificates`, and keygate should reach a public API there too;
//! the price is that a root added to or removed from the system's store is not
//! seen until keygate is rebuilt, which is what `upstream_ca_path` is for. ALPN
//! offers `h2` and `http/1.1`, and the upstream picks.
//!
//! # Example
//!
//! ```
//! use keygate::tls::{ServerTls, TlsFile};
//!
//! let dir = std::env::temp_dir();
//! let err = ServerTls::load(&dir.join("no-such-cert.pem"), &dir.join("no-such-key.pem"))
//!     .unwrap_err();
//! assert_eq!(err.file(), TlsFile::Certificate);
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Which of the two files a [`TlsError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain (`cert_path`).
    Certificate,
    /// The private key (`key_path`).
    Key,
}

/// Why a certificate and key cannot be served. Each message is one line and
/// names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    CertificateUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate file is not PEM, or holds no certificate, or its first
    /// certificate is not one rustls can parse.
    #[error("{}: {reason}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    KeyUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not PEM, holds no private key, or holds one that rustls
    /// cannot sign with.
    #[error("{}: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The key is fine but belongs to another certificate.
    #[error("{}: not the private key of the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

impl TlsError {
    /// The file at fault, so that the config can name its key.
    pub fn file(&self) -> TlsFile {
        match self {
            TlsError::CertificateUnreadable { .. } | TlsError::BadCertificate { .. } => {
                TlsFile::Certificate
            }
            TlsError::KeyUnreadable { .. }
            | TlsError::BadKey { .. }
            | TlsError::KeyMismatch { .. } => TlsFile::Key,
        }
    }
}

/// A listener's checked TLS settings: where the certificate and key came from,
/// and the rustls configuration built from them.
///
/// Two are equal when they were read from the same files, which is what a
/// config comparison means by "the same settings".
#[derive(Clone)]
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    config: Arc<ServerConfig>,
    /// The certificate `config` serves, replaceable while it serves.
    certificate: Arc<Renewable>,
}

/// The certificate a listener serves, behind an [`ArcSwap`]: a handshake
/// loads it (no lock), and a reload stores a new one for the handshakes after.
#[derive(Debug)]
struct Renewable(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Renewable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ServerTls {
    /// Reads the PEM certificate chain at `cert_path` (leaf first) and the PEM
    /// private key at `key_path` (PKCS#8, PKCS#1 or SEC1), and checks that rustls
    /// can serve them: the key is usable and belongs to the leaf certificate.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_chain(cert_path)?;
        let key = read_key(key_path)?;
        let certified = certify(chain, key, &provider, cert_path, key_path)?;
        let certificate = Arc::new(Renewable(ArcSwap::from_pointee(certified)));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            // ring supports every version rustls does; this cannot fail, but
            // if it ever did the key file is the likelier culprit than nothing.
            .map_err(|e| TlsError::BadKey {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certificate) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            config: Arc::new(config),
            certificate,
        })
    }

    /// Serves `newer`'s certificate from now on, to the handshakes that
    /// start after this call, through this value's acceptors and their
    /// clones; connections already open keep theirs. `newer` is a freshly
    /// loaded value (a reloaded config's): its files were read and checked.
    pub fn renew_from(&self, newer: &ServerTls) {
        self.certificate.0.store(newer.certificate.0.load_full());
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The rustls configuration, for callers that build their own acceptor.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// An acceptor that performs the server side of handshakes.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config))
    }
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path && self.key_path == other.key_path
    }
}

impl Eq for ServerTls {}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key material stays out of debug output; the paths say enough.
        f.debug_struct("ServerTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// How keygate verifies HTTPS upstreams: the roots it trusts and the rustls
/// client configuration built from them, offering `h2` and `http/1.1` by ALPN.
///
/// Two are equal when they trust the same roots: the compiled-in ones, or the
/// same CA file.
#[derive(Clone)]
pub struct UpstreamTls {
    ca_path: Option<PathBuf>,
    config: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// Trusts the Mozilla roots compiled into keygate (`webpki-roots`).
    pub fn public_roots() -> UpstreamTls {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        UpstreamTls {
            ca_path: None,
            config: client_config(roots),
        }
    }

    /// Trusts the CA certificates in the PEM file at `path`, and no others: a
    /// private upstream's CA. The error says what is wrong with the file; its
    /// [`file`](TlsError::file) is [`TlsFile::Certificate`].
    pub fn load_ca(path: &Path) -> Result<UpstreamTls, TlsError> {
        let certs = read_chain(path)?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCertificate {
                path: path.to_owned(),
                reason: format!("not a CA certificate rustls can use: {e}"),
            })?;
        }
        Ok(UpstreamTls {
            ca_path: Some(path.to_owned()),
            config: client_config(roots),
        })
    }

    /// The CA file, or `None` for the compiled-in roots.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// The rustls configuration, for callers that build their own connector.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.config)
    }

    /// A connector that performs the client side of handshakes.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(Arc::clone(&self.config))
    }
}

/// TLS 1.2 and 1.3 with `ring`, no client certificate, ALPN `h2` then `http/1.1`.
fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3, the safe default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.ca_path == other.ca_path
    }
}

impl Eq for UpstreamTls {}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca_path", &self.ca_path)
            .finish_non_exhaustive()
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::CertificateUnreadable {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason: String| TlsError::BadCertificate {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no PEM certificate in it".to_owned()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::KeyUnreadable {
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadKey {
        path: path.to_owned(),
        reason: match e {
            pem::Error::NoItemsFound => "no PEM private key in it".to_owned(),
            e => format!("not PEM: {e}"),
        },
    })
}

/// Pairs the chain with the key, as `with_single_cert` would, but telling which
/// file is wrong: a key rustls cannot load, a certificate it cannot parse, or a
/// pair that does not match.
fn certify(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let signing_key =
        provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsError::BadKey {
                path: key_path.to_owned(),
                reason: format!("not a usable private key: {e}"),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; rustls serves it anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            key: key_path.to_owned(),
            cert: cert_path.to_owned(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            path: cert_path.to_owned(),
            reason: format!("not a valid certificate: {e}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            Files {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }

        /// A fresh self-signed certificate and its key, as two PEM files.
        fn pair(&self, prefix: &str) -> (PathBuf, PathBuf) {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
            (
                self.write(&format!("{prefix}-cert.pem"), made.cert.pem()),
                self.write(&format!("{prefix}-key.pem"), made.key_pair.serialize_pem()),
            )
        }
    }

    #[test]
    fn a_matching_certificate_and_key_load_with_alpn_for_both_protocols() {
        let files = Files::new();
        let (cert, key) = files.pair("a");
        let tls = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(tls.cert_path(), cert);
        assert_eq!(tls.key_path(), key);
        assert_eq!(
            tls.server_config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(!format!("{tls:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_missing_certificate_file_is_the_certificates_fault() {
        let files = Files::new();
        let (_, key) = files.pair("a");
        let e = ServerTls::load(&files.dir.path().join("nope.pem"), &key).unwrap_err();
        assert_eq!(e.file(), TlsFile::Certificate);
        assert!(e.to_string().starts_with("cannot read "), "{e}");
    }

    #[test]
    fn a_certificate_file_without_a_certificate_is_refused() {
        let files = Files::new();
        let (_, key) = files.pair("a");
        // The key file holds PEM, but no certificate.
        let e = ServerTls::load(&key, &key).unwrap_err();
        assert_eq!(e.file(), TlsFile::Certificate);
        assert!(e.to_string().ends_with("no PEM certificate in it"), "{e}");
        let junk = files.write("junk.pem", "hello");
        assert_eq!(
            ServerTls::load(&junk, &key).unwrap_err().file(),
            TlsFile::Certificate
        );
    }

    #[test]
    fn a_certificate_that_is_not_der_is_refused() {
        let files = Files::new();
        let (_, key) = files.pair("a");
        let cert = files.write(
            "bad-cert.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let e = ServerTls::load(&cert, &key).unwrap_err();
        assert_eq!(e.file(), TlsFile::Certificate, "{e}");
    }

    #[test]
    fn a_key_file_without_a_key_is_the_keys_fault() {
        let files = Files::new();
        let (cert, _) = files.pair("a");
        let e = ServerTls::load(&cert, &cert).unwrap_err();
        assert_eq!(e.file(), TlsFile::Key);
        assert!(e.to_string().ends_with("no PEM private key in it"), "{e}");
        let e = ServerTls::load(&cert, &files.dir.path().join("nope.pem")).unwrap_err();
        assert_eq!(e.file(), TlsFile::Key);
    }

    #[test]
    fn a_key_that_is_not_usable_is_refused() {
        let files = Files::new();
        let (cert, _) = files.pair("a");
        let key = files.write(
            "bad-key.pem",
            "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n",
        );
        let e = ServerTls::load(&cert, &key).unwrap_err();
        assert_eq!(e.file(), TlsFile::Key);
        assert!(e.to_string().contains("not a usable private key"), "{e}");
    }

    #[test]
    fn the_key_of_another_certificate_is_refused() {
        let files = Files::new();
        let (cert, _) = files.pair("a");
        let (_, other_key) = files.pair("b");
        let e = ServerTls::load(&cert, &other_key).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.file(), TlsFile::Key);
    }

    #[test]
    fn a_ca_file_loads_and_offers_both_protocols() {
        let files = Files::new();
        let (cert, _) = files.pair("ca");
        let tls = UpstreamTls::load_ca(&cert).unwrap();
        assert_eq!(tls.ca_path(), Some(cert.as_path()));
        assert_eq!(
            tls.client_config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(UpstreamTls::public_roots().ca_path(), None);
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_naming_it() {
        let files = Files::new();
        let missing = files.dir.path().join("nope.pem");
        let e = UpstreamTls::load_ca(&missing).unwrap_err();
        assert_eq!(e.file(), TlsFile::Certificate);
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        let junk = files.write("junk.pem", "hello");
        let e = UpstreamTls::load_ca(&junk).unwrap_err();
        assert!(e.to_string().ends_with("no PEM certificate in it"), "{e}");
    }

    #[test]
    fn a_renewed_certificate_is_served_by_the_acceptor_made_before() {
        let files = Files::new();
        let (cert, key) = files.pair("a");
        let running = ServerTls::load(&cert, &key).unwrap();
        // What the resolver in the running acceptor's config answers (a
        // `ClientHello` cannot be made outside rustls; tests/reload.rs shakes
        // hands for real).
        let served = || running.certificate.0.load().cert[0].clone();
        let before = served();
        // The files are replaced in place, as certbot's renewal does.
        let (cert2, key2) = files.pair("b");
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        assert_eq!(served(), before, "nothing changes before the reload");
        running.renew_from(&ServerTls::load(&cert, &key).unwrap());
        assert_ne!(served(), before);
        assert_eq!(served(), read_chain(&cert2).unwrap()[0]);
    }

    #[test]
    fn settings_from_the_same_files_are_equal() {
        let files = Files::new();
        let (cert, key) = files.pair("a");
        assert_eq!(
            ServerTls::load(&cert, &key).unwrap(),
            ServerTls::load(&cert, &key).unwrap()
        );
    }
}
