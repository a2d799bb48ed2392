//! How fast a desired-state file turns into a process, and into a healthy
//! instance: `cargo bench --bench desired_latency`.
//!
//! Runs the real launcher with the real `test-pattern` in a temp dir. The
//! binaries are the ones cargo builds for this bench target (the `bench`
//! profile, which inherits `release`: `target/release/prism-launcher` and
//! `target/release/test-pattern`, found through `CARGO_BIN_EXE_*`), so no
//! separate `cargo build --release` is needed.
//!
//! For each of `BENCH_FILES` files (default 100), one after another: write
//! `desired/.f<i>.tmp`, rename it to `desired/f<i>.yaml` and measure from
//! the rename
//! - to the process being spawned: the instance runs with
//!   `TEST_SPAWN_LOG=<file>` and appends its pid there first thing; a
//!   thread polls that file's size every 100 µs;
//! - to the instance being healthy: GetProcessStatus through a tonic client
//!   every 1 ms until `state == RUNNING && healthy`.
//!
//! Prints the median and p95 of both, in ms. Stops everything it started:
//! the launcher by SIGTERM (its instances go with it), then checks that no
//! process carrying its token is left (and kills any that is, by pid).
//!
//! `RUST_LOG` is passed to the launcher (default `info`, its normal level).
//! Run by `cargo test` / `cargo nextest` (no `--bench` argument) it does
//! nothing.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prism_testkit::{
    Api, PatternSpec, PortBlock, STOP_TIMEOUT, desired_doc, file_len, info_running,
    kill_token_processes, read_lossy, tail, token_pids,
};

/// The launcher and the pattern, as cargo built them for this bench.
const LAUNCHER_BIN: &str = env!("CARGO_BIN_EXE_prism-launcher");
const TEST_PATTERN_BIN: &str = env!("CARGO_BIN_EXE_test-pattern");

const DEFAULT_FILES: usize = 100;
/// Longest wait for one file's instance.
const PER_FILE: Duration = Duration::from_secs(60);
const SPAWN_POLL: Duration = Duration::from_micros(100);
const STATUS_POLL: Duration = Duration::from_millis(1);

/// The launcher, stopped (and its token's processes swept) when dropped,
/// also on a panic.
struct Launcher {
    child: Option<Child>,
    token: String,
    log: PathBuf,
}

