//! The launcher's lifecycle against a plain spawn loop:
//! `cargo bench --bench lifecycle` (issue 5).
//!
//! One command: it first runs
//! `cargo build --release --bin prism-launcher --bin bench-pattern` itself
//! (a no-op when they are fresh; cargo has released its build lock by the time
//! a bench runs) and drives the binaries that build reports, so the figures
//! are always those of the current source in the release profile. Then it
//! runs every scenario of the test kit's `lifecycle` module
//! (`tests/support/src/lifecycle/`; see its doc for what is measured and
//! how) and prints one table: each figure's median and
//! p95, the matching raw figure (the same pattern spawned by a plain loop,
//! no launcher), the ratio, and the target of issue 5 with PASS/MISS (on the
//! median). The criterion bench `planner` measures the planner alone more
//! finely: `cargo bench --bench planner`.
//!
//! Knobs (environment):
//! - `BENCH_N`: instance counts, comma list (default `200,1000`); the largest
//!   is also the steady-state size;
//! - `BENCH_RUNS`: runs of every scenario (default 3);
//! - `BENCH_STEADY_SECS`: steady-state window (default 30);
//! - `BENCH_KILLS`: kills (and renames, raw restarts) per run (default 20);
//! - `BENCH_LAUNCHER` and `BENCH_PATTERN` (both): run these executables
//!   instead of building the current source (to compare two builds in one
//!   sitting).
//!
//! With the defaults it takes about five minutes on a 2-core machine; do
//! not run it while something else compiles. It starts everything on
//! loopback, in a temp dir, and stops everything it started (exit status 1
//! if it had to kill leftovers). `tests/bench_smoke.rs` runs every scenario
//! at a tiny size.
//!
//! Run by `cargo test --all-targets` or nextest (no `--bench` argument) it
//! does nothing.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use prism_testkit::lifecycle::{self as scenarios, Bins, Params};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        if !args.iter().any(|a| a == "--list") {
            eprintln!("lifecycle: a benchmark; run `cargo bench --bench lifecycle`");
        }
        return;
    }
    let params = Params::from_env().unwrap_or_else(|e| {
        eprintln!("lifecycle: {e}");
        std::process::exit(2);
    });
    let bins = match (
        std::env::var_os("BENCH_LAUNCHER"),
        std::env::var_os("BENCH_PATTERN"),
    ) {
        (Some(l), Some(p)) => Bins {
            launcher: l.into(),
            pattern: p.into(),
        },
        _ => build_release(),
    };
    let report = scenarios::run_all(&bins, &params);
    print!("{}", report.render());
    if !report.leftovers.is_empty() {
        std::process::exit(1);
    }
}

/// `cargo build --release --bin prism-launcher --bin bench-pattern`; the
/// executables it reports.
fn build_release() -> Bins {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    eprintln!("lifecycle: cargo build --release --bin prism-launcher --bin bench-pattern");
    let mut child = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "prism-launcher",
            "--bin",
            "bench-pattern",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    let (mut launcher, mut pattern) = (None, None);
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(name), Some(exe)) = (
            msg.pointer("/target/name").and_then(|v| v.as_str()),
            msg.get("executable").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        match name {
            "prism-launcher" => launcher = Some(PathBuf::from(exe)),
            "bench-pattern" => pattern = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    let status = child.wait().expect("waiting for cargo build");
    assert!(status.success(), "cargo build --release failed ({status})");
    Bins {
        launcher: launcher.expect("cargo build reported no prism-launcher executable"),
        pattern: pattern.expect("cargo build reported no bench-pattern executable"),
    }
}
