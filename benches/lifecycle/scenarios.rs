//! The scenarios of `cargo bench --bench lifecycle`, shared with
//! `tests/bench_smoke.rs` (which runs every one of them at a tiny size so
//! that they cannot rot) and with `benches/planner.rs` (the planner inputs).
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
//!    LaunchPattern calls must all answer RUNNING and healthy too.
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

#![allow(dead_code)] // each includer uses a part of this module

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use prism_launcher::proto::{
    GetProcessStatusRequest, HealthRequest, HealthResponse, IsolationLevel, LaunchRequest,
    LaunchResponse, ListPatternsRequest, PatternInfo, ProcessState,
};
use tonic::transport::Channel;

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
// Figures and the report
// ---------------------------------------------------------------------------

/// Unit of a figure's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Calls per second.
    PerSec,
    /// Percent of one core.
    Percent,
    /// Megabytes (10^6 bytes).
    Mb,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.3} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::PerSec => format!("{v:.0}/s"),
            Unit::Percent => format!("{v:.2} %"),
            Unit::Mb => format!("{v:.1} MB"),
        }
    }
}

/// What a figure's median must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// At most this value.
    AtMost(f64),
    /// At least this value.
    AtLeast(f64),
    /// At most this many times the matching raw figure.
    RawRatioAtMost(f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable key (`cold.file.200`, `kill.healthy`, ...).
    pub key: String,
    /// What it is, for the table.
    pub label: String,
    /// Unit of the samples.
    pub unit: Unit,
    /// The samples.
    pub samples: Vec<f64>,
    /// Key of the matching raw figure.
    pub raw: Option<String>,
    /// Target, and how it reads.
    pub target: Option<(Target, String)>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Median (nearest rank); `None` without samples.
    pub fn median(&self) -> Option<f64> {
        percentile(&self.sorted(), 50.0)
    }

    /// 95th percentile (nearest rank); `None` without samples.
    pub fn p95(&self) -> Option<f64> {
        percentile(&self.sorted(), 95.0)
    }
}

/// Nearest-rank percentile of sorted `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Everything a run measured, in table order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The figures, in the order they are printed.
    pub figures: Vec<Figure>,
    /// Lines printed before the table (what ran, where).
    pub header: Vec<String>,
    /// Remarks printed after the table (launcher log findings, leftovers).
    pub notes: Vec<String>,
    /// Processes of the run found alive at the end (and killed).
    pub leftovers: Vec<i32>,
}

