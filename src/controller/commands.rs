//! The API's commands: launch (declare, reserve ports, persist once per
//! pass), terminate, and putting back what could not be persisted.
//!
//! It answers callers; what happens to processes is the planner's.

use super::*;
use crate::events::Reason;
use crate::runtime::ports::Exhausted;
use crate::sources::state_file::StateFileError;
use crate::spec::manifest::Pattern;

/// The API's declarations could not be written: the change is taken back
/// and the caller told so.
#[derive(Debug, thiserror::Error)]
#[error("cannot persist the declaration: {0}")]
pub(super) struct NotPersisted(#[source] StateFileError);

impl From<NotPersisted> for CommandError {
    fn from(e: NotPersisted) -> Self {
        CommandError::Unavailable(e.to_string())
    }
}

impl<R: Runtime> Controller<R> {
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Launch { params, reply } => {
                let actor = params.actor.clone();
                match self.launch(params) {
                    Ok((accepted, previous)) => {
                        let pending = previous.is_some()
                            || self
                                .unsaved_launches
                                .iter()
                                .any(|u| u.process_id == accepted.process_id);
                        if pending {
                            self.unsaved_launches.push(UnsavedLaunch {
                                process_id: accepted.process_id.clone(),
                                previous,
                                reply,
                                accepted,
                                actor,
                            });
                        } else {
                            let _ = reply.send(Ok(accepted));
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Terminate {
                process_id,
                grace,
                force,
                actor,
                reply,
            } => {
                let r = self.terminate(&process_id, grace, force, actor).await;
                let _ = reply.send(r);
            }
            Command::Describe { process_id, reply } => {
                let _ = reply.send(self.describe(&process_id));
            }
            Command::Restart {
                process_id,
                grace,
                actor,
                reply,
            } => {
                let _ = reply.send(self.restart(&process_id, grace, actor));
            }
            Command::Signal {
                process_id,
                signal,
                actor,
                reply,
            } => {
                let _ = reply.send(self.signal_instance(&process_id, signal, actor));
            }
            Command::Shutdown => {
                tracing::info!("shutting down: stopping {} instances", self.observed.len());
                self.shutting_down = true;
            }
        }
    }

    /// Declares the instance; also returns the API's previous declaration
    /// when this one changed it (it is not persisted yet: see
    /// [`Controller::save_launches`]).
    #[allow(clippy::type_complexity)]
    pub(super) fn launch(
        &mut self,
        p: LaunchParams,
    ) -> Result<(Accepted, Option<Option<InstanceSpec>>), CommandError> {
        if self.shutting_down {
            return Err(CommandError::Unavailable(
                "the launcher is shutting down".into(),
            ));
        }
        let (spec, pattern) = p.check(&self.catalog, || self.known_patterns())?;
        let p_actor = p.actor.clone();
        self.rt
            .check_executable(&pattern.executable)
            .map_err(|e| CommandError::FailedPrecondition(format!("cannot execute {e}")))?;
        crate::runtime::spawn::check_run_as(&pattern)
            .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
        let id = spec.key.process_id();
        let previous = self
            .desired
            .get(&id)
            .and_then(|d| d.spec_of(&Source::Api))
            .cloned();
        let limit = crate::spec::limits::MAX_INSTANCES_PER_SOURCE;
        if previous.is_none() && self.desired.count_declared_by(&Source::Api) >= limit {
            return Err(CommandError::InvalidArgument(format!(
                "the API declares {limit} instances already, the limit per source"
            )));
        }
        // A new instance gets its ports now: when the range is used up the
        // call is refused at once, and nothing is declared.
        let new = !self.observed.contains_key(&id) && self.desired.get(&id).is_none();
        if new {
            self.reserve(&id, spec.clone(), pattern).map_err(|e| {
                CommandError::ResourceExhausted(format!(
                    "cannot launch {id}: {e} (--port-range); terminate instances or widen the range"
                ))
            })?;
        }
        let declared = match self.desired.declare(Source::Api, spec) {
            Ok(d) => d,
            Err(e) => {
                if new && self.observed.remove(&id).is_some() {
                    self.held.release_ports(&id);
                }
                return Err(CommandError::FailedPrecondition(e.to_string()));
            }
        };
        // A launch of a running instance changes nothing: no new snapshot.
        let mut changed = declared != Declared::Unchanged;
        let mut failed_starts = 0;
        if let Some(o) = self.observed.get_mut(&id) {
            failed_starts = o.failed_starts;
            // Launching a circuit-broken instance closes the circuit.
            if transitions::close_circuit(o) {
                tracing::info!("{id}: launched again, circuit closed");
                changed = true;
                self.emit_by(
                    &id,
                    Reason::CircuitClosed,
                    "launched again: the circuit is closed and it starts again",
                    p_actor.clone(),
                );
            }
        }
        if changed {
            self.touch(&id);
        }
        let previous = (declared != Declared::Unchanged).then_some(previous);
        Ok((
            Accepted {
                process_id: id,
                failed_starts,
                seq: self.seq,
            },
            previous,
        ))
    }

    /// Persists the API declarations once for every launch taken in since
    /// the last pass, then answers them; when the write fails, their
    /// declarations are taken back (latest first) and they are refused.
    pub(super) async fn save_launches(&mut self) {
        if self.unsaved_launches.is_empty() {
            return;
        }
        let launches = std::mem::take(&mut self.unsaved_launches);
        match self.persist_api().await {
            Ok(()) => {
                for u in launches {
                    if let Some(previous) = &u.previous {
                        let what = if previous.is_some() {
                            "declaration changed by LaunchPattern"
                        } else {
                            "declared by LaunchPattern"
                        };
                        self.emit_by(&u.process_id, Reason::Declared, what, u.actor.clone());
                    }
                    let _ = u.reply.send(Ok(u.accepted));
                }
            }
            Err(e) => {
                let e = e.to_string();
                for u in launches.iter().rev() {
                    if let Some(previous) = &u.previous {
                        self.restore_api(&u.process_id, previous.clone());
                        self.touch(&u.process_id);
                    }
                }
                for u in launches {
                    let _ = u.reply.send(Err(CommandError::Unavailable(e.clone())));
                }
            }
        }
    }

    pub(super) async fn terminate(
        &mut self,
        id: &str,
        grace: Option<Duration>,
        force: bool,
        actor: String,
    ) -> Result<Option<u32>, CommandError> {
        let files = |d: &crate::desired::DesiredInstance| {
            d.sources()
                .filter(|s| **s != Source::Api)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(d) = self.desired.get(id) {
            if !d.declared_by(&Source::Api) {
                return Err(CommandError::FailedPrecondition(format!(
                    "{id} is declared by {}: remove it there",
                    files(d)
                )));
            }
            let previous = d.spec_of(&Source::Api).cloned();
            self.desired.withdraw(&Source::Api, id);
            if let Err(e) = self.persist_api().await {
                self.restore_api(id, previous);
                return Err(e.into());
            }
            if let Some(d) = self.desired.get(id) {
                let msg = format!(
                    "the API declaration of {id} is removed, but {} still declares it",
                    files(d)
                );
                self.touch(id);
                return Err(CommandError::FailedPrecondition(msg));
            }
            self.emit_by(
                id,
                Reason::Undeclared,
                "TerminatePattern removed its declaration",
                actor,
            );
        } else if !self.observed.contains_key(id) {
            return Err(CommandError::NotFound(format!("no instance {id:?}")));
        }
        let mut pid = None;
        if let Some(o) = self.observed.get_mut(id) {
            o.stop_request = Some(StopRequest { grace, force });
            pid = o.process.map(|p| p.pid);
        }
        self.touch(id);
        Ok(pid)
    }

    /// Puts the API's declaration of `id` back as it was before a change
    /// that could not be persisted.
    pub(super) fn restore_api(&mut self, id: &str, previous: Option<InstanceSpec>) {
        self.desired.withdraw(&Source::Api, id);
        if let Some(spec) = previous {
            // It was declared before, so it agrees with the other sources.
            let _ = self.desired.declare(Source::Api, spec);
        }
    }

    pub(super) async fn persist_api(&mut self) -> Result<(), NotPersisted> {
        let specs = self.desired.declared_by(&Source::Api);
        self.rt.save_api(specs).await.map_err(|e| {
            tracing::error!("cannot persist API declarations: {e}");
            NotPersisted(e)
        })
    }

    /// Gives a new instance its observed entry and its ports, before its
    /// first start. A used-up range is logged once until a port is freed.
    pub(super) fn reserve(
        &mut self,
        id: &str,
        spec: InstanceSpec,
        pattern: Arc<Pattern>,
    ) -> Result<(), Exhausted> {
        let ports = self.held.assign_ports(id, pattern.health.port);
        let ports = ports.inspect_err(|e| {
            if self.held.first_exhaustion() {
                tracing::warn!(
                    "{id}: cannot start: {e} (--port-range); terminate instances or widen the range"
                );
            }
        })?;
        self.observed
            .insert(id.to_string(), ObservedInstance::new(spec, pattern, ports));
        Ok(())
    }
}
