//! Surviving a launcher crash: the next launcher adopts the instances the
//! process table records (and still notices their exits and probes
//! them), stops those undeclared while it was down, never signals a pid
//! that now belongs to another process or a look-alike, and
//! `--keep-instances-on-exit` leaves them running for it. (A crash at the
//! worst moment is `tests/crash_adoption.rs`.)
//!
//! Real binary, real processes; needs what `tests/containment.rs` needs
//! (root, a cgroup tree).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const PATTERN: &str = "test-pattern";

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

/// Empty cgroup directories left behind by a launcher that exited with
/// `--keep-instances-on-exit` (its instances are then killed by the
/// harness, so no later launcher removes them): `rmdir`ed, with their
/// parents, when dropped. Declare it before the `TestEnv`, so that it runs
/// after the env's clean-up. `rmdir` never removes a cgroup that still has
/// processes.
#[derive(Default)]
struct CgroupCleanup {
    dirs: Vec<PathBuf>,
}

impl CgroupCleanup {
    /// Remembers the cgroups recorded in `<state-dir>/processes.json`.
    fn remember(&mut self, state_dir: &Path) {
        let table: Vec<Value> =
            serde_json::from_str(&read_lossy(state_dir.join("processes.json"))).unwrap_or_default();
        for e in &table {
            for d in e["cgroups"].as_array().into_iter().flatten() {
                if let Some(d) = d.as_str().map(PathBuf::from)
                    && d.starts_with("/sys/fs/cgroup")
                    && !self.dirs.contains(&d)
                {
                    self.dirs.push(d);
                }
            }
        }
    }
}

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        let mut parents: Vec<PathBuf> = Vec::new();
        for d in &self.dirs {
            // The kernel may need a moment after the last process died.
            wait_until(Duration::from_secs(2), || {
                fs::remove_dir(d).is_ok() || !d.exists()
            });
            if let Some(p) = d.parent().map(Path::to_path_buf)
                && !parents.contains(&p)
            {
                parents.push(p);
            }
        }
        for p in parents {
            let _ = fs::remove_dir(p);
        }
    }
}

/// A TCP port that was free a moment ago (outside every test's block).
fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// The default test-pattern manifest with a liveness timeout that a loaded
/// 2-core machine does not trip: the tests using it assert that pids stay.
fn patient_test_pattern() -> PatternSpec {
    PatternSpec::test_pattern().interval("2s").timeout("5s")
}

/// Waits until ListPatterns shows exactly the instances of `expected`, each
/// RUNNING, healthy, with the expected pid. Panics with what it last saw.
fn wait_same_pids_running(env: &TestEnv, expected: &BTreeMap<String, i64>) -> Vec<Value> {
    let mut last = Vec::new();
    wait_for(WAIT, || {
        last = env.list();
        let ok = listed_pids(&last) == *expected && last.iter().all(is_running);
        ok.then(|| last.clone())
    })
    .unwrap_or_else(|| {
        let seen: Vec<String> = last
            .iter()
            .map(|p| {
                format!(
                    "{} pid={} state={} healthy={} restarts={} lastError={:?}",
                    jstr(p, "processId"),
                    jint(p, "pid"),
                    jstr(p, "state"),
                    jbool(p, "healthy"),
                    jint(p, "restartCount"),
                    jstr(p, "lastError")
                )
            })
            .collect();
        panic!(
            "the instances were not adopted with their pids and RUNNING.\nexpected: {expected:?}\nlast seen:\n{}\n--- launcher log ---\n{}",
            seen.join("\n"),
            env.log_tail(80)
        )
    })
}

/// Launches `test-pattern` in each namespace (RUNNING) and returns
/// `process_id -> pid`.
fn launch_all(
    env: &TestEnv,
    namespaces: &[String],
    config: &[(&str, &str)],
) -> BTreeMap<String, i64> {
    namespaces
        .iter()
        .map(|ns| {
            let r = env.launch_running(PATTERN, ns, config);
            (jstr(&r, "processId"), jint(&r, "pid"))
        })
        .collect()
}