impl Report {
    /// Every figure a run with `p` produces, without samples.
    pub fn planned(p: &Params) -> Report {
        let mut r = Report::default();
        let mut add = |key: String, label: String, unit: Unit, raw: Option<String>| {
            r.figures.push(Figure {
                key,
                label,
                unit,
                samples: Vec::new(),
                raw,
                target: None,
            });
        };
        for &n in &p.ns {
            add(
                format!("raw.cold.{n}"),
                format!("raw: spawn {n} → all healthy"),
                Unit::Ms,
                None,
            );
        }
        for &n in &p.ns {
            add(
                format!("raw.stop.{n}"),
                format!("raw: SIGTERM {n} → all reaped"),
                Unit::Ms,
                None,
            );
        }
        add(
            "raw.kill.pid".into(),
            "raw: kill -9 → reaped, respawned".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.kill.healthy".into(),
            "raw: kill -9 → healthy again".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.spawn.spawned".into(),
            "raw: spawn → running (spawn log)".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.spawn.healthy".into(),
            "raw: spawn → healthy".into(),
            Unit::Ms,
            None,
        );
        for &n in &p.ns {
            for (how, what) in [
                ("file", "one file"),
                ("files", "files"),
                ("api", "LaunchPattern"),
            ] {
                add(
                    format!("cold.{how}.{n}"),
                    format!("cold start {n} ({what}) → all healthy"),
                    Unit::Ms,
                    Some(format!("raw.cold.{n}")),
                );
            }
        }
        add(
            "kill.pid".into(),
            "kill -9 → new pid".into(),
            Unit::Ms,
            Some("raw.kill.pid".into()),
        );
        add(
            "kill.healthy".into(),
            "kill -9 → healthy again".into(),
            Unit::Ms,
            Some("raw.kill.healthy".into()),
        );
        add(
            "rename.spawned".into(),
            "file renamed in → spawned".into(),
            Unit::Ms,
            Some("raw.spawn.spawned".into()),
        );
        add(
            "rename.healthy".into(),
            "file renamed in → healthy".into(),
            Unit::Ms,
            Some("raw.spawn.healthy".into()),
        );
        let few = 2 * p.kills;
        add(
            "launch.p50".into(),
            format!("LaunchPattern on running, p50 ({few} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch.p99".into(),
            format!("LaunchPattern on running, p99 ({few} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch.rate".into(),
            format!(
                "LaunchPattern on running, {} clients ({few} inst.)",
                p.launch_clients
            ),
            Unit::PerSec,
            None,
        );
        let big = p.max_n();
        add(
            "launch_n.p50".into(),
            format!("LaunchPattern on running, p50 ({big} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch_n.p99".into(),
            format!("LaunchPattern on running, p99 ({big} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch_n.rate".into(),
            format!(
                "LaunchPattern on running, {} clients ({big} inst.)",
                p.launch_clients
            ),
            Unit::PerSec,
            None,
        );
        let secs = p.steady.as_secs();
        add(
            "steady.cpu".into(),
            format!("steady {big} inst. {secs}s: launcher CPU (1 core)"),
            Unit::Percent,
            None,
        );
        add(
            "steady.hwm".into(),
            format!("steady {big} inst.: launcher peak RSS (VmHWM)"),
            Unit::Mb,
            None,
        );
        add(
            "steady.rss".into(),
            format!("steady {big} inst.: launcher RSS at the end"),
            Unit::Mb,
            None,
        );
        for &n in &p.ns {
            add(
                format!("stop.{n}"),
                format!("graceful stop {n} → all gone, launcher exited"),
                Unit::Ms,
                Some(format!("raw.stop.{n}")),
            );
        }
        let pn = p.planner_n;
        add(
            format!("planner.noop.{pn}"),
            format!("planner pass, {pn} inst., nothing to do"),
            Unit::Ms,
            None,
        );
        add(
            format!("planner.changed.{pn}"),
            format!("planner pass, {pn} inst., 1% changed"),
            Unit::Ms,
            None,
        );

        // The targets of issue 5 (for a 2-core machine), where the sizes match.
        let mut target = |key: &str, t: Target, text: &str| {
            if let Some(f) = r.figures.iter_mut().find(|f| f.key == key) {
                f.target = Some((t, text.to_string()));
            }
        };
        for how in ["file", "files", "api"] {
            target(
                &format!("cold.{how}.200"),
                Target::RawRatioAtMost(2.0),
                "≤ 2× raw",
            );
        }
        target("kill.healthy", Target::RawRatioAtMost(3.0), "≤ 3× raw");
        target("rename.spawned", Target::AtMost(20.0), "≤ 20 ms");
        target("launch.p99", Target::AtMost(2.0), "≤ 2 ms");
        target("launch.rate", Target::AtLeast(5000.0), "≥ 5000/s");
        if big == 1000 {
            target("steady.cpu", Target::AtMost(1.0), "≤ 1 %");
            target("steady.hwm", Target::AtMost(30.0), "≤ 30 MB");
        }
        target("stop.1000", Target::AtMost(1000.0), "≤ 1 s");
        target("planner.noop.10000", Target::AtMost(2.0), "≤ 2 ms");
        r
    }

    /// The figure with this key.
    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// Adds a sample to the figure with this key (which must be planned).
    pub fn push(&mut self, key: &str, v: f64) {
        match self.figures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.samples.push(v),
            None => panic!("figure {key} is not planned"),
        }
    }

    fn push_ms(&mut self, key: &str, d: Duration) {
        self.push(key, ms(d));
    }

    /// The median of `f` over the median of its raw figure.
    pub fn ratio(&self, f: &Figure) -> Option<f64> {
        let raw = self.get(f.raw.as_deref()?)?.median()?;
        let m = f.median()?;
        (raw > 0.0).then(|| m / raw)
    }

    /// Whether `f` meets its target (on its median); `None` without target
    /// or samples.
    pub fn verdict(&self, f: &Figure) -> Option<bool> {
        let (t, _) = f.target.as_ref()?;
        let m = f.median()?;
        Some(match *t {
            Target::AtMost(x) => m <= x,
            Target::AtLeast(x) => m >= x,
            Target::RawRatioAtMost(x) => self.ratio(f)? <= x,
        })
    }

    /// The table and the notes, as printed by the bench.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for h in &self.header {
            let _ = writeln!(out, "{h}");
        }
        let _ = writeln!(
            out,
            "{:<50} {:>4} {:>11} {:>11} {:>11} {:>7}  target",
            "figure", "n", "median", "p95", "raw median", "×raw"
        );
        let mut section = "";
        for f in &self.figures {
            let s = if f.key.starts_with("raw.") {
                "raw limit: a plain spawn loop, no launcher"
            } else if f.key.starts_with("planner.") {
                "planner alone (in process)"
            } else {
                "launcher"
            };
            if s != section {
                section = s;
                let _ = writeln!(out, "--- {s} ---");
            }
            let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| f.unit.show(v));
            let raw = f
                .raw
                .as_deref()
                .and_then(|k| self.get(k))
                .and_then(Figure::median)
                .map_or_else(String::new, |v| f.unit.show(v));
            let ratio = self
                .ratio(f)
                .map_or_else(String::new, |r| format!("{r:.2}×"));
            let (target, verdict) = match (&f.target, self.verdict(f)) {
                (Some((_, text)), Some(true)) => (text.clone(), "PASS"),
                (Some((_, text)), Some(false)) => (text.clone(), "MISS"),
                (Some((_, text)), None) => (text.clone(), "—"),
                (None, _) => (String::new(), ""),
            };
            let _ = writeln!(
                out,
                "{:<50} {:>4} {:>11} {:>11} {:>11} {:>7}  {:<10} {}",
                f.label,
                f.samples.len(),
                show(f.median()),
                show(f.p95()),
                raw,
                ratio,
                target,
                verdict
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "{n}");
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// True if `/proc/<pid>` exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    !matches!(
        rest.trim_start().chars().next(),
        Some('Z' | 'X' | 'x') | None
    )
}

/// Live processes whose environment holds `TOKEN_VAR=<token>`.
pub fn token_pids(token: &str) -> Vec<i32> {
    let needle = format!("{TOKEN_VAR}={token}");
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
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
            && pid_alive(pid)
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// SIGKILLs every live process carrying `token`, by pid, until none is
/// left (a few rounds at most); returns those found the first time.
pub fn kill_token_processes(token: &str) -> Vec<i32> {
    let first = token_pids(token);
    let mut pids = first.clone();
    for _ in 0..10 {
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(100));
        pids = token_pids(token);
    }
    first
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid)
        && raw > 1
    {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    // Fields after the command: state is field 3, utime 14, stime 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
    get(14).unwrap_or(0) + get(15).unwrap_or(0)
}

/// utime + stime of each thread of `pid`, summed by thread name.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
        *by_name.entry(name.trim().to_string()).or_default() +=
            get(14).unwrap_or(0) + get(15).unwrap_or(0);
    }
    by_name
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `GET /health` on `127.0.0.1:port` answered 200.
pub fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::with_capacity(128);
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 200")
}

