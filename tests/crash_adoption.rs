//! A launcher crash at the worst moment never leaves two processes of one
//! instance: the next launcher adopts what runs (each instance's cgroup
//! and the `PRISM_INSTANCE` marker in its environment), and takes
//! `processes.json` as a hint only. Covers a `kill -9` in the middle of a
//! burst of launches, a truncated process table, and a table entry that
//! names a process outside the instance's cgroup.
//!
//! Real binary, real processes; needs what `tests/containment.rs` needs
//! (root, a cgroup tree).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Instant;

use common::*;
use serde_json::Value;

const PATTERN: &str = "test-pattern";

/// Live instance processes of this test (token carriers) by their
/// `PROCESS_ID`.
fn processes_by_instance(env: &TestEnv) -> BTreeMap<String, Vec<i32>> {
    let mut by: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pid in env.token_processes() {
        let id =
            environ_var(pid.into(), "PROCESS_ID").unwrap_or_else(|| format!("(none, pid {pid})"));
        by.entry(id).or_default().push(pid);
    }
    by
}

/// Asserts that exactly the instances `ids` run, one process each, and
/// that no two share a `GRPC_PORT`; returns `process_id -> pid`.
fn assert_one_process_each(env: &TestEnv, ids: &[String], when: &str) -> BTreeMap<String, i32> {
    let by = processes_by_instance(env);
    let extra: Vec<(&String, &Vec<i32>)> = by.iter().filter(|(_, p)| p.len() != 1).collect();
    assert!(
        extra.is_empty(),
        "{when}: instances with more or fewer than one process: {extra:?}\n--- launcher log ---\n{}",
        env.log_tail(60)
    );
    let running: Vec<&String> = by.keys().collect();
    let expected: Vec<&String> = ids.iter().collect();
    assert_eq!(running, expected, "{when}: the running instances differ");
    let mut ports: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for pids in by.values() {
        let port = environ_var(pids[0].into(), "GRPC_PORT").unwrap_or_default();
        ports.entry(port).or_default().push(pids[0]);
    }
    let shared: Vec<_> = ports.iter().filter(|(_, p)| p.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "{when}: processes sharing a GRPC_PORT: {shared:?}"
    );
    by.into_iter().map(|(id, p)| (id, p[0])).collect()
}

/// LaunchPattern of `test-pattern` in every namespace at once (a stream
/// each on one connection), from a thread of its own; the thread returns
/// how many calls answered RUNNING and healthy.
fn launch_burst(port: u16, namespaces: &[String]) -> JoinHandle<usize> {
    let namespaces = namespaces.to_vec();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let url = format!("http://127.0.0.1:{port}");
            let Ok(client) =
                proto::pattern_launcher_client::PatternLauncherClient::connect(url).await
            else {
                return 0;
            };
            let mut calls = tokio::task::JoinSet::new();
            for ns in namespaces {
                let mut c = client.clone();
                calls.spawn(async move {
                    let req = proto::LaunchRequest {
                        pattern_name: PATTERN.into(),
                        namespace: ns,
                        ..Default::default()
                    };
                    c.launch_pattern(req).await.is_ok_and(|r| {
                        let r = r.into_inner();
                        r.healthy && r.state == proto::ProcessState::StateRunning as i32
                    })
                });
            }
            let mut ok = 0;
            while let Some(r) = calls.join_next().await {
                ok += usize::from(r.unwrap_or(false));
            }
            ok
        })
    })
}

/// Waits until exactly `ids` are listed, each RUNNING and healthy.
fn wait_all_running(env: &TestEnv, ids: &[String]) -> Vec<Value> {
    let mut last = Vec::new();
    wait_for(WAIT, || {
        last = env.list();
        let listed: Vec<String> = last.iter().map(|p| jstr(p, "processId")).collect();
        (listed == ids && last.iter().all(is_running)).then(|| last.clone())
    })
    .unwrap_or_else(|| {
        let not: Vec<String> = last
            .iter()
            .filter(|p| !is_running(p))
            .map(|p| p.to_string())
            .collect();
        panic!(
            "not all of {} instances RUNNING: {} listed, not running: {not:?}\n--- launcher log ---\n{}",
            ids.len(),
            last.len(),
            env.log_tail(80)
        )
    })
}

