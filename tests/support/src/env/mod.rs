//! One test's world ([`TestEnv`]): a temp dir with `patterns/`, `desired/`
//! and `state/`, a block of ports, a token, and the real launcher running
//! on them. Built by [`TestEnvBuilder`].
//!
//! Owns everything a test starts: the launcher and every process that
//! carries this test's `PRISM_TEST_TOKEN` in its environment is killed (by
//! pid) when the [`TestEnv`] is dropped, even when the test panics; a
//! failing test prints the launcher's log and the instances' logs. It
//! never touches a process by name.
//!
//! The calls of a test ([`api`]) and its files ([`files`]) are in modules
//! of their own.

mod api;
mod files;

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::bins::{CONFIG_LOOKUP, HELLO_PATTERN, bin_path};
use crate::files::{read_end_lossy, tail, write_file_mode};
use crate::grpc::GrpcError;
use crate::launcher::Launcher;
use crate::manifest::{PatternSpec, with_token_env};
use crate::ports::PortBlock;
use crate::procs::{TEST_TOKEN_VAR, kill_token_processes, token_pids};

pub use api::{is_running, listed_pids, source_ids};

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
    via_grpcurl: bool,
    metrics: bool,
    unix_socket: bool,
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

    pub fn args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
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

    /// Makes every call of [`TestEnv::grpc`] (and the shorthands on it) a
    /// `grpcurl` process, as a user of the quick start types them.
    pub fn via_grpcurl(mut self) -> Self {
        self.via_grpcurl = true;
        self
    }

    /// Serves metrics on [`PortBlock::metrics_port`] (off by default, so
    /// that no test launcher takes the default port 9464).
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Serves the API on a Unix socket too (`--unix-socket`, at
    /// [`TestEnv::socket_path`]); the kit's readiness check and calls go
    /// there instead of the TCP port (which may then serve TLS).
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
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
            for name in [HELLO_PATTERN, CONFIG_LOOKUP] {
                copy_sample(&patterns_dir, name);
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
            "--metrics-port".into(),
            if self.metrics {
                ports.metrics_port().to_string()
            } else {
                "0".into()
            },
            // Tests make bursts of calls from one client; the rate limit
            // is tested on its own (tests/authz.rs sets it again: the last
            // one given counts).
            "--rate-limit".into(),
            "0".into(),
        ];
        if !self.default_port_range {
            let (a, b) = ports.instance_range();
            args.push("--port-range".into());
            args.push(format!("{a}-{b}"));
        }
        let socket = root.join(SOCKET_NAME);
        if self.unix_socket {
            args.push("--unix-socket".into());
            args.push(socket.display().to_string());
        }
        args.extend(self.extra_args);
        let mut envs = vec![
            ("RUST_LOG".to_string(), "info".to_string()),
            (TEST_TOKEN_VAR.to_string(), token.clone()),
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
        let launcher = Launcher::spawn(
            env.ports.grpc_port(),
            args,
            envs,
            log_path,
            self.fd_limit,
            self.via_grpcurl,
            if self.unix_socket {
                crate::grpc::Target::Unix(socket)
            } else {
                crate::grpc::Target::Tcp(env.ports.grpc_port())
            },
        );
        env.launcher = Some(launcher);
        env
    }
}

/// Copies the repository's sample `name` into `patterns`: its manifest
/// (with the token passed on) and its binary.
fn copy_sample(patterns: &Path, name: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../patterns")
        .join(name)
        .join("manifest.yaml");
    let dst = patterns.join(name);
    fs::create_dir_all(&dst).expect("create pattern dir");
    let sample = fs::read_to_string(&src).unwrap_or_else(|e| {
        panic!(
            "cannot read the sample manifest {} (does the repository ship it?): {e}",
            src.display()
        )
    });
    fs::write(dst.join("manifest.yaml"), with_token_env(&sample))
        .expect("write the sample manifest");
    let bin = bin_path(name);
    fs::copy(&bin, dst.join(name))
        .unwrap_or_else(|e| panic!("cannot copy {} into {}: {e}", bin.display(), dst.display()));
}

/// The file name of the launcher's Unix socket in the test's temp dir.
const SOCKET_NAME: &str = "api.sock";

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
            ports: 100,
            files: Vec::new(),
            fd_limit: None,
            via_grpcurl: false,
            metrics: false,
            unix_socket: false,
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

    /// The launcher's Unix socket (with [`TestEnvBuilder::unix_socket`]).
    pub fn socket_path(&self) -> PathBuf {
        self.root.join(SOCKET_NAME)
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// grpcurl run as `uid`:`gid` (no supplementary groups) through
    /// `setpriv`: the temp dir becomes traversable (0711, not readable) so
    /// that the user reaches the socket, and grpcurl is copied into it
    /// where that user may run it.
    pub fn grpcurl_as(&self, uid: u32, gid: u32) -> crate::Grpcurl {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o711))
            .expect("chmod the temp dir");
        let copy = self.root.join("grpcurl");
        if !copy.exists() {
            fs::copy(crate::grpcurl(), &copy).expect("copy grpcurl");
            fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod grpcurl");
        }
        crate::Grpcurl::as_user(copy, uid, gid)
    }

    /// Calls `method` with the grpcurl-JSON `request`: the reply as
    /// `grpcurl -emit-defaults` prints it (JSON names, enums by name,
    /// 64-bit integers as strings), errors by grpcurl's code names.
    pub fn grpc(&self, method: &str, request: Value) -> Result<Value, GrpcError> {
        self.launcher_ref().grpc(method, request)
    }

    /// The launcher's own log (stdout and stderr, across restarts).
    pub fn read_log(&self) -> String {
        self.launcher_ref().log()
    }

    /// The tail of the launcher's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.read_log(), lines)
    }

    /// The launcher's pid (None once stopped).
    pub fn launcher_pid(&self) -> Option<i32> {
        self.launcher.as_ref().and_then(Launcher::pid)
    }

    /// Live processes carrying this test's token, the launcher excluded.
    pub fn token_processes(&self) -> Vec<i32> {
        let launcher = self.launcher_pid();
        token_pids(&self.token)
            .into_iter()
            .filter(|p| Some(*p) != launcher)
            .collect()
    }

    /// Diagnostics printed when a test fails.
    fn dump(&self) {
        eprintln!(
            "===== prism-launcher log (tail), {} =====",
            self.root.display()
        );
        if let Some(l) = &self.launcher {
            eprintln!("{}", tail(&read_end_lossy(l.log_path(), 1 << 20), 120));
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
