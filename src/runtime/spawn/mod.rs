//! Starting pattern processes (SPEC §5) and signalling their process groups.
//!
//! Builds the environment, working directory, process group, output
//! redirection and the user it runs as; makes no decision about when to
//! start or stop.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_char;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::reconcile::observed::Ports;
use crate::spec::InstanceSpec;
use crate::spec::manifest::Pattern;

mod child;
mod clone3;
mod credentials;
mod executable;
pub mod slots;
mod stack;
use credentials::ChildCreds;
pub use credentials::{RunAsError, check_run_as};
pub use executable::{ExecutableError, check_executable};
use stack::ChildStack;

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
    /// It cannot run as the user its manifest names.
    #[error(transparent)]
    RunAs(#[from] RunAsError),
}

impl SpawnError {
    /// True when the launcher itself is at fault (its state directory is
    /// not writable, it is out of descriptors or memory), not the pattern:
    /// such a failure is retried and never counts against the instance.
    pub fn is_launcher_side(&self) -> bool {
        match self {
            SpawnError::Log { .. } => true,
            SpawnError::RunAs(_) => false,
            // Out of resources, or of processes (clone's EAGAIN), or of a
            // writable state directory.
            SpawnError::Exec { source, .. } => source.raw_os_error().is_some_and(|c| {
                super::out_of_resources(c)
                    || matches!(c, nix::libc::EAGAIN | nix::libc::ENOSPC | nix::libc::EROFS)
            }),
        }
    }
}

/// The environment a pattern process gets on top of the launcher's own,
/// in the order of SPEC §5 (later entries win), and last the marker by
/// which `launcher` finds it again after a restart (see
/// [`super::discover`]), which nothing can override.
pub fn environment(
    process_id: &str,
    spec: &InstanceSpec,
    pattern: &Pattern,
    ports: Ports,
    launcher: &str,
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
    env.push((
        super::discover::MARKER_VAR.to_string(),
        super::discover::marker(launcher, spec),
    ));
    env
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (also its process group id).
    pub pid: u32,
    /// A pidfd of it: readable once it exits; `waitid` on it reaps it.
    pub pidfd: OwnedFd,
    /// False when it could not write itself into one of its cgroup files
    /// (the caller then moves it, or reports the limits as not enforced).
    pub joined_cgroups: bool,
}

/// Starts the process in its own process group, in its pattern directory,
/// with stdout and stderr appended to `log` and stdin from `/dev/null`.
/// When `cgroup_join` names cgroup files (v1's `tasks`, v2's
/// `cgroup.procs`: [`crate::runtime::cgroup::Cgroups::join_files`]), the
/// child writes `0` (itself) into each before it execs the pattern, so
/// nothing it forks can start outside its cgroups. Returns once the
/// pattern's executable runs (or with the reason it could not).
///
/// The child, in this order: joins its cgroups (as the launcher), takes
/// the manifest's user (`setgroups`, `setresgid`, `setresuid`; only when
/// the launcher is root, see [`check_run_as`]), enters the pattern
/// directory as that user, sets `no_new_privs` (unless the manifest says
/// `no_new_privileges: false`), closes every descriptor above 2, execs.
/// The log file is opened here, by the launcher, whatever user the child
/// becomes.
///
/// The child is created as `posix_spawn` creates one (`clone` with
/// `CLONE_VM | CLONE_VFORK`: no copy of the launcher's page tables), which
/// std only does without a pre-exec hook; a `fork` of the launcher cost
/// about 1.8 ms more per spawn here.
pub fn spawn(
    process_id: &str,
    spec: &InstanceSpec,
    pattern: &Pattern,
    ports: Ports,
    log: &Path,
    cgroup_join: &[PathBuf],
    launcher: &str,
) -> Result<Spawned, SpawnError> {
    let join = CgroupJoin {
        files: cgroup_join,
        into: None,
    };
    spawn_in(process_id, spec, pattern, ports, log, join, launcher)
}

/// How a child gets into its cgroups.
#[derive(Debug, Clone, Copy)]
pub struct CgroupJoin<'a> {
    /// Files the child writes `0` to before it execs.
    pub files: &'a [PathBuf],
    /// A cgroup v2 directory to create the child in (`clone3` with
    /// `CLONE_INTO_CGROUP`): it then writes none of `files`. When that
    /// cannot be done (not x86-64, the directory cannot be opened, the
    /// kernel refuses it for whatever reason), the child writes `files`.
    pub into: Option<&'a Path>,
}

