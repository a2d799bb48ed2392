//! What the controller records and answers about instances beyond their
//! lifecycle: events (every lifecycle step is recorded here as it is
//! carried out, and appended to the event log when the pass publishes),
//! Describe, and the operator's RestartPattern and SignalPattern.

use std::path::PathBuf;
use std::time::SystemTime;

use super::*;
use crate::events::{Event, NewEvent, Reason};

/// Events of an instance Describe shows.
pub const DESCRIBE_EVENTS: usize = 50;

/// A declaration of an instance, for Describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredAt {
    /// By LaunchPattern.
    Api,
    /// By a desired file, at a line.
    File {
        /// `desired/<file>`.
        path: String,
        /// The line of its entry.
        line: u64,
    },
}

/// One condition of an instance, as Kubernetes has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// `Declared`, `Started`, `Healthy` or `CircuitOpen`.
    pub kind: &'static str,
    /// `Some(true)`, `Some(false)`, or unknown.
    pub status: Option<bool>,
    /// A CamelCase word.
    pub reason: String,
    /// A sentence.
    pub message: String,
    /// When the status last changed, when known.
    pub since: Option<SystemTime>,
}

/// Everything about one instance.
#[derive(Debug, Clone)]
pub struct Described {
    /// As ListPatterns shows it.
    pub status: Arc<InstanceStatus>,
    /// The declaration in force (or the last one, while it stops).
    pub spec: InstanceSpec,
    /// Who declares it.
    pub declared_by: Vec<DeclaredAt>,
    /// The pattern's executable and manifest.
    pub executable: PathBuf,
    /// The pattern's manifest.
    pub manifest: PathBuf,
    /// When its process started.
    pub started: Option<SystemTime>,
    /// When a pending restart is due.
    pub next_restart: Option<SystemTime>,
    /// Its conditions.
    pub conditions: Vec<Condition>,
    /// Its last events.
    pub events: Vec<Arc<Event>>,
    /// Its log file.
    pub log_path: PathBuf,
}

impl<R: Runtime> Controller<R> {
    /// Records an event of instance `id` (appended when the pass
    /// publishes), with the instance as it is now.
    pub(super) fn emit(&mut self, id: &str, reason: Reason, message: impl Into<String>) {
        self.emit_by(id, reason, message, String::new());
    }

    /// [`Controller::emit`], for an event someone caused.
    pub(super) fn emit_by(
        &mut self,
        id: &str,
        reason: Reason,
        message: impl Into<String>,
        actor: String,
    ) {
        let source = || {
            self.desired
                .get(id)
                .map(|d| d.sources_text())
                .unwrap_or_default()
        };
        let (pattern, namespace, process) = match self.observed.get(id) {
            Some(o) => (
                o.spec.key.pattern.clone(),
                o.spec.key.namespace.clone(),
                Some(Arc::new(InstanceStatus::of(id, o, source()))),
            ),
            None => match self.desired.get(id) {
                Some(d) => (
                    d.spec().key.pattern.clone(),
                    d.spec().key.namespace.clone(),
                    None,
                ),
                None => Default::default(),
            },
        };
        self.pending_events.push(NewEvent {
            process_id: id.to_string(),
            pattern,
            namespace,
            process,
            actor,
            ..NewEvent::general(reason, message.into())
        });
    }

    /// Records an event of no instance: a pattern's or a source's.
    pub(super) fn emit_general(
        &mut self,
        reason: Reason,
        pattern: &str,
        source: &str,
        message: String,
    ) {
        self.pending_events.push(NewEvent {
            pattern: pattern.to_string(),
            source: source.to_string(),
            ..NewEvent::general(reason, message)
        });
    }

    /// A wall-clock time for an instant of the loop's clock.
    fn wall(&self, at: Instant) -> SystemTime {
        let now = self.rt.now();
        let sys = SystemTime::now();
        if at <= now {
            sys.checked_sub(now - at).unwrap_or(sys)
        } else {
            sys.checked_add(at - now).unwrap_or(sys)
        }
    }

    pub(super) fn describe(&self, id: &str) -> Result<Box<Described>, CommandError> {
        let Some(o) = self.observed.get(id) else {
            return Err(CommandError::NotFound(match self.desired.get(id) {
                Some(_) => format!("{id} is declared but has not been started yet"),
                None => format!("no instance {id}"),
            }));
        };
        let d = self.desired.get(id);
        let status = Arc::new(InstanceStatus::of(
            id,
            o,
            d.map(|d| d.sources_text()).unwrap_or_default(),
        ));
        let mut declared_by = Vec::new();
        for source in d.iter().flat_map(|d| d.sources()) {
            declared_by.push(match source {
                Source::Api => DeclaredAt::Api,
                Source::File(name) => DeclaredAt::File {
                    path: source.to_string(),
                    line: self.line_of(name, id, o.pattern.isolation).unwrap_or(0),
                },
            });
        }
        let events = self.cfg.events.recent(id, DESCRIBE_EVENTS);
        let now = self.rt.now();
        let next_restart = crate::reconcile::plan::next_restart(o, &self.cfg.plan)
            .filter(|_| o.phase == Phase::Exited)
            .map(|at| self.wall(at.max(now)));
        Ok(Box::new(Described {
            conditions: self.conditions(o, d.is_some(), &events),
            spec: d.map_or_else(|| o.spec.clone(), |d| d.spec().clone()),
            declared_by,
            executable: o.pattern.executable.clone(),
            manifest: o.pattern.dir.join("manifest.yaml"),
            started: o.process.map(|p| self.wall(p.started_at)),
            next_restart,
            events,
            log_path: self.rt.log_path(id),
            status,
        }))
    }