fn process_ids(namespaces: &[String]) -> Vec<String> {
    let mut ids: Vec<String> = namespaces
        .iter()
        .map(|ns| format!("ns:{ns}:{PATTERN}"))
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// 1. kill -9 during a burst of 100 launches
// ---------------------------------------------------------------------------

#[test]
fn a_kill_during_a_burst_of_launches_leaves_one_process_per_instance_after_the_restart() {
    const N: usize = 100;
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("2s").timeout("5s"))
        .ports(2 * N as u16 + 20)
        .arg("--orphan-sweep-interval")
        .arg("1s")
        .start();
    let namespaces: Vec<String> = (0..N).map(|i| format!("burst-{i:03}")).collect();
    let ids = process_ids(&namespaces);
    let logs = env.state_dir.join("logs");
    let started = |logs: &std::path::Path| {
        fs::read_dir(logs)
            .map(|d| d.filter(|e| e.is_ok()).count())
            .unwrap_or(0)
    };

    let burst = launch_burst(env.ports.grpc_port(), &namespaces);
    // Each start opens its instance's log first: kill the launcher once
    // about 30 starts are under way, while the rest still come.
    let mut seen = 0;
    let reached = wait_until(WAIT, || {
        seen = started(&logs);
        seen >= 30
    });
    assert!(
        reached,
        "only {seen} instances started\n{}",
        env.log_tail(40)
    );
    env.launcher().kill9();
    let at_kill = env.token_processes().len();
    let answered = burst.join().expect("burst thread");
    println!(
        "kill -9 with {seen} logs opened, {at_kill} processes running, {answered} launches answered"
    );
    assert!(
        at_kill < N,
        "the burst was over before the kill ({at_kill} processes): nothing tested"
    );
    assert!(at_kill > 0, "no process was started before the kill");

    env.launcher().restart();
    let again = launch_burst(env.ports.grpc_port(), &namespaces)
        .join()
        .expect("burst thread");
    assert_eq!(
        again,
        N,
        "not every launch after the restart answered RUNNING\n{}",
        env.log_tail(60)
    );
    let list = wait_all_running(&env, &ids);
    let pids = assert_one_process_each(&env, &ids, "after the restart");
    let listed: BTreeMap<String, i64> = pids
        .iter()
        .map(|(k, v)| (k.clone(), i64::from(*v)))
        .collect();
    assert_eq!(
        listed_pids(&list),
        listed,
        "the listed pids are not the running ones"
    );
    let log = env.read_log();
    let adopted = log.matches("adopted pid").count();
    let found = log.lines().find(|l| l.contains("running instances found"));
    println!("{adopted} instances adopted after the restart ({found:?})");

    // Negative assertion: three orphan sweeps (--orphan-sweep-interval 1s)
    // change no instance process.
    let any_pid = i64::from(*pids.values().next().expect("an instance"));
    wait_orphan_sweeps(any_pid, 3);
    let after = assert_one_process_each(&env, &ids, "after orphan sweeps");
    assert_eq!(after, pids, "an instance process changed during the sweeps");
}

// ---------------------------------------------------------------------------
// 2. a truncated processes.json costs nothing
// ---------------------------------------------------------------------------

