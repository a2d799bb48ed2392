//! Running under a service manager: systemd's notification protocol
//! (`sd_notify`, through the `sd-notify` crate). Nothing happens unless
//! `NOTIFY_SOCKET` is set.
//!
//! - `READY=1` once the first full sync is done (the first snapshot that
//!   says `synced`), with a `STATUS=` line of counts;
//! - `STATUS=` again when the counts change (at most once a second);
//! - `WATCHDOG=1` when `WATCHDOG_USEC` is set, from the reconcile loop
//!   itself ([`Notifier::watchdog`], at most every half interval), so a
//!   stalled loop stops the pings and the service manager restarts it;
//! - `STOPPING=1` when shutdown begins.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::controller::snapshot::Snapshot;
use crate::reconcile::Phase;

/// Least time between two `STATUS=` updates.
const STATUS_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Inner {
    /// Half of `WATCHDOG_USEC`, when the service manager wants pings.
    ping_every: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
    /// A failed send was logged (once).
    warned: AtomicBool,
}

/// Notifications to the service manager; clones share their state. The
/// default one (no `NOTIFY_SOCKET`) does nothing.
#[derive(Debug, Clone, Default)]
pub struct Notifier(Option<Arc<Inner>>);

impl Notifier {
    /// From the environment the service manager set: `NOTIFY_SOCKET`, and
    /// `WATCHDOG_USEC` (with `WATCHDOG_PID`, when set, naming this
    /// process).
    pub fn from_env() -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier(None);
        }
        let ping_every = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2);
        if let Some(every) = ping_every {
            tracing::info!("service manager watchdog: pinging every {every:?}");
        }
        Notifier(Some(Arc::new(Inner {
            ping_every,
            last_ping: Mutex::new(None),
            warned: AtomicBool::new(false),
        })))
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.0.is_some()
    }

    fn send(&self, states: &[NotifyState]) {
        let Some(inner) = &self.0 else {
            return;
        };
        if let Err(e) = sd_notify::notify(states)
            && !inner.warned.swap(true, Ordering::Relaxed)
        {
            tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A new status line.
    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// `WATCHDOG=1` if half the watchdog interval passed since the last
    /// one. Called by the reconcile loop on every pass (at least once a
    /// second), never by a timer of its own.
    pub fn watchdog(&self) {
        if self.0.as_ref().is_some_and(|i| i.ping_due(Instant::now())) {
            self.send(&[NotifyState::Watchdog]);
        }
    }
}

impl Inner {
    /// Whether a ping is due at `now`; if so, records it as sent.
    fn ping_due(&self, now: Instant) -> bool {
        let Some(every) = self.ping_every else {
            return false;
        };
        let mut last = self
            .last_ping
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.saturating_duration_since(t) < every) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// The `STATUS=` line of a snapshot: "12 instances, 11 running, 0 failed".
pub fn status_text(snap: &Snapshot) -> String {
    let by = |p: Phase| snap.instances.values().filter(|s| s.phase == p).count();
    let total = snap.instances.len();
    let mut text = format!(
        "{total} instance{}, {} running, {} failed",
        if total == 1 { "" } else { "s" },
        by(Phase::Running),
        by(Phase::Failed)
    );
    if !snap.problems.is_empty() {
        text.push_str(&format!("; problems: {} (see Health)", snap.problems.len()));
    }
    text
}

/// Sends `READY=1` at the first synced snapshot, then `STATUS=` when the
/// counts change; `None` when no service manager listens.
pub fn spawn_status(
    notifier: Notifier,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
) -> Option<JoinHandle<()>> {
    if !notifier.enabled() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut shown: Option<String> = None;
        loop {
            let snap = snapshots.borrow_and_update().clone();
            if snap.synced {
                let text = status_text(&snap);
                match &shown {
                    None => notifier.ready(&text),
                    Some(old) if *old != text => notifier.status(&text),
                    Some(_) => {}
                }
                shown = Some(text);
            }
            if snapshots.changed().await.is_err() {
                return;
            }
            if shown.is_some() {
                tokio::time::sleep(STATUS_EVERY).await;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_instances_running_and_failed() {
        let snap = Snapshot::default();
        assert_eq!(status_text(&snap), "0 instances, 0 running, 0 failed");
        let snap = Snapshot {
            problems: Arc::new(vec!["cannot write the state directory".into()]),
            ..Snapshot::default()
        };
        assert_eq!(
            status_text(&snap),
            "0 instances, 0 running, 0 failed; problems: 1 (see Health)"
        );
    }

    #[test]
    fn a_notifier_without_a_socket_does_nothing() {
        let n = Notifier::default();
        assert!(!n.enabled());
        n.ready("x");
        n.watchdog();
        n.stopping();
    }

    #[test]
    fn watchdog_pings_are_due_at_most_every_half_interval() {
        let inner = Inner {
            ping_every: Some(Duration::from_secs(5)),
            last_ping: Mutex::new(None),
            warned: AtomicBool::new(false),
        };
        let t0 = Instant::now();
        assert!(inner.ping_due(t0), "the first pass pings");
        assert!(!inner.ping_due(t0 + Duration::from_secs(1)));
        assert!(!inner.ping_due(t0 + Duration::from_millis(4999)));
        assert!(inner.ping_due(t0 + Duration::from_secs(5)));
        assert!(!inner.ping_due(t0 + Duration::from_secs(6)));
        let off = Inner {
            ping_every: None,
            last_ping: Mutex::new(None),
            warned: AtomicBool::new(false),
        };
        assert!(!off.ping_due(t0), "no WATCHDOG_USEC, no pings");
    }
}
