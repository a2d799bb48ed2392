//! Followers of instance logs (GetLogs with `follow`): the lines the echo
//! thread reads, handed to every follower of the file as it reads them.
//!
//! The file is read once whatever the number of followers; each follower
//! costs the echo one `try_send` per line. Bounded per follower: at most
//! [`FOLLOW_LINES`] lines and [`FOLLOW_BYTES`] bytes wait for it; what
//! does not fit is not sent, and the next line that fits is preceded by
//! a marker line saying how much was skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

/// Most lines waiting for one follower.
pub const FOLLOW_LINES: usize = 1024;

/// Most bytes of lines waiting for one follower.
pub const FOLLOW_BYTES: usize = 256 << 10;

/// What a waiting line costs besides its text.
const LINE_COST: usize = 64;

/// What a marker may cost, reserved before it is written.
const MARKER_COST: usize = 256 + LINE_COST;

/// How the launcher's own lines in a log stream begin.
pub const MARKER: &str = "[prism-launcher: ";

/// One line read from an instance's log.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// The instance.
    pub process_id: Arc<str>,
    /// Which following of the file it was read by (see
    /// [`super::Generations::epoch`]): positions are comparable within one.
    pub epoch: u64,
    /// Where the line ends in the file's output since it was first
    /// followed: past its newline (or where it was cut).
    pub pos: u64,
    /// The line (see [`super::lines::text`]), or a marker.
    pub line: Arc<str>,
    /// When the launcher read it.
    pub time: SystemTime,
}

impl LogEvent {
    fn cost(&self) -> usize {
        self.line.len() + LINE_COST
    }
}

/// The receiving end of one stream's subscriptions.
pub struct Follower {
    rx: mpsc::Receiver<LogEvent>,
    tx: Option<mpsc::Sender<LogEvent>>,
    queued: Arc<AtomicUsize>,
}

impl Default for Follower {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(FOLLOW_LINES);
        Follower {
            rx,
            tx: Some(tx),
            queued: Arc::default(),
        }
    }
}

impl Follower {
    /// A new subscription of `process_id`'s log feeding this follower.
    /// None once [`Follower::seal`]ed.
    pub(super) fn subscription(&self, process_id: Arc<str>) -> Option<Subscription> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Some(Subscription {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            process_id,
            tx: self.tx.clone()?,
            queued: self.queued.clone(),
            lost_lines: 0,
            lost_bytes: 0,
        })
    }

    /// No more subscriptions: [`Follower::recv`] ends once every one made
    /// is dropped.
    pub fn seal(&mut self) {
        self.tx = None;
    }

    /// The next line; None once sealed and every subscription is dropped.
    pub async fn recv(&mut self) -> Option<LogEvent> {
        let ev = self.rx.recv().await?;
        self.queued.fetch_sub(ev.cost(), Ordering::Relaxed);
        Some(ev)
    }
}

/// One follower's subscription of one file, held by the echo thread.
pub struct Subscription {
    /// Its identity, to detach it.
    pub id: u64,
    process_id: Arc<str>,
    tx: mpsc::Sender<LogEvent>,
    queued: Arc<AtomicUsize>,
    /// Lines not sent (the follower was full) and not reported yet.
    lost_lines: u64,
    /// Bytes of output the echo skipped and not reported yet.
    lost_bytes: u64,
}

impl Subscription {
    /// The follower is gone.
    pub fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The echo skipped `n` bytes of output.
    pub fn skipped(&mut self, n: u64) {
        self.lost_bytes += n;
    }

    /// Hands over a line ending at `pos`, after the marker of what was
    /// skipped before it if any; counts it as skipped if they do not both
    /// fit.
    pub fn offer(&mut self, epoch: u64, pos: u64, line: &Arc<str>, time: SystemTime) {
        let pending = self.lost_lines > 0 || self.lost_bytes > 0;
        let cost = line.len() + LINE_COST + if pending { MARKER_COST } else { 0 };
        if !self.take_bytes(cost) {
            self.lost_lines += 1;
            return;
        }
        let Ok(mut permits) = self.tx.try_reserve_many(if pending { 2 } else { 1 }) else {
            self.give_bytes(cost);
            self.lost_lines += 1;
            return;
        };
        let mut send = |ev: LogEvent, reserved: usize| {
            // What it really costs is given back when it is received.
            self.queued.fetch_add(ev.cost(), Ordering::Relaxed);
            self.queued.fetch_sub(reserved, Ordering::Relaxed);
            if let Some(p) = permits.next() {
                p.send(ev);
            }
        };
        if pending {
            send(self.marker(epoch, pos, time), MARKER_COST);
            (self.lost_lines, self.lost_bytes) = (0, 0);
        }
        send(
            self.event(epoch, pos, line.clone(), time),
            line.len() + LINE_COST,
        );
    }

