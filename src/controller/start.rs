//! Starts: the planner's Spawn actions of a pass are prepared on the loop
//! (ports, which cgroup limits to write, the circuit), run together off it
//! ([`Runtime::start_batch`]: each cgroup's set-up and each process's clone
//! and exec, which the loop awaits while the runtime serves on), and their
//! outcomes taken in as transitions. Also the cgroup work the controller queues,
//! which a start waits for.
//!
//! A pass starts at most [`START_CHUNK`] processes: the rest wait for the
//! next pass, which comes at once, after the loop has taken in what
//! arrived meanwhile and published what started. A cold start of
//! thousands is seen (and answered) as it goes, not at its end.
//!
//! Every decision was made before it gets here.

use super::*;
use crate::events::Reason;
use crate::runtime::{CgroupWork, StartJob, StartOutcome};

/// Most processes started in one pass: about 0.1 s of starts. Smaller
/// batches cost a pass each (plan, publish, process table), which showed
/// in the lifecycle bench as a slower cold start (16: about 20 %).
pub(super) const START_CHUNK: usize = 64;

impl<R: Runtime> Controller<R> {
    /// Queues `work` on `id`'s cgroup; nothing starts there until it is
    /// done (a late removal must not meet a new process).
    pub(super) fn cgroup_work(&mut self, id: &str, work: CgroupWork) {
        self.held.work_queued(id);
        self.rt.cgroup_work(id, work);
    }

    /// `id` is gone for good: what is held for it is let go (ports, cgroup
    /// limits, log offset), its log no longer followed, its cgroup removed.
    pub(super) fn forget_instance(&mut self, id: &str) {
        self.held.forget(id);
        self.rt.forget(id);
        self.cgroup_work(id, CgroupWork::Remove);
    }

    /// Prepares a start of `id` for this pass's batch; nothing when it
    /// cannot start now (it is retried at the next pass).
    pub(super) fn prepare_start(&mut self, id: &str, reset_breaker: bool, now: Instant) {
        if self.starts.len() >= START_CHUNK {
            self.starts_deferred = true;
            return;
        }
        let Some(d) = self.desired.get(id) else {
            return;
        };
        let spec = d.spec().clone();
        let Some(pattern) = self.catalog.get(&spec.key.pattern).cloned() else {
            return;
        };
        // A kill or removal of its cgroup still queued goes first.
        if self.held.cgroup_busy(id) || self.starts.iter().any(|j| j.process_id == id) {
            return;
        }
        if self.still_running(id, now) {
            return;
        }
        // Retried every pass while the port range is used up.
        if !self.observed.contains_key(id)
            && self.reserve(id, spec.clone(), pattern.clone()).is_err()
        {
            return;
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let limits = Limits {
            cpu: pattern.resources.cpu_limit,
            memory: pattern.resources.memory_limit,
            pids: Some(pattern.resources.pids),
        };
        // A restart with the limits written last leaves the cgroup as it is.
        let known = self.held.limits(id) == Some(limits);
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
        let closed = reset_breaker && transitions::close_circuit(o);
        o.spec = spec.clone();
        o.pattern = pattern.clone();
        self.starts.push(StartJob {
            process_id: id.to_string(),
            spec,
            pattern,
            ports: o.ports,
            epoch,
            limits: (!known).then_some(limits),
        });
        if closed {
            tracing::info!("{id}: declaration changed, circuit closed");
            let msg = "its declaration changed: the circuit is closed and it starts again";
            self.emit(id, Reason::CircuitClosed, msg);
        }
    }

    /// Runs the starts prepared in this pass, off the loop, and takes
    /// their outcomes in.
    pub(super) async fn run_starts(&mut self, now: Instant) {
        if self.starts.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.starts);
        for (job, outcome) in self.rt.start_batch(jobs).await {
            self.started(job, outcome, now);
        }
    }

    /// Takes in what became of one start.
    fn started(&mut self, job: StartJob, out: StartOutcome, now: Instant) {
        let id = job.process_id.as_str();
        self.cfg.metrics.observe_spawn(out.took);
        let Some(o) = self.observed.get_mut(id) else {
            // One action per instance a pass: it cannot be gone. Should it
            // be, its process must not run unowned.
            if let Ok(child) = &out.started {
                self.rt.kill(id, child.pid);
                self.cgroup_work(id, CgroupWork::Kill);
            }
            return;
        };
        let mut limits_text = self.rt.limits_text(&job.pattern);
        // Without a set-up this is a restart: the cgroup is as this
        // launcher left it, and its OOM-kill count was read when the last
        // process exited.
        if let Some(cgroup) = out.cgroup {
            o.pids_refused_seen = out.pids_refused;
            o.oom_kills_before = match cgroup {
                Ok(new) => {
                    self.held.set_limits(id, job.limits);
                    if new { 0 } else { out.oom_kills }
                }
                Err(e) => {
                    tracing::error!("{id}: cannot set up its cgroup: {e}");
                    limits_text = format!("NOT ENFORCED: cannot set up the cgroup: {e}");
                    out.oom_kills
                }
            };
        }
        let mut launcher_problem = None;
        let event;
        let spawned = out.started.is_ok();
        match out.started {
            Ok(child) => {
                let pid = child.pid;
                if !child.joined_cgroups {
                    // Set the cgroup up again at the next start.
                    self.held.set_limits(id, None);
                }
                o.limits = child.not_enforced.unwrap_or(limits_text);
                let msg = format!(
                    "started pid {pid} (grpc port {}, health port {})",
                    o.ports.grpc, o.ports.health
                );
                tracing::info!("{id}: {msg}");
                event = Some((Reason::Spawned, msg));
                let process = ProcessInfo {
                    pid,
                    epoch: job.epoch,
                    started_at: now,
                    start_time: child.start_time,
                };
                transitions::spawned(o, process);
                self.held.set_log_offset(id, out.log_offset);
            }
            Err(e) if e.is_launcher_side() => {
                // The launcher's own trouble (its state directory, its
                // descriptors) is not the instance's failure: retried with
                // backoff, never counted towards the circuit breaker.
                tracing::warn!("{id}: the launcher cannot start it: {e}");
                let jitter = rand::random::<f64>();
                transitions::spawn_failed(o, e.to_string(), SpawnFault::Launcher, now, jitter);
                launcher_problem = Some(format!("cannot start instances: {e}"));
                let msg = format!("the launcher cannot start it: {e}");
                event = Some((Reason::SpawnFailed, msg));
            }
            Err(e) => {
                tracing::error!("{id}: {e}");
                let jitter = rand::random::<f64>();
                transitions::spawn_failed(o, e.to_string(), SpawnFault::Pattern, now, jitter);
                event = Some((Reason::SpawnFailed, e.to_string()));
            }
        }
        if spawned || launcher_problem.is_some() {
            self.problem("spawn", launcher_problem);
        }
        if let Some((reason, msg)) = event {
            self.emit(id, reason, msg);
        }
        self.table_dirty = true;
        self.touch(id);
    }
}
