//! `prism-launcher ctl` as a user runs it: the real binary, its exit
//! status, stdout and stderr ([`ctl`], [`CtlRun`]), or a running stream
//! (`watch`, `logs -f`) read line by line ([`CtlStream`]). Every process
//! started here is killed by pid and reaped at the end, also when the test
//! panics.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins::{LAUNCHER, bin_path};
use crate::wait::wait_for;

/// Longest one `ctl` command may take (a launch waits for health).
pub const CTL_TIMEOUT: Duration = Duration::from_secs(120);

/// A finished `ctl` command.
#[derive(Debug, Clone)]
pub struct CtlRun {
    /// The exit status (None: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    /// True when it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for CtlRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The `prism-launcher ctl` command with `args`, no `PRISM_ADDR` from the
/// test's own environment, stdin on /dev/null.
pub fn ctl_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin_path(LAUNCHER));
    cmd.arg("ctl")
        .args(args)
        .env_remove("PRISM_ADDR")
        .stdin(Stdio::null());
    cmd
}

/// Runs `ctl --addr 127.0.0.1:<port> <args>` to the end (at most
/// [`CTL_TIMEOUT`]).
pub fn ctl(port: u16, args: &[&str]) -> CtlRun {
    let addr = format!("127.0.0.1:{port}");
    let mut full = vec!["--addr", addr.as_str()];
    full.extend_from_slice(args);
    run(ctl_command(&full))
}

/// Runs `cmd` to the end (at most [`CTL_TIMEOUT`], then it is killed and
/// the test fails).
pub fn run(mut cmd: Command) -> CtlRun {
    let mut child = Killed(
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
    );
    let stdout = drain(child.0.stdout.take());
    let stderr = drain(child.0.stderr.take());
    let status = wait_for(CTL_TIMEOUT, || child.0.try_wait().ok().flatten())
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {CTL_TIMEOUT:?}"));
    CtlRun {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

/// A child killed (by pid) and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `ctl` command that keeps running (`watch`, `logs -f`): its stdout
/// lines as they come, its stderr when it ends.
pub struct CtlStream {
    child: Killed,
    lines: Receiver<String>,
    stderr: Option<thread::JoinHandle<String>>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

impl CtlStream {
    /// Starts `ctl --addr 127.0.0.1:<port> <args>`.
    pub fn start(port: u16, args: &[&str]) -> CtlStream {
        let addr = format!("127.0.0.1:{port}");
        let mut full = vec!["--addr", addr.as_str()];
        full.extend_from_slice(args);
        let mut cmd = ctl_command(&full);
        let mut child = Killed(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}")),
        );
        let (tx, lines) = channel();
        let stdout = child.0.stdout.take();
        thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = Some(drain(child.0.stderr.take()));
        CtlStream {
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want` (returned), or `timeout`
    /// passes, or the command ends (None).
    pub fn until(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits up to `timeout` for the command to end by itself; its exit
    /// status (None: still running).
    pub fn ended(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_for(timeout, || self.child.0.try_wait().ok().flatten())
    }

    /// Ends the command; what it printed on stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// A report of what it printed, for failure messages.
    pub fn report(&self) -> String {
        self.seen.join("\n")
    }
}
