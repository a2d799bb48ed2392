//! The catalog: the patterns found in `--patterns-dir`, one sub-directory
//! each with a `manifest.yaml`.
//!
//! Reads manifests; decides nothing about instances.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::spec::manifest::{Pattern, parse_manifest};
use crate::spec::yaml::{YamlError, read_limited};

/// Name of the manifest file inside a pattern directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";

/// Known, valid patterns by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    patterns: BTreeMap<String, Arc<Pattern>>,
}

/// What a discovery pass found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The patterns directory itself cannot be read.
    #[error("cannot read patterns directory {dir}: {reason}")]
    Unreadable {
        /// The directory.
        dir: String,
        /// The OS error.
        reason: String,
    },
    /// A manifest that is invalid; it is skipped.
    #[error("invalid manifest {0}")]
    Invalid(YamlError),
    /// Two manifests with one name: the first discovered stays.
    #[error("duplicate pattern name {name:?}: {kept} is used, {ignored} is ignored")]
    Duplicate {
        /// The name.
        name: String,
        /// The manifest that stays.
        kept: String,
        /// The manifest that is skipped.
        ignored: String,
    },
}

impl Catalog {
    /// Builds a catalog from patterns directly (tests, embedding).
    pub fn from_patterns(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Catalog {
            patterns: patterns
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
        }
    }

    /// Scans `dir`: every sub-directory with a manifest. Directories are
    /// visited in name order, so "first discovered" is deterministic.
    pub fn discover(dir: &Path) -> (Catalog, Vec<DiscoveryError>) {
        let mut errors = Vec::new();
        let mut subdirs: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect(),
            Err(e) => {
                errors.push(DiscoveryError::Unreadable {
                    dir: dir.display().to_string(),
                    reason: e.to_string(),
                });
                Vec::new()
            }
        };
        subdirs.sort();
        let mut patterns: BTreeMap<String, Arc<Pattern>> = BTreeMap::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for sub in subdirs {
            let file = sub.join(MANIFEST_FILE);
            if !file.is_file() {
                continue;
            }
            let display = file.display().to_string();
            let parsed = read_limited(&file, &display)
                .and_then(|text| parse_manifest(&text, &display, &sub));
            match parsed {
                Ok(p) => {
                    if let Some(kept) = origin.get(&p.name) {
                        errors.push(DiscoveryError::Duplicate {
                            name: p.name.clone(),
                            kept: kept.clone(),
                            ignored: display,
                        });
                        continue;
                    }
                    origin.insert(p.name.clone(), display);
                    patterns.insert(p.name.clone(), Arc::new(p));
                }
                Err(e) => errors.push(DiscoveryError::Invalid(e)),
            }
        }
        (Catalog { patterns }, errors)
    }

    /// The pattern called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Pattern>> {
        self.patterns.get(name)
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// True when no pattern is known.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// All patterns in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Pattern>> {
        self.patterns.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, sub: &str, text: &str) {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::write(dir.join(sub).join(MANIFEST_FILE), text).unwrap();
    }

    const M: &str = "name: NAME\nversion: 1.0.0\nexecutable: ./x\nisolation_level: none\n";

    #[test]
    fn invalid_and_duplicate_manifests_are_reported_and_the_rest_load() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        write(t.path(), "b", &M.replace("NAME", "alpha"));
        write(t.path(), "c", "name: [broken\n");
        write(t.path(), "d", &M.replace("NAME", "delta"));
        std::fs::create_dir_all(t.path().join("empty")).unwrap();
        let (cat, errors) = Catalog::discover(t.path());
        assert_eq!(cat.len(), 2);
        assert_eq!(cat.get("alpha").unwrap().dir, t.path().join("a"));
        assert!(cat.get("delta").is_some());
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, DiscoveryError::Duplicate { name, .. } if name == "alpha"))
        );
        assert!(
            errors
                .iter()
                .any(|e| matches!(e, DiscoveryError::Invalid(y) if y.line == Some(1)))
        );
    }
}
