//! The [`Runtime`] of this machine: clone-and-exec spawns with cgroups,
//! pidfd supervisors with HTTP probes, signals to process groups and
//! cgroups, per-instance log files echoed into the launcher's log, and the
//! state files under `--state-dir`.
//!
//! What waits runs off the async threads: batches of starts (cgroup
//! set-up, clone, exec) and API-store writes on tokio's blocking pool,
//! process-table writes on a writer thread ([`LatestWriter`]), cgroup kills
//! and removals on the [`Janitor`]'s thread.
//!
//! It carries requests out; it decides nothing about when.

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::cgroup::Cgroups;
use super::discover::{self, Found};
use super::janitor::{CgroupWork, Janitor};
use super::logs::{self, LogEcho};
use super::spawn::{self, signal_group};
use super::supervise::{Exit, ProbeTarget, ProcEvent, supervise};
use super::table::{self, Entry, ProcessTable};
use super::writer::{self, LatestWriter};
use super::{AdoptError, ExecutableError, Runtime, StartJob, StartOutcome, StartRequest, Started};
use crate::reconcile::observed::Ports;
use crate::reconcile::transitions::ExitFacts;
use crate::sources::ApiStore;
use crate::sources::state_file::StateFileError;
use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

/// Lines of output quoted in an error.
const ERROR_TAIL_LINES: usize = 5;

/// Where and how an instance of `pattern` on `ports` is probed.
fn probe_target(pattern: &Pattern, ports: Ports) -> ProbeTarget {
    ProbeTarget {
        url: format!("http://127.0.0.1:{}{}", ports.health, pattern.health.path),
        interval: pattern.health.interval,
        timeout: pattern.health.timeout,
    }
}

/// A runtime could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinuxSetupError {
    /// The logs directory cannot be created.
    #[error("cannot create {path}: {source}")]
    LogsDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The HTTP client for probes cannot be built.
    #[error("cannot build the probe client: {0}")]
    Client(#[from] reqwest::Error),
    /// The process table's writer thread cannot be started.
    #[error("cannot start the process table's writer: {0}")]
    Writer(std::io::Error),
}

/// What a batch of starts needs away from the runtime.
struct Starter {
    cgroups: Cgroups,
    logs_dir: PathBuf,
    launcher_id: String,
}

impl Starter {
    /// Sets up the job's cgroup when asked, then starts its process; the
    /// process's pidfd comes back for its supervisor.
    fn start(&self, job: &StartJob) -> (StartOutcome, Option<OwnedFd>) {
        let id = job.process_id.as_str();
        let began = std::time::Instant::now();
        let cgroup = job.limits.map(|l| self.cgroups.create(id, l));
        // The counters a crash is later compared with; a new cgroup's are 0.
        let (oom_kills, pids_refused) = match cgroup {
            Some(Ok(false)) | Some(Err(_)) => {
                (self.cgroups.oom_kills(id), self.cgroups.pids_refused(id))
            }
            Some(Ok(true)) | None => (0, 0),
        };
        let log = logs::log_path(&self.logs_dir, id);
        // Its output is echoed from here: what it writes before the echo
        // thread hears of it is not lost.
        let log_offset = logs::log_len(&log);
        let join = self.cgroups.join_files(id);
        let into = self.cgroups.create_in(id);
        let spawned = spawn::spawn_in(
            id,
            &job.spec,
            &job.pattern,
            job.ports,
            &log,
            spawn::CgroupJoin {
                files: &join,
                into: into.as_deref(),
            },
            &self.launcher_id,
        );
        let (started, pidfd) = match spawned {
            Ok(child) => {
                let pid = child.pid;
                // The child joined its cgroups before exec; when one of its
                // writes failed, move it from here (which says why).
                let not_enforced = if child.joined_cgroups {
                    None
                } else {
                    self.cgroups.add(id, pid).err().map(|e| {
                        tracing::error!("{id}: cannot move pid {pid} into its cgroup: {e}");
                        format!("NOT ENFORCED: cannot move the process into its cgroup: {e}")
                    })
                };
                let started = Started {
                    pid,
                    start_time: table::start_time(pid).unwrap_or(0),
                    joined_cgroups: child.joined_cgroups,
                    not_enforced,
                };
                (Ok(started), Some(child.pidfd))
            }
            Err(e) => (Err(e), None),
        };
        let outcome = StartOutcome {
            cgroup,
            oom_kills,
            pids_refused,
            log_offset,
            started,
            took: began.elapsed(),
        };
        (outcome, pidfd)
    }
}

