//! Unit tests of the parent module.

use super::stack::CHILD_STACK;
use super::*;
use crate::spec::{InstanceKey, Isolation};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

#[test]
fn config_comes_after_the_manifest_environment() {
    let key = InstanceKey::new("p", Isolation::Namespace, "t", "").unwrap();
    let mut config = BTreeMap::new();
    config.insert("LEVEL".to_string(), "debug".to_string());
    let spec = InstanceSpec::new(key, config, None).unwrap();
    let mut pattern = crate::spec::manifest::parse_manifest(
        "name: p\nversion: '2'\nexecutable: x\nisolation_level: namespace\nenvironment: {LEVEL: info, OTHER: o}\n",
        "m",
        Path::new("/d"),
    )
    .unwrap();
    pattern.args.clear();
    let mut config = BTreeMap::new();
    config.insert("PRISM_INSTANCE".to_string(), "forged".to_string());
    let mut forged = spec.clone();
    forged.config = config.into();
    let env = environment(
        "ns:t:p",
        &forged,
        &pattern,
        Ports { grpc: 1, health: 2 },
        "me",
    );
    assert_eq!(
        env.last(),
        Some(&(
            "PRISM_INSTANCE".to_string(),
            crate::runtime::discover::marker("me", &forged)
        )),
        "the marker comes last, after config"
    );
    let env = environment(
        "ns:t:p",
        &spec,
        &pattern,
        Ports { grpc: 1, health: 2 },
        "me",
    );
    let last = |k: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(last("LEVEL").as_deref(), Some("debug"));
    assert_eq!(last("OTHER").as_deref(), Some("o"));
    assert_eq!(last("HEALTH_PORT").as_deref(), Some("2"));
    assert_eq!(last("ISOLATION").as_deref(), Some("namespace"));
    assert_eq!(last("PATTERN_VERSION").as_deref(), Some("2"));
}

fn sh_pattern(dir: &Path, script: &str) -> Pattern {
    let mut p = crate::spec::manifest::parse_manifest(
        "name: p\nversion: '1'\nexecutable: /bin/sh\nisolation_level: namespace\n",
        "m",
        dir,
    )
    .unwrap();
    p.args = vec!["-c".into(), script.into()];
    p
}

fn spec() -> InstanceSpec {
    let key = InstanceKey::new("p", Isolation::Namespace, "t", "").unwrap();
    let mut config = BTreeMap::new();
    config.insert("LEVEL".to_string(), "debug".to_string());
    InstanceSpec::new(key, config, None).unwrap()
}

fn wait(s: &Spawned) -> nix::sys::wait::WaitStatus {
    use std::os::fd::AsFd;
    nix::sys::wait::waitid(
        nix::sys::wait::Id::PIDFd(s.pidfd.as_fd()),
        nix::sys::wait::WaitPidFlag::WEXITED,
    )
    .unwrap()
}

#[test]
fn the_child_runs_in_its_group_dir_and_cgroups_with_a_clean_signal_state() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("pattern");
    std::fs::create_dir(&dir).unwrap();
    let procs = [t.path().join("a.procs"), t.path().join("b.procs")];
    for p in &procs {
        std::fs::write(p, "").unwrap();
    }
    let log = t.path().join("out.log");
    std::fs::write(&log, "earlier\n").unwrap();
    let script = "echo \"cwd=$(pwd) level=$LEVEL port=$HEALTH_PORT\"; \
                  echo \"pgid=$(cut -d' ' -f5 /proc/$$/stat) pid=$$\"; \
                  read line || echo stdin-empty; echo oops >&2; exit 3";
    let pattern = sh_pattern(&dir, script);
    let ports = Ports { grpc: 1, health: 2 };
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &procs, "me").unwrap();
    assert!(s.joined_cgroups);
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 3)
    );
    for p in &procs {
        assert_eq!(std::fs::read_to_string(p).unwrap(), "0");
    }
    let out = std::fs::read_to_string(&log).unwrap();
    let canon = std::fs::canonicalize(&dir).unwrap();
    assert!(out.starts_with("earlier\n"), "{out}");
    assert!(
        out.contains(&format!("cwd={} level=debug port=2\n", canon.display())),
        "{out}"
    );
    assert!(out.contains(&format!("pgid={0} pid={0}\n", s.pid)), "{out}");
    assert!(out.contains("stdin-empty\noops\n"), "{out}");

    // The signal state as the executable finds it (cat, not a shell,
    // which changes its own mask while it waits for its children).
    let mut cat = sh_pattern(&dir, "");
    cat.executable = PathBuf::from("/bin/cat");
    cat.args = vec!["/proc/self/status".into()];
    let status_log = t.path().join("status.log");
    let s = spawn("ns:t:p", &spec(), &cat, ports, &status_log, &[], "me").unwrap();
    wait(&s);
    let status = std::fs::read_to_string(&status_log).unwrap();
    assert!(status.contains("SigBlk:\t0000000000000000\n"), "{status}");
    // SIGPIPE (13) is not ignored, though the test process ignores it.
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .unwrap();
    let ign = u64::from_str_radix(ign, 16).unwrap();
    assert_eq!(ign & (1 << 12), 0, "SigIgn {ign:x}");
}

