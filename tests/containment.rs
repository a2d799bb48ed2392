//! Containment: kernel-enforced limits (cgroups), whole process trees,
//! and surviving a launcher crash (the process table, adoption, orphan
//! sweeps, `--keep-instances-on-exit`).
//!
//! Real binary, real processes. These tests need root (or a
//! writable cgroup tree) and a cgroup v1 `memory` / `cpu` hierarchy or a
//! writable v2 subtree, as on the CI machines.

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
const MIB_64: u64 = 64 * 1024 * 1024;

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

/// A manifest running the test-pattern binary as `name` with a
/// `resources:` section (the harness's `PatternSpec` has none). No health
/// port: instances get theirs from the test's port range.
fn limited_manifest(name: &str, resources: &[(&str, &str)]) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut y = format!(
        "name: {name}\nversion: 1.0.0\nexecutable: {}\nisolation_level: namespace\n\
         inherit_env: [PRISM_TEST_TOKEN]\n\
         healthcheck:\n  path: /health\n  interval: 1s\n  timeout: 1s\n  failure_threshold: 3\n\
         resources:\n",
        q(TEST_PATTERN_BIN)
    );
    for (k, v) in resources {
        y += &format!("  {k}: {v}\n");
    }
    y
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
// 1. memory limit: OOM kill, reported, restarted with backoff
// ---------------------------------------------------------------------------

#[test]
fn a_pattern_allocating_past_its_memory_limit_is_oom_killed_reported_and_restarted() {
    let env = TestEnv::builder()
        .raw_manifest("hog", &limited_manifest("hog", &[("memory_limit", "64Mi")]))
        .start();

    // A calm instance of the same manifest: its cgroup carries the limit.
    let calm = env.launch_running("hog", "calm", &[]);
    let calm_pid = jint(&calm, "pid");
    let calm_dir = cgroup_dir(calm_pid, "memory")
        .unwrap_or_else(|| panic!("no memory cgroup for pid {calm_pid}"));
    assert!(
        calm_dir.to_string_lossy().contains("ns:calm:hog"),
        "pid {calm_pid} is not in a cgroup of its own: {}",
        calm_dir.display()
    );
    assert_eq!(
        cgroup_file(&calm_dir, "memory.limit_in_bytes"),
        MIB_64.to_string(),
        "memory.limit_in_bytes of {}",
        calm_dir.display()
    );
    let calm_info = env.find("ns:calm:hog").expect("ns:calm:hog listed");
    let limits = jstr(&calm_info, "limits");
    assert!(
        limits.contains(&format!("memory {MIB_64} bytes")) && !limits.contains("NOT ENFORCED"),
        "PatternInfo.limits should say the memory limit is enforced: {calm_info}"
    );

    let id = "ns:oom:hog";
    let spawn_log = env.path("oom-spawns.log");
    let spawn_log_s = spawn_log.display().to_string();
    // The reply may be RUNNING (healthy before the allocation got far) or
    // not (killed first): both are fine here.
    let reply = env
        .launch_ns(
            "hog",
            "oom",
            &[
                ("TEST_ALLOC_MB", "200"),
                ("TEST_SPAWN_LOG", spawn_log_s.as_str()),
            ],
        )
        .unwrap_or_else(|e| panic!("LaunchPattern hog in oom: {e}"));
    assert_eq!(jstr(&reply, "processId"), id, "{reply}");

    // Opportunistically look at the hog's own cgroup while one of its
    // processes still lives (each dies within moments of its start).
    let mut hog_limit_seen = None;
    let oomed = wait_for(WAIT, || {
        if hog_limit_seen.is_none() {
            for pid in read_lossy(&spawn_log)
                .lines()
                .filter_map(|l| l.trim().parse::<i64>().ok())
            {
                // Only once it is in its own cgroup (the move follows the
                // spawn).
                if let Some(dir) = cgroup_dir(pid, "memory")
                    && dir.to_string_lossy().contains(id)
                    && pid_alive(pid)
                {
                    let v = cgroup_file(&dir, "memory.limit_in_bytes");
                    if !v.is_empty() {
                        hog_limit_seen = Some((pid, dir, v));
                    }
                }
            }
        }
        env.find(id).filter(|p| {
            jstr(p, "lastError").to_lowercase().contains("oom") && jint(p, "restartCount") >= 1
        })
    })
    .unwrap_or_else(|| {
        panic!(
            "{id}: no OOM in lastError with a restart: {:?}; spawns: {}\n--- launcher log ---\n{}",
            env.find(id),
            count_lines(&spawn_log),
            env.log_tail(60)
        )
    });
    println!("OOM reported: {}", jstr(&oomed, "lastError"));
    assert!(
        count_lines(&spawn_log) >= 2,
        "restartCount >= 1 but the spawn log has {} lines",
        count_lines(&spawn_log)
    );
    if let Some((pid, dir, v)) = &hog_limit_seen {
        println!("hog pid {pid} seen alive in {}", dir.display());
        assert_eq!(
            v,
            &MIB_64.to_string(),
            "memory.limit_in_bytes of {}",
            dir.display()
        );
    } else {
        println!("no hog process was caught alive; the limit was checked on ns:calm:hog");
    }

    // An OOM kill is a failure like a crash: restarted with backoff until
    // the circuit breaks after 5 consecutive ones.
    let failed = wait_for(WAIT, || {
        env.find(id).filter(|p| jstr(p, "state") == "STATE_FAILED")
    })
    .unwrap_or_else(|| {
        panic!(
            "{id}: never circuit-broken: {:?}; spawns: {}\n--- launcher log ---\n{}",
            env.find(id),
            count_lines(&spawn_log),
            env.log_tail(60)
        )
    });
    assert_eq!(
        count_lines(&spawn_log),
        5,
        "FAILED after a wrong number of spawns: {failed}"
    );
    assert!(
        jstr(&failed, "lastError").to_lowercase().contains("oom"),
        "the FAILED reason should be the OOM kill: {failed}"
    );
    // The calm instance of the same pattern was not disturbed.
    let calm_now = env.find("ns:calm:hog").expect("ns:calm:hog listed");
    assert!(is_running(&calm_now), "{calm_now}");
    assert_eq!(jint(&calm_now, "pid"), calm_pid, "{calm_now}");
}

