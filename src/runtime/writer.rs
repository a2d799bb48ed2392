//! A writer thread for a state file whose latest content is all that
//! matters (the process table): [`LatestWriter::submit`] never waits; the
//! thread writes the newest value submitted, skipping those overtaken while
//! it wrote (latest wins), and writes a failed value again every `retry`
//! until it succeeds or a newer one comes.
//!
//! It reports the outcome only when it changes (a first failure, another
//! failure, a recovery), so that the caller can show a problem without
//! hearing of every write. [`LatestWriter::flush`] waits until everything
//! submitted so far has been tried once.
//!
//! It knows nothing of what it writes: the caller passes the write.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

/// How long a failed write waits before it is tried again (when nothing
/// newer was submitted meanwhile).
pub const RETRY: Duration = Duration::from_secs(1);

struct Pending<T> {
    /// The newest value not yet taken by the thread, and its number.
    value: Option<(T, u64)>,
    /// Numbers handed out so far.
    submitted: u64,
    /// No more values come: the thread ends once it has written the last.
    closed: bool,
}

struct Shared<T> {
    pending: Mutex<Pending<T>>,
    wake: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Pending<T>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer; dropping it lets the thread write what is pending and end.
pub struct LatestWriter<T> {
    shared: Arc<Shared<T>>,
    /// The number of the last value tried.
    tried: watch::Receiver<u64>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> LatestWriter<T> {
    /// Starts a thread called `name` that writes with `write` and calls
    /// `report` with the outcome whenever it changes (`Some` error, or
    /// `None` once writes work again). The first outcome reported is a
    /// failure: writes are taken to work until one fails.
    ///
    /// # Errors
    ///
    /// The thread cannot be started.
    pub fn start<E, W, R>(
        name: &str,
        retry: Duration,
        mut write: W,
        mut report: R,
    ) -> std::io::Result<LatestWriter<T>>
    where
        E: Display,
        W: FnMut(&T) -> Result<(), E> + Send + 'static,
        R: FnMut(Option<E>) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                value: None,
                submitted: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let (tried_tx, tried) = watch::channel(0);
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                // The last failure reported (its text), and the value that
                // failed, kept to be tried again.
                let mut failing: Option<String> = None;
                let mut retry_value: Option<(T, u64)> = None;
                loop {
                    let Some((value, n)) = next(&inner, &mut retry_value, retry) else {
                        return;
                    };
                    let outcome = write(&value);
                    tried_tx.send_replace(n);
                    match outcome {
                        Ok(()) => {
                            if failing.take().is_some() {
                                report(None);
                            }
                        }
                        Err(e) => {
                            let text = e.to_string();
                            if failing.as_deref() != Some(text.as_str()) {
                                failing = Some(text);
                                report(Some(e));
                            }
                            retry_value = Some((value, n));
                        }
                    }
                }
            })?;
        Ok(LatestWriter {
            shared,
            tried,
            thread: Some(thread),
        })
    }

    /// Hands the thread a new value to write; one not yet taken is dropped.
    pub fn submit(&self, value: T) {
        let mut p = self.shared.lock();
        p.submitted += 1;
        let n = p.submitted;
        p.value = Some((value, n));
        drop(p);
        self.shared.wake.notify_one();
    }

    /// Completes once every value submitted before this call was tried (or
    /// overtaken by a newer one that was).
    pub fn flush(&self) -> impl Future<Output = ()> + Send + 'static {
        let target = self.shared.lock().submitted;
        let mut tried = self.tried.clone();
        async move {
            // An error means the thread is gone: nothing is left to wait for.
            let _ = tried.wait_for(|n| *n >= target).await;
        }
    }
}

