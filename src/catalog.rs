//! The catalog: the patterns found in `--patterns-dir`, one sub-directory
//! each with a `manifest.yaml`, reloaded while the launcher runs.
//!
//! Reads manifests and hashes executables; decides nothing about
//! instances. A manifest that becomes invalid keeps its last good version
//! in the catalog.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::spec::manifest::{Pattern, parse_manifest};
use crate::spec::yaml::{YamlError, read_limited};

/// Name of the manifest file inside a pattern directory.
pub const MANIFEST_FILE: &str = "manifest.yaml";

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
    /// A manifest that is invalid; it is skipped (or its last good version
    /// stays).
    #[error("invalid manifest {error}{}", if *.kept { " (its last good version stays in force)" } else { "" })]
    Invalid {
        /// What is wrong, where.
        error: YamlError,
        /// A previous valid version is kept.
        kept: bool,
    },
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

/// The state of one manifest file, for ListSources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestStatus {
    /// The manifest's path as shown to users.
    pub path: String,
    /// The pattern it defines (or defined, when now invalid and kept).
    pub pattern: Option<String>,
    /// Why its current content is refused.
    pub error: Option<YamlError>,
}

/// Size and modification time of an executable, and its content hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExeStamp {
    len: u64,
    mtime_ns: i128,
    hash: u64,
}

/// Known, valid patterns by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    patterns: BTreeMap<String, Arc<Pattern>>,
    manifests: Vec<ManifestStatus>,
    stamps: HashMap<PathBuf, ExeStamp>,
}

impl Catalog {
    /// Builds a catalog from patterns directly (tests, embedding).
    pub fn from_patterns(patterns: impl IntoIterator<Item = Pattern>) -> Self {
        Catalog {
            patterns: patterns
                .into_iter()
                .map(|p| (p.name.clone(), Arc::new(p)))
                .collect(),
            ..Catalog::default()
        }
    }

    /// Scans `dir`: every sub-directory with a manifest. Directories are
    /// visited in name order, so "first discovered" is deterministic.
    pub fn discover(dir: &Path) -> (Catalog, Vec<DiscoveryError>) {
        Catalog::default().reload(dir)
    }

    /// Scans `dir` again. A manifest that is now invalid keeps the version
    /// this catalog has of it; executables whose size and mtime did not
    /// change are not hashed again.
    pub fn reload(&self, dir: &Path) -> (Catalog, Vec<DiscoveryError>) {
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
        let mut next = Catalog::default();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for sub in subdirs {
            let file = sub.join(MANIFEST_FILE);
            if !file.is_file() {
                continue;
            }
            let display = file.display().to_string();
            let parsed = read_limited(&file, &display)
                .and_then(|text| parse_manifest(&text, &display, &sub));
            let (pattern, error) = match parsed {
                Ok(mut p) => {
                    p.exe_hash = self.hash_executable(&p.executable, &mut next.stamps);
                    // An unchanged pattern keeps its Arc: the planner
                    // compares pointers first.
                    let same = self
                        .patterns
                        .get(&p.name)
                        .filter(|old| ***old == p)
                        .cloned();
                    (Some(same.unwrap_or_else(|| Arc::new(p))), None)
                }
                Err(e) => {
                    let kept = self.patterns.values().find(|p| p.dir == sub).cloned();
                    errors.push(DiscoveryError::Invalid {
                        error: e.clone(),
                        kept: kept.is_some(),
                    });
                    if let Some(k) = &kept {
                        next.stamps.extend(
                            self.stamps
                                .get(&k.executable)
                                .map(|s| (k.executable.clone(), *s)),
                        );
                    }
                    (kept, Some(e))
                }
            };
            next.manifests.push(ManifestStatus {
                path: display.clone(),
                pattern: pattern.as_ref().map(|p| p.name.clone()),
                error,
            });
            let Some(p) = pattern else { continue };
            if let Some(kept) = origin.get(&p.name) {
                errors.push(DiscoveryError::Duplicate {
                    name: p.name.clone(),
                    kept: kept.clone(),
                    ignored: display.clone(),
                });
                if let Some(m) = next.manifests.last_mut() {
                    m.error = Some(YamlError::file(
                        &display,
                        format!("duplicate pattern name {:?}: {kept} is used", p.name),
                    ));
                }
                continue;
            }
            origin.insert(p.name.clone(), display);
            next.patterns.insert(p.name.clone(), p);
        }
        (next, errors)
    }

