//! A test's files: `desired/<name>` written in place or through a rename,
//! pattern manifests replaced as a deploy does, the instances' logs under
//! `<state-dir>/logs`, and the process table.

use std::fs;
use std::path::PathBuf;

use serde_json::Value;

use super::TestEnv;
use crate::files::{read_lossy, write_atomic};
use crate::manifest::PatternSpec;
use crate::wait::{WAIT, wait_until};

impl TestEnv {
    /// `desired/<name>`.
    pub fn desired_path(&self, name: &str) -> PathBuf {
        self.desired_dir.join(name)
    }

    /// Writes `desired/<name>` in place (create or truncate, write, close).
    pub fn write_desired(&self, name: &str, contents: &str) {
        let path = self.desired_path(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `desired/.<name>.tmp`, then renames it to `desired/<name>`.
    pub fn write_desired_via_rename(&self, name: &str, contents: &str) {
        write_atomic(&self.desired_path(name), contents);
    }

    /// Deletes `desired/<name>`.
    pub fn remove_desired(&self, name: &str) {
        let path = self.desired_path(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// `patterns/<dir>/manifest.yaml`.
    pub fn manifest_path(&self, dir: &str) -> PathBuf {
        self.patterns_dir.join(dir).join("manifest.yaml")
    }

    /// Writes `spec` to `patterns/<spec.name>/manifest.yaml` (temporary file
    /// and rename; the directory is created if missing).
    pub fn write_pattern(&self, spec: &PatternSpec) {
        let dir = self.patterns_dir.join(&spec.name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        write_atomic(
            &dir.join("manifest.yaml"),
            &spec.to_yaml(self.ports.health_port()),
        );
    }

    /// `<state-dir>/logs/<process_id>.log`.
    pub fn instance_log_path(&self, process_id: &str) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{process_id}.log"))
    }

    /// `<state-dir>/logs/<process_id>.log` ("" if absent).
    pub fn instance_log(&self, process_id: &str) -> String {
        read_lossy(self.instance_log_path(process_id))
    }

    /// Waits until `<state-dir>/processes.json` records each of `pids`,
    /// and returns its entries. The launcher writes the table on a thread
    /// of its own shortly after each change, so a table read right after
    /// an answer (before a `kill -9`, say) may be a moment old.
    pub fn wait_table_records(&self, pids: &[i64]) -> Vec<Value> {
        let path = self.state_dir.join("processes.json");
        let entries = || serde_json::from_str::<Vec<Value>>(&read_lossy(&path)).unwrap_or_default();
        let recorded = || {
            let entries = entries();
            pids.iter()
                .all(|p| entries.iter().any(|e| e["pid"].as_i64() == Some(*p)))
        };
        assert!(
            wait_until(WAIT, recorded),
            "{} never recorded pids {pids:?}: {}",
            path.display(),
            read_lossy(&path)
        );
        entries()
    }
}
