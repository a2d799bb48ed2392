//! Conversions between wire types and domain types. Pure.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Status;

use crate::controller::snapshot::{InstanceStatus, Snapshot, SourceKind, SourceStatus};
use crate::proto::{self, IsolationLevel, ProcessState};
use crate::reconcile::Phase;
use crate::spec::Isolation;

/// Wire isolation → domain; `None` means "the manifest's".
pub fn isolation_from_wire(v: i32) -> Result<Option<Isolation>, Status> {
    match IsolationLevel::try_from(v) {
        Ok(IsolationLevel::Unspecified) => Ok(None),
        Ok(IsolationLevel::IsolationNone) => Ok(Some(Isolation::None)),
        Ok(IsolationLevel::IsolationNamespace) => Ok(Some(Isolation::Namespace)),
        Ok(IsolationLevel::IsolationSession) => Ok(Some(Isolation::Session)),
        Err(_) => Err(Status::invalid_argument(format!(
            "unknown isolation level {v}"
        ))),
    }
}

/// Domain isolation → wire.
pub fn isolation_to_wire(i: Isolation) -> IsolationLevel {
    match i {
        Isolation::None => IsolationLevel::IsolationNone,
        Isolation::Namespace => IsolationLevel::IsolationNamespace,
        Isolation::Session => IsolationLevel::IsolationSession,
    }
}

/// Domain phase → wire state.
pub fn state_to_wire(p: Phase) -> ProcessState {
    match p {
        Phase::Starting => ProcessState::StateStarting,
        Phase::Running => ProcessState::StateRunning,
        Phase::Terminating => ProcessState::StateTerminating,
        Phase::Exited => ProcessState::StateTerminated,
        Phase::Failed => ProcessState::StateFailed,
        Phase::Finished => ProcessState::StateFinished,
    }
}

/// A ListPatterns state filter; `None` is no filter.
pub fn state_filter(v: i32) -> Result<Option<Phase>, Status> {
    Ok(match ProcessState::try_from(v) {
        Ok(ProcessState::StateUnspecified) => None,
        Ok(ProcessState::StateStarting) => Some(Phase::Starting),
        Ok(ProcessState::StateRunning) => Some(Phase::Running),
        Ok(ProcessState::StateTerminating) => Some(Phase::Terminating),
        Ok(ProcessState::StateTerminated) => Some(Phase::Exited),
        Ok(ProcessState::StateFailed) => Some(Phase::Failed),
        Ok(ProcessState::StateFinished) => Some(Phase::Finished),
        Err(_) => return Err(Status::invalid_argument(format!("unknown state {v}"))),
    })
}

/// Saturating count for int32 fields.
pub fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn pid(s: &InstanceStatus) -> i32 {
    s.pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(0)
}

/// The wire view of an instance.
pub fn pattern_info(s: &InstanceStatus) -> proto::PatternInfo {
    proto::PatternInfo {
        pattern_name: s.pattern.clone(),
        process_id: s.process_id.clone(),
        state: state_to_wire(s.phase).into(),
        address: s.address(),
        healthy: s.healthy,
        uptime_seconds: s.started_at.map_or(0, |t| {
            i64::try_from(t.elapsed().as_secs()).unwrap_or(i64::MAX)
        }),
        namespace: s.namespace.clone(),
        session_id: s.session_id.clone(),
        last_error: s.last_error.clone(),
        error_count: i32::try_from(s.error_count).unwrap_or(i32::MAX),
        restart_count: i32::try_from(s.restart_count).unwrap_or(i32::MAX),
        pid: pid(s),
        health_port: i32::from(s.health_port),
        isolation: isolation_to_wire(s.isolation).into(),
        source: s.source.clone(),
        grpc_port: i32::from(s.grpc_port),
        limits: s.limits.clone(),
    }
}

/// The LaunchPattern reply for an instance as it is now.
pub fn launch_response(s: &InstanceStatus) -> proto::LaunchResponse {
    let ok = s.phase == Phase::Running && s.healthy;
    proto::LaunchResponse {
        process_id: s.process_id.clone(),
        state: state_to_wire(s.phase).into(),
        address: s.address(),
        healthy: s.healthy,
        error: if ok {
            String::new()
        } else if s.last_error.is_empty() && s.phase == Phase::Starting {
            "not healthy yet: the start-up timeout passed while waiting".into()
        } else {
            s.last_error.clone()
        },
        pid: pid(s),
        health_port: i32::from(s.health_port),
    }
}

/// The Health reply.
pub fn health_response(
    snap: &Snapshot,
    stalled: Option<String>,
    include_processes: bool,
    uptime: Duration,
) -> proto::HealthResponse {
    let by = |p: Phase| count(snap.instances.values().filter(|s| s.phase == p).count());
    let mut distribution: HashMap<String, i32> = HashMap::new();
    for s in snap.instances.values() {
        *distribution
            .entry(s.isolation.distribution_key().to_string())
            .or_default() += 1;
    }
    let problems: Vec<String> = stalled
        .into_iter()
        .chain(snap.problems.iter().cloned())
        .collect();
    proto::HealthResponse {
        healthy: problems.is_empty(),
        problems,
        total_processes: count(snap.instances.len()),
        running_processes: by(Phase::Running),
        terminating_processes: by(Phase::Terminating),
        failed_processes: by(Phase::Failed),
        isolation_distribution: distribution,
        processes: if include_processes {
            snap.instances.values().map(|s| pattern_info(s)).collect()
        } else {
            Vec::new()
        },
        uptime_seconds: i64::try_from(uptime.as_secs()).unwrap_or(i64::MAX),
    }
}

/// The wire view of a source. A manifest lists its pattern's instances.
pub fn source_info(s: &SourceStatus, snap: &Snapshot) -> proto::SourceInfo {
    let process_ids = match s.kind {
        SourceKind::Desired => s.process_ids.clone(),
        SourceKind::Manifest => snap
            .instances
            .values()
            .filter(|i| !s.pattern.is_empty() && i.pattern == s.pattern)
            .map(|i| i.process_id.clone())
            .collect(),
    };
    proto::SourceInfo {
        kind: match s.kind {
            SourceKind::Desired => "desired",
            SourceKind::Manifest => "manifest",
        }
        .to_string(),
        path: s.path.clone(),
        ok: s.error.is_none(),
        error: s
            .error
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        line: s
            .error
            .as_ref()
            .and_then(|e| e.line)
            .and_then(|l| i32::try_from(l).ok())
            .unwrap_or(0),
        process_ids,
        pattern_name: s.pattern.clone(),
    }
}