/// The cgroup v2 mount point (`/proc/self/mounts`).
#[cfg(target_arch = "x86_64")]
fn cgroup2_mount() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("this test needs a mounted cgroup v2 hierarchy")
}

/// A directory removed when dropped (a cgroup, once its process is gone).
#[cfg(target_arch = "x86_64")]
struct RemoveDir(PathBuf);

#[cfg(target_arch = "x86_64")]
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `clone3` is made on x86-64 only (elsewhere the child writes the files).
#[cfg(target_arch = "x86_64")]
#[test]
fn a_child_created_in_its_v2_cgroup_writes_no_join_file() {
    let t = tempfile::tempdir().unwrap();
    let name = format!("prism-launcher-spawn-test-{}", std::process::id());
    let cgroup = cgroup2_mount().join(&name);
    std::fs::create_dir(&cgroup).expect("create a cgroup v2 (as root)");
    let _remove = RemoveDir(cgroup.clone());
    let procs = [t.path().join("a.procs")];
    std::fs::write(&procs[0], "").unwrap();
    let mut cat = sh_pattern(t.path(), "");
    cat.executable = PathBuf::from("/bin/cat");
    cat.args = vec!["/proc/self/cgroup".into()];
    let log = t.path().join("cgroup.log");
    let join = CgroupJoin {
        files: &procs,
        into: Some(&cgroup),
    };
    let ports = Ports { grpc: 1, health: 2 };
    let s = spawn_in("ns:t:p", &spec(), &cat, ports, &log, join, "me").unwrap();
    assert!(s.joined_cgroups);
    let status = wait(&s);
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 0)
    );
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(out.contains(&format!("0::/{name}\n")), "{out}");
    // Created there by clone3: the fallback's write did not happen.
    assert_eq!(std::fs::read_to_string(&procs[0]).unwrap(), "");
}

#[test]
fn a_directory_that_is_no_cgroup_falls_back_to_the_join_files() {
    let t = tempfile::tempdir().unwrap();
    let procs = [t.path().join("a.procs")];
    std::fs::write(&procs[0], "").unwrap();
    let pattern = sh_pattern(t.path(), "exit 0");
    let join = CgroupJoin {
        files: &procs,
        into: Some(t.path()),
    };
    let ports = Ports { grpc: 1, health: 2 };
    let log = t.path().join("l");
    let s = spawn_in("ns:t:p", &spec(), &pattern, ports, &log, join, "me").unwrap();
    assert!(s.joined_cgroups);
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 0)
    );
    assert_eq!(std::fs::read_to_string(&procs[0]).unwrap(), "0");
}

#[test]
fn a_cgroup_that_cannot_be_joined_is_reported_not_fatal() {
    let t = tempfile::tempdir().unwrap();
    let pattern = sh_pattern(t.path(), "exit 0");
    let ports = Ports { grpc: 1, health: 2 };
    let procs = [t.path().join("missing").join("cgroup.procs")];
    let s = spawn(
        "ns:t:p",
        &spec(),
        &pattern,
        ports,
        &t.path().join("l"),
        &procs,
        "me",
    )
    .unwrap();
    assert!(!s.joined_cgroups);
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 0)
    );
}

#[test]
fn exec_and_directory_failures_are_errors_naming_the_cause() {
    let t = tempfile::tempdir().unwrap();
    let ports = Ports { grpc: 1, health: 2 };
    let log = t.path().join("l");
    let mut missing = sh_pattern(t.path(), "");
    missing.executable = t.path().join("nope");
    let e = spawn("ns:t:p", &spec(), &missing, ports, &log, &[], "me").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("cannot execute "), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");

    let mut not_exe = sh_pattern(t.path(), "");
    not_exe.executable = log.clone();
    let text = spawn("ns:t:p", &spec(), &not_exe, ports, &log, &[], "me")
        .unwrap_err()
        .to_string();
    assert!(text.contains("Permission denied"), "{text}");

    let gone = sh_pattern(&t.path().join("gone"), "exit 0");
    let text = spawn("ns:t:p", &spec(), &gone, ports, &log, &[], "me")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("cannot enter the pattern directory"),
        "{text}"
    );
}

