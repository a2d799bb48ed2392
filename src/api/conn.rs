//! One accepted gRPC connection, with the deadlines hyper does not enforce
//! itself: the HTTP/2 client preface must arrive within
//! [`Deadlines::handshake`] of the accept, and a connection the client then
//! sends nothing on for [`Deadlines::idle`] is closed. (hyper's HTTP/2
//! keepalive pings only start once the handshake is done.) Each connection
//! holds one of the `--max-connections` [`Places`] until it is dropped; when
//! they are all taken, the oldest connection still waiting for its preface
//! gives its place up, so idle sockets cannot lock clients out.
//!
//! The same holds on every transport ([`Stream`]). On TLS the deadlines
//! count from the TCP accept and the preface is the decrypted one: the TLS
//! handshake and the HTTP/2 preface together must fit in
//! [`Deadlines::handshake`], and a connection still in its TLS handshake
//! can be evicted like one waiting for its preface.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::Connected;

use super::identity::Identity;
use super::stream::Stream;

/// How long a client has from the accept to the end of its preface.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may carry no byte from the client.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// hyper pings a client that sent nothing for this long...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and closes the connection when the ping is not answered within this.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Length of the HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE_LEN: u64 = 24;

/// How long a client may stay silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// From the accept to the end of the client's preface.
    pub handshake: Duration,
    /// After the preface: the longest time without a byte from the client.
    pub idle: Duration,
}

impl Deadlines {
    /// [`HANDSHAKE_TIMEOUT`] and [`IDLE_TIMEOUT`].
    pub const DEFAULT: Deadlines = Deadlines {
        handshake: HANDSHAKE_TIMEOUT,
        idle: IDLE_TIMEOUT,
    };
}

/// Where a connection is with its preface.
const WAITING: u8 = 0;
const GREETED: u8 = 1;
/// Closed to make room; its place went to a newer connection.
const EVICTED: u8 = 2;

/// What a connection and [`Places`] share.
#[derive(Debug, Default)]
struct Shared {
    state: AtomicU8,
    /// The connection's task while it waits for the preface.
    waker: Mutex<Option<Waker>>,
}

/// The `--max-connections` places, and the connections still waiting for
/// their preface, oldest first. Owned by the accept loop.
#[derive(Debug)]
pub struct Places {
    max: usize,
    open: Arc<AtomicUsize>,
    waiting: VecDeque<Weak<Shared>>,
}

/// What [`Places::take`] gave.
#[derive(Debug)]
pub enum Taken {
    /// A free place.
    Free(Place),
    /// The place of the oldest connection still waiting for its preface,
    /// now being closed.
    Evicted(Place),
    /// Every connection has sent its preface: none.
    Full,
}

impl Places {
    /// `max` places (at least one).
    pub fn new(max: usize) -> Places {
        Places {
            max: max.max(1),
            open: Arc::new(AtomicUsize::new(0)),
            waiting: VecDeque::new(),
        }
    }

    /// The number of places.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// A place for a new connection.
    pub fn take(&mut self) -> Taken {
        if self.open() < self.max {
            self.open.fetch_add(1, Ordering::AcqRel);
            return Taken::Free(self.place());
        }
        while let Some(old) = self.waiting.pop_front() {
            let Some(old) = old.upgrade() else { continue };
            if old
                .state
                .compare_exchange(WAITING, EVICTED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let waker = old.waker.lock().ok().and_then(|mut w| w.take());
                if let Some(w) = waker {
                    w.wake();
                }
                return Taken::Evicted(self.place());
            }
        }
        Taken::Full
    }

    fn place(&mut self) -> Place {
        let shared = Arc::new(Shared::default());
        if self.waiting.len() >= self.max.saturating_mul(2) {
            self.waiting.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| s.state.load(Ordering::Acquire) == WAITING)
            });
        }
        self.waiting.push_back(Arc::downgrade(&shared));
        Place {
            open: self.open.clone(),
            shared,
        }
    }
}

/// One of the [`Places`], given back when dropped (unless it was handed
/// on to a newer connection).
#[derive(Debug)]
pub struct Place {
    open: Arc<AtomicUsize>,
    shared: Arc<Shared>,
}

impl Place {
    /// True once this place was handed on.
    fn evicted(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == EVICTED
    }

