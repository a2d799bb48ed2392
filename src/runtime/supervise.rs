//! One task per running process: notices its exit at once and runs its
//! health probes, reporting both to the controller as events. A probe the
//! launcher itself could not make (out of descriptors or memory) is not
//! reported: it says nothing about the instance.
//!
//! Decides nothing: it never restarts, stops or signals a process.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the runtime reports: supervisors (exits, probes), the cgroup
/// janitor and the process table's writer.
#[derive(Debug)]
pub enum ProcEvent {
    /// The process exited (or was killed).
    Exited {
        /// Instance.
        process_id: Arc<str>,
        /// Which spawn.
        epoch: u64,
        /// How it ended; `Err` says why the status is unknown (an adopted
        /// process is not our child, so its status cannot be read).
        status: Result<ExitStatus, UnknownExit>,
    },
    /// A probe result: the first success of a start, then every liveness
    /// failure and every recovery.
    Probe {
        /// Instance.
        process_id: Arc<str>,
        /// Which spawn.
        epoch: u64,
        /// Healthy or not.
        ok: bool,
        /// Why not.
        detail: String,
    },
    /// Cgroup work queued with the janitor was done.
    CgroupDone {
        /// Instance.
        process_id: Arc<str>,
    },
    /// The process table's writes fail (`Some`: the latest failure), or
    /// work again (`None`).
    TableSaved {
        /// Why the latest write failed.
        error: Option<crate::sources::state_file::StateFileError>,
    },
}

/// Why a process's exit status is unknown.
#[derive(Debug, thiserror::Error)]
pub enum UnknownExit {
    /// Its pidfd could not be watched (the launcher is out of resources).
    #[error("cannot watch the process: {0}")]
    Watch(#[source] std::io::Error),
    /// Adopted from an earlier launcher: not our child, so its status
    /// cannot be read.
    #[error("exited (status unknown: adopted from an earlier launcher, not our child)")]
    Adopted,
    /// Reaping it failed.
    #[error("wait failed: {0}")]
    Wait(#[source] std::io::Error),
    /// The kernel reported neither an exit nor a death by a signal.
    #[error("ended in an unexpected way (si_code {si_code})")]
    Unexpected {
        /// `si_code` of the `waitid` answer.
        si_code: i32,
    },
}

/// Where and how to probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// `http://127.0.0.1:<port><path>`.
    pub url: String,
    /// Liveness interval.
    pub interval: Duration,
    /// Per-probe timeout.
    pub timeout: Duration,
}

/// The first start-up probe follows the spawn after this long; each
/// further one waits twice as long, up to [`STARTUP_STEP_MAX`].
const STARTUP_STEP_MIN: Duration = Duration::from_millis(1);
const STARTUP_STEP_MAX: Duration = Duration::from_millis(10);

/// Why a probe failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// The instance answered badly, late or not at all: counts against it.
    #[error("{0}")]
    Instance(String),
    /// The launcher could not make the request (no descriptor, buffer or
    /// memory for a socket): says nothing about the instance.
    #[error("{0}")]
    Launcher(String),
}

/// The launcher's own OS error in `e`'s source chain, if any: out of
/// descriptors (EMFILE, ENFILE), buffers (ENOBUFS) or memory (ENOMEM).
pub fn launcher_side(e: &(dyn std::error::Error + 'static)) -> Option<std::io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(code) = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .filter(|c| super::out_of_resources(*c))
        {
            return Some(std::io::Error::from_raw_os_error(code));
        }
        next = err.source();
    }
    None
}

/// Probes once: any 2xx is healthy.
pub async fn probe(client: &reqwest::Client, t: &ProbeTarget) -> Result<(), ProbeFailure> {
    use ProbeFailure::Instance;
    match client.get(&t.url).timeout(t.timeout).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(Instance(format!("GET {} answered {}", t.url, r.status()))),
        Err(e) if let Some(os) = launcher_side(&e) => Err(ProbeFailure::Launcher(format!(
            "GET {}: the launcher cannot open a connection: {os}",
            t.url
        ))),
        Err(e) if e.is_timeout() => Err(Instance(format!(
            "GET {} timed out after {:?}",
            t.url, t.timeout
        ))),
        Err(e) if e.is_connect() => Err(Instance(format!("GET {}: connection refused", t.url))),
        Err(e) => Err(Instance(format!("GET {}: {e}", t.url))),
    }
}

