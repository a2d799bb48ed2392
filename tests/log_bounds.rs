//! Instance logs and the log echo stay bounded whatever a pattern writes:
//! a pattern writing stdout flat out gets its log rotated at the cap and
//! keeps it and its `.1` about the cap, an endless line neither grows the
//! launcher's memory nor reaches its log whole, and the launcher goes on
//! supervising (and echoing) the other instances.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const PATTERN: &str = "test-pattern";
const FLOOD_ID: &str = "ns:flood:test-pattern";
const BYSTANDER_ID: &str = "ns:bystander:test-pattern";

/// `--log-max-bytes` by default.
const CAP: u64 = 16 << 20;
/// How far past the cap rotations typically happen (their median): a few
/// hundred KB on a quiet machine, up to about 10 MB measured with both
/// cores busy with other builds and tests. A rotation that waited for a
/// timer or for the echo (the old code) was gigabytes late.
const TYPICAL_SLACK: u64 = CAP;
/// The most the live log may ever hold: past the cap, what a writer flat
/// out writes while the launcher waits for the CPU or the disk on a loaded
/// machine (at worst about 50 MB here; without rotation at the cap the
/// log reached gigabytes).
const CEILING: u64 = 8 * CAP;
/// How much more than the cap a rotation may keep in `.1`.
const OLD_SLACK: u64 = CAP / 4;
/// How much the launcher's resident memory may grow during a flood (about
/// 1 MiB here; with an unbounded line buffer, 20 to 40 MB within 15 s).
const RSS_GROWTH: u64 = 20 << 20;
/// How long a flood may take to finish (it runs for a few seconds).
const FLOOD_WAIT: Duration = Duration::from_secs(120);

fn len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

fn rotated(live: &Path) -> PathBuf {
    let mut p = live.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The resident memory of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read the status of pid {pid}: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib << 10)
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}:\n{status}"))
}

