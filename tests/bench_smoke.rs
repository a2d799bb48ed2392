//! Runs every scenario of `cargo bench --bench lifecycle` at a tiny size
//! (N=20, one run, a 2 s steady window, 3 kills), with the binaries cargo
//! built for the tests, so that the bench cannot rot. Checks that every
//! figure was measured and is positive, and that nothing was left running;
//! not the targets (those are for release builds at full size).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prism_testkit::lifecycle::{self as scenarios, Bins, Params, run_all};

#[test]
fn every_lifecycle_scenario_runs_at_a_tiny_size() {
    let bins = Bins {
        launcher: PathBuf::from(env!("CARGO_BIN_EXE_prism-launcher")),
        pattern: PathBuf::from(env!("CARGO_BIN_EXE_bench-pattern")),
    };
    let params = Params::smoke();
    let t0 = Instant::now();
    let report = run_all(&bins, &params);
    let took = t0.elapsed();
    let table = report.render();
    println!("{table}");

    let planned = scenarios::Report::planned(&params);
    assert_eq!(report.figures.len(), planned.figures.len());
    for f in &report.figures {
        assert!(
            !f.samples.is_empty(),
            "{} ({}) was not measured",
            f.label,
            f.key
        );
        assert!(
            f.samples.iter().all(|v| v.is_finite() && *v > 0.0),
            "{} ({}) has a sample that is not positive: {:?}",
            f.label,
            f.key,
            f.samples
        );
        assert!(table.contains(&f.label), "{} missing from the table", f.key);
    }
    for key in [
        "cold.file.20",
        "cold.files.20",
        "cold.api.20",
        "raw.cold.20",
        "stop.20",
        "kill.healthy",
        "rename.spawned",
        "launch.p99",
        "launch.rate",
        "steady.cpu",
        "steady.hwm",
        "planner.noop.1000",
    ] {
        assert!(report.get(key).is_some(), "figure {key} missing");
    }
    assert_eq!(
        report.get("kill.healthy").map(|f| f.samples.len()),
        Some(params.kills)
    );
    assert!(
        report.leftovers.is_empty(),
        "processes left running: {:?}",
        report.leftovers
    );
    assert!(
        took < Duration::from_secs(120),
        "the smoke run took {took:?}"
    );
}
