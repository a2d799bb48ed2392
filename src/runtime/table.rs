//! The process table under `--state-dir`: for each instance with a live
//! process, its pid, the process's start time, process group, cgroups and
//! ports, written atomically whenever it changes. A later launcher with the
//! same state directory reads it to adopt or reap those processes.
//!
//! A pid alone is never trusted: a process is the one recorded only when
//! its start time (from `/proc/<pid>/stat`) matches too.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::reconcile::observed::Ports;
use crate::sources::state_file::{JsonFile, StateFileError};
use crate::spec::InstanceSpec;

/// File name inside the state directory.
pub const TABLE_FILE: &str = "processes.json";

/// One recorded process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Instance.
    pub process_id: String,
    /// The spec it was started with.
    pub spec: InstanceSpec,
    /// Its pid (and process group id).
    pub pid: u32,
    /// Its start time, in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Its cgroup directories.
    pub cgroups: Vec<PathBuf>,
    /// `GRPC_PORT`.
    pub grpc_port: u16,
    /// `HEALTH_PORT`.
    pub health_port: u16,
}

impl Entry {
    /// The ports as the observed table keeps them.
    pub fn ports(&self) -> Ports {
        Ports {
            grpc: self.grpc_port,
            health: self.health_port,
        }
    }
}

/// A failure to read or write the table, with its path.
pub type TableError = StateFileError;

/// The table file.
#[derive(Debug, Clone)]
pub struct ProcessTable {
    file: JsonFile<Entry>,
}

impl ProcessTable {
    /// The table in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        ProcessTable {
            file: JsonFile::new(state_dir, TABLE_FILE),
        }
    }

    /// Reads the entries; a missing file is an empty table.
    pub fn load(&self) -> Result<Vec<Entry>, TableError> {
        self.file.load()
    }

    /// Replaces the table (temp file, fsync, rename).
    pub fn save(&self, entries: &[Entry]) -> Result<(), TableError> {
        self.file.save(entries)
    }
}

/// The start time of a live process (clock ticks after boot), or `None`
/// when there is no such process or it is a zombie.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line, unless the state (field 3) is Z
/// or X.
fn parse_stat(stat: &str) -> Option<u64> {
    parse_stat_group(stat).map(|(_, start)| start)
}

/// The process group (field 5) and start time (field 22) of a live
/// process. The command name (field 2) may hold spaces and parentheses,
/// so fields are counted from the last ')'.
fn parse_stat_group(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state come fields 4..: ppid, then the process group.
    let pgid = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(22 - 6)?.parse().ok()?;
    Some((pgid, start))
}

/// The process group and start time of a live process.
pub fn group_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_group(&stat)
}

/// True when `pid` is alive and is the process that started at `start`.
pub fn is_same_process(pid: u32, start: u64) -> bool {
    start_time(pid) == Some(start)
}

/// A pidfd for `pid`: readable once the process exits, even when it is
/// not our child. The caller checks [`is_same_process`] after opening, so
/// a pid reused in between is never mistaken for the recorded process.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    use rustix::process::{Pid, PidfdFlags};
    // Pid 0 (and anything past i32) names no process.
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::from_raw_os_error(nix::libc::EINVAL))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{InstanceKey, Isolation};

    #[test]
    fn the_start_time_is_read_past_a_command_name_with_spaces() {
        let stat =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(stat), Some(987_654));
        assert_eq!(parse_stat_group(stat), Some((4242, 987_654)));
        let zombie = "4242 (x) Z 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 0 0";
        assert_eq!(parse_stat(zombie), None);
    }

    #[test]
    fn our_own_process_is_recognised_and_a_wrong_start_time_is_not() {
        let me = std::process::id();
        let t = start_time(me).expect("our own start time");
        assert!(is_same_process(me, t));
        assert!(!is_same_process(me, t + 1));
    }

    #[test]
    fn entries_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let table = ProcessTable::new(dir.path());
        assert!(table.load().unwrap().is_empty());
        let spec = InstanceSpec::new(
            InstanceKey::new("p", Isolation::None, "", "").unwrap(),
            Default::default(),
            None,
        )
        .unwrap();
        let e = Entry {
            process_id: "shared:p".into(),
            spec,
            pid: 10,
            start_time: 20,
            cgroups: vec![PathBuf::from("/sys/fs/cgroup/memory/x/shared:p")],
            grpc_port: 50051,
            health_port: 9090,
        };
        table.save(std::slice::from_ref(&e)).unwrap();
        assert_eq!(table.load().unwrap(), vec![e]);
    }
}
