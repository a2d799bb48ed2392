//! Facts in, actions out: process events become transitions of the
//! observed table ([`crate::reconcile::transitions`]), and the planner's
//! actions become runtime calls (start, signal, kill, forget).
//!
//! Every decision was made before it gets here.

use super::*;
use crate::events::Reason;

/// A delay rounded to milliseconds, for messages.
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
                    ProbeOutcome::Healthy => {
                        tracing::info!("{process_id}: healthy");
                        let path = &o.pattern.health.path;
                        let msg = format!("probe GET {path} passed");
                        self.emit(&process_id, Reason::Healthy, msg);
                    }
                    ProbeOutcome::StillHealthy => {}
                    ProbeOutcome::Failed {
                        failures,
                        threshold,
                    } => {
                        tracing::warn!(
                            "{process_id}: health check failed ({failures}/{threshold}): {detail}"
                        );
                        let path = &o.pattern.health.path;
                        let msg = format!("probe GET {path}: {detail} ({failures}/{threshold})");
                        self.emit(&process_id, Reason::Unhealthy, msg);
                        self.cfg.metrics.probe_failed();
                    }
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
        status: Result<std::process::ExitStatus, crate::runtime::supervise::UnknownExit>,
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
            Err(e) => e.to_string(),
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
        let failures = o.consecutive_failures;
        let backoff = (out.kind == ExitKind::Crashed)
            .then(|| crate::reconcile::plan::next_restart(o, &self.cfg.plan))
            .flatten()
            .map(|_| crate::reconcile::plan::restart_delay(o));
        match out.kind {
            ExitKind::Finished => tracing::info!("{id}: stopped ({how})"),
            ExitKind::Replaced => {
                tracing::info!("{id}: stopped for a restart with a new spec ({how})");
            }
            ExitKind::StoppedAfterFailure => {
                tracing::info!("{id}: stopped after a failure ({how})")
            }
            ExitKind::Crashed => {
                tracing::warn!("{id}: pid {pid} {how} (failure {failures} in a row)")
            }
        }
        let reason = if out.oom_killed {
            Reason::OomKilled
        } else {
            Reason::Exited
        };
        let msg = match out.kind {
            ExitKind::Crashed => format!("pid {pid} {how} (failure {failures} in a row)"),
            _ => format!("pid {pid} {how}"),
        };
        self.emit(id, reason, msg);
        if let Some(delay) = backoff.filter(|d| !d.is_zero()) {
            let msg = format!(
                "next start in {}",
                humantime::format_duration(round_ms(delay))
            );
            self.emit(id, Reason::BackOff, msg);
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
                        let msg = format!(
                            "SIGKILL sent to pid {}: still running at the end of its grace period",
                            p.pid
                        );
                        self.emit(&process_id, Reason::Killed, msg);
                        self.cgroup_work(&process_id, CgroupWork::Kill);
                    }
                    self.touch(&process_id);
                }
            }
            Action::BreakCircuit { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    let msg = transitions::break_circuit(o);
                    tracing::error!("{process_id}: {msg}");
                    self.emit(&process_id, Reason::CircuitOpen, msg);
                    self.touch(&process_id);
                }
            }
            Action::ResetFailures { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    let had = o.consecutive_failures;
                    transitions::reset_failures(o);
                    if had > 0 {
                        let healthy = humantime::format_duration(self.cfg.plan.healthy_reset);
                        let msg =
                            format!("healthy for {healthy}: its {had} failures are forgotten");
                        self.emit(&process_id, Reason::CircuitClosed, msg);
                    }
                    self.touch(&process_id);
                }
            }
            Action::Forget { process_id } => {
                if let Some(o) = self.observed.remove(&process_id) {
                    let msg = format!("{process_id} stopped and is removed");
                    self.pending_events.push(crate::events::NewEvent {
                        process_id: process_id.clone(),
                        pattern: o.spec.key.pattern.clone(),
                        namespace: o.spec.key.namespace.clone(),
                        ..crate::events::NewEvent::general(Reason::Terminated, msg)
                    });
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
        let why = transitions::stop_began(o, reason, grace, force, startup, now);
        if let Some(why) = &why {
            tracing::warn!("{id}: {why}");
        }
        let cause = match (why, reason) {
            (Some(why), _) => why,
            (None, StopReason::NotDesired) => "no longer declared".to_string(),
            (None, StopReason::SpecChanged) => "restarting".to_string(),
            (None, r) => format!("{r:?}"),
        };
        let msg = if force {
            format!("{cause}: SIGKILL sent to pid {}", p.pid)
        } else {
            format!(
                "{cause}: SIGTERM sent to pid {}, SIGKILL in {}",
                p.pid,
                humantime::format_duration(grace)
            )
        };
        self.emit(id, Reason::Terminating, msg);
        self.touch(id);
    }
}
