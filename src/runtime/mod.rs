//! Everything that touches the operating system, behind one seam: the
//! [`Runtime`] trait says what the controller may ask of processes,
//! cgroups, logs and state files; [`linux::LinuxRuntime`] does it on this
//! machine, and the controller's tests use a fake that only records.
//!
//! The modules below are the Linux implementation's parts: spawning and
//! signals, supervisors (exit and probes), cgroups and their janitor
//! thread, ports, logs, the process table and its writer thread, and
//! discovery of running instances.

pub mod cgroup;
pub mod discover;
#[cfg(test)]
pub mod fake;
pub mod janitor;
pub mod linux;
pub mod logs;
pub mod ports;
pub mod spawn;
pub mod supervise;
pub mod table;
pub mod writer;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::reconcile::observed::Ports;
use crate::reconcile::transitions::ExitFacts;
use crate::sources::state_file::StateFileError;
use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

pub use cgroup::{CgroupError, Limits};
pub use discover::Found;
pub use janitor::CgroupWork;
pub use spawn::{ExecutableError, SpawnError};
pub use table::Entry;

/// True for an OS error saying the launcher itself ran out of something
/// (descriptors, buffers, memory): never the failure of an instance.
pub fn out_of_resources(code: i32) -> bool {
    use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(code, EMFILE | ENFILE | ENOBUFS | ENOMEM)
}

/// Why a process an earlier launcher started cannot be taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// No pidfd could be opened for it (it is gone, or the launcher is out
    /// of descriptors).
    #[error("cannot watch pid {pid}: {source}")]
    Watch {
        /// Its pid.
        pid: u32,
        /// The OS error.
        source: std::io::Error,
    },
    /// The pid now belongs to a process that started at another time.
    #[error("pid {pid} is another process now")]
    Reused {
        /// The pid.
        pid: u32,
    },
}

/// What the controller asks to start.
#[derive(Debug, Clone, Copy)]
pub struct StartRequest<'a> {
    /// The instance.
    pub process_id: &'a str,
    /// Its declaration.
    pub spec: &'a InstanceSpec,
    /// Its pattern.
    pub pattern: &'a Pattern,
    /// Its ports.
    pub ports: Ports,
    /// Which start of the instance this is: events about the process
    /// carry it, so that late news of an earlier process is recognised.
    pub epoch: u64,
}

/// One start of a batch ([`Runtime::start_batch`]): what a
/// [`StartRequest`] says, owned (starts run away from the loop), and the
/// cgroup set-up that goes first.
#[derive(Debug, Clone)]
pub struct StartJob {
    /// The instance.
    pub process_id: String,
    /// Its declaration.
    pub spec: InstanceSpec,
    /// Its pattern.
    pub pattern: Arc<Pattern>,
    /// Its ports.
    pub ports: Ports,
    /// Which start of the instance this is.
    pub epoch: u64,
    /// Create the instance's cgroup with these limits (or write them into
    /// it) before the start; `None` leaves the cgroup as it is.
    pub limits: Option<Limits>,
}

impl StartJob {
    /// The job as a request.
    pub fn request(&self) -> StartRequest<'_> {
        StartRequest {
            process_id: &self.process_id,
            spec: &self.spec,
            pattern: &self.pattern,
            ports: self.ports,
            epoch: self.epoch,
        }
    }
}

/// What became of one [`StartJob`].
#[derive(Debug)]
pub struct StartOutcome {
    /// When limits were asked: whether the cgroup is new (and so has seen
    /// no OOM kill yet), or the cgroup file that could not be written.
    pub cgroup: Option<Result<bool, CgroupError>>,
    /// OOM kills in its cgroup so far (read after the set-up; 0 without).
    pub oom_kills: u64,
    /// Forks its `pids.max` refused so far (read after the set-up; 0
    /// without).
    pub pids_refused: u64,
    /// Where the new process's output begins in the instance's log.
    pub log_offset: u64,
    /// The process, or why it could not start (whose fault:
    /// [`SpawnError::is_launcher_side`]).
    pub started: Result<Started, SpawnError>,
    /// How long the set-up and the spawn took.
    pub took: std::time::Duration,
}

/// A started (and supervised) process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Its pid (also its process group).
    pub pid: u32,
    /// Its start time, which with the pid identifies it.
    pub start_time: u64,
    /// It joined its cgroup before it ran (else it was moved after, or not
    /// at all: its cgroup is set up again at the next start).
    pub joined_cgroups: bool,
    /// Why its limits are not enforced, when they are not.
    pub not_enforced: Option<String>,
}

