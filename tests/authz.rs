//! Authorization and the per-caller rate limit, against the real launcher
//! over TCP: the defaults without `--authz`, a policy in force refusing
//! callers without an identity, a policy file that cannot be loaded at
//! start-up, the audit lines, and one client over its rate limit while
//! another goes on. (Policy rules need callers with an identity: those
//! tests run on the Unix socket and with mTLS.)

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};

/// A client of its own connection from `local` (an address of 127/8, so
/// that two clients are two callers for the launcher).
struct Client {
    rt: tokio::runtime::Runtime,
    client: PatternLauncherClient<Channel>,
}

impl Client {
    fn from(local: &str, port: u16) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let local: IpAddr = local.parse().expect("an address");
        let endpoint = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("a URI")
            .local_address(Some(local))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        let client = rt.block_on(async {
            PatternLauncherClient::new(endpoint.connect().await.expect("connect"))
        });
        Client { rt, client }
    }

    fn signal(&mut self, process_id: &str) -> Result<(), tonic::Status> {
        let r = proto::SignalRequest {
            process_id: process_id.into(),
            signal: "HUP".into(),
        };
        self.rt.block_on(self.client.signal_pattern(r)).map(drop)
    }

    fn launch(&mut self, namespace: &str) -> Result<proto::LaunchResponse, tonic::Status> {
        let r = proto::LaunchRequest {
            pattern_name: "test-pattern".into(),
            isolation: proto::IsolationLevel::IsolationNamespace.into(),
            namespace: namespace.into(),
            ..Default::default()
        };
        let reply = self.rt.block_on(self.client.launch_pattern(r));
        reply.map(tonic::Response::into_inner)
    }

    fn terminate(&mut self, process_id: &str) -> Result<proto::TerminateResponse, tonic::Status> {
        let r = proto::TerminateRequest {
            process_id: process_id.into(),
            ..Default::default()
        };
        let reply = self.rt.block_on(self.client.terminate_pattern(r));
        reply.map(tonic::Response::into_inner)
    }

    fn list(&mut self) -> Result<proto::ListPatternsResponse, tonic::Status> {
        let r = proto::ListPatternsRequest::default();
        let reply = self.rt.block_on(self.client.list_patterns(r));
        reply.map(tonic::Response::into_inner)
    }
}

#[test]
fn a_client_over_its_rate_limit_is_told_when_to_retry_and_another_client_goes_on() {
    let env = TestEnv::builder()
        .arg("--rate-limit")
        .arg("2")
        .arg("--rate-burst")
        .arg("5")
        .start();
    let port = env.ports.grpc_port();
    let mut flooder = Client::from("127.0.0.1", port);
    let mut answers = Vec::new();
    let limited = loop {
        match flooder.signal("ns:nobody:test-pattern") {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            other => answers.push(other.err().map(|s| s.code())),
        }
        assert!(answers.len() < 500, "never limited: {answers:?}");
    };
    assert!(answers.len() >= 5, "the burst passes first: {answers:?}");
    assert!(
        limited.message().contains("retry after") && limited.message().contains("127.0.0.1"),
        "{}",
        limited.message()
    );
    let ms = retry_after_ms(&limited);
    assert!((1..=1000).contains(&ms), "{ms}");
    // Its reads are not limited.
    flooder.list().expect("a read of a limited client");

    // The flooder keeps flooding (bounded) while another client works.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, refused) = (stop.clone(), refused.clone());
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if let Err(s) = flooder.signal("ns:nobody:test-pattern")
                    && s.code() == tonic::Code::ResourceExhausted
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let mut other = Client::from("127.0.0.2", port);
    let started = Instant::now();
    let launched = other.launch("other").expect("the other client launches");
    assert!(launched.healthy, "{launched:?}");
    let missing = other.signal("ns:nobody:test-pattern").unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let done = other
        .terminate(&launched.process_id)
        .expect("the other client terminates");
    assert!(done.success, "{done:?}");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("the flooder");
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the flood went on being refused meanwhile"
    );
    // A launch, a signal and a terminate, each a few hundred ms at most.
    assert!(
        took < Duration::from_secs(30),
        "the other client took {took:?}"
    );
    // Once it stops, the flooder's bucket fills again.
    let mut again = Client::from("127.0.0.1", port);
    assert!(
        wait_until(Duration::from_secs(30), || again
            .signal("ns:nobody:test-pattern")
            .is_err_and(|s| s.code() == tonic::Code::NotFound)),
        "the flooder is never let through again"
    );
    // Mutating calls are in the launcher's log with who made them.
    let log = env.read_log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("api 127.0.0.2:")
            && l.contains("LaunchPattern")
            && l.contains("namespace=\"other\"")
            && l.ends_with(": OK")),
        "no audit line of the launch:\n{}",
        tail(&log, 40)
    );
}

#[test]
fn without_a_policy_tcp_callers_may_do_everything_and_are_audited() {
    let env = TestEnv::start();
    let reply = env.launch_running("test-pattern", "a", &[]);
    let id = jstr(&reply, "processId");
    let refused = env.launch_ns("no-such-pattern", "a", &[]).unwrap_err();
    assert_eq!(refused.code, "NotFound");
    env.terminate(&id, 0, false).expect("terminate");
    let log = env.read_log();
    for want in [
        format!("TerminatePattern process_id={id:?} force=false: OK"),
        "LaunchPattern pattern=\"no-such-pattern\" isolation=namespace namespace=\"a\" session_id=\"\": NotFound".to_string(),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("audit") && l.contains("api 127.0.0.1:") && l.contains(&want)),
            "no audit line with {want}:\n{}",
            tail(&log, 40)
        );
    }
}

#[test]
fn with_a_policy_callers_without_an_identity_are_unauthenticated() {
    let policy = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(policy.path(), "rules:\n  - uid: 0\n    role: admin\n").expect("policy");
    let env = TestEnv::builder()
        .arg("--authz")
        .arg(&policy.path().display().to_string())
        .start();
    for (method, request) in [
        ("ListPatterns", json!({})),
        ("Health", json!({})),
        (
            "LaunchPattern",
            json!({"pattern_name": "test-pattern", "namespace": "a"}),
        ),
    ] {
        let e = env.grpc(method, request).unwrap_err();
        assert_eq!(e.code, "Unauthenticated", "{method}: {e}");
        assert!(e.message.contains("no identity"), "{e}");
    }
    assert!(
        env.read_log()
            .contains("LaunchPattern pattern=\"test-pattern\""),
        "the refused launch is audited"
    );
}

#[test]
fn a_policy_file_that_cannot_be_loaded_at_start_up_stops_the_launcher() {
    let t = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(t.path().join("patterns")).expect("patterns dir");
    let bad = t.path().join("bad.yaml");
    std::fs::write(&bad, "rules:\n  - uid: 0\n    role: root\n").expect("bad policy");
    let port = PortBlock::allocate().grpc_port().to_string();
    for (file, want) in [
        (t.path().join("missing.yaml"), "missing.yaml".to_string()),
        (bad.clone(), format!("{}:3", bad.display())),
    ] {
        let (status, out) = run_to_exit(&[
            "--patterns-dir",
            &t.path().join("patterns").display().to_string(),
            "--desired-dir",
            &t.path().join("desired").display().to_string(),
            "--state-dir",
            &t.path().join("state").display().to_string(),
            "--grpc-port",
            &port,
            "--authz",
            &file.display().to_string(),
        ]);
        assert!(!status.success(), "it must not serve: {out}");
        assert!(
            out.contains("--authz") && out.contains(&want),
            "the error names the flag and {want}:\n{out}"
        );
    }
}
