//! The patterns watcher: [`watch_patterns`] hands over the catalog loaded
//! again ([`Reloaded`]) when anything in the patterns directory changed.
//!
//! One thread of its own (so walking the tree, reading manifests and
//! hashing executables never block the async runtime; only the receiver is
//! tokio's), woken by inotify for speed and backed by a periodic
//! fingerprint of the tree that repairs whatever a lost event, an inotify
//! overflow or a watch that could not be created missed. It stops soon
//! after its receiver is dropped.
//!
//! It only reads: it never writes, creates or locks a file, and never
//! decides what a change means for instances; discovery
//! ([`super::Catalog::reload`]) builds the catalog, the controller decides.

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::EventKind;
use notify::event::{AccessKind, AccessMode};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::{Catalog, DiscoveryError};
use crate::sources::fsnotify::{DirWatch, Inotify, LIVENESS, MIN_RESCAN, QUIET, Raw, absolute};

/// [`watch_patterns`] sends at the latest this long after the first of a
/// stream of changes, even when the stream never goes quiet (a pattern
/// writing into its own directory, say).
pub const MAX_COALESCE: Duration = Duration::from_secs(1);

/// A catalog discovered (again), with what discovery found wrong.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The catalog.
    pub catalog: Catalog,
    /// Every error of that discovery.
    pub errors: Vec<DiscoveryError>,
}

/// Watches the patterns directory `dir` and its sub-directories (so
/// everything down to `dir/<pattern>/<file>`) and, after any change has
/// been followed by [`QUIET`] (at most [`MAX_COALESCE`] after the first
/// change), loads the catalog again ([`Catalog::reload`] of the last one)
/// and sends it; many changes make one reload. Every `rescan_every` it also
/// compares a fingerprint of the tree (names, sizes, mtimes of the files of
/// each pattern directory) and reloads when it changed, which repairs lost
/// events. Opening, reading or executing files sends nothing.
///
/// Returns the first discovery, made once the watches are in place (so no
/// change made meanwhile is missed), and the receiver of the reloads.
pub fn watch_patterns(
    dir: PathBuf,
    rescan_every: Duration,
) -> (Reloaded, UnboundedReceiver<Reloaded>) {
    let (tx, rx) = unbounded_channel();
    let watcher = PatternsWatcher::new(dir, tx);
    let first = Reloaded {
        catalog: watcher.base.clone(),
        errors: watcher.first_errors.clone(),
    };
    let spawned = std::thread::Builder::new()
        .name("watch-patterns".into())
        .spawn(move || watcher.run(rescan_every.max(MIN_RESCAN)));
    if let Err(e) = spawned {
        tracing::error!("cannot start the patterns watcher: {e}");
    }
    (first, rx)
}

struct PatternsWatcher {
    root: DirWatch,
    shown: PathBuf,
    inotify: Inotify,
    /// Watched pattern directories.
    subdirs: HashMap<PathBuf, DirWatch>,
    out: UnboundedSender<Reloaded>,
    /// The catalog last loaded (the next reload starts from it).
    base: Catalog,
    /// What the first discovery found wrong.
    first_errors: Vec<DiscoveryError>,
    fingerprint: u64,
    /// When the current quiet period ends.
    due: Option<Instant>,
    /// When the first change not yet sent was seen.
    first: Option<Instant>,
}

impl PatternsWatcher {
    /// Sets the watches, takes the first fingerprint, then discovers.
    fn new(dir: PathBuf, out: UnboundedSender<Reloaded>) -> PatternsWatcher {
        let mut w = PatternsWatcher {
            root: DirWatch::new(absolute(&dir)),
            inotify: Inotify::new(&dir),
            shown: dir,
            subdirs: HashMap::new(),
            out,
            base: Catalog::default(),
            first_errors: Vec::new(),
            fingerprint: 0,
            due: None,
            first: None,
        };
        w.sync_watches();
        w.fingerprint = fingerprint(&w.root.path);
        let (catalog, errors) = Catalog::discover(&w.shown);
        w.base = catalog;
        w.first_errors = errors;
        w
    }

