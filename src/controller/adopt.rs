//! Containment as the controller carries it out: adopting the processes an
//! earlier launcher left running, the orphan sweep and reaping (decided by
//! [`crate::reconcile::orphans`]), and the process table.
//!
//! It decides nothing about lifecycles; every OS call goes through the
//! runtime.

use super::*;

impl<R: Runtime> Controller<R> {
    /// Takes over the instance processes of an earlier launcher with this
    /// state directory that still run, as the kernel shows them (see
    /// [`discover`]); the process table only confirms ports and specs.
    /// Runs once the desired directory has been read: a process started
    /// with the declaration in force is adopted with it, one started with
    /// another is restarted gracefully, one no longer declared is stopped
    /// gracefully (the planner's decisions).
    pub(super) fn adopt_running(&mut self) {
        let recorded = std::mem::take(&mut self.recorded);
        let began = std::time::Instant::now();
        let running = self.rt.discover();
        let found = running.len();
        let mut hints: HashMap<String, Entry> = HashMap::with_capacity(recorded.len());
        for e in recorded {
            if running
                .iter()
                .any(|f| f.pid == e.pid && f.start_time == e.start_time)
            {
                hints.insert(e.process_id.clone(), e);
            } else {
                tracing::info!(
                    "{}: recorded pid {} is not running as this instance (gone, another process now, or outside its cgroup); not touched",
                    e.process_id,
                    e.pid
                );
            }
        }
        let mut adopted = 0;
        for f in running {
            let hint = hints
                .remove(&f.process_id)
                .filter(|e| e.pid == f.pid && e.start_time == f.start_time);
            adopted += usize::from(self.adopt_one(f, hint));
        }
        if found > 0 {
            tracing::info!(
                "{found} running instances found, {adopted} adopted, in {:?}",
                began.elapsed()
            );
        }
    }

    /// Adopts one running instance process; false when it cannot be (it
    /// is then left to the orphan sweep).
    pub(super) fn adopt_one(&mut self, f: discover::Found, hint: Option<Entry>) -> bool {
        let id = f.process_id.clone();
        if self.observed.contains_key(&id) {
            return false;
        }
        let declared = self.desired.get(&id).map(|d| d.spec().clone());
        let key = [
            declared.as_ref().map(|s| &s.key),
            hint.as_ref().map(|e| &e.spec.key),
            f.key.as_ref(),
        ]
        .into_iter()
        .flatten()
        .find(|k| k.process_id() == id)
        .cloned();
        let Some(key) = key else {
            tracing::warn!(
                "{id}: pid {} names no valid pattern; not adopted, the orphan sweep stops it",
                f.pid
            );
            return false;
        };
        let Some(pattern) = self.catalog.get(&key.pattern).cloned() else {
            // Without its pattern it can neither be probed nor
            // restarted: the orphan sweep stops it.
            tracing::warn!(
                "{id}: pid {} runs pattern {} which is not in the catalog; not adopted, the orphan sweep stops it",
                f.pid,
                key.pattern
            );
            return false;
        };
        // The spec it runs with: the declaration's when the hashes agree,
        // else the recorded one when it does, else an unknown one (which
        // the planner replaces with a graceful restart).
        let grace = hint
            .as_ref()
            .and_then(|e| e.spec.grace_period)
            .or_else(|| declared.as_ref().and_then(|s| s.grace_period));
        let known = declared
            .filter(|s| discover::spec_hash(s) == f.spec_hash)
            .or_else(|| {
                hint.as_ref()
                    .map(|e| e.spec.clone())
                    .filter(|s| discover::spec_hash(s) == f.spec_hash)
            });
        let mut restart = known.is_none();
        let mut spec = known.unwrap_or_else(|| discover::unknown_spec(key.clone(), grace));
        let given = f.ports.or_else(|| hint.as_ref().map(Entry::ports));
        let ports = match given.filter(|p| self.held.hold_ports(&id, *p)) {
            Some(p) => p,
            None => {
                // Its ports are unknown or another instance's: it gets
                // new ones through a restart.
                match self.held.assign_ports(&id, pattern.health.port) {
                    Ok(p) => {
                        restart = true;
                        spec = discover::unknown_spec(key, grace);
                        tracing::warn!(
                            "{id}: pid {} has unknown or taken ports ({given:?}): restarting it on new ones",
                            f.pid
                        );
                        p
                    }
                    Err(e) => {
                        tracing::error!("{id}: pid {} not adopted: {e}", f.pid);
                        return false;
                    }
                }
            }
        };
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let req = StartRequest {
            process_id: &id,
            spec: &spec,
            pattern: &pattern,
            ports,
            epoch,
        };
        if let Err(e) = self.rt.adopt(&f, req) {
            tracing::warn!("{id}: {e}; not adopted");
            self.held.release_ports(&id);
            return false;
        }
        let mut o = ObservedInstance::new(spec, pattern.clone(), ports);
        o.phase = Phase::Starting;
        o.restart_now = false;
        o.process = Some(ProcessInfo {
            pid: f.pid,
            epoch,
            started_at: self.rt.now(),
            start_time: f.start_time,
        });
        o.oom_kills_before = self.rt.oom_kills(&id);
        o.limits = self.rt.limits_text(&pattern);
        let msg = if restart {
            format!(
                "adopted pid {} from an earlier launcher; it was started with another declaration: restarting it",
                f.pid
            )
        } else {
            format!("adopted pid {} from an earlier launcher", f.pid)
        };
        tracing::info!("{id}: {msg}");
        let offset = self.rt.log_len(&id);
        self.held.set_log_offset(&id, offset);
        self.touch(&id);
        self.observed.insert(id.clone(), o);
        self.emit(&id, crate::events::Reason::Adopted, msg);
        self.table_dirty = true;
        true
    }

