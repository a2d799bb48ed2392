//! Instance privileges: an instance whose manifest says `user: nobody`
//! runs as nobody (uid, gid and nobody's supplementary groups, not root's)
//! with `no_new_privs`, writes its log, keeps the clean environment,
//! descriptors and pids.max of every instance, and is restarted, adopted
//! by a new launcher and terminated as any other; `no_new_privileges:
//! false` leaves the flag off; an unknown user makes the manifest invalid;
//! session ids that look like paths are refused.
//!
//! Real binary, as root (only root can switch users). Nobody must be able
//! to reach the executable and enter the pattern directory: cargo's target
//! directory may sit under a home only its owner can enter, and the test's
//! temp root may be 0700 (tempfile's mode depends on its version). So the
//! test copies test-pattern into a directory of its own (mode 0755) before
//! the launcher starts, and makes its temp root searchable by others (0711)
//! and `patterns/` readable (0755) before the first launch.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, User, getgrouplist};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// Helpers of this file
// ---------------------------------------------------------------------------

/// A copy of test-pattern that any user can run, in a directory of its
/// own, removed when dropped.
struct RunnableByAll {
    dir: PathBuf,
    exe: PathBuf,
}

impl RunnableByAll {
    fn new() -> RunnableByAll {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "prism-launcher-runas-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        let exe = dir.join("test-pattern");
        fs::copy(TEST_PATTERN_BIN, &exe).expect("copy test-pattern");
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        RunnableByAll { dir, exe }
    }

    fn path(&self) -> String {
        self.exe.display().to_string()
    }
}

impl Drop for RunnableByAll {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A manifest running `exe` as `name`, with `extra` keys appended.
fn manifest(name: &str, exe: &str, extra: &str) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    format!(
        "name: {name}\nversion: 1.0.0\nexecutable: {}\nisolation_level: namespace\n\
         inherit_env: [PRISM_TEST_TOKEN]\n\
         healthcheck:\n  path: /health\n  interval: 1s\n  timeout: 1s\n  failure_threshold: 3\n\
         {extra}",
        q(exe)
    )
}

/// Lets other users enter the test's temp root and its pattern directories.
fn searchable_by_others(env: &TestEnv) {
    fs::set_permissions(&env.root, fs::Permissions::from_mode(0o711)).expect("chmod root");
    let mut dirs = vec![env.patterns_dir.clone()];
    for entry in fs::read_dir(&env.patterns_dir).expect("read patterns/") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            dirs.push(p);
        }
    }
    for d in dirs {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    }
}

/// A field of `/proc/<pid>/status`, its values joined by single spaces.
fn status(pid: i64, field: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn nobody() -> User {
    User::from_name("nobody")
        .expect("read passwd")
        .expect("this machine has a nobody user")
}

/// Asserts that `pid` runs as nobody with nobody's groups and no_new_privs.
fn assert_runs_as_nobody(pid: i64) {
    let n = nobody();
    let (uid, gid) = (n.uid.as_raw(), n.gid.as_raw());
    assert_eq!(status(pid, "Uid"), format!("{uid} {uid} {uid} {uid}"));
    assert_eq!(status(pid, "Gid"), format!("{gid} {gid} {gid} {gid}"));
    let mut groups: Vec<u32> = getgrouplist(c"nobody", Gid::from_raw(gid))
        .expect("getgrouplist")
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let shown: Vec<u32> = status(pid, "Groups")
        .split_whitespace()
        .map(|g| g.parse().expect("a gid"))
        .collect();
    assert_eq!(shown, groups, "nobody's groups, none of root's");
    assert!(!shown.contains(&0), "root's group 0 was kept: {shown:?}");
    assert_eq!(status(pid, "NoNewPrivs"), "1");
    assert_eq!(status(pid, "CapEff"), "0000000000000000");
}

// ---------------------------------------------------------------------------
// 1. user: nobody
// ---------------------------------------------------------------------------

#[test]
fn an_instance_with_user_nobody_runs_as_nobody_and_is_restarted_adopted_and_terminated() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: only root can switch users"
    );
    let bin = RunnableByAll::new();
    let mut env = TestEnv::builder()
        .raw_manifest(
            "as-nobody",
            &manifest("as-nobody", &bin.path(), "user: nobody\n"),
        )
        .start();
    searchable_by_others(&env);
    let id = "ns:a:as-nobody";

    let pid = jint(&env.launch_running("as-nobody", "a", &[]), "pid");
    assert_runs_as_nobody(pid);
    let n = nobody();
    assert_eq!(environ_var(pid, "USER").as_deref(), Some("nobody"));
    assert_eq!(environ_var(pid, "LOGNAME").as_deref(), Some("nobody"));
    assert_eq!(
        environ_var(pid, "HOME").map(PathBuf::from),
        Some(n.dir.clone())
    );
    // What every instance gets holds for it too: a clean environment, no
    // descriptor of the launcher's, its own pids cgroup with pids.max.
    let vars = environ(pid).expect("its environment");
    assert!(
        !vars.contains_key("RUST_LOG"),
        "the launcher's environment leaked: {vars:?}"
    );
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("its descriptors") {
        let entry = entry.expect("descriptor entry");
        let n: i32 = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(-1);
        let target = fs::read_link(entry.path()).unwrap_or_default();
        assert!(
            n <= 2 || !target.is_absolute(),
            "descriptor {n} ({}) crossed the exec",
            target.display()
        );
    }
    let pids = cgroup_dir(pid, "pids").expect("a pids cgroup");
    assert!(pids.to_string_lossy().contains(id), "{}", pids.display());
    assert_eq!(cgroup_file(&pids, "pids.max"), "4096");

    // Its output reaches its log, a file only root may open (0600), which
    // the launcher opened for it.
    let log = env.instance_log_path(id);
    let started = |pid: i64| format!("test-pattern starting pid={pid} ");
    assert!(
        wait_until(WAIT, || env.instance_log(id).contains(&started(pid))),
        "no start line of pid {pid} in {}:\n{}",
        log.display(),
        env.instance_log(id)
    );
    let meta = fs::metadata(&log).expect("the instance log");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);

    // A crash: restarted, as nobody again.
    signal(pid, Signal::SIGKILL);
    let again = jint(&env.wait_restarted(id, pid), "pid");
    assert_runs_as_nobody(again);
    assert!(
        wait_until(WAIT, || env.instance_log(id).contains(&started(again))),
        "no start line of pid {again}:\n{}",
        env.instance_log(id)
    );

    // A launcher killed and started again adopts it: same pid, no copy.
    env.launcher().kill9();
    env.launcher().restart();
    env.wait_entry(id, &format!("adopted with pid {again}"), |p| {
        is_running(p) && jint(p, "pid") == again
    });
    assert_eq!(env.token_processes(), vec![again as i32], "one process");

    // Terminated as any other instance (the launcher signals it as root).
    env.terminate(id, 5, false)
        .unwrap_or_else(|e| panic!("TerminatePattern: {e}"));
    env.wait_unlisted(id);
    assert!(
        wait_until(WAIT, || !pid_alive(again)),
        "pid {again} outlived its termination"
    );
}