#[test]
fn a_truncated_process_table_still_adopts_every_instance_without_a_restart() {
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("2s").timeout("5s"))
        .start();
    let namespaces: Vec<String> = (0..20).map(|i| format!("trunc-{i:02}")).collect();
    let ids = process_ids(&namespaces);
    let ok = launch_burst(env.ports.grpc_port(), &namespaces)
        .join()
        .expect("burst thread");
    assert_eq!(ok, 20, "{}", env.log_tail(40));
    let list = wait_all_running(&env, &ids);
    let before = listed_pids(&list);

    env.launcher().kill9();
    let table = env.state_dir.join("processes.json");
    let len = fs::metadata(&table).expect("processes.json").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&table)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate processes.json");
    assert!(serde_json::from_str::<Value>(&read_lossy(&table)).is_err());

    let restarted = Instant::now();
    env.launcher().restart();
    let list = wait_all_running(&env, &ids);
    println!(
        "20 instances RUNNING {:.2} s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        listed_pids(&list),
        before,
        "not the same pids: restarted instead of adopted"
    );
    for p in &list {
        assert_eq!(jint(p, "restartCount"), 0, "adoption is no restart: {p}");
    }
    let pids = assert_one_process_each(&env, &ids, "after the restart");
    let pids: BTreeMap<String, i64> = pids.into_iter().map(|(k, v)| (k, i64::from(v))).collect();
    assert_eq!(pids, before);
    // The table is whole again, and private.
    let entries = env.wait_table_records(&pids.values().copied().collect::<Vec<_>>());
    assert_eq!(entries.len(), 20);
    let mode = |p: &std::path::Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
    assert_eq!(mode(&table), Some(0o600), "mode of processes.json");
    assert_eq!(mode(&env.state_dir), Some(0o700), "mode of the state dir");
}

// ---------------------------------------------------------------------------
// 3. a table entry naming a process outside the instance's cgroup
// ---------------------------------------------------------------------------

#[test]
fn a_table_entry_naming_a_process_outside_the_cgroup_is_not_adopted_nor_signalled() {
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("2s").timeout("5s"))
        .arg("--orphan-sweep-interval")
        .arg("1s")
        .arg("--startup-timeout")
        .arg("2s")
        .start();
    let id = "ns:real:test-pattern";
    let reply = env.launch_running(PATTERN, "real", &[]);
    let real_pid = jint(&reply, "pid");
    env.wait_table_records(&[real_pid]);

    env.launcher().kill9();

    // A process of the test's own, in a process group of its own, recorded
    // with its real start time as the instance's process.
    let mut own = OwnProcesses::default();
    let sleeper_pid = own.spawn(Command::new("sleep").arg("600").process_group(0));
    let sleeper_start =
        wait_for(WAIT, || start_time(sleeper_pid)).expect("start time of the sleep");
    let table_path = env.state_dir.join("processes.json");
    let text = read_lossy(&table_path);
    let mut table: Vec<Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("processes.json is not a JSON array ({e}): {text}"));
    let entry = table
        .iter_mut()
        .find(|e| e["process_id"] == id)
        .unwrap_or_else(|| panic!("no entry for {id} in {text}"));
    assert_eq!(entry["pid"].as_i64(), Some(real_pid), "{entry}");
    entry["pid"] = Value::from(sleeper_pid);
    entry["start_time"] = Value::from(sleeper_start);
    write_atomic(&table_path, &serde_json::to_string(&table).unwrap());

    env.launcher().restart();
    let back = env.wait_running(id);
    assert_eq!(
        jint(&back, "pid"),
        real_pid,
        "the instance should be its process in its cgroup, not the recorded one: {back}\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    // Negative assertion: three orphan sweeps (--orphan-sweep-interval 1s),
    // so at least two sweep intervals, which also cover the start-up
    // timeout (2 s) of anything adopted by mistake, leave the sleep alone.
    wait_orphan_sweeps(real_pid, 3);
    let state = proc_state(sleeper_pid);
    assert!(
        matches!(state, Some('S' | 'R')),
        "the sleep (pid {sleeper_pid}) was signalled: state {state:?}\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    assert_eq!(start_time(sleeper_pid), Some(sleeper_start));
    let back = env.wait_running(id);
    assert_eq!(jint(&back, "pid"), real_pid, "{back}");
    assert_one_process_each(&env, &[id.to_string()], "after the restart");
}

// ---------------------------------------------------------------------------
// 4. declarations changed while down, and no usable table
// ---------------------------------------------------------------------------

#[test]
fn without_a_table_a_changed_declaration_restarts_gracefully_and_a_removed_one_stops() {
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("2s").timeout("5s"))
        .start();
    let changed = "ns:change-me:test-pattern";
    let removed = "ns:drop-me:test-pattern";
    env.write_desired(
        "a.yaml",
        &desired_stream(&[
            desired_doc(PATTERN, "change-me", &[("LEVEL", "a")]),
            desired_doc(PATTERN, "drop-me", &[]),
        ]),
    );
    let old_changed = jint(&env.wait_running(changed), "pid");
    let old_removed = jint(&env.wait_running(removed), "pid");

    env.launcher().kill9();
    let table = env.state_dir.join("processes.json");
    fs::write(&table, "[{\"process_id\": \"ns:chan").expect("write processes.json");
    env.write_desired(
        "a.yaml",
        &desired_doc(PATTERN, "change-me", &[("LEVEL", "b")]),
    );

    env.launcher().restart();
    let back = env.wait_restarted(changed, old_changed);
    let new_pid = jint(&back, "pid");
    assert_eq!(
        environ_var(new_pid, "LEVEL").as_deref(),
        Some("b"),
        "{changed} restarted without its new config"
    );
    env.wait_unlisted(removed);
    assert!(
        wait_until(WAIT, || !pid_alive(old_changed) && !pid_alive(old_removed)),
        "old processes still run: {changed} pid {old_changed} alive {}, {removed} pid {old_removed} alive {}\n--- launcher log ---\n{}",
        pid_alive(old_changed),
        pid_alive(old_removed),
        env.log_tail(40)
    );
    for id in [changed, removed] {
        let log = env.instance_log(id);
        assert!(
            log.contains("received SIGTERM"),
            "{id} was not stopped gracefully; its log:\n{log}"
        );
    }
    let pids = assert_one_process_each(&env, &[changed.to_string()], "after the restart");
    assert_eq!(pids[changed], new_pid as i32);
}

