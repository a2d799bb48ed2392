//! GetLogs against the real launcher: the last lines of an instance,
//! followed lines arriving within 100 ms, output from before a restart
//! still readable (and a followed call going on across it), rotation
//! keeping `--log-keep` generations within the disk bound with the tail
//! reading back through them, calls merging a pattern's instances, a
//! client that does not read, the errors, and grpcurl through reflection.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const PATTERN: &str = "test-pattern";

fn line(v: &Value) -> String {
    jstr(v, "line")
}

fn lines(v: &[Value]) -> Vec<String> {
    v.iter().map(line).collect()
}

/// The number in `test-pattern line 00000042 yyy...`.
fn numbered(l: &str) -> Option<u64> {
    l.strip_prefix("test-pattern line ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Waits until the instance's log says it printed its lines.
fn wait_printed(env: &TestEnv, id: &str, n: usize) {
    let done = format!("test-pattern printed {n} lines");
    assert!(
        wait_until(WAIT, || env.instance_log(id).contains(&done)),
        "{id} did not print its {n} lines:\n{}",
        env.log_tail(30)
    );
}

fn generation(live: &Path, n: usize) -> PathBuf {
    let mut p = live.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

#[test]
fn the_last_lines_of_an_instance_and_the_errors() {
    let env = TestEnv::start();
    let id = "ns:tail:test-pattern";
    let pid = jint(
        &env.launch_running(PATTERN, "tail", &[("TEST_PRINT_LINES", "500")]),
        "pid",
    );
    wait_printed(&env, id, 500);

    let ten = env
        .logs(json!({"process_id": id, "tail_lines": 10}))
        .expect("GetLogs");
    let mut expected: Vec<String> = (491..500)
        .map(|i| format!("test-pattern line {i:08} {}", "y".repeat(70)))
        .collect();
    expected.push("test-pattern printed 500 lines".into());
    assert_eq!(lines(&ten), expected);
    for l in &ten {
        assert_eq!(jstr(l, "processId"), id, "{l}");
        let time = jstr(l, "time");
        assert!(time.len() >= 20 && time.ends_with('Z'), "time: {l}");
    }
    let default = env.logs(json!({"process_id": id})).expect("GetLogs");
    assert_eq!(default.len(), 100, "tail_lines 0 means 100");
    assert_eq!(lines(&default[90..]), expected);
    let every = lines(
        &env.logs(json!({"process_id": id, "tail_lines": -1}))
            .expect("GetLogs"),
    );
    assert!(
        every[0].starts_with(&format!("test-pattern starting pid={pid} ")),
        "{:?}",
        &every[..3]
    );
    let numbers: Vec<u64> = every.iter().filter_map(|l| numbered(l)).collect();
    assert_eq!(numbers, (0..500).collect::<Vec<_>>());

    // Errors.
    let e = env
        .logs(json!({"process_id": "ns:nobody:test-pattern"}))
        .unwrap_err();
    assert_eq!(e.code, "NotFound", "{e}");
    assert!(e.message.contains("ns:nobody:test-pattern"), "{e}");
    let e = env.logs(json!({})).unwrap_err();
    assert_eq!(e.code, "InvalidArgument", "{e}");
    let e = env
        .logs(json!({"process_id": id, "tail_lines": -5}))
        .unwrap_err();
    assert_eq!(e.code, "InvalidArgument", "{e}");
    let e = env
        .logs(json!({"process_id": id, "pattern_name": PATTERN}))
        .unwrap_err();
    assert_eq!(e.code, "InvalidArgument", "{e}");
    let e = env.logs(json!({"namespace": "nobody"})).unwrap_err();
    assert_eq!(e.code, "NotFound", "{e}");
    assert!(e.message.contains("nobody"), "{e}");

    // Through grpcurl and reflection, as a user types it: one JSON object
    // per line, the same as the kit's.
    let out = Command::new(grpcurl())
        .args(["-plaintext", "-max-time", "60", "-d"])
        .arg(json!({"process_id": id, "tail_lines": 3}).to_string())
        .arg(format!("127.0.0.1:{}", env.ports.grpc_port()))
        .arg(format!("{SERVICE}/GetLogs"))
        .stdin(Stdio::null())
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "grpcurl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<Value> = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            panic!("grpcurl printed something else than JSON objects ({e}):\n{stdout}")
        });
    eprintln!("grpcurl GetLogs:\n{stdout}");
    let kit = env
        .logs(json!({"process_id": id, "tail_lines": 3}))
        .expect("GetLogs");
    assert_eq!(objects, kit, "grpcurl:\n{stdout}");
}

#[test]
fn a_followed_line_reaches_the_client_within_100_ms() {
    let env = TestEnv::start();
    let id = "ns:tick:test-pattern";
    env.launch_running(PATTERN, "tick", &[("TEST_TICK_MS", "50")]);
    let mut stream = env
        .follow_logs(json!({"process_id": id, "tail_lines": 1, "follow": true}))
        .expect("GetLogs");
    let tick = |v: &Value| -> Option<(u64, u128)> {
        let l = line(v);
        let rest = l.strip_prefix("test-pattern tick ")?;
        let (n, at) = rest.split_once(" at ")?;
        Some((n.parse().ok()?, at.parse().ok()?))
    };
    let (first, _) = stream.until(WAIT, "tick", |v| tick(v).is_some());
    let mut last = tick(&first).map(|(n, _)| n);
    let mut latencies = Vec::new();
    while latencies.len() < 20 {
        let v = stream.next_line(WAIT);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("a clock after 1970")
            .as_nanos();
        let Some((n, written)) = tick(&v) else {
            panic!("not a tick: {v}");
        };
        assert_eq!(Some(n), last.map(|l| l + 1), "ticks lost or repeated: {v}");
        last = Some(n);
        latencies.push(Duration::from_nanos(
            u64::try_from(now.saturating_sub(written)).unwrap_or(u64::MAX),
        ));
    }
    latencies.sort();
    let (p50, max) = (
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );
    eprintln!(
        "write to client latency over {} lines: p50 {p50:?}, max {max:?} (all: {latencies:?})",
        latencies.len()
    );
    assert!(
        max < Duration::from_secs(2),
        "a followed line took {max:?} to arrive: {latencies:?}"
    );
}

#[test]
fn output_from_before_a_restart_stays_readable_and_a_followed_call_goes_on_across_it() {
    let env = TestEnv::start();
    let id = "ns:restart:test-pattern";
    let old = jint(&env.launch_running(PATTERN, "restart", &[]), "pid");
    let started = |pid: i64| format!("test-pattern starting pid={pid} ");
    let mut stream = env
        .follow_logs(json!({"process_id": id, "tail_lines": -1, "follow": true}))
        .expect("GetLogs");
    stream.until(WAIT, "saying the first process started", |v| {
        line(v).starts_with(&started(old))
    });

    signal(old, Signal::SIGKILL);
    let new = jint(&env.wait_restarted(id, old), "pid");
    stream.until(WAIT, "saying the new process started", |v| {
        line(v).starts_with(&started(new))
    });
    let history = lines(
        &env.logs(json!({"process_id": id, "tail_lines": -1}))
            .expect("GetLogs"),
    );
    let at = |pid| history.iter().position(|l| l.starts_with(&started(pid)));
    assert!(
        matches!((at(old), at(new)), (Some(a), Some(b)) if a < b),
        "both starts, the old one first: {history:?}"
    );

    // Removed: the followed call ends, after the instance's last words.
    env.terminate(id, 5, false).expect("TerminatePattern");
    let deadline = Instant::now() + WAIT;
    let mut last = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next(left) {
            Some(LogItem::Line(v)) => last.push(line(&v)),
            Some(LogItem::End) => break,
            other => panic!("the call did not end once {id} was removed: {other:?} after {last:?}"),
        }
    }
    assert!(
        last.iter().any(|l| l.contains("received SIGTERM")),
        "the last lines of the process did not come before the end: {last:?}"
    );
}

