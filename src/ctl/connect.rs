//! How `ctl` reaches the launcher: plain TCP to `--addr`, TLS to it
//! (`--tls-ca`; with `--tls-cert` and `--tls-key`, mTLS; the name checked
//! is `--tls-server-name` or the host of `--addr`), or the Unix socket
//! (`--unix-socket`). The connection is opened at once, so that an
//! unreachable launcher is reported as such.
//!
//! TLS is rustls with the ring provider, HTTP/2 by ALPN, as the listener
//! has it ([`crate::api::tls`], whose PEM reading it shares).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonic::transport::{Channel, Endpoint, Uri};

use super::args::{CONNECT_TIMEOUT, Ctl, uri_of};
use super::{Client, CtlError};
use crate::api::tls::{TlsError, certs};
use crate::proto::pattern_launcher_client::PatternLauncherClient;

/// The client side of TLS, from `ctl`'s flags.
struct TlsDial {
    connector: TlsConnector,
    name: ServerName<'static>,
    host: String,
    port: u16,
}

/// A connection to the launcher as `ctl`'s flags say.
pub(super) async fn connect(ctl: &Ctl) -> Result<Client, CtlError> {
    if let Some(path) = &ctl.unix_socket {
        return unix(path).await;
    }
    match &ctl.tls_ca {
        None => tcp(&ctl.addr).await,
        Some(ca) => tls(ctl, ca).await,
    }
}

/// Plain TCP to `addr` (`--addr`).
pub(super) async fn tcp(addr: &str) -> Result<Client, CtlError> {
    let endpoint = endpoint(addr)?.tcp_nodelay(true);
    opened(addr, endpoint.connect().await)
}

fn endpoint(addr: &str) -> Result<Endpoint, CtlError> {
    let uri = uri_of(addr).ok_or_else(|| CtlError::Addr(addr.into()))?;
    Ok(Endpoint::from_shared(uri)
        .map_err(|_| CtlError::Addr(addr.into()))?
        .connect_timeout(CONNECT_TIMEOUT))
}

/// The client, or what kept the connection from opening.
fn opened(to: &str, channel: Result<Channel, tonic::transport::Error>) -> Result<Client, CtlError> {
    let channel = channel.map_err(|e| {
        // The innermost cause says it best ("Connection refused (os
        // error 111)", "invalid peer certificate: UnknownIssuer"); the
        // layers above say "transport error".
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        CtlError::Connect {
            addr: to.into(),
            reason: cause.to_string(),
        }
    })?;
    Ok(PatternLauncherClient::new(channel))
}

/// The Unix socket at `path`. The `:authority` is `localhost`: the
/// server's HTTP/2 stack refuses a path there.
async fn unix(path: &Path) -> Result<Client, CtlError> {
    let owned = path.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = owned.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await;
    opened(&path.display().to_string(), channel)
}

/// TLS to `--addr`, verified against `ca`.
async fn tls(ctl: &Ctl, ca: &Path) -> Result<Client, CtlError> {
    let endpoint = endpoint(&ctl.addr)?;
    let uri = endpoint.uri().clone();
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = ctl.tls_server_name.clone().unwrap_or_else(|| host.clone());
    let name = ServerName::try_from(name.clone()).map_err(|_| CtlError::ServerName(name))?;
    let dial = Arc::new(TlsDial {
        connector: TlsConnector::from(Arc::new(client_config(
            ca,
            ctl.tls_cert.as_deref().zip(ctl.tls_key.as_deref()),
        )?)),
        name,
        port: uri.port_u16().unwrap_or(443),
        host,
    });
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let dial = Arc::clone(&dial);
            async move {
                let tcp = tokio::net::TcpStream::connect((dial.host.as_str(), dial.port)).await?;
                tcp.set_nodelay(true)?;
                let stream = dial.connector.connect(dial.name.clone(), tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await;
    opened(&ctl.addr, channel)
}

/// rustls's client configuration: the launcher's certificate must chain
/// to `ca`; `identity` (certificate, key) is presented when asked for.
fn client_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientConfig, CtlError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs("--tls-ca", ca)?);
    if added == 0 {
        return Err(CtlError::TlsCa(ca.to_path_buf()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs("--tls-cert", cert)?;
            let private = PrivateKeyDer::from_pem_file(key).map_err(|cause| TlsError::Read {
                flag: "--tls-key",
                path: key.to_path_buf(),
                cause,
            })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|cause| TlsError::Identity {
                    cert: PathBuf::from(cert),
                    key: PathBuf::from(key),
                    cause,
                })?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