/// The CPU quota of a cgroup in microseconds per 100 ms period, as text
/// ("max" or "-1" when unlimited): `cpu.max` on v2, `cpu.cfs_quota_us` on v1.
fn cpu_quota(dir: &Path) -> String {
    let v2 = cgroup_file(dir, "cpu.max");
    match v2.split_whitespace().next() {
        Some(q) => q.to_string(),
        None => cgroup_file(dir, "cpu.cfs_quota_us"),
    }
}

/// Replaces a pattern's manifest the way an operator's deploy should:
/// written aside, then renamed over the old one.
fn replace_manifest(env: &TestEnv, dir: &str, yaml: &str) {
    let target = env.patterns_dir.join(dir).join("manifest.yaml");
    let tmp = env.path("manifest.yaml.next");
    fs::write(&tmp, yaml).expect("write the new manifest");
    fs::rename(&tmp, &target).expect("rename the new manifest in");
}

#[test]
fn a_crash_restart_keeps_the_cgroup_limits_and_a_manifest_change_rewrites_them() {
    let env = TestEnv::builder()
        .raw_manifest(
            "capped",
            &limited_manifest("capped", &[("cpu_limit", "0.5")]),
        )
        .start();
    let id = "ns:a:capped";
    let quota_of = |pid: i64| {
        cgroup_dir(pid, "cpu")
            .map(|d| cpu_quota(&d))
            .unwrap_or_else(|| panic!("no cpu cgroup for pid {pid}"))
    };
    let first = jint(&env.launch_running("capped", "a", &[]), "pid");
    assert_eq!(quota_of(first), "50000");

    // Wait for a new RUNNING process of `id` other than `old`.
    let next_pid = |old: i64| {
        wait_for(WAIT, || {
            env.find(id)
                .filter(|p| is_running(p) && jint(p, "pid") != old && jint(p, "pid") > 0)
                .map(|p| jint(&p, "pid"))
        })
        .unwrap_or_else(|| {
            panic!(
                "{id} did not come back after pid {old}
{}",
                env.log_tail(40)
            )
        })
    };

    // A crash: the new process starts in the same cgroup, same limit.
    signal(first, Signal::SIGKILL);
    let second = next_pid(first);
    assert_eq!(quota_of(second), "50000");

    // A new limit in the manifest: the rollout restarts it under the new one.
    replace_manifest(
        &env,
        "capped",
        &limited_manifest("capped", &[("cpu_limit", "0.25")]),
    );
    let third = next_pid(second);
    assert_eq!(quota_of(third), "25000");

    // No limit any more: the quota is cleared, not left behind.
    let unlimited = limited_manifest("capped", &[]).replace("resources:\n", "");
    replace_manifest(&env, "capped", &unlimited);
    let fourth = next_pid(third);
    let q = quota_of(fourth);
    assert!(
        q == "-1" || q == "max",
        "quota after the limit was removed: {q}"
    );
}

