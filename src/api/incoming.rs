//! The gRPC listeners' accept loop (TCP, with TLS when set up, and the
//! Unix socket when there is one), within bounds shared by both: at most
//! `--max-connections` connections at once (when all places are taken, the
//! oldest connection that has not sent its HTTP/2 preface yet makes room,
//! else the new one is refused), none while the launcher's open descriptors
//! come near their limit (a reserve stays free for the controller: probes,
//! state writes, spawns, logs), and accept errors (EMFILE and the like)
//! back off instead of ending or spinning. A refused connection is accepted
//! and closed at once; refusals, evictions and errors are logged at most
//! once per [`REPORT_EVERY`] each. TLS handshakes run in tasks of their
//! own, each holding its connection's place, so that a slow one delays no
//! other connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;

use super::conn::{Conn, Deadlines, Places, Taken};
use super::stream::Stream;

/// How often a refusal or an accept error is logged at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Descriptors kept free for the controller, at most (a quarter of the
/// limit when that is less).
pub const RESERVE_BASE: u64 = 1024;
/// Descriptors kept free per instance (a probe socket, a spawn's pipes).
pub const RESERVE_PER_INSTANCE: u64 = 2;
/// The open descriptors are counted again after this long.
const RECOUNT: Duration = Duration::from_millis(100);
/// Pause after an accept error, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Connections refused in one poll before the task yields.
const REFUSALS_PER_POLL: usize = 64;

/// The open-file limit and the descriptors kept free under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// RLIMIT_NOFILE (soft).
    pub limit: u64,
    /// Kept free whatever the number of instances.
    pub base: u64,
}

impl FdBudget {
    /// The budget under `limit` open files.
    pub fn new(limit: u64) -> FdBudget {
        FdBudget {
            limit,
            base: RESERVE_BASE.min(limit / 4),
        }
    }

    /// The budget under this process's current soft limit (None when it
    /// cannot be read or is unlimited).
    pub fn current() -> Option<FdBudget> {
        use nix::sys::resource::{Resource, getrlimit};
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        (soft != nix::sys::resource::RLIM_INFINITY).then(|| FdBudget::new(soft))
    }

    /// Descriptors kept free with `instances` instances.
    pub fn reserve(&self, instances: usize) -> u64 {
        self.base
            .saturating_add(RESERVE_PER_INSTANCE.saturating_mul(instances as u64))
    }

    /// The most connections this budget allows at once, with no instance.
    pub fn max_connections(&self) -> usize {
        usize::try_from(self.limit.saturating_sub(self.base))
            .unwrap_or(usize::MAX)
            .max(1)
    }
}

/// The descriptors this process has open (None when they cannot be
/// listed, which near the limit is itself a sign).
fn open_fds() -> Option<u64> {
    let rd = std::fs::read_dir("/proc/self/fd").ok()?;
    // Less the one that lists them.
    Some((rd.count() as u64).saturating_sub(1))
}

/// A count of events reported at most once per [`REPORT_EVERY`].
#[derive(Debug, Default)]
struct Every {
    last: Option<Instant>,
    skipped: u64,
}

impl Every {
    /// Some(events not reported since the last report) when this one is.
    fn tick(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < REPORT_EVERY => {
                self.skipped += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.skipped))
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Refusal {
    #[error("--max-connections {0} reached")]
    Cap(usize),
    #[error("{open} of {limit} descriptors open, {reserve} are kept for the launcher's own use")]
    Fds { open: u64, limit: u64, reserve: u64 },
    #[error("cannot count the open descriptors")]
    Uncounted,
}

/// The connection stream handed to tonic.
pub struct Incoming {
    listener: TcpListener,
    unix: Option<UnixListener>,
    /// Which listener is polled first (they take turns).
    unix_first: bool,
    tls: Option<TlsAcceptor>,
    handshakes: JoinSet<Result<Conn, super::handshake::HandshakeError>>,
    places: Places,
    deadlines: Deadlines,
    budget: Option<FdBudget>,
    instances: Box<dyn Fn() -> usize + Send + Sync>,
    /// Last count of open descriptors, when, and connections admitted
    /// since.
    counted: Option<(u64, Instant, u64)>,
    pause: Option<Pin<Box<Sleep>>>,
    backoff: Duration,
    refused: Every,
    evicted: Every,
    failed: Every,
    tls_failed: Every,
}

impl Incoming {
    /// Accepts on `listener`: at most `max` connections at once, within
    /// `budget`, given the number of instances `instances` reports.
    pub fn new(
        listener: TcpListener,
        max: usize,
        deadlines: Deadlines,
        budget: Option<FdBudget>,
        instances: impl Fn() -> usize + Send + Sync + 'static,
    ) -> Incoming {
        // Without /proc the budget cannot be checked: the cap alone holds.
        let budget = budget.filter(|_| match open_fds() {
            Some(_) => true,
            None => {
                tracing::warn!(
                    "cannot list /proc/self/fd: gRPC connections are bounded by --max-connections only"
                );
                false
            }
        });
        Incoming {
            listener,
            unix: None,
            unix_first: false,
            tls: None,
            handshakes: JoinSet::new(),
            places: Places::new(max),
            deadlines,
            budget,
            instances: Box::new(instances),
            counted: None,
            pause: None,
            backoff: BACKOFF_MIN,
            refused: Every::default(),
            evicted: Every::default(),
            failed: Every::default(),
            tls_failed: Every::default(),
        }
    }