fn assert_all_alive(pids: &BTreeMap<String, i64>, when: &str) {
    for (id, pid) in pids {
        assert!(pid_alive(*pid), "{id}: pid {pid} is not alive {when}");
    }
}

// ---------------------------------------------------------------------------
// 1. launcher crash: 20 instances adopted, exits still noticed
// ---------------------------------------------------------------------------

#[test]
fn after_a_launcher_crash_the_next_launcher_adopts_all_instances_and_still_notices_their_exit() {
    // Liveness probes once an hour: only the exit watch can notice the
    // kill -9 of an adopted instance below.
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("1h"))
        .start();
    let spawn_log = env.path("spawns.log");
    let spawn_log_s = spawn_log.display().to_string();
    let namespaces: Vec<String> = (0..20).map(|i| format!("crash-{i:02}")).collect();
    let pids = launch_all(
        &env,
        &namespaces,
        &[("TEST_SPAWN_LOG", spawn_log_s.as_str())],
    );
    assert_eq!(pids.len(), 20);
    assert_eq!(count_lines(&spawn_log), 20);
    env.wait_table_records(&pids.values().copied().collect::<Vec<_>>());

    let status = env.launcher().kill9();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert_all_alive(&pids, "after kill -9 of the launcher");
    let table = read_lossy(env.state_dir.join("processes.json"));
    let table: Vec<Value> = serde_json::from_str(&table)
        .unwrap_or_else(|e| panic!("processes.json is not a JSON array ({e}): {table}"));
    assert_eq!(table.len(), 20, "processes.json: {table:?}");

    let restarted_at = Instant::now();
    env.launcher().restart();
    let list = wait_same_pids_running(&env, &pids);
    println!(
        "20 instances adopted and RUNNING {:.2} s after the restart began",
        restarted_at.elapsed().as_secs_f64()
    );
    // No second copy: exactly the 20 adopted processes carry the token.
    let mut expected: Vec<i32> = pids.values().map(|p| *p as i32).collect();
    expected.sort_unstable();
    assert_eq!(
        env.token_processes(),
        expected,
        "live processes with the token differ from the adopted pids"
    );
    assert_eq!(
        count_lines(&spawn_log),
        20,
        "an instance was spawned again instead of adopted"
    );
    for p in &list {
        assert_eq!(jint(p, "restartCount"), 0, "adoption is no restart: {p}");
    }

    // The adopted instance is not the new launcher's child, yet its death is
    // noticed and it is restarted.
    let victim = "ns:crash-07:test-pattern";
    let old_pid = pids[victim];
    let killed_at = Instant::now();
    signal(old_pid, Signal::SIGKILL);
    let back = env.wait_restarted(victim, old_pid);
    println!(
        "{victim}: adopted pid {old_pid} killed, RUNNING again as pid {} after {:.2} s",
        jint(&back, "pid"),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(
        !jstr(&back, "lastError").starts_with("health check failed"),
        "the exit should have been noticed, not a failed probe: {back}"
    );
    assert!(!pid_alive(old_pid), "old pid {old_pid} alive");
    println!(
        "{victim} after kill -9: lastError {:?}",
        jstr(&back, "lastError")
    );
    assert_eq!(count_lines(&spawn_log), 21);
    // The others were not touched.
    let mut others = pids.clone();
    others.insert(victim.to_string(), jint(&back, "pid"));
    wait_same_pids_running(&env, &others);
}

// ---------------------------------------------------------------------------
// 2. undesired while down: terminated at start-up; a look-alike left alone
// ---------------------------------------------------------------------------

