//! A watcher of one configuration file (the `--authz` policy): it hands
//! the file's text (or why it cannot be read) to a [`FileSink`] at start
//! and each time that changes.
//!
//! One thread of its own (reads never block the async runtime), woken by
//! inotify on the file's directory (so a file replaced by a rename, or a
//! symlink swapped under it, is seen as well as one written in place) and
//! backed by a periodic re-read that repairs whatever a lost event or a
//! watch that could not be set missed. It only reads, and never decides
//! what the text means: that is the sink's. It stops soon after the sink
//! says it is closed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode};

use crate::sources::fsnotify::{DirWatch, Inotify, LIVENESS, MIN_RESCAN, QUIET, Raw, absolute};
use crate::spec::yaml::{self, YamlError};

/// A file is read at the latest this long after the first of a stream of
/// changes, even when the stream never goes quiet.
const MAX_COALESCE: Duration = Duration::from_secs(1);

/// Where a watched file's content goes.
pub trait FileSink: Send + 'static {
    /// The file's text, or why it cannot be read (size, UTF-8, gone...),
    /// at start and whenever it differs from what was handed last.
    fn changed(&mut self, read: Result<String, YamlError>);
    /// True once nobody needs the file any more: the watcher stops.
    fn closed(&self) -> bool;
}

/// Watches the file at `path` (named `display` in errors) and hands its
/// content to `sink`: once at start, then after each change (once it has
/// been quiet for [`QUIET`]) and at every `rescan_every` when it differs.
pub fn watch_file(
    path: PathBuf,
    display: String,
    rescan_every: Duration,
    sink: impl FileSink,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watch-file".into())
        .spawn(move || FileWatcher::new(path, display, sink).run(rescan_every.max(MIN_RESCAN)))
        .map(drop)
}

#[derive(PartialEq, Eq)]
enum Seen {
    Text(u64),
    Failed(String),
}

struct FileWatcher<S> {
    path: PathBuf,
    display: String,
    dir: DirWatch,
    inotify: Inotify,
    sink: S,
    last: Option<Seen>,
    /// When the current quiet period ends.
    due: Option<Instant>,
    /// When the first change not yet read was seen.
    first: Option<Instant>,
}

impl<S: FileSink> FileWatcher<S> {
    fn new(path: PathBuf, display: String, sink: S) -> Self {
        let path = absolute(&path);
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        FileWatcher {
            inotify: Inotify::new(&dir),
            dir: DirWatch::new(dir),
            path,
            display,
            sink,
            last: None,
            due: None,
            first: None,
        }
    }

    fn run(mut self, rescan_every: Duration) {
        self.dir.ensure(&mut self.inotify);
        self.read();
        let mut next_tick = Instant::now() + rescan_every;
        while !self.sink.closed() {
            let mut wake = next_tick.min(Instant::now() + LIVENESS);
            if let Some(due) = self.due {
                wake = wake.min(due);
            }
            if let Some(first) = self.first {
                wake = wake.min(first + MAX_COALESCE);
            }
            if let Some(raw) = self.inotify.recv_until(wake) {
                let mut changed = relevant(&raw);
                for raw in self.inotify.ready() {
                    changed |= relevant(&raw);
                }
                if changed {
                    let now = Instant::now();
                    self.due = Some(now + QUIET);
                    self.first.get_or_insert(now);
                }
            }
            let now = Instant::now();
            let quiet = self.due.is_some_and(|d| now >= d);
            let overdue = self.first.is_some_and(|f| now >= f + MAX_COALESCE);
            if quiet || overdue || now >= next_tick {
                self.dir.ensure(&mut self.inotify);
                self.read();
                if now >= next_tick {
                    next_tick = Instant::now() + rescan_every;
                }
            }
        }
    }

    /// Reads the file and hands it on when it differs from the last time.
    fn read(&mut self) {
        self.due = None;
        self.first = None;
        let read = yaml::read_limited(&self.path, &self.display);
        let seen = match &read {
            Ok(text) => {
                let mut h = DefaultHasher::new();
                text.hash(&mut h);
                Seen::Text(h.finish())
            }
            Err(e) => Seen::Failed(e.to_string()),
        };
        if self.last.as_ref() != Some(&seen) {
            self.last = Some(seen);
            self.sink.changed(read);
        }
    }
}

/// True for an event that may change the file: anything but opening or
/// reading (its own reads among them).
fn relevant(raw: &Raw) -> bool {
    match raw {
        Ok(ev) => {
            ev.need_rescan()
                || matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                )
                || !matches!(ev.kind, EventKind::Access(_))
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Sink(mpsc::Sender<Result<String, YamlError>>);

    impl FileSink for Sink {
        fn changed(&mut self, read: Result<String, YamlError>) {
            let _ = self.0.send(read);
        }
        fn closed(&self) -> bool {
            false
        }
    }

    const PATIENCE: Duration = Duration::from_secs(30);

    #[test]
    fn reports_the_content_at_start_then_each_change_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "a").unwrap();
        let (tx, rx) = mpsc::channel();
        // A long rescan: the changes must come through inotify.
        watch_file(
            path.clone(),
            "policy.yaml".into(),
            Duration::from_secs(3600),
            Sink(tx),
        )
        .unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap(), "a");
        // Replaced through a rename, as editors and config tools do.
        let tmp = dir.path().join(".policy.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap(), "b");
        std::fs::remove_file(&path).unwrap();
        let gone = rx.recv_timeout(PATIENCE).unwrap().unwrap_err();
        assert!(gone.to_string().starts_with("policy.yaml"), "{gone}");
        std::fs::write(&path, "c").unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap(), "c");
        // Touching without a change reports nothing.
        std::fs::write(&path, "c").unwrap();
        std::fs::write(&path, "d").unwrap();
        assert_eq!(rx.recv_timeout(PATIENCE).unwrap().unwrap(), "d");
    }
}
