//! Persistence of API declarations under `--state-dir`, so that they
//! survive a launcher restart. Written atomically (temp file, fsync, rename).
//!
//! Owns the one file; knows nothing of processes.

use std::path::Path;

use crate::sources::state_file::{JsonFile, StateFileError};
use crate::spec::InstanceSpec;

/// File name inside the state directory.
pub const API_STORE_FILE: &str = "api-instances.json";

/// A failure to read or write the store, with its path.
pub type StoreError = StateFileError;

/// The persisted API declarations.
#[derive(Debug, Clone)]
pub struct ApiStore {
    file: JsonFile<InstanceSpec>,
}

impl ApiStore {
    /// A store in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        ApiStore {
            file: JsonFile::new(state_dir, API_STORE_FILE),
        }
    }

    /// Loads the declarations; a missing file is an empty store.
    pub fn load(&self) -> Result<Vec<InstanceSpec>, StoreError> {
        self.file.load()
    }

    /// Replaces the stored declarations.
    pub fn save(&self, specs: &[InstanceSpec]) -> Result<(), StoreError> {
        self.file.save(specs)
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
}