// ---------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------

/// Ports held for a whole run: the launchers' gRPC port and `--port-range`
/// (launchers run one at a time), and the raw loop's health ports.
///
/// Taken as adjacent blocks of 100 ports from 20000 up, each held through
/// an exclusive lock on a file in `$TMPDIR/prism-launcher-test-ports` (the
/// scheme of `tests/common`, so that tests running at the same time never
/// take the same ports), below the kernel's ephemeral range (here
/// 32768-60999: a client socket's local port there could hold a port an
/// instance is about to bind), and each checked to be bindable.
pub struct PortPlan {
    /// gRPC port of the launchers.
    pub grpc: u16,
    /// `--port-range` of the launchers.
    pub range: (u16, u16),
    /// Health ports of raw instances.
    pub raw: Vec<u16>,
    _locks: Vec<File>,
}

const PORT_BLOCK: u16 = 100;
const PORTS_FIRST: u16 = 20000;
const PORTS_LAST: u16 = 45000;

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn ephemeral_low() -> u16 {
    fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

impl PortPlan {
    /// `launcher` ports for instances and `raw` health ports.
    pub fn allocate(launcher: usize, raw: usize) -> Result<PortPlan, String> {
        let needed = 10 + launcher + 10 + raw;
        let blocks = u16::try_from(needed.div_ceil(usize::from(PORT_BLOCK)))
            .map_err(|_| format!("{needed} ports asked for"))?;
        let lock_dir = std::env::temp_dir().join("prism-launcher-test-ports");
        fs::create_dir_all(&lock_dir)
            .map_err(|e| format!("cannot create {}: {e}", lock_dir.display()))?;
        let low_ephemeral = ephemeral_low();
        let mut last = PORTS_LAST.min(low_ephemeral.saturating_sub(1));
        if last < PORTS_FIRST + blocks * PORT_BLOCK {
            // The ephemeral range starts low: take what the tests take.
            last = PORTS_LAST;
        }
        let mut base = PORTS_FIRST;
        while u32::from(base) + u32::from(blocks * PORT_BLOCK) <= u32::from(last) + 1 {
            if let Some(plan) = Self::try_at(&lock_dir, base, blocks, launcher, raw) {
                return Ok(plan);
            }
            base += PORT_BLOCK;
        }
        Err(format!(
            "no {blocks} adjacent free blocks of {PORT_BLOCK} ports between {PORTS_FIRST} and {last}"
        ))
    }

    fn try_at(
        lock_dir: &Path,
        base: u16,
        blocks: u16,
        launcher: usize,
        raw: usize,
    ) -> Option<PortPlan> {
        let mut locks = Vec::new();
        for k in 0..blocks {
            let path = lock_dir.join(format!("{}.lock", base + k * PORT_BLOCK));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .ok()?;
            file.try_lock().ok()?;
            locks.push(file);
        }
        let end = base + blocks * PORT_BLOCK - 1;
        if (base..=end).any(|p| !bindable(p)) {
            return None;
        }
        let first = base + 10;
        let last = first + u16::try_from(launcher).ok()? - 1;
        let raw_first = last + 10;
        let raw_ports: Vec<u16> = (raw_first..=end).take(raw).collect();
        (raw_ports.len() == raw).then_some(PortPlan {
            grpc: base,
            range: (first, last),
            raw: raw_ports,
            _locks: locks,
        })
    }
}

// ---------------------------------------------------------------------------
// gRPC client
// ---------------------------------------------------------------------------

/// A blocking face on the tonic client: each call runs on the run's tokio
/// runtime, so the caller can poll with sub-millisecond sleeps.
#[derive(Clone)]
struct Client {
    rt: tokio::runtime::Handle,
    inner: PatternLauncherClient<Channel>,
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn launch_request(namespace: &str) -> LaunchRequest {
    LaunchRequest {
        pattern_name: PATTERN.to_string(),
        isolation: IsolationLevel::IsolationNamespace.into(),
        namespace: namespace.to_string(),
        ..LaunchRequest::default()
    }
}

fn process_id(namespace: &str) -> String {
    format!("ns:{namespace}:{PATTERN}")
}

fn running(p: &PatternInfo) -> bool {
    p.state == i32::from(ProcessState::StateRunning) && p.healthy
}

fn launched(r: &LaunchResponse) -> bool {
    r.state == i32::from(ProcessState::StateRunning) && r.healthy && r.pid > 0
}

impl Client {
    fn connect(rt: &tokio::runtime::Handle, port: u16) -> Result<Client, String> {
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

    fn health(&self) -> Result<HealthResponse, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.health(HealthRequest::default()))
            .map(tonic::Response::into_inner)
    }

    fn list(&self) -> Result<Vec<PatternInfo>, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.list_patterns(ListPatternsRequest::default()))
            .map(|r| r.into_inner().patterns)
    }

    fn status(&self, id: &str) -> Result<Option<PatternInfo>, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.get_process_status(GetProcessStatusRequest {
                process_id: id.to_string(),
            }))
            .map(|r| r.into_inner().process)
    }

    fn launch(&self, namespace: &str) -> Result<LaunchResponse, tonic::Status> {
        let mut c = self.inner.clone();
        self.rt
            .block_on(c.launch_pattern(launch_request(namespace)))
            .map(tonic::Response::into_inner)
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
        let left = kill_token_processes(&self.token);
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

    planner(&mut ctx);
    for _run in 0..params.runs {
        raw_restarts(&mut ctx);
        raw_spawns(&mut ctx);
        small_session(&mut ctx);
        for &n in &params.ns {
            raw_cold(&mut ctx, n);
            cold(&mut ctx, n, Declare::File, n == max_n);
            cold(&mut ctx, n, Declare::Files, false);
            cold(&mut ctx, n, Declare::Api, false);
        }
    }

    let (by_thread, secs) = std::mem::take(&mut ctx.steady_threads);
    if secs > 0.0 {
        let ticks = clock_ticks_per_sec();
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
    let left = kill_token_processes(&ctx.token);
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

// ---------------------------------------------------------------------------
// A launcher
// ---------------------------------------------------------------------------

/// One launcher in a directory of its own; stopped when dropped.
struct Session {
    label: String,
    child: Option<Child>,
    pid: u32,
    dir: PathBuf,
    desired: PathBuf,
    log: PathBuf,
    client: Client,
}

impl Session {
    fn start(ctx: &mut Ctx<'_>, label: &str) -> Session {
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
            bindable(grpc),
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
                    tail(&log, 30)
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
                    tail(&log, 30)
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

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- launcher log (tail) ---\n{}",
            self.label,
            tail(&self.log, 40)
        );
    }

    /// From `t0` until `n` instances are RUNNING and healthy (module doc).
    fn wait_all_healthy(&self, n: usize, t0: Instant) -> Duration {
        let want = i32::try_from(n).expect("n fits i32");
        loop {
            let h = self
                .client
                .health()
                .unwrap_or_else(|e| self.fail(&format!("Health failed: {e}")));
            let seen = t0.elapsed();
            if h.running_processes >= want && h.total_processes == want {
                let list = self
                    .client
                    .list()
                    .unwrap_or_else(|e| self.fail(&format!("ListPatterns failed: {e}")));
                if list.iter().filter(|p| running(p)).count() == n {
                    return seen;
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
    fn status(&self, id: &str) -> PatternInfo {
        match self.client.status(id) {
            Ok(Some(p)) => p,
            Ok(None) => self.fail(&format!("{id} not found")),
            Err(e) => self.fail(&format!("GetProcessStatus({id}) failed: {e}")),
        }
    }

    /// SIGTERM; the time until the launcher exited and every instance pid
    /// it listed is gone. The launcher must exit 0.
    fn stop(mut self) -> Duration {
        let list = self
            .client
            .list()
            .unwrap_or_else(|e| self.fail(&format!("ListPatterns failed: {e}")));
        let mut pids: Vec<i32> = list.iter().map(|p| p.pid).filter(|p| *p > 0).collect();
        let mut child = self.child.take().expect("launcher running");
        let t0 = Instant::now();
        signal(self.pid, Signal::SIGTERM);
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
            pids.retain(|p| pid_alive(*p));
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
    fn findings(&self) -> Vec<String> {
        let text = fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
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
        signal(self.pid, Signal::SIGTERM);
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
fn note_findings(ctx: &mut Ctx<'_>, s: &Session, expected: &str) {
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

// ---------------------------------------------------------------------------
// Launcher scenarios
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Declare {
    File,
    Files,
    Api,
}

impl Declare {
    fn key(self) -> &'static str {
        match self {
            Declare::File => "file",
            Declare::Files => "files",
            Declare::Api => "api",
        }
    }
}

/// Cold start of `n` instances, then (for the largest n) the steady state
/// and LaunchPattern with n instances, then the graceful stop.
fn cold(ctx: &mut Ctx<'_>, n: usize, how: Declare, steady: bool) {
    let s = Session::start(ctx, &format!("cold-{}-{n}", how.key()));
    let took = match how {
        Declare::File => {
            let tmp = s.desired.join(".all.tmp");
            let docs: Vec<String> = (0..n)
                .map(|i| desired_doc(&format!("c{i}"), None))
                .collect();
            fs::write(&tmp, docs.join("---\n")).expect("write desired file");
            let t0 = Instant::now();
            fs::rename(&tmp, s.desired.join("all.yaml")).expect("rename");
            s.wait_all_healthy(n, t0)
        }
        Declare::Files => {
            for i in 0..n {
                fs::write(
                    s.desired.join(format!(".c{i}.tmp")),
                    desired_doc(&format!("c{i}"), None),
                )
                .expect("write desired file");
            }
            let t0 = Instant::now();
            for i in 0..n {
                fs::rename(
                    s.desired.join(format!(".c{i}.tmp")),
                    s.desired.join(format!("c{i}.yaml")),
                )
                .expect("rename");
            }
            s.wait_all_healthy(n, t0)
        }
        Declare::Api => {
            let next = Arc::new(AtomicUsize::new(0));
            let errors = Arc::new(Mutex::new(Vec::<String>::new()));
            let t0 = Instant::now();
            let workers: Vec<_> = (0..ctx.params.cold_in_flight.min(n))
                .map(|_| {
                    let (next, errors) = (next.clone(), errors.clone());
                    let mut c = s.client.inner.clone();
                    ctx.rt.spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return;
                            }
                            let ns = format!("c{i}");
                            let r = c.launch_pattern(launch_request(&ns)).await;
                            let bad = match r {
                                Ok(r) if launched(r.get_ref()) => None,
                                Ok(r) => Some(format!("{ns}: {:?}", r.into_inner())),
                                Err(e) => Some(format!("{ns}: {e}")),
                            };
                            if let Some(b) = bad {
                                errors.lock().expect("errors").push(b);
                            }
                        }
                    })
                })
                .collect();
            let took = s.wait_all_healthy(n, t0);
            for w in workers {
                ctx.rt.block_on(w).expect("launch worker");
            }
            let errors = errors.lock().expect("errors");
            if !errors.is_empty() {
                s.fail(&format!(
                    "{} LaunchPattern calls did not answer RUNNING and healthy, e.g. {:?}",
                    errors.len(),
                    &errors[..errors.len().min(3)]
                ));
            }
            took
        }
    };
    ctx.report.push_ms(&format!("cold.{}.{n}", how.key()), took);
    if steady {
        steady_state(ctx, &s, n);
        let (p50, p99, rate) = launch_on_running(ctx, &s, "c0");
        ctx.report.push_ms("launch_n.p50", p50);
        ctx.report.push_ms("launch_n.p99", p99);
        ctx.report.push("launch_n.rate", rate);
    }
    note_findings(ctx, &s, "none");
    let stop = s.stop();
    ctx.report.push_ms(&format!("stop.{n}"), stop);
}

fn steady_state(ctx: &mut Ctx<'_>, s: &Session, n: usize) {
    thread::sleep(SETTLE);
    let ticks = clock_ticks_per_sec();
    let (t0, c0, threads0) = (Instant::now(), cpu_ticks(s.pid), thread_ticks(s.pid));
    thread::sleep(ctx.params.steady);
    let (took, c1, threads1) = (t0.elapsed(), cpu_ticks(s.pid), thread_ticks(s.pid));
    for (name, t1) in threads1 {
        let t0 = threads0.get(&name).copied().unwrap_or(0);
        *ctx.steady_threads.0.entry(name).or_default() += t1.saturating_sub(t0);
    }
    ctx.steady_threads.1 += took.as_secs_f64();
    let cpu = (c1.saturating_sub(c0)) as f64 / ticks / took.as_secs_f64() * 100.0;
    let mb = |kb: Option<u64>| kb.unwrap_or(0) as f64 * 1024.0 / 1e6;
    let hwm = mb(status_kb(s.pid, "VmHWM"));
    let rss = mb(status_kb(s.pid, "VmRSS"));
    let list = s
        .client
        .list()
        .unwrap_or_else(|e| s.fail(&format!("ListPatterns failed: {e}")));
    let up = list.iter().filter(|p| running(p)).count();
    if up != n {
        s.fail(&format!(
            "only {up} of {n} instances RUNNING and healthy after the steady window"
        ));
    }
    // A zero CPU reading is a real result (less than a tick in the window),
    // but a figure must be positive to be told from a missing one: count it
    // as half a tick.
    let floor = 0.5 / ticks / took.as_secs_f64() * 100.0;
    ctx.report.push("steady.cpu", cpu.max(floor));
    ctx.report.push("steady.hwm", hwm);
    ctx.report.push("steady.rss", rss);
}

/// Sequential p50/p99 and concurrent calls/s of LaunchPattern on the running
/// instance of `namespace`.
fn launch_on_running(ctx: &Ctx<'_>, s: &Session, namespace: &str) -> (Duration, Duration, f64) {
    for _ in 0..WARMUP_CALLS {
        match s.client.launch(namespace) {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern({namespace}): {other:?}")),
        }
    }
    let mut lat = Vec::with_capacity(ctx.params.launch_calls);
    for _ in 0..ctx.params.launch_calls {
        let t = Instant::now();
        let r = s.client.launch(namespace);
        lat.push(t.elapsed().as_secs_f64());
        match r {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern({namespace}): {other:?}")),
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q| Duration::from_secs_f64(percentile(&lat, q).unwrap_or(0.0));
    let (p50, p99) = (p(50.0), p(99.0));

    let clients: Vec<PatternLauncherClient<Channel>> = (0..ctx.params.launch_clients)
        .map(|_| {
            Client::connect(ctx.rt.handle(), ctx.ports.grpc)
                .unwrap_or_else(|e| s.fail(&format!("connect: {e}")))
                .inner
        })
        .collect();
    let window = ctx.params.launch_window;
    let failures = Arc::new(AtomicUsize::new(0));
    let ns = namespace.to_string();
    let (calls, took) = ctx.rt.block_on(async {
        let t0 = Instant::now();
        let deadline = t0 + window;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (ns, failures) = (ns.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut calls = 0usize;
                    while Instant::now() < deadline {
                        match c.launch_pattern(launch_request(&ns)).await {
                            Ok(r) if launched(r.get_ref()) => calls += 1,
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    calls
                })
            })
            .collect();
        let mut calls = 0;
        for t in tasks {
            calls += t.await.expect("client task");
        }
        (calls, t0.elapsed())
    });
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        s.fail(&format!(
            "{failed} concurrent LaunchPattern calls failed or were not RUNNING"
        ));
    }
    (p50, p99, calls as f64 / took.as_secs_f64())
}

/// Kills, renames and LaunchPattern with a few instances.
fn small_session(ctx: &mut Ctx<'_>) {
    let k = ctx.params.kills;
    let s = Session::start(ctx, "small");
    for i in 0..k {
        match s.client.launch(&format!("k{i}")) {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern(k{i}): {other:?}")),
        }
    }

    // kill -9 → new pid → healthy, once per instance.
    for i in 0..k {
        let id = process_id(&format!("k{i}"));
        let before = s.status(&id);
        if !running(&before) {
            s.fail(&format!("{id} is not running before its kill: {before:?}"));
        }
        let old = before.pid;
        let t0 = Instant::now();
        let _ = kill(Pid::from_raw(old), Signal::SIGKILL);
        let mut new_pid = None;
        let healthy = loop {
            let p = s.status(&id);
            let replaced = p.pid > 0 && p.pid != old;
            if replaced && new_pid.is_none() {
                new_pid = Some(t0.elapsed());
            }
            if replaced && running(&p) {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id} not healthy again {WAIT:?} after kill -9: {p:?}"
                ));
            }
            thread::sleep(STATUS_POLL);
        };
        ctx.report
            .push_ms("kill.pid", new_pid.expect("seen with the healthy one"));
        ctx.report.push_ms("kill.healthy", healthy);
    }

    // A file renamed into desired/ → spawned → healthy.
    let spawn_log = s.dir.join("spawns.log");
    for i in 0..k {
        let ns = format!("r{i}");
        let id = process_id(&ns);
        let tmp = s.desired.join(format!(".{ns}.tmp"));
        fs::write(&tmp, desired_doc(&ns, Some(&spawn_log))).expect("write desired file");
        let before = file_len(&spawn_log);
        let t0 = Instant::now();
        fs::rename(&tmp, s.desired.join(format!("{ns}.yaml"))).expect("rename");
        let spawned = loop {
            if file_len(&spawn_log) > before {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id}: no spawn seen {WAIT:?} after its file appeared"
                ));
            }
            thread::sleep(SPAWN_POLL);
        };
        let healthy = loop {
            if let Ok(Some(p)) = s.client.status(&id)
                && running(&p)
            {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id}: not healthy {WAIT:?} after its file appeared"
                ));
            }
            thread::sleep(STATUS_POLL);
        };
        ctx.report.push_ms("rename.spawned", spawned);
        ctx.report.push_ms("rename.healthy", healthy);
    }

    let (p50, p99, rate) = launch_on_running(ctx, &s, "k0");
    ctx.report.push_ms("launch.p50", p50);
    ctx.report.push_ms("launch.p99", p99);
    ctx.report.push("launch.rate", rate);
    note_findings(ctx, &s, "one WARN per kill -9");
    s.stop();
}