#[test]
fn rotation_keeps_n_generations_within_the_disk_bound_and_the_tail_reads_back_through_them() {
    const CAP: u64 = 64 << 10;
    const KEEP: usize = 3;
    const LINES: usize = 20_000;
    let env = TestEnv::builder()
        .arg("--log-max-bytes")
        .arg("64Ki")
        .arg("--log-keep")
        .arg(&KEEP.to_string())
        .start();
    let id = "ns:rotate:test-pattern";
    let live = env.instance_log_path(id);
    let done = env.path("print-done");
    let done_arg = done.display().to_string();
    let n = LINES.to_string();
    env.launch_running(
        PATTERN,
        "rotate",
        &[
            ("TEST_PRINT_LINES", &n),
            ("TEST_PRINT_DONE_FILE", &done_arg),
        ],
    );

    let (mut max_total, mut max_live, mut samples) = (0, 0, 0);
    let mut sample = || {
        let sizes: Vec<u64> = (1..=KEEP + 1)
            .map(|n| file_len(generation(&live, n)))
            .collect();
        for (n, len) in sizes.iter().enumerate().take(KEEP) {
            assert!(
                *len <= CAP + CAP / 4,
                ".{} holds {len} bytes, more than 1.25 x {CAP}",
                n + 1
            );
        }
        assert!(
            !generation(&live, KEEP + 1).exists(),
            "a generation beyond --log-keep {KEEP}"
        );
        let part = file_len(format!("{}.1.part", live.display()));
        let total = file_len(&live) + sizes.iter().sum::<u64>() + part;
        max_live = max_live.max(file_len(&live));
        max_total = max_total.max(total);
        samples += 1;
    };
    assert!(
        wait_until_every(WAIT, Duration::from_millis(2), || {
            sample();
            done.exists()
        }),
        "{id} did not print its lines"
    );
    assert!(
        wait_until(WAIT, || file_len(&live) < CAP),
        "the live log was not rotated below the cap"
    );
    sample();
    // The bound: the live file (the cap, plus what a writer adds while the
    // launcher waits for the CPU) and as much again in .1.part while a copy
    // runs, and 1.25 x the cap per kept generation.
    let bound = 2 * max_live.max(CAP) + KEEP as u64 * (CAP + CAP / 4);
    eprintln!(
        "{samples} samples: the live log at most {max_live} bytes, all files at most {max_total} \
         (bound (2 + 1.25 x {KEEP}) x cap = {} with the live log at the cap, {bound} with the \
         largest live log seen)",
        (2 * CAP + KEEP as u64 * (CAP + CAP / 4))
    );
    assert!(
        max_total <= bound,
        "{max_total} bytes on disk, more than {bound}"
    );

    // What is kept, oldest first: .3, .2, .1, then the live file, read as
    // one output (a line a rotation split is one line).
    let mut kept = Vec::new();
    for n in (1..=KEEP).rev() {
        let g = generation(&live, n);
        assert!(g.exists(), "{} is missing", g.display());
        kept.extend(fs::read(&g).expect("a generation"));
    }
    kept.extend(fs::read(&live).expect("the live log"));
    let text = String::from_utf8_lossy(&kept);
    let on_disk: Vec<&str> = text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .split('\n')
        .collect();
    let numbers: Vec<u64> = on_disk.iter().filter_map(|l| numbered(l)).collect();
    assert!(
        numbers.len() + 10 >= on_disk.len() && numbers.windows(2).all(|w| w[0] < w[1]),
        "the generations are not in order: {numbers:?}"
    );

    // All that is kept, then a tail that the live file alone cannot give.
    let all = lines(
        &env.logs(json!({"process_id": id, "tail_lines": -1}))
            .expect("GetLogs"),
    );
    assert_eq!(
        all, on_disk,
        "GetLogs with tail_lines -1 is not what is kept"
    );
    let in_live = count_lines(&live);
    assert!(in_live < 1000, "{in_live} lines in the live log");
    let tail = lines(
        &env.logs(json!({"process_id": id, "tail_lines": 1000}))
            .expect("GetLogs"),
    );
    assert_eq!(tail, on_disk[on_disk.len() - 1000..]);
    eprintln!(
        "kept: {} lines, numbers {}..={} ({} lost to rotations)",
        on_disk.len(),
        numbers[0],
        numbers[numbers.len() - 1],
        numbers[numbers.len() - 1] - numbers[0] + 1 - numbers.len() as u64
    );
}

