//! Per-instance log files: rotating them at their cap while the pattern
//! writes (keeping the last generations), echoing new lines into the
//! launcher's log with the process_id in front and to the followers of
//! GetLogs, and reading the last lines back ([`history`], and [`tail`] for
//! error messages).
//!
//! Processes write their files directly (no pipe through the launcher), so
//! they keep running and logging if the launcher dies. Two threads follow
//! every file, both woken by inotify on each write and, as a backstop,
//! every few seconds: one rotates a file as soon as it reaches the cap
//! ([`rotation`]), the other echoes its lines ([`echo`]), so that a slow
//! echo never delays a rotation. Whatever a pattern writes, their work and
//! memory stay bounded.

mod echo;
pub mod follow;
pub mod history;
mod lines;
mod rotation;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use notify::Watcher;

pub use echo::{ECHO_RATE, MAX_LINE};
pub use follow::{Follower, LogEvent};
pub use history::{History, HistoryLine};
use rotation::Generations;

/// Default of `--log-max-bytes`: the size at which a log file is rotated.
pub const DEFAULT_MAX_LOG_BYTES: u64 = 16 << 20;

/// The smallest `--log-max-bytes`.
pub const MIN_LOG_BYTES: u64 = 64 << 10;

/// Default of `--log-keep`: rotated generations kept besides the live file.
pub const DEFAULT_LOG_KEEP: usize = 3;

/// The largest `--log-keep`.
pub const MAX_LOG_KEEP: usize = 100;

/// How often every followed file is checked whatever inotify said, while
/// the directory is not watched (the watch could not be set up).
const BACKSTOP: Duration = Duration::from_secs(5);

/// The same once the directory is watched: inotify reports every write,
/// and a lost event (its queue overflowed) makes both threads look at
/// every file at once ([`Msg::Sweep`]); this is the last resort.
const BACKSTOP_WATCHED: Duration = Duration::from_secs(30);

/// The file of an instance's output inside the logs directory.
pub fn log_path(logs_dir: &Path, process_id: &str) -> PathBuf {
    logs_dir.join(format!("{process_id}.log"))
}

/// What the rotation and the echo threads are told.
enum Msg {
    /// Follow a file from byte `u64` on; both threads share its
    /// [`Generations`].
    Track(PathBuf, Arc<str>, Arc<Generations>, u64),
    Untrack(PathBuf),
    /// Files were written: see [`Changed`].
    Wake,
    /// Look at every file now: inotify lost events.
    Sweep,
    /// The directory is watched: look at every file only this often.
    Backstop(Duration),
    /// Hand the lines of a file to a follower from now on (the echo
    /// only); answered once in force.
    Subscribe(
        PathBuf,
        follow::Subscription,
        tokio::sync::oneshot::Sender<()>,
    ),
    /// Stop handing them (the echo only): the subscription with this id.
    Detach(PathBuf, u64),
}

/// Files written since a thread last looked. A wake-up is sent only when
/// the set stops being empty, so a flood of writes costs one message.
#[derive(Default)]
struct Changed(Mutex<HashSet<PathBuf>>);

impl Changed {
    /// Adds `path`; true if a wake-up is needed.
    fn add(&self, path: PathBuf) -> bool {
        let mut set = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let wake = set.is_empty();
        set.insert(path);
        wake
    }

