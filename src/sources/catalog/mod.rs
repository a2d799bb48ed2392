//! The catalog: the patterns found in `--patterns-dir`, one sub-directory
//! each with a `manifest.yaml`, reloaded while the launcher runs.
//!
//! Reads manifests and hashes executables; decides nothing about
//! instances. A manifest that becomes invalid keeps its last good version
//! in the catalog; a directory, manifest or executable that cannot be read
//! (for any reason but being gone) changes nothing. When to look again is
//! [`watcher`]'s to say.

mod accounts;
pub mod watcher;

pub use watcher::watch_patterns;

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
    /// The patterns directory, or a manifest in it, cannot be read.
    /// Unless it is gone, the patterns known from it stay.
    #[error("cannot read {path}: {reason}{}", if *.kept { " (the patterns known from it stay in force)" } else { "" })]
    Unreadable {
        /// The directory or manifest.
        path: String,
        /// The OS error.
        reason: String,
        /// Patterns known from it are kept.
        kept: bool,
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
    mode: u32,
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
    /// change are not hashed again. A directory or manifest that cannot be
    /// read for any reason but being gone (EMFILE, ENOMEM, EACCES, EIO...)
    /// was not removed: what this catalog has from it stays.
    pub fn reload(&self, dir: &Path) -> (Catalog, Vec<DiscoveryError>) {
        let mut errors = Vec::new();
        let listed = std::fs::read_dir(dir).and_then(|rd| {
            rd.map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()
        });
        let entries = match listed {
            Ok(entries) => entries,
            Err(e) => {
                let gone = is_gone(&e);
                errors.push(DiscoveryError::Unreadable {
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                    kept: !gone && !self.is_empty(),
                });
                if !gone {
                    return (self.clone(), errors);
                }
                Vec::new()
            }
        };
        // A directory, or an entry that cannot be looked at now: its
        // manifest's own look-up below tells whether it was removed.
        let mut subdirs: Vec<PathBuf> = entries
            .into_iter()
            .filter(|p| match std::fs::metadata(p) {
                Ok(m) => m.is_dir(),
                Err(e) => !is_gone(&e),
            })
            .collect();
        subdirs.sort();
        let mut next = Catalog::default();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for sub in subdirs {
            let file = sub.join(MANIFEST_FILE);
            let display = file.display().to_string();
            let (pattern, error) = match std::fs::metadata(&file) {
                Ok(m) if !m.is_file() => continue,
                Err(e) if is_gone(&e) => continue,
                Err(e) => {
                    let kept = self.kept_from(&sub, &mut next);
                    errors.push(DiscoveryError::Unreadable {
                        path: display.clone(),
                        reason: e.to_string(),
                        kept: kept.is_some(),
                    });
                    let error = YamlError::file(&display, format!("cannot read: {e}"));
                    (kept, Some(error))
                }
                Ok(_) => match read_limited(&file, &display)
                    .and_then(|text| parse_manifest(&text, &display, &sub))
                    .and_then(|p| accounts::resolve(p, &display))
                {
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
                        let kept = self.kept_from(&sub, &mut next);
                        errors.push(DiscoveryError::Invalid {
                            error: e.clone(),
                            kept: kept.is_some(),
                        });
                        (kept, Some(e))
                    }
                },
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

    /// The pattern this catalog has from the directory `sub`, with its
    /// executable's stamp carried into `next`.
    fn kept_from(&self, sub: &Path, next: &mut Catalog) -> Option<Arc<Pattern>> {
        let kept = self.patterns.values().find(|p| p.dir == sub).cloned();
        if let Some(k) = &kept {
            self.keep_stamp(&k.executable, &mut next.stamps);
        }
        kept
    }

    /// The previous hash of `path` (0 if none), its stamp kept as it was.
    fn keep_stamp(&self, path: &Path, stamps: &mut HashMap<PathBuf, ExeStamp>) -> u64 {
        match self.stamps.get(path) {
            Some(s) => {
                stamps.insert(path.to_path_buf(), *s);
                s.hash
            }
            None => 0,
        }
    }

    /// The hash of an executable's content and mode, reusing the previous
    /// one when its size, mtime and mode are unchanged. 0 when it is gone;
    /// the previous one when it cannot be read now (a failed read is not a
    /// rebuild). A `chmod +x` is a change: it closes the circuit of the
    /// pattern's instances, as a rebuild does.
    fn hash_executable(&self, path: &Path, stamps: &mut HashMap<PathBuf, ExeStamp>) -> u64 {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if is_gone(&e) => return 0,
            Err(_) => return self.keep_stamp(path, stamps),
        };
        let len = meta.len();
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let mode = meta.mode() & 0o7777;
        if let Some(s) = self.stamps.get(path)
            && s.len == len
            && s.mtime_ns == mtime_ns
            && s.mode == mode
        {
            stamps.insert(path.to_path_buf(), *s);
            return s.hash;
        }
        let content = match hash_file(path) {
            Ok(hash) => hash,
            Err(e) if is_gone(&e) => return 0,
            Err(_) => return self.keep_stamp(path, stamps),
        };
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(content);
        h.write_u32(mode);
        let hash = h.finish();
        stamps.insert(
            path.to_path_buf(),
            ExeStamp {
                len,
                mtime_ns,
                mode,
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

/// An error that means the path is not there (so neither is what it held).
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

fn hash_file(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut h = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finish());
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

    /// A symlink to itself: any look-up through it fails with ELOOP, an
    /// I/O error other than "not found" that root gets too.
    fn self_loop(path: &Path) {
        std::os::unix::fs::symlink(path.file_name().unwrap(), path).unwrap();
    }

    #[test]
    fn a_patterns_directory_that_cannot_be_read_keeps_its_patterns_and_a_gone_one_does_not() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("patterns");
        write(&dir, "a", &M.replace("NAME", "alpha"));
        write(&dir, "b", &M.replace("NAME", "beta"));
        let (cat, errors) = Catalog::discover(&dir);
        assert!(errors.is_empty(), "{errors:?}");
        std::fs::rename(&dir, t.path().join("moved")).unwrap();
        self_loop(&dir);
        let (kept, errors) = cat.reload(&dir);
        assert_eq!(kept.len(), 2);
        assert!(Arc::ptr_eq(
            kept.get("alpha").unwrap(),
            cat.get("alpha").unwrap()
        ));
        assert_eq!(kept.manifests(), cat.manifests());
        assert!(
            matches!(&errors[..], [DiscoveryError::Unreadable { kept: true, .. }]),
            "{errors:?}"
        );
        assert!(
            errors[0].to_string().contains("stay in force"),
            "{}",
            errors[0]
        );
        // Gone is gone.
        std::fs::remove_file(&dir).unwrap();
        let (gone, errors) = kept.reload(&dir);
        assert!(gone.is_empty());
        assert!(
            matches!(
                &errors[..],
                [DiscoveryError::Unreadable { kept: false, .. }]
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn a_manifest_or_pattern_directory_that_cannot_be_read_keeps_its_pattern() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        write(t.path(), "real-b", &M.replace("NAME", "beta"));
        std::os::unix::fs::symlink("real-b", t.path().join("b")).unwrap();
        let (cat, _) = Catalog::discover(t.path());
        assert_eq!(cat.len(), 2);
        // beta is found twice (b and real-b): the first one, b, is used.
        assert_eq!(cat.get("beta").unwrap().dir, t.path().join("b"));

        let manifest = t.path().join("a").join(MANIFEST_FILE);
        std::fs::remove_file(&manifest).unwrap();
        self_loop(&manifest);
        std::fs::remove_file(t.path().join("b")).unwrap();
        self_loop(&t.path().join("b"));
        let (next, errors) = cat.reload(t.path());
        assert!(Arc::ptr_eq(
            next.get("alpha").unwrap(),
            cat.get("alpha").unwrap()
        ));
        assert_eq!(next.get("beta").unwrap().dir, t.path().join("b"));
        let unreadable: Vec<_> = errors
            .iter()
            .filter(|e| matches!(e, DiscoveryError::Unreadable { kept: true, .. }))
            .collect();
        assert_eq!(unreadable.len(), 2, "{errors:?}");
        let status = |p: &Path| {
            let p = p.display().to_string();
            next.manifests()
                .iter()
                .find(|m| m.path == p)
                .cloned()
                .unwrap()
        };
        let a = status(&manifest);
        assert_eq!(a.pattern.as_deref(), Some("alpha"));
        assert!(a.error.unwrap().message.starts_with("cannot read: "));

        // Removed for real: dropped.
        std::fs::remove_file(&manifest).unwrap();
        let (next, _) = next.reload(t.path());
        assert!(next.get("alpha").is_none());
    }

    #[test]
    fn an_executable_that_cannot_be_read_is_not_a_rebuild() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "a", &M.replace("NAME", "alpha"));
        let exe = t.path().join("a").join("x");
        std::fs::write(&exe, "version one").unwrap();
        let (cat, _) = Catalog::discover(t.path());
        assert_ne!(cat.get("alpha").unwrap().exe_hash, 0);
        std::fs::remove_file(&exe).unwrap();
        self_loop(&exe);
        let (next, _) = cat.reload(t.path());
        assert!(Arc::ptr_eq(
            next.get("alpha").unwrap(),
            cat.get("alpha").unwrap()
        ));
        // Gone: a change (hash 0), as before.
        std::fs::remove_file(&exe).unwrap();
        let (next, _) = next.reload(t.path());
        assert_eq!(next.get("alpha").unwrap().exe_hash, 0);
    }

    /// The failure seen in the field: the launcher out of descriptors
    /// (EMFILE) during a rescan. In a child process of its own.
    #[test]
    fn a_rescan_without_descriptors_keeps_every_pattern() {
        const SEEN: &str = "rescan without descriptors kept the patterns";
        if !crate::test_util::in_child(
            "sources::catalog::tests::a_rescan_without_descriptors_keeps_every_pattern",
            SEEN,
        ) {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        for (d, n) in [("a", "alpha"), ("b", "beta"), ("c", "gamma")] {
            write(t.path(), d, &M.replace("NAME", n));
        }
        let (cat, _) = Catalog::discover(t.path());
        assert_eq!(cat.len(), 3);
        let held = crate::test_util::exhaust_fds();
        let (next, errors) = cat.reload(t.path());
        drop(held);
        assert_eq!(next.len(), 3, "{errors:?}");
        assert!(
            matches!(&errors[..], [DiscoveryError::Unreadable { kept: true, reason, .. }] if reason.contains("Too many open files")),
            "{errors:?}"
        );
        println!("{SEEN}: {}", errors[0]);
    }
}
