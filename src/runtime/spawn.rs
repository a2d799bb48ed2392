//! Starting pattern processes (SPEC §5) and signalling their process groups.
//!
//! Builds the environment, working directory, process group and output
//! redirection; makes no decision about when to start or stop.

use std::fs::OpenOptions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::reconcile::observed::Ports;
use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

/// A process that could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The executable cannot be run.
    #[error("cannot execute {path}: {source}")]
    Exec {
        /// The executable.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The log file cannot be opened.
    #[error("cannot open log file {path}: {source}")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Checks that `path` is an executable file, without running it.
pub fn check_executable(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{}: not executable (mode {:o})",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    Ok(())
}

/// The environment a pattern process gets on top of the launcher's own,
/// in the order of SPEC §5 (later entries win).
pub fn environment(
    process_id: &str,
    spec: &InstanceSpec,
    pattern: &Pattern,
    ports: Ports,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATTERN_NAME".to_string(), pattern.name.clone()),
        ("PATTERN_VERSION".to_string(), pattern.version.clone()),
        ("PROCESS_ID".to_string(), process_id.to_string()),
        ("NAMESPACE".to_string(), spec.key.namespace.clone()),
        ("SESSION_ID".to_string(), spec.key.session_id.clone()),
        ("ISOLATION".to_string(), spec.key.isolation.to_string()),
        ("HEALTH_PORT".to_string(), ports.health.to_string()),
        ("GRPC_PORT".to_string(), ports.grpc.to_string()),
    ];
    env.extend(
        pattern
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    env.extend(spec.config.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// Starts the process in its own process group, in its pattern directory,
/// with stdout and stderr appended to `log`. When `cgroup_procs` names
/// `cgroup.procs` files, the child joins those cgroups before it execs the
/// pattern, so nothing it forks can start outside them.
pub fn spawn(
    process_id: &str,
    spec: &InstanceSpec,
    pattern: &Pattern,
    ports: Ports,
    log: &Path,
    cgroup_procs: &[PathBuf],
) -> Result<tokio::process::Child, SpawnError> {
    let log_err = |source| SpawnError::Log {
        path: log.to_path_buf(),
        source,
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let mut cmd = tokio::process::Command::new(&pattern.executable);
    cmd.args(&pattern.args)
        .current_dir(&pattern.dir)
        .envs(environment(process_id, spec, pattern, ports))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(false);
    if !cgroup_procs.is_empty() {
        join_cgroups_before_exec(&mut cmd, cgroup_procs);
    }
    cmd.spawn().map_err(|source| SpawnError::Exec {
        path: pattern.executable.clone(),
        source,
    })
}

/// Makes the child write "0" (itself) into each `cgroup.procs` between
/// fork and exec. This costs the posix_spawn fast path (std forks when a
/// pre-exec hook is set), which is the price of a race-free placement on
/// cgroup v1; the paths are turned into C strings before the fork so the
/// child allocates nothing. A failed write leaves the placement to the
/// caller's move after the spawn.
#[allow(unsafe_code)] // pre_exec is unsafe: the closure runs between fork and exec
fn join_cgroups_before_exec(cmd: &mut tokio::process::Command, cgroup_procs: &[PathBuf]) {
    use std::os::unix::ffi::OsStrExt;
    let paths: Vec<std::ffi::CString> = cgroup_procs
        .iter()
        .filter_map(|p| std::ffi::CString::new(p.as_os_str().as_bytes()).ok())
        .collect();
    // SAFETY: the closure only calls open(2), write(2) and close(2), which
    // are async-signal-safe, on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for path in &paths {
                if let Ok(fd) = nix::fcntl::open(
                    path.as_c_str(),
                    nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ) {
                    let _ = nix::unistd::write(&fd, b"0");
                }
            }
            Ok(())
        });
    }
}

/// Sends `sig` to process group `pgid`. A group that is already gone is
/// not an error.
pub fn signal_group(pgid: u32, sig: Signal) -> Result<(), nix::Error> {
    let Ok(raw) = i32::try_from(pgid) else {
        return Err(nix::Error::EINVAL);
    };
    if raw <= 1 {
        // Never signal group 0 (our own) or 1 (everything).
        return Err(nix::Error::EINVAL);
    }
    match killpg(Pid::from_raw(raw), sig) {
        Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Describes how a process ended: exit code or signal.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        let name = Signal::try_from(sig).map_or_else(|_| "unknown".to_string(), |s| s.to_string());
        format!("killed by signal {sig} ({name})")
    } else {
        format!("ended: {status}")
    }
}

#[cfg(test)]
mod tests {
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
        let env = environment("ns:t:p", &spec, &pattern, Ports { grpc: 1, health: 2 });
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
    fn groups_zero_and_one_are_never_signalled() {
        assert!(signal_group(0, Signal::SIGTERM).is_err());
        assert!(signal_group(1, Signal::SIGTERM).is_err());
    }
}
