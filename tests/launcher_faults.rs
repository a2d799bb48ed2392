//! The launcher's own troubles are not its instances' failures, and a
//! pattern cannot take the machine down: a state directory that turns
//! read-only, one that is read-only from the start, and a fork bomb.
//!
//! The read-only directories are real read-only bind mounts (the tests run
//! as root), always unmounted by the test, even when it fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// A read-only bind mount of a directory onto itself, undone on drop.
struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount {args:?} {}: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["--bind"]);
        let mut ro = ReadOnly {
            dir: dir.to_path_buf(),
            mounted: true,
        };
        let out = Command::new("mount")
            .args(["-o", "remount,ro,bind"])
            .arg(dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            ro.release();
            panic!(
                "cannot remount {} read-only: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            fs::write(dir.join("probe"), "x").is_err(),
            "{} is still writable",
            dir.display()
        );
        ro
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.mounted) {
            // Lazily: the launcher may hold files open through the mount
            // (its log threads do); new opens see the writable directory
            // at once either way.
            let ok = Command::new("umount")
                .arg("-l")
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok || std::thread::panicking(),
                "cannot unmount {}",
                self.dir.display()
            );
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        self.release();
    }
}

fn health(env: &TestEnv) -> Value {
    env.grpc("Health", serde_json::json!({}))
        .unwrap_or_else(|e| panic!("Health failed: {e}"))
}

fn problems(h: &Value) -> String {
    h.get("problems")
        .map(ToString::to_string)
        .unwrap_or_default()
}

/// Lines of the launcher's log saying it could not start `id`.
fn cannot_start(env: &TestEnv, id: &str) -> usize {
    env.read_log()
        .lines()
        .filter(|l| l.contains(id) && l.contains("the launcher cannot start it"))
        .count()
}

#[test]
fn a_state_directory_that_turns_read_only_delays_restarts_but_never_opens_the_circuit() {
    let env = TestEnv::start();
    let a = env.launch_running("test-pattern", "a", &[]);
    let b = env.launch_running("test-pattern", "b", &[]);
    let (a_id, a_pid) = ("ns:a:test-pattern", jint(&a, "pid"));
    let b_before = vec![("ns:b:test-pattern".to_string(), jint(&b, "pid"))];

    let mut ro = ReadOnly::new(&env.state_dir.join("logs"));
    signal(a_pid, Signal::SIGKILL);
    // More attempts than the circuit breaker allows failures.
    let failed = |id: &str| {
        env.find(id)
            .is_some_and(|e| jstr(&e, "state") == "STATE_FAILED")
    };
    assert!(
        wait_until(WAIT, || cannot_start(&env, a_id) >= 7 || failed(a_id)),
        "the launcher never retried {a_id}:\n{}",
        env.log_tail(40)
    );
    let h = health(&env);
    assert!(!jbool(&h, "healthy"), "Health must say unhealthy: {h}");
    assert!(
        problems(&h).contains("Read-only file system"),
        "Health must say what is wrong: {h}"
    );
    let entry = env.find(a_id).expect("still listed");
    assert_ne!(
        jstr(&entry, "state"),
        "STATE_FAILED",
        "the launcher's own failure opened the circuit: {entry}"
    );
    assert!(
        jint(&entry, "errorCount") <= 1,
        "only the crash counts: {entry}"
    );
    assert!(
        jstr(&entry, "lastError").contains("Read-only file system"),
        "{entry}"
    );

    ro.release();
    env.wait_restarted(a_id, a_pid);
    assert!(
        wait_until(WAIT, || jbool(&health(&env), "healthy")),
        "Health stays unhealthy once the directory is writable: {}",
        health(&env)
    );
    env.assert_unharmed(&b_before);
}

#[test]
fn a_state_directory_read_only_from_the_start_is_reported_and_recovers() {
    let mut env = TestEnv::start();
    env.launcher().stop();
    let mut ro = ReadOnly::new(&env.state_dir.join("logs"));
    let docs: Vec<String> = ["r1", "r2", "r3"]
        .iter()
        .map(|ns| desired_doc("test-pattern", ns, &[]))
        .collect();
    env.write_desired("ro.yaml", &desired_stream(&docs));
    env.launcher().restart();
    let ids = [
        "ns:r1:test-pattern",
        "ns:r2:test-pattern",
        "ns:r3:test-pattern",
    ];
    let failed = |id: &str| {
        env.find(id)
            .is_some_and(|e| jstr(&e, "state") == "STATE_FAILED")
    };
    assert!(
        wait_until(WAIT, || ids
            .iter()
            .all(|id| cannot_start(&env, id) >= 7 || failed(id))),
        "the launcher never retried all three:\n{}",
        env.log_tail(40)
    );
    let h = health(&env);
    assert!(
        !jbool(&h, "healthy") && problems(&h).contains("Read-only file system"),
        "Health must say what is wrong: {h}"
    );
    for id in ids {
        let e = env.find(id).expect("listed");
        assert_ne!(jstr(&e, "state"), "STATE_FAILED", "{e}");
    }
    ro.release();
    for id in ids {
        env.wait_running(id);
    }
    assert!(
        wait_until(WAIT, || jbool(&health(&env), "healthy")),
        "{}",
        health(&env)
    );
    env.assert_one_process_per_instance();
}

