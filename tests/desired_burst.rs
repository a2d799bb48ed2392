//! The desired-state directory under load: 500 files, then a burst of
//! 2,000 random creates, edits and deletes (half of the writes through a
//! temporary file renamed into place), end in exactly the instances the
//! directory declares. The everyday behaviour of `desired/` is
//! `tests/desired_dir.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::Value;

const PATTERN: &str = "test-pattern";

// ---------------------------------------------------------------------------
// Many files, and a burst of random changes
// ---------------------------------------------------------------------------

const INITIAL_FILES: usize = 500;
const BURST_OPS: usize = 2000;
/// File indices the burst draws from (so creates find free names).
const NAME_POOL: usize = 600;
/// The burst never lets the directory hold more files than this.
const MAX_FILES: usize = 540;
/// How long the launcher gets to bring 500 instances up, and to settle after
/// the burst.
const SETTLE: Duration = Duration::from_secs(150);

fn burst_name(i: usize) -> String {
    format!("f{i:03}.yaml")
}

fn burst_id(i: usize) -> String {
    format!("ns:f{i:03}:{PATTERN}")
}

fn burst_doc(i: usize, generation: u64) -> String {
    desired_doc(
        PATTERN,
        &format!("f{i:03}"),
        &[("GEN", &generation.to_string())],
    )
}

