//! The rotation thread: rotates a log file as soon as it reaches the cap,
//! while its writer goes on writing.
//!
//! Copy-then-truncate: the previous generation is kept as `<file>.1` (the
//! ones before it shifted to `<file>.2` ... `<file>.N`, the oldest dropped)
//! and the file is truncated in place, so the writer's `O_APPEND`
//! descriptor goes on at the new end. The copy is made in slices while the file fills
//! (from a quarter of the cap, into `<file>.1.part`), so that truncating
//! once the cap is reached waits for little or nothing to be copied; a
//! writer that outruns the copy gets its generation kept only as far as
//! the copy got. A generation holds at most the cap and a quarter; a file
//! found past the cap with no copy under way keeps at most its last cap
//! bytes. A file written fast lately is looked at every millisecond,
//! events or not: how far past the cap a fast writer gets is what it
//! writes while this thread waits for the CPU or the disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::{BACKSTOP, Changed, Descriptor, Msg};

/// Most bytes copied before the size is looked at again.
const SLICE: u64 = 128 << 10;

/// How often a file written fast lately is looked at, events or not.
const POLL: Duration = Duration::from_millis(1);

/// How long a file written fast counts as such.
const HOT: Duration = Duration::from_millis(100);

/// How often the same file's failing rotation is reported.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The truncations of one file, shared with the echo and the readers of
/// its history: how many bytes the generations before the current one
/// held, and a sequence number that is odd while a rotation (the
/// truncation and the renames of the kept generations) is under way (a
/// seqlock).
#[derive(Debug)]
pub struct Generations {
    seq: AtomicU64,
    start: AtomicU64,
    epoch: u64,
}

impl Default for Generations {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Generations {
            seq: AtomicU64::new(0),
            start: AtomicU64::new(0),
            epoch: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// What [`Generations::stable`] saw.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    seq: u64,
    /// Bytes of the generations before the current one.
    pub start: u64,
}

impl Generations {
    /// Which following of the file these are (a new one each time it is
    /// followed again after it was no longer): offsets counted from
    /// [`Generations::start`] are comparable only within one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Bytes of the generations before the current one.
    pub fn start(&self) -> u64 {
        self.start.load(Ordering::SeqCst)
    }

    /// The current generation, None while a truncation is under way.
    pub fn stable(&self) -> Option<Seen> {
        let seq = self.seq.load(Ordering::SeqCst);
        seq.is_multiple_of(2).then(|| Seen {
            seq,
            start: self.start(),
        })
    }

    /// True if no truncation began since `seen`.
    pub fn unchanged(&self, seen: Seen) -> bool {
        self.seq.load(Ordering::SeqCst) == seen.seq
    }

    fn begin(&self) {
        self.seq.fetch_add(1, Ordering::SeqCst);
    }

