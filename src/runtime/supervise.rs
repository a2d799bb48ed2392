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
        /// How it ended.
        status: std::io::Result<ExitStatus>,
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
const STARTUP_STEP_MAX: Duration = Duration::from_millis(100);

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

/// Waits for the child's exit while probing it; reports both.
pub async fn supervise(
    mut child: tokio::process::Child,
    process_id: Arc<str>,
    epoch: u64,
    target: ProbeTarget,
    client: reqwest::Client,
    tx: mpsc::UnboundedSender<ProcEvent>,
) {
    let probes = probe_loop(client, target, process_id.clone(), epoch, tx.clone());
    tokio::select! {
        status = child.wait() => {
            let _ = tx.send(ProcEvent::Exited { process_id, epoch, status });
        }
        () = probes => {}
    }
}
