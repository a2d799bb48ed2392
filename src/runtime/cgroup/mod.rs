//! Kernel containment through cgroups: one cgroup per instance under a
//! parent the launcher owns, with `memory_limit` and `cpu_limit` written
//! into it, and a way to kill every process in it (also those that left
//! the process group).
//!
//! Two backends behind one small API, in the style of youki's
//! `libcgroups`: cgroup v2 where the launcher has a writable subtree, v1
//! `memory` / `cpu` (and `freezer`, for a race-free kill) otherwise. Every
//! path is derived from a root passed in, so tests run against a tree in a
//! temp dir. This module decides nothing about when to kill or restart.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// `cgroup.procs`: one pid per line; writing a pid moves that process.
const PROCS: &str = "cgroup.procs";
/// v1's `tasks`: writing `0` moves the calling thread alone. Unlike a write
/// to `cgroup.procs`, it does not take the kernel's global threadgroup lock
/// (on recent kernels, 6.18 here; older ones take it for both), whose every
/// taking from idle waits out an RCU grace period (5-15 ms on a 2-core VM,
/// each restart).
const V1_TASKS: &str = "tasks";
/// v2 `cgroup.kill`: writing "1" SIGKILLs every process of the subtree.
const V2_KILL: &str = "cgroup.kill";
/// v2 `cgroup.controllers`: space-separated controllers available here.
const V2_CONTROLLERS: &str = "cgroup.controllers";
/// v2 `cgroup.subtree_control`: "+memory +cpu" enables them for children.
const V2_SUBTREE: &str = "cgroup.subtree_control";
/// v2 `memory.max`: bytes, or "max".
const V2_MEMORY_MAX: &str = "memory.max";
/// v2 `memory.swap.max`: bytes, or "max".
const V2_SWAP_MAX: &str = "memory.swap.max";
/// v2 `cpu.max`: "<quota_us> <period_us>", or "max <period_us>".
const V2_CPU_MAX: &str = "cpu.max";
/// v2 `memory.events`: lines "<name> <count>", among them `oom_kill`.
const V2_MEMORY_EVENTS: &str = "memory.events";
/// v1 `memory.limit_in_bytes`: bytes.
const V1_MEMORY_LIMIT: &str = "memory.limit_in_bytes";
/// v1 `memory.memsw.limit_in_bytes`: memory + swap, bytes (when swap
/// accounting exists).
const V1_MEMSW_LIMIT: &str = "memory.memsw.limit_in_bytes";
/// v1 `memory.oom_control`: lines "<name> <value>", among them `oom_kill`.
const V1_OOM_CONTROL: &str = "memory.oom_control";
/// v1 `cpu.cfs_period_us` / `cpu.cfs_quota_us`: microseconds (-1: none).
const V1_CFS_PERIOD: &str = "cpu.cfs_period_us";
const V1_CFS_QUOTA: &str = "cpu.cfs_quota_us";
/// `pids.max` (v1 and v2): the most tasks at once, or "max".
const PIDS_MAX: &str = "pids.max";
/// `pids.events` (v1 and v2): "max <n>", forks refused by `pids.max`.
const PIDS_EVENTS: &str = "pids.events";
/// v1 `freezer.state`: FROZEN / FREEZING / THAWED.
const V1_FREEZER_STATE: &str = "freezer.state";

/// CFS period used for CPU limits.
const CPU_PERIOD_US: u64 = 100_000;

/// Limits asked for by a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Limits {
    /// Cores.
    pub cpu: Option<f64>,
    /// Bytes.
    pub memory: Option<u64>,
    /// Most tasks (processes and threads) at once.
    pub pids: Option<u64>,
}

/// A cgroup operation that failed, with the path it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupError {
    /// The file or directory.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        path: path.to_path_buf(),
        source,
    })
}

/// Creates a cgroup directory; true when it did not exist.
fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(CgroupError {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join(PROCS))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Longest wait for a killed cgroup to empty.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Reads `key <n>` from a flat-keyed file.
fn keyed(path: &Path, key: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The directory name of an instance's cgroup.
fn leaf(process_id: &str) -> String {
    // process_ids contain ':' and [A-Za-z0-9._-] only; '/' cannot occur.
    process_id.replace('/', "_")
}

/// cgroup v2: one directory per instance under `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2 {
    parent: PathBuf,
}

/// cgroup v1: one directory per instance under a parent in each
/// hierarchy the launcher uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1 {
    memory: Option<PathBuf>,
    cpu: Option<PathBuf>,
    freezer: Option<PathBuf>,
    pids: Option<PathBuf>,
}