    fn end(&self, truncated_at: u64) {
        self.start.fetch_add(truncated_at, Ordering::SeqCst);
        self.seq.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs the rotation until every sender of `rx` is gone.
pub(super) fn follow(rx: &mpsc::Receiver<Msg>, changed: &Changed, cap: u64, keep: usize) {
    let reaper = start_reaper();
    let mut files: HashMap<PathBuf, Followed> = HashMap::new();
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
            Ok(Msg::Track(p, process_id, generations, _)) => {
                let f = files.entry(p.clone()).or_insert_with(|| Followed {
                    process_id,
                    generations,
                    rotator: Rotator::new(cap, keep),
                    live: Descriptor::default(),
                    len: 0,
                    fast: None,
                    due: None,
                    warned: None,
                });
                f.step(&p, now, reaper.as_ref());
            }
            Ok(Msg::Untrack(p)) => {
                if let Some(mut f) = files.remove(&p) {
                    f.rotator.abandon(&p);
                }
            }
            Ok(Msg::Wake) => {
                for p in changed.take() {
                    if let Some(f) = files.get_mut(&p) {
                        f.step(&p, now, reaper.as_ref());
                    }
                }
            }
            Ok(Msg::Subscribe(..) | Msg::Detach(..)) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // The backstop for lost events (a stat per file), and the files
        // growing fast.
        let sweep = now >= next_sweep;
        if sweep {
            next_sweep = now + backstop;
        }
        for (p, f) in &mut files {
            if sweep || f.due.is_some_and(|d| d <= now) {
                f.step(p, now, reaper.as_ref());
            }
        }
    }
}

/// A thread that closes the files of generations dropped from `<file>.N`:
/// the last close of an unlinked file frees its pages and blocks, which
/// can take long enough for a fast writer to run far past the cap.
fn start_reaper() -> Option<mpsc::SyncSender<File>> {
    let (tx, rx) = mpsc::sync_channel::<File>(4);
    std::thread::Builder::new()
        .name("log-reaper".into())
        .spawn(move || rx.into_iter().for_each(drop))
        .ok()
        .map(|_| tx)
}

/// A followed file.
struct Followed {
    process_id: Arc<str>,
    generations: Arc<Generations>,
    rotator: Rotator,
    live: Descriptor,
    /// Its size after the last step.
    len: u64,
    /// When it was last seen growing by a [`SLICE`] or more between two
    /// looks.
    fast: Option<Instant>,
    /// When to look again without being woken (while it grows fast).
    due: Option<Instant>,
    /// When a failing rotation was last reported.
    warned: Option<Instant>,
}

impl Followed {
    fn step(&mut self, path: &Path, now: Instant, reaper: Option<&mpsc::SyncSender<File>>) {
        let Some(live) = self.live.get(path, true) else {
            self.due = None;
            return;
        };
        match self.rotator.on_change(path, live, &self.generations) {
            Ok(None) => {}
            Ok(Some(r)) => {
                tracing::debug!(
                    "{}: log rotated at {} bytes, {} of them kept in .1",
                    self.process_id,
                    r.end,
                    r.kept
                );
                if let Some(e) = r.copy_failed {
                    let what = format!("truncated without a copy: {e}");
                    warn(&mut self.warned, &self.process_id, now, &what);
                }
                if let (Some(old), Some(reaper)) = (r.replaced, reaper) {
                    // A full reaper: closed here, slowly.
                    let _ = reaper.try_send(old);
                }
            }
            Err(e) => warn(&mut self.warned, &self.process_id, now, &e.to_string()),
        }
        // Events come late on a busy machine: a file written fast lately is
        // looked at again soon whatever inotify says.
        let len = live.metadata().map_or(0, |m| m.len());
        if len >= self.len + SLICE {
            self.fast = Some(now);
        }
        self.len = len;
        self.due = self.fast.filter(|t| now < *t + HOT).map(|_| now + POLL);
    }
}

/// Reports a failing rotation of `process_id`'s log, at most once every
/// [`WARN_EVERY`] (`warned`: when it was last reported).
fn warn(warned: &mut Option<Instant>, process_id: &str, now: Instant, what: &str) {
    if warned.is_none_or(|t| now >= t + WARN_EVERY) {
        *warned = Some(now);
        tracing::warn!("{process_id}: log rotation: {what}");
    }
}

/// A rotation step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// The copy of the generation could not be made.
    #[error("cannot copy {path} to {copy}: {source}")]
    Copy {
        /// The log file.
        path: PathBuf,
        /// The copy.
        copy: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The log file could not be truncated.
    #[error("cannot truncate {path}: {source}")]
    Truncate {
        /// The log file.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
}

/// A rotation that took place.
#[derive(Debug)]
pub struct Rotated {
    /// The size of the file when it was truncated.
    pub end: u64,
    /// Bytes kept in `<file>.1`.
    pub kept: u64,
    /// Why `<file>.1` holds nothing of this generation (the file was
    /// truncated anyway, to hold the cap).
    pub copy_failed: Option<RotateError>,
    /// The oldest generation, dropped from `<file>.N`, unlinked but still
    /// open: freeing it happens when this is dropped.
    pub replaced: Option<File>,
}

/// The generation being copied.
struct Copy {
    file: File,
    /// Where it starts in the log file.
    from: u64,
    /// How far it is copied.
    to: u64,
}

/// Rotates one log file at `cap` bytes, keeping `keep` generations.
pub struct Rotator {
    cap: u64,
    keep: usize,
    copy: Option<Copy>,
}

impl Rotator {
    /// A rotator for a file that is rotated at `cap` bytes, keeping the
    /// last `keep` generations (at least one).
    pub fn new(cap: u64, keep: usize) -> Rotator {
        Rotator {
            cap,
            keep: keep.max(1),
            copy: None,
        }
    }

    /// To be called after each write to `path` (`live` open on it for
    /// reading and writing): copies what was appended once the file is a
    /// quarter full, and rotates it once it has reached the cap.
    pub fn on_change(
        &mut self,
        path: &Path,
        live: &File,
        generations: &Generations,
    ) -> Result<Option<Rotated>, RotateError> {
        // In slices, so that reaching the cap is noticed during a long copy.
        let reached = loop {
            let len = live.metadata().map_or(0, |m| m.len());
            if self.copy.as_ref().is_some_and(|c| len < c.to) {
                // Truncated by someone else: the copy is of nothing now.
                self.abandon(path);
            }
            if len < self.cap / 4 {
                return Ok(None);
            }
            if len >= self.cap {
                break len;
            }
            if self.copy_up(path, live, SLICE)? < SLICE {
                return Ok(None);
            }
        };
        // At the cap: finish the copy, unless the file grows while the copy
        // is far behind: then truncate at once (the rest of the generation
        // is lost), for a writer that outruns the copy must not run the
        // file past the cap.
        let mut len = reached;
        let copied = loop {
            let now = live.metadata().map_or(0, |m| m.len());
            let behind = self.copy.as_ref().map_or(now, |c| now.saturating_sub(c.to));
            if now > len && behind > SLICE {
                break Ok(());
            }
            len = now;
            match self.copy_up(path, live, SLICE) {
                Ok(n) if n < SLICE => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        // Readers see the generations whole: the truncation and the renames
        // happen inside one odd sequence number.
        generations.begin();
        let end = match truncate(path, live) {
            Ok(end) => end,
            Err(e) => {
                generations.end(0);
                return Err(e);
            }
        };
        let finished = copied.and_then(|()| self.finish(path));
        generations.end(end);
        let (kept, replaced, copy_failed) = match finished {
            Ok((kept, replaced)) => (kept, replaced, None),
            Err(e) => {
                self.abandon(path);
                (0, None, Some(e))
            }
        };
        Ok(Some(Rotated {
            end,
            kept,
            copy_failed,
            replaced,
        }))
    }

    /// Forgets the generation being copied (the file is no longer
    /// followed, or was truncated by someone else).
    pub fn abandon(&mut self, path: &Path) {
        if self.copy.take().is_some() {
            let _ = std::fs::remove_file(suffixed(path, ".1.part"));
        }
    }

    /// Copies at most `most` bytes of what was appended to `live` since the
    /// last call, up to the generation's limit; starts the copy if there is
    /// none. Returns the bytes copied.
    fn copy_up(&mut self, path: &Path, live: &File, most: u64) -> Result<u64, RotateError> {
        let part = suffixed(path, ".1.part");
        let err = |source| RotateError::Copy {
            path: path.to_path_buf(),
            copy: part.clone(),
            source,
        };
        let len = live.metadata().map_err(err)?.len();
        if self.copy.is_none() {
            let start = len.saturating_sub(self.cap);
            self.copy = Some(Copy {
                file: create_private(&part).map_err(err)?,
                from: start,
                to: start,
            });
        }
        let Some(copy) = self.copy.as_mut() else {
            return Ok(0);
        };
        let limit = copy.from + self.cap + self.cap / 4;
        let want = len.min(limit).saturating_sub(copy.to).min(most);
        if want == 0 {
            return Ok(0);
        }
        // Only `pread`s use the caller's descriptor: moving its offset is
        // harmless. std copies between files in the kernel.
        let mut src = live;
        src.seek(SeekFrom::Start(copy.to)).map_err(err)?;
        let n = std::io::copy(&mut src.take(want), &mut copy.file).map_err(err)?;
        copy.to += n;
        Ok(n)
    }

    /// Puts the copied generation in place as `<file>.1`, the kept ones
    /// shifted one up; returns its size and the oldest generation, dropped
    /// from `<file>.N`, unlinked but still open.
    fn finish(&mut self, path: &Path) -> Result<(u64, Option<File>), RotateError> {
        let Some(copy) = self.copy.take() else {
            return Ok((0, None));
        };
        let part = suffixed(path, ".1.part");
        let generation = |n: usize| suffixed(path, &format!(".{n}"));
        // ext4 writes out a file renamed over another one before the
        // rename returns: make way first (cheap while it is open; freeing
        // it happens when it is closed). Every other rename goes to a
        // name nothing holds.
        let oldest = generation(self.keep);
        let replaced = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&oldest)
            .ok();
        let _ = std::fs::remove_file(&oldest);
        // Generations past the limit, left by a larger --log-keep.
        let mut n = self.keep + 1;
        while std::fs::remove_file(generation(n)).is_ok() {
            n += 1;
        }
        for n in (1..self.keep).rev() {
            // A missing generation (fewer rotations so far) is no error.
            let _ = std::fs::rename(generation(n), generation(n + 1));
        }
        let newest = generation(1);
        std::fs::rename(&part, &newest).map_err(|source| RotateError::Copy {
            path: path.to_path_buf(),
            copy: newest.clone(),
            source,
        })?;
        Ok((copy.to - copy.from, replaced))
    }
}

/// Truncates `live` (open on `path`) to nothing; returns its size just
/// before. Through a descriptor that stays open: ext4 writes out a file
/// truncated to nothing when a descriptor of it is next closed.
fn truncate(path: &Path, live: &File) -> Result<u64, RotateError> {
    let err = |source| RotateError::Truncate {
        path: path.to_path_buf(),
        source,
    };
    let end = live.metadata().map_err(err)?.len();
    live.set_len(0).map_err(err)?;
    Ok(end)
}

/// Creates (or empties) `path`, readable and writable by its owner only,
/// whatever the umask and whatever its mode was; not through a symbolic
/// link.
fn create_private(path: &Path) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// `path` with `suffix` appended to its file name.
pub fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

#[cfg(test)]
mod tests;