    fn take(&self) -> HashSet<PathBuf> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// A descriptor of a followed file kept open between looks: opening and
/// closing one at every write costs, and ext4 writes a file truncated to
/// nothing out when one of its descriptors is next closed. Opened again
/// when the path names another file; only a regular file, never through a
/// symbolic link.
#[derive(Default)]
struct Descriptor(Option<(File, (u64, u64))>);

impl Descriptor {
    /// The open file `path` names (for writing too if `write`).
    fn get(&mut self, path: &Path, write: bool) -> Option<&File> {
        let Some(meta) = std::fs::symlink_metadata(path)
            .ok()
            .filter(std::fs::Metadata::is_file)
        else {
            self.0 = None;
            return None;
        };
        let id = (meta.dev(), meta.ino());
        if self.0.as_ref().is_none_or(|(_, open)| *open != id) {
            let file = OpenOptions::new()
                .read(true)
                .write(write)
                .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
                .open(path);
            self.0 = file.ok().map(|f| (f, id));
        }
        self.0.as_ref().map(|(f, _)| f)
    }
}

/// One thread's way in.
struct Inbox {
    tx: mpsc::Sender<Msg>,
    changed: Arc<Changed>,
}

impl Inbox {
    /// Starts `run` on a thread named `name`, with its messages and set of
    /// written files.
    fn start(
        name: &str,
        run: impl FnOnce(mpsc::Receiver<Msg>, Arc<Changed>) + Send + 'static,
    ) -> Inbox {
        let (tx, rx) = mpsc::channel();
        let changed = Arc::new(Changed::default());
        let theirs = changed.clone();
        if let Err(e) = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx, theirs))
        {
            tracing::error!("cannot start the {name} thread: {e}");
        }
        Inbox { tx, changed }
    }

    fn written(&self, path: PathBuf) {
        if self.changed.add(path) {
            let _ = self.tx.send(Msg::Wake);
        }
    }
}

/// Handle of the rotation and echo threads; dropping every handle stops
/// them.
#[derive(Clone)]
pub struct LogEcho {
    rotate: mpsc::Sender<Msg>,
    echo: mpsc::Sender<Msg>,
    /// The rotations of each followed file, for the readers of history.
    generations: Arc<Mutex<HashMap<PathBuf, Arc<Generations>>>>,
    dir: PathBuf,
    keep: usize,
    _watcher: Option<Arc<notify::RecommendedWatcher>>,
}

