//! The TLS handshake of a connection the accept loop
//! ([`super::incoming`]) admitted, in a task of its own: it must end
//! within the connection's handshake deadline, counted from the TCP
//! accept (the HTTP/2 preface must then arrive in what is left of it), and
//! it is given up when the connection's place is handed on to a newer one.

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::conn::{Conn, Deadlines, Place};
use super::identity::Identity;
use super::stream::Stream;

/// Why a TLS handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The handshake failed (no or a bad client certificate, not TLS...).
    #[error("TLS handshake with {peer} failed: {cause}")]
    Failed {
        /// The client's address.
        peer: String,
        /// rustls's reason, through tokio-rustls.
        cause: std::io::Error,
    },
    /// It did not end within the handshake deadline.
    #[error("no TLS handshake from {peer} within {after:?}")]
    TimedOut {
        /// The client's address.
        peer: String,
        /// The handshake deadline.
        after: std::time::Duration,
    },
    /// Its place went to a newer connection.
    #[error("closed {peer} during its TLS handshake: its place is needed")]
    Evicted {
        /// The client's address.
        peer: String,
    },
}

/// The TLS handshake of a connection accepted at `accepted` that holds
/// `place`: done within the handshake deadline, or given up when the place
/// is handed on.
pub async fn tls(
    tls: TlsAcceptor,
    tcp: TcpStream,
    place: Place,
    deadlines: Deadlines,
    accepted: Instant,
) -> Result<Conn, HandshakeError> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "an unknown address".into(), |a| a.to_string());
    let outcome = {
        let evicted = std::future::poll_fn(|cx| place.poll_evicted(cx));
        tokio::select! {
            r = tokio::time::timeout_at(accepted + deadlines.handshake, tls.accept(tcp)) => Some(r),
            () = evicted => None,
        }
    };
    match outcome {
        Some(Ok(Ok(s))) => {
            let conn = Conn::accepted_at(Stream::Tls(Box::new(s)), place, deadlines, accepted);
            if let Identity::Cert { .. } = conn.identity() {
                tracing::debug!("TLS client {} from {peer}", conn.identity());
            }
            Ok(conn)
        }
        Some(Ok(Err(cause))) => Err(HandshakeError::Failed { peer, cause }),
        Some(Err(_)) => Err(HandshakeError::TimedOut {
            peer,
            after: deadlines.handshake,
        }),
        None => Err(HandshakeError::Evicted { peer }),
    }
}
