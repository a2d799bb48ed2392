//! The gRPC service `prism.launcher.PatternLauncher`: converts wire types
//! to domain types, sends commands to the controller and waits on its
//! snapshots. It makes no lifecycle decision.

pub mod conn;
pub mod convert;
pub mod gate;
mod handshake;
pub mod identity;
pub mod incoming;
pub mod listen;
mod logs;
mod steer;
pub mod stream;
pub mod tls;
#[cfg(test)]
mod transport_tests;
pub mod unix;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::controller::snapshot::{InstanceStatus, Snapshot};
use crate::controller::{Command, CommandError, ControllerHandle, LaunchParams};
use crate::proto;
use crate::proto::pattern_launcher_server::PatternLauncher;
use crate::reconcile::Phase;

/// The loop is stalled when it has not run for this long.
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(10);
/// Extra time a waiting call allows beyond the timeout it waits for.
const WAIT_MARGIN: Duration = Duration::from_secs(5);

/// The service, holding handles to the controller.
#[derive(Clone)]
pub struct LauncherService {
    handle: ControllerHandle,
    logs: Option<logs::Logs>,
}

impl LauncherService {
    /// A service talking to this controller.
    pub fn new(handle: ControllerHandle) -> Self {
        LauncherService { handle, logs: None }
    }

    /// Serves GetLogs from these files.
    #[must_use]
    pub fn with_logs(mut self, files: crate::runtime::logs::LogFiles) -> Self {
        self.logs = Some(logs::Logs::new(files));
        self
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.handle
            .commands
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("the launcher is shutting down"))?;
        rx.await
            .map_err(|_| Status::unavailable("the launcher is shutting down"))?
            .map_err(to_status)
    }

    /// Waits until `done` holds for the snapshot, or `timeout` passes;
    /// returns the last snapshot either way.
    async fn wait(
        &self,
        timeout: Duration,
        done: impl FnMut(&Arc<Snapshot>) -> bool,
    ) -> Arc<Snapshot> {
        let mut rx = self.handle.snapshots.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(done)).await;
        rx.borrow().clone()
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.handle.snapshots.borrow().clone()
    }

    /// The snapshot as the caller may see it (see [`gate`]).
    fn snapshot_for<T>(&self, request: &Request<T>) -> Arc<Snapshot> {
        match gate::limits(request) {
            Some(limits) => Arc::new(limits.restrict(&self.snapshot())),
            None => self.snapshot(),
        }
    }
}

/// Who makes a call, as events and the log name them.
pub(crate) fn actor<T>(request: &Request<T>) -> String {
    identity::identity(request).to_string()
}

fn to_status(e: CommandError) -> Status {
    match e {
        CommandError::NotFound(m) => Status::not_found(m),
        CommandError::InvalidArgument(m) => Status::invalid_argument(m),
        CommandError::FailedPrecondition(m) => Status::failed_precondition(m),
        CommandError::Unavailable(m) => Status::unavailable(m),
        CommandError::ResourceExhausted(m) => Status::resource_exhausted(m),
        CommandError::PermissionDenied(m) => Status::permission_denied(m),
    }
}

#[tonic::async_trait]
impl PatternLauncher for LauncherService {
    async fn launch_pattern(
        &self,
        request: Request<proto::LaunchRequest>,
    ) -> Result<Response<proto::LaunchResponse>, Status> {
        let actor = actor(&request);
        let grant = request.extensions().get::<crate::authz::Grant>().cloned();
        let r = request.into_inner();
        let isolation = convert::isolation_from_wire(r.isolation)?;
        let params = LaunchParams {
            pattern: r.pattern_name,
            isolation,
            namespace: r.namespace,
            session_id: r.session_id,
            config: r.config.into_iter().collect(),
            grace_period_secs: r.grace_period_secs,
            actor,
            grant,
        };
        let accepted = self.ask(|reply| Command::Launch { params, reply }).await?;
        let id = accepted.process_id.clone();
        // Healthy is an answer at once; a failure only when a snapshot
        // published after the call shows it, so that the launch of a
        // circuit-broken instance waits for its new attempt, not the old
        // failure.
        let settled = |seq: u64, s: &InstanceStatus| {
            (s.phase == Phase::Running && s.healthy)
                || (seq > accepted.seq
                    && (s.phase == Phase::Failed || s.failed_starts > accepted.failed_starts))
        };
        let timeout = self.handle.plan.startup_timeout + WAIT_MARGIN;
        // Gone from a snapshot published after the call was taken in: a
        // TerminatePattern (or a file's removal) withdrew it meanwhile.
        let withdrawn = |s: &Snapshot| s.seq > accepted.seq && !s.instances.contains_key(&id);
        let snap = self
            .wait(timeout, |s| {
                withdrawn(s) || s.instances.get(&id).is_some_and(|i| settled(s.seq, i))
            })
            .await;
        let Some(st) = snap.instances.get(&id) else {
            return Err(if withdrawn(&snap) {
                Status::aborted(format!("{id} was terminated before it became healthy"))
            } else {
                Status::unavailable(format!(
                    "{id} was declared but has not started (is the launcher shutting down?)"
                ))
            });
        };
        Ok(Response::new(convert::launch_response(st)))
    }

