//! Read-only views the controller publishes through a `watch` channel:
//! what every instance looks like right now. Readers (the API) never touch
//! the controller's state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use crate::reconcile::observed::{ObservedInstance, Phase};
use crate::spec::Isolation;

/// One instance as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceStatus {
    /// Identity.
    pub process_id: String,
    /// Pattern name.
    pub pattern: String,
    /// Isolation level.
    pub isolation: Isolation,
    /// Namespace (empty for NONE).
    pub namespace: String,
    /// Session id (empty unless SESSION).
    pub session_id: String,
    /// State.
    pub phase: Phase,
    /// The live process, if any.
    pub pid: Option<u32>,
    /// `GRPC_PORT`.
    pub grpc_port: u16,
    /// `HEALTH_PORT`.
    pub health_port: u16,
    /// When the current process was spawned.
    pub started_at: Option<Instant>,
    /// The last probe succeeded and the process is RUNNING.
    pub healthy: bool,
    /// Why the last process ended badly, or why the circuit is open.
    pub last_error: String,
    /// Consecutive failures.
    pub error_count: u32,
    /// Restarts so far.
    pub restart_count: u32,
    /// Failed starts so far (monotonic).
    pub failed_starts: u64,
    /// Who declares it (`api`, `desired/<file>`); empty when nobody does.
    pub source: String,
    /// How its limits are enforced, or why not.
    pub limits: String,
}

impl InstanceStatus {
    /// Builds the view of one observed instance.
    pub fn of(process_id: &str, o: &ObservedInstance, source: String) -> Self {
        InstanceStatus {
            process_id: process_id.to_string(),
            pattern: o.spec.key.pattern.clone(),
            isolation: o.spec.key.isolation,
            namespace: o.spec.key.namespace.clone(),
            session_id: o.spec.key.session_id.clone(),
            phase: o.phase,
            pid: o.process.map(|p| p.pid),
            grpc_port: o.ports.grpc,
            health_port: o.ports.health,
            started_at: o.process.map(|p| p.started_at),
            healthy: o.phase == Phase::Running && o.probe_failures == 0,
            last_error: o.last_error.clone().unwrap_or_default(),
            error_count: o.consecutive_failures,
            restart_count: o.restart_count,
            failed_starts: o.failed_starts,
            source,
            limits: o.limits.clone(),
        }
    }

    /// A running, healthy instance of `pattern` in `namespace`, declared by
    /// the API (tests).
    #[cfg(test)]
    pub fn sample(process_id: &str, pattern: &str, namespace: &str) -> Self {
        InstanceStatus {
            process_id: process_id.to_string(),
            pattern: pattern.to_string(),
            isolation: Isolation::Namespace,
            namespace: namespace.to_string(),
            session_id: String::new(),
            phase: Phase::Running,
            pid: None,
            grpc_port: 0,
            health_port: 0,
            started_at: None,
            healthy: true,
            last_error: String::new(),
            error_count: 0,
            restart_count: 0,
            failed_starts: 0,
            source: "api".into(),
            limits: String::new(),
        }
    }

    /// `localhost:<GRPC_PORT>`.
    pub fn address(&self) -> String {
        format!("localhost:{}", self.grpc_port)
    }
}

/// What kind of file a source is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A desired-state file.
    Desired,
    /// A pattern manifest.
    Manifest,
}

/// One desired-state file or manifest, for ListSources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    /// Which kind.
    pub kind: SourceKind,
    /// `desired/<file>` or the manifest's path.
    pub path: String,
    /// Why its current content is refused (the last good one stays).
    pub error: Option<crate::spec::yaml::YamlError>,
    /// Instances a desired file declares (in force).
    pub process_ids: Vec<String>,
    /// The pattern a manifest defines.
    pub pattern: String,
}

/// Every instance, by process_id, and every source.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Counts the snapshots published: a caller that was answered before
    /// snapshot `seq` knows that a later one shows what its call did.
    pub seq: u64,
    /// What keeps the launcher itself from doing its work (a state
    /// directory it cannot write, ...), for Health; empty when nothing.
    pub problems: Arc<Vec<String>>,
    /// Instances in process_id order.
    pub instances: BTreeMap<String, Arc<InstanceStatus>>,
    /// Desired files (by name), then manifests (by path).
    pub sources: Arc<Vec<SourceStatus>>,
    /// The desired directory's first scan was applied and running
    /// instances adopted: the launcher is ready.
    pub synced: bool,
}