/// The containment the launcher has on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    /// cgroup v2.
    V2(V2),
    /// cgroup v1.
    V1(V1),
    /// Nothing writable: limits are not enforced, for this reason.
    Unsupported(String),
}

/// A mounted cgroup hierarchy, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    point: PathBuf,
    v2: bool,
    controllers: BTreeSet<String>,
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or_default();
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = opts
                .split(',')
                .filter(|o| matches!(*o, "memory" | "cpu" | "freezer" | "pids"))
                .map(String::from)
                .collect();
            Some(Mount {
                point: PathBuf::from(point.replace("\\040", " ")),
                v2,
                controllers,
            })
        })
        .collect()
}

impl Cgroups {
    /// Finds a writable cgroup tree on this machine for a launcher whose
    /// cgroups are called `name` (derived from its state directory).
    pub fn detect(name: &str) -> Cgroups {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Cgroups::detect_in(&parse_mounts(&mountinfo), name)
    }

    fn detect_in(mounts: &[Mount], name: &str) -> Cgroups {
        let mut reasons = Vec::new();
        if let Some(m) = mounts.iter().find(|m| m.v2) {
            match V2::setup(&m.point, name) {
                Ok(v2) => return Cgroups::V2(v2),
                Err(why) => reasons.push(format!("cgroup v2 at {}: {why}", m.point.display())),
            }
        }
        let v1 = |c: &str| mounts.iter().find(|m| !m.v2 && m.controllers.contains(c));
        let (memory, cpu, freezer, pids) = (v1("memory"), v1("cpu"), v1("freezer"), v1("pids"));
        if memory.is_some() || cpu.is_some() {
            let make = |m: Option<&Mount>| -> Option<PathBuf> {
                let dir = m?.point.join(name);
                mkdir(&dir).ok()?;
                Some(dir)
            };
            let v = V1 {
                memory: make(memory),
                cpu: make(cpu),
                freezer: make(freezer),
                pids: make(pids),
            };
            if v.memory.is_some() && v.cpu.is_some() {
                return Cgroups::V1(v);
            }
            reasons.push("cgroup v1 memory and cpu hierarchies are not both writable".into());
        } else {
            reasons.push("no cgroup v1 memory or cpu hierarchy is mounted".into());
        }
        Cgroups::Unsupported(reasons.join("; "))
    }

    /// A v2 backend rooted at `parent` (tests).
    pub fn v2_at(parent: PathBuf) -> Cgroups {
        Cgroups::V2(V2 { parent })
    }

    /// A v1 backend with these parents (tests).
    pub fn v1_at(memory: PathBuf, cpu: PathBuf, freezer: Option<PathBuf>) -> Cgroups {
        Cgroups::V1(V1 {
            memory: Some(memory),
            cpu: Some(cpu),
            freezer,
            pids: None,
        })
    }

    /// True when limits are enforced.
    pub fn enforced(&self) -> bool {
        !matches!(self, Cgroups::Unsupported(_))
    }

    /// One line for logs and status.
    pub fn describe(&self) -> String {
        match self {
            Cgroups::V2(v) => format!("cgroup v2 under {}", v.parent.display()),
            Cgroups::V1(v) => {
                let names: Vec<&str> = [
                    ("memory", &v.memory),
                    ("cpu", &v.cpu),
                    ("freezer", &v.freezer),
                    ("pids", &v.pids),
                ]
                .iter()
                .filter(|(_, p)| p.is_some())
                .map(|(n, _)| *n)
                .collect();
                format!("cgroup v1 ({})", names.join(", "))
            }
            Cgroups::Unsupported(why) => format!("not enforced: {why}"),
        }
    }

    /// The directories of an instance's cgroup (one per hierarchy).
    pub fn dirs(&self, process_id: &str) -> Vec<PathBuf> {
        let l = leaf(process_id);
        match self {
            Cgroups::V2(v) => vec![v.parent.join(l)],
            Cgroups::V1(v) => [&v.memory, &v.cpu, &v.freezer, &v.pids]
                .into_iter()
                .flatten()
                .map(|p| p.join(&l))
                .collect(),
            Cgroups::Unsupported(_) => Vec::new(),
        }
    }