    /// Marks the preface as received; false when the place was handed on.
    fn greeted(&self) -> bool {
        self.shared
            .state
            .compare_exchange(WAITING, GREETED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Ready once this place was handed on (for a connection still in its
    /// TLS handshake).
    pub fn poll_evicted(&self, cx: &Context<'_>) -> Poll<()> {
        self.wake_me(cx);
        if self.evicted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Lets [`Places::take`] wake this connection's task.
    fn wake_me(&self, cx: &Context<'_>) {
        if let Ok(mut w) = self.shared.waker.lock() {
            match w.as_ref() {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.evicted() {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// An accepted connection served by tonic; its reads fail with
/// `TimedOut` once a deadline passes, which makes hyper close it.
#[derive(Debug)]
pub struct Conn {
    io: Stream,
    /// Who the peer is; tonic puts it in every request's extensions.
    identity: Identity,
    place: Place,
    deadlines: Deadlines,
    accepted: Instant,
    /// Bytes read so far (saturating).
    read: u64,
    last_read: Instant,
    /// Fires at the earliest moment a deadline may have passed; checked
    /// and moved on (never re-armed per read).
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Wraps a connection, accepted now, that holds `place`.
    pub fn new(io: Stream, place: Place, deadlines: Deadlines) -> Conn {
        Conn::accepted_at(io, place, deadlines, Instant::now())
    }

    /// Wraps a connection accepted at `accepted` (before its TLS
    /// handshake) that holds `place`.
    pub fn accepted_at(io: Stream, place: Place, deadlines: Deadlines, accepted: Instant) -> Conn {
        Conn {
            identity: io.identity(),
            io,
            place,
            deadlines,
            accepted,
            read: 0,
            last_read: accepted,
            timer: Box::pin(tokio::time::sleep_until(accepted + deadlines.handshake)),
        }
    }

    /// Who the peer is.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The deadline in force, and what passing it means.
    fn due(&self) -> (Instant, &'static str) {
        if self.read < PREFACE_LEN {
            (
                self.accepted + self.deadlines.handshake,
                "no HTTP/2 client preface",
            )
        } else {
            (self.last_read + self.deadlines.idle, "nothing received")
        }
    }

    /// Pending until the deadline in force passes, then the error that
    /// closes the connection.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let (due, what) = self.due();
            if Instant::now() >= due {
                let after = due.saturating_duration_since(if self.read < PREFACE_LEN {
                    self.accepted
                } else {
                    self.last_read
                });
                tracing::debug!(
                    "closing gRPC connection from {}: {what} for {after:?}",
                    self.identity
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} for {after:?}"),
                )));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

/// The error that closes a connection whose place was handed on.
fn evicted() -> io::Error {
    tracing::debug!("closing a gRPC connection still waiting for its preface: its place is needed");
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed while waiting for the HTTP/2 preface: --max-connections reached",
    )
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let waiting = this.read < PREFACE_LEN;
        if waiting {
            // First, so that an eviction after the check still wakes us.
            this.place.wake_me(cx);
            if this.place.evicted() {
                return Poll::Ready(Err(evicted()));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len().saturating_sub(before);
                if n > 0 {
                    this.read = this.read.saturating_add(n as u64);
                    this.last_read = Instant::now();
                    if waiting && this.read >= PREFACE_LEN && !this.place.greeted() {
                        return Poll::Ready(Err(evicted()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The request extension [`super::identity::identity`] reads.
impl Connected for Conn {
    type ConnectInfo = Identity;

    fn connect_info(&self) -> Identity {
        self.identity.clone()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const D: Deadlines = Deadlines {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(30),
    };
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    /// A connected pair: the server side wrapped (on a free place), the
    /// client side plain.
    async fn pair(places: &mut Places) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let place = match places.take() {
            Taken::Free(p) | Taken::Evicted(p) => p,
            Taken::Full => panic!("no place"),
        };
        (Conn::new(Stream::Tcp(server), place, D), client)
    }

    /// Reads until an error; returns it and how long (virtual time) it took.
    async fn read_until_error(c: &mut Conn) -> (io::Error, Duration) {
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        loop {
            match c.read(&mut buf).await {
                Ok(0) => panic!("unexpected EOF"),
                Ok(_) => {}
                Err(e) => return (e, t0.elapsed()),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_cut_at_the_handshake_deadline() {
        let mut places = Places::new(1);
        let (mut c, _client) = pair(&mut places).await;
        assert_eq!(places.open(), 1);
        let (e, took) = read_until_error(&mut c).await;
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("no HTTP/2 client preface"), "{e}");
        assert!(took >= D.handshake && took < D.handshake * 2, "{took:?}");
        drop(c);
        assert_eq!(places.open(), 0, "the place is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_preface_does_not_count_and_a_full_one_starts_the_idle_clock() {
        let mut places = Places::new(2);
        let (mut c, mut client) = pair(&mut places).await;
        client.write_all(&PREFACE[..16]).await.unwrap();
        let (e, took) = read_until_error(&mut c).await;
        assert!(e.to_string().contains("no HTTP/2 client preface"), "{e}");
        assert!(took < D.handshake * 2, "{took:?}");

        let (mut c, mut client) = pair(&mut places).await;
        client.write_all(PREFACE).await.unwrap();
        let t0 = Instant::now();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).await.unwrap(), 24);
        // A byte every 20 s keeps it open well past both deadlines.
        let keep = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                client.write_all(b"x").await.unwrap();
            }
            client
        });
        for _ in 0..4 {
            assert_eq!(c.read(&mut buf).await.unwrap(), 1);
        }
        assert!(t0.elapsed() >= Duration::from_secs(80));
        let _client = keep.await.unwrap();
        let (e, took) = read_until_error(&mut c).await;
        assert!(e.to_string().contains("nothing received"), "{e}");
        assert!(took >= D.idle && took < D.idle + D.handshake, "{took:?}");
    }

    #[tokio::test]
    async fn when_full_the_oldest_connection_without_a_preface_gives_its_place_up() {
        let mut places = Places::new(3);
        let (mut greeted, mut gc) = pair(&mut places).await;
        gc.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(greeted.read(&mut buf).await.unwrap(), 24);
        let (mut oldest, _oc) = pair(&mut places).await;
        let (newer, _nc) = pair(&mut places).await;
        assert_eq!(places.open(), 3);
        // The oldest silent one is waiting in a read when it is evicted.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            oldest.read(&mut buf).await.map(|_| ()).unwrap_err()
        });
        tokio::task::yield_now().await;
        let Taken::Evicted(place) = places.take() else {
            panic!("expected an eviction")
        };
        let e = tokio::time::timeout(Duration::from_secs(2), reader)
            .await
            .expect("the evicted connection is woken")
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
        assert_eq!(places.open(), 3, "its place went to the newcomer");
        drop(place);
        assert_eq!(places.open(), 2);
        // Next: the newer silent one; the greeted one never.
        let Taken::Free(_free) = places.take() else {
            panic!("expected the free place")
        };
        let Taken::Evicted(_p) = places.take() else {
            panic!("expected the newer one to go")
        };
        let mut buf = [0u8; 64];
        let mut newer = newer;
        assert!(newer.read(&mut buf).await.is_err());
        drop(greeted);
    }

    #[tokio::test]
    async fn a_connection_that_sent_its_preface_cannot_be_evicted_after() {
        let mut places = Places::new(1);
        let (mut c, mut client) = pair(&mut places).await;
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(c.read(&mut buf).await.unwrap(), 24);
        assert!(matches!(places.take(), Taken::Full));
        client.write_all(b"more").await.unwrap();
        assert_eq!(c.read(&mut buf).await.unwrap(), 4);
    }

    #[test]
    fn the_waiting_list_is_pruned() {
        let mut places = Places::new(4);
        for _ in 0..100 {
            match places.take() {
                Taken::Free(p) => drop(p),
                other => panic!("{other:?}"),
            }
        }
        assert!(places.waiting.len() <= 8, "{}", places.waiting.len());
        assert_eq!(places.open(), 0);
    }

    #[tokio::test]
    async fn connect_info_is_the_peers_identity() {
        let mut places = Places::new(2);
        let (c, client) = pair(&mut places).await;
        assert_eq!(
            c.connect_info(),
            Identity::Tcp {
                addr: client.local_addr().ok()
            }
        );
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let Taken::Free(place) = places.take() else {
            panic!("no place")
        };
        let c = Conn::new(Stream::Unix(a), place, D);
        drop(b);
        assert_eq!(
            c.connect_info(),
            Identity::Unix {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                pid: Some(std::process::id() as i32),
            }
        );
    }
}