// ---------------------------------------------------------------------------
// 5. a start never joins a process still in the instance's cgroup
// ---------------------------------------------------------------------------

#[test]
fn an_instance_is_not_started_beside_a_process_left_in_its_cgroup() {
    let mut env = TestEnv::builder()
        .pattern(PatternSpec::test_pattern().interval("2s").timeout("5s"))
        .start();
    let id = "ns:occupied:test-pattern";
    let old_pid = jint(&env.launch_running(PATTERN, "occupied", &[]), "pid");
    let table = env.wait_table_records(&[old_pid]);
    let text = format!("{table:?}");
    let cgroups: Vec<String> = table
        .iter()
        .find(|e| e["process_id"] == id)
        .and_then(|e| e["cgroups"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(String::from))
        .collect();
    assert!(!cgroups.is_empty(), "no cgroups recorded for {id}: {text}");

    env.launcher().kill9();
    // The instance's process dies, and a process without the launcher's
    // marker is left in its cgroup (what a launcher of an older version,
    // or a pattern's child, leaves).
    signal(old_pid, nix::sys::signal::Signal::SIGKILL);
    assert!(wait_until(WAIT, || !pid_alive(old_pid)));
    let mut own = OwnProcesses::default();
    let stray_pid = own.spawn(Command::new("sleep").arg("600").process_group(0));
    for dir in &cgroups {
        fs::write(format!("{dir}/cgroup.procs"), stray_pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move pid {stray_pid} into {dir}: {e}"));
    }

    env.launcher().restart();
    assert!(
        wait_until(WAIT, || !pid_alive(stray_pid)),
        "pid {stray_pid} in the cgroup of {id} was left running\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    let back = env.wait_restarted(id, old_pid);
    let pids = assert_one_process_each(&env, &[id.to_string()], "after the restart");
    assert_eq!(i64::from(pids[id]), jint(&back, "pid"));
}
