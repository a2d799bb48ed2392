//! The scenarios of `cargo bench --bench lifecycle` (`benches/lifecycle.rs`),
//! shared with `tests/bench_smoke.rs` (which runs every one of them at a
//! tiny size so that they cannot rot) and with `benches/planner.rs` (the
//! planner inputs). This module holds the parameters and a run
//! ([`run_all`]); the scenarios are in [`cold`] (cold starts, steady state,
//! stops), [`small`] (kills, renames, LaunchPattern on running instances),
//! [`raw`] (the raw limit) and [`planner`]; a launcher of a run in
//! [`session`]; the figures in [`figures`] and the table in [`report`].
//!
//! Everything here takes the two binaries as parameters ([`Bins`]): the bench
//! passes the release builds, the smoke test the ones cargo built for it.
//!
//! # What is measured
//!
//! Each launcher runs in a temp dir of its own (`patterns/`, `desired/`,
//! state dir), with `RUST_LOG=warn`, on loopback ports this run holds (see
//! [`PortPlan`]), with one pattern, `bench-pattern` (health interval 30 s,
//! the default). Every figure is printed as median and p95 over its samples
//! (several runs, or several events per run), next to the matching figure
//! of a plain spawn loop without the launcher (the raw limit) and its target.
//!
//! 1. Cold start of N instances → all healthy, the launcher already up and
//!    idle: (a) one `desired/` file with N documents renamed in, (b) N files
//!    renamed in, (c) N LaunchPattern calls, [`Params::cold_in_flight`] in
//!    flight. "All healthy" is seen by polling `Health` every 2 ms until N
//!    instances are RUNNING, confirmed by a `ListPatterns` showing all N
//!    RUNNING and healthy (the time is that of the `Health` answer). The
//!    LaunchPattern calls must all answer RUNNING and healthy too. Each
//!    `Health` call of that poll is timed: the p99 and the longest of each
//!    cold start (all three ways) show whether the launcher keeps answering
//!    while it starts N processes.
//! 2. `kill -9` of an instance → a new pid, and → healthy again, polling
//!    GetProcessStatus every 0.5 ms; one kill per instance (a second kill of
//!    the same instance would meet the restart backoff, by design).
//! 3. A file renamed into `desired/` → the process runs (it appends its pid
//!    to a spawn log named by `BENCH_SPAWN_LOG` in the file's `config`,
//!    whose size is polled every 100 µs), and → healthy.
//! 4. LaunchPattern of an instance that is already running: p50 and p99 of
//!    sequential calls, and calls per second with concurrent clients (one
//!    HTTP/2 connection each) over a window. Measured with a few instances,
//!    and again with the largest N (informational).
//! 5. Steady state with the largest N: after all are healthy and 1 s of
//!    settling, the launcher's CPU (utime + stime from `/proc/<pid>/stat`)
//!    over the window as % of one core, its peak RSS (`VmHWM`) and its RSS
//!    at the end of the window. The bench sleeps during the window.
//! 6. Graceful stop: from SIGTERM to the launcher until it has exited and
//!    every instance pid it had is gone; measured at the end of every
//!    cold-start run.
//! 7. The planner alone: `plan()` over a desired set and observed table of
//!    [`Params::planner_n`] running instances, with nothing to do and with
//!    1 % of them changed (their config differs: a Stop each). The criterion
//!    bench `benches/planner.rs` measures the same inputs more finely.
//! 8. The raw limit: the same pattern spawned by a plain loop
//!    (`std::process::Command`, its own `HEALTH_PORT` each), then each
//!    health port polled with a raw `GET`: N → all healthy; SIGTERM to all
//!    → all reaped; `kill -9` → reaped → respawned → healthy; spawn → the
//!    spawn log grows, → healthy.
//!
//! # Cleanup
//!
//! Every process started here carries `PRISM_BENCH_TOKEN=<token>` in its
//! environment (instances inherit it from the launcher). Launchers are
//! stopped by SIGTERM (SIGKILL after a timeout), raw children by pid; at the
//! end (and when a scenario panics) `/proc` is scanned for the token and
//! whatever is left is killed by pid and reported.

mod cold;
pub mod figures;
pub mod planner;
mod raw;
pub mod report;
mod session;
mod small;
pub mod watchers;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use figures::{Figure, Target, Unit, percentile};
pub use planner::planner_inputs;
pub use report::Report;

use cold::Declare;

use crate::ports::PortBlock;
use crate::procs::{clk_tck, kill_token_processes_of};

/// The pattern's name in the generated manifest.
pub const PATTERN: &str = "bench-pattern";
/// Environment variable marking every process a run starts.
pub const TOKEN_VAR: &str = "PRISM_BENCH_TOKEN";
/// Environment variable naming the spawn log of `bench-pattern`.
pub const SPAWN_LOG_VAR: &str = "BENCH_SPAWN_LOG";

