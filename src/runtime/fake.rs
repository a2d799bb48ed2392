//! A [`Runtime`] for the controller's tests: no process, cgroup or file is
//! touched. It hands out pids, records every request with the (paused)
//! tokio time it came at, and plays the processes: each "process" reacts to
//! signals and may crash at start as its behaviour says, reporting through
//! the same event channel the real supervisors use. Cgroup work is done at
//! once, or held until the test releases it ([`FakeState::hold_cgroup_work`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::discover::Found;
use super::janitor::CgroupWork;
use super::supervise::ProcEvent;
use super::table::Entry;
use super::{AdoptError, ExecutableError, Runtime, StartJob, StartOutcome, StartRequest, Started};
use crate::reconcile::transitions::ExitFacts;
use crate::sources::state_file::StateFileError;
use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

/// How a fake process behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Exits with status 1 right after it starts.
    pub crash_at_start: bool,
    /// Becomes healthy right after it starts (its first probe passes).
    pub healthy_at_start: bool,
    /// Ignores SIGTERM (only SIGKILL ends it).
    pub ignore_sigterm: bool,
}

/// Something the runtime was asked to do, with when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A process started.
    Start {
        /// Instance.
        process_id: String,
        /// Its pid.
        pid: u32,
    },
    /// A signal to an instance's process (group and cgroup).
    Signal {
        /// Instance.
        process_id: String,
        /// Its pid.
        pid: u32,
        /// The signal.
        sig: Signal,
    },
    /// SIGKILL to an instance's whole tree.
    Kill {
        /// Instance.
        process_id: String,
        /// Its pid.
        pid: u32,
    },
    /// Signals to loose pids (orphans).
    SignalPids {
        /// The pids.
        pids: Vec<u32>,
        /// The signal.
        sig: Signal,
    },
    /// Cgroup work queued.
    CgroupWork {
        /// Instance.
        process_id: String,
        /// What.
        work: CgroupWork,
    },
    /// Cgroup work done (reported to the controller).
    CgroupDone {
        /// Instance.
        process_id: String,
        /// What.
        work: CgroupWork,
    },
    /// A process taken over from an earlier launcher.
    Adopt {
        /// Instance.
        process_id: String,
        /// Its pid.
        pid: u32,
    },
}

/// What the fake knows; tests read and set it through [`FakeRuntime::state`].
#[derive(Debug, Default)]
pub struct FakeState {
    /// Every call, with the tokio time it was made at.
    pub calls: Vec<(Instant, Call)>,
    /// Behaviour of new processes of each pattern (default: none special).
    pub behaviour: BTreeMap<String, Behaviour>,
    /// Live fake processes by instance: pid, epoch, behaviour.
    pub running: BTreeMap<String, (u32, u64, Behaviour)>,
    /// Processes in cgroups that no instance started (orphans), by instance.
    pub orphans: BTreeMap<String, Vec<u32>>,
    /// What discovery finds at start-up.
    pub found: Vec<Found>,
    /// The stored API declarations.
    pub api: Vec<InstanceSpec>,
    /// The process table last written.
    pub table: Vec<Entry>,
    /// Cgroup work waits for [`FakeRuntime::release_cgroup_work`] instead
    /// of being done at once.
    pub hold_cgroup_work: bool,
    /// Cgroup work held, in the order queued.
    pub held_work: Vec<(String, CgroupWork)>,
    /// The size of each batch of starts, in order.
    pub batches: Vec<usize>,
    next_pid: u32,
}

/// The fake runtime; clones share one state.
#[derive(Clone)]
pub struct FakeRuntime {
    state: Arc<Mutex<FakeState>>,
    events: mpsc::UnboundedSender<ProcEvent>,
}

impl FakeRuntime {
    /// A fake reporting on `events`.
    pub fn new(events: mpsc::UnboundedSender<ProcEvent>) -> FakeRuntime {
        FakeRuntime {
            state: Arc::new(Mutex::new(FakeState {
                next_pid: 1000,
                ..FakeState::default()
            })),
            events,
        }
    }