impl LogEcho {
    /// Starts following files in `dir`, rotating them at `max_bytes` and
    /// keeping `keep` generations.
    pub fn start(dir: &Path, max_bytes: u64, keep: usize) -> LogEcho {
        let rotate = Inbox::start("log-rotate", move |rx, changed| {
            rotation::follow(&rx, &changed, max_bytes, keep);
        });
        let echo = Inbox::start("log-echo", |rx, changed| echo::follow(&rx, &changed));
        let (rotate_tx, echo_tx) = (rotate.tx.clone(), echo.tx.clone());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Events were lost (the queue overflowed) or the watch failed:
            // every file is looked at.
            if res.as_ref().map_or(true, notify::Event::need_rescan) {
                let _ = rotate.tx.send(Msg::Sweep);
                let _ = echo.tx.send(Msg::Sweep);
                return;
            }
            // Only writes matter. Opens and reads must not count: the
            // echo's own reads would wake it again, forever. Nor does a
            // file's creation: the threads follow only the files they are
            // told of, and a new file's first write is a Modify.
            if let Ok(ev) = res
                && matches!(
                    ev.kind,
                    notify::EventKind::Modify(_) | notify::EventKind::Any
                )
            {
                // Not the copies rotation makes.
                for p in ev
                    .paths
                    .into_iter()
                    .filter(|p| p.extension() == Some("log".as_ref()))
                {
                    rotate.written(p.clone());
                    echo.written(p);
                }
            }
        })
        .and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => {
                let _ = rotate_tx.send(Msg::Backstop(BACKSTOP_WATCHED));
                let _ = echo_tx.send(Msg::Backstop(BACKSTOP_WATCHED));
                Some(Arc::new(w))
            }
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} ({e}); instance logs are rotated and echoed every few seconds",
                    dir.display()
                );
                None
            }
        };
        LogEcho {
            rotate: rotate_tx,
            echo: echo_tx,
            generations: Arc::default(),
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            _watcher: watcher,
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Arc<Generations>>> {
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What GetLogs reads and follows.
    pub fn files(&self) -> LogFiles {
        LogFiles(self.clone())
    }

    /// Rotates `path` and echoes what is appended to it from byte `from`
    /// on: the file's length before the process started, so that nothing
    /// it writes before this message is handled is missed.
    pub fn track(&self, path: PathBuf, process_id: Arc<str>, from: u64) {
        // Followed already (a new process of the instance): the threads
        // keep theirs.
        let generations = self.registry().entry(path.clone()).or_default().clone();
        let _ = self.rotate.send(Msg::Track(
            path.clone(),
            process_id.clone(),
            generations.clone(),
            from,
        ));
        let _ = self
            .echo
            .send(Msg::Track(path, process_id, generations, from));
    }

    /// Stops following `path` (after echoing what is left).
    pub fn untrack(&self, path: PathBuf) {
        self.registry().remove(&path);
        let _ = self.rotate.send(Msg::Untrack(path.clone()));
        let _ = self.echo.send(Msg::Untrack(path));
    }
}

/// The instances' logs as GetLogs reads them: history, and followers fed
/// by the echo thread.
#[derive(Clone)]
pub struct LogFiles(LogEcho);

impl LogFiles {
    /// The last `tail` lines (None: all that is kept) of `process_id`'s
    /// log, across its kept generations; with `follow`, an unfinished last
    /// line is left to the follower. Blocks on the file system.
    pub fn history(&self, process_id: &str, tail: Option<usize>, follow: bool) -> History {
        let path = log_path(&self.0.dir, process_id);
        let generations = self.0.registry().get(&path).cloned();
        History::open(&path, self.0.keep, generations, tail, follow)
    }

    /// Hands `follower` the lines of `process_id`'s log read from now on,
    /// through a subscription that lasts until [`LogFiles::detach`]ed or
    /// the follower is gone; its id, or None if the follower is sealed or
    /// the echo is gone.
    pub async fn subscribe(&self, process_id: &str, follower: &Follower) -> Option<u64> {
        let sub = follower.subscription(Arc::from(process_id))?;
        let id = sub.id;
        let (ack, done) = tokio::sync::oneshot::channel();
        let path = log_path(&self.0.dir, process_id);
        self.0.echo.send(Msg::Subscribe(path, sub, ack)).ok()?;
        done.await.ok().map(|()| id)
    }

    /// Ends subscription `id` of `process_id`'s log, after the lines the
    /// echo read before.
    pub fn detach(&self, process_id: &str, id: u64) {
        let path = log_path(&self.0.dir, process_id);
        let _ = self.0.echo.send(Msg::Detach(path, id));
    }
}

/// The current size of a log file (0 if it does not exist).
pub fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `max_lines` lines written to `path` after byte `since`.
pub fn tail(path: &Path, since: u64, max_lines: usize) -> Vec<String> {
    const WINDOW: u64 = 4096;
    let Ok(mut file) = File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let since = if since > len { 0 } else { since };
    let start = since.max(len.saturating_sub(WINDOW));
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if start > since && !lines.is_empty() {
        lines.remove(0); // probably cut in the middle
    }
    let skip = lines.len().saturating_sub(max_lines);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines_after_an_offset() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(&p, "old\nfirst\nsecond\nthird\n").unwrap();
        assert_eq!(tail(&p, 4, 2), vec!["second", "third"]);
        assert_eq!(tail(&p, 4, 10), vec!["first", "second", "third"]);
        assert!(tail(&t.path().join("missing"), 0, 3).is_empty());
    }

    #[test]
    fn a_kept_descriptor_follows_the_file_its_path_names() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(&p, "one").unwrap();
        let mut d = Descriptor::default();
        assert_eq!(d.get(&p, false).unwrap().metadata().unwrap().len(), 3);
        std::fs::remove_file(&p).unwrap();
        assert!(d.get(&p, false).is_none());
        std::fs::File::create(&p)
            .unwrap()
            .write_all(b"three")
            .unwrap();
        assert_eq!(d.get(&p, false).unwrap().metadata().unwrap().len(), 5);
        let link = t.path().join("link.log");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(d.get(&link, false).is_none());
    }
}