// ---------------------------------------------------------------------------
// The raw limit
// ---------------------------------------------------------------------------

fn raw_spawn(ctx: &Ctx<'_>, port: u16, spawn_log: Option<&Path>) -> Child {
    let mut cmd = Command::new(&ctx.bins.pattern);
    cmd.env("HEALTH_PORT", port.to_string())
        .env(TOKEN_VAR, &ctx.token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(ctx.raw_log.try_clone().expect("raw log handle"));
    if let Some(log) = spawn_log {
        cmd.env(SPAWN_LOG_VAR, log);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", ctx.bins.pattern.display()))
}

/// Polls `port` until it answers 200; panics if `child` exits first.
fn raw_wait_healthy(ctx: &Ctx<'_>, port: u16, child: &mut Child, t0: Instant) {
    while !http_ok(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "raw bench-pattern on port {port} exited ({status}):\n{}",
                tail(&ctx.root.path().join("raw.log"), 10)
            );
        }
        assert!(
            t0.elapsed() < WAIT,
            "raw bench-pattern on port {port} not healthy after {WAIT:?}"
        );
        thread::sleep(RAW_POLL);
    }
}

/// SIGTERM to each, then waits for each; must all exit 0.
fn raw_stop(children: Vec<Child>) -> Duration {
    let t0 = Instant::now();
    for c in &children {
        signal(c.id(), Signal::SIGTERM);
    }
    let mut bad: Vec<ExitStatus> = Vec::new();
    for mut c in children {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => bad.push(s),
            Err(e) => panic!("waiting for a raw child: {e}"),
        }
    }
    let took = t0.elapsed();
    assert!(
        bad.is_empty(),
        "raw children exited badly on SIGTERM: {bad:?}"
    );
    took
}