/// Warns that a probe was not made, at most once per [`NOT_PROBED_EVERY`]
/// for all instances together.
fn warn_not_probed(process_id: &str, detail: &str) {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    let now = u64::try_from(ORIGIN.get_or_init(Instant::now).elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let last = LAST_MS.load(Ordering::Relaxed);
    let every = u64::try_from(NOT_PROBED_EVERY.as_millis()).unwrap_or(u64::MAX);
    if (last == 0 || now.saturating_sub(last) >= every)
        && LAST_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            "{process_id}: health check not made, not counted against the instance, tried again at the next interval: {detail} (such warnings are shown at most once per {NOT_PROBED_EVERY:?})"
        );
    }
}

/// See [`warn_not_probed`].
const NOT_PROBED_EVERY: Duration = Duration::from_secs(10);

/// Liveness probes fall due on a grid of this fraction of their interval
/// (at most [`GRID_MAX`]): the probes of many instances then share one
/// wake-up of the runtime instead of waking it one by one, which with 1,000
/// instances was most of the launcher's CPU in steady state.
const GRID_DIVISOR: u32 = 64;
const GRID_MAX: Duration = Duration::from_millis(500);

/// The time on the grid at or after `at` (see [`GRID_DIVISOR`]).
fn liveness_due(at: Instant, interval: Duration) -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let grid = (interval / GRID_DIVISOR).min(GRID_MAX).as_nanos().max(1);
    let since = at.saturating_duration_since(origin).as_nanos();
    let late = (grid - since % grid) % grid;
    at + Duration::from_nanos(u64::try_from(late).unwrap_or(0))
}

async fn probe_loop(
    client: reqwest::Client,
    target: ProbeTarget,
    process_id: Arc<str>,
    epoch: u64,
    tx: mpsc::UnboundedSender<ProcEvent>,
) {
    let send = |ok: bool, detail: String| {
        let _ = tx.send(ProcEvent::Probe {
            process_id: process_id.clone(),
            epoch,
            ok,
            detail,
        });
    };
    // Start-up: short, growing steps until the first success. The planner
    // enforces the start-up timeout.
    let mut step = STARTUP_STEP_MIN;
    let startup = ProbeTarget {
        timeout: target.timeout.min(Duration::from_secs(1)),
        ..target.clone()
    };
    loop {
        if probe(&client, &startup).await.is_ok() {
            send(true, String::new());
            break;
        }
        tokio::time::sleep(step).await;
        step = (step * 2).min(STARTUP_STEP_MAX);
    }
    // Liveness: every interval; report failures and recoveries.
    let mut last_ok = true;
    loop {
        tokio::time::sleep_until(liveness_due(
            Instant::now() + target.interval,
            target.interval,
        ))
        .await;
        match probe(&client, &target).await {
            Ok(()) if !last_ok => {
                last_ok = true;
                send(true, String::new());
            }
            Ok(()) => {}
            Err(ProbeFailure::Launcher(detail)) => warn_not_probed(&process_id, &detail),
            Err(ProbeFailure::Instance(detail)) => {
                last_ok = false;
                send(false, detail);
            }
        }
    }
}

/// How a supervisor learns that its process ended: a pidfd, readable once
/// the process has exited.
pub enum Exit {
    /// Our child: reaped through its pidfd, which also gives its status.
    Child(OwnedFd),
    /// Adopted from an earlier launcher: not our child, so its status
    /// cannot be read.
    Adopted(OwnedFd),
}

impl Exit {
    async fn wait(self) -> Result<ExitStatus, UnknownExit> {
        let (fd, ours) = match self {
            Exit::Child(fd) => (fd, true),
            Exit::Adopted(fd) => (fd, false),
        };
        // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it stays
        // open and the same for the AsyncFd's whole life.
        #[allow(unsafe_code)]
        let watched = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| UnknownExit::Watch(e.into()))?;
        let _ = watched.readable().await.map_err(UnknownExit::Watch)?;
        if !ours {
            return Err(UnknownExit::Adopted);
        }
        reap(watched.get_ref())
    }
}