    /// The hash of an executable's content and mode, reusing the previous
    /// content hash when its size and mtime are unchanged. 0 when it cannot
    /// be read. A `chmod +x` is a change: it closes the circuit of the
    /// pattern's instances, as a rebuild does.
    fn hash_executable(&self, path: &Path, stamps: &mut HashMap<PathBuf, ExeStamp>) -> u64 {
        let Ok(meta) = std::fs::metadata(path) else {
            return 0;
        };
        let content = self.hash_content(path, &meta, stamps);
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(content);
        h.write_u32(meta.mode() & 0o7777);
        h.finish()
    }

    fn hash_content(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        stamps: &mut HashMap<PathBuf, ExeStamp>,
    ) -> u64 {
        let len = meta.len();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        if let Some(s) = self.stamps.get(path)
            && s.len == len
            && s.mtime_ns == mtime_ns
        {
            stamps.insert(path.to_path_buf(), *s);
            return s.hash;
        }
        let Some(hash) = hash_file(path) else {
            return 0;
        };
        stamps.insert(
            path.to_path_buf(),
            ExeStamp {
                len,
                mtime_ns,
                hash,
            },
        );
        hash
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

    /// Every manifest file found, with its state.
    pub fn manifests(&self) -> &[ManifestStatus] {
        &self.manifests
    }
}

fn hash_file(path: &Path) -> Option<u64> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(h.finish());
        }
        h.write(&buf[..n]);
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
        assert!(errors.iter().any(
            |e| matches!(e, DiscoveryError::Invalid { error, kept: false } if error.line == Some(1))
        ));
        assert_eq!(cat.manifests().len(), 4);
        assert_eq!(
            cat.manifests().iter().filter(|m| m.error.is_some()).count(),
            2
        );
    }

    #[test]
    fn a_manifest_broken_by_an_edit_keeps_its_last_good_version() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        let (cat, _) = Catalog::discover(t.path());
        write(t.path(), "a", "name: alpha\nversion: [\n");
        let (cat, errors) = cat.reload(t.path());
        assert_eq!(cat.get("alpha").unwrap().version, "1.0.0");
        assert!(matches!(
            errors[..],
            [DiscoveryError::Invalid { kept: true, .. }]
        ));
        assert!(cat.manifests()[0].error.is_some());
        std::fs::remove_dir_all(t.path().join("a")).unwrap();
        let (cat, _) = cat.reload(t.path());
        assert!(cat.get("alpha").is_none());
    }

    #[test]
    fn a_rebuilt_executable_changes_the_pattern_and_a_touched_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        let exe = t.path().join("a").join("x");
        std::fs::write(&exe, "version one").unwrap();
        let (cat, _) = Catalog::discover(t.path());
        let first = cat.get("alpha").unwrap().exe_hash;
        assert_ne!(first, 0);
        // Same content, new mtime: same pattern.
        std::fs::write(&exe, "version one").unwrap();
        let (cat, _) = cat.reload(t.path());
        assert_eq!(cat.get("alpha").unwrap().exe_hash, first);
        std::fs::write(&exe, "version two!").unwrap();
        let (cat, _) = cat.reload(t.path());
        assert_ne!(cat.get("alpha").unwrap().exe_hash, first);
    }

    #[test]
    fn a_chmod_of_the_executable_changes_the_pattern() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        let exe = t.path().join("a").join("x");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (cat, _) = Catalog::discover(t.path());
        let before = cat.get("alpha").unwrap().exe_hash;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (cat, _) = cat.reload(t.path());
        assert_ne!(cat.get("alpha").unwrap().exe_hash, before);
    }
}
