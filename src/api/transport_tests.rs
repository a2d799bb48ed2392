//! The accept loop ([`super::incoming`]) on the transports beside plain
//! TCP: the Unix socket shares the TCP listener's places, and on TLS a
//! connection is handed to tonic only after its handshake, named by its
//! client certificate, within the handshake deadline, and can give its
//! place up while it is still in its handshake. Certificates from
//! `testdata/` (see [`super::tls`]'s tests).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_stream::StreamExt;

use super::conn::{Conn, Deadlines};
use super::identity::Identity;
use super::incoming::Incoming;
use super::tls::{TlsFiles, acceptor};

const D: Deadlines = Deadlines {
    handshake: Duration::from_secs(5),
    idle: Duration::from_secs(30),
};
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/api/testdata")
        .join(name)
}

/// An mTLS incoming on 127.0.0.1 with `max` places and deadlines `d`.
async fn mtls_incoming(max: usize, d: Deadlines) -> (Incoming, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let tls = acceptor(&TlsFiles {
        cert: fixture("server.pem"),
        key: fixture("server.key"),
        client_ca: Some(fixture("ca.pem")),
    })
    .unwrap();
    (Incoming::new(l, max, d, None, || 0).with_tls(tls), addr)
}

/// A TLS client of `addr` that trusts the test CA, with the `client`
/// certificate when `with_cert`.
async fn tls_client(
    addr: std::net::SocketAddr,
    with_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
        .unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if with_cert {
        builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(fixture("client.pem")).unwrap()],
                PrivateKeyDer::from_pem_file(fixture("client.key")).unwrap(),
            )
            .unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// The next connection handed out within `within`, if any.
async fn next_within(inc: &mut Incoming, within: Duration) -> Option<Conn> {
    tokio::time::timeout(within, inc.next())
        .await
        .ok()
        .map(|c| c.expect("not the end").expect("a connection"))
}

async fn closed_by_server(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn the_unix_socket_shares_the_places_and_names_the_peer_by_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut inc = Incoming::new(l, 1, D, None, || 0).with_unix(UnixListener::bind(&path).unwrap());

    let mut client = UnixStream::connect(&path).await.unwrap();
    client.write_all(PREFACE).await.unwrap();
    let mut conn = next_within(&mut inc, Duration::from_secs(10))
        .await
        .expect("the Unix connection is handed out");
    assert_eq!(
        conn.identity(),
        &Identity::Unix {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            pid: Some(std::process::id() as i32),
        }
    );
    let mut buf = [0u8; 24];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(inc.open(), 1);

    // Its one place is taken: a TCP connection is refused.
    let mut refused = TcpStream::connect(addr).await.unwrap();
    assert!(
        next_within(&mut inc, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert!(closed_by_server(&mut refused).await);
    drop(conn);
    let _tcp = TcpStream::connect(addr).await.unwrap();
    let conn = next_within(&mut inc, Duration::from_secs(10))
        .await
        .expect("admitted once the place is free");
    assert!(
        matches!(conn.identity(), Identity::Tcp { addr: Some(_) }),
        "{:?}",
        conn.identity()
    );
}

#[tokio::test]
async fn a_tls_client_is_handed_out_after_its_handshake_named_by_its_certificate() {
    let (mut inc, addr) = mtls_incoming(4, D).await;
    let client = tokio::spawn(async move {
        let mut s = tls_client(addr, true).await.expect("handshake");
        s.write_all(PREFACE).await.unwrap();
        s.flush().await.unwrap();
        s
    });
    let mut conn = next_within(&mut inc, Duration::from_secs(10))
        .await
        .expect("handed out");
    let Identity::Cert { cn, sans, addr: a } = conn.identity().clone() else {
        panic!("{:?}", conn.identity())
    };
    assert_eq!(cn.as_deref(), Some("alice"));
    assert!(
        sans.contains(&"spiffe://test/alice".to_string()),
        "{sans:?}"
    );
    assert_eq!(a.map(|a| a.ip()), Some(addr.ip()));
    // What tonic reads is the decrypted stream: the preface itself.
    let mut buf = [0u8; 24];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf[..], PREFACE);
    let _client = client.await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_never_handed_out_and_frees_its_place() {
    let (mut inc, addr) = mtls_incoming(4, D).await;
    let client = tokio::spawn(async move {
        // TLS 1.3: the client may think the handshake is done; the server's
        // refusal shows on the first read.
        match tls_client(addr, false).await {
            Ok(mut s) => {
                let _ = s.write_all(PREFACE).await;
                closed_by_server(&mut s).await
            }
            Err(_) => true,
        }
    });
    assert!(
        next_within(&mut inc, Duration::from_secs(1))
            .await
            .is_none()
    );
    assert!(client.await.unwrap(), "the server closed the connection");
    assert_eq!(inc.open(), 0, "the failed handshake gave its place back");
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_deadline() {
    let (mut inc, addr) = mtls_incoming(4, D).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let accepting = tokio::spawn(async move {
        let got = next_within(&mut inc, Duration::from_secs(60)).await;
        (got.is_none(), inc.open())
    });
    assert!(closed_by_server(&mut silent).await);
    let took = t0.elapsed();
    assert!(took >= D.handshake && took < D.handshake * 2, "{took:?}");
    let (nothing, open) = accepting.await.unwrap();
    assert!(nothing, "nothing is handed out");
    assert_eq!(open, 0);
}

#[tokio::test]
async fn a_connection_still_in_its_handshake_gives_its_place_to_a_newcomer() {
    // A handshake deadline far longer than the test waits: the silent one
    // is closed because it is evicted, not because its time is up.
    let long = Deadlines {
        handshake: Duration::from_secs(600),
        ..D
    };
    let (mut inc, addr) = mtls_incoming(1, long).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // The silent one is accepted (it takes the one place) and waits in its
    // handshake.
    assert!(
        next_within(&mut inc, Duration::from_millis(300))
            .await
            .is_none()
    );
    assert_eq!(inc.open(), 1);
    let client = tokio::spawn(async move {
        let mut s = tls_client(addr, true).await.expect("handshake");
        s.write_all(PREFACE).await.unwrap();
        s
    });
    let conn = next_within(&mut inc, Duration::from_secs(10))
        .await
        .expect("the newcomer is handed out");
    assert!(matches!(conn.identity(), Identity::Cert { .. }));
    assert!(
        closed_by_server(&mut silent).await,
        "the silent one was closed"
    );
    assert_eq!(inc.open(), 1);
    let _client = client.await.unwrap();
}
