//! Files as the tests write and read them: whole-file reads that never
//! fail on a missing file, and writes in place or through a temporary file
//! and a rename (what an operator's deploy does).

use std::fs;
use std::path::Path;

/// Number of lines in `path` (0 if it does not exist).
pub fn count_lines(path: impl AsRef<Path>) -> usize {
    fs::read(path.as_ref())
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Contents of `path`, lossily decoded ("" if it does not exist).
pub fn read_lossy(path: impl AsRef<Path>) -> String {
    fs::read(path.as_ref())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `path`, lossily decoded ("" if unreadable): a
/// failure report must not read a runaway log whole.
pub fn read_end_lossy(path: impl AsRef<Path>, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = fs::File::open(path.as_ref()) else {
        return String::new();
    };
    let start = f.metadata().map_or(0, |m| m.len()).saturating_sub(max);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Size of `path` in bytes (0 if it does not exist).
pub fn file_len(path: impl AsRef<Path>) -> u64 {
    fs::metadata(path.as_ref()).map_or(0, |m| m.len())
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Writes `path` with `mode`, in place.
pub fn write_file_mode(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `.<name>.tmp` next to `path` (mode 0644), then renames it over
/// `path`: readers see the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &str) {
    write_atomic_mode(path, contents, 0o644);
}

/// [`write_atomic`] with a file mode (0o755 for an executable).
pub fn write_atomic_mode(path: &Path, contents: &str, mode: u32) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{} has no file name", path.display()));
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file_mode(&tmp, contents, mode);
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}
