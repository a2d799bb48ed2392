//! How the rest of the launcher talks to the controller: the commands it
//! takes and their answers, its settings, the handle the API holds, and
//! what the watchers hand it.
//!
//! Plain types; no behaviour beyond reading the handle.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot, watch};

use nix::sys::signal::Signal;

use super::snapshot::Snapshot;
pub use super::steer::{Condition, DeclaredAt, Described};
use crate::events::EventLog;
use crate::reconcile::PlanConfig;
use crate::sources::FileEvent;
use crate::sources::catalog::watcher::Reloaded;
use crate::spec::manifest::Pattern;
use crate::spec::{InstanceKey, InstanceSpec, Isolation};

/// A LaunchPattern as the controller receives it.
#[derive(Debug, Clone)]
pub struct LaunchParams {
    /// Pattern name.
    pub pattern: String,
    /// Isolation level; `None` is the manifest's.
    pub isolation: Option<Isolation>,
    /// Namespace.
    pub namespace: String,
    /// Session id.
    pub session_id: String,
    /// Extra environment.
    pub config: BTreeMap<String, String>,
    /// Grace period in seconds (0 = default).
    pub grace_period_secs: i64,
    /// Who asks (for the event stream and the log).
    pub actor: String,
    /// What the caller may launch (checked once the manifest's isolation
    /// is known); `None`: anything.
    pub grant: Option<crate::authz::Grant>,
}

impl LaunchParams {
    /// The checks of a launch that need no state but the catalog, in the
    /// order the caller is told of them: a pattern name, a pattern the
    /// caller may use (`NOT_FOUND` naming only those, else `known()`), the
    /// key, the caller's grant on it, the grace period, the spec and the
    /// manifest's `config_keys`. Pure: the controller's launch and the
    /// `launch_request` fuzz target both run it.
    pub fn check(
        &self,
        catalog: &crate::sources::Catalog,
        known: impl FnOnce() -> String,
    ) -> Result<(InstanceSpec, Arc<Pattern>), CommandError> {
        if self.pattern.is_empty() {
            return Err(CommandError::InvalidArgument(
                "pattern_name is required".into(),
            ));
        }
        // A pattern the caller may not use is not found, whether it exists
        // or not; not found, it is told only of those it may use.
        let grant = self.grant.as_ref();
        let usable = |name: &str| grant.is_none_or(|g| g.may_use_pattern(name));
        let found = catalog.get(&self.pattern).filter(|_| usable(&self.pattern));
        let Some(pattern) = found.cloned() else {
            return Err(CommandError::NotFound(format!(
                "pattern {:?} not found ({})",
                self.pattern,
                match grant {
                    Some(g) if g.limits.is_some() => {
                        g.known_patterns(catalog.iter().map(|p| p.name.as_str()))
                    }
                    _ => known(),
                }
            )));
        };
        let invalid = |e: crate::spec::SpecError| CommandError::InvalidArgument(e.to_string());
        let isolation = self.isolation.unwrap_or(pattern.isolation);
        let key = InstanceKey::new(&self.pattern, isolation, &self.namespace, &self.session_id)
            .map_err(invalid)?;
        if let Some(g) = grant {
            g.check(&crate::authz::Target::Instance {
                isolation: key.isolation,
                namespace: &key.namespace,
                pattern: &key.pattern,
            })
            .map_err(|e| CommandError::PermissionDenied(e.to_string()))?;
        }
        let grace = crate::spec::grace_from_secs(self.grace_period_secs).map_err(invalid)?;
        let spec = InstanceSpec::new(key, self.config.clone(), grace).map_err(invalid)?;
        pattern.check_config(&spec.config).map_err(invalid)?;
        Ok((spec, pattern))
    }
}

/// Why a command was refused; the API maps each to a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown pattern or instance.
    #[error("{0}")]
    NotFound(String),
    /// Bad names, missing fields, bad config.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with the state of things.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The launcher could not do it (e.g. persisting failed).
    #[error("{0}")]
    Unavailable(String),
    /// A bounded resource (the port range) is used up.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
}

