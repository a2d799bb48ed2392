//! The observed table: what the launcher knows of each instance's process.
//!
//! Plain data. The runtime records facts here (spawned, healthy, exited);
//! the planner reads it and decides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

/// Lifecycle state (wire enum `ProcessState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Spawned, not healthy yet.
    Starting,
    /// Healthy.
    Running,
    /// Being stopped.
    Terminating,
    /// Exited; a restart is pending.
    Exited,
    /// Circuit-broken.
    Failed,
    /// Stopped on request; removed once reaped.
    Finished,
}

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// No source declares it any more (or the launcher is shutting down).
    NotDesired,
    /// Its spec or manifest changed: restart with the new one.
    SpecChanged,
    /// `failure_threshold` liveness probes failed.
    Liveness,
    /// It did not become healthy within the start-up timeout.
    StartupTimeout,
}

impl StopReason {
    /// True when the stop is the consequence of a failure.
    pub fn is_failure(self) -> bool {
        matches!(self, StopReason::Liveness | StopReason::StartupTimeout)
    }
}

/// A stop in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopping {
    /// Why.
    pub reason: StopReason,
    /// When SIGKILL follows.
    pub deadline: Instant,
    /// Whether SIGKILL was sent.
    pub killed: bool,
}

/// How a TerminatePattern call asked for the stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRequest {
    /// Grace period; `None` is the instance's or the default.
    pub grace: Option<Duration>,
    /// SIGKILL at once.
    pub force: bool,
}

/// The process currently (or last) running for an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its pid (also its process group id).
    pub pid: u32,
    /// Which spawn of the launcher this is; events carry it, so a late
    /// event of an earlier process is never applied to a later one.
    pub epoch: u64,
    /// When it was spawned (or adopted).
    pub started_at: Instant,
    /// Its start time in clock ticks after boot (`/proc/<pid>/stat`), which
    /// with the pid identifies it across launcher restarts.
    pub start_time: u64,
}

/// Ports handed to an instance; kept across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// `GRPC_PORT`.
    pub grpc: u16,
    /// `HEALTH_PORT`.
    pub health: u16,
}

/// What the launcher knows of one instance.
#[derive(Debug, Clone)]
pub struct ObservedInstance {
    /// The spec the current (or last) process was started with.
    pub spec: InstanceSpec,
    /// The manifest it was started with.
    pub pattern: Arc<Pattern>,
    /// State.
    pub phase: Phase,
    /// The process, while one exists.
    pub process: Option<ProcessInfo>,
    /// Its ports.
    pub ports: Ports,
    /// Consecutive failures (crash, failed start, failed liveness).
    pub consecutive_failures: u32,
    /// Consecutive failures of the launcher itself to start it (its state
    /// directory, its descriptors): backed off, never a circuit breaker.
    pub launcher_failures: u32,
    /// Restarts since the instance was first spawned.
    pub restart_count: u32,
    /// How many starts failed so far (monotonic; LaunchPattern waits on it).
    pub failed_starts: u64,
    /// Why the last process ended badly, or the circuit broke.
    pub last_error: Option<String>,
    /// Consecutive failed liveness probes of the current process.
    pub probe_failures: u32,
    /// Since when it has been healthy without interruption.
    pub healthy_since: Option<Instant>,
    /// When the last process exited.
    pub exited_at: Option<Instant>,
    /// Drawn when the exit was recorded, in `[0, 1)`.
    pub restart_jitter: f64,
    /// The next start is a planned restart (spec change), not a recovery.
    pub restart_now: bool,
    /// A stop in progress.
    pub stopping: Option<Stopping>,
    /// How the last TerminatePattern asked for the stop.
    pub stop_request: Option<StopRequest>,
    /// The cgroup's OOM-kill count when the current process started.
    pub oom_kills_before: u64,
    /// Forks refused by its `pids.max`, as last reported.
    pub pids_refused_seen: u64,
    /// How the current process is contained (limits and backend), or why
    /// its limits are not enforced.
    pub limits: String,
}

impl ObservedInstance {
    /// A new entry, before its first spawn.
    pub fn new(spec: InstanceSpec, pattern: Arc<Pattern>, ports: Ports) -> Self {
        ObservedInstance {
            spec,
            pattern,
            phase: Phase::Exited,
            process: None,
            ports,
            consecutive_failures: 0,
            launcher_failures: 0,
            restart_count: 0,
            failed_starts: 0,
            last_error: None,
            probe_failures: 0,
            healthy_since: None,
            exited_at: None,
            restart_jitter: 0.5,
            restart_now: true,
            stopping: None,
            stop_request: None,
            oom_kills_before: 0,
            pids_refused_seen: 0,
            limits: String::new(),
        }
    }
}

/// Every observed instance by process_id.
pub type Observed = BTreeMap<String, ObservedInstance>;