#[test]
fn children_get_the_open_file_limit_the_launcher_started_with() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    keep_child_fd_limit(512, hard);
    let t = tempfile::tempdir().unwrap();
    let mut cat = sh_pattern(t.path(), "");
    cat.executable = PathBuf::from("/bin/cat");
    cat.args = vec!["/proc/self/limits".into()];
    let log = t.path().join("l");
    let ports = Ports { grpc: 1, health: 2 };
    let s = spawn("ns:t:p", &spec(), &cat, ports, &log, &[], "me").unwrap();
    wait(&s);
    let limits = std::fs::read_to_string(&log).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(line.split_whitespace().nth(3), Some("512"), "{line}");
}

#[test]
fn an_executable_without_a_shebang_line_runs_under_sh() {
    let t = tempfile::tempdir().unwrap();
    let script = t.path().join("plain");
    std::fs::write(&script, "echo \"plain script ran with $1\"\nexit 4\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut pattern = sh_pattern(t.path(), "");
    pattern.executable = script;
    pattern.args = vec!["an-arg".into()];
    let log = t.path().join("l");
    let ports = Ports { grpc: 1, health: 2 };
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 4)
    );
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out, "plain script ran with an-arg\n");
}

#[test]
fn exits_are_described_by_code_or_signal() {
    assert_eq!(
        describe_exit(std::process::ExitStatus::from_raw(9)),
        "killed by signal 9 (SIGKILL)"
    );
    assert_eq!(
        describe_exit(std::process::ExitStatus::from_raw(1 << 8)),
        "exited with status 1"
    );
}

#[test]
fn the_child_stack_has_a_guard_page_below_it() {
    let mut stack = ChildStack::new().unwrap();
    let usable = stack.as_mut_slice();
    assert_eq!(usable.len(), CHILD_STACK);
    usable[0] = 1; // the lowest usable byte is writable
    let lowest = usable.as_ptr() as usize;
    let guard = lowest - stack.page;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let (range, _) = l.split_once(' ').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            a <= guard && guard < b
        })
        .expect("the guard page is mapped");
    assert!(line.contains(" ---p "), "not a guard page: {line}");
}

#[test]
fn groups_zero_and_one_are_never_signalled() {
    assert!(signal_group(0, Signal::SIGTERM).is_err());
    assert!(signal_group(1, Signal::SIGTERM).is_err());
}

/// `sh_pattern` run as nobody, resolved as the catalog resolves it.
fn as_nobody(dir: &Path, script: &str) -> (Pattern, nix::unistd::User) {
    use crate::spec::run_as::{Account, Ids, RunAs};
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test switches users: run it as root"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let mut p = sh_pattern(dir, script);
    p.run_as = Some(RunAs {
        user: Account::Name("nobody".into()),
        group: None,
        ids: Some(Ids {
            uid: nobody.uid.as_raw(),
            gid: nobody.gid.as_raw(),
            name: Some("nobody".into()),
            home: Some(nobody.dir.clone()),
        }),
    });
    (p, nobody)
}

/// A temp dir others may traverse, whatever mode tempfile gives it.
fn searchable_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    t
}

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_child_runs_as_its_manifests_user_with_its_groups_and_no_new_privileges() {
    let t = searchable_tempdir();
    let dir = t.path().join("pattern");
    std::fs::create_dir(&dir).unwrap();
    // The log is written through the descriptor the launcher opened: a
    // file nobody could not open itself (0600 root, in a root-only dir).
    let logs = t.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    std::fs::set_permissions(&logs, std::fs::Permissions::from_mode(0o700)).unwrap();
    let log = logs.join("out.log");
    let script =
        "cat /proc/self/status; echo \"home=$HOME user=$USER logname=$LOGNAME cwd=$(pwd)\"";
    let (pattern, nobody) = as_nobody(&dir, script);
    let ports = Ports { grpc: 1, health: 2 };
    let dumpable = nix::sys::prctl::get_dumpable().unwrap();
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
    assert_eq!(
        nix::sys::prctl::get_dumpable().unwrap(),
        dumpable,
        "the launcher's own dumpable flag is as it was"
    );
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 0)
    );
    let out = std::fs::read_to_string(&log).unwrap();
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    assert_eq!(
        status_field(&out, "Uid"),
        format!("{uid} {uid} {uid} {uid}")
    );
    assert_eq!(
        status_field(&out, "Gid"),
        format!("{gid} {gid} {gid} {gid}")
    );
    let mut groups: Vec<String> = nix::unistd::getgrouplist(c"nobody", nobody.gid)
        .unwrap()
        .iter()
        .map(|g| g.to_string())
        .collect();
    groups.sort_by_key(|g| g.parse::<u32>().unwrap());
    groups.dedup();
    assert_eq!(status_field(&out, "Groups"), groups.join(" "));
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    let canon = std::fs::canonicalize(&dir).unwrap();
    assert!(
        out.contains(&format!(
            "home={} user=nobody logname=nobody cwd={}\n",
            nobody.dir.display(),
            canon.display()
        )),
        "{out}"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn no_new_privileges_false_leaves_it_off() {
    let t = searchable_tempdir();
    let log = t.path().join("l");
    let mut pattern = sh_pattern(t.path(), "grep NoNewPrivs /proc/self/status");
    let ports = Ports { grpc: 1, health: 2 };
    pattern.no_new_privileges = false;
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
    wait(&s);
    pattern.no_new_privileges = true;
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
    wait(&s);
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out, "NoNewPrivs:\t0\nNoNewPrivs:\t1\n");
}

