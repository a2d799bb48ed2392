//! GetLogs as the tests call it: all the lines of a call that ends
//! ([`get_logs`]), or a followed call read line by line as the test wants
//! ([`LogStream`]), in grpcurl's JSON (one object per `LogLine`).
//!
//! A [`LogStream`] has a connection and a runtime of its own; it holds at
//! most one line the test has not taken and HTTP/2's default windows, so
//! a test that stops reading soon stops the launcher sending, as a slow
//! client would.

use std::time::Duration;

use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{CALL_TIMEOUT, GrpcError, deadline_exceeded, endpoint, json, unavailable};

/// The HTTP/2 flow-control windows of a [`LogStream`]'s connection.
const WINDOW: u32 = 65_535;

/// What a [`LogStream`] gives next.
#[derive(Debug, Clone, PartialEq)]
pub enum LogItem {
    /// One `LogLine`.
    Line(Value),
    /// The call ended with an error.
    Error(GrpcError),
    /// The call ended with OK.
    End,
}

/// A GetLogs call read as it goes.
pub struct LogStream {
    rt: tokio::runtime::Runtime,
    rx: mpsc::Receiver<LogItem>,
    ended: bool,
}

impl LogStream {
    /// Calls GetLogs on `127.0.0.1:port` with the grpcurl-JSON `request`;
    /// the error if the call is refused.
    pub fn open(port: u16, request: &Value) -> Result<LogStream, GrpcError> {
        let r = json::get_logs_request(request)
            .unwrap_or_else(|e| panic!("GetLogs: the request is not valid: {e}: {request}"));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit-logs")
            .enable_all()
            .build()
            .expect("a tokio runtime for GetLogs");
        let mut stream = rt.block_on(async {
            let call = async {
                // HTTP/2's default windows (64 KiB), not hyper's 2 MiB, so
                // that the launcher, not the client, holds what waits.
                let channel = endpoint(port)
                    .initial_stream_window_size(WINDOW)
                    .initial_connection_window_size(WINDOW)
                    .connect()
                    .await
                    .map_err(|e| unavailable(format!("cannot connect to 127.0.0.1:{port}: {e}")))?;
                let reply = PatternLauncherClient::new(channel).get_logs(r).await?;
                Ok::<_, GrpcError>(reply.into_inner())
            };
            tokio::time::timeout(CALL_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| Err(deadline_exceeded(CALL_TIMEOUT)))
        })?;
        let (tx, rx) = mpsc::channel(1);
        rt.spawn(async move {
            loop {
                let item = match stream.message().await {
                    Ok(Some(line)) => LogItem::Line(json::log_line(&line)),
                    Ok(None) => LogItem::End,
                    Err(status) => LogItem::Error(status.into()),
                };
                let last = !matches!(item, LogItem::Line(_));
                if tx.send(item).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(LogStream {
            rt,
            rx,
            ended: false,
        })
    }

    /// The next item, or None if none came within `timeout`. After the
    /// end, [`LogItem::End`] again.
    pub fn next(&mut self, timeout: Duration) -> Option<LogItem> {
        if self.ended {
            return Some(LogItem::End);
        }
        let rx = &mut self.rx;
        let item = self
            .rt
            .block_on(async { tokio::time::timeout(timeout, rx.recv()).await })
            .ok()?
            .unwrap_or(LogItem::End);
        self.ended = !matches!(item, LogItem::Line(_));
        Some(item)
    }

    /// The next line; panics on anything else or none within `timeout`.
    pub fn next_line(&mut self, timeout: Duration) -> Value {
        match self.next(timeout) {
            Some(LogItem::Line(v)) => v,
            other => panic!("GetLogs: a line expected within {timeout:?}, got {other:?}"),
        }
    }

    /// Lines until one for which `want` holds (returned, with the lines
    /// before it); panics if none comes within `timeout` in all.
    pub fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut want: impl FnMut(&Value) -> bool,
    ) -> (Value, Vec<Value>) {
        let deadline = std::time::Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next(left) {
                Some(LogItem::Line(v)) if want(&v) => return (v, before),
                Some(LogItem::Line(v)) => before.push(v),
                other => panic!(
                    "GetLogs: no line {what} within {timeout:?} (got {other:?} after {} lines: {:?})",
                    before.len(),
                    before.iter().rev().take(5).collect::<Vec<_>>()
                ),
            }
        }
    }
}

/// Every line of a GetLogs call (without `follow`), within 120 s.
pub fn get_logs(port: u16, request: &Value) -> Result<Vec<Value>, GrpcError> {
    let mut stream = LogStream::open(port, request)?;
    let mut lines = Vec::new();
    loop {
        match stream.next(CALL_TIMEOUT) {
            Some(LogItem::Line(v)) => lines.push(v),
            Some(LogItem::End) => return Ok(lines),
            Some(LogItem::Error(e)) => return Err(e),
            None => return Err(deadline_exceeded(CALL_TIMEOUT)),
        }
    }
}
