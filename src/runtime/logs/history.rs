//! Reading an instance's log back: its last lines across the kept
//! generations (`<file>.N` ... `<file>.1`, then the live file, read as one
//! output), oldest first, with bounded memory whatever the files hold.
//!
//! The start of the last lines is found by reading backwards in blocks;
//! the lines are then read forwards a chunk at a time, cut at
//! [`MAX_LINE`] as the echo cuts them. The files are opened together
//! between two rotations (the [`Generations`] seqlock), so that none is
//! missed or read twice; if the live file is rotated while it is read,
//! the rest of it is read from the `<file>.1` it became.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::MAX_LINE;
use super::follow::MARKER;
use super::lines::{self, LineCutter};
use super::rotation::{Generations, Seen, suffixed};

/// Most bytes read at a time, backwards or forwards.
const CHUNK: usize = 64 << 10;

/// How many times the files are opened again when a rotation came
/// between the opens.
const OPEN_TRIES: usize = 5;

/// How long to wait for a rotation under way to end.
const ROTATING: Duration = Duration::from_millis(2);
const ROTATING_TRIES: usize = 50;

/// One line of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// The line (see [`lines::text`]).
    pub line: String,
    /// When the file it was read from was last written.
    pub time: SystemTime,
}

/// One file of the history.
struct Part {
    file: File,
    /// Its length when opened: what is read of it.
    len: u64,
    time: SystemTime,
    /// The live file (rotated in place), not a kept generation.
    live: bool,
}

/// The last lines of one instance's log, read a chunk at a time.
pub struct History {
    path: PathBuf,
    /// Oldest first; the live file last.
    parts: Vec<Part>,
    idx: usize,
    pos: u64,
    cutter: LineCutter,
    follow: bool,
    generations: Option<Arc<Generations>>,
    seen: Option<Seen>,
    end: u64,
    buf: Vec<u8>,
    done: bool,
}