    /// Creates the instance's cgroup and writes its limits (clearing
    /// limits it no longer has). A new cgroup starts without limits, so
    /// only the limits it has are written then. Returns whether the cgroup
    /// is new (in every hierarchy), and so has seen no OOM kill yet.
    pub fn create(&self, process_id: &str, limits: Limits) -> Result<bool, CgroupError> {
        let l = leaf(process_id);
        match self {
            Cgroups::V2(v) => {
                let dir = v.parent.join(&l);
                let new = mkdir(&dir)?;
                if !new || limits.memory.is_some() {
                    let mem = limits.memory.map_or("max".into(), |b| b.to_string());
                    write(&dir.join(V2_MEMORY_MAX), &mem)?;
                }
                if limits.memory.is_some() {
                    // Without swap the limit is a limit; absent when the
                    // kernel has no swap accounting.
                    let _ = write(&dir.join(V2_SWAP_MAX), "0");
                }
                if !new || limits.cpu.is_some() {
                    let cpu = limits.cpu.map_or(format!("max {CPU_PERIOD_US}"), |c| {
                        format!("{} {CPU_PERIOD_US}", quota_us(c))
                    });
                    write(&dir.join(V2_CPU_MAX), &cpu)?;
                }
                if !new || limits.pids.is_some() {
                    write_pids_max(&dir, limits.pids)?;
                }
                Ok(new)
            }
            Cgroups::V1(v) => {
                let mut all_new = true;
                if let Some(m) = &v.memory {
                    let dir = m.join(&l);
                    let new = mkdir(&dir)?;
                    all_new &= new;
                    if !new || limits.memory.is_some() {
                        let bytes = limits.memory.map_or("-1".into(), |b| b.to_string());
                        // memsw must stay >= the memory limit: raise it
                        // first when growing, after when shrinking; both
                        // only where swap accounting exists.
                        let _ = write(&dir.join(V1_MEMSW_LIMIT), "-1");
                        write(&dir.join(V1_MEMORY_LIMIT), &bytes)?;
                        let _ = write(&dir.join(V1_MEMSW_LIMIT), &bytes);
                    }
                }
                if let Some(c) = &v.cpu {
                    let dir = c.join(&l);
                    let new = mkdir(&dir)?;
                    all_new &= new;
                    if !new || limits.cpu.is_some() {
                        write(&dir.join(V1_CFS_PERIOD), &CPU_PERIOD_US.to_string())?;
                        let quota = limits.cpu.map_or("-1".into(), |c| quota_us(c).to_string());
                        write(&dir.join(V1_CFS_QUOTA), &quota)?;
                    }
                }
                if let Some(f) = &v.freezer {
                    all_new &= mkdir(&f.join(&l))?;
                }
                if let Some(p) = &v.pids {
                    let dir = p.join(&l);
                    let new = mkdir(&dir)?;
                    all_new &= new;
                    if !new || limits.pids.is_some() {
                        write_pids_max(&dir, limits.pids)?;
                    }
                }
                Ok(all_new)
            }
            Cgroups::Unsupported(_) => Ok(false),
        }
    }

    /// Whether a child joins its cgroup without the kernel's global
    /// threadgroup lock (see [`V1_TASKS`]): on v1. On v2 a child is
    /// created in its cgroup ([`Cgroups::create_in`]) where the kernel
    /// allows, else its `cgroup.procs` write takes the lock: counted as
    /// not cheap.
    pub fn cheap_join(&self) -> bool {
        !matches!(self, Cgroups::V2(_))
    }

    /// On v2, the instance's cgroup directory, to create its child in
    /// (`clone3` with `CLONE_INTO_CGROUP`); `join_files` remain the
    /// fallback.
    pub fn create_in(&self, process_id: &str) -> Option<PathBuf> {
        match self {
            Cgroups::V2(v) => Some(v.parent.join(leaf(process_id))),
            Cgroups::V1(_) | Cgroups::Unsupported(_) => None,
        }
    }

