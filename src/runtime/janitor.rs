//! The cgroup janitor: one thread that kills what runs in instance cgroups
//! and removes them, with the waits that takes (cgroup v1's freezer, `rmdir`
//! retried while the kernel still says EBUSY), so that the reconcile loop
//! never waits on them.
//!
//! Work is done in the order it was queued, and each piece done is
//! reported on the runtime's event channel ([`ProcEvent::CgroupDone`]): the
//! controller starts nothing in a cgroup that still has work queued, so a
//! late removal never meets a fresh process. It decides nothing about what
//! to kill or remove.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

use super::cgroup::Cgroups;
use super::supervise::ProcEvent;

/// What the janitor does to an instance's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupWork {
    /// SIGKILL everything in it.
    Kill,
    /// Remove it (killing what is left in it first).
    Remove,
}

enum Job {
    Work(Arc<str>, CgroupWork),
    Flush(oneshot::Sender<()>),
}

/// The janitor thread's queue; dropping it ends the thread once the work
/// queued is done.
pub struct Janitor {
    /// `None` when the thread could not be started: work is done at once.
    queue: Option<std_mpsc::Sender<Job>>,
    cgroups: Cgroups,
    events: mpsc::UnboundedSender<ProcEvent>,
}

impl Janitor {
    /// Starts the thread, working on `cgroups` and reporting on `events`.
    pub fn start(cgroups: Cgroups, events: mpsc::UnboundedSender<ProcEvent>) -> Janitor {
        let (tx, rx) = std_mpsc::channel::<Job>();
        let (c, ev) = (cgroups.clone(), events.clone());
        let spawned = std::thread::Builder::new()
            .name("cgroup-janitor".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Work(id, work) => {
                            run(&c, &id, work);
                            let _ = ev.send(ProcEvent::CgroupDone { process_id: id });
                        }
                        Job::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            });
        let queue = match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(
                    "cannot start the cgroup janitor thread ({e}): cgroups are killed and removed on the reconcile loop"
                );
                None
            }
        };
        Janitor {
            queue,
            cgroups,
            events,
        }
    }

    /// Queues `work` on `process_id`'s cgroup.
    pub fn queue(&self, process_id: &str, work: CgroupWork) {
        let id: Arc<str> = Arc::from(process_id);
        let unsent = match &self.queue {
            Some(q) => q.send(Job::Work(id, work)).err().map(|e| e.0),
            None => Some(Job::Work(id, work)),
        };
        // The thread is gone: do it here rather than never.
        if let Some(Job::Work(id, work)) = unsent {
            run(&self.cgroups, &id, work);
            let _ = self.events.send(ProcEvent::CgroupDone { process_id: id });
        }
    }

    /// Completes once the work queued before this call is done.
    pub fn flush(&self) -> impl Future<Output = ()> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        if let Some(q) = &self.queue {
            let _ = q.send(Job::Flush(tx));
        }
        async move {
            // An error means the thread is gone, or never was.
            let _ = rx.await;
        }
    }
}

fn run(cgroups: &Cgroups, id: &str, work: CgroupWork) {
    match work {
        CgroupWork::Kill => {
            if let Err(e) = cgroups.kill_all(id) {
                tracing::error!("{id}: cgroup kill failed: {e}");
            }
        }
        CgroupWork::Remove => match cgroups.remove(id) {
            Ok(()) => tracing::debug!("{id}: cgroup removed"),
            Err(e) => tracing::warn!("{id}: cannot remove its cgroup: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PATIENCE: Duration = Duration::from_secs(30);

    async fn done(events: &mut mpsc::UnboundedReceiver<ProcEvent>) -> String {
        match tokio::time::timeout(PATIENCE, events.recv()).await {
            Ok(Some(ProcEvent::CgroupDone { process_id })) => process_id.to_string(),
            other => panic!("expected CgroupDone, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn work_is_done_in_order_each_reported_and_flush_waits_for_it() {
        let t = tempfile::tempdir().expect("temp dir");
        let cgroups = Cgroups::v2_at(t.path().to_path_buf());
        for id in ["ns:a:p", "ns:b:p"] {
            std::fs::create_dir(t.path().join(id)).expect("instance cgroup");
        }
        let (tx, mut events) = mpsc::unbounded_channel();
        let j = Janitor::start(cgroups, tx);
        j.queue("ns:a:p", CgroupWork::Remove);
        j.queue("ns:b:p", CgroupWork::Remove);
        tokio::time::timeout(PATIENCE, j.flush())
            .await
            .expect("flushed");
        assert!(!t.path().join("ns:a:p").exists());
        assert!(!t.path().join("ns:b:p").exists());
        assert_eq!(done(&mut events).await, "ns:a:p");
        assert_eq!(done(&mut events).await, "ns:b:p");
        // Removing what is gone already is done (and reported) too.
        j.queue("ns:a:p", CgroupWork::Remove);
        assert_eq!(done(&mut events).await, "ns:a:p");
    }
}
