//! One launcher of a lifecycle bench run ([`Session`]): started in a
//! directory of its own on the run's ports, ready once it answers
//! `Health`, timed when it stops; and the blocking tonic client the
//! scenarios call it with.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use prism_launcher::proto::{
    GetProcessStatusRequest, HealthRequest, HealthResponse, IsolationLevel, LaunchRequest,
    LaunchResponse, ListPatternsRequest, PatternInfo, ProcessState,
};
use tonic::transport::Channel;

use super::{ALL_HEALTHY_POLL, Ctx, PATTERN, READY, STOP_POLL, STOP_TIMEOUT, TOKEN_VAR, WAIT};
use crate::files::{read_lossy, tail};
use crate::ports::port_free;
use crate::procs::{pid_alive, try_signal};

/// The last `n` lines of the file at `path`.
fn log_tail(path: &Path, n: usize) -> String {
    tail(&read_lossy(path), n)
}

// ---------------------------------------------------------------------------
// gRPC client
// ---------------------------------------------------------------------------

/// A blocking face on the tonic client: each call runs on the run's tokio
/// runtime, so the caller can poll with sub-millisecond sleeps.
#[derive(Clone)]
pub(super) struct Client {
    rt: tokio::runtime::Handle,
    pub(super) inner: PatternLauncherClient<Channel>,
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub(super) fn launch_request(namespace: &str) -> LaunchRequest {
    LaunchRequest {
        pattern_name: PATTERN.to_string(),
        isolation: IsolationLevel::IsolationNamespace.into(),
        namespace: namespace.to_string(),
        ..LaunchRequest::default()
    }
}

pub(super) fn process_id(namespace: &str) -> String {
    format!("ns:{namespace}:{PATTERN}")
}

pub(super) fn running(p: &PatternInfo) -> bool {
    p.state == i32::from(ProcessState::StateRunning) && p.healthy
}

pub(super) fn launched(r: &LaunchResponse) -> bool {
    r.state == i32::from(ProcessState::StateRunning) && r.healthy && r.pid > 0
}

impl Client {
    pub(super) fn connect(rt: &tokio::runtime::Handle, port: u16) -> Result<Client, String> {
        let channel = rt
            .block_on(
                Channel::from_shared(endpoint(port))
                    .map_err(|e| e.to_string())?
                    .connect(),
            )
            .map_err(|e| e.to_string())?;
        Ok(Client {
            rt: rt.clone(),
            inner: PatternLauncherClient::new(channel),
        })
    }

    pub(super) fn health(&self) -> Result<HealthResponse, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.health(HealthRequest::default()))
            .map(tonic::Response::into_inner)
    }

    pub(super) fn list(&self) -> Result<Vec<PatternInfo>, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.list_patterns(ListPatternsRequest::default()))
            .map(|r| r.into_inner().patterns)
    }

    pub(super) fn status(&self, id: &str) -> Result<Option<PatternInfo>, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.get_process_status(GetProcessStatusRequest {
                process_id: id.to_string(),
            }))
            .map(|r| r.into_inner().process)
    }

    pub(super) fn launch(&self, namespace: &str) -> Result<LaunchResponse, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.launch_pattern(launch_request(namespace)))
            .map(tonic::Response::into_inner)
    }
}

// ---------------------------------------------------------------------------
// A launcher
// ---------------------------------------------------------------------------

/// One launcher in a directory of its own; stopped when dropped.
pub(super) struct Session {
    pub(super) label: String,
    child: Option<Child>,
    pub(super) pid: u32,
    pub(super) dir: PathBuf,
    pub(super) desired: PathBuf,
    pub(super) log: PathBuf,
    pub(super) client: Client,
}

impl Session {
    pub(super) fn start(ctx: &mut Ctx<'_>, label: &str) -> Session {
        ctx.sessions += 1;
        let dir = ctx.root.path().join(format!("{:03}-{label}", ctx.sessions));
        let (desired, state) = (dir.join("desired"), dir.join("state"));
        for d in [&desired, &state] {
            fs::create_dir_all(d).expect("session dir");
        }
        let log = dir.join("launcher.log");
        let out = File::create(&log).expect("launcher log");
        let (first, last) = ctx.ports.range;
        let grpc = ctx.ports.grpc;
        assert!(
            port_free(grpc),
            "gRPC port {grpc} is taken (by an earlier launcher that did not exit?)"
        );
        let child = Command::new(&ctx.bins.launcher)
            .arg("--patterns-dir")
            .arg(&ctx.patterns)
            .arg("--desired-dir")
            .arg(&desired)
            .arg("--state-dir")
            .arg(&state)
            .args(["--grpc-port", &grpc.to_string()])
            .args(["--listen", "127.0.0.1"])
            .args(["--port-range", &format!("{first}-{last}")])
            .args(["--metrics-port", "0"])
            // The benches measure the launcher, not the per-caller limit.
            .args(["--rate-limit", "0"])
            .env("RUST_LOG", "warn")
            .env(TOKEN_VAR, &ctx.token)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", ctx.bins.launcher.display()));
        let pid = child.id();
        let mut child = Some(child);
        let t0 = Instant::now();
        let client = loop {
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                panic!(
                    "{label}: the launcher exited at start ({status}):\n{}",
                    log_tail(&log, 30)
                );
            }
            if let Ok(c) = Client::connect(ctx.rt.handle(), grpc)
                && c.health().is_ok()
            {
                break c;
            }
            if t0.elapsed() > READY {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!(
                    "{label}: the launcher did not serve gRPC within {READY:?}:\n{}",
                    log_tail(&log, 30)
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        Session {
            label: label.to_string(),
            child,
            pid,
            dir,
            desired,
            log,
            client,
        }
    }

    pub(super) fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- launcher log (tail) ---\n{}",
            self.label,
            log_tail(&self.log, 40)
        );
    }