/// Calls `sample` every `every` until it returns true; panics after `timeout`.
fn sample_until(timeout: Duration, every: Duration, what: &str, mut sample: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !sample() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(every);
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Starts the bystander, then the flooding instance (which writes the
/// number of bytes it wrote to the returned file once done); returns the
/// bystander's pid and that file.
fn start_flood(env: &TestEnv, kind: &str, millis: &str) -> (i64, PathBuf) {
    let bystander = env.launch_running(PATTERN, "bystander", &[]);
    let done = env.path("flood-done");
    let done_arg = done.display().to_string();
    env.launch_running(
        PATTERN,
        "flood",
        &[
            ("TEST_FLOOD", kind),
            ("TEST_FLOOD_MS", millis),
            ("TEST_FLOOD_DONE_FILE", &done_arg),
        ],
    );
    (jint(&bystander, "pid"), done)
}

/// After a flood: the launcher is healthy, the bystander kept its pid, a
/// bystander killed with SIGKILL is restarted, and what the new one prints
/// is echoed.
fn assert_still_supervising(env: &TestEnv, bystander_pid: i64) {
    let h = env.grpc("Health", serde_json::json!({})).expect("Health");
    assert!(
        jbool(&h, "healthy"),
        "launcher not healthy after the flood: {h}"
    );
    let entry = env.wait_running(BYSTANDER_ID);
    assert_eq!(
        jint(&entry, "pid"),
        bystander_pid,
        "the bystander was restarted during the flood: {entry}"
    );
    signal(bystander_pid, Signal::SIGKILL);
    let new_pid = jint(&env.wait_restarted(BYSTANDER_ID, bystander_pid), "pid");
    let echoed = format!("[{BYSTANDER_ID}] test-pattern starting pid={new_pid} ");
    assert!(
        wait_until(WAIT, || env.read_log().contains(&echoed)),
        "the restarted bystander's output is not echoed ({echoed:?}):\n{}",
        env.log_tail(30)
    );
}

/// The sizes at which the launcher rotated `process_id`'s log, from its
/// debug log.
fn rotations(log: &str, process_id: &str) -> Vec<u64> {
    let prefix = format!("{process_id}: log rotated at ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_pattern_writing_lines_flat_out_keeps_its_log_about_the_cap() {
    let env = TestEnv::builder()
        .env(
            "RUST_LOG",
            "info,prism_launcher::runtime::logs::rotation=debug",
        )
        .start();
    let (bystander_pid, done) = start_flood(&env, "newline", "5000");
    let live = env.instance_log_path(FLOOD_ID);
    let old = rotated(&live);

    let (mut max_live, mut max_old, mut samples) = (0, 0, 0u64);
    let mut check = |when: &str| {
        let (l, o) = (len(&live), len(&old));
        max_live = max_live.max(l);
        max_old = max_old.max(o);
        samples += 1;
        assert!(
            l <= CEILING,
            "{when}: the live log has {l} bytes, more than {CEILING} (sample {samples})"
        );
        assert!(
            o <= CAP + OLD_SLACK,
            "{when}: {} has {o} bytes, more than the cap {CAP} + {OLD_SLACK} (sample {samples})",
            old.display()
        );
    };
    sample_until(
        FLOOD_WAIT,
        Duration::from_millis(2),
        "the end of the flood",
        || {
            check("while flooding");
            done.exists()
        },
    );
    for _ in 0..20 {
        check("after the flood");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = env.read_log();
    let mut ends = rotations(&log, FLOOD_ID);
    ends.sort_unstable();
    eprintln!(
        "{samples} samples: live log at most {max_live} bytes, .1 at most {max_old}; \
         rotated {} times, at (min, median, max) {:?} bytes",
        ends.len(),
        (ends.first(), ends.get(ends.len() / 2), ends.last())
    );
    assert!(ends.len() >= 3, "rotated only at {ends:?}");
    assert!(ends[0] >= CAP, "rotated before the cap: {ends:?}");
    let median = ends[ends.len() / 2];
    assert!(
        median <= CAP + TYPICAL_SLACK,
        "rotations typically at {median} bytes, more than {CAP} + {TYPICAL_SLACK}: {ends:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(FLOOD_ID) && l.contains("bytes of output not echoed")),
        "the launcher's log does not say how much was not echoed:\n{}",
        env.log_tail(30)
    );
    assert_eq!(mode(&live), 0o600, "mode of {}", live.display());
    assert_eq!(mode(&old), 0o600, "mode of {}", old.display());
    assert_still_supervising(&env, bystander_pid);
}

#[test]
fn an_endless_line_is_cut_and_leaves_the_launchers_memory_bounded() {
    let env = TestEnv::start();
    let launcher = env.launcher_pid().expect("launcher pid");
    let baseline = rss(launcher);
    let (bystander_pid, done) = start_flood(&env, "nonewline", "15000");

    let mut max_rss = 0;
    let mut check = |when: &str| {
        let now = rss(launcher);
        max_rss = max_rss.max(now);
        assert!(
            now <= baseline + RSS_GROWTH,
            "{when}: launcher RSS {now} bytes, baseline {baseline} + {RSS_GROWTH} exceeded"
        );
    };
    sample_until(
        FLOOD_WAIT,
        Duration::from_millis(100),
        "the end of the flood",
        || {
            check("while flooding");
            done.exists()
        },
    );
    // Memory given back, or never taken: samples once the flood is over.
    for _ in 0..30 {
        check("after the flood");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("launcher RSS: baseline {baseline} bytes, at most {max_rss}");
    let log = env.read_log();
    let cut = log
        .lines()
        .find(|l| l.contains(&format!("[{FLOOD_ID}] xxxx")))
        .unwrap_or_else(|| panic!("the long line was not echoed:\n{}", env.log_tail(30)));
    assert!(
        cut.ends_with("xxxx [line cut at 16384 bytes]"),
        "the long line was echoed without the cut marker: {}",
        &cut[cut.len().saturating_sub(200)..]
    );
    assert!(
        cut.len() < 17 << 10,
        "the echoed line has {} bytes",
        cut.len()
    );
    assert_still_supervising(&env, bystander_pid);
}