/// Reaps our exited child through its pidfd and returns how it ended.
/// (Not nix's `waitid`, which cannot represent a death by a real-time
/// signal: rustix's gives the raw signal number.)
fn reap(pidfd: &OwnedFd) -> Result<ExitStatus, UnknownExit> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let info = waitid(WaitId::PidFd(pidfd.as_fd()), WaitIdOptions::EXITED)
        .map_err(|e| UnknownExit::Wait(e.into()))?
        // Without NOHANG it returns once the child has exited, so a status
        // without a pid is a kernel oddity: reported as si_code 0.
        .ok_or(UnknownExit::Unexpected { si_code: 0 })?;
    if let Some(code) = info.exit_status() {
        Ok(ExitStatus::from_raw((code & 0xff) << 8))
    } else if let Some(sig) = info.terminating_signal() {
        let core = if info.dumped() { 0x80 } else { 0 };
        Ok(ExitStatus::from_raw((sig & 0x7f) | core))
    } else {
        Err(UnknownExit::Unexpected {
            si_code: info.raw_code(),
        })
    }
}

/// Waits for the process's exit while probing it; reports both.
pub async fn supervise(
    exit: Exit,
    process_id: Arc<str>,
    epoch: u64,
    target: ProbeTarget,
    client: reqwest::Client,
    tx: mpsc::UnboundedSender<ProcEvent>,
) {
    let probes = probe_loop(client, target, process_id.clone(), epoch, tx.clone());
    tokio::select! {
        status = exit.wait() => {
            let _ = tx.send(ProcEvent::Exited { process_id, epoch, status });
        }
        () = probes => {}
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// Answers `n` connections, one at a time, with `answer`; returns the
    /// requests it read.
    fn serve(answer: &'static str, n: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..n {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let mut req = Vec::new();
                while !req.ends_with(b"\r\n\r\n") {
                    let k = s.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..k]);
                }
                seen.push(String::from_utf8_lossy(&req).into_owned());
                s.write_all(answer.as_bytes()).unwrap();
            }
            seen
        });
        (port, h)
    }

    fn target(port: u16, timeout: Duration) -> ProbeTarget {
        ProbeTarget {
            url: format!("http://127.0.0.1:{port}/health?x=1"),
            interval: Duration::from_secs(1),
            timeout,
        }
    }

    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_2xx_is_healthy_and_the_request_is_a_plain_get() {
        let (port, h) = serve("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", 1);
        let t = target(port, Duration::from_secs(5));
        assert_eq!(probe(&client(), &t).await, Ok(()));
        let req = &h.join().unwrap()[0];
        assert!(req.starts_with("GET /health?x=1 HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{req}"
        );
    }

    #[tokio::test]
    async fn a_non_2xx_is_unhealthy_and_named() {
        let (port, h) = serve("HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet", 1);
        let err = probe(&client(), &target(port, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            ProbeFailure::Instance(format!(
                "GET http://127.0.0.1:{port}/health?x=1 answered 503 Service Unavailable"
            ))
        );
        h.join().unwrap();
    }

    #[tokio::test]
    async fn refused_and_silent_servers_are_unhealthy() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe(&client(), &target(port, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeFailure::Instance(m) if m.ends_with("connection refused")),
            "{err:?}"
        );

        // Accepted (by the kernel, through the backlog) but never answered.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let err = probe(&client(), &target(port, Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeFailure::Instance(m) if m.ends_with("timed out after 200ms")),
            "{err:?}"
        );
        drop(l);
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_hang() {
        let (port, h) = serve("SSH-2.0-OpenSSH\r\n\r\n", 1);
        let err = probe(&client(), &target(port, Duration::from_secs(5)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ProbeFailure::Instance(m) if m.starts_with(&format!("GET http://127.0.0.1:{port}/health?x=1: "))),
            "{err:?}"
        );
        h.join().unwrap();
    }

    /// An error whose source is another error.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn only_the_launchers_own_resource_errors_are_launcher_side() {
        use nix::libc::{ECONNREFUSED, EMFILE, ENFILE, ENOBUFS, ENOMEM, ETIMEDOUT};
        let os = |c| std::io::Error::from_raw_os_error(c);
        for code in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            let deep = Wrapped(Box::new(Wrapped(Box::new(os(code)))));
            assert_eq!(
                launcher_side(&deep).and_then(|e| e.raw_os_error()),
                Some(code)
            );
        }
        for code in [ECONNREFUSED, ETIMEDOUT] {
            assert!(launcher_side(&Wrapped(Box::new(os(code)))).is_none());
        }
        let other = std::io::Error::other("no errno");
        assert!(launcher_side(&Wrapped(Box::new(other))).is_none());
    }

    /// A real probe made while the process has no descriptor left (in a
    /// child process of its own, see [`crate::test_util`]).
    #[tokio::test]
    async fn a_probe_the_launcher_cannot_make_is_not_the_instances_failure() {
        const SEEN: &str = "launcher-side probe failure seen";
        if !crate::test_util::in_child(
            "runtime::supervise::tests::a_probe_the_launcher_cannot_make_is_not_the_instances_failure",
            SEEN,
        ) {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let c = client();
        let held = crate::test_util::exhaust_fds();
        let err = probe(&c, &target(port, Duration::from_secs(5)))
            .await
            .unwrap_err();
        drop(held);
        assert!(
            matches!(&err, ProbeFailure::Launcher(m) if m.contains("Too many open files")),
            "{err:?}"
        );
        println!("{SEEN}: {err}");
    }

    fn sleeper(t: &tempfile::TempDir) -> crate::runtime::spawn::Spawned {
        sleep(t, "30")
    }

    /// `/bin/sleep <arg>`: a number sleeps, anything else exits with 1.
    fn sleep(t: &tempfile::TempDir, arg: &str) -> crate::runtime::spawn::Spawned {
        let mut pattern = crate::spec::manifest::parse_manifest(
            "name: p\nversion: '1'\nexecutable: /bin/sleep\nisolation_level: none\n",
            "m",
            t.path(),
        )
        .unwrap();
        pattern.args = vec![arg.into()];
        let key = crate::spec::InstanceKey::new("p", crate::spec::Isolation::None, "", "").unwrap();
        let spec = crate::spec::InstanceSpec::new(key, Default::default(), None).unwrap();
        let ports = crate::reconcile::observed::Ports { grpc: 1, health: 2 };
        crate::runtime::spawn::spawn(
            "shared:p",
            &spec,
            &pattern,
            ports,
            &t.path().join("l"),
            &[],
            "me",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_exit_is_read_through_the_pidfd_whatever_the_signal() {
        use crate::runtime::spawn::describe_exit;
        let t = tempfile::tempdir().unwrap();
        let rt = nix::libc::SIGRTMIN() + 3;
        for (sig, expected) in [
            (
                nix::libc::SIGKILL,
                "killed by signal 9 (SIGKILL)".to_string(),
            ),
            (rt, format!("killed by signal {rt} (unknown)")),
        ] {
            let s = sleeper(&t);
            // SAFETY: kill(2) with a pid we own and a valid signal number.
            #[allow(unsafe_code)]
            let sent = unsafe { nix::libc::kill(s.pid as i32, sig) };
            assert_eq!(sent, 0);
            let status = Exit::Child(s.pidfd).wait().await.unwrap();
            assert_eq!(describe_exit(status), expected);
        }
        let status = Exit::Child(sleep(&t, "never").pidfd).wait().await;
        assert_eq!(describe_exit(status.unwrap()), "exited with status 1");
    }

    #[test]
    fn liveness_probes_fall_due_on_a_shared_grid() {
        let interval = Duration::from_secs(30);
        let grid = interval / GRID_DIVISOR;
        let now = Instant::now();
        let mut dues = Vec::new();
        for ms in (0..2_000).step_by(7) {
            let at = now + Duration::from_millis(ms);
            let due = liveness_due(at, interval);
            assert!(due >= at && due < at + grid, "{at:?} -> {due:?}");
            dues.push(due);
        }
        dues.dedup();
        // 286 probes over 2 s share one wake-up per grid step they span.
        assert!(
            dues.len() <= 2_000 / grid.as_millis() as usize + 2,
            "{dues:?}"
        );
        // A long interval's grid is capped; a short one's is fine-grained.
        let long = Duration::from_secs(3600);
        let at = now + Duration::from_millis(1);
        assert!(liveness_due(at, long) < at + GRID_MAX);
        let short = Duration::from_millis(64);
        assert!(liveness_due(at, short) < at + Duration::from_millis(1));
    }
}