    async fn list_patterns(
        &self,
        request: Request<proto::ListPatternsRequest>,
    ) -> Result<Response<proto::ListPatternsResponse>, Status> {
        let snap = self.snapshot_for(&request);
        let r = request.into_inner();
        let state = convert::state_filter(r.state)?;
        let patterns = snap
            .instances
            .values()
            .filter(|s| r.pattern_name.is_empty() || s.pattern == r.pattern_name)
            .filter(|s| r.namespace.is_empty() || s.namespace == r.namespace)
            .filter(|s| state.is_none_or(|p| s.phase == p))
            .map(|s| convert::pattern_info(s))
            .collect();
        Ok(Response::new(proto::ListPatternsResponse {
            patterns,
            total_count: convert::count(snap.instances.len()),
        }))
    }

    async fn terminate_pattern(
        &self,
        request: Request<proto::TerminateRequest>,
    ) -> Result<Response<proto::TerminateResponse>, Status> {
        let actor = actor(&request);
        let r = request.into_inner();
        let grace = crate::spec::grace_from_secs(r.grace_period_secs)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let id = r.process_id;
        if id.is_empty() {
            return Err(Status::invalid_argument("process_id is required"));
        }
        let force = r.force;
        let pid = id.clone();
        let stopping = self
            .ask(|reply| Command::Terminate {
                process_id: pid,
                grace,
                force,
                actor,
                reply,
            })
            .await?;
        let timeout = grace.unwrap_or(self.handle.plan.default_grace) + WAIT_MARGIN * 6;
        // Done when the instance is gone, or when a LaunchPattern that came
        // after declared it again and the process this call stopped is gone.
        let snap = self
            .wait(timeout, |s| {
                s.instances
                    .get(&id)
                    .is_none_or(|i| i.pid != stopping && i.phase != Phase::Terminating)
            })
            .await;
        let still = snap
            .instances
            .get(&id)
            .filter(|i| i.pid == stopping || i.phase == Phase::Terminating);
        Ok(Response::new(match still {
            None => proto::TerminateResponse {
                success: true,
                error: String::new(),
            },
            Some(s) => proto::TerminateResponse {
                success: false,
                error: format!(
                    "{id} is still {:?} after {timeout:?} (pid {:?})",
                    s.phase, s.pid
                ),
            },
        }))
    }

    async fn health(
        &self,
        request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        let snap = self.snapshot_for(&request);
        let r = request.into_inner();
        let age = self.handle.loop_age();
        let stalled = (age > STALL_AFTER).then(|| {
            format!("the reconcile loop has not run for {age:?} (stalled after {STALL_AFTER:?})")
        });
        Ok(Response::new(convert::health_response(
            &snap,
            stalled,
            r.include_processes,
            self.handle.started.elapsed(),
        )))
    }

    async fn list_sources(
        &self,
        request: Request<proto::ListSourcesRequest>,
    ) -> Result<Response<proto::ListSourcesResponse>, Status> {
        let snap = self.snapshot_for(&request);
        let sources = snap
            .sources
            .iter()
            .map(|s| convert::source_info(s, &snap))
            .collect();
        Ok(Response::new(proto::ListSourcesResponse { sources }))
    }

    async fn get_process_status(
        &self,
        request: Request<proto::GetProcessStatusRequest>,
    ) -> Result<Response<proto::GetProcessStatusResponse>, Status> {
        let id = request.into_inner().process_id;
        let snap = self.snapshot();
        Ok(Response::new(match snap.instances.get(&id) {
            Some(s) => proto::GetProcessStatusResponse {
                process: Some(convert::pattern_info(s)),
                not_found: false,
            },
            None => proto::GetProcessStatusResponse {
                process: None,
                not_found: true,
            },
        }))
    }

    type WatchStream = watch::EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let within = gate::limits(&request);
        watch::watch(self, request.into_inner(), within).await
    }

    type GetLogsStream = logs::LogStream;

    async fn get_logs(
        &self,
        request: Request<proto::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        logs::get_logs(self, request.into_inner()).await
    }

    async fn describe(
        &self,
        request: Request<proto::DescribeRequest>,
    ) -> Result<Response<proto::DescribeResponse>, Status> {
        watch::describe(self, request.into_inner()).await
    }

    async fn restart_pattern(
        &self,
        request: Request<proto::RestartRequest>,
    ) -> Result<Response<proto::RestartResponse>, Status> {
        steer::restart(self, request).await
    }

    async fn signal_pattern(
        &self,
        request: Request<proto::SignalRequest>,
    ) -> Result<Response<proto::SignalResponse>, Status> {
        steer::signal(self, request).await
    }
}