    /// Writes the process table when it changed (queued: the writer
    /// reports failures as events).
    pub(super) fn save_table(&mut self) {
        if !std::mem::take(&mut self.table_dirty) {
            return;
        }
        let entries: Vec<Entry> = self
            .observed
            .iter()
            .filter_map(|(id, o)| {
                let p = o.process?;
                Some(Entry {
                    process_id: id.clone(),
                    spec: o.spec.clone(),
                    pid: p.pid,
                    start_time: p.start_time,
                    cgroups: self.rt.cgroup_dirs(id),
                    grpc_port: o.ports.grpc,
                    health_port: o.ports.health,
                })
            })
            .collect();
        self.rt.save_table(entries);
    }

    /// Finds processes in this launcher's cgroups that no instance owns,
    /// and stops them: SIGTERM now, SIGKILL after the default grace period
    /// (the decisions are [`orphans`]'). Cgroups with work queued are the
    /// janitor's until it is done.
    pub(super) fn sweep_orphans(&mut self, now: Instant) {
        self.report_pids_limits();
        let views: Vec<CgroupView> = self
            .rt
            .cgroup_instances()
            .into_iter()
            .filter(|id| !self.held.cgroup_busy(id))
            .map(|id| CgroupView {
                owned: self.observed.get(&id).is_some_and(|o| o.process.is_some()),
                observed: self.observed.contains_key(&id),
                pids: self.rt.cgroup_pids(&id),
                process_id: id,
            })
            .collect();
        let mut actions = Vec::new();
        for view in views {
            let id = view.process_id.clone();
            let reaping = self.held.reaping(&id).is_some();
            if let Some((action, r)) =
                orphans::sweep(view, reaping, self.cfg.plan.default_grace, now)
            {
                if r.is_some() {
                    self.held.set_reaping(&id, r);
                }
                actions.push(action);
            }
        }
        self.orphan_actions(actions);
    }

