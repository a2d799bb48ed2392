//! The desired-directory watcher: [`watch_desired`] reports each
//! desired-state file whose content changed, parsed by [`super::parse`].
//!
//! One thread of its own (so reading and parsing never block the async
//! runtime; only the receiver is tokio's), woken by inotify (through
//! `notify`) for speed and backed by a periodic full rescan that repairs
//! whatever a lost event, an inotify overflow or a watch that could not be
//! created missed. It stops soon after its receiver is dropped.
//!
//! It only reads: it never writes, creates or locks a file (its ordering
//! barrier is a read-only open of the directory it watches), and it never
//! decides what a file means for the desired set; that is the controller's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fs::File;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::FileEvent;
use super::parse::{is_candidate, parse_desired};
use super::read::{Contents, FileId, modified_within, read_file};
use crate::sources::fsnotify::{DirWatch, Inotify, LIVENESS, MIN_RESCAN, QUIET, Raw, absolute};

/// The same as [`QUIET`], for a file some writer opened (created or wrote
/// to) and has not closed yet: a writer that pauses mid-file is given this
/// long.
pub const WRITER_QUIET: Duration = Duration::from_secs(1);

/// [`FileEvent::Synced`] comes at the latest this long after start, even
/// if a file that was there keeps being written and is not reported yet.
pub const SYNC_PATIENCE: Duration = Duration::from_secs(3);

/// Longest wait for the desired watcher's ordering barrier (normally
/// microseconds; only a stalled notify thread makes it this long).
const BARRIER_WAIT: Duration = Duration::from_secs(1);

/// Watches the desired-state directory `dir` (not recursively) and reports
/// every candidate file ([`is_candidate`]) once at start, then each change
/// of content and each removal. The last event for a name always reflects
/// what the directory holds once it is quiet. A file written in place is
/// read once its writer closes it (or after [`QUIET`] / [`WRITER_QUIET`]
/// without a close); a file renamed into place is read at once. A read
/// that a writer may have overlapped is dropped and made again, so a file
/// caught half-written is not reported; an empty file (which may be one a
/// writer has just truncated) is reported once it has stayed empty for
/// [`WRITER_QUIET`]. Read errors (permission, size, not
/// UTF-8, not a regular file) come as `Changed` with an error, like parse
/// errors. A file modified less than [`QUIET`] before start is reported a
/// little after the others. The directory need not exist: it is watched
/// from the rescan that finds it.
pub fn watch_desired(dir: PathBuf, rescan_every: Duration) -> UnboundedReceiver<FileEvent> {
    let (tx, rx) = unbounded_channel();
    let spawned = std::thread::Builder::new()
        .name("watch-desired".into())
        .spawn(move || DesiredWatcher::new(dir, tx).run(rescan_every.max(MIN_RESCAN)));
    if let Err(e) = spawned {
        tracing::error!("cannot start the desired-state watcher: {e}");
    }
    rx
}

/// What was last reported for a file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Text with this hash.
    Content(u64),
    /// A read error with this message.
    Failed(String),
}

#[derive(Debug)]
struct Known {
    seen: Seen,
    id: Option<FileId>,
}