/// The next value to write: the newest submitted, else (after `retry`
/// without one) the one that failed; `None` once closed with nothing left.
fn next<T>(shared: &Shared<T>, failed: &mut Option<(T, u64)>, retry: Duration) -> Option<(T, u64)> {
    let mut p = shared.lock();
    loop {
        if let Some(v) = p.value.take() {
            *failed = None;
            return Some(v);
        }
        if p.closed {
            return None;
        }
        if failed.is_some() {
            let (guard, waited) = shared
                .wake
                .wait_timeout(p, retry)
                .unwrap_or_else(PoisonError::into_inner);
            p = guard;
            if waited.timed_out() && p.value.is_none() && !p.closed {
                return failed.take();
            }
        } else {
            p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl<T> Drop for LatestWriter<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        // Not joined: a write may take long, and nobody waits for it here
        // (callers that must know it is written flush first).
        drop(self.thread.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Generous: the thread answers in microseconds, CI machines are slow.
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A write that announces each value on `started` and then waits for a
    /// go (`Ok` or `Err`) on `go`.
    struct Gate {
        started: mpsc::Receiver<u32>,
        go: mpsc::Sender<Result<(), String>>,
    }

    fn gated(retry: Duration) -> (LatestWriter<u32>, Gate, mpsc::Receiver<Option<String>>) {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<Result<(), String>>();
        let (reports_tx, reports) = mpsc::channel();
        let w = LatestWriter::start(
            "test-writer",
            retry,
            move |v: &u32| {
                started_tx.send(*v).expect("the test listens");
                go_rx.recv_timeout(PATIENCE).expect("the test says go")
            },
            move |e: Option<String>| {
                let _ = reports_tx.send(e);
            },
        )
        .expect("thread");
        (w, Gate { started, go }, reports)
    }

    impl Gate {
        fn write(&self, outcome: Result<(), String>) -> u32 {
            let v = self.started.recv_timeout(PATIENCE).expect("a write began");
            self.go.send(outcome).expect("the writer waits");
            v
        }
    }

    #[tokio::test]
    async fn values_submitted_during_a_write_coalesce_into_the_latest() {
        let (w, gate, _reports) = gated(RETRY);
        w.submit(1);
        let first = gate.started.recv_timeout(PATIENCE).expect("first write");
        assert_eq!(first, 1);
        // While 1 is being written, three more come: only the last counts.
        w.submit(2);
        w.submit(3);
        w.submit(4);
        let flushed = w.flush();
        gate.go.send(Ok(())).expect("go");
        assert_eq!(gate.write(Ok(())), 4);
        tokio::time::timeout(PATIENCE, flushed)
            .await
            .expect("flush completes once 4 is written");
        assert!(
            gate.started.try_recv().is_err(),
            "2 and 3 were never written"
        );
    }

    #[tokio::test]
    async fn a_failure_is_reported_once_retried_and_its_recovery_reported() {
        let (w, gate, reports) = gated(Duration::from_millis(5));
        w.submit(7);
        assert_eq!(gate.write(Err("disk full".into())), 7);
        assert_eq!(
            reports.recv_timeout(PATIENCE).expect("reported"),
            Some("disk full".into())
        );
        // Retried on its own, the same failure is not reported again.
        assert_eq!(gate.write(Err("disk full".into())), 7);
        assert_eq!(gate.write(Err("read-only".into())), 7);
        assert_eq!(
            reports.recv_timeout(PATIENCE).expect("reported"),
            Some("read-only".into())
        );
        assert_eq!(gate.write(Ok(())), 7);
        assert_eq!(reports.recv_timeout(PATIENCE).expect("recovered"), None);
        tokio::time::timeout(PATIENCE, w.flush())
            .await
            .expect("flushed");
        assert!(reports.try_recv().is_err(), "one report per change");
    }

    #[tokio::test]
    async fn a_newer_value_replaces_the_one_that_failed() {
        let (w, gate, _reports) = gated(PATIENCE);
        w.submit(1);
        assert_eq!(gate.write(Err("no space".into())), 1);
        // The retry is far off: the newer value goes first, and the failed
        // one is never written again.
        w.submit(2);
        assert_eq!(gate.write(Ok(())), 2);
        tokio::time::timeout(PATIENCE, w.flush())
            .await
            .expect("flushed");
        drop(w);
        // The thread ends (dropping its end of the channel) without writing.
        assert!(
            matches!(
                gate.started.recv_timeout(PATIENCE),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "nothing more is written"
        );
    }
}