fn raw_cold(ctx: &mut Ctx<'_>, n: usize) {
    let ports: Vec<u16> = ctx.ports.raw[..n].to_vec();
    let t0 = Instant::now();
    let mut children: Vec<Child> = ports.iter().map(|p| raw_spawn(ctx, *p, None)).collect();
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        raw_wait_healthy(ctx, *port, child, t0);
    }
    let took = t0.elapsed();
    ctx.report.push_ms(&format!("raw.cold.{n}"), took);
    let stop = raw_stop(children);
    ctx.report.push_ms(&format!("raw.stop.{n}"), stop);
}

/// kill -9 → reaped → respawned → healthy, once per child.
fn raw_restarts(ctx: &mut Ctx<'_>) {
    let k = ctx.params.kills;
    let ports: Vec<u16> = ctx.ports.raw[..k].to_vec();
    let t0 = Instant::now();
    let mut children: Vec<Child> = ports.iter().map(|p| raw_spawn(ctx, *p, None)).collect();
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        raw_wait_healthy(ctx, *port, child, t0);
    }
    for i in 0..k {
        let t0 = Instant::now();
        signal(children[i].id(), Signal::SIGKILL);
        let _ = children[i].wait();
        children[i] = raw_spawn(ctx, ports[i], None);
        let respawned = t0.elapsed();
        raw_wait_healthy(ctx, ports[i], &mut children[i], t0);
        let healthy = t0.elapsed();
        ctx.report.push_ms("raw.kill.pid", respawned);
        ctx.report.push_ms("raw.kill.healthy", healthy);
    }
    raw_stop(children);
}