// ---------------------------------------------------------------------------
// 2. no_new_privileges: false
// ---------------------------------------------------------------------------

#[test]
fn no_new_privileges_is_on_by_default_and_false_turns_it_off() {
    let env = TestEnv::builder()
        .raw_manifest(
            "nnp-off",
            &manifest("nnp-off", TEST_PATTERN_BIN, "no_new_privileges: false\n"),
        )
        .raw_manifest("nnp-on", &manifest("nnp-on", TEST_PATTERN_BIN, ""))
        .start();
    let off = jint(&env.launch_running("nnp-off", "a", &[]), "pid");
    let on = jint(&env.launch_running("nnp-on", "a", &[]), "pid");
    assert_eq!(status(off, "NoNewPrivs"), "0");
    assert_eq!(status(on, "NoNewPrivs"), "1");
    // Neither names a user: both run as the launcher's (root here).
    let me = nix::unistd::geteuid().as_raw();
    for pid in [off, on] {
        assert_eq!(status(pid, "Uid"), format!("{me} {me} {me} {me}"));
    }
}

// ---------------------------------------------------------------------------
// 3. an unknown user
// ---------------------------------------------------------------------------

#[test]
fn an_unknown_user_makes_the_manifest_invalid_naming_it() {
    let env = TestEnv::builder()
        .raw_manifest(
            "ghost",
            &manifest("ghost", TEST_PATTERN_BIN, "user: no-such-user-x9\n"),
        )
        .start();
    let mut last = None;
    let s = wait_for(WAIT, || {
        last = env.source("ghost/manifest.yaml");
        last.clone().filter(|s| !jbool(s, "ok"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the manifest was never reported invalid: {last:?}\n--- launcher log ---\n{}",
            env.log_tail(40)
        )
    });
    assert_eq!(jstr(&s, "kind"), "manifest", "{s}");
    let error = jstr(&s, "error");
    assert!(
        error.contains("key `user`") && error.contains("\"no-such-user-x9\""),
        "{s}"
    );
    assert!(
        env.read_log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("no-such-user-x9")),
        "no ERROR line naming the user:\n{}",
        env.log_tail(40)
    );
    // Like any manifest that never was valid: the pattern is not known.
    let e = env
        .launch_ns("ghost", "a", &[])
        .expect_err("a launch of a pattern whose manifest is invalid");
    assert_eq!(e.code, "NotFound", "{e}");
    assert!(env.list().is_empty(), "{:?}", env.list());
}

// ---------------------------------------------------------------------------
// 4. session ids that look like paths
// ---------------------------------------------------------------------------

#[test]
fn session_ids_and_namespaces_that_look_like_paths_are_refused() {
    let env = TestEnv::start();
    for (namespace, session) in [
        ("a", "../../escape"),
        ("a", ".."),
        ("a", "x/y"),
        ("../escape", "s"),
        ("a", "/etc/passwd"),
    ] {
        let e = env
            .grpc(
                "LaunchPattern",
                json!({
                    "pattern_name": "test-pattern",
                    "isolation": "ISOLATION_SESSION",
                    "namespace": namespace,
                    "session_id": session,
                }),
            )
            .expect_err("a session id or namespace with a path in it");
        assert_eq!(e.code, "InvalidArgument", "{namespace} {session}: {e}");
    }
    assert!(env.list().is_empty(), "{:?}", env.list());
    let logs: Vec<_> = fs::read_dir(env.state_dir.join("logs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(logs.is_empty(), "log files of refused launches: {logs:?}");
    assert!(!Path::new(&env.root).join("escape.log").exists());
    assert!(!env.state_dir.join("escape.log").exists());
    env.assert_still_serving();
}
