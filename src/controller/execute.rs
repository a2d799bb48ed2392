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
        let offset = self.log_offsets.get(id).copied().unwrap_or(0);
        let how = match status {
            Ok(s) => describe_exit(s),
            Err(e) => e.to_string(),
        };
        let facts = self.rt.ended(id, pid, how, offset);
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
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
            } => self.spawn(&process_id, reset_breaker, now),
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
                    self.ports.release(o.ports);
                    self.ports_exhausted_logged = false;
                    self.cgroup_limits.remove(&process_id);
                    self.rt.forget(&process_id);
                    self.table_dirty = true;
                    self.log_offsets.remove(&process_id);
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

    pub(super) fn spawn(&mut self, id: &str, reset_breaker: bool, now: Instant) {
        let Some(d) = self.desired.get(id) else {
            return;
        };
        let spec = d.spec().clone();
        let Some(pattern) = self.catalog.get(&spec.key.pattern).cloned() else {
            return;
        };
        if self.still_running(id, now) {
            return;
        }
        // Retried every pass while the port range is used up.
        if !self.observed.contains_key(id)
            && self.reserve(id, spec.clone(), pattern.clone()).is_err()
        {
            return;
        }
        let offset = self.rt.log_len(id);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let limits = Limits {
            cpu: pattern.resources.cpu_limit,
            memory: pattern.resources.memory_limit,
            pids: Some(pattern.resources.pids),
        };
        let mut limits_text = self.rt.limits_text(&pattern);
        let known = self.cgroup_limits.get(id) == Some(&limits);
        let oom_before = match self.observed.get(id) {
            // A restart: the cgroup is as this launcher left it, and its
            // OOM-kill count was read when the last process exited.
            Some(o) if known => o.oom_kills_before,
            _ => match self.rt.prepare_cgroup(id, limits) {
                Ok(new) => {
                    self.cgroup_limits.insert(id.to_string(), limits);
                    if new { 0 } else { self.rt.oom_kills(id) }
                }
                Err(e) => {
                    tracing::error!("{id}: cannot set up its cgroup: {e}");
                    limits_text = format!("NOT ENFORCED: cannot set up the cgroup: {e}");
                    self.rt.oom_kills(id)
                }
            },
        };
        let refused = (!known).then(|| self.rt.pids_refused(id));
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
        let closed = reset_breaker && transitions::close_circuit(o);
        if closed {
            tracing::info!("{id}: declaration changed, circuit closed");
        }
        o.spec = spec;
        o.pattern = pattern.clone();
        o.oom_kills_before = oom_before;
        if let Some(refused) = refused {
            o.pids_refused_seen = refused;
        }
        let mut spawned = false;
        let mut spawned_msg = None;
        let mut failed_msg = None;
        let mut launcher_problem = None;
        let req = StartRequest {
            process_id: id,
            spec: &o.spec,
            pattern: &pattern,
            ports: o.ports,
            epoch,
        };
        match self.cfg.metrics.time_spawn(|| self.rt.start(req)) {
            Ok(child) => {
                let pid = child.pid;
                if !child.joined_cgroups {
                    // Set the cgroup up again at the next start.
                    self.cgroup_limits.remove(id);
                }
                o.limits = child.not_enforced.unwrap_or(limits_text);
                spawned = true;
                let msg = format!(
                    "started pid {pid} (grpc port {}, health port {})",
                    o.ports.grpc, o.ports.health
                );
                tracing::info!("{id}: {msg}");
                spawned_msg = Some(msg);
                let process = ProcessInfo {
                    pid,
                    epoch,
                    started_at: now,
                    start_time: child.start_time,
                };
                transitions::spawned(o, process);
                self.log_offsets.insert(id.to_string(), offset);
            }
            Err(e) if e.is_launcher_side() => {
                // The launcher's own trouble (its state directory, its
                // descriptors) is not the instance's failure: retried with
                // backoff, never counted towards the circuit breaker.
                tracing::warn!("{id}: the launcher cannot start it: {e}");
                let jitter = rand::random::<f64>();
                transitions::spawn_failed(o, e.to_string(), SpawnFault::Launcher, now, jitter);
                launcher_problem = Some(format!("cannot start instances: {e}"));
                failed_msg = Some(format!("the launcher cannot start it: {e}"));
            }
            Err(e) => {
                tracing::error!("{id}: {e}");
                let jitter = rand::random::<f64>();
                transitions::spawn_failed(o, e.to_string(), SpawnFault::Pattern, now, jitter);
                failed_msg = Some(e.to_string());
            }
        }
        if spawned || launcher_problem.is_some() {
            self.problem("spawn", launcher_problem);
        }
        if closed {
            let msg = "its declaration changed: the circuit is closed and it starts again";
            self.emit(id, Reason::CircuitClosed, msg);
        }
        if let Some(msg) = spawned_msg {
            self.emit(id, Reason::Spawned, msg);
        }
        if let Some(msg) = failed_msg {
            self.emit(id, Reason::SpawnFailed, msg);
        }
        self.table_dirty = true;
        self.touch(id);
    }
}