/// The Linux runtime.
pub struct LinuxRuntime {
    cgroups: Cgroups,
    launcher_id: String,
    logs_dir: PathBuf,
    echo: LogEcho,
    client: reqwest::Client,
    events: mpsc::UnboundedSender<ProcEvent>,
    table: ProcessTable,
    table_writer: LatestWriter<Vec<Entry>>,
    janitor: Janitor,
    api_store: ApiStore,
}

impl LinuxRuntime {
    /// A runtime whose instances live under `state_dir` and `cgroups`,
    /// marked as `launcher_id`'s, reporting on `events`.
    ///
    /// # Errors
    ///
    /// The logs directory cannot be made, or the probe client built.
    pub fn new(
        state_dir: &Path,
        cgroups: Cgroups,
        launcher_id: String,
        log_max_bytes: u64,
        log_keep: usize,
        events: mpsc::UnboundedSender<ProcEvent>,
    ) -> Result<LinuxRuntime, LinuxSetupError> {
        // Before instances open their descriptors: as low as can be.
        super::spawn::slots::reserve();
        let logs_dir = state_dir.join("logs");
        let dir_err = |source| LinuxSetupError::LogsDir {
            path: logs_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&logs_dir).map_err(dir_err)?;
        // inotify reports absolute paths: follow the logs by theirs, or a
        // relative --state-dir (the default) would match no event.
        let logs_dir = std::fs::canonicalize(&logs_dir).map_err(dir_err)?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()?;
        let table = ProcessTable::new(state_dir);
        let (file, failures) = (table.clone(), events.clone());
        let table_writer = LatestWriter::start(
            "table-writer",
            writer::RETRY,
            move |entries: &Vec<Entry>| file.save(entries),
            move |error| {
                let _ = failures.send(ProcEvent::TableSaved { error });
            },
        )
        .map_err(LinuxSetupError::Writer)?;
        Ok(LinuxRuntime {
            janitor: Janitor::start(cgroups.clone(), events.clone()),
            cgroups,
            launcher_id,
            echo: LogEcho::start(&logs_dir, log_max_bytes, log_keep),
            logs_dir,
            client,
            events,
            table,
            table_writer,
            api_store: ApiStore::new(state_dir),
        })
    }

    /// The instances' logs, for GetLogs.
    pub fn log_files(&self) -> logs::LogFiles {
        self.echo.files()
    }

    fn log(&self, process_id: &str) -> PathBuf {
        logs::log_path(&self.logs_dir, process_id)
    }

    /// Follows the instance's log from byte `from` and supervises its
    /// process.
    fn watch(&self, exit: Exit, req: StartRequest<'_>, from: u64) {
        let target = probe_target(req.pattern, req.ports);
        self.supervise(Watch {
            exit,
            process_id: Arc::from(req.process_id),
            epoch: req.epoch,
            target,
            from,
        });
    }

    /// Follows an instance's log and supervises its process.
    fn supervise(&self, w: Watch) {
        self.echo
            .track(self.log(&w.process_id), w.process_id.clone(), w.from);
        tokio::spawn(supervise(
            w.exit,
            w.process_id,
            w.epoch,
            w.target,
            self.client.clone(),
            self.events.clone(),
        ));
    }
}

/// A process to supervise, and where its output begins in its log.
struct Watch {
    exit: Exit,
    process_id: Arc<str>,
    epoch: u64,
    target: ProbeTarget,
    from: u64,
}

impl Runtime for LinuxRuntime {
    fn port_check(&self) -> fn(u16) -> bool {
        super::ports::os_bindable
    }

    fn check_executable(&self, path: &Path) -> Result<(), ExecutableError> {
        spawn::check_executable(path)
    }