#[test]
fn an_instance_undeclared_while_the_launcher_was_down_is_stopped_and_a_look_alike_is_left_alone() {
    let mut env = TestEnv::builder()
        .pattern(patient_test_pattern())
        .arg("--orphan-sweep-interval")
        .arg("1s")
        .start();
    let namespaces: Vec<String> = ["keep-a", "keep-b", "drop-c"].map(String::from).to_vec();
    let pids = launch_all(&env, &namespaces, &[]);
    let dropped = "ns:drop-c:test-pattern";
    let dropped_pid = pids[dropped];

    env.launcher().kill9();
    assert_all_alive(&pids, "after kill -9 of the launcher");

    // Remove drop-c's declaration from the API store.
    let store = env.state_dir.join("api-instances.json");
    let text = read_lossy(&store);
    let specs: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON array ({e}): {text}", store.display()));
    assert_eq!(specs.len(), 3, "{text}");
    let kept: Vec<Value> = specs
        .into_iter()
        .filter(|s| s.pointer("/key/namespace").and_then(Value::as_str) != Some("drop-c"))
        .collect();
    assert_eq!(
        kept.len(),
        2,
        "no declaration with key.namespace drop-c in {text}"
    );
    write_atomic(&store, &serde_json::to_string_pretty(&kept).unwrap());

    // A process the launcher did not start, with the very environment the
    // dropped instance had (but no PRISM_TEST_TOKEN).
    let mut own = OwnProcesses::default();
    let port = free_port();
    let look_alike = own.spawn(
        Command::new(TEST_PATTERN_BIN)
            .env_remove("PRISM_TEST_TOKEN")
            .env("PATTERN_NAME", PATTERN)
            .env("PATTERN_VERSION", "1.0.0")
            .env("PROCESS_ID", dropped)
            .env("NAMESPACE", "drop-c")
            .env("ISOLATION", "namespace")
            .env("HEALTH_PORT", port.to_string()),
    );
    assert!(
        wait_until(WAIT, || http_get(port, "/health")
            .is_ok_and(|r| r.contains(" 200 "))),
        "the look-alike (pid {look_alike}) never answered on :{port}"
    );

    env.launcher().restart();
    let mut kept_pids = pids.clone();
    kept_pids.remove(dropped);
    wait_same_pids_running(&env, &kept_pids);
    assert!(
        wait_until(WAIT, || !pid_alive(dropped_pid)),
        "{dropped} (pid {dropped_pid}) is no longer declared but still runs\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
    assert!(
        env.instance_log(dropped).contains("received SIGTERM"),
        "{dropped} should have been stopped gracefully (SIGTERM first); its log:\n{}",
        env.instance_log(dropped)
    );
    env.wait_unlisted(dropped);

    // Negative assertion: after the start-up sweep, three more sweeps
    // (--orphan-sweep-interval 1s) leave the look-alike alone.
    let kept_pid = *kept_pids.values().next().expect("a kept instance");
    wait_orphan_sweeps(kept_pid, 3);
    assert!(
        pid_alive(look_alike),
        "a process the launcher did not start (pid {look_alike}) was killed\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
    assert!(
        http_get(port, "/health").is_ok_and(|r| r.contains(" 200 ")),
        "the look-alike stopped answering"
    );
    wait_same_pids_running(&env, &kept_pids);
}

// ---------------------------------------------------------------------------
// 3. a recorded pid that is now another process is never signalled
// ---------------------------------------------------------------------------

#[test]
fn a_recorded_pid_that_now_belongs_to_another_process_is_never_signalled() {
    let mut env = TestEnv::builder()
        .pattern(patient_test_pattern())
        .arg("--orphan-sweep-interval")
        .arg("1s")
        .start();
    let real = "ns:real:test-pattern";
    let ghost = "ns:ghost:test-pattern";
    let reply = env.launch_running(PATTERN, "real", &[]);
    let real_pid = jint(&reply, "pid");
    env.wait_table_records(&[real_pid]);

    env.launcher().kill9();

    let mut own = OwnProcesses::default();
    let sleeper = own.spawn(Command::new("sleep").arg("600"));
    let sleeper_start =
        start_time(sleeper).unwrap_or_else(|| panic!("no start time for pid {sleeper}"));

    // Record a ghost: the real entry, with the sleep's pid and a start time
    // that is not the sleep's.
    let table_path = env.state_dir.join("processes.json");
    let text = read_lossy(&table_path);
    let mut table: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("processes.json is not a JSON array ({e}): {text}"));
    let mut entry = table
        .iter()
        .find(|e| e["process_id"] == real)
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {real} in {text}"));
    assert_eq!(entry["pid"].as_i64(), Some(real_pid), "{entry}");
    entry["process_id"] = Value::from(ghost);
    entry["pid"] = Value::from(sleeper);
    entry["start_time"] = Value::from(sleeper_start + 1000);
    entry["spec"]["key"]["namespace"] = Value::from("ghost");
    if let Some(dirs) = entry["cgroups"].as_array_mut() {
        for d in dirs {
            if let Some(s) = d.as_str() {
                *d = Value::from(s.replace(real, ghost));
            }
        }
    }
    table.push(entry);
    write_atomic(&table_path, &serde_json::to_string(&table).unwrap());

    env.launcher().restart();
    let expected = BTreeMap::from([(real.to_string(), real_pid)]);
    wait_same_pids_running(&env, &expected);
    // Negative assertion: after the start-up sweep, three more sweeps
    // (--orphan-sweep-interval 1s) leave the sleep alone.
    wait_orphan_sweeps(real_pid, 3);
    let state = proc_state(sleeper);
    assert!(
        pid_alive(sleeper) && !matches!(state, Some('T' | 't' | 'Z')),
        "the sleep (pid {sleeper}) recorded with another start time was signalled: state {state:?}\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
    assert_eq!(
        start_time(sleeper),
        Some(sleeper_start),
        "pid {sleeper} is another process now"
    );
    assert!(
        env.find(ghost).is_none(),
        "the ghost is listed: {:?}",
        env.find(ghost)
    );
    wait_same_pids_running(&env, &expected);
}

// ---------------------------------------------------------------------------
// 4. --keep-instances-on-exit
// ---------------------------------------------------------------------------

#[test]
fn keep_instances_on_exit_leaves_them_running_for_the_next_launcher() {
    let mut cgroups = CgroupCleanup::default();
    let mut env = TestEnv::builder()
        .pattern(patient_test_pattern())
        .arg("--keep-instances-on-exit")
        .start();
    let namespaces: Vec<String> = ["stay-a", "stay-b", "stay-c"].map(String::from).to_vec();
    let pids = launch_all(&env, &namespaces, &[]);
    env.wait_table_records(&pids.values().copied().collect::<Vec<_>>());
    cgroups.remember(&env.state_dir);

    let status = env.launcher().stop();
    assert!(
        status.success(),
        "the launcher should exit 0 on SIGTERM: {status}"
    );
    assert_all_alive(&pids, "after SIGTERM with --keep-instances-on-exit");
    for id in pids.keys() {
        assert!(
            !env.instance_log(id).contains("received SIGTERM"),
            "{id} got SIGTERM although the instances were to be kept:\n{}",
            env.instance_log(id)
        );
    }

    env.launcher().restart();
    wait_same_pids_running(&env, &pids);
    let mut expected: Vec<i32> = pids.values().map(|p| *p as i32).collect();
    expected.sort_unstable();
    assert_eq!(env.token_processes(), expected, "a second copy was started");
}

// ---------------------------------------------------------------------------
// 5. an adopted instance is still probed
// ---------------------------------------------------------------------------

#[test]
fn an_adopted_instance_that_stops_answering_its_health_checks_is_restarted() {
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().failure_threshold(2))
        .arg("--startup-timeout")
        .arg("10s")
        .start();
    let id = "ns:fading:test-pattern";
    // Healthy for 5 s from its start: long enough to be adopted healthy by
    // the next launcher, whose liveness probes must then catch it.
    let reply = env.launch_running(PATTERN, "fading", &[("TEST_UNHEALTHY_AFTER_MS", "5000")]);
    let old_pid = jint(&reply, "pid");

    env.launcher().kill9();
    env.launcher().restart();
    let back = env.wait_restarted(id, old_pid);
    assert!(
        !pid_alive(old_pid),
        "the unhealthy adopted process {old_pid} was left running: {back}"
    );
    assert!(
        env.read_log()
            .contains(&format!("{id}: adopted pid {old_pid}")),
        "pid {old_pid} was not adopted (restarted for another reason?)\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    println!(
        "{id}: adopted pid {old_pid}, restarted as {} ({:?})",
        jint(&back, "pid"),
        jstr(&back, "lastError")
    );
}