/// spawn → the spawn log grows → healthy, one child at a time.
fn raw_spawns(ctx: &mut Ctx<'_>) {
    let spawn_log = ctx.root.path().join("raw-spawns.log");
    let port = ctx.ports.raw[0];
    for _ in 0..ctx.params.kills {
        let before = file_len(&spawn_log);
        let t0 = Instant::now();
        let mut child = raw_spawn(ctx, port, Some(&spawn_log));
        while file_len(&spawn_log) <= before {
            assert!(t0.elapsed() < WAIT, "raw spawn log never grew");
            thread::sleep(SPAWN_POLL);
        }
        let spawned = t0.elapsed();
        raw_wait_healthy(ctx, port, &mut child, t0);
        let healthy = t0.elapsed();
        ctx.report.push_ms("raw.spawn.spawned", spawned);
        ctx.report.push_ms("raw.spawn.healthy", healthy);
        raw_stop(vec![child]);
    }
}

// ---------------------------------------------------------------------------
// The planner
// ---------------------------------------------------------------------------

fn planner(ctx: &mut Ctx<'_>) {
    let n = ctx.params.planner_n;
    for (key, changed) in [("noop", None), ("changed", Some(100))] {
        let w = planner_inputs::world(n, changed);
        let expected = changed.map_or(0, |every| n.div_ceil(every));
        for _ in 0..ctx.params.runs {
            // One untimed pass, then the timed ones.
            let p = w.plan();
            assert_eq!(p.actions.len(), expected, "planner {key}: actions");
            for _ in 0..ctx.params.planner_passes {
                let t = Instant::now();
                let p = std::hint::black_box(w.plan());
                let took = t.elapsed();
                drop(p);
                ctx.report.push_ms(&format!("planner.{key}.{n}"), took);
            }
        }
    }
}