    fn start_batch(
        &mut self,
        jobs: Vec<StartJob>,
    ) -> impl Future<Output = Vec<(StartJob, StartOutcome)>> + Send {
        let starter = Starter {
            cgroups: self.cgroups.clone(),
            logs_dir: self.logs_dir.clone(),
            launcher_id: self.launcher_id.clone(),
        };
        let cheap_join = self.cgroups.cheap_join();
        async move {
            // The clones of a batch block their thread until each child
            // has exec'd (about 0.5 ms each). A batch of several, on the
            // multi-threaded runtime, runs in place (`block_in_place`): the
            // loop's worker hands its other tasks to another thread, so the
            // launcher goes on serving through a cold start, and the start
            // needs no hop to a blocking thread and back. A lone start (a
            // restart, one launch) runs on the worker as it is: the
            // hand-off would cost more than it saves (kill -9 → new pid,
            // 80 kills, medians: 1.77-2.03 ms with it, 1.17-1.42 ms
            // without), and another worker steals this one's queued tasks
            // meanwhile (all but the one in its LIFO slot, which waits for
            // the clone; with one worker there is none: the hand-off
            // stays). Not on cgroup v2, whose join can wait out an RCU
            // grace period (`Cgroups::cheap_join`). On the current-thread
            // runtime, on a blocking thread. The batch's processes are
            // supervised once its clones are done: probes and log
            // followers would otherwise compete with the next clones for
            // the CPU.
            let handle = tokio::runtime::Handle::current();
            let multi = handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
            let inline =
                multi && jobs.len() == 1 && handle.metrics().num_workers() > 1 && cheap_join;
            let run = move || {
                jobs.into_iter()
                    .map(|job| {
                        let (outcome, pidfd) = starter.start(&job);
                        let watch = pidfd.map(|fd| Watch {
                            exit: Exit::Child(fd),
                            process_id: Arc::from(job.process_id.as_str()),
                            epoch: job.epoch,
                            target: probe_target(&job.pattern, job.ports),
                            from: outcome.log_offset,
                        });
                        ((job, outcome), watch)
                    })
                    .collect::<Vec<_>>()
            };
            let done = if inline {
                run()
            } else if multi {
                tokio::task::block_in_place(run)
            } else {
                // Only a runtime shutting down cancels it (a panic ends
                // the launcher): the jobs did not run.
                tokio::task::spawn_blocking(run).await.unwrap_or_default()
            };
            done.into_iter()
                .map(|(result, watch)| {
                    if let Some(w) = watch {
                        self.supervise(w);
                    }
                    result
                })
                .collect()
        }
    }

    fn adopt(&mut self, found: &Found, req: StartRequest<'_>) -> Result<(), AdoptError> {
        let pid = found.pid;
        let fd = table::pidfd_open(pid).map_err(|source| AdoptError::Watch { pid, source })?;
        if !table::is_same_process(pid, found.start_time) {
            return Err(AdoptError::Reused { pid });
        }
        let from = logs::log_len(&self.log(req.process_id));
        self.watch(Exit::Adopted(fd), req, from);
        Ok(())
    }

    fn signal(&mut self, process_id: &str, pid: u32, sig: Signal) {
        if let Err(e) = signal_group(pid, sig) {
            tracing::error!("{process_id}: cannot signal process group {pid}: {e}");
        }
        // Processes that left the group (setsid) are still in the cgroup.
        let pids = self.cgroups.pids(process_id);
        self.signal_pids(&pids, sig);
    }

    fn kill(&mut self, process_id: &str, pid: u32) {
        if let Err(e) = signal_group(pid, Signal::SIGKILL) {
            tracing::error!("{process_id}: SIGKILL failed: {e}");
        }
    }

    fn ended(&mut self, process_id: &str, pid: u32, how: String, log_offset: u64) -> ExitFacts {
        let id = process_id;
        // Whatever the main process left behind goes with it: its process
        // group here, what else is in its cgroup (setsid, double fork) by
        // the janitor.
        if let Err(e) = signal_group(pid, Signal::SIGKILL) {
            tracing::warn!("{id}: cannot kill process group {pid}: {e}");
        }
        ExitFacts {
            how,
            oom_kills: self.cgroups.oom_kills(id),
            pids_refused: self.cgroups.pids_refused(id),
            tail: logs::tail(&self.log(id), log_offset, ERROR_TAIL_LINES),
        }
    }