/// An accepted declaration.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The instance.
    pub process_id: String,
    /// Failed starts counted before this call; a higher count later means
    /// a start failed since.
    pub failed_starts: u64,
    /// The last snapshot published before the call was taken in: every
    /// later one shows the instance, unless something withdrew it since.
    pub seq: u64,
}

/// A launch waiting for the API declarations to be persisted.
pub(super) struct UnsavedLaunch {
    /// The instance.
    pub(super) process_id: String,
    /// The API's declaration before this launch, when the launch changed
    /// it (restored if it cannot be persisted).
    pub(super) previous: Option<Option<InstanceSpec>>,
    pub(super) reply: oneshot::Sender<Result<Accepted, CommandError>>,
    pub(super) accepted: Accepted,
    /// Who asked.
    pub(super) actor: String,
}

/// Requests to the controller.
#[derive(Debug)]
pub enum Command {
    /// Declare an instance through the API.
    Launch {
        /// The request.
        params: LaunchParams,
        /// The answer.
        reply: oneshot::Sender<Result<Accepted, CommandError>>,
    },
    /// Remove an API declaration and stop the instance.
    Terminate {
        /// Instance.
        process_id: String,
        /// Grace period override.
        grace: Option<Duration>,
        /// SIGKILL at once.
        force: bool,
        /// Who asks.
        actor: String,
        /// The answer: the pid being stopped, if a process runs.
        reply: oneshot::Sender<Result<Option<u32>, CommandError>>,
    },
    /// Everything about one instance.
    Describe {
        /// Instance.
        process_id: String,
        /// The answer.
        reply: oneshot::Sender<Result<Box<Described>, CommandError>>,
    },
    /// Restart one instance's process (stop gracefully, start again at
    /// once, no failure counted).
    Restart {
        /// Instance.
        process_id: String,
        /// Grace period override.
        grace: Option<Duration>,
        /// Who asks.
        actor: String,
        /// The answer: the pid being stopped, if a process runs.
        reply: oneshot::Sender<Result<Option<u32>, CommandError>>,
    },
    /// Send a signal to an instance's process group (and cgroup).
    Signal {
        /// Instance.
        process_id: String,
        /// The signal.
        signal: Signal,
        /// Who asks.
        actor: String,
        /// The answer: the pid signalled.
        reply: oneshot::Sender<Result<u32, CommandError>>,
    },
    /// Stop every instance and end the loop.
    Shutdown,
}

/// Settings of a controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `--patterns-dir`.
    pub patterns_dir: PathBuf,
    /// `--port-range`.
    pub port_range: std::ops::RangeInclusive<u16>,
    /// Lifecycle tunables.
    pub plan: PlanConfig,
    /// How often processes nobody owns are looked for.
    pub orphan_sweep: Duration,
    /// Leave instances running on shutdown, for the next launcher.
    pub keep_instances_on_exit: bool,
    /// Where events go.
    pub events: EventLog,
    /// Where passes, spawns and probe failures are counted.
    pub metrics: crate::metrics::Metrics,
    /// The service manager, pinged by the loop when it has a watchdog.
    pub notifier: crate::service::Notifier,
}

/// Handles to talk to a running controller.
#[derive(Clone)]
pub struct ControllerHandle {
    /// Commands.
    pub commands: mpsc::Sender<Command>,
    /// Snapshots.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Milliseconds since `started` at the last loop pass.
    pub heartbeat: Arc<AtomicU64>,
    /// When the controller started.
    pub started: Instant,
    /// The lifecycle tunables (for timeouts of waiting callers).
    pub plan: PlanConfig,
    /// The event log.
    pub events: EventLog,
}

impl ControllerHandle {
    /// How long ago the loop last ran.
    pub fn loop_age(&self) -> Duration {
        let beat = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }
}

/// What the directory watchers send the controller.
pub struct Watchers {
    /// Desired-state file changes.
    pub desired: mpsc::UnboundedReceiver<FileEvent>,
    /// The catalog loaded again after a change in the patterns directory.
    pub patterns: mpsc::UnboundedReceiver<Reloaded>,
}

/// A controller could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The runtime could not be set up.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::linux::LinuxSetupError),
    /// The persisted API declarations cannot be read.
    #[error("cannot load API declarations: {0}")]
    Store(crate::sources::state_file::StateFileError),
}