    /// Sends the marker of what was skipped, if anything was and the
    /// follower has read at least half of what waits for it.
    pub fn flush(&mut self, epoch: u64, pos: u64, time: SystemTime) {
        let pending = self.lost_lines > 0 || self.lost_bytes > 0;
        if !pending
            || self.tx.capacity() < FOLLOW_LINES / 2
            || self.queued.load(Ordering::Relaxed) > FOLLOW_BYTES / 2
            || !self.take_bytes(MARKER_COST)
        {
            return;
        }
        let ev = self.marker(epoch, pos, time);
        let cost = ev.cost();
        self.queued.fetch_add(cost, Ordering::Relaxed);
        self.give_bytes(MARKER_COST);
        if self.tx.try_send(ev).is_ok() {
            (self.lost_lines, self.lost_bytes) = (0, 0);
        } else {
            self.give_bytes(cost);
        }
    }

    /// The marker of what was skipped.
    fn marker(&self, epoch: u64, pos: u64, time: SystemTime) -> LogEvent {
        let mut what = Vec::new();
        if self.lost_lines > 0 {
            what.push(format!(
                "{} lines not sent (this client reads too slowly)",
                self.lost_lines
            ));
        }
        if self.lost_bytes > 0 {
            what.push(format!(
                "{} bytes of output skipped (more than {} bytes a second, or rotated away before they were read)",
                self.lost_bytes,
                super::ECHO_RATE
            ));
        }
        let text: Arc<str> = Arc::from(format!("{MARKER}{}]", what.join("; ")));
        self.event(epoch, pos, text, time)
    }

    fn event(&self, epoch: u64, pos: u64, line: Arc<str>, time: SystemTime) -> LogEvent {
        LogEvent {
            process_id: self.process_id.clone(),
            epoch,
            pos,
            line,
            time,
        }
    }

    /// Counts `cost` bytes as waiting; false (nothing counted) if they
    /// would be more than [`FOLLOW_BYTES`].
    fn take_bytes(&self, cost: usize) -> bool {
        if self.queued.fetch_add(cost, Ordering::Relaxed) + cost > FOLLOW_BYTES {
            self.give_bytes(cost);
            return false;
        }
        true
    }

    fn give_bytes(&self, cost: usize) {
        self.queued.fetch_sub(cost, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[tokio::test]
    async fn a_follower_that_does_not_read_gets_a_marker_instead_of_the_lines() {
        let mut f = Follower::default();
        let mut s = f.subscription(Arc::from("ns:a:p")).unwrap();
        let now = SystemTime::now();
        let long = line(&"x".repeat(16 << 10));
        let fits = FOLLOW_BYTES / (long.len() + LINE_COST);
        for i in 0..fits + 10 {
            s.offer(1, i as u64, &long, now);
        }
        s.skipped(300);
        // Nothing more fits until the follower reads, not even a marker.
        s.offer(1, 999, &long, now);
        s.flush(1, 999, now);
        for _ in 0..fits {
            assert_eq!(f.recv().await.unwrap().line.len(), 16 << 10);
        }
        assert!(f.rx.try_recv().is_err());
        s.offer(1, 1000, &line("after"), now);
        let marker = f.recv().await.unwrap();
        assert!(marker.line.starts_with(MARKER), "{}", marker.line);
        assert!(
            marker.line.contains("11 lines not sent")
                && marker.line.contains("300 bytes of output skipped"),
            "{}",
            marker.line
        );
        let next = f.recv().await.unwrap();
        assert_eq!((&*next.line, next.pos), ("after", 1000));
        assert_eq!(f.queued.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_sealed_follower_ends_when_its_subscriptions_are_dropped() {
        let mut f = Follower::default();
        let mut s = f.subscription(Arc::from("ns:a:p")).unwrap();
        f.seal();
        assert!(f.subscription(Arc::from("ns:b:p")).is_none());
        s.offer(1, 1, &line("last"), SystemTime::now());
        drop(s);
        assert_eq!(&*f.recv().await.unwrap().line, "last");
        assert!(f.recv().await.is_none());
    }
}