    /// The line of `id`'s entry in desired file `name`.
    fn line_of(&self, name: &str, id: &str, isolation: crate::spec::Isolation) -> Option<u64> {
        let Some(Ok(docs)) = self.files.get(name) else {
            return None;
        };
        docs.iter()
            .find(|doc| doc.key(isolation).is_ok_and(|k| k.process_id() == id))
            .map(|doc| doc.line)
    }

    fn conditions(
        &self,
        o: &ObservedInstance,
        declared: bool,
        events: &[Arc<Event>],
    ) -> Vec<Condition> {
        // The time of the last event of these reasons (the transition).
        let last = |reasons: &[Reason]| {
            events
                .iter()
                .rev()
                .find(|e| reasons.contains(&e.event.reason))
                .map(|e| (e.event.time, e.event.message.clone()))
        };
        let cond = |kind, status, reason: &str, (since, message): (Option<SystemTime>, String)| {
            Condition {
                kind,
                status,
                reason: reason.to_string(),
                message,
                since,
            }
        };
        let split = |x: Option<(SystemTime, String)>| match x {
            Some((t, m)) => (Some(t), m),
            None => (None, String::new()),
        };
        let declared_c = cond(
            "Declared",
            Some(declared),
            if declared { "Declared" } else { "Undeclared" },
            split(last(&[Reason::Declared, Reason::Undeclared])),
        );
        let started_c = match o.process {
            Some(p) => cond(
                "Started",
                Some(true),
                "Spawned",
                (Some(self.wall(p.started_at)), format!("pid {}", p.pid)),
            ),
            None => cond(
                "Started",
                Some(false),
                match o.phase {
                    Phase::Failed => "CircuitOpen",
                    Phase::Finished => "Stopped",
                    _ => "Exited",
                },
                match o.exited_at {
                    Some(t) => (Some(self.wall(t)), o.last_error.clone().unwrap_or_default()),
                    None => split(last(&[Reason::SpawnFailed])),
                },
            ),
        };
        let healthy = o.phase == Phase::Running && o.probe_failures == 0;
        let healthy_c = match (healthy, o.healthy_since) {
            (true, Some(t)) => cond(
                "Healthy",
                Some(true),
                "Healthy",
                (Some(self.wall(t)), "the health check passes".into()),
            ),
            (true, None) => cond("Healthy", Some(true), "Healthy", (None, String::new())),
            (false, _) if o.process.is_none() => cond(
                "Healthy",
                Some(false),
                "NotRunning",
                split(last(&[
                    Reason::Exited,
                    Reason::OomKilled,
                    Reason::Unhealthy,
                ])),
            ),
            (false, _) => cond(
                "Healthy",
                Some(false),
                if o.probe_failures > 0 {
                    "Unhealthy"
                } else {
                    "Starting"
                },
                split(last(&[Reason::Unhealthy, Reason::Spawned, Reason::Adopted])),
            ),
        };
        let open = o.phase == Phase::Failed;
        let circuit_c = cond(
            "CircuitOpen",
            Some(open),
            if open { "CircuitOpen" } else { "CircuitClosed" },
            match last(&[Reason::CircuitOpen, Reason::CircuitClosed]) {
                Some((t, m)) => (Some(t), m),
                None if open => (None, o.last_error.clone().unwrap_or_default()),
                None => (None, String::new()),
            },
        );
        vec![declared_c, started_c, healthy_c, circuit_c]
    }

    pub(super) fn restart(
        &mut self,
        id: &str,
        grace: Option<Duration>,
        actor: String,
    ) -> Result<Option<u32>, CommandError> {
        if self.shutting_down {
            return Err(CommandError::Unavailable(
                "the launcher is shutting down".into(),
            ));
        }
        if self.desired.get(id).is_none() {
            return Err(CommandError::NotFound(format!("no declared instance {id}")));
        }
        let now = self.rt.now();
        let default_grace = self.cfg.plan.default_grace;
        let Some(o) = self.observed.get_mut(id) else {
            return Ok(None);
        };
        let pid = o.process.map(|p| p.pid);
        let grace = grace.or(o.spec.grace_period).unwrap_or(default_grace);
        match (pid, o.phase) {
            (Some(_), Phase::Terminating) => {}
            (Some(pid), _) => {
                self.emit_by(
                    id,
                    Reason::Restarting,
                    format!(
                        "restart asked: stopping pid {pid} (grace {grace:?}), then starting again"
                    ),
                    actor,
                );
                self.stop(id, StopReason::SpecChanged, grace, false, now);
            }
            (None, _) => {
                // Not running: start now, whatever backoff or open circuit
                // held it.
                if let Some(o) = self.observed.get_mut(id) {
                    transitions::restart_requested(o);
                }
                self.emit_by(
                    id,
                    Reason::Restarting,
                    "restart asked: starting it now",
                    actor,
                );
            }
        }
        self.touch(id);
        Ok(pid)
    }

    pub(super) fn signal_instance(
        &mut self,
        id: &str,
        sig: Signal,
        actor: String,
    ) -> Result<u32, CommandError> {
        let Some(o) = self.observed.get(id) else {
            return Err(CommandError::NotFound(format!("no instance {id}")));
        };
        let Some(p) = o.process else {
            return Err(CommandError::FailedPrecondition(format!(
                "{id} has no running process ({:?})",
                o.phase
            )));
        };
        tracing::info!("{id}: sending {sig} to process group {} ({actor})", p.pid);
        self.rt.signal(id, p.pid, sig);
        self.emit_by(
            id,
            Reason::Signaled,
            format!("{sig} sent to process group {}", p.pid),
            actor,
        );
        self.touch(id);
        Ok(p.pid)
    }
}