    /// The shared state (never held across an `.await`).
    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The process of `process_id` exits with `status` (as a crash, or on
    /// its own).
    pub fn exit(&self, process_id: &str, status: ExitStatus) {
        let gone = self.state().running.remove(process_id);
        if let Some((_, epoch, _)) = gone {
            self.report_exit(process_id, epoch, status);
        }
    }

    /// A probe result of the process of `process_id`.
    pub fn probe(&self, process_id: &str, ok: bool) {
        let epoch = self.state().running.get(process_id).map(|r| r.1);
        if let Some(epoch) = epoch {
            let _ = self.events.send(ProcEvent::Probe {
                process_id: Arc::from(process_id),
                epoch,
                ok,
                detail: if ok {
                    String::new()
                } else {
                    "GET /health: connection refused".into()
                },
            });
        }
    }

    /// The calls made so far.
    pub fn calls(&self) -> Vec<(Instant, Call)> {
        self.state().calls.clone()
    }

    fn record(&self, call: Call) {
        let now = tokio::time::Instant::now().into_std();
        self.state().calls.push((now, call));
    }

    /// Does the cgroup work held so far, in order, reporting each.
    pub fn release_cgroup_work(&self) {
        let held = std::mem::take(&mut self.state().held_work);
        for (id, work) in held {
            self.cgroup_done(&id, work);
        }
    }

    fn cgroup_done(&self, process_id: &str, work: CgroupWork) {
        // Killing or removing a cgroup ends the orphans in it.
        self.state().orphans.remove(process_id);
        self.record(Call::CgroupDone {
            process_id: process_id.to_string(),
            work,
        });
        let _ = self.events.send(ProcEvent::CgroupDone {
            process_id: Arc::from(process_id),
        });
    }

    fn start(&self, req: StartRequest<'_>) -> Started {
        let (pid, behaviour) = {
            let mut st = self.state();
            st.next_pid += 1;
            let pid = st.next_pid;
            let b = st
                .behaviour
                .get(&req.pattern.name)
                .copied()
                .unwrap_or_default();
            st.running
                .insert(req.process_id.to_string(), (pid, req.epoch, b));
            (pid, b)
        };
        self.record(Call::Start {
            process_id: req.process_id.to_string(),
            pid,
        });
        if behaviour.crash_at_start {
            self.exit(req.process_id, exit_code(1));
        } else if behaviour.healthy_at_start {
            self.probe(req.process_id, true);
        }
        Started {
            pid,
            start_time: u64::from(pid),
            joined_cgroups: true,
            not_enforced: None,
        }
    }

    fn report_exit(&self, process_id: &str, epoch: u64, status: ExitStatus) {
        let _ = self.events.send(ProcEvent::Exited {
            process_id: Arc::from(process_id),
            epoch,
            status: Ok(status),
        });
    }
}

/// The status of a death by `sig`.
pub fn killed_by(sig: Signal) -> ExitStatus {
    ExitStatus::from_raw(sig as i32)
}

/// The status of an exit with `code`.
pub fn exit_code(code: i32) -> ExitStatus {
    ExitStatus::from_raw((code & 0xff) << 8)
}

impl Runtime for FakeRuntime {
    fn port_check(&self) -> fn(u16) -> bool {
        |_| true
    }

    fn log_path(&self, process_id: &str) -> PathBuf {
        PathBuf::from("logs").join(format!("{process_id}.log"))
    }

    fn check_executable(&self, _path: &Path) -> Result<(), ExecutableError> {
        Ok(())
    }

    fn start_batch(
        &mut self,
        jobs: Vec<StartJob>,
    ) -> impl Future<Output = Vec<(StartJob, StartOutcome)>> + Send {
        self.state().batches.push(jobs.len());
        let done: Vec<(StartJob, StartOutcome)> = jobs
            .into_iter()
            .map(|job| {
                let started = self.start(job.request());
                let outcome = StartOutcome {
                    cgroup: job.limits.map(|_| Ok(true)),
                    oom_kills: 0,
                    pids_refused: 0,
                    log_offset: 0,
                    started: Ok(started),
                    took: std::time::Duration::ZERO,
                };
                (job, outcome)
            })
            .collect();
        std::future::ready(done)
    }

