//! How the API is reached: the transports beside the TCP port (the Unix
//! socket, TLS and mTLS on TCP), the refusal to serve plain TCP beyond
//! loopback, and the per-connection and per-call bounds tonic enforces
//! (concurrent streams, the call deadline). The accept loop itself is
//! [`super::incoming`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio_rustls::TlsAcceptor;

use super::tls::{TlsError, TlsFiles};
use super::unix::{SocketFile, UnixSocketError};

/// Default of `--max-concurrent-streams`: calls open at once on one
/// connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Default of `--call-timeout`: the longest a call may take to answer.
/// Longer than the longest wait of a call with the default flags
/// (RestartPattern: grace 10 s + start-up 30 s + 5 s).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The transport settings of a launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// `--unix-socket`: also serve on this Unix socket.
    pub unix_socket: Option<PathBuf>,
    /// `--socket-group`: the socket's group, a name or a number (the
    /// launcher's own group when None).
    pub socket_group: Option<String>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`: TLS on TCP.
    pub tls: Option<TlsFiles>,
    /// `--insecure-listen`: allow plain TCP on a non-loopback address.
    pub insecure_listen: bool,
    /// `--max-concurrent-streams`.
    pub max_concurrent_streams: u32,
    /// `--call-timeout`: the server's deadline of every call (a shorter
    /// `grpc-timeout` of the client wins). It bounds the time to the
    /// answer: a Watch or GetLogs stream, once answered, runs on.
    pub call_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport {
            unix_socket: None,
            socket_group: None,
            tls: None,
            insecure_listen: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// Why the transports cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Plain TCP on an address beyond loopback, without `--insecure-listen`.
    #[error(
        "refusing to serve the API without TLS on {0}, a non-loopback address: anyone who can reach it could launch, stop and read every instance. Give --tls-cert and --tls-key (and --tls-client-ca to require client certificates), listen on 127.0.0.1, or accept the risk with --insecure-listen"
    )]
    Exposed(SocketAddr),
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Unix socket.
    #[error(transparent)]
    Unix(#[from] UnixSocketError),
}

/// Refuses plain TCP on `addr` beyond loopback unless `--insecure-listen`
/// says so (then warns); warns when TLS there authenticates no client.
pub fn check_exposure(addr: SocketAddr, t: &Transport) -> Result<(), ListenError> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    match &t.tls {
        None if t.insecure_listen => {
            tracing::warn!(
                "--insecure-listen: serving the API without TLS on {addr}, a non-loopback address: anyone who can reach it can launch, stop and read every instance"
            );
            Ok(())
        }
        None => Err(ListenError::Exposed(addr)),
        Some(files) if files.client_ca.is_none() => {
            tracing::warn!(
                "serving TLS on {addr} without --tls-client-ca: clients are not authenticated"
            );
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Warns when a call may wait longer than `--call-timeout` allows with
/// these settings: a RestartPattern waits for a graceful stop (`grace`)
/// and a healthy start (`startup`), and would be cut short.
pub fn warn_if_calls_outlast(t: &Transport, startup: Duration, grace: Duration) {
    let longest = startup + grace + super::WAIT_MARGIN;
    if longest > t.call_timeout {
        tracing::warn!(
            "--call-timeout {:?} is shorter than a restart may take ({longest:?}: --startup-timeout {startup:?} + --grace-period {grace:?} + {:?}): such calls end with CANCELLED while their work goes on",
            t.call_timeout,
            super::WAIT_MARGIN
        );
    }
}

/// The Unix socket and the TLS acceptor, ready.
#[derive(Default)]
pub struct Opened {
    /// The Unix socket's listener and file (removed when dropped).
    pub unix: Option<(UnixListener, SocketFile)>,
    /// TLS of the TCP listener.
    pub tls: Option<TlsAcceptor>,
}

/// Reads the TLS files and binds the Unix socket of `t`. Must run inside
/// a tokio runtime.
pub fn open(t: &Transport) -> Result<Opened, ListenError> {
    let tls = t.tls.as_ref().map(super::tls::acceptor).transpose()?;
    let unix = match &t.unix_socket {
        Some(path) => {
            let gid = t
                .socket_group
                .as_deref()
                .map(super::unix::resolve_group)
                .transpose()?;
            let (listener, file) = super::unix::bind(path, gid)?;
            tracing::info!(
                "Serving gRPC on the Unix socket {} (mode {:04o}{})",
                path.display(),
                super::unix::SOCKET_MODE,
                gid.map(|g| format!(", group {g}")).unwrap_or_default()
            );
            Some((listener, file))
        }
        None => None,
    };
    Ok(Opened { unix, tls })
}

/// How the TCP listener serves, for the start-up log (nothing for plain
/// TCP).
pub fn describe_tcp(t: &Transport) -> &'static str {
    match &t.tls {
        None => "",
        Some(f) if f.client_ca.is_some() => " with TLS, client certificates required",
        Some(_) => " with TLS",
    }
}

/// The command-line flags of [`Transport`] (flattened into the
/// launcher's).
#[derive(Debug, Clone, clap::Args)]
pub struct TransportFlags {
    /// Also serve the API on this Unix socket (mode 0660; the caller's
    /// uid, gid and pid come from the kernel). A stale socket file is
    /// replaced; the socket is removed on exit.
    #[arg(long, value_name = "PATH")]
    unix_socket: Option<PathBuf>,
    /// Group of the --unix-socket (a name or a number); its members may
    /// connect. Default: the launcher's group.
    #[arg(long, value_name = "NAME|GID", requires = "unix_socket")]
    socket_group: Option<String>,
    /// Serve TLS on the TCP port with this certificate chain (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM): mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Allow --listen on a non-loopback address without TLS (refused
    /// otherwise).
    #[arg(long)]
    insecure_listen: bool,
    /// Calls open at once on one connection (HTTP/2 streams); more wait
    /// for a free one.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrent_streams: u32,
    /// The longest a call may take to answer (a shorter grpc-timeout of the
    /// client wins); then it ends with CANCELLED. Watch and GetLogs
    /// streams run on once answered.
    #[arg(long, value_name = "DURATION", default_value = "2m",
          value_parser = humantime::parse_duration)]
    call_timeout: Duration,
}

impl From<TransportFlags> for Transport {
    fn from(f: TransportFlags) -> Transport {
        Transport {
            unix_socket: f.unix_socket,
            socket_group: f.socket_group,
            tls: f.tls_cert.zip(f.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: f.tls_client_ca,
            }),
            insecure_listen: f.insecure_listen,
            max_concurrent_streams: f.max_concurrent_streams,
            call_timeout: f.call_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        t: TransportFlags,
    }

    fn parse(args: &[&str]) -> Result<Transport, clap::Error> {
        Cli::try_parse_from(std::iter::once("prism-launcher").chain(args.iter().copied()))
            .map(|c| c.t.into())
    }

    fn tls() -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
        })
    }

    #[test]
    fn plain_tcp_is_refused_beyond_loopback_unless_insecure_listen() {
        let plain = Transport::default();
        for ok in ["127.0.0.1:8080", "127.8.9.10:1", "[::1]:8080"] {
            assert!(check_exposure(ok.parse().unwrap(), &plain).is_ok(), "{ok}");
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
            let e = check_exposure(exposed.parse().unwrap(), &plain).unwrap_err();
            assert!(matches!(e, ListenError::Exposed(_)), "{exposed}: {e}");
            assert!(e.to_string().contains("--insecure-listen"), "{e}");
        }
        let insecure = Transport {
            insecure_listen: true,
            ..Transport::default()
        };
        assert!(check_exposure("0.0.0.0:8080".parse().unwrap(), &insecure).is_ok());
        let with_tls = Transport {
            tls: tls(),
            ..Transport::default()
        };
        assert!(check_exposure("0.0.0.0:8080".parse().unwrap(), &with_tls).is_ok());
    }

    #[test]
    fn the_flags_and_their_defaults() {
        let t = parse(&[]).unwrap();
        assert_eq!(t, Transport::default());
        assert_eq!(t.max_concurrent_streams, 32);
        assert_eq!(t.call_timeout, Duration::from_secs(120));
        let t = parse(&[
            "--unix-socket",
            "/run/p.sock",
            "--socket-group",
            "prism",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--tls-client-ca",
            "ca.pem",
            "--max-concurrent-streams",
            "4",
            "--call-timeout",
            "30s",
        ])
        .unwrap();
        assert_eq!(t.unix_socket, Some("/run/p.sock".into()));
        assert_eq!(t.socket_group.as_deref(), Some("prism"));
        assert_eq!(
            t.tls.and_then(|f| f.client_ca),
            Some(PathBuf::from("ca.pem"))
        );
        assert_eq!(t.max_concurrent_streams, 4);
        assert_eq!(t.call_timeout, Duration::from_secs(30));
        // Halves of a pair, or a group without a socket, are refused.
        for bad in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"],
            &["--tls-client-ca", "ca.pem"],
            &["--socket-group", "prism"],
            &["--max-concurrent-streams", "0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