/// Inputs of the planner built through the public API: `n` desired
/// instances, each observed RUNNING with a live process.
pub mod planner_inputs {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use prism_launcher::desired::{DesiredSet, Source};
    use prism_launcher::reconcile::observed::{Ports, ProcessInfo};
    use prism_launcher::reconcile::{Observed, ObservedInstance, Phase, Plan, PlanConfig, plan};
    use prism_launcher::sources::Catalog;
    use prism_launcher::spec::manifest::{HealthCheck, Pattern, Resources};
    use prism_launcher::spec::{InstanceKey, InstanceSpec, Isolation};

    /// Everything `plan()` reads.
    pub struct World {
        /// Desired set.
        pub desired: DesiredSet,
        /// Catalog with the one pattern.
        pub catalog: Catalog,
        /// Observed table.
        pub observed: Observed,
        /// The `now` of the passes.
        pub now: Instant,
        /// Default tunables.
        pub cfg: PlanConfig,
    }

    impl World {
        /// One planner pass.
        pub fn plan(&self) -> Plan {
            plan(
                &self.desired,
                &self.catalog,
                &self.observed,
                self.now,
                &self.cfg,
            )
        }
    }

    fn pattern() -> Pattern {
        Pattern {
            name: "bench-pattern".into(),
            version: "1.0.0".into(),
            dir: PathBuf::from("/opt/patterns/bench-pattern"),
            executable: PathBuf::from("/opt/patterns/bench-pattern/bench-pattern"),
            args: vec![],
            isolation: Isolation::Namespace,
            health: HealthCheck::default(),
            resources: Resources::default(),
            environment: BTreeMap::new(),
            config_keys: None,
            inherit_env: Vec::new(),
            exe_hash: 0x5eed,
        }
    }

