//! RestartPattern and SignalPattern.

use tonic::{Response, Status};

use super::LauncherService;
use crate::proto;

pub(super) async fn restart(
    _svc: &LauncherService,
    _r: proto::RestartRequest,
) -> Result<Response<proto::RestartResponse>, Status> {
    Err(Status::unimplemented("RestartPattern is not built yet"))
}

pub(super) async fn signal(
    _svc: &LauncherService,
    _r: proto::SignalRequest,
) -> Result<Response<proto::SignalResponse>, Status> {
    Err(Status::unimplemented("SignalPattern is not built yet"))
}
