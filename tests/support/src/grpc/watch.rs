//! The event stream as the tests read it: a Watch on a runtime of its own,
//! read item by item with a timeout, or left unread on purpose.

use std::time::{Duration, Instant};

use prism_launcher::proto::{self, pattern_launcher_client::PatternLauncherClient};
use tonic::Streaming;

/// One open Watch call.
pub struct Watch {
    rt: tokio::runtime::Runtime,
    stream: Streaming<proto::WatchEvent>,
}

/// What the next read gave.
#[derive(Debug)]
pub enum Next {
    /// An event.
    Event(Box<proto::WatchEvent>),
    /// The stream ended with this status.
    Ended(tonic::Status),
    /// The stream ended cleanly.
    Closed,
    /// Nothing came in time.
    Timeout,
}

impl Watch {
    /// Opens a Watch with `request` on the launcher at `port`.
    pub fn open(port: u16, request: proto::WatchRequest) -> Result<Watch, tonic::Status> {
        Watch::open_with_window(port, request, None)
    }

    /// Opens a Watch whose HTTP/2 flow-control windows are `window` bytes
    /// (the protocol's smallest is 65,535): a client that stops reading
    /// then stops the server's writes soon.
    pub fn open_with_window(
        port: u16,
        request: proto::WatchRequest,
        window: Option<u32>,
    ) -> Result<Watch, tonic::Status> {
        // A worker of its own drives the connection while the test does not
        // read: it answers the server's keepalive pings as a live client
        // does, however long the test leaves the stream unread.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stream = rt.block_on(async {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .map_err(|e| tonic::Status::internal(e.to_string()))?
                    .initial_stream_window_size(window)
                    .initial_connection_window_size(window);
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let mut client = PatternLauncherClient::new(channel);
            client.watch(request).await.map(tonic::Response::into_inner)
        })?;
        Ok(Watch { rt, stream })
    }

    /// Opens a Watch with `request` on `target` (a TCP port or the
    /// launcher's Unix socket).
    pub fn open_on(
        target: &super::Target,
        request: proto::WatchRequest,
    ) -> Result<Watch, tonic::Status> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let stream = rt.block_on(async {
            let mut client = PatternLauncherClient::new(super::lazy_channel(target));
            client.watch(request).await.map(tonic::Response::into_inner)
        })?;
        Ok(Watch { rt, stream })
    }

    /// A Watch of everything from the current state.
    pub fn all(port: u16) -> Watch {
        Watch::open(port, proto::WatchRequest::default()).expect("Watch")
    }

    /// The next item, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Next {
        let stream = &mut self.stream;
        match self
            .rt
            .block_on(async { tokio::time::timeout(timeout, stream.message()).await })
        {
            Err(_) => Next::Timeout,
            Ok(Ok(Some(e))) => Next::Event(Box::new(e)),
            Ok(Ok(None)) => Next::Closed,
            Ok(Err(s)) => Next::Ended(s),
        }
    }

    /// Reads events until `done` holds for the events read so far (it is
    /// given them all), or `timeout` passes; returns what was read.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&[proto::WatchEvent]) -> bool,
    ) -> Vec<proto::WatchEvent> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while !done(&seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Next::Event(e) => seen.push(*e),
                other => panic!(
                    "the watch gave {other:?} before it was done; read: {:?}",
                    summary(&seen)
                ),
            }
        }
        seen
    }
}

/// `revision reason process_id: message` per event, for failure messages.
pub fn summary(events: &[proto::WatchEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}: {}",
                e.revision, e.reason, e.process_id, e.message
            )
        })
        .collect()
}
