//! Running under a service manager: the sd_notify messages of the real
//! binary (READY=1, STATUS=, WATCHDOG=1, STOPPING=1) on a Unix datagram
//! socket the test binds, as systemd's would be; `--log-format json`; the
//! unit file in deploy/.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prism-launcher.service");

/// The notifications received so far, one datagram each.
struct Notifications {
    socket: UnixDatagram,
    got: Vec<String>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        Notifications {
            socket,
            got: Vec::new(),
        }
    }

    fn receive(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            self.got
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits until `count` datagrams carry the line `line`.
    fn wait_line(&mut self, line: &str, count: usize) {
        let deadline = Instant::now() + WAIT;
        while self.lines(line) < count {
            assert!(
                Instant::now() < deadline,
                "{count} × {line:?} not received within {WAIT:?}: {:?}",
                self.got
            );
            self.receive();
        }
    }

    fn lines(&self, line: &str) -> usize {
        self.got
            .iter()
            .filter(|d| d.lines().any(|l| l == line))
            .count()
    }

    fn position(&self, line: &str) -> Option<usize> {
        self.got.iter().position(|d| d.lines().any(|l| l == line))
    }
}

#[test]
fn the_launcher_notifies_ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let mut n = Notifications::bind(&path);
    let mut env = TestEnv::builder()
        .env("NOTIFY_SOCKET", &path.display().to_string())
        // 2 s: the loop pings every second.
        .env("WATCHDOG_USEC", "2000000")
        .start();

    n.wait_line("READY=1", 1);
    let ready = &n.got[n.position("READY=1").expect("ready")];
    assert!(
        ready.contains("STATUS=0 instances, 0 running, 0 failed"),
        "READY=1 comes with the counts: {ready:?}"
    );
    n.wait_line("WATCHDOG=1", 2);

    env.launch_running("test-pattern", "n", &[]);
    n.wait_line("STATUS=1 instance, 1 running, 0 failed", 1);
    let watchdogs = n.lines("WATCHDOG=1");
    n.wait_line("WATCHDOG=1", watchdogs + 1);

    let status = env.launcher().stop();
    assert!(status.success(), "{status}");
    n.receive();
    assert_eq!(n.lines("READY=1"), 1, "{:?}", n.got);
    let stopping = n
        .position("STOPPING=1")
        .unwrap_or_else(|| panic!("no STOPPING=1 on SIGTERM: {:?}", n.got));
    assert!(
        stopping > n.position("READY=1").expect("ready"),
        "{:?}",
        n.got
    );
}

#[test]
fn without_a_watchdog_the_launcher_sends_no_pings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let mut n = Notifications::bind(&path);
    let mut env = TestEnv::builder()
        .env("NOTIFY_SOCKET", &path.display().to_string())
        .start();
    n.wait_line("READY=1", 1);
    env.launch_running("test-pattern", "q", &[]);
    n.wait_line("STATUS=1 instance, 1 running, 0 failed", 1);
    env.launcher().stop();
    n.receive();
    assert_eq!(n.lines("WATCHDOG=1"), 0, "{:?}", n.got);
    assert_eq!(n.lines("STOPPING=1"), 1, "{:?}", n.got);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let mut env = TestEnv::builder().arg("--log-format").arg("json").start();
    let reply = env.launch_running("test-pattern", "j", &[]);
    signal(jint(&reply, "pid"), nix::sys::signal::Signal::SIGKILL);
    env.wait_restarted("ns:j:test-pattern", jint(&reply, "pid"));
    env.launcher().stop();
    let log = env.read_log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 5, "{log}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n--- log ---\n{log}"));
        assert!(v.is_object(), "{line}");
        for key in ["timestamp", "level", "message", "target"] {
            assert!(v.get(key).is_some(), "no {key:?} in {line}");
        }
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"WARN\"")
            && l.contains("ns:j:test-pattern")
            && l.contains("signal 9")),
        "the crash is logged as a JSON line: {log}"
    );
}

/// The ExecStart command line of the unit file, continuation lines joined.
fn exec_start(unit: &str) -> Vec<String> {
    let mut cmd = String::new();
    let mut inside = false;
    for line in unit.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ExecStart=") {
            inside = true;
            cmd.push_str(rest);
        } else if inside {
            cmd.push(' ');
            cmd.push_str(line);
        }
        if inside && !line.ends_with('\\') {
            break;
        }
    }
    cmd.split_whitespace()
        .filter(|w| *w != "\\")
        .map(String::from)
        .collect()
}

#[test]
fn the_unit_file_is_a_notify_service_with_a_watchdog_whose_flags_the_launcher_takes() {
    let unit = std::fs::read_to_string(UNIT).expect("read deploy/prism-launcher.service");
    for line in ["Type=notify", "KillMode=mixed", "NotifyAccess=main"] {
        assert!(unit.lines().any(|l| l == line), "{line} missing:\n{unit}");
    }
    assert!(
        unit.lines().any(|l| l.starts_with("WatchdogSec=")),
        "{unit}"
    );
    let cmd = exec_start(&unit);
    assert_eq!(cmd[0], "/usr/local/bin/prism-launcher", "{cmd:?}");
    for flag in ["--metrics-port", "--log-format"] {
        assert!(cmd.iter().any(|w| w == flag), "{flag} not in {cmd:?}");
    }
    // clap parses every flag before it answers --help: an unknown flag or a
    // bad value fails here.
    let out = Command::new(LAUNCHER_BIN)
        .args(&cmd[1..])
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run the launcher");
    assert!(
        out.status.success(),
        "the launcher refuses the unit's flags {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // systemd's own check, where systemd-analyze exists, on a copy whose
    // ExecStart names the binary under test (verify wants it to exist).
    let Ok(analyze) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: the unit file is not verified by systemd");
        return;
    };
    assert!(analyze.status.success());
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("prism-launcher.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/prism-launcher", LAUNCHER_BIN),
    )
    .expect("write the copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
