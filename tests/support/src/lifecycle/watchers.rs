//! What watch clients cost (issue 12): the steady state and LaunchPattern
//! again with four Watch clients reading every event, and LaunchPattern
//! while events flow, with and without a client that never reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prism_launcher::proto::{SignalRequest, WatchRequest};
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use super::Ctx;
use super::session::{Client, Session, process_id};
use super::small::launch_on_running;

/// Watch clients of the steady-state measurement.
pub const WATCH_CLIENTS: usize = 4;

/// `n` Watch clients from the current state, each reading and dropping
/// every event; the count of events they read.
pub(super) fn start_readers(
    ctx: &Ctx<'_>,
    s: &Session,
    n: usize,
) -> (Vec<JoinHandle<()>>, Arc<AtomicU64>) {
    let read = Arc::new(AtomicU64::new(0));
    let tasks = (0..n)
        .map(|_| {
            let mut c = Client::connect(ctx.rt.handle(), ctx.ports.grpc)
                .unwrap_or_else(|e| s.fail(&format!("connect: {e}")))
                .inner;
            let read = read.clone();
            ctx.rt.spawn(async move {
                let Ok(r) = c.watch(WatchRequest::default()).await else {
                    return;
                };
                let mut stream = r.into_inner();
                while let Ok(Some(_)) = stream.message().await {
                    read.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tasks, read)
}

/// A Watch client that never reads, over the smallest HTTP/2 windows: it
/// is cut off once the launcher's queue for it is full.
fn stalled(ctx: &Ctx<'_>, s: &Session) -> tonic::Streaming<prism_launcher::proto::WatchEvent> {
    let port = ctx.ports.grpc;
    ctx.rt.block_on(async {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(65_535)
            .connect()
            .await
            .unwrap_or_else(|e| s.fail(&format!("connect: {e}")));
        let mut c =
            prism_launcher::proto::pattern_launcher_client::PatternLauncherClient::new(channel);
        c.watch(WatchRequest::default())
            .await
            .unwrap_or_else(|e| s.fail(&format!("Watch: {e}")))
            .into_inner()
    })
}

/// Events flowing: SignalPattern (SIGWINCH, which the pattern ignores) to
/// the instance of `namespace` in a loop until the flag is set.
fn event_flow(ctx: &Ctx<'_>, s: &Session, namespace: &str) -> (Arc<AtomicBool>, JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = Client::connect(ctx.rt.handle(), ctx.ports.grpc)
        .unwrap_or_else(|e| s.fail(&format!("connect: {e}")))
        .inner;
    let id = process_id(namespace);
    let flag = stop.clone();
    let task = ctx.rt.spawn(async move {
        let mut sent = 0;
        while !flag.load(Ordering::Relaxed) {
            let req = SignalRequest {
                process_id: id.clone(),
                signal: "WINCH".into(),
            };
            if c.signal_pattern(req).await.is_ok() {
                sent += 1;
            }
            // About 1,000 events a second: a busy launcher, not a flood.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    });
    (stop, task)
}

/// LaunchPattern p99 on the running instance of `namespace` while events
/// flow, first with no watch client, then with one that never reads.
pub(super) fn launch_with_a_stalled_client(ctx: &mut Ctx<'_>, s: &Session, namespace: &str) {
    let (stop, flow) = event_flow(ctx, s, namespace);
    let (_, p99, _) = launch_on_running(ctx, s, namespace);
    ctx.report.push_ms("launch_evt.p99", p99);
    let stuck = stalled(ctx, s);
    let (_, p99, _) = launch_on_running(ctx, s, namespace);
    ctx.report.push_ms("launch_stalled.p99", p99);
    stop.store(true, Ordering::Relaxed);
    let sent = ctx.rt.block_on(flow).unwrap_or(0);
    if sent == 0 {
        s.fail("no SignalPattern call succeeded: no events flowed");
    }
    drop(stuck);
}