/// [`spawn`], with the child created in its cgroup v2 when `join.into`
/// names one.
///
/// # Errors
///
/// As [`spawn`].
pub fn spawn_in(
    process_id: &str,
    spec: &InstanceSpec,
    pattern: &Pattern,
    ports: Ports,
    log: &Path,
    join: CgroupJoin<'_>,
    launcher: &str,
) -> Result<Spawned, SpawnError> {
    let log_err = |source| SpawnError::Log {
        path: log.to_path_buf(),
        source,
    };
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(log_err)?;
    // Output may hold secrets: owner only, whatever the umask or old mode.
    // Changed only when it differs: a chmod is an inotify event that wakes
    // the log threads in the middle of the start.
    if out.metadata().map_err(log_err)?.permissions().mode() & 0o7777 != 0o600 {
        out.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(log_err)?;
    }
    let err = out.try_clone().map_err(log_err)?;
    let stdin = std::fs::File::open("/dev/null").map_err(|source| SpawnError::Exec {
        path: PathBuf::from("/dev/null"),
        source,
    })?;
    let exec_err = |source| SpawnError::Exec {
        path: pattern.executable.clone(),
        source,
    };
    let creds = credentials::child_creds(pattern)?;
    let child = ChildSetup::new(
        pattern,
        environment(process_id, spec, pattern, ports, launcher),
        [stdin.into(), out.into(), err.into()],
        join,
        creds,
    )
    .map_err(exec_err)?;
    child.start().map_err(exec_err)
}

/// What the child does between clone and exec, prepared before the clone:
/// the child allocates nothing and calls only async-signal-safe functions.
struct ChildSetup {
    exe: CString,
    /// NUL-terminated pointer arrays into `strings`.
    argv: Vec<*const c_char>,
    /// `/bin/sh` then `argv`: for an executable without a `#!` line.
    sh_argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    dir: CString,
    /// stdin, stdout, stderr, each at fd 3 or above (so the `dup2`s onto
    /// 0, 1 and 2 never overwrite one another).
    stdio: [OwnedFd; 3],
    cgroup_join: Vec<CString>,
    /// The cgroup v2 directory to create the child in, open.
    cgroup_into: Option<OwnedFd>,
    /// Open-file limits to restore (see [`keep_child_fd_limit`]).
    nofile: Option<(u64, u64)>,
    /// The ids to switch to (the manifest's `user:`), when the launcher
    /// switches.
    creds: Option<ChildCreds>,
    /// Set `no_new_privs` before the exec.
    no_new_privs: bool,
    /// Owns what `argv` and `envp` point into.
    _strings: Vec<CString>,
}

/// Where the child failed, reported through the memory it shares with the
/// parent until it execs.
const STAGE_NONE: i32 = 0;
const STAGE_PGID: i32 = 1;
const STAGE_STDIO: i32 = 2;
const STAGE_CHDIR: i32 = 3;
const STAGE_EXEC: i32 = 4;
const STAGE_SETGROUPS: i32 = 5;
const STAGE_SETGID: i32 = 6;
const STAGE_SETUID: i32 = 7;
const STAGE_NO_NEW_PRIVS: i32 = 8;

/// The open-file limits the launcher was started with, before it raised its
/// own soft limit: its children get these back, as under a shell.
static CHILD_NOFILE: OnceLock<(u64, u64)> = OnceLock::new();

/// Records the open-file limits (soft, hard) that started processes get,
/// whatever the launcher sets for itself later. The first call wins.
pub fn keep_child_fd_limit(soft: u64, hard: u64) {
    let _ = CHILD_NOFILE.set((soft, hard));
}

/// The PATH a pattern gets when the launcher has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The shell that runs an executable without a `#!` line.
const SH: &std::ffi::CStr = c"/bin/sh";

fn nul_free(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an argument, path or environment entry contains a NUL byte",
        )
    })
}