    /// The files of the instance's cgroup that a new child, still single
    /// threaded, writes `0` to before it execs, to join it: on v1 each
    /// hierarchy's `tasks` (see [`V1_TASKS`]: the child is its process's
    /// only thread, so moving the thread moves the process), on v2
    /// `cgroup.procs`.
    pub fn join_files(&self, process_id: &str) -> Vec<PathBuf> {
        let file = match self {
            Cgroups::V1(_) => V1_TASKS,
            Cgroups::V2(_) | Cgroups::Unsupported(_) => PROCS,
        };
        self.dirs(process_id)
            .into_iter()
            .map(|d| d.join(file))
            .collect()
    }

    /// Moves `pid` into the instance's cgroup (every hierarchy).
    pub fn add(&self, process_id: &str, pid: u32) -> Result<(), CgroupError> {
        for dir in self.dirs(process_id) {
            write(&dir.join(PROCS), &pid.to_string())?;
        }
        Ok(())
    }

    /// Every pid in the instance's cgroup.
    pub fn pids(&self, process_id: &str) -> Vec<u32> {
        let mut all: BTreeSet<u32> = BTreeSet::new();
        for dir in self.dirs(process_id) {
            all.extend(read_pids(&dir));
        }
        all.into_iter().collect()
    }

    /// SIGKILLs every process in the instance's cgroup. On v2 through
    /// `cgroup.kill`; on v1 the cgroup is frozen first (when the freezer
    /// is there) so nothing forks while the pids are killed one by one.
    ///
    /// Returns once the cgroup is empty (SIGKILL is delivered
    /// asynchronously, and on v1 only once the tasks thaw), or after
    /// [`KILL_WAIT`]: whoever acts on "the tree is gone" can.
    pub fn kill_all(&self, process_id: &str) -> Result<(), CgroupError> {
        self.send_kill(process_id)?;
        let deadline = Instant::now() + KILL_WAIT;
        while !self.pids(process_id).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    fn send_kill(&self, process_id: &str) -> Result<(), CgroupError> {
        let l = leaf(process_id);
        match self {
            Cgroups::V2(v) => {
                let dir = v.parent.join(&l);
                match write(&dir.join(V2_KILL), "1") {
                    Ok(()) => Ok(()),
                    // No cgroup.kill (kernel < 5.14): one by one.
                    Err(_) => {
                        kill_pids(&read_pids(&dir));
                        Ok(())
                    }
                }
            }
            Cgroups::V1(v) => {
                let frozen = v.freezer.as_ref().map(|f| f.join(&l));
                if let Some(dir) = &frozen {
                    let _ = write(&dir.join(V1_FREEZER_STATE), "FROZEN");
                    let deadline = Instant::now() + Duration::from_millis(500);
                    while Instant::now() < deadline {
                        let state =
                            std::fs::read_to_string(dir.join(V1_FREEZER_STATE)).unwrap_or_default();
                        if state.trim() != "FREEZING" {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                kill_pids(&self.pids(process_id));
                if let Some(dir) = &frozen {
                    // SIGKILL is delivered once the tasks thaw.
                    let _ = write(&dir.join(V1_FREEZER_STATE), "THAWED");
                }
                Ok(())
            }
            Cgroups::Unsupported(_) => Ok(()),
        }
    }

    /// How many forks `pids.max` has refused in this cgroup (0 where no
    /// pids controller is used).
    pub fn pids_refused(&self, process_id: &str) -> u64 {
        let l = leaf(process_id);
        match self {
            Cgroups::V2(v) => keyed(&v.parent.join(l).join(PIDS_EVENTS), "max"),
            Cgroups::V1(v) => v
                .pids
                .as_ref()
                .and_then(|p| keyed(&p.join(l).join(PIDS_EVENTS), "max")),
            Cgroups::Unsupported(_) => None,
        }
        .unwrap_or(0)
    }

    /// True when `pids.max` is enforced for instances.
    pub fn limits_pids(&self) -> bool {
        match self {
            Cgroups::V2(_) => true,
            Cgroups::V1(v) => v.pids.is_some(),
            Cgroups::Unsupported(_) => false,
        }
    }

    /// How many times the kernel OOM killer has killed in this cgroup.
    pub fn oom_kills(&self, process_id: &str) -> u64 {
        let l = leaf(process_id);
        match self {
            Cgroups::V2(v) => keyed(&v.parent.join(l).join(V2_MEMORY_EVENTS), "oom_kill"),
            Cgroups::V1(v) => v
                .memory
                .as_ref()
                .and_then(|m| keyed(&m.join(l).join(V1_OOM_CONTROL), "oom_kill")),
            Cgroups::Unsupported(_) => None,
        }
        .unwrap_or(0)
    }

    /// Removes the instance's cgroup once it is empty. Leftover processes
    /// are killed first; removal is retried briefly while they die.
    pub fn remove(&self, process_id: &str) -> Result<(), CgroupError> {
        let dirs = self.dirs(process_id);
        if dirs.iter().any(|d| !read_pids(d).is_empty()) {
            self.kill_all(process_id)?;
        }
        for dir in dirs {
            let mut tries = 0;
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if tries < 50 && e.raw_os_error() == Some(libc_ebusy()) => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(source) => return Err(CgroupError { path: dir, source }),
                }
            }
        }
        Ok(())
    }

    /// Removes the launcher's parent cgroups when no instance cgroup is
    /// left in them (a clean shutdown). Errors are ignored: a parent still
    /// in use stays.
    pub fn remove_parents(&self) {
        let parents: Vec<&PathBuf> = match self {
            Cgroups::V2(v) => vec![&v.parent],
            Cgroups::V1(v) => [&v.memory, &v.cpu, &v.freezer, &v.pids]
                .into_iter()
                .flatten()
                .collect(),
            Cgroups::Unsupported(_) => Vec::new(),
        };
        for p in parents {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// The process_ids that have a cgroup under the launcher's parent.
    pub fn instances(&self) -> Vec<String> {
        let parent = match self {
            Cgroups::V2(v) => Some(&v.parent),
            Cgroups::V1(v) => v.freezer.as_ref().or(v.memory.as_ref()),
            Cgroups::Unsupported(_) => None,
        };
        let Some(parent) = parent else {
            return Vec::new();
        };
        let Ok(rd) = std::fs::read_dir(parent) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }
}

fn libc_ebusy() -> i32 {
    nix::Error::EBUSY as i32
}

fn quota_us(cores: f64) -> u64 {
    // At least 1 ms per period: the kernel's minimum.
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

fn kill_pids(pids: &[u32]) {
    for &pid in pids {
        if let Ok(raw) = i32::try_from(pid)
            && raw > 1
        {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
}

/// Writes `pids.max` in `dir` ("max" for no limit).
fn write_pids_max(dir: &Path, pids: Option<u64>) -> Result<(), CgroupError> {
    let value = pids.map_or("max".into(), |n| n.to_string());
    match write(&dir.join(PIDS_MAX), &value) {
        // A v2 tree without the pids controller has no pids.max.
        Err(e) if e.source.kind() == ErrorKind::NotFound && pids.is_none() => Ok(()),
        other => other,
    }
}

/// Why a cgroup v2 tree cannot be used.
#[derive(Debug, thiserror::Error)]
enum V2SetupError {
    /// A file of the tree cannot be read or written.
    #[error(transparent)]
    Io(#[from] CgroupError),
    /// The tree lacks the memory or the cpu controller.
    #[error("the memory and cpu controllers are not available (have: {have})")]
    Controllers {
        /// The controllers it has, as `cgroup.controllers` lists them.
        have: String,
    },
}

impl V2 {
    /// Makes `<mount>/<name>` with memory and cpu enabled for its
    /// children. Works as root (the root cgroup may enable controllers);
    /// a delegated, non-root subtree is not supported.
    fn setup(mount: &Path, name: &str) -> Result<V2, V2SetupError> {
        let controllers = mount.join(V2_CONTROLLERS);
        let available = std::fs::read_to_string(&controllers).map_err(|source| CgroupError {
            path: controllers,
            source,
        })?;
        let have: BTreeSet<&str> = available.split_whitespace().collect();
        if !(have.contains("memory") && have.contains("cpu")) {
            return Err(V2SetupError::Controllers {
                have: available.trim().to_string(),
            });
        }
        // pids where the kernel has it: a fork bomb stops at pids.max.
        let enable = if have.contains("pids") {
            "+memory +cpu +pids"
        } else {
            "+memory +cpu"
        };
        write(&mount.join(V2_SUBTREE), enable)?;
        let parent = mount.join(name);
        mkdir(&parent)?;
        write(&parent.join(V2_SUBTREE), enable)?;
        Ok(V2 { parent })
    }
}

#[cfg(test)]
mod tests;
