//! Lifecycle of one instance: crash restart, circuit breaker, liveness,
//! graceful and forced terminate, process-group containment.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const PATTERN: &str = "test-pattern";

fn entry(env: &TestEnv, process_id: &str) -> Value {
    env.find(process_id)
        .unwrap_or_else(|| panic!("{process_id} is not listed: {:?}", env.list()))
}

#[test]
fn instance_killed_with_sigkill_is_restarted_with_a_new_pid() {
    let env = TestEnv::start();
    let id = "ns:crash:test-pattern";
    let first = env.launch_running(PATTERN, "crash", &[]);
    let old_pid = jint(&first, "pid");
    assert!(pid_alive(old_pid));

    signal(old_pid, Signal::SIGKILL);

    let restarted = wait_for(WAIT, || {
        env.find(id).filter(|p| {
            let pid = jint(p, "pid");
            pid > 0 && pid != old_pid && jstr(p, "state") == "STATE_RUNNING" && jbool(p, "healthy")
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "no RUNNING healthy instance with a new pid: {:?}",
            env.find(id)
        )
    });
    assert!(!pid_alive(old_pid), "old pid {old_pid} still alive");
    assert!(pid_alive(jint(&restarted, "pid")), "{restarted}");
    assert_eq!(jint(&restarted, "restartCount"), 1, "{restarted}");
    let last_error = jstr(&restarted, "lastError").to_lowercase();
    assert!(
        last_error.contains("signal") && mentions_number(&last_error, 9),
        "lastError should name signal 9: {restarted}"
    );
}

#[test]
fn pattern_that_exits_at_start_is_circuit_broken_after_five_spawns_and_a_new_launch_resets_the_breaker()
 {
    let env = TestEnv::start();
    let id = "ns:broken:test-pattern";
    let spawn_log = env.path("spawns.log");
    let spawn_log_s = spawn_log.display().to_string();
    let config = [
        ("TEST_EXIT_AT_START", "1"),
        ("TEST_SPAWN_LOG", spawn_log_s.as_str()),
    ];

    let reply = env
        .launch_ns(PATTERN, "broken", &config)
        .expect("LaunchPattern of a crashing pattern should reply, not fail the call");
    assert_eq!(jstr(&reply, "processId"), id, "{reply}");
    assert_ne!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
    assert!(!jbool(&reply, "healthy"), "{reply}");
    let err = jstr(&reply, "error");
    assert!(
        !err.is_empty(),
        "LaunchPattern reply lacks an error: {reply}"
    );
    assert!(
        err.contains("test-pattern exiting at start with code 1"),
        "the error should carry the last lines of stderr: {reply}"
    );

    let failed = wait_for(WAIT, || {
        env.find(id).filter(|p| jstr(p, "state") == "STATE_FAILED")
    })
    .unwrap_or_else(|| {
        panic!(
            "never FAILED: {:?}; spawns: {}",
            env.find(id),
            count_lines(&spawn_log)
        )
    });
    assert_eq!(
        count_lines(&spawn_log),
        5,
        "FAILED after a wrong number of spawns: {failed}"
    );
    let last_error = jstr(&failed, "lastError");
    assert!(!last_error.is_empty(), "FAILED without a reason: {failed}");
    assert!(
        mentions_number(&last_error, 1),
        "lastError should mention exit code 1: {failed}"
    );
    assert!(
        env.instance_log(id)
            .contains("test-pattern exiting at start with code 1"),
        "instance log lacks the pattern's stderr:\n{}",
        env.instance_log(id)
    );
    let h = env.grpc("Health", serde_json::json!({})).expect("Health");
    assert_eq!(jint(&h, "failedProcesses"), 1, "{h}");

    // Negative assertion: it must stay broken for the whole window (the
    // longest restart backoff, 30 s), checked every 500 ms.
    let window = Duration::from_secs(30);
    if let Err(after) = holds_for(window, Duration::from_millis(500), || {
        count_lines(&spawn_log) == 5
    }) {
        panic!(
            "a circuit-broken instance was spawned again after {after:?}: {} spawns instead of 5",
            count_lines(&spawn_log)
        );
    }
    assert_eq!(count_lines(&spawn_log), 5);
    assert_eq!(jstr(&entry(&env, id), "state"), "STATE_FAILED");

    // A new launch resets the breaker: it is spawned again, five more times.
    let again = env
        .launch_ns(PATTERN, "broken", &config)
        .expect("LaunchPattern of a FAILED instance");
    assert_eq!(jstr(&again, "processId"), id, "{again}");
    assert!(
        wait_until(WAIT, || count_lines(&spawn_log) >= 6),
        "no 6th spawn after LaunchPattern of the FAILED instance: {:?}",
        env.find(id)
    );
    assert!(
        wait_until(WAIT, || env.find(id).is_some_and(|p| jstr(&p, "state")
            == "STATE_FAILED"
            && count_lines(&spawn_log) >= 10)),
        "after the reset the breaker should allow 5 more attempts and break again: {:?}, spawns {}",
        env.find(id),
        count_lines(&spawn_log)
    );
    assert_eq!(count_lines(&spawn_log), 10);
}

#[test]
fn instance_failing_its_liveness_probes_is_restarted() {
    let env = TestEnv::builder()
        .pattern(
            PatternSpec::test_pattern()
                .interval("1s")
                .timeout("1s")
                .failure_threshold(2),
        )
        .start();
    let id = "ns:sickly:test-pattern";
    let first = env.launch_running(PATTERN, "sickly", &[("TEST_UNHEALTHY_AFTER_MS", "1500")]);
    let old_pid = jint(&first, "pid");

    let restarted = wait_for(WAIT, || {
        env.find(id).filter(|p| {
            let pid = jint(p, "pid");
            pid > 0 && pid != old_pid && jint(p, "restartCount") >= 1
        })
    })
    .unwrap_or_else(|| panic!("not restarted after failed probes: {:?}", env.find(id)));
    assert!(
        !pid_alive(old_pid),
        "the unhealthy process {old_pid} was left running: {restarted}"
    );
}

#[test]
fn terminate_waits_the_grace_period_then_kills_a_process_that_ignores_sigterm() {
    let env = TestEnv::start();
    let id = "ns:stubborn:test-pattern";
    let reply = env.launch_running(PATTERN, "stubborn", &[("TEST_IGNORE_SIGTERM", "1")]);
    let pid = jint(&reply, "pid");

    let started = Instant::now();
    let t = env.terminate(id, 2, false).expect("TerminatePattern");
    let took = started.elapsed();
    assert!(jbool(&t, "success"), "{t}");
    assert!(
        !pid_alive(pid),
        "pid {pid} alive after TerminatePattern replied"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "the grace period of 2 s was not honoured: replied after {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || env
            .instance_log(id)
            .contains("test-pattern ignoring SIGTERM")),
        "the process never got SIGTERM; instance log:\n{}",
        env.instance_log(id)
    );
    assert!(
        wait_until(Duration::from_secs(5), || env.find(id).is_none()),
        "still listed: {:?}",
        env.find(id)
    );
}