fn hash_text(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Why a file is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Why {
    /// An event (or the end of its quiet period) says it changed: read it.
    Event,
    /// A rescan: read it only if its metadata changed since it was last
    /// read, and not while it may be being written.
    Rescan,
}

/// The desired-state watcher's state machine.
///
/// Each turn of [`DesiredWatcher::run`]:
/// 1. waits for an inotify event, the end of a quiet period, a rescan or
///    the liveness check, whichever comes first;
/// 2. absorbs every queued event ([`DesiredWatcher::absorb`]): a finished
///    write, a rename or a removal queues the file to be read now; a
///    creation or a write in progress (re)starts its quiet period;
/// 3. collects the files to read: those queued, those whose quiet period
///    ended, and on a rescan every candidate and every file known before;
/// 4. reads them, then waits for the ordering barrier
///    ([`DesiredWatcher::barrier`]) so that every event generated before
///    the reads has been absorbed, drops the reads of files those events
///    touched (a new writer may have caught them half-written; their own
///    events bring them back), and reports the rest whose content differs
///    from what was last reported.
struct DesiredWatcher {
    /// Absolute path of the directory (event paths are absolute).
    dir: PathBuf,
    /// The directory as the caller named it, for messages.
    shown: PathBuf,
    out: UnboundedSender<FileEvent>,
    /// What was last reported, by name.
    known: HashMap<String, Known>,
    /// Files to read at the next turn.
    now: HashSet<String>,
    /// Files waiting for their quiet period to end, with its end.
    pending: HashMap<String, Instant>,
    /// The same ends in time order; entries that `pending` no longer holds
    /// are stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Files some writer created or wrote to and has not closed yet.
    writing: HashSet<String>,
    /// Opens of files by the watcher's own reads whose events have not
    /// been seen yet, by name.
    own_opens: HashMap<String, u32>,
    /// A full rescan is wanted at the next turn.
    rescan: bool,
    /// How many times events were lost.
    lost: u64,
    /// Times the watcher opened the directory itself (listing it, or as
    /// the barrier), and open events seen on it (anyone's): see
    /// [`DesiredWatcher::barrier`].
    dir_opens: u64,
    dir_opens_seen: u64,
    /// Last failure to list the directory, to warn once.
    list_warned: Option<String>,
    /// The barrier timed out before (warned once).
    barrier_warned: bool,
}

impl DesiredWatcher {
    fn new(dir: PathBuf, out: UnboundedSender<FileEvent>) -> DesiredWatcher {
        DesiredWatcher {
            dir: absolute(&dir),
            shown: dir,
            out,
            known: HashMap::new(),
            now: HashSet::new(),
            pending: HashMap::new(),
            timers: BinaryHeap::new(),
            writing: HashSet::new(),
            own_opens: HashMap::new(),
            rescan: true,
            lost: 0,
            dir_opens: 0,
            dir_opens_seen: 0,
            list_warned: None,
            barrier_warned: false,
        }
    }

    /// The watcher's life: watch, scan once, then turn until the receiver
    /// is dropped.
    fn run(mut self, rescan_every: Duration) {
        let mut inotify = Inotify::new(&self.shown);
        let mut watch = DirWatch::new(self.dir.clone());
        watch.ensure(&mut inotify);
        let mut next_rescan = Instant::now();
        // The files of the first scan not reported yet (those modified just
        // before start wait for their quiet period); `None` once synced.
        let mut initial: Option<HashSet<String>> = None;
        let mut synced = false;
        let sync_by = Instant::now() + SYNC_PATIENCE;
        while !self.out.is_closed() {
            let wake = if self.now.is_empty() && !self.rescan {
                let mut wake = next_rescan.min(Instant::now() + LIVENESS);
                if let Some(t) = self.next_timer() {
                    wake = wake.min(t);
                }
                wake
            } else {
                Instant::now()
            };
            if let Some(raw) = inotify.recv_until(wake) {
                let mut touched = HashSet::new();
                self.absorb(raw, &mut touched);
                for raw in inotify.ready() {
                    self.absorb(raw, &mut touched);
                }
            }

            let mut todo: HashMap<String, Why> =
                self.now.drain().map(|n| (n, Why::Event)).collect();
            for name in self.take_due(Instant::now()) {
                todo.insert(name, Why::Event);
            }
            if self.rescan || Instant::now() >= next_rescan {
                self.rescan = false;
                watch.ensure(&mut inotify);
                let listed = self.rescan_list();
                if !synced && initial.is_none() {
                    initial = Some(listed.iter().cloned().collect());
                }
                for name in listed {
                    todo.entry(name).or_insert(Why::Rescan);
                }
                next_rescan = Instant::now() + rescan_every;
            }
            let watched = watch.id.is_some() && inotify.watcher.is_some();
            self.look(todo, &inotify, watched);
            if let Some(names) = &mut initial {
                names.retain(|n| self.now.contains(n) || self.pending.contains_key(n));
                if names.is_empty() || Instant::now() >= sync_by {
                    initial = None;
                    synced = true;
                    let _ = self.out.send(FileEvent::Synced);
                }
            }
        }
    }

    /// What one inotify event means; records in `touched` each file it
    /// concerns (beyond being opened or read).
    fn absorb(&mut self, raw: Raw, touched: &mut HashSet<String>) {
        let ev = match raw {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(
                    "file watcher error on {} ({e}); rescanning",
                    self.shown.display()
                );
                self.lose_events();
                return;
            }
        };
        if ev.need_rescan() {
            self.lose_events();
        }
        for path in &ev.paths {
            if path == &self.dir {
                match ev.kind {
                    EventKind::Access(AccessKind::Open(_)) => self.dir_opens_seen += 1,
                    EventKind::Access(_) => {}
                    // Deleted, moved: the rescan re-establishes the watch
                    // and reports what is gone.
                    _ => self.rescan = true,
                }
                continue;
            }
            if path.parent() != Some(self.dir.as_path()) {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !is_candidate(name) {
                continue;
            }
            match ev.kind {
                // Our own reads open files; those opens mean nothing.
                EventKind::Access(AccessKind::Open(_)) if self.own_open_seen(name) => continue,
                // Someone else opened the file, maybe to write it: a read
                // made from now on may catch it half-written, so wait for
                // the writer's events (or a quiet period, for a reader).
                EventKind::Access(AccessKind::Open(_)) => {
                    if self.now.remove(name) {
                        self.schedule(name, Instant::now() + QUIET);
                    }
                }
                // Reads change nothing; notify follows each rename's `To`
                // with a `Both` that repeats it.
                EventKind::Access(AccessKind::Read | AccessKind::Close(AccessMode::Read))
                | EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                    continue;
                }
                // The writer is done, the file was renamed into or out of
                // place, or removed: look now.
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_) => {
                    self.writing.remove(name);
                    self.pending.remove(name);
                    self.now.insert(name.to_string());
                }
                // A writer is at work: wait for its close.
                EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(name.to_string());
                    self.now.remove(name);
                    self.schedule(name, Instant::now() + WRITER_QUIET);
                }
                // Metadata, a directory, anything else: look when quiet.
                _ => {
                    let quiet = if self.writing.contains(name) {
                        WRITER_QUIET
                    } else {
                        QUIET
                    };
                    self.schedule(name, Instant::now() + quiet);
                }
            }
            touched.insert(name.to_string());
        }
    }

    /// Events were lost (an inotify queue overflow): rescan, and expect no
    /// more events of the watcher's own opens (they may be lost too).
    fn lose_events(&mut self) {
        self.lost += 1;
        self.rescan = true;
        self.own_opens.clear();
        self.dir_opens_seen = self.dir_opens_seen.max(self.dir_opens);
    }

    /// Counts off one open of `name` by the watcher itself; false when none
    /// is outstanding (someone else opened it).
    fn own_open_seen(&mut self, name: &str) -> bool {
        match self.own_opens.get_mut(name) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.own_opens.remove(name);
                true
            }
            None => false,
        }
    }

    fn schedule(&mut self, name: &str, at: Instant) {
        self.pending.insert(name.to_string(), at);
        self.timers.push(Reverse((at, name.to_string())));
    }

    /// The end of the earliest quiet period still pending.
    fn next_timer(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, name))) = self.timers.peek() {
            if self.pending.get(name) == Some(at) {
                return Some(*at);
            }
            self.timers.pop();
        }
        None
    }

    /// The files whose quiet period has ended.
    fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while let Some(at) = self.next_timer() {
            if at > now {
                break;
            }
            let Some(Reverse((_, name))) = self.timers.pop() else {
                break;
            };
            self.pending.remove(&name);
            // A writer silent this long is taken to be done.
            self.writing.remove(&name);
            due.push(name);
        }
        due
    }

    /// Every candidate in the directory and every file reported before,
    /// except those waiting for a quiet period.
    fn rescan_list(&mut self) -> Vec<String> {
        let mut names: HashSet<String> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => {
                self.dir_opens += 1;
                self.list_warned = None;
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| is_candidate(n))
                    .collect()
            }
            Err(e) => {
                let e = e.to_string();
                if self.list_warned.as_deref() != Some(e.as_str()) {
                    tracing::warn!("cannot list {}: {e}", self.shown.display());
                    self.list_warned = Some(e);
                }
                HashSet::new()
            }
        };
        names.extend(self.known.keys().cloned());
        names.retain(|n| !self.pending.contains_key(n));
        names.into_iter().collect()
    }

    /// Reads the files of `todo`, drops the reads that events arriving
    /// meanwhile make doubtful, and reports the rest that changed.
    /// `watched`: inotify watches the directory (else no event can come).
    fn look(&mut self, todo: HashMap<String, Why>, inotify: &Inotify, watched: bool) {
        let mut todo: Vec<(String, Why)> = todo.into_iter().collect();
        todo.sort();
        let mut reads = Vec::with_capacity(todo.len());
        for (name, why) in todo {
            if let Some(contents) = self.read(&name, why) {
                reads.push((name, contents));
            }
        }
        if reads.is_empty() {
            return;
        }
        let mut touched = HashSet::new();
        let trusted = !watched || self.barrier(inotify, &mut touched);
        // Every event of the watcher's own opens has come by now, or never
        // will (merged into another open, or lost).
        self.own_opens.clear();
        if !trusted {
            // Events were lost: none of the reads can be trusted, and the
            // rescan that follows reads everything again.
            return;
        }
        for (name, contents) in reads {
            if !touched.contains(&name) && self.settled(&name, &contents) {
                self.commit(&name, contents);
            } else if !self.now.contains(&name) && !self.pending.contains_key(&name) {
                // Nothing else may bring it back (its events may have been
                // absorbed already, or were only an open).
                self.schedule(&name, Instant::now() + QUIET);
            }
        }
    }

    /// Last checks of a read that no event put in doubt, for writers whose
    /// events inotify has not delivered yet (the kernel queues a write's
    /// event after the data, and merges an open of a file into the
    /// watcher's own open of it just before): the file must not have
    /// changed since it was read, and an empty file written less than
    /// [`WRITER_QUIET`] ago is more likely truncated by a writer about to
    /// fill it than meant to be empty (an empty file stops every instance
    /// the file declared: worth a second's wait).
    fn settled(&self, name: &str, contents: &Contents) -> bool {
        let Contents::Got {
            id: Some(id), text, ..
        } = contents
        else {
            return true;
        };
        let Ok(now) = std::fs::metadata(self.dir.join(name)) else {
            return false;
        };
        if FileId::of(&now) != *id {
            return false;
        }
        let blank = matches!(text, Ok(t) if t.trim().is_empty());
        !(blank && modified_within(&now, WRITER_QUIET))
    }

    /// Waits until every event generated before now has been absorbed
    /// (recording the files they touch), so that a read made before it
    /// can be checked against them. Returns false when events were lost
    /// (an inotify overflow) meanwhile.
    ///
    /// The barrier is the watcher opening the directory itself, read-only:
    /// inotify queues the open event of the watched directory in order with
    /// every other event, so once it arrives everything before it has too.
    /// Others opening the directory meanwhile can only end the wait early
    /// (back to a best effort), never make it hang; a notify thread that
    /// stalls for [`BARRIER_WAIT`] is not waited for.
    fn barrier(&mut self, inotify: &Inotify, touched: &mut HashSet<String>) -> bool {
        // Events of the directory's own earlier opens (listing it) may
        // still be on their way: they must not count as the barrier's.
        let in_flight = self.dir_opens.saturating_sub(self.dir_opens_seen);
        let target = self.dir_opens_seen + in_flight + 1;
        let lost = self.lost;
        if File::open(&self.dir).is_err() {
            for raw in inotify.ready() {
                self.absorb(raw, touched);
            }
            return self.lost == lost;
        }
        self.dir_opens += 1;
        let deadline = Instant::now() + BARRIER_WAIT;
        while self.dir_opens_seen < target && self.lost == lost {
            let Some(raw) = inotify.recv_until(deadline) else {
                if !self.barrier_warned {
                    tracing::warn!(
                        "file watcher on {} lags more than {BARRIER_WAIT:?}",
                        self.shown.display()
                    );
                    self.barrier_warned = true;
                }
                // Count what never came as seen, so later barriers wait
                // for their own open only.
                self.dir_opens_seen = target;
                break;
            };
            self.absorb(raw, touched);
        }
        self.lost == lost
    }

    /// The file as it is now; `None` when a rescan need not read it (its
    /// metadata is unchanged, or it was modified too recently, in which
    /// case its quiet period starts).
    fn read(&mut self, name: &str, why: Why) -> Option<Contents> {
        let path = self.dir.join(name);
        if why == Why::Rescan
            && let Ok(m) = std::fs::metadata(&path)
            && m.is_file()
        {
            let unchanged = self
                .known
                .get(name)
                .is_some_and(|k| k.id == Some(FileId::of(&m)));
            if unchanged {
                return None;
            }
            if modified_within(&m, QUIET) {
                self.schedule(name, Instant::now() + QUIET);
                return None;
            }
        }
        let contents = read_file(&path, &self.display(name));
        if let Contents::Got { opened: true, .. } = contents {
            *self.own_opens.entry(name.to_string()).or_default() += 1;
        }
        Some(contents)
    }

    fn display(&self, name: &str) -> String {
        self.shown.join(name).display().to_string()
    }

    /// Reports `contents` of `name` unless it is what was last reported.
    fn commit(&mut self, name: &str, contents: Contents) {
        match contents {
            Contents::Absent => {
                self.writing.remove(name);
                if self.known.remove(name).is_some() {
                    self.send(FileEvent::Removed {
                        name: name.to_string(),
                    });
                }
            }
            Contents::Got { id, text, .. } => {
                let seen = match &text {
                    Ok(t) => Seen::Content(hash_text(t)),
                    Err(e) => Seen::Failed(e.message.clone()),
                };
                if let Some(k) = self.known.get_mut(name)
                    && k.seen == seen
                {
                    k.id = id;
                    return;
                }
                self.known.insert(name.to_string(), Known { seen, id });
                let display = self.display(name);
                let result = text.and_then(|t| parse_desired(&t, &display));
                self.send(FileEvent::Changed {
                    name: name.to_string(),
                    result,
                });
            }
        }
    }

    fn send(&self, ev: FileEvent) {
        // A closed receiver ends the loop at its next turn.
        let _ = self.out.send(ev);
    }
}

#[cfg(test)]
mod tests;
