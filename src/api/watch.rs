//! Watch and Describe: the event stream and everything about one instance.
//!
//! A Watch is a subscription to the event log ([`crate::events`]): its
//! start (a snapshot and a bookmark, or a replay) then its live queue. The
//! stream reads the queue; the controller never waits for it.

use std::pin::Pin;
use std::time::SystemTime;

use tokio_stream::{Stream, StreamExt};
use tonic::{Response, Status};

use super::{LauncherService, convert};
use crate::controller::{Command, Condition, DeclaredAt, Described};
use crate::events::{Event, Filter, Item, Start, SubscribeError};
use crate::proto;

/// The stream of a Watch call.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

/// A wall-clock time on the wire.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// An event on the wire.
pub fn event_to_wire(e: &Event) -> proto::WatchEvent {
    let n = &e.event;
    proto::WatchEvent {
        revision: e.revision,
        time: Some(timestamp(n.time)),
        process_id: n.process_id.clone(),
        reason: n.reason.as_str().to_string(),
        message: n.message.clone(),
        process: n.process.as_deref().map(convert::pattern_info),
        actor: n.actor.clone(),
        pattern_name: n.pattern.clone(),
        source: n.source.clone(),
    }
}

fn marker(revision: u64, reason: &str, message: String) -> proto::WatchEvent {
    proto::WatchEvent {
        revision,
        time: Some(timestamp(SystemTime::now())),
        reason: reason.to_string(),
        message,
        ..Default::default()
    }
}

pub(super) async fn watch(
    svc: &LauncherService,
    r: proto::WatchRequest,
    within: Option<std::sync::Arc<crate::authz::Limits>>,
) -> Result<Response<EventStream>, Status> {
    let filter = Filter {
        process_id: r.process_id,
        namespace: r.namespace,
        pattern: r.pattern_name,
        within,
    };
    let sub = svc
        .handle
        .events
        .subscribe(r.since_revision, filter)
        .map_err(|e| match e {
            SubscribeError::TooOld { .. } => Status::out_of_range(e.to_string()),
            SubscribeError::Ahead { .. } => Status::out_of_range(e.to_string()),
        })?;
    let first: Vec<Result<proto::WatchEvent, Status>> = match sub.start {
        Start::Snapshot {
            revision,
            instances,
        } => {
            let n = instances.len();
            let mut v: Vec<_> = instances
                .iter()
                .map(|s| {
                    Ok(proto::WatchEvent {
                        process_id: s.process_id.clone(),
                        pattern_name: s.pattern.clone(),
                        process: Some(convert::pattern_info(s)),
                        ..marker(revision, "Snapshot", format!("{:?}", s.phase))
                    })
                })
                .collect();
            v.push(Ok(marker(
                revision,
                "Bookmark",
                format!("{n} instances as of revision {revision}; live events follow"),
            )));
            v
        }
        Start::Replay(events) => events.iter().map(|e| Ok(event_to_wire(e))).collect(),
    };
    let live = tokio_stream::wrappers::ReceiverStream::new(sub.live).map(|item| match item {
        Item::Event(e) => Ok(event_to_wire(&e)),
        Item::Lagged(last) => Err(Status::resource_exhausted(format!(
            "this watch fell more than {} events behind and was ended; resume with since_revision {last}",
            crate::events::QUEUE
        ))),
    });
    let stream = tokio_stream::iter(first).chain(live);
    Ok(Response::new(Box::pin(stream)))
}

pub(super) async fn describe(
    svc: &LauncherService,
    r: proto::DescribeRequest,
) -> Result<Response<proto::DescribeResponse>, Status> {
    if r.process_id.is_empty() {
        return Err(Status::invalid_argument("process_id is required"));
    }
    let id = r.process_id;
    let d = svc
        .ask(|reply| Command::Describe {
            process_id: id,
            reply,
        })
        .await?;
    Ok(Response::new(describe_to_wire(&d)))
}

fn condition_to_wire(c: &Condition) -> proto::Condition {
    proto::Condition {
        r#type: c.kind.to_string(),
        status: match c.status {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        }
        .to_string(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: c.since.map(timestamp),
    }
}

fn describe_to_wire(d: &Described) -> proto::DescribeResponse {
    let s = &d.status;
    proto::DescribeResponse {
        process: Some(convert::pattern_info(s)),
        pattern_name: d.spec.key.pattern.clone(),
        isolation: convert::isolation_to_wire(d.spec.key.isolation).into(),
        namespace: d.spec.key.namespace.clone(),
        session_id: d.spec.key.session_id.clone(),
        config: d
            .spec
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        grace_period_secs: d
            .spec
            .grace_period
            .map_or(0, |g| i64::try_from(g.as_secs()).unwrap_or(i64::MAX)),
        declared_by: d
            .declared_by
            .iter()
            .map(|at| match at {
                DeclaredAt::Api => proto::DeclaredBy {
                    kind: "api".into(),
                    ..Default::default()
                },
                DeclaredAt::File { path, line } => proto::DeclaredBy {
                    kind: "file".into(),
                    path: path.clone(),
                    line: i32::try_from(*line).unwrap_or(0),
                },
            })
            .collect(),
        executable: d.executable.display().to_string(),
        manifest: d.manifest.display().to_string(),
        health_port: i32::from(s.health_port),
        grpc_port: i32::from(s.grpc_port),
        limits: s.limits.clone(),
        pid: s.pid.map_or(0, |p| i32::try_from(p).unwrap_or(0)),
        start_time: d.started.map(timestamp),
        conditions: d.conditions.iter().map(condition_to_wire).collect(),
        restart_count: i32::try_from(s.restart_count).unwrap_or(i32::MAX),
        next_restart_time: d.next_restart.map(timestamp),
        events: d.events.iter().map(|e| event_to_wire(e)).collect(),
        log_path: d.log_path.display().to_string(),
    }
}
