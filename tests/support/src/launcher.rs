//! The `prism-launcher` process of a test: started in its own process
//! group with the test's flags, environment and open-file limit, ready once
//! it answers `Health`, stopped (SIGTERM, then SIGKILL) when dropped,
//! killed or restarted on demand; and its gRPC client, reconnected after
//! every restart.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::bins::{LAUNCHER, bin_path};
use crate::files::{read_lossy, tail};
use crate::grpc::grpcurl::grpcurl_call;
use crate::grpc::{GrpcClient, GrpcError, SERVICE, Target, probe, probe_unix};
use crate::ports::port_free;
use crate::wait::{READY_TIMEOUT, STOP_TIMEOUT, wait_until};

/// How the tests' calls reach the launcher.
pub(crate) enum Transport {
    /// The project's tonic client (every test but the quick start's).
    Tonic(Box<GrpcClient>),
    /// A grpcurl process per call, as a user of the quick start types them.
    Grpcurl,
}

/// The running `prism-launcher` binary. Stopped (SIGTERM, then SIGKILL after
/// 30 s) when dropped.
pub struct Launcher {
    pub(crate) child: Option<Child>,
    grpc_port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    /// RLIMIT_NOFILE (soft and hard) the launcher starts with.
    fd_limit: Option<u64>,
    transport: Transport,
    /// Where the readiness check and the kit's calls go.
    target: Target,
}

impl Launcher {
    pub(crate) fn spawn(
        grpc_port: u16,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log_path: PathBuf,
        fd_limit: Option<u64>,
        via_grpcurl: bool,
        target: Target,
    ) -> Launcher {
        let transport = if via_grpcurl {
            Transport::Grpcurl
        } else {
            Transport::Tonic(Box::new(GrpcClient::of(target.clone())))
        };
        let mut l = Launcher {
            child: None,
            grpc_port,
            args,
            envs,
            log_path,
            fd_limit,
            transport,
            target,
        };
        l.start();
        l
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "launcher is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let log2 = log.try_clone().expect("clone log file handle");
        let exe = bin_path(LAUNCHER);
        let mut cmd = Command::new(&exe);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a terminal's ^C or a group kill aimed at
            // the test runner does not hit it, and the reverse.
            .process_group(0);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        if let Some(n) = self.fd_limit {
            use nix::sys::resource::{Resource, setrlimit};
            // SAFETY: only setrlimit(2), async-signal-safe, runs between
            // fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    setrlimit(Resource::RLIMIT_NOFILE, n, n).map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", exe.display()));
        self.child = Some(child);
        self.wait_ready();
        self.forget_connection();
    }

    /// Polls `Health` (a connection of its own each time, closed at once)
    /// until the launcher answers; panics if it exits first or takes longer
    /// than [`READY_TIMEOUT`].
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "prism-launcher exited before serving gRPC ({status}); args: {:?}\n--- launcher log ---\n{}",
                    self.args,
                    tail(&read_lossy(&self.log_path), 80)
                );
            }
            let probed = match &self.target {
                Target::Tcp(port) => probe(*port, Duration::from_secs(5)),
                Target::Unix(path) => probe_unix(path, Duration::from_secs(5)),
            };
            let last = match probed {
                Ok(_) => return,
                // A refusal by the authorization in force is an answer too.
                Err(e) if e.code == "Unauthenticated" || e.code == "PermissionDenied" => return,
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "prism-launcher did not serve {SERVICE} on {:?} within {READY_TIMEOUT:?} ({last})\n--- launcher log ---\n{}",
                    self.target,
                    tail(&read_lossy(&self.log_path), 80)
                );
            }
            // Poll interval of the readiness check.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The next call opens a new connection (this launcher is not the one
    /// the old connection went to).
    fn forget_connection(&self) {
        if let Transport::Tonic(c) = &self.transport {
            c.reconnect();
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGTERM; waits up to 30 s for the exit, then SIGKILL. Returns the exit
    /// status (a SIGKILL shows as signal 9).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("launcher is not running");
        self.forget_connection();
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "prism-launcher (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL",
                    child.id()
                );
                let _ = child.kill();
                return child.wait().expect("wait for launcher");
            }
            // Poll interval of the exit.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash of the launcher); its instances are left running.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("launcher is not running");
        self.forget_connection();
        let _ = child.kill();
        child.wait().expect("wait for launcher")
    }

    /// Starts the launcher again with the same directories, ports and flags
    /// (stops it first if it still runs) and waits until it serves gRPC.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // After a kill -9 in the middle of a burst of starts the port was
        // once still taken 40 ms after the launcher was reaped (a child
        // cloned with the launcher's descriptor table holds the listening
        // socket until its first system call): wait for it, as a
        // supervisor's restart delay would.
        wait_until(READY_TIMEOUT, || port_free(self.grpc_port));
        self.start();
    }

    /// Calls `method` with the grpcurl-JSON `request`; the reply as
    /// `grpcurl -emit-defaults` prints it.
    pub fn grpc(&self, method: &str, request: Value) -> Result<Value, GrpcError> {
        match &self.transport {
            Transport::Tonic(c) => c.call(method, &request),
            Transport::Grpcurl => grpcurl_call(self.grpc_port, method, &request),
        }
    }

    /// The launcher's output (stdout and stderr, across restarts).
    /// The file the launcher's stdout and stderr go to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log_path
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}