/// Poll of "all healthy" (Health, then ListPatterns).
const ALL_HEALTHY_POLL: Duration = Duration::from_millis(2);
/// Poll of GetProcessStatus.
const STATUS_POLL: Duration = Duration::from_micros(500);
/// Poll of the spawn log's size.
const SPAWN_POLL: Duration = Duration::from_micros(100);
/// Poll of a raw health port, and of exits during a stop.
const RAW_POLL: Duration = Duration::from_micros(100);
/// Poll of a stopping launcher and its instances.
const STOP_POLL: Duration = Duration::from_micros(500);
/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(120);
/// Longest wait for a launcher to answer gRPC after its start.
const READY: Duration = Duration::from_secs(60);
/// Longest wait for a launcher to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time between "all healthy" and the steady-state window.
const SETTLE: Duration = Duration::from_secs(1);
/// LaunchPattern calls made before the sequential ones are timed.
const WARMUP_CALLS: usize = 50;

// ---------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------

/// The two binaries a run drives.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `prism-launcher`.
    pub launcher: PathBuf,
    /// `bench-pattern`.
    pub pattern: PathBuf,
}

/// Sizes of a run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Instance counts of the cold starts and stops (`BENCH_N`); the largest
    /// is also the steady-state size.
    pub ns: Vec<usize>,
    /// Runs of every scenario (`BENCH_RUNS`).
    pub runs: usize,
    /// Steady-state window (`BENCH_STEADY_SECS`).
    pub steady: Duration,
    /// Kills per run (`BENCH_KILLS`); also renames per run and raw restarts.
    pub kills: usize,
    /// Sequential LaunchPattern calls per run.
    pub launch_calls: usize,
    /// Window of the concurrent LaunchPattern calls.
    pub launch_window: Duration,
    /// Concurrent LaunchPattern clients.
    pub launch_clients: usize,
    /// LaunchPattern calls in flight during an API cold start.
    pub cold_in_flight: usize,
    /// Instances of the planner's inputs.
    pub planner_n: usize,
    /// Timed planner passes per run.
    pub planner_passes: usize,
}

impl Params {
    /// The defaults, with `BENCH_N`, `BENCH_RUNS`, `BENCH_STEADY_SECS` and
    /// `BENCH_KILLS` from the environment.
    pub fn from_env() -> Result<Params, String> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a valid number")),
                Err(_) => Ok(default),
            }
        }
        let ns = match std::env::var("BENCH_N") {
            Ok(v) => v
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .ok()
                .filter(|ns| !ns.is_empty() && ns.iter().all(|n| *n > 0))
                .ok_or_else(|| format!("BENCH_N={v:?}: expected a comma list like 200,1000"))?,
            Err(_) => vec![200, 1000],
        };
        let runs: usize = var("BENCH_RUNS", 3)?;
        let steady: u64 = var("BENCH_STEADY_SECS", 30)?;
        let kills: usize = var("BENCH_KILLS", 20)?;
        if runs == 0 || steady == 0 || kills == 0 {
            return Err("BENCH_RUNS, BENCH_STEADY_SECS and BENCH_KILLS must be positive".into());
        }
        Ok(Params {
            ns,
            runs,
            steady: Duration::from_secs(steady),
            kills,
            launch_calls: 2000,
            launch_window: Duration::from_secs(3),
            launch_clients: 16,
            cold_in_flight: 32,
            planner_n: 10_000,
            planner_passes: 50,
        })
    }

    /// The tiny run of the smoke test.
    pub fn smoke() -> Params {
        Params {
            ns: vec![20],
            runs: 1,
            steady: Duration::from_secs(2),
            kills: 3,
            launch_calls: 100,
            launch_window: Duration::from_millis(500),
            launch_clients: 4,
            cold_in_flight: 8,
            planner_n: 1000,
            planner_passes: 5,
        }
    }

    fn max_n(&self) -> usize {
        self.ns.iter().copied().max().unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports held for a whole run: the launchers' gRPC port and `--port-range`
/// (launchers run one at a time), and the raw loop's health ports. One
/// [`PortBlock`] (the tests' scheme, so that tests running at the same time
/// never take the same ports), every port of it bindable when taken.
pub struct PortPlan {
    /// gRPC port of the launchers.
    pub grpc: u16,
    /// `--port-range` of the launchers.
    pub range: (u16, u16),
    /// Health ports of raw instances.
    pub raw: Vec<u16>,
    _block: PortBlock,
}

impl PortPlan {
    /// `launcher` ports for instances and `raw` health ports.
    pub fn allocate(launcher: usize, raw: usize) -> Result<PortPlan, String> {
        let block = PortBlock::allocate_bindable(10 + launcher + 10 + raw)?;
        let base = usize::from(block.base);
        let first = base + 10;
        let last = first + launcher - 1;
        let raw: Vec<u16> = (last + 10..)
            .take(raw)
            .map(|p| u16::try_from(p).map_err(|_| format!("port {p} out of range")))
            .collect::<Result<_, _>>()?;
        let port = |p: usize| u16::try_from(p).map_err(|_| format!("port {p} out of range"));
        Ok(PortPlan {
            grpc: block.base,
            range: (port(first)?, port(last)?),
            raw,
            _block: block,
        })
    }
}

// ---------------------------------------------------------------------------
// A run
// ---------------------------------------------------------------------------

/// What a run holds: its runtime, temp dir, ports and token.
struct Ctx<'a> {
    bins: &'a Bins,
    params: &'a Params,
    rt: tokio::runtime::Runtime,
    root: tempfile::TempDir,
    patterns: PathBuf,
    ports: PortPlan,
    token: String,
    report: Report,
    sessions: usize,
    raw_log: File,
    /// CPU ticks of the launcher's threads (by name) over the steady
    /// windows, and the windows' total length.
    steady_threads: (BTreeMap<String, u64>, f64),
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        // Reached with processes left only when a scenario panicked.
        let left = kill_token_processes_of(TOKEN_VAR, &self.token);
        if !left.is_empty() {
            eprintln!("lifecycle bench: killed leftover processes {left:?}");
        }
    }
}

