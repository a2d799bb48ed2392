//! Plumbing shared by the directory watchers of [`super::desired_dir`]
//! and [`super::catalog`]: one inotify instance (through `notify`) and the
//! queue its events arrive on, a watch kept on one directory across its
//! deletion and re-creation, and the timing constants both watchers share.
//!
//! Owns no policy: which events matter, when to read a file and what to
//! send the controller are each watcher's. It never reads, writes or
//! creates a file; a watch that cannot be set is logged once, and the
//! watchers' periodic rescans make up for it.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};

/// How long a file must stay untouched after a plain modification (or a
/// creation) before it is read, when no close-after-write says the writer
/// is done; for the patterns watcher, how long the tree must stay quiet
/// before it says "look again".
pub const QUIET: Duration = Duration::from_millis(100);

/// Shortest rescan interval honoured (a zero interval would spin).
pub(super) const MIN_RESCAN: Duration = Duration::from_millis(10);

/// Longest a watcher sleeps before checking that its receiver still lives.
pub(super) const LIVENESS: Duration = Duration::from_millis(500);

/// Most raw events handled in a row before timers and rescans get a turn.
const MAX_BATCH: usize = 4096;

/// One event as `notify` delivers it.
pub(super) type Raw = notify::Result<Event>;

/// Why a directory is not watched (the periodic rescans make up for it).
#[derive(Debug, thiserror::Error)]
enum WatchError {
    /// No inotify instance could be created.
    #[error("no file watcher")]
    NoWatcher,
    /// Nothing is there, or it is no directory.
    #[error("not a directory (yet)")]
    NotADirectory,
    /// inotify refused the watch (out of watches, permissions...).
    #[error(transparent)]
    Notify(#[from] notify::Error),
}

/// One inotify instance and the queue its events arrive on.
pub(super) struct Inotify {
    pub(super) watcher: Option<RecommendedWatcher>,
    rx: mpsc::Receiver<Raw>,
    /// Kept so that `rx` never reports a disconnection, even without a
    /// watcher.
    _tx: mpsc::Sender<Raw>,
}

impl Inotify {
    pub(super) fn new(what: &Path) -> Inotify {
        let (tx, rx) = mpsc::channel();
        let cb = tx.clone();
        let watcher = match notify::recommended_watcher(move |r: Raw| {
            let _ = cb.send(r);
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot create a file watcher for {} ({e}); relying on periodic rescans",
                    what.display()
                );
                None
            }
        };
        Inotify {
            watcher,
            rx,
            _tx: tx,
        }
    }

    /// Watches `path` (not recursively).
    fn watch(&mut self, path: &Path) -> Result<(), WatchError> {
        match &mut self.watcher {
            Some(w) => Ok(w.watch(path, RecursiveMode::NonRecursive)?),
            None => Err(WatchError::NoWatcher),
        }
    }

    /// Stops watching `path` (quietly: it may be gone already).
    pub(super) fn unwatch(&mut self, path: &Path) {
        if let Some(w) = &mut self.watcher {
            let _ = w.unwatch(path);
        }
    }

    /// The next event, waiting until `deadline` at most.
    pub(super) fn recv_until(&self, deadline: Instant) -> Option<Raw> {
        let wait = deadline.saturating_duration_since(Instant::now());
        self.rx.recv_timeout(wait).ok()
    }

    /// Events already queued, without waiting.
    pub(super) fn ready(&self) -> impl Iterator<Item = Raw> + '_ {
        self.rx.try_iter().take(MAX_BATCH)
    }
}

/// Identity of a directory, to notice one deleted and created again.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .filter(Metadata::is_dir)
        .map(|m| (m.dev(), m.ino()))
}

/// Keeps a watch on one directory, re-establishing it when the directory
/// appears or is replaced; warns once per distinct failure.
pub(super) struct DirWatch {
    pub(super) path: PathBuf,
    pub(super) id: Option<(u64, u64)>,
    warned: Option<String>,
}

impl DirWatch {
    pub(super) fn new(path: PathBuf) -> DirWatch {
        DirWatch {
            path,
            id: None,
            warned: None,
        }
    }

    /// Makes sure the watch is on the directory now at `path`.
    pub(super) fn ensure(&mut self, inotify: &mut Inotify) {
        let now = dir_id(&self.path);
        if now.is_some() && now == self.id {
            return;
        }
        if self.id.is_some() {
            inotify.unwatch(&self.path);
            self.id = None;
        }
        let result = match now {
            None => Err(WatchError::NotADirectory),
            Some(_) => inotify.watch(&self.path),
        };
        match result {
            Ok(()) => {
                if self.warned.take().is_some() {
                    tracing::info!("watching {} again", self.path.display());
                }
                self.id = now;
            }
            Err(e) => {
                let e = e.to_string();
                if self.warned.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        "cannot watch {} ({e}); relying on periodic rescans",
                        self.path.display()
                    );
                    self.warned = Some(e);
                }
            }
        }
    }
}

/// `dir` made absolute (event paths are), or as it is when it cannot be.
pub(super) fn absolute(dir: &Path) -> PathBuf {
    std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf())
}
