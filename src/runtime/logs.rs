//! Per-instance log files: echoing new lines into the launcher's log with
//! the process_id in front, rotating by size, and reading the last lines
//! for error messages.
//!
//! Processes write their files directly (no pipe through the launcher), so
//! they keep running and logging if the launcher dies. One thread follows
//! every file, woken by inotify and, as a backstop, every few seconds.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::Watcher;

/// A log file larger than this is rotated (copied to `<file>.1`, truncated).
pub const MAX_LOG_BYTES: u64 = 16 << 20;

/// How often every followed file is checked whatever inotify said.
const BACKSTOP: Duration = Duration::from_secs(5);

/// Most bytes echoed per file per wake-up (the rest waits for the next).
const MAX_READ: u64 = 256 << 10;

/// The file of an instance's output inside the logs directory.
pub fn log_path(logs_dir: &Path, process_id: &str) -> PathBuf {
    logs_dir.join(format!("{process_id}.log"))
}

enum Msg {
    Track(PathBuf, Arc<str>),
    Untrack(PathBuf),
    Changed(PathBuf),
}

struct Followed {
    process_id: Arc<str>,
    offset: u64,
    partial: Vec<u8>,
}

/// Handle of the echo thread; dropping every handle stops it.
#[derive(Clone)]
pub struct LogEcho {
    tx: mpsc::Sender<Msg>,
}

impl LogEcho {
    /// Starts following files in `dir`.
    pub fn start(dir: &Path) -> LogEcho {
        let (tx, rx) = mpsc::channel();
        let watch_tx = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            // Only writes matter. Opens and reads must not count: the
            // echo's own reads would wake it again, forever.
            if let Ok(ev) = res
                && matches!(
                    ev.kind,
                    notify::EventKind::Modify(_)
                        | notify::EventKind::Create(_)
                        | notify::EventKind::Any
                )
            {
                for p in ev.paths {
                    let _ = watch_tx.send(Msg::Changed(p));
                }
            }
        })
        .and_then(|mut w| {
            w.watch(dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} ({e}); instance output is echoed every few seconds",
                    dir.display()
                );
                None
            }
        };
        std::thread::Builder::new()
            .name("log-echo".into())
            .spawn(move || {
                let _watcher = watcher;
                follow(&rx);
            })
            .ok();
        LogEcho { tx }
    }

    /// Echoes what is appended to `path` from now on.
    pub fn track(&self, path: PathBuf, process_id: Arc<str>) {
        let _ = self.tx.send(Msg::Track(path, process_id));
    }

    /// Stops following `path` (after echoing what is left).
    pub fn untrack(&self, path: PathBuf) {
        let _ = self.tx.send(Msg::Untrack(path));
    }
}

fn follow(rx: &mpsc::Receiver<Msg>) {
    let mut files: HashMap<PathBuf, Followed> = HashMap::new();
    let mut next_sweep = Instant::now() + BACKSTOP;
    loop {
        let wait = next_sweep.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Track(p, id)) => {
                let offset = std::fs::metadata(&p).map_or(0, |m| m.len());
                files.entry(p).or_insert(Followed {
                    process_id: id,
                    offset,
                    partial: Vec::new(),
                });
            }
            Ok(Msg::Untrack(p)) => {
                if let Some(mut f) = files.remove(&p) {
                    echo(&p, &mut f);
                }
            }
            Ok(Msg::Changed(p)) => {
                if let Some(f) = files.get_mut(&p) {
                    echo(&p, f);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The backstop for lost events: a stat per file, a read
                // only where something was appended.
                for (p, f) in &mut files {
                    if std::fs::metadata(p).map_or(0, |m| m.len()) != f.offset {
                        echo(p, f);
                    }
                }
                next_sweep = Instant::now() + BACKSTOP;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn echo(path: &Path, f: &mut Followed) {
    let Ok(mut file) = File::open(path) else {
        return;
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len < f.offset {
        // Truncated (rotated by someone else): start over.
        f.offset = 0;
        f.partial.clear();
    }
    if len == f.offset {
        return;
    }
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(f.offset)).is_err()
        || file.take(MAX_READ).read_to_end(&mut buf).is_err()
    {
        return;
    }
    f.offset += buf.len() as u64;
    f.partial.extend_from_slice(&buf);
    let mut rest = f.partial.as_slice();
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&rest[..nl]);
        tracing::info!(target: "instance", "[{}] {}", f.process_id, line.trim_end_matches('\r'));
        rest = &rest[nl + 1..];
    }
    f.partial = rest.to_vec();
    if f.offset >= MAX_LOG_BYTES && rotate(path).is_ok() {
        f.offset = 0;
    }
}

/// Copies the file to `<file>.1` and truncates it in place; writers keep
/// their O_APPEND descriptors and go on at the new end.
fn rotate(path: &Path) -> std::io::Result<()> {
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)
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
    fn rotation_keeps_the_old_content_and_empties_the_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(&p, "data\n").unwrap();
        rotate(&p).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("x.log.1")).unwrap(),
            "data\n"
        );
        assert_eq!(log_len(&p), 0);
    }
}
