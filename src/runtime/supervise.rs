//! One task per running process: notices its exit at once and runs its
//! health probes, reporting both to the controller as events.
//!
//! Decides nothing: it never restarts, stops or signals a process.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

/// What a supervisor reports.
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
        status: Result<ExitStatus, String>,
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

/// Probes once: any 2xx is healthy.
pub async fn probe(client: &reqwest::Client, t: &ProbeTarget) -> Result<(), String> {
    match client.get(&t.url).timeout(t.timeout).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("GET {} answered {}", t.url, r.status())),
        Err(e) if e.is_timeout() => Err(format!("GET {} timed out after {:?}", t.url, t.timeout)),
        Err(e) if e.is_connect() => Err(format!("GET {}: connection refused", t.url)),
        Err(e) => Err(format!("GET {}: {e}", t.url)),
    }
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
        tokio::time::sleep(target.interval).await;
        match probe(&client, &target).await {
            Ok(()) if !last_ok => {
                last_ok = true;
                send(true, String::new());
            }
            Ok(()) => {}
            Err(detail) => {
                last_ok = false;
                send(false, detail);
            }
        }
    }
}

/// How a supervisor learns that its process ended.
pub enum Exit {
    /// Our child: wait for it (tokio reaps it through a pidfd).
    Child(tokio::process::Child),
    /// Adopted from an earlier launcher: not our child; its pidfd becomes
    /// readable when it ends.
    Adopted(std::os::fd::OwnedFd),
}

impl Exit {
    async fn wait(self) -> Result<ExitStatus, String> {
        match self {
            Exit::Child(mut child) => child.wait().await.map_err(|e| format!("wait failed: {e}")),
            Exit::Adopted(fd) => {
                // SAFETY: `fd` is an OwnedFd moved into the AsyncFd, so it
                // stays open and the same for the AsyncFd's whole life.
                #[allow(unsafe_code)]
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        fd,
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(afd) => match afd.readable().await {
                        Ok(_) => Err("exited (status unknown: adopted from an earlier launcher, not our child)".into()),
                        Err(e) => Err(format!("cannot watch the adopted process: {e}")),
                    },
                    Err(e) => Err(format!("cannot watch the adopted process: {e}")),
                }
            }
        }
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
