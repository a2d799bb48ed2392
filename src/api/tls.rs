//! TLS of the TCP listener: the server's certificate and key
//! (`--tls-cert`, `--tls-key`), the CA that client certificates must chain
//! to (`--tls-client-ca`, which makes them required: mTLS), read once at
//! start-up with errors that name the file; and the identity a verified
//! client certificate carries (its subject CN and SANs).
//!
//! rustls with the ring provider (what tonic's `tls-ring` uses); HTTP/2
//! only, by ALPN.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

use super::identity::Identity;

/// The TLS files of the TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `--tls-cert`: the server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// `--tls-key`: its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `--tls-client-ca`: client certificates are required and must chain
    /// to one of these CA certificates (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS cannot be set up; each names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing, unreadable or not PEM.
    #[error("cannot read {flag} {}: {}", path.display(), pem_reason(flag, cause))]
    Read {
        /// The flag that named it.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong (in the message, not a separate source, so that
        /// the error stays one line).
        cause: pem::Error,
    },
    /// The certificate and key do not go together, or the key's type is not
    /// supported.
    #[error(
        "--tls-cert {} and --tls-key {} cannot be used: {}",
        cert.display(),
        key.display(),
        identity_reason(cause)
    )]
    Identity {
        /// `--tls-cert`.
        cert: PathBuf,
        /// `--tls-key`.
        key: PathBuf,
        /// rustls's reason (in the message).
        cause: rustls::Error,
    },
    /// No certificate of the client CA file can be used as a trust anchor.
    #[error("--tls-client-ca {}: no usable CA certificate{}", path.display(),
        reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why the verifier refused it, when it said.
        reason: Option<String>,
    },
    /// The protocol versions could not be set (a bug, not a user's error).
    #[error("TLS set-up: {0}")]
    Config(rustls::Error),
}

/// The reason of a PEM error: what was looked for rather than pem's "no
/// items found".
fn pem_reason(flag: &str, e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound if flag == "--tls-key" => "no PEM private key in it".into(),
        pem::Error::NoItemsFound => "no PEM certificate in it".into(),
        other => other.to_string(),
    }
}

/// rustls's reason, in words for the common case.
fn identity_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            "the key is not the certificate's".into()
        }
        other => other.to_string(),
    }
}

/// The certificates of the PEM file `path`, named by `flag` in errors
/// (also `ctl`'s `--tls-ca` and `--tls-cert`).
pub(crate) fn certs(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read = |cause| TlsError::Read {
        flag,
        path: path.to_path_buf(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read)?;
    if certs.is_empty() {
        return Err(read(pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The TLS acceptor of `files`: HTTP/2 by ALPN, TLS 1.2 and 1.3, client
/// certificates required and verified when `client_ca` is set.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = certs("--tls-cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|cause| TlsError::Read {
        flag: "--tls-key",
        path: files.key.clone(),
        cause,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let (added, _ignored) =
                roots.add_parsable_certificates(certs("--tls-client-ca", path)?);
            if added == 0 {
                return Err(TlsError::ClientCa {
                    path: path.clone(),
                    reason: None,
                });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: path.clone(),
                    reason: Some(e.to_string()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|cause| TlsError::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            cause,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The identity of a client that presented `cert` (already verified
/// against `--tls-client-ca`) from `addr`: its subject's common name and
/// its subject alternative names as text (DNS names, URIs, e-mail
/// addresses, IP addresses).
pub fn cert_identity(cert: &CertificateDer<'_>, addr: Option<SocketAddr>) -> Identity {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        // rustls verified it, so this is unlikely: a certificate without a
        // name that authorization can match.
        tracing::warn!("cannot parse the verified client certificate of {addr:?}");
        return Identity::Cert {
            cn: None,
            sans: Vec::new(),
            addr,
        };
    };
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let sans = match parsed.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                    Some((*s).to_string())
                }
                GeneralName::IPAddress(b) => ip_text(b),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Identity::Cert { cn, sans, addr }
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}

#[cfg(test)]
mod tests {
    //! Fixtures in `testdata/` (test-only keys, made with openssl): a CA;
    //! `server` (CN=localhost, 127.0.0.1) and `client` (CN=alice, SANs of
    //! every kind) signed by it; `noname` (no CN, no SAN).

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/api/testdata")
            .join(name)
    }

    fn cert(name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(fixture(name)).unwrap()
    }

    fn files(cert: &str, key: &str, ca: Option<&str>) -> TlsFiles {
        TlsFiles {
            cert: fixture(cert),
            key: fixture(key),
            client_ca: ca.map(fixture),
        }
    }

    #[test]
    fn a_client_is_named_by_its_subject_cn_and_its_sans() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let id = cert_identity(&cert("client.pem"), Some(addr));
        assert_eq!(
            id,
            Identity::Cert {
                cn: Some("alice".into()),
                sans: vec![
                    "alice.example".into(),
                    "spiffe://test/alice".into(),
                    "alice@example.com".into(),
                    "10.1.2.3".into(),
                    "::1".into(),
                ],
                addr: Some(addr),
            }
        );
        assert_eq!(id.to_string(), "cert CN=alice");
        assert!(id.is_authenticated());
    }

    #[test]
    fn a_certificate_without_names_is_still_a_certificate() {
        let id = cert_identity(&cert("noname.pem"), None);
        assert_eq!(
            id,
            Identity::Cert {
                cn: None,
                sans: vec![],
                addr: None
            }
        );
        assert!(id.is_authenticated());
    }

    #[test]
    fn good_files_make_an_acceptor_with_or_without_a_client_ca() {
        assert!(acceptor(&files("server.pem", "server.key", None)).is_ok());
        assert!(acceptor(&files("server.pem", "server.key", Some("ca.pem"))).is_ok());
    }

    #[test]
    fn errors_name_the_flag_and_the_file_on_one_line() {
        let cases = [
            (
                files("missing.pem", "server.key", None),
                vec!["cannot read --tls-cert", "missing.pem", "No such file"],
            ),
            (
                files("server.key", "server.key", None),
                vec!["cannot read --tls-cert", "server.key", "no PEM certificate"],
            ),
            (
                files("server.pem", "server.pem", None),
                vec!["cannot read --tls-key", "server.pem", "no PEM private key"],
            ),
            (
                files("server.pem", "client.key", None),
                vec![
                    "--tls-cert",
                    "server.pem",
                    "--tls-key",
                    "client.key",
                    "the key is not the certificate's",
                ],
            ),
            (
                files("server.pem", "server.key", Some("client.key")),
                vec![
                    "cannot read --tls-client-ca",
                    "client.key",
                    "no PEM certificate",
                ],
            ),
        ];
        for (f, wanted) in cases {
            let e = acceptor(&f).err().expect("an error").to_string();
            assert!(!e.contains('\n'), "{e}");
            for w in wanted {
                assert!(e.contains(w), "{e:?} does not say {w:?}");
            }
        }
    }
}