#[test]
fn a_process_table_that_cannot_be_written_is_reported_until_it_can() {
    let env = TestEnv::start();
    let a = env.launch_running("test-pattern", "a", &[]);
    let (a_id, a_pid) = ("ns:a:test-pattern", jint(&a, "pid"));
    let mut ro = ReadOnly::new(&env.state_dir);
    // The table changes (the process is gone), and cannot be written.
    signal(a_pid, Signal::SIGKILL);
    assert!(
        wait_until(WAIT, || problems(&health(&env))
            .contains("cannot write the process table")),
        "Health must say the table cannot be written: {}\n{}",
        health(&env),
        env.log_tail(30)
    );
    assert!(!jbool(&health(&env), "healthy"));
    // Once it can, the writer's retry succeeds and the problem goes.
    ro.release();
    env.wait_restarted(a_id, a_pid);
    assert!(
        wait_until(WAIT, || jbool(&health(&env), "healthy")),
        "Health stays unhealthy once the table can be written: {}",
        health(&env)
    );
    let table = fs::read_to_string(env.state_dir.join("processes.json")).expect("the table");
    assert!(table.contains(a_id), "{table}");
}

/// The pids cgroup directory of `pid` (cgroup v1 `pids` or v2).
fn pids_cgroup(pid: i64) -> PathBuf {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/<pid>/cgroup");
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let path = path.unwrap_or_default().trim_start_matches('/');
        match controllers {
            Some(c) if c.split(',').any(|c| c == "pids") => {
                return Path::new("/sys/fs/cgroup/pids").join(path);
            }
            Some("") if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() => {
                return Path::new("/sys/fs/cgroup").join(path);
            }
            _ => {}
        }
    }
    panic!("pid {pid} is in no pids cgroup:\n{text}");
}

#[test]
fn a_fork_bomb_stops_at_pids_max_and_is_reported() {
    let env = TestEnv::builder()
        .raw_manifest(
            "bomb",
            &format!(
                "name: bomb\nversion: 1.0.0\nexecutable: {TEST_PATTERN_BIN:?}\n\
                 isolation_level: namespace\nenvironment: {{TEST_FORK_BOMB: '300'}}\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\nresources:\n  pids: 64\n"
            ),
        )
        .arg("--orphan-sweep-interval")
        .arg("1s")
        .start();
    let calm = env.launch_running("test-pattern", "calm", &[]);
    let default_limit = fs::read_to_string(pids_cgroup(jint(&calm, "pid")).join("pids.max"))
        .expect("pids.max of an instance");
    assert_eq!(default_limit.trim(), "4096", "the default pids limit");

    let r = env.launch_running("bomb", "x", &[]);
    let cg = pids_cgroup(jint(&r, "pid"));
    assert!(
        wait_until(WAIT, || env
            .instance_log("ns:x:bomb")
            .contains("fork bomb:")),
        "the bomb never finished forking"
    );
    let said = env.instance_log("ns:x:bomb");
    assert!(!said.contains("300 of 300"), "every fork succeeded: {said}");
    assert_eq!(
        fs::read_to_string(cg.join("pids.max"))
            .expect("pids.max")
            .trim(),
        "64"
    );
    let current: u64 = fs::read_to_string(cg.join("pids.current"))
        .expect("pids.current")
        .trim()
        .parse()
        .expect("a number");
    assert!(current <= 64, "pids.current is {current}");
    assert!(
        env.token_processes().len() <= 64 + 2,
        "{} processes carry the test's token",
        env.token_processes().len()
    );
    assert!(
        wait_until(WAIT, || env
            .read_log()
            .contains("ns:x:bomb: reached its pids limit of 64")),
        "the limit must be reported:\n{}",
        env.log_tail(30)
    );
    let reply = env.terminate("ns:x:bomb", 5, false).expect("terminate");
    assert!(jbool(&reply, "success"), "{reply}");
    assert!(
        wait_until(WAIT, || fs::read_to_string(cg.join("cgroup.procs"))
            .map_or(true, |p| p.trim().is_empty())),
        "the bomb's processes outlived its terminate"
    );
    env.assert_unharmed(&[("ns:calm:test-pattern".to_string(), jint(&calm, "pid"))]);
}
