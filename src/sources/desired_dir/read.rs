//! Reading one desired-state file as the watcher needs it: without ever
//! blocking (opened non-blocking, regular files only), within the size
//! budget of [`MAX_FILE_BYTES`], as UTF-8; and the metadata that tells
//! whether its content may have changed since.
//!
//! Only reads: it never writes, creates or locks a file, does not parse
//! the text (that is [`super::parse`]'s) and does not decide when a file is
//! read (that is [`super::watcher`]'s).

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::spec::yaml::{MAX_FILE_BYTES, YamlError};

/// Metadata that changes whenever the file's content may have: a rescan
/// skips reading a file whose metadata is what it was when last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    pub(super) fn of(m: &Metadata) -> FileId {
        FileId {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// A file as it is now.
pub(super) enum Contents {
    /// No such file.
    Absent,
    /// The file, read or not.
    Got {
        /// Its metadata when it could be opened.
        id: Option<FileId>,
        /// Whether it was opened (which inotify reports).
        opened: bool,
        /// The text, or why it cannot be had.
        text: Result<String, YamlError>,
    },
}

/// Reads a desired-state file like [`crate::spec::yaml::read_limited`]
/// does, but without ever blocking: the file is opened non-blocking and
/// must be a regular file (a FIFO named `x.yaml` would hang a plain open).
pub(super) fn read_file(path: &Path, display: &str) -> Contents {
    let failed = |id, opened, message: String| Contents::Got {
        id,
        opened,
        text: Err(YamlError::file(display, message)),
    };
    let file: File = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Contents::Absent;
        }
        Err(e) => return failed(None, false, e.to_string()),
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return failed(None, true, e.to_string()),
    };
    if !meta.is_file() {
        return failed(None, true, "not a regular file".into());
    }
    let id = Some(FileId::of(&meta));
    let mut buf = Vec::new();
    if let Err(e) = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf) {
        return failed(id, true, e.to_string());
    }
    if buf.len() as u64 > MAX_FILE_BYTES {
        return failed(
            id,
            true,
            format!("file is larger than the limit of {MAX_FILE_BYTES} bytes"),
        );
    }
    match String::from_utf8(buf) {
        Ok(text) => Contents::Got {
            id,
            opened: true,
            text: Ok(text),
        },
        Err(e) => failed(id, true, format!("not UTF-8: {e}")),
    }
}

/// True when the file was modified less than `within` ago (a timestamp in
/// the future counts as old, or it would be deferred forever).
pub(super) fn modified_within(m: &Metadata, within: Duration) -> bool {
    m.modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < within)
}
