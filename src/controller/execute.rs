//! Facts in, actions out: process events become transitions of the
//! observed table ([`crate::reconcile::transitions`]), and the planner's
//! actions become runtime calls (start, signal, kill, forget).
//!
//! Every decision was made before it gets here.

use super::*;

impl<R: Runtime> Controller<R> {
    pub(super) fn current<'a>(
        observed: &'a mut Observed,
        id: &str,
        epoch: u64,
    ) -> Option<&'a mut ObservedInstance> {
        observed
            .get_mut(id)
            .filter(|o| o.process.is_some_and(|p| p.epoch == epoch))
    }

    pub(super) fn event(&mut self, ev: ProcEvent) {
        let now = self.rt.now();
        match ev {
            ProcEvent::Probe {
                process_id,
                epoch,
                ok,
                detail,
            } => {
                let Some(o) = Self::current(&mut self.observed, &process_id, epoch) else {
                    return;
                };
                match transitions::probed(o, ok, &detail, now) {
                    ProbeOutcome::Healthy => tracing::info!("{process_id}: healthy"),
                    ProbeOutcome::StillHealthy => {}
                    ProbeOutcome::Failed {
                        failures,
                        threshold,
                    } => tracing::warn!(
                        "{process_id}: health check failed ({failures}/{threshold}): {detail}"
                    ),
                    ProbeOutcome::Ignored => return,
                }
                self.touch(&process_id);
            }
            ProcEvent::Exited {
                process_id,
                epoch,
                status,
            } => self.exited(&process_id, epoch, status, now),
            ProcEvent::CgroupDone { process_id } => {
                if let Some((epoch, facts)) = self.held.work_done(&process_id) {
                    self.take_exit(&process_id, epoch, facts, now);
                }
            }
            ProcEvent::TableSaved { error } => self.problem(
                "table",
                error.map(|e| format!("cannot write the process table: {e}")),
            ),
        }
    }

    pub(super) fn exited(
        &mut self,
        id: &str,
        epoch: u64,
        status: Result<std::process::ExitStatus, String>,
        now: Instant,
    ) {
        let Some(pid) = Self::current(&mut self.observed, id, epoch)
            .and_then(|o| o.process)
            .map(|p| p.pid)
        else {
            return;
        };
        let offset = self.held.log_offset(id);
        let how = match status {
            Ok(s) => describe_exit(s),
            Err(e) => e,
        };
        let facts = self.rt.ended(id, pid, how, offset);
        // What it left behind in its cgroup (setsid, double fork) goes too:
        // the exit is taken in once that is done (by the janitor).
        if !self.rt.cgroup_pids(id).is_empty() {
            tracing::info!("{id}: killing what its main process left behind");
            self.cgroup_work(id, CgroupWork::Kill);
            self.held.defer_exit(id, epoch, facts);
            return;
        }
        self.take_exit(id, epoch, facts, now);
    }

    /// Takes in the end of `id`'s process of `epoch` (a transition).
    pub(super) fn take_exit(&mut self, id: &str, epoch: u64, facts: ExitFacts, now: Instant) {
        let Some(o) = Self::current(&mut self.observed, id, epoch) else {
            return;
        };
        let pid = o.process.map_or(0, |p| p.pid);
        let Some(out) = transitions::exited(o, facts, now, rand::random::<f64>()) else {
            return;
        };
        let how = out.message;
        match out.kind {
            ExitKind::Finished => tracing::info!("{id}: stopped ({how})"),
            ExitKind::Replaced => {
                tracing::info!("{id}: stopped for a restart with a new spec ({how})");
            }
            ExitKind::StoppedAfterFailure => {
                tracing::info!("{id}: stopped after a failure ({how})")
            }
            ExitKind::Crashed => tracing::warn!(
                "{id}: pid {pid} {how} (failure {} in a row)",
                o.consecutive_failures
            ),
        }
        self.table_dirty = true;
        self.touch(id);
    }

    pub(super) fn execute(&mut self, action: Action, now: Instant) {
        match action {
            Action::Spawn {
                process_id,
                reset_breaker,
            } => self.prepare_start(&process_id, reset_breaker, now),
            Action::Stop {
                process_id,
                reason,
                grace,
                force,
            } => self.stop(&process_id, reason, grace, force, now),
            Action::Kill { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    transitions::killed(o);
                    if let Some(p) = o.process {
                        tracing::warn!("{process_id}: sending SIGKILL to pid {}", p.pid);
                        self.rt.kill(&process_id, p.pid);
                        self.cgroup_work(&process_id, CgroupWork::Kill);
                    }
                    self.touch(&process_id);
                }
            }
            Action::BreakCircuit { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    let msg = transitions::break_circuit(o);
                    tracing::error!("{process_id}: {msg}");
                    self.touch(&process_id);
                }
            }
            Action::ResetFailures { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    transitions::reset_failures(o);
                    self.touch(&process_id);
                }
            }
            Action::Forget { process_id } => {
                if self.observed.remove(&process_id).is_some() {
                    self.forget_instance(&process_id);
                    self.table_dirty = true;
                    self.touch(&process_id);
                }
            }
        }
    }

    pub(super) fn stop(
        &mut self,
        id: &str,
        reason: StopReason,
        grace: Duration,
        force: bool,
        now: Instant,
    ) {
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
        let Some(p) = o.process else {
            return;
        };
        let sig = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        tracing::info!("{id}: stopping pid {} with {sig} (grace {grace:?})", p.pid);
        self.rt.signal(id, p.pid, sig);
        let startup = self.cfg.plan.startup_timeout;
        if let Some(why) = transitions::stop_began(o, reason, grace, force, startup, now) {
            tracing::warn!("{id}: {why}");
        }
        self.touch(id);
    }
}