    fn forget(&mut self, process_id: &str) {
        self.echo.untrack(self.log(process_id));
    }

    fn log_path(&self, process_id: &str) -> PathBuf {
        self.log(process_id)
    }

    fn log_len(&self, process_id: &str) -> u64 {
        logs::log_len(&self.log(process_id))
    }

    fn limits_text(&self, pattern: &Pattern) -> String {
        let r = &pattern.resources;
        let mut parts = Vec::new();
        if let Some(m) = r.memory_limit {
            parts.push(format!("memory {m} bytes"));
        }
        if let Some(c) = r.cpu_limit {
            parts.push(format!("cpu {c} cores"));
        }
        let cgroups = &self.cgroups;
        if !cgroups.enforced() {
            parts.push(format!("pids {}", r.pids));
            return format!(
                "NOT ENFORCED ({}): {}",
                parts.join(", "),
                cgroups.describe()
            );
        }
        let mut text = format!("{} by {}", parts.join(", "), cgroups.describe());
        if parts.is_empty() {
            text = format!("no memory or cpu limit; {}", cgroups.describe());
        }
        if cgroups.limits_pids() {
            text.push_str(&format!("; pids {}", r.pids));
        } else {
            text.push_str(&format!(
                "; pids {} NOT ENFORCED: no pids controller",
                r.pids
            ));
        }
        text
    }

    fn oom_kills(&self, process_id: &str) -> u64 {
        self.cgroups.oom_kills(process_id)
    }

    fn pids_refused(&self, process_id: &str) -> u64 {
        self.cgroups.pids_refused(process_id)
    }

    fn cgroup_instances(&self) -> Vec<String> {
        self.cgroups.instances()
    }

    fn cgroup_pids(&self, process_id: &str) -> Vec<u32> {
        // Those whose /proc entry is gone are no longer there to signal.
        let mut pids = self.cgroups.pids(process_id);
        pids.retain(|p| table::start_time(*p).is_some());
        pids
    }

    fn cgroup_dirs(&self, process_id: &str) -> Vec<PathBuf> {
        self.cgroups.dirs(process_id)
    }

    fn signal_pids(&mut self, pids: &[u32], sig: Signal) {
        for &pid in pids {
            if let Ok(raw) = i32::try_from(pid)
                && raw > 1
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
            }
        }
    }

    fn cgroup_work(&mut self, process_id: &str, work: CgroupWork) {
        self.janitor.queue(process_id, work);
    }

    fn discover(&mut self) -> Vec<Found> {
        discover::running(&self.cgroups, &self.launcher_id)
    }

    fn found_in_cgroup(&mut self, process_id: &str) -> Option<Found> {
        discover::in_cgroup(&self.cgroups, process_id, &self.launcher_id)
    }

    fn save_table(&mut self, entries: Vec<Entry>) {
        self.table_writer.submit(entries);
    }

    fn load_table(&mut self) -> Vec<Entry> {
        // Only a hint: adoption goes by what runs.
        self.table.load().unwrap_or_else(|e| {
            tracing::warn!("cannot read the process table, adopting from the kernel alone: {e}");
            Vec::new()
        })
    }

    fn save_api(
        &mut self,
        specs: Vec<InstanceSpec>,
    ) -> impl Future<Output = Result<(), StateFileError>> + Send + 'static {
        let store = self.api_store.clone();
        async move {
            let specs = Arc::new(specs);
            let (s, on_pool) = (store.clone(), specs.clone());
            match tokio::task::spawn_blocking(move || s.save(&on_pool)).await {
                Ok(saved) => saved,
                // The blocking pool is shutting down: write it here.
                Err(_) => store.save(&specs),
            }
        }
    }

    fn load_api(&mut self) -> Result<Vec<InstanceSpec>, StateFileError> {
        self.api_store.load()
    }

    fn flush(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let (table, cgroups) = (self.table_writer.flush(), self.janitor.flush());
        async move {
            table.await;
            cgroups.await;
        }
    }

    fn shutdown(&mut self) {
        self.cgroups.remove_parents();
    }
}