impl History {
    /// The last `tail` lines (all that is kept with None) of the log at
    /// `path` and its `keep` generations; `generations` are the file's
    /// rotations if it is followed. With `follow`, an unfinished last line
    /// is left for the follower; else it is the last line. Blocks on the
    /// file system.
    pub fn open(
        path: &Path,
        keep: usize,
        generations: Option<Arc<Generations>>,
        tail: Option<usize>,
        follow: bool,
    ) -> History {
        let mut parts = Vec::new();
        let mut seen = None;
        for _ in 0..OPEN_TRIES {
            seen = generations.as_deref().and_then(stable);
            parts = open_parts(path, keep);
            if let (Some(g), Some(s)) = (&generations, seen)
                && !g.unchanged(s)
            {
                continue;
            }
            break;
        }
        let live = parts.last().filter(|p| p.live).map_or(0, |p| p.len);
        let end = seen.map_or(0, |s| s.start) + live;
        parts.retain(|p| p.len > 0);
        let (idx, pos) = match tail {
            Some(n) => find_start(&parts, n.max(1), follow),
            None => (0, 0),
        };
        History {
            path: path.to_path_buf(),
            parts,
            idx,
            pos,
            cutter: LineCutter::new(MAX_LINE),
            follow,
            generations,
            seen,
            end,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Where the history ends in the output of the file since it was
    /// first followed (comparable with [`super::follow::LogEvent::pos`]
    /// of the same [`History::epoch`]).
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The following of the file the history was read in, if it was
    /// followed.
    pub fn epoch(&self) -> Option<u64> {
        self.generations.as_ref().map(|g| g.epoch())
    }

    /// Appends the lines of the next chunk to `out`; false once the
    /// history is over (nothing appended). Blocks on the file system.
    pub fn next_lines(&mut self, out: &mut Vec<HistoryLine>) -> bool {
        if self.done {
            return false;
        }
        if self.buf.is_empty() {
            self.buf = vec![0; CHUNK];
        }
        while let Some(part) = self.parts.get(self.idx) {
            if self.pos >= part.len {
                self.idx += 1;
                self.pos = 0;
                continue;
            }
            let want = (part.len - self.pos).min(CHUNK as u64) as usize;
            let n = read_at(&part.file, self.pos, &mut self.buf[..want]);
            let rotated = part.live
                && match (&self.generations, self.seen) {
                    (Some(g), Some(s)) => !g.unchanged(s),
                    _ => false,
                };
            if rotated || n == 0 {
                self.rescue(out);
                return true;
            }
            let time = part.time;
            self.cutter.feed(&self.buf[..n], |line, cut| {
                out.push(HistoryLine {
                    line: lines::text(line, cut, MAX_LINE),
                    time,
                });
            });
            self.pos += n as u64;
            return true;
        }
        if !self.follow {
            let time = self.parts.last().map_or(SystemTime::UNIX_EPOCH, |p| p.time);
            self.cutter.flush(|line, cut| {
                out.push(HistoryLine {
                    line: lines::text(line, cut, MAX_LINE),
                    time,
                });
            });
        }
        self.done = true;
        self.buf = Vec::new();
        false
    }

    /// The live file was rotated (or cut short) while it was read: the
    /// rest of it is in the new `<file>.1` if that kept it whole, else it
    /// is skipped and said so.
    fn rescue(&mut self, out: &mut Vec<HistoryLine>) {
        let Some(part) = self.parts.get_mut(self.idx) else {
            return;
        };
        let old_start = self.seen.map(|s| s.start);
        let now = self.generations.as_deref().and_then(stable);
        let held = match (old_start, now) {
            (Some(a), Some(b)) => b.start.checked_sub(a),
            _ => None,
        };
        let kept = open_regular(&suffixed(&self.path, ".1"));
        if let (Some(held), Some((file, len, _))) = (held, kept)
            && part.live
            && len == held
            && len >= part.len
        {
            part.file = file;
            part.live = false;
            return;
        }
        let lost = part.len - self.pos;
        out.push(HistoryLine {
            line: format!("{MARKER}{lost} bytes of this log rotated away while being read]"),
            time: part.time,
        });
        self.cutter.restart();
        self.idx += 1;
        self.pos = 0;
    }
}

/// The sequence number of `g` outside a rotation (waits a little for one
/// under way to end); None if it does not end.
fn stable(g: &Generations) -> Option<Seen> {
    for _ in 0..ROTATING_TRIES {
        if let Some(s) = g.stable() {
            return Some(s);
        }
        std::thread::sleep(ROTATING);
    }
    None
}

/// The kept generations, oldest first, then the live file.
fn open_parts(path: &Path, keep: usize) -> Vec<Part> {
    let kept = (1..=keep)
        .rev()
        .filter_map(|n| open_regular(&suffixed(path, &format!(".{n}"))).map(|f| (f, false)));
    let live = open_regular(path).map(|f| (f, true));
    kept.chain(live)
        .map(|((file, len, time), live)| Part {
            file,
            len,
            time,
            live,
        })
        .collect()
}

/// `path` opened for reading if it is a regular file with no other name
/// (not through a symbolic link, not a hard link a process made to some
/// other file), with its length and modification time.
fn open_regular(path: &Path) -> Option<(File, u64, SystemTime)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file
        .metadata()
        .ok()
        .filter(|m| m.is_file() && m.nlink() == 1)?;
    let time = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Some((file, meta.len(), time))
}

/// Where the last `want` lines of `parts` (read as one output) begin: the
/// part and the offset in it. An unfinished last line counts unless
/// `follow`.
fn find_start(parts: &[Part], want: usize, follow: bool) -> (usize, u64) {
    let Some(last) = parts.last() else {
        return (0, 0);
    };
    let mut byte = [0u8; 1];
    let ends_with_newline =
        last.len > 0 && read_at(&last.file, last.len - 1, &mut byte) == 1 && byte[0] == b'\n';
    // The newline before the first line wanted, counted from the end.
    let mut newlines = if follow || ends_with_newline {
        want + 1
    } else {
        want
    };
    let mut block = vec![0u8; CHUNK];
    for (i, part) in parts.iter().enumerate().rev() {
        let mut hi = part.len;
        while hi > 0 {
            let lo = hi.saturating_sub(CHUNK as u64);
            let len = (hi - lo) as usize;
            if read_at(&part.file, lo, &mut block[..len]) < len {
                // Cut short by a rotation: from here.
                return (i, hi);
            }
            for (j, b) in block[..len].iter().enumerate().rev() {
                if *b == b'\n' {
                    newlines -= 1;
                    if newlines == 0 {
                        return (i, lo + j as u64 + 1);
                    }
                }
            }
            hi = lo;
        }
    }
    (0, 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn all(mut h: History) -> Vec<String> {
        let mut out = Vec::new();
        while h.next_lines(&mut out) {}
        out.into_iter().map(|l| l.line).collect()
    }

    fn numbered(from: usize, to: usize) -> String {
        (from..to).map(|i| format!("line {i}\n")).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_last_lines_of_the_live_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(&p, "a\nb\n\nc\n").unwrap();
        assert_eq!(
            all(History::open(&p, 3, None, Some(2), false)),
            strings(&["", "c"])
        );
        assert_eq!(
            all(History::open(&p, 3, None, Some(10), false)),
            strings(&["a", "b", "", "c"])
        );
        assert_eq!(
            all(History::open(&p, 3, None, None, false)),
            strings(&["a", "b", "", "c"])
        );
        assert!(
            all(History::open(
                &t.path().join("none.log"),
                3,
                None,
                None,
                false
            ))
            .is_empty()
        );
    }

    #[test]
    fn links_planted_in_the_logs_directory_are_not_read() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        let secret = t.path().join("secret");
        std::fs::write(&secret, "secret\n").unwrap();
        std::fs::hard_link(&secret, suffixed(&p, ".2")).unwrap();
        std::os::unix::fs::symlink(&secret, suffixed(&p, ".1")).unwrap();
        std::fs::write(&p, "mine\n").unwrap();
        assert_eq!(
            all(History::open(&p, 3, None, None, false)),
            strings(&["mine"])
        );
    }

    #[test]
    fn an_unfinished_last_line_is_a_line_unless_followed() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(&p, "a\nb\r\nhalf").unwrap();
        assert_eq!(
            all(History::open(&p, 3, None, Some(2), false)),
            strings(&["b", "half"])
        );
        let followed = History::open(&p, 3, None, Some(2), true);
        assert_eq!(followed.end(), 9);
        assert_eq!(all(followed), strings(&["a", "b"]));
    }

