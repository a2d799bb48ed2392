//! Watch and Describe: the event stream and everything about one instance.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Response, Status};

use super::LauncherService;
use crate::proto;

/// The stream of a Watch call.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

pub(super) async fn watch(
    _svc: &LauncherService,
    _r: proto::WatchRequest,
) -> Result<Response<EventStream>, Status> {
    Err(Status::unimplemented("Watch is not built yet"))
}

pub(super) async fn describe(
    _svc: &LauncherService,
    _r: proto::DescribeRequest,
) -> Result<Response<proto::DescribeResponse>, Status> {
    Err(Status::unimplemented("Describe is not built yet"))
}
