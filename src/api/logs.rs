//! GetLogs: an instance's output, its last lines then new ones.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Response, Status};

use super::LauncherService;
use crate::proto;

/// The stream of a GetLogs call.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogLine, Status>> + Send>>;

pub(super) async fn get_logs(
    _svc: &LauncherService,
    _r: proto::GetLogsRequest,
) -> Result<Response<LogStream>, Status> {
    Err(Status::unimplemented("GetLogs is not built yet"))
}