/// Runs every scenario and returns the report (see the module doc).
/// Panics, after stopping what it started, when a scenario fails.
pub fn run_all(bins: &Bins, params: &Params) -> Report {
    for b in [&bins.launcher, &bins.pattern] {
        assert!(b.is_file(), "{} is not a file", b.display());
    }
    let max_n = params.max_n();
    let launcher_ports = (2 * max_n).max(4 * params.kills + 2) + 20;
    let raw_ports = max_n.max(params.kills) + 10;
    let ports = PortPlan::allocate(launcher_ports, raw_ports).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let root = tempfile::Builder::new()
        .prefix("prism-lifecycle-bench-")
        .tempdir()
        .expect("temp dir");
    let patterns = root.path().join("patterns");
    write_manifest(&patterns, &bins.pattern);
    let raw_log = File::create(root.path().join("raw.log")).expect("raw log");
    let token = format!(
        "lifecycle-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let mut report = Report::planned(params);
    report.header.push(format!(
        "lifecycle bench: N={:?} runs={} steady={}s kills={} | {} cores | gRPC :{} instances {}-{} raw {}-{}",
        params.ns,
        params.runs,
        params.steady.as_secs(),
        params.kills,
        thread::available_parallelism().map_or(0, |n| n.get()),
        ports.grpc,
        ports.range.0,
        ports.range.1,
        ports.raw.first().copied().unwrap_or(0),
        ports.raw.last().copied().unwrap_or(0),
    ));
    report.header.push(format!(
        "launcher {} | pattern {}",
        bins.launcher.display(),
        bins.pattern.display()
    ));
    let mut ctx = Ctx {
        bins,
        params,
        rt,
        root,
        patterns,
        ports,
        token,
        report,
        sessions: 0,
        raw_log,
        steady_threads: (BTreeMap::new(), 0.0),
    };

    planner::planner(&mut ctx);
    for _run in 0..params.runs {
        raw::raw_restarts(&mut ctx);
        raw::raw_spawns(&mut ctx);
        small::small_session(&mut ctx);
        for &n in &params.ns {
            raw::raw_cold(&mut ctx, n);
            cold::cold(&mut ctx, n, Declare::File, n == max_n);
            cold::cold(&mut ctx, n, Declare::Files, false);
            cold::cold(&mut ctx, n, Declare::Api, false);
        }
    }

    let (by_thread, secs) = std::mem::take(&mut ctx.steady_threads);
    if secs > 0.0 {
        let ticks = clk_tck();
        let mut by_thread: Vec<(String, u64)> = by_thread.into_iter().collect();
        by_thread.sort_by_key(|(name, t)| (std::cmp::Reverse(*t), name.clone()));
        let parts: Vec<String> = by_thread
            .iter()
            .map(|(name, t)| format!("{name} {:.2} %", *t as f64 / ticks / secs * 100.0))
            .collect();
        ctx.report.notes.push(format!(
            "steady-state CPU of the launcher by thread (% of one core, all windows): {}",
            parts.join(", ")
        ));
    }
    let left = kill_token_processes_of(TOKEN_VAR, &ctx.token);
    if !left.is_empty() {
        ctx.report.notes.push(format!(
            "LEFTOVER processes of this run were still alive at the end (killed): {left:?}"
        ));
    }
    ctx.report.leftovers = left;
    std::mem::take(&mut ctx.report)
}

fn write_manifest(patterns: &Path, exe: &Path) {
    let dir = patterns.join(PATTERN);
    fs::create_dir_all(&dir).expect("pattern dir");
    fs::write(
        dir.join("manifest.yaml"),
        format!(
            "name: {PATTERN}\nversion: 1.0.0\nexecutable: {}\nisolation_level: namespace\ninherit_env: [{TOKEN_VAR}]\nhealthcheck:\n  path: /health\n  interval: 30s\n  timeout: 5s\n  failure_threshold: 3\n",
            yaml_str(&exe.display().to_string())
        ),
    )
    .expect("manifest");
}

fn yaml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn desired_doc(namespace: &str, spawn_log: Option<&Path>) -> String {
    let mut doc = format!("pattern: {PATTERN}\nnamespace: {namespace}\n");
    if let Some(log) = spawn_log {
        let _ = writeln!(
            doc,
            "config: {{{SPAWN_LOG_VAR}: {}}}",
            yaml_str(&log.display().to_string())
        );
    }
    doc
}