// ---------------------------------------------------------------------------
// 2. cpu limit: a busy loop gets about half a core
// ---------------------------------------------------------------------------

#[test]
fn a_busy_pattern_with_half_a_core_uses_at_most_about_half_a_core() {
    let env = TestEnv::builder()
        .raw_manifest(
            "spinner",
            &limited_manifest("spinner", &[("cpu_limit", "0.5")]),
        )
        .start();
    let id = "ns:busy:spinner";
    let reply = env.launch_running("spinner", "busy", &[("TEST_BUSY", "1")]);
    let pid = jint(&reply, "pid");

    let info = env.find(id).expect("listed");
    let limits = jstr(&info, "limits");
    assert!(
        limits.contains("cpu 0.5 cores") && !limits.contains("NOT ENFORCED"),
        "PatternInfo.limits should say the cpu limit is enforced: {info}"
    );
    let cpu_dir = cgroup_dir(pid, "cpu");
    if let Some(dir) = &cpu_dir {
        let (quota, period) = (
            cgroup_file(dir, "cpu.cfs_quota_us"),
            cgroup_file(dir, "cpu.cfs_period_us"),
        );
        println!(
            "cpu cgroup {}: quota {quota} period {period}",
            dir.display()
        );
    }

    // Periods in which the cgroup was throttled (cpu.stat, v1 and v2).
    let throttled = || {
        let stat = cpu_dir
            .as_ref()
            .map(|d| cgroup_file(d, "cpu.stat"))
            .unwrap_or_default();
        stat.lines()
            .find_map(|l| l.strip_prefix("nr_throttled "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };

    // Let the spinning thread start before the window opens.
    assert!(
        wait_until(WAIT, || cpu_ticks(pid).is_some_and(|t| t > 0)),
        "pid {pid} never used any CPU"
    );
    let tck = clk_tck();
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid).expect("stat at the start of the window");
    let th0 = throttled();
    // The measurement window: CPU time over this much wall time (nothing
    // to wait for; the test runs alone, see .config/nextest.toml).
    std::thread::sleep(Duration::from_secs(5));
    let c1 = cpu_ticks(pid).expect("stat at the end of the window");
    let th1 = throttled();
    let elapsed = t0.elapsed().as_secs_f64();
    assert!(pid_alive(pid), "pid {pid} died during the window");
    let ratio = (c1 - c0) as f64 / tck / elapsed;
    println!(
        "busy pattern with cpu_limit 0.5: {ratio:.3} of a core over {elapsed:.2} s ({} ticks at {tck}/s)",
        c1 - c0
    );
    if let (Some(a), Some(b)) = (th0, th1) {
        println!(
            "cgroup cpu.stat nr_throttled: +{} periods in the window",
            b - a
        );
    }
    assert!(
        ratio <= 0.60,
        "cpu_limit 0.5 not enforced: the busy loop used {ratio:.3} of a core"
    );
    // Other test binaries run beside this one on 2 cores, so the loop may
    // get well under its half core; it must still have spun, and when it
    // had room to exceed the quota the kernel must have throttled it.
    assert!(
        ratio >= 0.05,
        "the busy loop used only {ratio:.3} of a core: it did not spin"
    );
    if let (Some(a), Some(b)) = (th0, th1)
        && ratio >= 0.45
    {
        assert!(
            b > a,
            "at {ratio:.3} of a core the cgroup was never throttled"
        );
    }
}

// ---------------------------------------------------------------------------
// 3. whole trees: a double-forked setsid grandchild does not survive
// ---------------------------------------------------------------------------

#[test]
fn a_double_forked_grandchild_in_its_own_session_does_not_survive_terminate() {
    let env = TestEnv::start();
    let id = "ns:escape:test-pattern";
    let child_file = env.path("grandchild.pid");
    let child_file_s = child_file.display().to_string();
    let reply = env.launch_running(
        PATTERN,
        "escape",
        &[
            ("TEST_SPAWN_CHILD", "double-fork"),
            ("TEST_CHILD_PID_FILE", child_file_s.as_str()),
            // It needs the SIGKILL of the whole cgroup, not only SIGTERM.
            ("TEST_CHILD_IGNORE_SIGTERM", "1"),
        ],
    );
    let pid = jint(&reply, "pid");
    let grandchild = wait_for(WAIT, || {
        fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    })
    .unwrap_or_else(|| panic!("the pattern never wrote {}", child_file.display()));
    assert_ne!(grandchild, pid);
    assert!(pid_alive(grandchild), "grandchild {grandchild} not running");
    let (s_inst, s_gc) = (session_of(pid), session_of(grandchild));
    assert!(
        s_inst.is_some() && s_gc.is_some() && s_inst != s_gc,
        "the grandchild should be in another session: instance {pid} session {s_inst:?}, grandchild {grandchild} session {s_gc:?}"
    );
    assert_eq!(
        stat_num(grandchild, 5),
        Some(grandchild as u64),
        "the grandchild should lead its own process group"
    );
    // It left the process group, but should still be in the instance's
    // cgroup (checked after the terminate, so that a failure reports both).
    let cgroups: Vec<(&str, Option<PathBuf>, Option<PathBuf>)> = ["memory", "freezer"]
        .into_iter()
        .map(|c| (c, cgroup_dir(pid, c), cgroup_dir(grandchild, c)))
        .collect();

    let t = env.terminate(id, 2, false).expect("TerminatePattern");
    assert!(jbool(&t, "success"), "{t}");
    assert!(
        !pid_alive(pid),
        "instance pid {pid} survived TerminatePattern"
    );
    assert!(
        !pid_alive(grandchild),
        "double-forked grandchild {grandchild} (another session) survived TerminatePattern; state {:?}; \
         cgroups (controller, instance's, grandchild's): {cgroups:?}\n--- launcher log ---\n{}",
        proc_state(grandchild),
        env.log_tail(40)
    );
    for (controller, a, b) in &cgroups {
        assert_eq!(
            a, b,
            "the {controller} cgroup of the grandchild differs from the instance's"
        );
    }
    env.wait_unlisted(id);
    assert!(
        env.token_processes().is_empty(),
        "processes of the tree left: {:?}",
        env.token_processes()
    );
}

// ---------------------------------------------------------------------------
// 4. launcher crash: 20 instances adopted, exits still noticed
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
// 5. undesired while down: terminated at start-up; a look-alike left alone
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
// 6. a recorded pid that is now another process is never signalled
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
// 7. --keep-instances-on-exit
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
// 8. an adopted instance is still probed
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
