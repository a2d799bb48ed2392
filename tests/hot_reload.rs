//! Hot reload of `--patterns-dir`: new patterns become launchable, changed
//! manifests and rebuilt executables restart their instances (one at a time
//! unless `--no-rolling-restart`), broken manifests are reported and change
//! nothing, removed patterns keep their instances. All without restarting
//! the launcher.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The contract: a new pattern is launchable within 2 s.
const PICKUP: Duration = Duration::from_secs(2);
/// Interval between two LaunchPattern calls that answered NotFound.
const LAUNCH_POLL: Duration = Duration::from_millis(10);
/// Scheduling slack on top of [`PICKUP`], the poll interval and a call's
/// own time.
const SLACK: Duration = Duration::from_millis(100);

/// Copies the files of `src` into a new directory `dst` (like `cp -r`).
fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir(dst).unwrap_or_else(|e| panic!("mkdir {}: {e}", dst.display()));
    for entry in fs::read_dir(src).expect("read staging dir").flatten() {
        let to = dst.join(entry.file_name());
        fs::copy(entry.path(), &to)
            .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", entry.path().display(), to.display()));
    }
}

/// A shell wrapper running the test-pattern; `build` only changes a comment.
fn wrapper_script(build: u32) -> String {
    format!("#!/bin/sh\n# build {build}\nexec '{TEST_PATTERN_BIN}' \"$@\"\n")
}

/// Polls LaunchPattern (`pattern` in `namespace`) every 10 ms while it
/// answers NotFound. Returns the first other answer, when that call started
/// (measured from `since`), and the longest NotFound call (plus the poll
/// interval after it).
fn launch_once_found(
    env: &TestEnv,
    pattern: &str,
    namespace: &str,
    since: Instant,
) -> (Result<Value, GrpcError>, Duration, Duration) {
    let mut slowest_not_found = Duration::ZERO;
    loop {
        let started = since.elapsed();
        let call = Instant::now();
        let reply = env.launch_ns(pattern, namespace, &[]);
        match reply {
            Err(e) if e.code == "NotFound" => {
                assert!(
                    since.elapsed() < WAIT,
                    "{pattern} still NotFound after {WAIT:?}: {e}\n--- launcher log ---\n{}",
                    env.log_tail(40)
                );
                // Poll interval: tonic answers in a millisecond, and a busy
                // loop would take the CPU the launcher needs to notice.
                std::thread::sleep(LAUNCH_POLL);
                slowest_not_found = slowest_not_found.max(call.elapsed());
            }
            other => return (other, started, slowest_not_found),
        }
    }
}

#[test]
fn a_pattern_directory_copied_in_is_launchable_within_two_seconds_without_a_restart() {
    let mut env = TestEnv::start();
    let launcher_pid = env.launcher_pid().expect("launcher pid");

    // Prepared outside, then copied in: directory, manifest, executable.
    let staging = env.path("staging/late-pattern");
    fs::create_dir_all(&staging).expect("mkdir staging");
    let spec = PatternSpec::named("late-pattern").executable("./late-pattern");
    fs::write(
        staging.join("manifest.yaml"),
        spec.to_yaml(env.ports.health_port()),
    )
    .expect("write manifest");
    fs::copy(TEST_PATTERN_BIN, staging.join("late-pattern")).expect("copy binary");
    let not_yet = env.launch_ns("late-pattern", "late", &[]);
    assert_eq!(
        not_yet.as_ref().map_err(|e| e.code.as_str()).err(),
        Some("NotFound"),
        "{not_yet:?}"
    );

    copy_dir(&staging, &env.patterns_dir.join("late-pattern"));
    let copied = Instant::now();
    let (reply, found_after, slowest) = launch_once_found(&env, "late-pattern", "late", copied);
    let reply = reply.unwrap_or_else(|e| {
        panic!(
            "LaunchPattern of the new pattern failed: {e}\n--- launcher log ---\n{}",
            env.log_tail(40)
        )
    });
    eprintln!(
        "new pattern launchable {found_after:?} after the copy (slowest NotFound call {slowest:?})"
    );
    assert_eq!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
    assert_eq!(jstr(&reply, "processId"), "ns:late:late-pattern", "{reply}");
    // Calls that start after the launcher knows the pattern succeed; the
    // last NotFound call started before that moment. So if the pattern was
    // known within 2 s, the first good call started at most 2 s plus one
    // NotFound call's time (and the poll interval after it) after the copy.
    let bound = PICKUP + slowest + SLACK;
    assert!(
        found_after <= bound,
        "the new pattern became launchable only {found_after:?} after the copy (bound {bound:?})"
    );

    assert_eq!(env.launcher_pid(), Some(launcher_pid));
    assert!(env.launcher().is_running(), "the launcher exited");
    let m = env
        .source("late-pattern/manifest.yaml")
        .expect("the new manifest in ListSources");
    assert!(jbool(&m, "ok"), "{m}");
    assert_eq!(jstr(&m, "patternName"), "late-pattern", "{m}");
}

