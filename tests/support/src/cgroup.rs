//! cgroups as the tests see them: where a process's cgroup is, what its
//! files say, and a witness that shows the launcher's orphan sweeps
//! happening (so that a negative assertion waits for sweeps, not for time).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::wait::{WAIT, wait_until};

/// The directory of `pid`'s cgroup in the hierarchy of `controller`
/// (`memory`, `cpu`, ...): its line of `/proc/<pid>/cgroup` joined to where
/// that hierarchy is mounted (from `/proc/self/mountinfo`). cgroup v2 (the
/// `0::` line) when no v1 hierarchy has that controller.
pub fn cgroup_dir(pid: i64, controller: &str) -> Option<PathBuf> {
    let lines = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // (fstype, super options, mount root, mount point)
    let mounts: Vec<(String, Vec<String>, String, String)> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let post: Vec<&str> = post.split_whitespace().collect();
            Some((
                post.first()?.to_string(),
                post.get(2)?.split(',').map(str::to_string).collect(),
                pre.get(3)?.to_string(),
                pre.get(4)?.to_string(),
            ))
        })
        .collect();
    let join = |root: &str, mount_point: &str, path: &str| {
        let rel = path.strip_prefix(root).unwrap_or(path);
        let rel = rel.trim_start_matches('/');
        PathBuf::from(mount_point).join(rel)
    };
    for line in lines.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == controller) {
            let (_, _, root, mp) = mounts
                .iter()
                .find(|(fs, opts, _, _)| fs == "cgroup" && opts.iter().any(|o| o == controller))?;
            return Some(join(root, mp, path));
        }
    }
    let path = lines.lines().find_map(|l| l.strip_prefix("0::"))?;
    let (_, _, root, mp) = mounts.iter().find(|(fs, _, _, _)| fs == "cgroup2")?;
    Some(join(root, mp, path))
}

/// A trimmed cgroup file, "" if it cannot be read.
pub fn cgroup_file(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// An empty cgroup in the launcher's parent, beside the instances' own:
/// an orphan sweep finds it, sees no process in it and removes it. Its
/// disappearance is how a test sees that a sweep ran. Removed when dropped
/// if it is still there (a failed wait).
struct Witness(PathBuf);

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

/// Waits until the launcher running the instance `instance_pid` has done
/// `sweeps` orphan sweeps after this call, one after another (so at least
/// `sweeps - 1` sweep intervals of the launcher's own clock pass). Each
/// sweep is witnessed by an empty cgroup it removes. Panics when a sweep
/// does not come within [`WAIT`].
///
/// A negative assertion ("the sweeps left this process alone") waits on
/// this instead of a fixed time: it holds however slow the machine is.
pub fn wait_orphan_sweeps(instance_pid: i64, sweeps: usize) {
    // The launcher lists the instances it owns in its freezer hierarchy
    // (else its memory one) on v1, in the unified one on v2.
    let own = cgroup_dir(instance_pid, "freezer")
        .or_else(|| cgroup_dir(instance_pid, "memory"))
        .unwrap_or_else(|| panic!("pid {instance_pid} has no cgroup"));
    let parent = own
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", own.display()))
        .to_path_buf();
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    for n in 1..=sweeps {
        let witness = Witness(parent.join(format!("sweep-witness-{stamp}-{n}")));
        fs::create_dir(&witness.0)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", witness.0.display()));
        assert!(
            wait_until(WAIT, || !witness.0.exists()),
            "no orphan sweep removed {} within {WAIT:?} (sweep {n} of {sweeps})",
            witness.0.display()
        );
    }
}