    /// Carries out what [`orphans`] decided (kills and removals by the
    /// janitor; a kill is not queued twice).
    pub(super) fn orphan_actions(&mut self, actions: Vec<OrphanAction>) {
        for a in actions {
            match a {
                OrphanAction::Terminate { process_id, pids } => {
                    let msg = format!(
                        "orphan processes of {process_id} (pids {pids:?}): no instance owns them; SIGTERM sent (grace {})",
                        humantime::format_duration(self.cfg.plan.default_grace)
                    );
                    tracing::warn!("{msg}");
                    self.rt.signal_pids(&pids, Signal::SIGTERM);
                    self.orphan_event(&process_id, msg);
                }
                OrphanAction::Kill { process_id } => {
                    if !self.held.cgroup_busy(&process_id) {
                        let msg = format!(
                            "orphan processes of {process_id} outlived the grace period: SIGKILL sent"
                        );
                        tracing::warn!("{msg}");
                        self.cgroup_work(&process_id, CgroupWork::Kill);
                        self.orphan_event(&process_id, msg);
                    }
                }
                OrphanAction::Remove { process_id } => {
                    self.cgroup_work(&process_id, CgroupWork::Remove);
                }
            }
        }
    }

    fn orphan_event(&mut self, process_id: &str, message: String) {
        self.pending_events.push(crate::events::NewEvent {
            process_id: process_id.to_string(),
            ..crate::events::NewEvent::general(crate::events::Reason::OrphanReaped, message)
        });
    }

    /// Says which running instances hit their `pids.max` since the last
    /// look (a fork bomb, or a limit set too low).
    pub(super) fn report_pids_limits(&mut self) {
        for (id, o) in &mut self.observed {
            if o.process.is_none() {
                continue;
            }
            let refused = self.rt.pids_refused(id);
            if refused > o.pids_refused_seen {
                tracing::warn!(
                    "{id}: reached its pids limit of {}: {} forks refused since the last report",
                    o.pattern.resources.pids,
                    refused - o.pids_refused_seen
                );
                o.pids_refused_seen = refused;
            }
        }
    }

    /// Stops the processes of `id`'s cgroup that no instance owns: SIGTERM
    /// now, SIGKILL after the default grace period.
    pub(super) fn reap(&mut self, id: String, pids: &[u32], now: Instant) {
        let (r, action) = orphans::reap(&id, pids.to_vec(), self.cfg.plan.default_grace, now);
        self.held.set_reaping(&id, Some(r));
        self.orphan_actions(vec![action]);
    }

    /// Before `id` is started: true while a process of it may still run,
    /// which must not get a second copy. Its orphans are being stopped; or
    /// it is not observed and its cgroup holds live processes: one with
    /// our marker is adopted, anything else is stopped as an orphan. The
    /// start waits until they are gone.
    pub(super) fn still_running(&mut self, id: &str, now: Instant) -> bool {
        if self.held.reaping(id).is_some() {
            return true;
        }
        // Only before its first start: later, what runs in its cgroup is
        // its own (a launch reserves the entry and its ports up front).
        let first_start = self
            .observed
            .get(id)
            .is_none_or(|o| o.process.is_none() && o.exited_at.is_none());
        if !first_start {
            return false;
        }
        let pids = self.rt.cgroup_pids(id);
        if pids.is_empty() {
            return false;
        }
        if let Some(f) = self.rt.found_in_cgroup(id) {
            // Adopted, it takes the ports it runs with.
            if self.observed.remove(id).is_some() {
                self.held.release_ports(id);
            }
            if self.adopt_one(f, None) {
                return true;
            }
        }
        self.reap(id.to_string(), &pids, now);
        true
    }

    pub(super) fn finish_reaping(&mut self, now: Instant) -> Option<Instant> {
        let mut actions = Vec::new();
        let mut wake: Option<Instant> = None;
        for (id, r) in self.held.reapings() {
            let owned = self.observed.get(&id).is_some_and(|o| o.process.is_some());
            let empty = !owned && self.rt.cgroup_pids(&id).is_empty();
            let p = orphans::progress(r, &id, owned, empty, now);
            if !p.goes_on {
                self.held.set_reaping(&id, None);
            }
            if let Some(OrphanAction::Remove { .. }) = &p.action {
                tracing::info!("orphan processes of {id} are gone");
            }
            actions.extend(p.action);
            wake = wake.into_iter().chain(p.look_again).min();
        }
        self.orphan_actions(actions);
        wake
    }
}