#[test]
fn a_pattern_directory_filled_in_after_it_appeared_becomes_launchable() {
    let env = TestEnv::start();
    // An empty directory first; a second pattern dropped after it shows when
    // the launcher has looked at the directory.
    fs::create_dir(env.patterns_dir.join("slow")).expect("mkdir slow");
    env.write_pattern(&PatternSpec::named("marker"));
    let (reply, _, _) = launch_once_found(&env, "marker", "m", Instant::now());
    reply.expect("LaunchPattern of the marker pattern");
    assert_eq!(
        env.launch_ns("slow", "s", &[]).map_err(|e| e.code).err(),
        Some("NotFound".to_string())
    );

    // The manifest, naming an executable that is not there yet.
    env.write_pattern(&PatternSpec::named("slow").executable("./run.sh"));
    let m = wait_for(WAIT, || env.source("slow/manifest.yaml")).unwrap_or_else(|| {
        panic!(
            "the manifest never showed in ListSources: {:?}",
            env.list_sources()
        )
    });
    eprintln!("manifest without its executable: {m}");
    let early = env.launch_ns("slow", "s", &[]);
    eprintln!("LaunchPattern before the executable exists: {early:?}");
    assert!(
        early.as_ref().map(|r| jstr(r, "state")) != Ok("STATE_RUNNING".to_string()),
        "an instance runs without its executable: {early:?}"
    );

    // Now the executable.
    write_atomic_mode(
        &env.patterns_dir.join("slow/run.sh"),
        &wrapper_script(1),
        0o755,
    );
    let since = Instant::now();
    let reply = wait_for(WAIT, || {
        env.launch_ns("slow", "s2", &[])
            .ok()
            .filter(|r| jstr(r, "state") == "STATE_RUNNING")
    })
    .unwrap_or_else(|| {
        panic!(
            "never launchable once its executable appeared\n--- launcher log ---\n{}",
            env.log_tail(40)
        )
    });
    eprintln!(
        "launchable {:?} after its executable appeared",
        since.elapsed()
    );
    assert!(jbool(&reply, "healthy"), "{reply}");
}

#[test]
fn a_manifest_edit_restarts_its_instances_with_the_new_environment() {
    let spec = PatternSpec::named("reload-env").env("COLOR", "blue");
    let env = TestEnv::builder().pattern(spec.clone()).start();
    let ids = ["ns:a:reload-env", "ns:b:reload-env"];
    let old: Vec<i64> = ["a", "b"]
        .iter()
        .map(|ns| jint(&env.launch_running("reload-env", ns, &[]), "pid"))
        .collect();
    for pid in &old {
        assert_eq!(environ_var(*pid, "COLOR").as_deref(), Some("blue"));
    }

    let mut edited = spec.clone();
    edited.environment = vec![("COLOR".into(), "green".into())];
    env.write_pattern(&edited);

    for (id, old_pid) in ids.iter().zip(&old) {
        let p = env.wait_restarted(id, *old_pid);
        let pid = jint(&p, "pid");
        assert_eq!(
            environ_var(pid, "COLOR").as_deref(),
            Some("green"),
            "{id} restarted without the new environment value: {p}"
        );
        assert!(
            wait_until(WAIT, || !pid_alive(*old_pid)),
            "{id}: old pid {old_pid} still alive"
        );
    }
    let m = env
        .source("reload-env/manifest.yaml")
        .expect("manifest listed");
    assert!(jbool(&m, "ok"), "{m}");
    assert_eq!(env.token_processes().len(), 2, "{:?}", env.list());
}