#[test]
fn a_call_merges_the_instances_of_a_pattern_or_namespace_and_follows_new_ones() {
    let env = TestEnv::start();
    for ns in ["b", "a"] {
        env.launch_running(PATTERN, ns, &[]);
    }
    let starts = |v: &[Value]| -> Vec<String> {
        v.iter()
            .filter(|l| line(l).starts_with("test-pattern starting"))
            .map(|l| jstr(l, "processId"))
            .collect()
    };
    let both = env
        .logs(json!({"pattern_name": PATTERN, "tail_lines": -1}))
        .expect("GetLogs");
    assert_eq!(starts(&both), ["ns:a:test-pattern", "ns:b:test-pattern"]);
    let one = env
        .logs(json!({"namespace": "b", "tail_lines": -1}))
        .expect("GetLogs");
    assert_eq!(starts(&one), ["ns:b:test-pattern"]);

    // An instance that comes in begins with its last lines too (here the
    // default 100, all it wrote).
    let mut stream = env
        .follow_logs(json!({"pattern_name": PATTERN, "follow": true}))
        .expect("GetLogs");
    let pid = jint(&env.launch_running(PATTERN, "c", &[]), "pid");
    let (v, _) = stream.until(WAIT, "from the new instance", |v| {
        line(v).starts_with(&format!("test-pattern starting pid={pid} "))
    });
    assert_eq!(jstr(&v, "processId"), "ns:c:test-pattern");
}