/// The operating system as the controller sees it. Every call is quick
/// and never blocks on a process: exits and probe results arrive later as
/// [`supervise::ProcEvent`]s on the channel the runtime was built with.
/// Work that waits (starts, state-file writes, killing and removing
/// cgroups) runs off the caller's thread: starts and API-store writes as
/// futures the caller awaits, the process table and cgroup work queued,
/// their outcome reported on the same channel.
pub trait Runtime: Send + 'static {
    /// Now, on the clock the controller plans with (tokio's, so that tests
    /// can pause it).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    /// Whether a port can be bound now (for the port allocator).
    fn port_check(&self) -> fn(u16) -> bool;

    /// Checks that a pattern's executable can be run, naming the path.
    ///
    /// # Errors
    ///
    /// Why it cannot.
    fn check_executable(&self, path: &Path) -> Result<(), ExecutableError>;

    /// Sets up the cgroups of the jobs that ask it, then starts and
    /// supervises their processes, in order, off the caller's thread; each
    /// job comes back with its outcome. A job missing from the answer did
    /// not run (the launcher is shutting down).
    fn start_batch(
        &mut self,
        jobs: Vec<StartJob>,
    ) -> impl Future<Output = Vec<(StartJob, StartOutcome)>> + Send;

    /// Takes over a process an earlier launcher started, and supervises it.
    ///
    /// # Errors
    ///
    /// Why it cannot be watched.
    fn adopt(&mut self, found: &Found, req: StartRequest<'_>) -> Result<(), AdoptError>;

    /// Sends `sig` to the process group of `pid` and to every process of the
    /// instance's cgroup (those that left the group too).
    fn signal(&mut self, process_id: &str, pid: u32, sig: Signal);

    /// SIGKILLs the instance's process group (its cgroup is killed by
    /// [`CgroupWork::Kill`]).
    fn kill(&mut self, process_id: &str, pid: u32);

    /// What is known of the instance's process that ended (`how` it
    /// ended); its process group is killed (what is left in its cgroup is
    /// killed by [`CgroupWork::Kill`]). `log_offset` is where its output
    /// began in the log.
    fn ended(&mut self, process_id: &str, pid: u32, how: String, log_offset: u64) -> ExitFacts;

    /// The instance is gone for good: its log is no longer followed (its
    /// cgroup is removed by [`CgroupWork::Remove`]).
    fn forget(&mut self, process_id: &str);

    /// The instance's log file.
    fn log_path(&self, process_id: &str) -> PathBuf;

    /// The size of the instance's log now (where a new process's output
    /// will begin).
    fn log_len(&self, process_id: &str) -> u64;

    /// How the pattern's limits are enforced, for status.
    fn limits_text(&self, pattern: &Pattern) -> String;

    /// OOM kills in the instance's cgroup so far.
    fn oom_kills(&self, process_id: &str) -> u64;

    /// Forks the instance's `pids.max` refused so far.
    fn pids_refused(&self, process_id: &str) -> u64;

    /// The instances that have a cgroup of this launcher.
    fn cgroup_instances(&self) -> Vec<String>;

    /// The live processes of the instance's cgroup.
    fn cgroup_pids(&self, process_id: &str) -> Vec<u32>;

    /// The directories of the instance's cgroup (for the process table).
    fn cgroup_dirs(&self, process_id: &str) -> Vec<PathBuf>;

    /// Sends `sig` to each of `pids`.
    fn signal_pids(&mut self, pids: &[u32], sig: Signal);

    /// Queues `work` on the instance's cgroup; done in the order queued,
    /// each piece reported by a [`supervise::ProcEvent::CgroupDone`].
    fn cgroup_work(&mut self, process_id: &str, work: CgroupWork);

    /// The instance processes of this launcher that run now (see
    /// [`discover::running`]).
    fn discover(&mut self) -> Vec<Found>;

    /// The instance process in `process_id`'s cgroup, if one runs there.
    fn found_in_cgroup(&mut self, process_id: &str) -> Option<Found>;

    /// Queues a write of the process table: the latest queued is written,
    /// and written again while it fails; a failure, and the recovery, are
    /// reported by a [`supervise::ProcEvent::TableSaved`].
    fn save_table(&mut self, entries: Vec<Entry>);

    /// The process table an earlier launcher left (a hint for adoption).
    fn load_table(&mut self) -> Vec<Entry>;

    /// Writes the API declarations, off the caller's thread; completes
    /// once they are durable.
    ///
    /// # Errors
    ///
    /// The file that could not be written.
    fn save_api(
        &mut self,
        specs: Vec<InstanceSpec>,
    ) -> impl Future<Output = Result<(), StateFileError>> + Send + 'static;

    /// The stored API declarations.
    ///
    /// # Errors
    ///
    /// The file that could not be read.
    fn load_api(&mut self) -> Result<Vec<InstanceSpec>, StateFileError>;

    /// Completes once the table writes and cgroup work queued so far are
    /// done (tried, for a write that fails).
    fn flush(&mut self) -> impl Future<Output = ()> + Send + 'static;

    /// The launcher stops: what is left of its own (cgroup parents) goes.
    /// Called after [`Runtime::flush`].
    fn shutdown(&mut self);
}