impl Launcher {
    /// SIGTERM, then up to [`STOP_TIMEOUT`] for the exit, then SIGKILL.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                eprintln!("launcher did not exit within {STOP_TIMEOUT:?} of SIGTERM: SIGKILL");
                let _ = child.kill();
                return child.wait().ok();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.child.is_some() {
            if thread::panicking() {
                eprintln!(
                    "--- launcher log (tail) ---\n{}",
                    tail(&read_lossy(&self.log), 40)
                );
            }
            self.stop();
        }
        kill_token_processes(&self.token);
    }
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
fn percentile(v: &[Duration], p: usize) -> Duration {
    let rank = (v.len() * p).div_ceil(100).max(1);
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn report(what: &str, mut v: Vec<Duration>) {
    v.sort_unstable();
    println!(
        "{what:<20} median {:>11}  p95 {:>11}  min {:>11}  max {:>11}  (n={})",
        ms(percentile(&v, 50)),
        ms(percentile(&v, 95)),
        ms(v[0]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs this binary without arguments and
        // nextest asks it for `--list`: there is no test in here.
        if !args.iter().any(|a| a == "--list") {
            eprintln!("desired_latency: a benchmark; run `cargo bench --bench desired_latency`");
        }
        return;
    }
    let files: usize = match std::env::var("BENCH_FILES") {
        Ok(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("BENCH_FILES={v:?}: expected a positive number")),
        Err(_) => DEFAULT_FILES,
    };

    let dir = tempfile::Builder::new()
        .prefix("prism-bench-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    let (patterns, desired, state) = (
        root.join("patterns"),
        root.join("desired"),
        root.join("state"),
    );
    for d in [&patterns, &desired, &state] {
        fs::create_dir_all(d).expect("create dir");
    }
    // Two ports per instance, plus the gRPC and health ports.
    let ports = PortBlock::allocate_ports(u16::try_from(files * 2 + 20).expect("too many files"));
    let spec = PatternSpec::test_pattern()
        .executable(TEST_PATTERN_BIN)
        .interval("30s")
        .timeout("5s");
    fs::create_dir_all(patterns.join(&spec.name)).expect("create pattern dir");
    fs::write(
        patterns.join(&spec.name).join("manifest.yaml"),
        spec.to_yaml(ports.health_port()),
    )
    .expect("write manifest");

    let token = format!(
        "bench-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let log_path = root.join("launcher.log");
    let log = fs::File::create(&log_path).expect("create launcher log");
    let (first, last) = ports.instance_range();
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let child = Command::new(LAUNCHER_BIN)
        .arg("--patterns-dir")
        .arg(&patterns)
        .arg("--desired-dir")
        .arg(&desired)
        .arg("--state-dir")
        .arg(&state)
        .args(["--grpc-port", &ports.grpc_port().to_string()])
        .args(["--listen", "127.0.0.1"])
        .args(["--port-range", &format!("{first}-{last}")])
        .env("RUST_LOG", &rust_log)
        .env("PRISM_TEST_TOKEN", &token)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {LAUNCHER_BIN}: {e}"));
    let mut launcher = Launcher {
        child: Some(child),
        token: token.clone(),
        log: log_path.clone(),
    };

    let ready = Instant::now();
    let mut api = loop {
        if let Some(Ok(Some(status))) = launcher.child.as_mut().map(Child::try_wait) {
            panic!("the launcher exited at start ({status})");
        }
        match Api::try_connect(ports.grpc_port()) {
            Ok(api) => break api,
            Err(e) if ready.elapsed() > PER_FILE => panic!("launcher never served: {e}"),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    };
    // The first call also waits for the service itself (not just the port).
    api.list();

    println!(
        "desired_latency: {files} files, launcher {LAUNCHER_BIN}, pattern {TEST_PATTERN_BIN}, RUST_LOG={rust_log}"
    );

    // The spawn watcher: given (rename instant, size before), polls the
    // spawn log until it grows.
    let spawn_log = root.join("spawns.log");
    let (ask, asked) = mpsc::channel::<(Instant, u64)>();
    let (answer, answered) = mpsc::channel::<Option<Duration>>();
    let watched = spawn_log.clone();
    let watcher = thread::spawn(move || {
        for (t0, before) in asked {
            let seen = loop {
                if file_len(&watched) > before {
                    break Some(t0.elapsed());
                }
                if t0.elapsed() > PER_FILE {
                    break None;
                }
                thread::sleep(SPAWN_POLL);
            };
            if answer.send(seen).is_err() {
                return;
            }
        }
    });

    let spawn_log_s = spawn_log.display().to_string();
    let (mut to_spawn, mut to_healthy) = (Vec::new(), Vec::new());
    for i in 0..files {
        let ns = format!("f{i}");
        let id = format!("ns:{ns}:{}", spec.name);
        let tmp = desired.join(format!(".f{i}.tmp"));
        fs::write(
            &tmp,
            desired_doc(&spec.name, &ns, &[("TEST_SPAWN_LOG", spawn_log_s.as_str())]),
        )
        .expect("write temp file");
        let before = file_len(&spawn_log);
        let t0 = Instant::now();
        fs::rename(&tmp, desired.join(format!("f{i}.yaml"))).expect("rename");
        ask.send((t0, before)).expect("spawn watcher alive");

        let (healthy, pid) = loop {
            if let Some(p) = api.status(&id)
                && info_running(&p)
                && p.pid > 0
            {
                break (t0.elapsed(), p.pid);
            }
            assert!(
                t0.elapsed() < PER_FILE,
                "{id} not healthy {PER_FILE:?} after its file appeared: {:?}",
                api.status(&id)
            );
            thread::sleep(STATUS_POLL);
        };
        let spawned = answered
            .recv()
            .expect("spawn watcher alive")
            .unwrap_or_else(|| panic!("{id}: no spawn seen within {PER_FILE:?}"));
        let spawned_pid = read_lossy(&spawn_log)
            .lines()
            .last()
            .and_then(|l| l.trim().parse::<i32>().ok());
        assert_eq!(
            spawned_pid,
            Some(pid),
            "{id}: the last spawn logged is not the instance's pid"
        );
        to_spawn.push(spawned);
        to_healthy.push(healthy);
    }
    drop(ask);
    let _ = watcher.join();

    report("rename -> spawned", to_spawn);
    report("rename -> healthy", to_healthy);

    // Close our connection first: the launcher's graceful shutdown waits
    // for open client connections, and this client's runtime is idle
    // between calls, so it would never answer the server's GOAWAY.
    drop(api);
    let stopping = Instant::now();
    let status = launcher.stop().expect("launcher was running");
    let stop_took = stopping.elapsed();
    let left = token_pids(&token);
    if !left.is_empty() || !status.success() {
        kill_token_processes(&token);
        panic!(
            "after SIGTERM the launcher exited with {status} after {stop_took:?}, leaving {left:?} behind\n--- launcher log (tail) ---\n{}",
            tail(&read_lossy(&log_path), 60)
        );
    }
    println!("launcher stopped ({status}) {stop_took:?} after SIGTERM; no process left behind");
}