impl ChildSetup {
    fn new(
        pattern: &Pattern,
        env: Vec<(String, String)>,
        stdio: [OwnedFd; 3],
        join: CgroupJoin<'_>,
        creds: Option<ChildCreds>,
    ) -> std::io::Result<Self> {
        // A relative executable is relative to the launcher's directory,
        // not to the pattern directory the child changes into.
        let exe = if pattern.executable.is_absolute() {
            pattern.executable.clone()
        } else {
            std::env::current_dir()?.join(&pattern.executable)
        };
        let exe = nul_free(exe.as_os_str().as_bytes())?;
        let mut strings = Vec::with_capacity(1 + pattern.args.len() + 64);
        strings.push(exe.clone());
        for a in &pattern.args {
            strings.push(nul_free(a.as_bytes())?);
        }
        let argc = strings.len();
        // A clean environment (SPEC §5): a PATH, the launcher's variables
        // the manifest names in `inherit_env`, then the instance's (later
        // wins). Nothing else of the launcher's reaches the pattern.
        let mut vars: BTreeMap<OsString, OsString> = BTreeMap::new();
        vars.insert(
            "PATH".into(),
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        for name in &pattern.inherit_env {
            if let Some(v) = std::env::var_os(name) {
                vars.insert(name.into(), v);
            }
        }
        // The user's HOME, USER and LOGNAME, not the launcher's.
        vars.extend(credentials::user_env(pattern));
        for (k, v) in env {
            vars.insert(k.into(), v.into());
        }
        for (k, v) in &vars {
            let mut kv = Vec::with_capacity(k.len() + v.len() + 1);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            strings.push(nul_free(&kv)?);
        }
        let ptrs = |v: &[CString]| {
            let mut p: Vec<*const c_char> = v.iter().map(|s| s.as_ptr()).collect();
            p.push(std::ptr::null());
            p
        };
        let argv = ptrs(&strings[..argc]);
        let mut sh_argv = vec![SH.as_ptr()];
        sh_argv.extend_from_slice(&argv);
        let envp = ptrs(&strings[argc..]);
        let [i, o, e] = stdio;
        let high = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
            if fd.as_raw_fd() > 2 {
                return Ok(fd);
            }
            let dup = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))?;
            // SAFETY: a new descriptor the kernel just returned, owned by nobody else.
            #[allow(unsafe_code)]
            Ok(unsafe { OwnedFd::from_raw_fd(dup) })
        };
        Ok(ChildSetup {
            exe,
            argv,
            sh_argv,
            envp,
            dir: nul_free(pattern.dir.as_os_str().as_bytes())?,
            stdio: [high(i)?, high(o)?, high(e)?],
            cgroup_join: join
                .files
                .iter()
                .map(|p| nul_free(p.as_os_str().as_bytes()))
                .collect::<Result<_, _>>()?,
            // Not open: the child joins through `files`.
            cgroup_into: join
                .into
                .and_then(|dir| std::fs::File::open(dir).ok().map(OwnedFd::from)),
            nofile: CHILD_NOFILE.get().copied(),
            creds,
            no_new_privs: pattern.no_new_privileges,
            _strings: strings,
        })
    }

    /// Clones the child, which runs [`ChildSetup::in_child`], and waits
    /// until it has exec'd or failed.
    #[allow(unsafe_code)] // clone(2) with a shared address space; see the SAFETY notes
    fn start(&self) -> std::io::Result<Spawned> {
        use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
        let stage = AtomicI32::new(STAGE_NONE);
        let errno = AtomicI32::new(0);
        let joined = AtomicBool::new(true);
        let mut stack = ChildStack::new()?;
        // No signal handler of the launcher may run in the child while it
        // shares our memory: block everything around the clone; the child
        // resets the handlers before it unblocks.
        let mut old = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut old),
        )?;
        // A child that switches user has the kernel mark the memory it
        // shares with us not dumpable (`commit_creds` sets it on the shared
        // mm): the launcher's flag, as it was before any such child, is set
        // back once the child has exec'd.
        static DUMPABLE: OnceLock<Option<bool>> = OnceLock::new();
        let dumpable = self
            .creds
            .as_ref()
            .and_then(|_| *DUMPABLE.get_or_init(|| nix::sys::prctl::get_dumpable().ok()));
        // The child shares our descriptor table until its first system
        // call gives it one with the slots only (see [`slots`]).
        let filled = slots::Slots::fill(&self.stdio)?;
        let shared = filled.as_ref().map(slots::Filled::raw);
        let mut flags = CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
        if shared.is_some() {
            flags |= CloneFlags::CLONE_FILES;
        }
        // SAFETY: with CLONE_VFORK this thread is suspended until the child
        // execs or exits, so everything the child reads (self, the
        // atomics, its stack) outlives its use. The child shares our
        // address space but has no thread of its own: it runs on this
        // thread's TLS (errno included) and our heap. So it must make no
        // allocation, take no lock (another launcher thread may hold it),
        // not panic (unwinding would run our code on its stack) and use no
        // thread-local; it calls only async-signal-safe functions on memory
        // prepared before the clone, and ends in execve or _exit, never
        // returning into our code. Its stack has a guard page below it, so
        // an overflow faults instead of writing over our memory. With
        // CLONE_FILES it also shares our descriptor table until its first
        // system call gives it a table of its own: until then it touches
        // no descriptor, and nothing of ours touches the slots while they
        // are filled (the lock of `filled`).
        // The same holds for `clone3`, which creates the child in its
        // cgroup v2 (it then writes no `cgroup.procs`). After any error of
        // it no child exists, and `clone` makes one, which joins through
        // the files (a failure there is reported, not fatal).
        let into = match self.cgroup_into.as_ref().map(AsRawFd::as_raw_fd) {
            Some(dir) => {
                let mut cb = || self.in_child(&stage, &errno, &joined, shared, true);
                unsafe {
                    clone3::clone_into_cgroup(&mut cb, stack.as_mut_slice(), flags.bits(), dir)
                }
                .ok()
            }
            None => None,
        };
        let cloned = match into {
            Some(pid) => Ok(Pid::from_raw(pid)),
            None => unsafe {
                nix::sched::clone(
                    Box::new(|| self.in_child(&stage, &errno, &joined, shared, false)),
                    stack.as_mut_slice(),
                    flags,
                    Some(nix::libc::SIGCHLD),
                )
            },
        };
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
        drop(filled);
        if let Some(was) = dumpable
            && nix::sys::prctl::get_dumpable().ok() != Some(was)
        {
            let _ = nix::sys::prctl::set_dumpable(was);
        }
        let pid = cloned?;
        let failed = stage.load(Ordering::SeqCst);
        if failed != STAGE_NONE {
            // It has exited: reap it.
            let _ = nix::sys::wait::waitpid(pid, None);
            let os = std::io::Error::from_raw_os_error(errno.load(Ordering::SeqCst));
            return Err(std::io::Error::new(os.kind(), self.failure(failed, &os)));
        }
        let raw = u32::try_from(pid.as_raw()).unwrap_or(0);
        let pidfd = match super::table::pidfd_open(raw) {
            Ok(fd) => fd,
            Err(e) => {
                // Nothing can watch it: do not leave it running unseen.
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!(
                        "cannot open a pidfd of the new process (Linux 5.3 or later is needed): {e}"
                    ),
                ));
            }
        };
        Ok(Spawned {
            pid: raw,
            pidfd,
            joined_cgroups: joined.load(Ordering::SeqCst),
        })
    }

    /// What failed at `stage` in the child, with the OS error `os`.
    fn failure(&self, stage: i32, os: &std::io::Error) -> String {
        let (uid, gid) = self
            .creds
            .as_ref()
            .map_or((None, None), |c| (Some(c.uid), Some(c.gid)));
        let as_whom = match (uid, gid) {
            (Some(u), Some(g)) => format!(" as uid {u} gid {g}"),
            _ => String::new(),
        };
        let what = match stage {
            STAGE_PGID => "cannot start a process group".to_string(),
            STAGE_STDIO => "cannot redirect stdin, stdout or stderr".to_string(),
            STAGE_CHDIR if uid.is_some() => format!(
                "cannot enter the pattern directory {}{as_whom} (it must be searchable by that user)",
                self.dir.to_string_lossy()
            ),
            STAGE_CHDIR => "cannot enter the pattern directory".to_string(),
            STAGE_SETGROUPS => format!("cannot set the supplementary groups{as_whom} (setgroups)"),
            STAGE_SETGID => format!(
                "cannot switch to gid {}{as_whom} (setresgid)",
                gid.unwrap_or_default()
            ),
            STAGE_SETUID => format!(
                "cannot switch to uid {}{as_whom} (setresuid)",
                uid.unwrap_or_default()
            ),
            STAGE_NO_NEW_PRIVS => "cannot set no_new_privs (prctl)".to_string(),
            _ if uid.is_some() => format!("cannot execute it{as_whom}"),
            _ => return os.to_string(),
        };
        format!("{what}: {os}")
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
mod tests;
