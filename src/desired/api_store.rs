//! Persistence of API declarations under `--state-dir`, so that they
//! survive a launcher restart. Written atomically (temp file, fsync, rename).
//!
//! Owns the one file; knows nothing of processes.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::spec::InstanceSpec;

/// File name inside the state directory.
pub const API_STORE_FILE: &str = "api-instances.json";

/// A failure to read or write the store, with its path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StoreError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// The persisted API declarations.
#[derive(Debug, Clone)]
pub struct ApiStore {
    path: PathBuf,
}

impl ApiStore {
    /// A store in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        ApiStore {
            path: state_dir.join(API_STORE_FILE),
        }
    }

    fn err(&self, reason: impl ToString) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// Loads the declarations; a missing file is an empty store.
    pub fn load(&self) -> Result<Vec<InstanceSpec>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| self.err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Replaces the stored declarations.
    pub fn save(&self, specs: &[InstanceSpec]) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(specs).map_err(|e| self.err(e))?;
        let tmp = self.path.with_extension("json.tmp");
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
    use crate::spec::{InstanceKey, Isolation};
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn declarations_round_trip_through_the_file() {
        let t = tempfile::tempdir().unwrap();
        let store = ApiStore::new(t.path());
        assert!(store.load().unwrap().is_empty());
        let key = InstanceKey::new("p", Isolation::Session, "t", "u").unwrap();
        let mut config = BTreeMap::new();
        config.insert("A".into(), "b".into());
        let spec = InstanceSpec::new(key, config, Some(Duration::from_secs(3))).unwrap();
        store.save(std::slice::from_ref(&spec)).unwrap();
        assert_eq!(store.load().unwrap(), vec![spec]);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(API_STORE_FILE), "{not json").unwrap();
        let e = ApiStore::new(t.path()).load().unwrap_err();
        assert!(e.to_string().contains(API_STORE_FILE));
    }
}
