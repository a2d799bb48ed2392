//! `ctl`'s commands against a fake launcher (an in-process tonic server
//! with canned replies): the requests the flags make, the streams (a
//! watch that resumes after RESOURCE_EXHAUSTED, merged logs), and the
//! exit paths of replies that report a failure.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use clap::Parser;
use tokio_stream::Stream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::args::Ctl;
use super::{CtlError, commands, connect};
use crate::proto::pattern_launcher_server::{PatternLauncher, PatternLauncherServer};
use crate::proto::{self, Condition, DescribeResponse, LogLine, PatternInfo, WatchEvent};

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What the fake answers, and the requests it got.
#[derive(Default)]
struct Fake {
    /// One entry per Watch call, taken in order: the events, then the
    /// status the stream ends with (None: a clean end).
    watches: Mutex<Vec<(Vec<WatchEvent>, Option<Status>)>>,
    watch_requests: Mutex<Vec<proto::WatchRequest>>,
    logs: Vec<LogLine>,
    log_requests: Mutex<Vec<proto::GetLogsRequest>>,
    launch: proto::LaunchResponse,
    launch_requests: Mutex<Vec<proto::LaunchRequest>>,
    signal_requests: Mutex<Vec<proto::SignalRequest>>,
    restart_requests: Mutex<Vec<proto::RestartRequest>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unimplemented<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl PatternLauncher for Arc<Fake> {
    async fn launch_pattern(
        &self,
        r: Request<proto::LaunchRequest>,
    ) -> Result<Response<proto::LaunchResponse>, Status> {
        lock(&self.launch_requests).push(r.into_inner());
        Ok(Response::new(self.launch.clone()))
    }
    async fn list_patterns(
        &self,
        _: Request<proto::ListPatternsRequest>,
    ) -> Result<Response<proto::ListPatternsResponse>, Status> {
        unimplemented()
    }
    async fn terminate_pattern(
        &self,
        _: Request<proto::TerminateRequest>,
    ) -> Result<Response<proto::TerminateResponse>, Status> {
        Ok(Response::new(proto::TerminateResponse {
            success: false,
            error: "still running".into(),
        }))
    }
    async fn health(
        &self,
        _: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        Ok(Response::new(proto::HealthResponse {
            healthy: false,
            problems: vec!["the state directory is read-only".into()],
            ..Default::default()
        }))
    }
    async fn get_process_status(
        &self,
        _: Request<proto::GetProcessStatusRequest>,
    ) -> Result<Response<proto::GetProcessStatusResponse>, Status> {
        unimplemented()
    }
    async fn list_sources(
        &self,
        _: Request<proto::ListSourcesRequest>,
    ) -> Result<Response<proto::ListSourcesResponse>, Status> {
        unimplemented()
    }
    type WatchStream = Boxed<WatchEvent>;
    async fn watch(
        &self,
        r: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        lock(&self.watch_requests).push(r.into_inner());
        let mut watches = lock(&self.watches);
        if watches.is_empty() {
            return Err(Status::internal("no more watches in the fake"));
        }
        let (events, end) = watches.remove(0);
        let items: Vec<Result<WatchEvent, Status>> =
            events.into_iter().map(Ok).chain(end.map(Err)).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    type GetLogsStream = Boxed<LogLine>;
    async fn get_logs(
        &self,
        r: Request<proto::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        lock(&self.log_requests).push(r.into_inner());
        let items: Vec<Result<LogLine, Status>> = self.logs.iter().cloned().map(Ok).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }
    async fn describe(
        &self,
        r: Request<proto::DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let id = r.into_inner().process_id;
        Ok(Response::new(DescribeResponse {
            process: Some(PatternInfo {
                process_id: id,
                ..Default::default()
            }),
            conditions: vec![Condition {
                r#type: "Healthy".into(),
                status: "True".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
    async fn restart_pattern(
        &self,
        r: Request<proto::RestartRequest>,
    ) -> Result<Response<proto::RestartResponse>, Status> {
        lock(&self.restart_requests).push(r.into_inner());
        Ok(Response::new(proto::RestartResponse {
            process_ids: vec!["ns:a:p".into()],
            success: false,
            error: "ns:b:p did not become healthy".into(),
        }))
    }
    async fn signal_pattern(
        &self,
        r: Request<proto::SignalRequest>,
    ) -> Result<Response<proto::SignalResponse>, Status> {
        lock(&self.signal_requests).push(r.into_inner());
        Ok(Response::new(proto::SignalResponse {
            pid: 4242,
            signal: "SIGHUP".into(),
        }))
    }
}

/// Runs `ctl <args>` against `fake`; stdout and the outcome.
async fn run(fake: &Arc<Fake>, args: &[&str]) -> (String, Result<(), CtlError>) {
    let incoming = TcpIncoming::bind(([127, 0, 0, 1], 0).into()).expect("bind");
    let addr = incoming.local_addr().expect("addr");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PatternLauncherServer::new(Arc::clone(fake)))
            .serve_with_incoming(incoming),
    );
    let ctl = Ctl::try_parse_from(["ctl"].iter().chain(args)).expect("parses");
    let mut client = connect::tcp(&addr.to_string()).await.expect("connects");
    let mut out = Vec::new();
    let done = commands::run(ctl, &mut client, &mut out).await;
    server.abort();
    (String::from_utf8_lossy(&out).into_owned(), done)
}

fn event(revision: u64, reason: &str) -> WatchEvent {
    WatchEvent {
        revision,
        process_id: "ns:a:p".into(),
        reason: reason.into(),
        time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        ..Default::default()
    }
}

/// The reasons of a table's lines (the header left out).
fn reasons(out: &str) -> Vec<String> {
    out.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

#[tokio::test]
async fn watch_resumes_after_resource_exhausted_from_the_last_live_revision() {
    let fake = Arc::new(Fake::default());
    *lock(&fake.watches) = vec![
        (
            vec![
                event(5, "Snapshot"),
                event(10, "Bookmark"),
                event(11, "Exited"),
            ],
            Some(Status::resource_exhausted("too far behind")),
        ),
        (vec![event(12, "Spawned"), event(13, "Healthy")], None),
    ];
    let (out, done) = run(&fake, &["watch", "--pattern", "p"]).await;
    assert!(done.is_ok(), "{done:?}");
    assert!(out.starts_with("TIME "), "{out}");
    assert_eq!(
        reasons(&out),
        ["Snapshot", "Exited", "Spawned", "Healthy"],
        "the Bookmark is not shown:\n{out}"
    );
    let requests = lock(&fake.watch_requests);
    let since: Vec<u64> = requests.iter().map(|r| r.since_revision).collect();
    assert_eq!(since, [0, 11], "resumed after the last live revision");
    assert!(requests.iter().all(|r| r.pattern_name == "p"));
    assert_eq!(out.matches("TIME ").count(), 1, "one header: {out}");
}

#[tokio::test]
async fn watch_gives_up_when_a_resumed_stream_gets_no_further() {
    let fake = Arc::new(Fake::default());
    *lock(&fake.watches) = vec![
        (
            vec![event(8, "Exited")],
            Some(Status::resource_exhausted("behind")),
        ),
        (vec![], Some(Status::resource_exhausted("behind again"))),
    ];
    let (out, done) = run(&fake, &["-o", "json", "watch", "--since", "7"]).await;
    match done {
        Err(CtlError::Server { code, message }) => {
            assert_eq!(code, tonic::Code::ResourceExhausted);
            assert_eq!(message, "behind again");
        }
        other => panic!("{other:?}"),
    }
    let since: Vec<u64> = lock(&fake.watch_requests)
        .iter()
        .map(|r| r.since_revision)
        .collect();
    assert_eq!(since, [7, 8]);
    assert_eq!(out.lines().count(), 1, "one JSON object per line: {out}");
    assert!(
        out.starts_with("{\"") && out.contains("\"revision\":\"8\""),
        "{out}"
    );
}

#[tokio::test]
async fn merged_logs_name_each_line_s_instance_and_pass_the_flags_on() {
    let line = |id: &str, text: &str| LogLine {
        process_id: id.into(),
        line: text.into(),
        time: None,
    };
    let fake = Arc::new(Fake {
        logs: vec![line("ns:a:p", "one"), line("ns:b:p", "two")],
        ..Default::default()
    });
    let (out, done) = run(&fake, &["logs", "--pattern", "p", "-f", "--tail", "-1"]).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(out, "[ns:a:p] one\n[ns:b:p] two\n");
    let (single, _) = run(&fake, &["logs", "ns:a:p"]).await;
    assert_eq!(single, "one\ntwo\n", "one instance: no prefix");
    let requests = lock(&fake.log_requests);
    assert_eq!(requests[0].pattern_name, "p");
    assert!(requests[0].follow);
    assert_eq!(requests[0].tail_lines, -1);
    assert_eq!(requests[1].process_id, "ns:a:p");
    assert_eq!(requests[1].tail_lines, 0, "the server's default");
    assert!(!requests[1].follow);
}

#[tokio::test]
async fn launch_passes_its_flags_and_a_failed_start_exits_non_zero() {
    let fake = Arc::new(Fake {
        launch: proto::LaunchResponse {
            process_id: "session:t:s1:p".into(),
            error: "exited at start with code 1".into(),
            ..Default::default()
        },
        ..Default::default()
    });
    let (out, done) = run(
        &fake,
        &[
            "launch",
            "p",
            "-n",
            "t",
            "--session",
            "s1",
            "--isolation",
            "session",
            "-c",
            "A=1",
            "-c",
            "B=2",
            "--grace",
            "1m",
        ],
    )
    .await;
    assert!(out.contains("session:t:s1:p"), "{out}");
    match done {
        Err(CtlError::Failed(m)) => assert!(m.contains("exited at start with code 1"), "{m}"),
        other => panic!("{other:?}"),
    }
    let r = lock(&fake.launch_requests).remove(0);
    assert_eq!(r.pattern_name, "p");
    assert_eq!(r.namespace, "t");
    assert_eq!(r.session_id, "s1");
    assert_eq!(r.isolation, proto::IsolationLevel::IsolationSession as i32);
    assert_eq!(
        r.config,
        HashMap::from([("A".into(), "1".into()), ("B".into(), "2".into())])
    );
    assert_eq!(r.grace_period_secs, 60);
}

#[tokio::test]
async fn steering_commands_send_what_was_asked() {
    let fake = Arc::new(Fake::default());
    let (out, done) = run(&fake, &["signal", "ns:a:p", "USR1"]).await;
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(out, "ns:a:p signalled: SIGHUP sent to process group 4242\n");
    let s = lock(&fake.signal_requests).remove(0);
    assert_eq!(
        (s.process_id.as_str(), s.signal.as_str()),
        ("ns:a:p", "USR1")
    );

    let (out, done) = run(&fake, &["restart", "--pattern", "p", "--grace", "3"]).await;
    assert_eq!(out, "ns:a:p restarted\n");
    assert!(
        matches!(&done, Err(CtlError::Failed(m)) if m.contains("pattern p") && m.contains("did not become healthy")),
        "{done:?}"
    );
    let r = lock(&fake.restart_requests).remove(0);
    assert_eq!(
        (
            r.process_id.as_str(),
            r.pattern_name.as_str(),
            r.grace_period_secs
        ),
        ("", "p", 3)
    );

    let (out, done) = run(&fake, &["describe", "ns:a:p"]).await;
    assert!(done.is_ok(), "{done:?}");
    assert!(out.starts_with("Name:           ns:a:p\n"), "{out}");
    assert!(out.contains("Conditions:\n  TYPE "), "{out}");

    let (_, done) = run(&fake, &["terminate", "ns:a:p"]).await;
    assert!(
        matches!(&done, Err(CtlError::Failed(m)) if m.contains("still running")),
        "{done:?}"
    );
    let (out, done) = run(&fake, &["health"]).await;
    assert!(out.contains("the state directory is read-only"), "{out}");
    assert!(matches!(done, Err(CtlError::Failed(_))), "{done:?}");
}