    /// From `t0` until `n` instances are RUNNING and healthy (module doc);
    /// also how long each `Health` call took to answer meanwhile.
    pub(super) fn wait_all_healthy(&self, n: usize, t0: Instant) -> (Duration, Vec<Duration>) {
        let want = i32::try_from(n).expect("n fits i32");
        let mut answers = Vec::new();
        loop {
            let asked = Instant::now();
            let h = self
                .client
                .health()
                .unwrap_or_else(|e| self.fail(&format!("Health failed: {e}")));
            answers.push(asked.elapsed());
            let seen = t0.elapsed();
            if h.running_processes >= want && h.total_processes == want {
                let list = self
                    .client
                    .list()
                    .unwrap_or_else(|e| self.fail(&format!("ListPatterns failed: {e}")));
                if list.iter().filter(|p| running(p)).count() == n {
                    return (seen, answers);
                }
            }
            if seen > WAIT {
                self.fail(&format!(
                    "{n} instances not all healthy after {WAIT:?}: total {}, running {}, failed {}",
                    h.total_processes, h.running_processes, h.failed_processes
                ));
            }
            thread::sleep(ALL_HEALTHY_POLL);
        }
    }

    /// The instance's status, which must exist.
    pub(super) fn status(&self, id: &str) -> PatternInfo {
        match self.client.status(id) {
            Ok(Some(p)) => p,
            Ok(None) => self.fail(&format!("{id} not found")),
            Err(e) => self.fail(&format!("GetProcessStatus({id}) failed: {e}")),
        }
    }

    /// SIGTERM; the time until the launcher exited and every instance pid
    /// it listed is gone. The launcher must exit 0.
    pub(super) fn stop(mut self) -> Duration {
        let list = self
            .client
            .list()
            .unwrap_or_else(|e| self.fail(&format!("ListPatterns failed: {e}")));
        let mut pids: Vec<i32> = list.iter().map(|p| p.pid).filter(|p| *p > 0).collect();
        let mut child = self.child.take().expect("launcher running");
        let t0 = Instant::now();
        try_signal(i64::from(self.pid), Signal::SIGTERM);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if t0.elapsed() > STOP_TIMEOUT => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.fail(&format!(
                        "the launcher did not exit within {STOP_TIMEOUT:?} of SIGTERM"
                    ));
                }
                Ok(None) => thread::sleep(STOP_POLL),
                Err(e) => self.fail(&format!("waiting for the launcher: {e}")),
            }
        };
        loop {
            pids.retain(|p| pid_alive(i64::from(*p)));
            if pids.is_empty() {
                break;
            }
            if t0.elapsed() > STOP_TIMEOUT {
                self.fail(&format!(
                    "instances {pids:?} still alive {STOP_TIMEOUT:?} after SIGTERM to the launcher"
                ));
            }
            thread::sleep(STOP_POLL);
        }
        let took = t0.elapsed();
        if !status.success() {
            self.fail(&format!("the launcher exited with {status} after SIGTERM"));
        }
        took
    }

    /// Warnings and errors in the launcher's log.
    pub(super) fn findings(&self) -> Vec<String> {
        read_lossy(&self.log)
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(String::from)
            .collect()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        try_signal(i64::from(self.pid), Signal::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Records what the launcher logged at WARN or ERROR, a few lines of each
/// session kind.
pub(super) fn note_findings(ctx: &mut Ctx<'_>, s: &Session, expected: &str) {
    let found = s.findings();
    if found.is_empty() {
        return;
    }
    let kind = s.label.split('-').next().unwrap_or("").to_string();
    let header = format!("launcher log, {} session(s) (expected: {expected}):", kind);
    if ctx.report.notes.iter().any(|n| n.starts_with(&header)) {
        return;
    }
    let mut note = format!("{header} {} WARN/ERROR lines in {}", found.len(), s.label);
    for l in found.iter().take(3) {
        let _ = write!(note, "\n    {l}");
    }
    ctx.report.notes.push(note);
}
