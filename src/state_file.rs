//! Small JSON files under `--state-dir` (API declarations, the process
//! table): read whole, replaced atomically (temp file, fsync, rename), so a
//! crash never leaves half a file. Errors carry the path.

use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A failure to read or write a state file, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StateFileError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
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

    fn err(&self, reason: impl ToString) -> StateFileError {
        StateFileError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Reads the items; a missing file holds none.
    pub fn load(&self) -> Result<Vec<T>, StateFileError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Replaces the items.
    pub fn save(&self, items: &[T]) -> Result<(), StateFileError> {
        let json = serde_json::to_vec_pretty(items).map_err(|e| self.err(e))?;
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.err(e))
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

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("x.json"), "{not json").unwrap();
        let e = JsonFile::<String>::new(t.path(), "x.json")
            .load()
            .unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
    }
}