#[test]
fn a_broken_manifest_is_reported_and_the_last_good_one_stays_in_force() {
    let spec = PatternSpec::named("fragile").env("MARK", "good");
    let env = TestEnv::builder().pattern(spec.clone()).start();
    let a = env.launch_running("fragile", "a", &[]);
    let a_pid = jint(&a, "pid");

    // Valid YAML, an unknown key on the last line, and a new MARK that must
    // not be used.
    let mut bad_spec = spec.clone();
    bad_spec.environment = vec![("MARK".into(), "bad".into())];
    let mut broken = bad_spec.to_yaml(env.ports.health_port());
    broken += "bogus_key: 1\n";
    let bad_line = broken.lines().count() as i64;
    write_atomic(&env.manifest_path("fragile"), &broken);

    let mut last = None;
    let s = wait_for(WAIT, || {
        last = env.source("fragile/manifest.yaml");
        last.clone()
            .filter(|s| !jbool(s, "ok") && !jstr(s, "error").is_empty())
    })
    .unwrap_or_else(|| {
        panic!(
            "the broken manifest was never reported: {last:?}\n--- launcher log ---\n{}",
            env.log_tail(40)
        )
    });
    eprintln!("reported: {s}");
    assert_eq!(jstr(&s, "kind"), "manifest", "{s}");
    assert!(jstr(&s, "error").contains("bogus_key"), "{s}");
    assert_eq!(jint(&s, "line"), bad_line, "{s}");
    assert!(
        env.read_log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("fragile/manifest.yaml")),
        "no ERROR line naming the manifest:\n{}",
        env.log_tail(40)
    );

    // The instance is untouched, and new launches use the last good manifest.
    let a_now = env.find("ns:a:fragile").expect("listed");
    assert_eq!(jint(&a_now, "pid"), a_pid, "{a_now}");
    assert!(is_running(&a_now), "{a_now}");
    let b = env.launch_running("fragile", "b", &[]);
    let b_pid = jint(&b, "pid");
    assert_eq!(
        environ_var(b_pid, "MARK").as_deref(),
        Some("good"),
        "a launch after a broken edit should use the last good manifest"
    );

    // Fixed: the new content applies.
    let mut fixed = spec.clone();
    fixed.environment = vec![("MARK".into(), "fixed".into())];
    env.write_pattern(&fixed);
    for (id, old) in [("ns:a:fragile", a_pid), ("ns:b:fragile", b_pid)] {
        let p = env.wait_restarted(id, old);
        assert_eq!(
            environ_var(jint(&p, "pid"), "MARK").as_deref(),
            Some("fixed"),
            "{p}"
        );
    }
    let s = env
        .source("fragile/manifest.yaml")
        .expect("manifest listed");
    assert!(jbool(&s, "ok"), "{s}");
}