#[test]
fn a_pattern_directory_the_user_cannot_enter_is_an_error_naming_it() {
    // Root may enter, nobody may not.
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let dir = t.path().join("pattern");
    std::fs::create_dir(&dir).unwrap();
    let (pattern, nobody) = as_nobody(&dir, "exit 0");
    let ports = Ports { grpc: 1, health: 2 };
    let e = spawn(
        "ns:t:p",
        &spec(),
        &pattern,
        ports,
        &t.path().join("l"),
        &[],
        "me",
    )
    .unwrap_err();
    assert!(!e.is_launcher_side(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "cannot enter the pattern directory {} as uid {} gid {}",
            dir.display(),
            nobody.uid,
            nobody.gid
        )),
        "{text}"
    );
    assert!(text.contains("Permission denied"), "{text}");
}

#[test]
fn a_user_that_was_never_looked_up_is_not_started() {
    let t = searchable_tempdir();
    let (mut pattern, _) = as_nobody(t.path(), "exit 0");
    if let Some(r) = pattern.run_as.as_mut() {
        r.ids = None;
    }
    let ports = Ports { grpc: 1, health: 2 };
    let e = spawn(
        "ns:t:p",
        &spec(),
        &pattern,
        ports,
        &t.path().join("l"),
        &[],
        "me",
    )
    .unwrap_err();
    assert!(
        matches!(e, SpawnError::RunAs(RunAsError::Unresolved { .. })),
        "{e}"
    );
}

#[test]
fn a_child_that_shares_our_descriptors_until_it_unshares_gets_only_its_stdio_and_leaves_ours() {
    use std::os::fd::AsRawFd;
    super::slots::reserve();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("pattern");
    std::fs::create_dir(&dir).unwrap();
    // Many descriptors of ours, some of them without close-on-exec.
    let mine: Vec<std::fs::File> = (0..300)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    for f in mine.iter().step_by(7) {
        nix::fcntl::fcntl(
            f,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
    }
    let ino = |fd: i32| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| (m.dev(), m.ino()))
    };
    let ours: Vec<(i32, _)> = (0..3)
        .chain(mine.iter().map(AsRawFd::as_raw_fd))
        .map(|fd| (fd, ino(fd).unwrap()))
        .collect();
    let log = t.path().join("out.log");
    let script = "for f in /proc/$$/fd/*; do echo \"fd ${f##*/}\"; done; echo done >&2";
    let pattern = sh_pattern(&dir, script);
    let ports = Ports { grpc: 1, health: 2 };
    let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
    assert_eq!(
        wait(&s),
        nix::sys::wait::WaitStatus::Exited(Pid::from_raw(s.pid as i32), 0)
    );
    let out = std::fs::read_to_string(&log).unwrap();
    let fds: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("fd "))
        .map(|n| n.parse().unwrap())
        .collect();
    // 0-2, and the directory the shell reads the list from.
    assert!(
        fds.len() <= 4 && fds.iter().take(3).eq(&[0, 1, 2]),
        "the child's descriptors: {out}"
    );
    assert!(out.ends_with("done\n"), "stderr into the log too: {out}");
    // Ours are all open, each on the same file as before.
    for (fd, was) in ours {
        assert_eq!(ino(fd).unwrap(), was, "descriptor {fd} of the launcher");
    }
}

#[test]
fn the_log_is_made_owner_only_and_left_alone_when_it_already_is() {
    use std::os::unix::fs::MetadataExt;
    let t = tempfile::tempdir().unwrap();
    let log = t.path().join("l.log");
    std::fs::write(&log, "old\n").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let pattern = sh_pattern(t.path(), "true");
    let ports = Ports { grpc: 1, health: 2 };
    let run = || {
        let s = spawn("ns:t:p", &spec(), &pattern, ports, &log, &[], "me").unwrap();
        wait(&s);
    };
    run();
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    // Already owner-only, the file's inode is not changed again: a chmod
    // would move its ctime (and wake every inotify watcher of the logs).
    let ctime = (meta.ctime(), meta.ctime_nsec());
    run();
    let meta = std::fs::metadata(&log).unwrap();
    assert_eq!((meta.ctime(), meta.ctime_nsec()), ctime);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "old\n");
}