    #[test]
    fn the_tail_reads_back_through_the_generations_oldest_first() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        std::fs::write(suffixed(&p, ".3"), numbered(0, 1000)).unwrap();
        // A line split by the rotation is read whole.
        let two = numbered(1000, 2000) + "line 20";
        std::fs::write(suffixed(&p, ".2"), two).unwrap();
        std::fs::write(
            suffixed(&p, ".1"),
            "00\n".to_string() + &numbered(2001, 3000),
        )
        .unwrap();
        std::fs::write(&p, numbered(3000, 3010)).unwrap();
        // Beyond --log-keep: not read.
        std::fs::write(suffixed(&p, ".4"), "too old\n").unwrap();
        let expect = |from, to| (from..to).map(|i| format!("line {i}")).collect::<Vec<_>>();
        assert_eq!(
            all(History::open(&p, 3, None, Some(1500), false)),
            expect(1510, 3010)
        );
        assert_eq!(
            all(History::open(&p, 3, None, None, false)),
            expect(0, 3010)
        );
        assert_eq!(
            all(History::open(&p, 3, None, Some(5000), false)),
            expect(0, 3010)
        );
        // With one generation kept, the line split by its rotation begins
        // in the middle.
        let mut one = strings(&["00"]);
        one.extend(expect(2001, 3010));
        assert_eq!(all(History::open(&p, 1, None, Some(5000), false)), one);
    }

    #[test]
    fn an_endless_line_is_cut_and_read_in_bounded_chunks() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        let mut data = b"first\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 16 << 20));
        data.extend(b"\nlast\n");
        std::fs::write(&p, &data).unwrap();
        let mut h = History::open(&p, 3, None, Some(2), false);
        let mut lines = Vec::new();
        let mut out = Vec::new();
        while h.next_lines(&mut out) {
            assert!(out.iter().map(|l| l.line.len()).sum::<usize>() < 2 * MAX_LINE);
            lines.append(&mut out);
        }
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0].line,
            format!("{} [line cut at {MAX_LINE} bytes]", "x".repeat(MAX_LINE))
        );
        assert_eq!(lines[1].line, "last");
        // Without a newline at all: one cut line.
        std::fs::write(&p, vec![b'y'; 1 << 20]).unwrap();
        let got = all(History::open(&p, 3, None, Some(5), false));
        assert_eq!(got.len(), 1);
        assert!(got[0].starts_with("yyyy") && got[0].ends_with("bytes]"));
    }

    #[test]
    fn a_rotation_while_reading_goes_on_in_the_generation_the_file_became() {
        use super::super::rotation::Rotator;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        let generations = Arc::new(Generations::default());
        let data = numbered(0, 20_000);
        std::fs::write(&p, &data).unwrap();
        let mut h = History::open(&p, 3, Some(generations.clone()), None, false);
        assert_eq!(h.end(), data.len() as u64);
        let mut out = Vec::new();
        assert!(h.next_lines(&mut out));
        // Rotated (kept whole) after the first chunk, then written again.
        let live = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut r = Rotator::new(data.len() as u64, 3);
        r.on_change(&p, &live, &generations).unwrap().unwrap();
        std::fs::write(&p, "new generation\n").unwrap();
        while h.next_lines(&mut out) {}
        let got: Vec<String> = out.into_iter().map(|l| l.line).collect();
        let expect: Vec<String> = (0..20_000).map(|i| format!("line {i}")).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn a_rotation_that_did_not_keep_the_file_is_said() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.log");
        let generations = Arc::new(Generations::default());
        std::fs::write(&p, numbered(0, 20_000)).unwrap();
        let mut h = History::open(&p, 3, Some(generations.clone()), None, false);
        let mut out = Vec::new();
        assert!(h.next_lines(&mut out));
        let read = out.len();
        // Truncated by someone else.
        std::fs::write(&p, "").unwrap();
        while h.next_lines(&mut out) {}
        assert!(out.len() == read + 1, "{} lines after {read}", out.len());
        assert!(out[read].line.starts_with(MARKER), "{}", out[read].line);
    }
}