    /// Also accepts on the Unix socket `unix` (never with TLS).
    pub fn with_unix(mut self, unix: UnixListener) -> Incoming {
        self.unix = Some(unix);
        self
    }

    /// Serves TLS on the TCP listener.
    pub fn with_tls(mut self, tls: TlsAcceptor) -> Incoming {
        self.tls = Some(tls);
        self
    }

    /// The next connection on either listener, and who it is from (for
    /// the log).
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, String)>> {
        self.unix_first = !self.unix_first;
        let tcp = |l: &TcpListener, cx: &mut Context<'_>| {
            l.poll_accept(cx)
                .map_ok(|(s, peer)| (Stream::Tcp(s), peer.to_string()))
        };
        let unix = |l: &Option<UnixListener>, cx: &mut Context<'_>| match l {
            Some(l) => l.poll_accept(cx).map_ok(|(s, _)| {
                let s = Stream::Unix(s);
                let who = format!("{} on the Unix socket", s.identity());
                (s, who)
            }),
            None => Poll::Pending,
        };
        if self.unix_first {
            match unix(&self.unix, cx) {
                Poll::Pending => tcp(&self.listener, cx),
                ready => ready,
            }
        } else {
            match tcp(&self.listener, cx) {
                Poll::Pending => unix(&self.unix, cx),
                ready => ready,
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.places.open()
    }

    /// Checks the descriptor budget for one more connection.
    fn within_budget(&mut self) -> Result<(), Refusal> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let now = Instant::now();
        let (open, at, since) = match self.counted {
            Some((n, at, since)) if now.duration_since(at) < RECOUNT => (n, at, since),
            _ => (open_fds().ok_or(Refusal::Uncounted)?, now, 0),
        };
        let reserve = budget.reserve((self.instances)());
        // The accepted socket is already among the open ones.
        let open_now = open.saturating_add(since);
        if open_now.saturating_add(reserve) > budget.limit {
            self.counted = Some((open, at, since));
            return Err(Refusal::Fds {
                open: open_now,
                limit: budget.limit,
                reserve,
            });
        }
        self.counted = Some((open, at, since + 1));
        Ok(())
    }
}

/// The launcher's gRPC connections, on `listener` (with `tls` when set)
/// and `unix` (when set): at most `max`, lowered when the
/// open-file limit would not leave the controller its reserve, with the
/// default [`Deadlines`]; the reserve grows with the instances in
/// `snapshots`.
pub fn bounded(
    listener: TcpListener,
    unix: Option<UnixListener>,
    tls: Option<TlsAcceptor>,
    max: usize,
    snapshots: tokio::sync::watch::Receiver<std::sync::Arc<crate::controller::snapshot::Snapshot>>,
) -> Incoming {
    let budget = FdBudget::current();
    let max = match budget {
        Some(b) if max > b.max_connections() => {
            tracing::warn!(
                "--max-connections {max} lowered to {}: {} of the {} open files are kept for the launcher's own use",
                b.max_connections(),
                b.base,
                b.limit
            );
            b.max_connections()
        }
        _ => max,
    };
    let d = Deadlines::DEFAULT;
    tracing::info!(
        "gRPC connections: at most {max}{}; the HTTP/2 preface within {:?}, then a byte at least every {:?}",
        budget
            .map(|b| format!(
                ", none while fewer than {} + {RESERVE_PER_INSTANCE} per instance of the {} open files are free",
                b.base, b.limit
            ))
            .unwrap_or_default(),
        d.handshake,
        d.idle
    );
    let mut incoming = Incoming::new(listener, max, d, budget, move || {
        snapshots.borrow().instances.len()
    });
    if let Some(unix) = unix {
        incoming = incoming.with_unix(unix);
    }
    if let Some(tls) = tls {
        incoming = incoming.with_tls(tls);
    }
    incoming
}