    fn run(mut self, rescan_every: Duration) {
        let mut next_tick = Instant::now() + rescan_every;
        while !self.out.is_closed() {
            let mut wake = next_tick.min(Instant::now() + LIVENESS);
            if let Some(due) = self.due {
                wake = wake.min(due);
            }
            if let Some(first) = self.first {
                wake = wake.min(first + MAX_COALESCE);
            }
            if let Some(raw) = self.inotify.recv_until(wake) {
                let mut changed = self.relevant(&raw);
                for raw in self.inotify.ready() {
                    changed |= self.relevant(&raw);
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
            if quiet || overdue {
                self.fire();
            } else if now >= next_tick {
                if self.due.is_none() {
                    self.sync_watches();
                    if fingerprint(&self.root.path) != self.fingerprint {
                        self.fire();
                    }
                }
                next_tick = Instant::now() + rescan_every;
            }
        }
    }

    /// True for an event that may change what discovery finds: anything
    /// but opening, reading or closing a file that was only read.
    fn relevant(&self, raw: &Raw) -> bool {
        match raw {
            Ok(ev) => {
                ev.need_rescan()
                    || matches!(
                        ev.kind,
                        EventKind::Access(AccessKind::Close(AccessMode::Write))
                    )
                    || !matches!(ev.kind, EventKind::Access(_))
            }
            Err(e) => {
                tracing::warn!(
                    "file watcher error on {} ({e}); looking again",
                    self.shown.display()
                );
                true
            }
        }
    }

    /// Loads the catalog again and sends it, after updating the watches
    /// and the fingerprint (so the discovery sees at least this state).
    fn fire(&mut self) {
        self.sync_watches();
        self.fingerprint = fingerprint(&self.root.path);
        self.due = None;
        self.first = None;
        let (catalog, errors) = self.base.reload(&self.shown);
        self.base = catalog.clone();
        let _ = self.out.send(Reloaded { catalog, errors });
    }

    /// Watches the root and each directory in it; drops the watches of
    /// directories that went away.
    fn sync_watches(&mut self) {
        self.root.ensure(&mut self.inotify);
        let now: HashSet<PathBuf> = pattern_dirs(&self.root.path).into_iter().collect();
        let gone: Vec<PathBuf> = self
            .subdirs
            .keys()
            .filter(|p| !now.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.inotify.unwatch(&p);
            self.subdirs.remove(&p);
        }
        for p in now {
            self.subdirs
                .entry(p.clone())
                .or_insert_with(|| DirWatch::new(p))
                .ensure(&mut self.inotify);
        }
    }
}

/// The directories directly in `root` (following symlinks, as discovery
/// does), sorted.
fn pattern_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A cheap summary of what discovery depends on: for each pattern
/// directory, the name, size, mtime and inode of every entry in it.
fn fingerprint(root: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    for dir in pattern_dirs(root) {
        dir.hash(&mut h);
        let mut entries: Vec<(std::ffi::OsString, Option<Metadata>)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| (e.file_name(), std::fs::metadata(e.path()).ok()))
                    .collect()
            })
            .unwrap_or_default();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, meta) in entries {
            name.hash(&mut h);
            if let Some(m) = meta {
                (m.len(), m.mtime(), m.mtime_nsec(), m.ino(), m.mode()).hash(&mut h);
            }
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generous: the watcher answers in milliseconds, CI machines are slow.
    const PATIENCE: Duration = Duration::from_secs(10);

    /// Waits for the next reload.
    async fn next(rx: &mut UnboundedReceiver<Reloaded>) -> Reloaded {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the watcher stopped"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    const MANIFEST: &str = "name: p\nversion: 1\nexecutable: ./run\nisolation_level: none\n";

    /// Asserts that nothing is sent within a short window (the only way to
    /// see an absence; it waits on nothing else).
    async fn quiet(rx: &mut UnboundedReceiver<Reloaded>) {
        let window = QUIET * 4;
        assert!(
            tokio::time::timeout(window, rx.recv()).await.is_err(),
            "unexpected notification"
        );
    }

    #[tokio::test]
    async fn a_new_pattern_directory_and_its_manifest_are_noticed_and_loaded() {
        let t = tempfile::tempdir().unwrap();
        let (first, mut rx) = watch_patterns(t.path().to_path_buf(), Duration::from_secs(60));
        assert!(first.catalog.is_empty() && first.errors.is_empty());
        std::fs::create_dir(t.path().join("p")).unwrap();
        std::fs::write(t.path().join("p/manifest.yaml"), MANIFEST).unwrap();
        // The manifest may be seen before it is written: wait for it.
        let mut r = next(&mut rx).await;
        while r.catalog.get("p").is_none() {
            r = next(&mut rx).await;
        }
        assert_eq!(r.catalog.get("p").unwrap().version, "1");
        // The new directory is watched now: editing the manifest is seen.
        std::fs::write(t.path().join("p/manifest.yaml"), MANIFEST.replace("1", "2")).unwrap();
        let mut r = next(&mut rx).await;
        while r.catalog.get("p").unwrap().version != "2" {
            r = next(&mut rx).await;
        }
        std::fs::remove_file(t.path().join("p/manifest.yaml")).unwrap();
        let mut r = next(&mut rx).await;
        while r.catalog.get("p").is_some() {
            r = next(&mut rx).await;
        }
    }

    #[tokio::test]
    async fn replacing_an_executable_is_noticed_but_reading_and_running_is_not() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("p");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("manifest.yaml"), MANIFEST).unwrap();
        std::fs::write(p.join("run"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(
            p.join("run"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let (first, mut rx) = watch_patterns(t.path().to_path_buf(), Duration::from_secs(60));
        let hash = first.catalog.get("p").expect("p discovered").exe_hash;
        std::fs::read_to_string(p.join("manifest.yaml")).unwrap();
        let status = std::process::Command::new(p.join("run")).status().unwrap();
        assert!(status.success());
        quiet(&mut rx).await;
        std::fs::write(p.join("run.new"), "#!/bin/sh\nexit 1\n").unwrap();
        std::fs::rename(p.join("run.new"), p.join("run")).unwrap();
        // The reload hashed the new executable (off the controller).
        let mut r = next(&mut rx).await;
        while r.catalog.get("p").expect("p").exe_hash == hash {
            r = next(&mut rx).await;
        }
    }

    #[tokio::test]
    async fn many_changes_at_once_make_few_notifications() {
        let t = tempfile::tempdir().unwrap();
        let (_, mut rx) = watch_patterns(t.path().to_path_buf(), Duration::from_secs(60));
        for i in 0..50 {
            let d = t.path().join(format!("p{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("manifest.yaml"), MANIFEST).unwrap();
        }
        next(&mut rx).await;
        let mut more = 0;
        while tokio::time::timeout(QUIET * 4, rx.recv()).await.is_ok() {
            more += 1;
        }
        assert!(more < 10, "{more} more notifications for one burst");
    }

    #[tokio::test]
    async fn a_periodic_fingerprint_finds_what_no_event_told() {
        // The directory does not exist yet: no watch, only the fingerprint.
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("patterns");
        let (_, mut rx) = watch_patterns(root.clone(), Duration::from_millis(20));
        std::fs::create_dir_all(root.join("p")).unwrap();
        std::fs::write(root.join("p/manifest.yaml"), MANIFEST).unwrap();
        next(&mut rx).await;
        // Unchanged ticks send nothing.
        while tokio::time::timeout(QUIET * 4, rx.recv()).await.is_ok() {}
        quiet(&mut rx).await;
    }
}
