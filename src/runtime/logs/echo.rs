//! The echo thread: copies the lines instances append to their log files
//! into the launcher's log as `[<process_id>] <line>`.
//!
//! Bounded whatever a pattern writes: lines are cut at [`MAX_LINE`] bytes,
//! at most [`ECHO_RATE`] bytes of a file are read a second, a file further
//! behind than that is skipped ahead, and output lost to a rotation before
//! it was read is counted; what was not echoed is reported, at most once a
//! second per file.
//!
//! It also hands the lines it reads to the followers of each file
//! ([`super::follow`]); a follower's subscription outlives the file's
//! following (the instance removed, or not started yet) until it is
//! detached.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime};

use super::follow::Subscription;
use super::lines::{self, LineCutter};
use super::rotation::Generations;
use super::{BACKSTOP, Changed, Descriptor, Msg};

/// Longest line echoed; the rest of a longer line is dropped.
pub const MAX_LINE: usize = 16 << 10;

/// Most bytes of one file echoed a second; a file further behind than
/// this is skipped ahead.
pub const ECHO_RATE: u64 = 1 << 20;

/// Most bytes read from one file at a time.
const CHUNK: usize = 64 << 10;

/// The period of [`ECHO_RATE`].
const SECOND: Duration = Duration::from_secs(1);

/// How long to wait for a rotation under way to finish.
const ROTATING: Duration = Duration::from_millis(2);