    fn spec(i: usize, level: &str) -> InstanceSpec {
        let key = InstanceKey::new(
            "bench-pattern",
            Isolation::Namespace,
            &format!("t{i:05}"),
            "",
        )
        .expect("valid key");
        let mut config = BTreeMap::new();
        config.insert("LOG_LEVEL".to_string(), level.to_string());
        InstanceSpec::new(key, config, None).expect("valid spec")
    }

    /// `n` running instances, all as desired, except every `changed_every`th
    /// one whose desired config differs (so the planner stops it).
    pub fn world(n: usize, changed_every: Option<usize>) -> World {
        let catalog = Catalog::from_patterns([pattern()]);
        let p = catalog.get("bench-pattern").expect("pattern").clone();
        let now = Instant::now();
        let started = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
        let mut desired = DesiredSet::default();
        let mut observed = Observed::new();
        for i in 0..n {
            let changed = changed_every.is_some_and(|every| i % every == 0);
            let want = spec(i, if changed { "debug" } else { "info" });
            let id = want.key.process_id();
            desired.declare(Source::Api, want).expect("declare");
            // As in the launcher: a process's spec is a clone of the
            // declaration it was started from, unless the declaration
            // changed since.
            let have = if changed {
                spec(i, "info")
            } else {
                desired.get(&id).expect("declared").spec().clone()
            };
            let base = 20_000 + 2 * (i % 20_000);
            let mut o = ObservedInstance::new(
                have,
                p.clone(),
                Ports {
                    grpc: u16::try_from(base).unwrap_or(u16::MAX),
                    health: u16::try_from(base + 1).unwrap_or(u16::MAX),
                },
            );
            o.phase = Phase::Running;
            o.restart_now = false;
            o.healthy_since = Some(started);
            o.process = Some(ProcessInfo {
                pid: 100_000 + u32::try_from(i).unwrap_or(0),
                epoch: i as u64 + 1,
                started_at: started,
                start_time: 1_000 + i as u64,
            });
            observed.insert(id, o);
        }
        World {
            desired,
            catalog,
            observed,
            now,
            cfg: PlanConfig::default(),
        }
    }
}
