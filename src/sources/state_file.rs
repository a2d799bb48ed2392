//! Small JSON files under `--state-dir` (API declarations, the process
//! table): read whole, replaced atomically (a temp file of a unique name,
//! fsync, rename, fsync of the directory), so a crash never leaves half a
//! file and a failed write (a full disk) leaves no temp file. Files are
//! mode 0600 whatever the umask. Errors carry the path.
//!
//! Knows nothing of what the files hold beyond their serde types, nor of
//! processes.

use std::fs::{File, Permissions};
use std::io::Write;
use std::marker::PhantomData;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Makes the state directory the launcher's alone (mode 0700, whatever
/// the umask): it holds the process table and the API declarations. A
/// failure is logged, not fatal.
pub fn make_private(dir: &Path) {
    let mode = std::fs::metadata(dir).map(|m| m.permissions().mode() & 0o777);
    if mode.is_ok_and(|m| m != 0o700)
        && let Err(e) = std::fs::set_permissions(dir, Permissions::from_mode(0o700))
    {
        tracing::warn!("cannot make {} mode 0700: {e}", dir.display());
    }
}

/// A failure to read or write a state file, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StateFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub source: StateFileCause,
}

/// What went wrong with a state file.
#[derive(Debug, thiserror::Error)]
pub enum StateFileCause {
    /// Reading, writing, syncing or renaming it failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Its content is no JSON array of the expected items (or the items
    /// cannot be written as JSON).
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// A JSON array of `T` in one file.
#[derive(Debug, Clone)]
pub struct JsonFile<T> {
    path: PathBuf,
    _items: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    /// The file `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        JsonFile {
            path: dir.join(name),
            _items: PhantomData,
        }
    }

    fn err(&self, source: impl Into<StateFileCause>) -> StateFileError {
        StateFileError {
            path: self.path.clone(),
            source: source.into(),
        }
    }

    /// The directory holding the file.
    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    /// `.<name>.` and `.tmp`: what the names of its temp files start and
    /// end with.
    fn temp_affixes(&self) -> (String, &'static str) {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (format!(".{name}."), ".tmp")
    }

    /// Reads the items; a missing file holds none. Temp files a crash left
    /// in the middle of a write are removed.
    pub fn load(&self) -> Result<Vec<T>, StateFileError> {
        self.remove_stale_temps();
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    fn remove_stale_temps(&self) {
        let (prefix, suffix) = self.temp_affixes();
        let Ok(entries) = std::fs::read_dir(self.dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(suffix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Replaces the items. On any error the old file stays as it was and
    /// the temp file is removed.
    pub fn save(&self, items: &[T]) -> Result<(), StateFileError> {
        let (prefix, suffix) = self.temp_affixes();
        // Dropped (and so removed) on every early return.
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(suffix)
            .tempfile_in(self.dir())
            .map_err(|e| self.err(e))?;
        // Written as it is serialized, through a buffer: a table of a
        // thousand instances is never a second copy in memory.
        let write = |f: &mut File| -> Result<(), StateFileCause> {
            f.set_permissions(Permissions::from_mode(0o600))?;
            let mut out = std::io::BufWriter::new(&mut *f);
            serde_json::to_writer_pretty(&mut out, items)?;
            out.flush()?;
            drop(out);
            f.sync_all()?;
            Ok(())
        };
        write(tmp.as_file_mut()).map_err(|e| self.err(e))?;
        tmp.persist(&self.path).map_err(|e| self.err(e.error))?;
        // The rename is durable once the directory is: it happened, so a
        // failure here is reported but is no failed write.
        if let Err(e) = File::open(self.dir()).and_then(|d| d.sync_all()) {
            tracing::warn!("{}: cannot fsync its directory: {e}", self.path.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_a_missing_file_is_empty() {
        let t = tempfile::tempdir().unwrap();
        let f: JsonFile<String> = JsonFile::new(t.path(), "x.json");
        assert!(f.load().unwrap().is_empty());
        f.save(&["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(f.load().unwrap(), vec!["a", "b"]);
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_content() {
        let t = tempfile::tempdir().unwrap();
        let f: JsonFile<String> = JsonFile::new(t.path(), "x.json");
        f.save(&["old".to_string()]).unwrap();
        // A write that fails after the temp file exists: renaming over a
        // non-empty directory. (A full disk fails the same way, earlier.)
        let d: JsonFile<String> = JsonFile::new(t.path(), "d.json");
        std::fs::create_dir(t.path().join("d.json")).unwrap();
        std::fs::write(t.path().join("d.json").join("keep"), "").unwrap();
        let e = d.save(&["new".to_string()]).unwrap_err();
        assert!(e.to_string().contains("d.json"), "{e}");
        assert!(matches!(e.source, StateFileCause::Io(_)), "{e:?}");
        assert_eq!(names_in(t.path()), vec!["d.json", "x.json"]);
        assert_eq!(f.load().unwrap(), vec!["old"]);
    }

    #[test]
    fn files_are_0600_the_dir_0700_and_stale_temps_are_removed() {
        let t = tempfile::tempdir().unwrap();
        let f: JsonFile<String> = JsonFile::new(t.path(), "x.json");
        f.save(&["a".to_string()]).unwrap();
        let mode = std::fs::metadata(t.path().join("x.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dir = t.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        make_private(&dir);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        // What a crash in the middle of a write leaves.
        std::fs::write(t.path().join(".x.json.a1B2c3.tmp"), "[").unwrap();
        std::fs::write(t.path().join("other.tmp"), "").unwrap();
        assert_eq!(f.load().unwrap(), vec!["a"]);
        assert_eq!(names_in(t.path()), vec!["other.tmp", "state", "x.json"]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("x.json"), "{not json").unwrap();
        let e = JsonFile::<String>::new(t.path(), "x.json")
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
        assert!(matches!(e.source, StateFileCause::Json(_)), "{e:?}");
    }
}