#[test]
fn a_removed_pattern_keeps_its_instances_and_refuses_new_launches() {
    let env = TestEnv::builder()
        .pattern(PatternSpec::named("doomed"))
        .start();
    let a = env.launch_running("doomed", "a", &[]);
    let pid = jint(&a, "pid");

    fs::remove_dir_all(env.patterns_dir.join("doomed")).expect("remove pattern dir");
    // A launch of the running instance is idempotent (no side effect) until
    // the launcher has noticed the removal.
    let mut last = None;
    let gone = wait_until(WAIT, || {
        last = Some(env.launch_ns("doomed", "a", &[]));
        matches!(&last, Some(Err(e)) if e.code == "NotFound")
    });
    assert!(
        gone,
        "LaunchPattern of a removed pattern never answered NotFound: {last:?}\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    let err = env
        .launch_ns("doomed", "b", &[])
        .expect_err("a new launch of a removed pattern");
    assert_eq!(err.code, "NotFound", "{err}");
    assert!(env.find("ns:b:doomed").is_none());

    let a_now = env
        .find("ns:a:doomed")
        .expect("the running instance is kept");
    assert_eq!(jint(&a_now, "pid"), pid, "{a_now}");
    assert!(is_running(&a_now), "{a_now}");

    // It can still be stopped.
    let reply = env
        .terminate("ns:a:doomed", 5, false)
        .expect("TerminatePattern of an instance of a removed pattern");
    assert!(jbool(&reply, "success"), "{reply}");
    assert!(!pid_alive(pid), "pid {pid} survived TerminatePattern");
}

/// Three instances of a pattern run through a shell wrapper (each taking
/// 300 ms to become healthy, so a restart is visible for a while); the
/// wrapper is replaced with different content. Samples ListPatterns every
/// ~20 ms (tonic: grpcurl alone takes longer than that) until all three run
/// with new pids. Returns (most instances down in one sample, ids seen down
/// at least once, samples taken).
fn rebuild_and_watch(env: &TestEnv) -> (usize, BTreeSet<String>, usize) {
    let namespaces = ["r1", "r2", "r3"];
    let ids: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("ns:{ns}:rebuilt"))
        .collect();
    let old: BTreeMap<String, i32> = namespaces
        .iter()
        .zip(&ids)
        .map(|(ns, id)| {
            let r = env.launch_running("rebuilt", ns, &[("TEST_HEALTH_DELAY_MS", "300")]);
            (id.clone(), jint(&r, "pid") as i32)
        })
        .collect();

    let mut api = env.api();
    write_atomic_mode(
        &env.patterns_dir.join("rebuilt/run.sh"),
        &wrapper_script(2),
        0o755,
    );
    let start = Instant::now();
    let (mut max_down, mut worst, mut samples) = (0, String::new(), 0);
    let mut seen_down = BTreeSet::new();
    let mut last = Vec::new();
    let done = wait_until_every(WAIT, Duration::from_millis(20), || {
        let list = api.list();
        samples += 1;
        let by_id: BTreeMap<&str, &proto::PatternInfo> =
            list.iter().map(|p| (p.process_id.as_str(), p)).collect();
        let down: Vec<String> = ids
            .iter()
            .filter(|id| !by_id.get(id.as_str()).is_some_and(|p| info_running(p)))
            .cloned()
            .collect();
        if down.len() > max_down {
            max_down = down.len();
            worst = format!("at {:?}: {list:?}", start.elapsed());
        }
        seen_down.extend(down.iter().cloned());
        let done = ids.iter().all(|id| {
            by_id
                .get(id.as_str())
                .is_some_and(|p| info_running(p) && p.pid != old[id])
        });
        last = list;
        done
    });
    assert!(
        done,
        "the instances were not all restarted within {WAIT:?}: {last:?}\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
    eprintln!(
        "rollout took {:?}, {samples} samples, at most {max_down} down at once; worst sample {worst}",
        start.elapsed()
    );
    for (id, pid) in &old {
        assert!(
            wait_until(WAIT, || !pid_alive(i64::from(*pid))),
            "{id}: old pid {pid} still alive"
        );
    }
    assert_eq!(env.token_processes().len(), 3, "{:?}", env.list());
    (max_down, seen_down, samples)
}

fn rebuilt_env(extra: &[&str]) -> TestEnv {
    let mut b = TestEnv::builder()
        .pattern(PatternSpec::named("rebuilt").executable("./run.sh"))
        .pattern_file("rebuilt/run.sh", &wrapper_script(1), 0o755);
    for a in extra {
        b = b.arg(a);
    }
    b.start()
}

#[test]
fn a_rebuilt_executable_restarts_the_instances_one_at_a_time() {
    let env = rebuilt_env(&[]);
    let (max_down, seen_down, samples) = rebuild_and_watch(&env);
    assert_eq!(
        seen_down.len(),
        3,
        "each instance should have been seen restarting ({samples} samples), seen: {seen_down:?}"
    );
    assert!(
        max_down <= 1,
        "{max_down} instances were down at once during a rolling restart\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
}

#[test]
fn with_no_rolling_restart_a_rebuilt_executable_restarts_all_instances_at_once() {
    let env = rebuilt_env(&["--no-rolling-restart"]);
    let (max_down, _, samples) = rebuild_and_watch(&env);
    assert_eq!(
        max_down, 3,
        "with --no-rolling-restart all three should restart together ({samples} samples)"
    );
}