#[test]
fn forced_terminate_kills_at_once_without_waiting_for_the_grace_period() {
    let env = TestEnv::start();
    let id = "ns:forced:test-pattern";
    let reply = env.launch_running(PATTERN, "forced", &[("TEST_IGNORE_SIGTERM", "1")]);
    let pid = jint(&reply, "pid");

    let started = Instant::now();
    let t = env.terminate(id, 30, true).expect("TerminatePattern force");
    let took = started.elapsed();
    assert!(jbool(&t, "success"), "{t}");
    assert!(
        !pid_alive(pid),
        "pid {pid} alive after a forced TerminatePattern"
    );
    assert!(
        took < Duration::from_secs(15),
        "force should not wait for the 30 s grace period: took {took:?}"
    );
}

#[test]
fn a_child_in_the_instance_process_group_does_not_survive_terminate() {
    let env = TestEnv::start();
    let id = "ns:family:test-pattern";
    let child_file = env.path("child.pid");
    let child_file_s = child_file.display().to_string();
    let reply = env.launch_running(
        PATTERN,
        "family",
        &[
            ("TEST_SPAWN_CHILD", "group"),
            ("TEST_CHILD_PID_FILE", child_file_s.as_str()),
            ("TEST_CHILD_IGNORE_SIGTERM", "1"),
            ("TEST_IGNORE_SIGTERM", "1"),
        ],
    );
    let pid = jint(&reply, "pid");
    let child = wait_for(WAIT, || {
        std::fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    })
    .unwrap_or_else(|| panic!("the pattern never wrote {}", child_file.display()));
    assert!(
        pid_alive(child),
        "child {child} not running before terminate"
    );
    assert_ne!(child, pid);

    let t = env.terminate(id, 1, false).expect("TerminatePattern");
    assert!(jbool(&t, "success"), "{t}");
    assert!(!pid_alive(pid), "instance pid {pid} survived");
    assert!(
        !pid_alive(child),
        "child {child} of the instance's process group survived TerminatePattern"
    );
}