/// Errors of one pending connection (it is gone; the next may be fine).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        for _ in 0..REFUSALS_PER_POLL {
            if let Poll::Ready(Some(done)) = this.handshakes.poll_join_next(cx) {
                match done {
                    Ok(Ok(conn)) => return Poll::Ready(Some(Ok(conn))),
                    Ok(Err(why)) => {
                        if let Some(skipped) = this.tls_failed.tick() {
                            tracing::warn!(
                                "{why} ({skipped} more TLS handshakes failed since the last report)"
                            );
                        }
                    }
                    Err(e) => tracing::warn!("a TLS handshake task ended: {e}"),
                }
                continue;
            }
            match this.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok((stream, peer))) => {
                    this.backoff = BACKOFF_MIN;
                    let admitted = this.within_budget().and_then(|()| match this.places.take() {
                        Taken::Free(place) => Ok(place),
                        Taken::Evicted(place) => {
                            if let Some(skipped) = this.evicted.tick() {
                                tracing::warn!(
                                    "--max-connections {} reached: closed the oldest gRPC connection still waiting for its HTTP/2 preface to admit {peer} ({skipped} more since the last report)",
                                    this.places.max()
                                );
                            }
                            Ok(place)
                        }
                        Taken::Full => Err(Refusal::Cap(this.places.max())),
                    });
                    match (admitted, stream) {
                        (Ok(place), Stream::Tcp(tcp)) => {
                            // Small replies must not wait for the client's
                            // delayed ACK; only latency is at stake.
                            let _ = tcp.set_nodelay(true);
                            match &this.tls {
                                Some(tls) => {
                                    this.handshakes.spawn(super::handshake::tls(
                                        tls.clone(),
                                        tcp,
                                        place,
                                        this.deadlines,
                                        Instant::now(),
                                    ));
                                }
                                None => {
                                    let conn = Conn::new(Stream::Tcp(tcp), place, this.deadlines);
                                    return Poll::Ready(Some(Ok(conn)));
                                }
                            }
                        }
                        (Ok(place), stream) => {
                            return Poll::Ready(Some(Ok(Conn::new(stream, place, this.deadlines))));
                        }
                        (Err(why), stream) => {
                            drop(stream);
                            if let Some(skipped) = this.refused.tick() {
                                tracing::warn!(
                                    "refused a gRPC connection from {peer}: {why} ({skipped} more refused since the last report)"
                                );
                            }
                        }
                    }
                }
                Poll::Ready(Err(e)) if is_per_connection(&e) => {}
                Poll::Ready(Err(e)) => {
                    if let Some(skipped) = this.failed.tick() {
                        tracing::warn!(
                            "cannot accept gRPC connections: {e}; pausing {:?} ({skipped} more errors since the last report)",
                            this.backoff
                        );
                    }
                    let mut pause = Box::pin(tokio::time::sleep(this.backoff));
                    this.backoff = (this.backoff * 2).min(BACKOFF_MAX);
                    if pause.as_mut().poll(cx).is_pending() {
                        this.pause = Some(pause);
                        return Poll::Pending;
                    }
                }
            }
        }
        // Refused a burst: let other tasks run, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_stream::StreamExt;

    use super::*;

    const D: Deadlines = Deadlines {
        handshake: Duration::from_secs(5),
        idle: Duration::from_secs(30),
    };

    #[test]
    fn the_budget_keeps_a_reserve_that_grows_with_the_instances() {
        let b = FdBudget::new(20_000);
        assert_eq!(b.base, 1024);
        assert_eq!(b.reserve(100), 1024 + 200);
        assert_eq!(b.max_connections(), 20_000 - 1024);
        let small = FdBudget::new(1024);
        assert_eq!(small.base, 256);
        assert_eq!(small.max_connections(), 768);
        assert_eq!(FdBudget::new(0).max_connections(), 1);
    }

    #[test]
    fn reports_are_rate_limited_and_count_what_they_skipped() {
        let mut e = Every::default();
        assert_eq!(e.tick(), Some(0));
        assert_eq!(e.tick(), None);
        assert_eq!(e.tick(), None);
        e.last = e.last.map(|t| t - REPORT_EVERY);
        assert_eq!(e.tick(), Some(2));
    }

    async fn is_closed_by_server(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    /// The next connection handed out, after its client sent the HTTP/2
    /// preface (so that it keeps its place).
    async fn greeted(inc: &mut Incoming, client: &mut TcpStream) -> Conn {
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut c = inc.next().await.unwrap().unwrap();
        let mut buf = [0u8; 24];
        c.read_exact(&mut buf).await.unwrap();
        c
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once_and_places_come_back() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut inc = Incoming::new(l, 2, D, None, || 0);
        let mut clients = Vec::new();
        for _ in 0..5 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let a = greeted(&mut inc, &mut clients[0]).await;
        let b = greeted(&mut inc, &mut clients[1]).await;
        assert_eq!(inc.open(), 2);
        // The other three are accepted and closed while polling for more.
        let more = tokio::time::timeout(Duration::from_millis(300), inc.next()).await;
        assert!(more.is_err(), "nothing past the cap is handed out");
        for c in &mut clients[2..] {
            assert!(is_closed_by_server(c).await);
        }
        drop(a);
        assert_eq!(inc.open(), 1);
        let mut late = TcpStream::connect(addr).await.unwrap();
        let c = greeted(&mut inc, &mut late).await;
        assert_eq!(inc.open(), 2);
        drop((b, c));
        assert_eq!(inc.open(), 0);
    }

    #[tokio::test]
    async fn a_newcomer_takes_the_place_of_a_silent_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut inc = Incoming::new(l, 1, D, None, || 0);
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut old = inc.next().await.unwrap().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let _new = greeted(&mut inc, &mut client).await;
        let mut buf = [0u8; 8];
        assert!(old.read(&mut buf).await.is_err());
        drop(old);
        assert!(is_closed_by_server(&mut silent).await);
        assert_eq!(inc.open(), 1);
    }

    #[tokio::test]
    async fn connections_are_refused_when_the_reserve_is_reached() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let open = open_fds().unwrap();
        // Room for the reserve of 3 instances and some connections more
        // (each costs two descriptors here: the client's and the server's).
        let budget = FdBudget {
            limit: open + 10 + 3 * RESERVE_PER_INSTANCE + 40,
            base: 10,
        };
        let mut inc = Incoming::new(l, 1000, D, Some(budget), || 3);
        let mut clients = Vec::new();
        let mut admitted = Vec::new();
        while admitted.len() < 200 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            match tokio::time::timeout(Duration::from_millis(300), inc.next()).await {
                Ok(c) => admitted.push(c.unwrap().unwrap()),
                Err(_) => break,
            }
        }
        assert!(
            !admitted.is_empty() && admitted.len() < 200,
            "{} admitted",
            admitted.len()
        );
        assert!(is_closed_by_server(clients.last_mut().unwrap()).await);
    }

    /// accept(2) failing with EMFILE (in a child process of its own, see
    /// [`crate::test_util`]): the stream neither ends nor hands anything
    /// out, backs off, and takes the connection once descriptors are free.
    #[tokio::test]
    async fn accept_errors_back_off_and_do_not_end_the_stream() {
        const SEEN: &str = "accepted after EMFILE";
        if !crate::test_util::in_child(
            "api::incoming::tests::accept_errors_back_off_and_do_not_end_the_stream",
            SEEN,
        ) {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut inc = Incoming::new(l, 4, D, None, || 0);
        let mut client = TcpStream::connect(addr).await.unwrap();
        let held = crate::test_util::exhaust_fds();
        let none = tokio::time::timeout(Duration::from_millis(500), inc.next()).await;
        assert!(
            none.is_err(),
            "nothing (not even the end) while accept fails"
        );
        assert!(inc.backoff > BACKOFF_MIN, "{:?}", inc.backoff);
        drop(held);
        let mut c = tokio::time::timeout(Duration::from_secs(5), greeted(&mut inc, &mut client))
            .await
            .expect("the connection is taken once descriptors are free");
        assert_eq!(inc.open(), 1);
        c.shutdown().await.unwrap();
        println!("{SEEN}");
    }
}