    fn adopt(&mut self, found: &Found, req: StartRequest<'_>) -> Result<(), AdoptError> {
        let b = self
            .state()
            .behaviour
            .get(&req.pattern.name)
            .copied()
            .unwrap_or_default();
        self.state()
            .running
            .insert(req.process_id.to_string(), (found.pid, req.epoch, b));
        self.record(Call::Adopt {
            process_id: req.process_id.to_string(),
            pid: found.pid,
        });
        Ok(())
    }

    fn signal(&mut self, process_id: &str, pid: u32, sig: Signal) {
        self.record(Call::Signal {
            process_id: process_id.to_string(),
            pid,
            sig,
        });
        let ignores = self
            .state()
            .running
            .get(process_id)
            .is_some_and(|r| r.0 == pid && r.2.ignore_sigterm);
        if sig == Signal::SIGKILL || !ignores {
            self.exit(process_id, killed_by(sig));
        }
    }

    fn kill(&mut self, process_id: &str, pid: u32) {
        self.record(Call::Kill {
            process_id: process_id.to_string(),
            pid,
        });
        self.exit(process_id, killed_by(Signal::SIGKILL));
    }

    fn ended(&mut self, _process_id: &str, _pid: u32, how: String, _log_offset: u64) -> ExitFacts {
        ExitFacts {
            how,
            oom_kills: 0,
            pids_refused: 0,
            tail: Vec::new(),
        }
    }

    fn forget(&mut self, _process_id: &str) {}

    fn log_len(&self, _process_id: &str) -> u64 {
        0
    }

    fn limits_text(&self, _pattern: &Pattern) -> String {
        "fake".into()
    }

    fn oom_kills(&self, _process_id: &str) -> u64 {
        0
    }

    fn pids_refused(&self, _process_id: &str) -> u64 {
        0
    }

    fn cgroup_instances(&self) -> Vec<String> {
        let st = self.state();
        let mut ids: Vec<String> = st
            .running
            .keys()
            .chain(st.orphans.keys())
            .cloned()
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    fn cgroup_pids(&self, process_id: &str) -> Vec<u32> {
        let st = self.state();
        let mut pids = st.orphans.get(process_id).cloned().unwrap_or_default();
        pids.extend(st.running.get(process_id).map(|r| r.0));
        pids
    }

    fn cgroup_dirs(&self, _process_id: &str) -> Vec<PathBuf> {
        Vec::new()
    }

    fn signal_pids(&mut self, pids: &[u32], sig: Signal) {
        self.record(Call::SignalPids {
            pids: pids.to_vec(),
            sig,
        });
    }

    fn cgroup_work(&mut self, process_id: &str, work: CgroupWork) {
        self.record(Call::CgroupWork {
            process_id: process_id.to_string(),
            work,
        });
        let held = {
            let mut st = self.state();
            if st.hold_cgroup_work {
                st.held_work.push((process_id.to_string(), work));
            }
            st.hold_cgroup_work
        };
        if !held {
            self.cgroup_done(process_id, work);
        }
    }

    fn discover(&mut self) -> Vec<Found> {
        std::mem::take(&mut self.state().found)
    }

    fn found_in_cgroup(&mut self, _process_id: &str) -> Option<Found> {
        None
    }

    fn save_table(&mut self, entries: Vec<Entry>) {
        self.state().table = entries;
    }

    fn load_table(&mut self) -> Vec<Entry> {
        Vec::new()
    }

    fn save_api(
        &mut self,
        specs: Vec<InstanceSpec>,
    ) -> impl Future<Output = Result<(), StateFileError>> + Send + 'static {
        self.state().api = specs;
        std::future::ready(Ok(()))
    }

    fn load_api(&mut self) -> Result<Vec<InstanceSpec>, StateFileError> {
        Ok(self.state().api.clone())
    }

    fn flush(&mut self) -> impl Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }

    fn shutdown(&mut self) {}
}