/// Compares what the launcher runs with what the directory declares
/// (`expected`: file index → GEN). `Err` says what differs.
fn burst_check(env: &TestEnv, expected: &BTreeMap<usize, u64>) -> Result<(), String> {
    let list = env.list();
    let want: BTreeMap<String, u64> = expected.iter().map(|(i, g)| (burst_id(*i), *g)).collect();
    let have: BTreeMap<String, &Value> = list.iter().map(|p| (jstr(p, "processId"), p)).collect();
    let mut problems = Vec::new();
    let missing: Vec<&String> = want.keys().filter(|k| !have.contains_key(*k)).collect();
    let extra: Vec<&String> = have.keys().filter(|k| !want.contains_key(*k)).collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing (first: {:?})",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    if !extra.is_empty() {
        problems.push(format!(
            "{} extra (first: {:?})",
            extra.len(),
            &extra[..extra.len().min(5)]
        ));
    }
    let not_running: Vec<String> = list
        .iter()
        .filter(|p| !is_running(p))
        .map(|p| format!("{} {}", jstr(p, "processId"), jstr(p, "state")))
        .collect();
    if !not_running.is_empty() {
        problems.push(format!(
            "{} not RUNNING (first: {:?})",
            not_running.len(),
            &not_running[..not_running.len().min(5)]
        ));
    }
    let mut wrong_gen = Vec::new();
    for (id, p) in &have {
        if let Some(gen_wanted) = want.get(id) {
            let got = environ_var(jint(p, "pid"), "GEN");
            if got.as_deref() != Some(gen_wanted.to_string().as_str()) {
                wrong_gen.push(format!("{id}: GEN {got:?}, want {gen_wanted}"));
            }
        }
    }
    if !wrong_gen.is_empty() {
        problems.push(format!(
            "{} with a stale config (first: {:?})",
            wrong_gen.len(),
            &wrong_gen[..wrong_gen.len().min(5)]
        ));
    }
    let pids: Vec<i32> = list.iter().map(|p| jint(p, "pid") as i32).collect();
    let unique: BTreeSet<i32> = pids.iter().copied().collect();
    if unique.len() != pids.len() {
        problems.push(format!("duplicate pids among {} instances", pids.len()));
    }
    let live: BTreeSet<i32> = env.token_processes().into_iter().collect();
    if live != unique {
        let stray: Vec<&i32> = live.difference(&unique).take(5).collect();
        let gone: Vec<&i32> = unique.difference(&live).take(5).collect();
        problems.push(format!(
            "live test processes ({}) differ from the listed pids ({}): unlisted {stray:?}, listed but not live {gone:?}",
            live.len(),
            unique.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn wait_converged(env: &TestEnv, expected: &BTreeMap<usize, u64>, phase: &str) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    // Checked every 500 ms: a check lists 500 instances and scans /proc.
    let ok = wait_until_every(SETTLE, Duration::from_millis(500), || {
        match burst_check(env, expected) {
            Ok(()) => return true,
            Err(e) => last = e,
        }
        false
    });
    assert!(
        ok,
        "{phase}: the launcher did not converge on the {} declared instances within {SETTLE:?}: {last}\n--- launcher log ---\n{}",
        expected.len(),
        env.log_tail(60)
    );
    start.elapsed()
}

#[test]
fn five_hundred_files_then_a_burst_of_two_thousand_random_changes_end_in_exactly_the_declared_set()
{
    let seed: u64 = std::env::var("PRISM_BURST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    eprintln!("burst seed {seed} (set PRISM_BURST_SEED to replay another)");
    let env = TestEnv::builder()
        // 10 s between liveness probes: 500 instances probed every second
        // would cost the 2 test cores more than the burst itself.
        .pattern(PatternSpec::test_pattern().interval("10s").timeout("5s"))
        // Up to 540 files, plus instances still stopping: 1300 ports.
        .ports(1300)
        .env("RUST_LOG", "warn")
        .start();

    // 500 files at once.
    let mut expected: BTreeMap<usize, u64> = BTreeMap::new();
    let mut generation = 0u64;
    let t = Instant::now();
    for i in 0..INITIAL_FILES {
        generation += 1;
        env.write_desired(&burst_name(i), &burst_doc(i, generation));
        expected.insert(i, generation);
    }
    let took = wait_converged(&env, &expected, "after 500 files");
    eprintln!(
        "500 files: all RUNNING {:?} after the first write ({took:?} of waiting)",
        t.elapsed()
    );

    // A burst of random creates, modifies and deletes.
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut creates, mut modifies, mut deletes, mut renamed) = (0, 0, 0, 0);
    let write = |rng: &mut StdRng, i: usize, generation: u64, renamed: &mut usize| {
        let contents = burst_doc(i, generation);
        if rng.random_bool(0.5) {
            *renamed += 1;
            // Half the temporary names are dot-files, half end in `.tmp`.
            let tmp = if rng.random_bool(0.5) {
                format!(".{}.tmp", burst_name(i))
            } else {
                format!("{}.tmp", burst_name(i))
            };
            let tmp = env.desired_path(&tmp);
            fs::write(&tmp, contents).expect("write temp file");
            fs::rename(&tmp, env.desired_path(&burst_name(i))).expect("rename");
        } else {
            env.write_desired(&burst_name(i), &contents);
        }
    };
    let t = Instant::now();
    for _ in 0..BURST_OPS {
        let roll = rng.random_range(0..100u32);
        let live: Vec<usize> = expected.keys().copied().collect();
        if (roll < 25 && live.len() < MAX_FILES) || live.is_empty() {
            let free: Vec<usize> = (0..NAME_POOL)
                .filter(|i| !expected.contains_key(i))
                .collect();
            let i = free[rng.random_range(0..free.len())];
            generation += 1;
            write(&mut rng, i, generation, &mut renamed);
            expected.insert(i, generation);
            creates += 1;
        } else if roll < 50 {
            let i = live[rng.random_range(0..live.len())];
            env.remove_desired(&burst_name(i));
            expected.remove(&i);
            deletes += 1;
        } else {
            let i = live[rng.random_range(0..live.len())];
            generation += 1;
            write(&mut rng, i, generation, &mut renamed);
            expected.insert(i, generation);
            modifies += 1;
        }
    }
    eprintln!(
        "burst: {BURST_OPS} operations in {:?} ({creates} creates, {modifies} modifies, {deletes} deletes; {renamed} writes through a temporary file); {} files remain",
        t.elapsed(),
        expected.len()
    );
    let took = wait_converged(&env, &expected, "after the burst");
    eprintln!("burst: converged {took:?} after the last operation");

    // Every file is a good source declaring its one instance.
    let sources: Vec<Value> = env
        .list_sources()
        .into_iter()
        .filter(|s| jstr(s, "kind") == "desired")
        .collect();
    let bad: Vec<&Value> = sources.iter().filter(|s| !jbool(s, "ok")).collect();
    assert!(bad.is_empty(), "files refused: {bad:?}");
    let declared: BTreeMap<String, Vec<String>> = sources
        .iter()
        .map(|s| (jstr(s, "path"), source_ids(s)))
        .collect();
    let want: BTreeMap<String, Vec<String>> = expected
        .keys()
        .map(|i| (format!("desired/{}", burst_name(*i)), vec![burst_id(*i)]))
        .collect();
    assert_eq!(declared, want, "ListSources differs from the directory");
    // Still the same a moment later (nothing was left pending).
    burst_check(&env, &expected).unwrap_or_else(|e| panic!("after converging: {e}"));
}