/// Runs the echo until every sender of `rx` is gone.
pub(super) fn follow(rx: &mpsc::Receiver<Msg>, changed: &Changed) {
    let mut files: HashMap<PathBuf, Followed> = HashMap::new();
    // Subscriptions of files not followed (yet, or any more).
    let mut waiting: HashMap<PathBuf, Vec<Subscription>> = HashMap::new();
    let mut buf = vec![0u8; CHUNK];
    let mut backstop = BACKSTOP;
    let mut next_sweep = Instant::now() + backstop;
    loop {
        let next = files
            .values()
            .filter_map(|f| f.due)
            .fold(next_sweep, Instant::min);
        let msg = rx.recv_timeout(next.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        match msg {
            Ok(Msg::Sweep) => next_sweep = now,
            Ok(Msg::Backstop(every)) => {
                backstop = every;
                next_sweep = now + every;
            }
            Ok(Msg::Track(p, id, generations, from)) => {
                // From where the process began writing; a file shorter
                // than that was truncated meanwhile: from its start.
                let len = std::fs::metadata(&p).map_or(0, |m| m.len());
                let offset = if from <= len { from } else { 0 };
                let subs = waiting.remove(&p).unwrap_or_default();
                files
                    .entry(p)
                    .or_insert_with(|| Followed::new(id, offset, generations))
                    .subs
                    .extend(subs);
            }
            Ok(Msg::Untrack(p)) => {
                if let Some(mut f) = files.remove(&p) {
                    f.finish(&p, &mut buf, now);
                    f.subs.retain(|s| !s.closed());
                    if !f.subs.is_empty() {
                        waiting.entry(p).or_default().append(&mut f.subs);
                    }
                }
            }
            Ok(Msg::Subscribe(p, sub, ack)) => {
                match files.get_mut(&p) {
                    Some(f) => f.subs.push(sub),
                    None => waiting.entry(p).or_default().push(sub),
                }
                let _ = ack.send(());
            }
            Ok(Msg::Detach(p, id)) => {
                if let Some(f) = files.get_mut(&p) {
                    f.subs.retain(|s| s.id != id);
                }
                if let Some(w) = waiting.get_mut(&p) {
                    w.retain(|s| s.id != id);
                    if w.is_empty() {
                        waiting.remove(&p);
                    }
                }
            }
            Ok(Msg::Wake) => {
                for p in changed.take() {
                    // Out of budget: it waits for its next second,
                    // however often it is written.
                    if let Some(f) = files.get_mut(&p).filter(|f| !f.throttled) {
                        f.service(&p, &mut buf, now, false);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // The backstop for lost events (a stat per file), and the files
        // with output left to echo or a report to make.
        let sweep = now >= next_sweep;
        if sweep {
            next_sweep = now + backstop;
            waiting.retain(|_, subs| {
                subs.retain(|s| !s.closed());
                !subs.is_empty()
            });
        }
        for (p, f) in &mut files {
            if sweep || f.due.is_some_and(|d| d <= now) {
                f.service(p, &mut buf, now, false);
            }
        }
    }
}

/// A followed file.
struct Followed {
    process_id: Arc<str>,
    generations: Arc<Generations>,
    file: Descriptor,
    /// The generation `offset` is in (see [`Generations::start`]).
    start: u64,
    /// How far the echo has read.
    offset: u64,
    lines: LineCutter,
    /// Start of the current second of [`ECHO_RATE`].
    window: Instant,
    /// Bytes read in the current second.
    read: u64,
    /// Bytes not echoed and not yet reported.
    skipped: u64,
    /// When to come back without being woken.
    due: Option<Instant>,
    /// Out of budget until `due`.
    throttled: bool,
    /// Its followers.
    subs: Vec<Subscription>,
}

impl Followed {
    fn new(process_id: Arc<str>, offset: u64, generations: Arc<Generations>) -> Followed {
        Followed {
            process_id,
            start: generations.start(),
            generations,
            file: Descriptor::default(),
            offset,
            lines: LineCutter::new(MAX_LINE),
            window: Instant::now(),
            read: 0,
            skipped: 0,
            due: None,
            throttled: false,
            subs: Vec::new(),
        }
    }

    /// `n` bytes of output are not echoed.
    fn skip(&mut self, n: u64) {
        skip(&mut self.skipped, &mut self.subs, n);
    }

    /// Echoes the next part of what was appended, within the rate; `drain`
    /// lifts the rate.
    fn service(&mut self, path: &Path, buf: &mut [u8], now: Instant, drain: bool) {
        if now >= self.window + SECOND {
            self.window = now;
            self.read = 0;
            self.report();
        }
        let Some(seen) = self.generations.stable() else {
            self.due = Some(now + ROTATING);
            return;
        };
        self.follow_rotation(seen.start);
        let Some(file) = self.file.get(path, false) else {
            self.due = None;
            return;
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            // Truncated by someone else: start over.
            self.offset = 0;
            self.lines.restart();
        }
        if len - self.offset > ECHO_RATE {
            // Too far behind: go on with the latest output, from wherever
            // that starts (the first line may be the end of a longer one).
            let to = len - ECHO_RATE;
            let n = to - self.offset + self.lines.restart() as u64;
            skip(&mut self.skipped, &mut self.subs, n);
            self.offset = to;
        }
        let budget = if drain {
            CHUNK as u64
        } else {
            ECHO_RATE.saturating_sub(self.read).min(CHUNK as u64)
        };
        let want = budget.min(len - self.offset) as usize;
        let mut n = read_at(file, self.offset, &mut buf[..want]);
        if !self.generations.unchanged(seen) {
            // Rotated while reading: the bytes may be of either generation.
            n = 0;
        }
        let base = self.start + self.offset;
        self.offset += n as u64;
        self.read += n as u64;
        let (id, subs) = (&self.process_id, &mut self.subs);
        let (epoch, time) = (self.generations.epoch(), SystemTime::now());
        self.lines.feed_at(&buf[..n], |line, cut, at| {
            emit(id, line, cut);
            if !subs.is_empty() {
                let text: Arc<str> = Arc::from(lines::text(line, cut, MAX_LINE));
                for s in subs.iter_mut() {
                    s.offer(epoch, base + at as u64, &text, time);
                }
            }
        });
        let pos = self.start + self.offset;
        self.subs.retain_mut(|s| {
            s.flush(epoch, pos, time);
            !s.closed()
        });
        let left = file
            .metadata()
            .map_or(0, |m| m.len())
            .saturating_sub(self.offset);
        let rotated = !self.generations.unchanged(seen);
        self.throttled = false;
        self.due = if left == 0 && !rotated {
            self.lines.shrink();
            (self.skipped > 0).then_some(self.window + SECOND)
        } else if rotated || (n > 0 && (drain || self.read < ECHO_RATE)) {
            Some(now)
        } else {
            // Out of budget (or unreadable): next second.
            self.throttled = true;
            Some(self.window + SECOND)
        };
    }

    /// Moves to the generation starting at `start` if the file was rotated:
    /// what was not read of the earlier ones is counted as skipped.
    fn follow_rotation(&mut self, start: u64) {
        if start == self.start {
            return;
        }
        let missed = start.saturating_sub(self.start + self.offset);
        if missed > 0 {
            let n = missed + self.lines.restart() as u64;
            self.skip(n);
        }
        self.start = start;
        self.offset = 0;
    }

    /// The last service of a file no longer followed: echoes what is left
    /// (at most [`ECHO_RATE`] bytes) and reports what was not.
    fn finish(&mut self, path: &Path, buf: &mut [u8], now: Instant) {
        for _ in 0..=ECHO_RATE as usize / CHUNK {
            self.service(path, buf, now, true);
            if self.due.is_none_or(|d| d > now) {
                break;
            }
        }
        self.report();
    }

    fn report(&mut self) {
        if self.skipped > 0 {
            tracing::warn!(
                "{}: {} bytes of output not echoed (at most {ECHO_RATE} bytes a second are)",
                self.process_id,
                self.skipped
            );
            self.skipped = 0;
        }
    }
}

/// `n` bytes of output are not echoed (nor handed to the followers).
fn skip(skipped: &mut u64, subs: &mut [Subscription], n: u64) {
    *skipped += n;
    for s in subs {
        s.skipped(n);
    }
}

/// One line of an instance's output into the launcher's log.
fn emit(process_id: &str, line: &[u8], cut: bool) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    if cut {
        tracing::info!(target: "instance", "[{process_id}] {line} [line cut at {MAX_LINE} bytes]");
    } else {
        tracing::info!(target: "instance", "[{process_id}] {line}");
    }
}

/// Reads from `offset` until `buf` is full or the file ends; returns the
/// bytes read (fewer on an error).
fn read_at(file: &File, offset: u64, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}