#[test]
fn a_client_that_does_not_read_is_told_what_it_missed_and_costs_a_bounded_amount() {
    let env = TestEnv::start();
    let launcher = env.launcher_pid().expect("launcher pid");
    let id = "ns:flood:test-pattern";
    let old = jint(
        &env.launch_running(PATTERN, "flood", &[("TEST_PRINT_LINES", "50000")]),
        "pid",
    );
    // Once the echo has read them all (it reads 1 MiB a second).
    let echoed = format!("[{id}] test-pattern printed 50000 lines");
    assert!(
        wait_until(WAIT, || env.read_log().contains(&echoed)),
        "the first process's lines were not all read:\n{}",
        env.log_tail(20)
    );
    let rss = || status_kb(launcher.into(), "VmRSS").expect("launcher RSS") << 10;
    let mut stream = env
        .follow_logs(json!({"process_id": id, "tail_lines": 1, "follow": true}))
        .expect("GetLogs");
    stream.next_line(WAIT);
    let baseline = rss();
    // The next process writes its 50000 lines (5 MB) to a client that does
    // not read, until the echo has read them all.
    signal(old, Signal::SIGKILL);
    let mut max_rss = baseline;
    assert!(
        wait_until(WAIT, || {
            max_rss = max_rss.max(rss());
            env.read_log().matches(&echoed).count() >= 2
        }),
        "the new process's lines were not all read:\n{}",
        env.log_tail(20)
    );
    let (marker, before) = stream.until(WAIT, "saying lines were not sent", |v| {
        line(v).starts_with("[prism-launcher: ") && line(v).contains("lines not sent")
    });
    eprintln!(
        "after {} lines: {}; launcher RSS {baseline} bytes before, at most {max_rss} while the client did not read",
        before.len(),
        line(&marker)
    );
    assert!(
        max_rss <= baseline + (32 << 20),
        "the launcher grew from {baseline} to {max_rss} bytes"
    );
    // The call goes on, and ends when the instance is removed.
    env.terminate(id, 5, false).expect("TerminatePattern");
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.next(deadline.saturating_duration_since(Instant::now())) {
            Some(LogItem::Line(_)) => {}
            Some(LogItem::End) => break,
            other => panic!("the call did not go on to its end: {other:?}"),
        }
    }
}
