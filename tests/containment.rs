//! Containment: kernel-enforced limits (cgroups) and whole process
//! trees: an OOM kill reported and restarted, limits kept across restarts
//! and rewritten with the manifest, a CPU quota, a double-forked
//! grandchild that does not outlive its instance. Surviving a launcher
//! crash is in `tests/adoption.rs`.
//!
//! Real binary, real processes. These tests need root (or a
//! writable cgroup tree) and a cgroup v1 `memory` / `cpu` hierarchy or a
//! writable v2 subtree, as on the CI machines.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const PATTERN: &str = "test-pattern";
const MIB_64: u64 = 64 * 1024 * 1024;

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

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

#[test]
fn a_clean_shutdown_removes_the_launchers_cgroups_in_every_hierarchy() {
    let mut env = TestEnv::start();
    let reply = env.launch_running(PATTERN, "tidy", &[]);
    let pid = jint(&reply, "pid");
    // The launcher's own cgroup is the parent of each instance cgroup.
    let parents: Vec<(&str, PathBuf)> = ["memory", "cpu", "freezer", "pids"]
        .into_iter()
        .filter_map(|c| {
            let own = cgroup_dir(pid, c)?;
            Some((c, own.parent()?.to_path_buf()))
        })
        .collect();
    assert!(
        parents.iter().any(|(c, _)| *c == "pids"),
        "no pids cgroup for instance {pid}: {parents:?}"
    );
    for (c, dir) in &parents {
        assert!(dir.is_dir(), "the {c} parent {} is missing", dir.display());
    }
    let status = env.launcher().stop();
    assert!(status.success(), "the launcher exited with {status}");
    let left: Vec<_> = parents.iter().filter(|(_, d)| d.exists()).collect();
    assert!(
        left.is_empty(),
        "cgroups left after a clean shutdown: {left:?}"
    );
}
