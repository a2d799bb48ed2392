//! Processes, read from `/proc` and cleaned up by pid: liveness, the
//! fields of `/proc/<pid>/stat`, environments, the token scan that finds
//! (and kills) every process a test or bench run started, and the
//! processes a test starts itself. Nothing here touches a process by name.

use std::collections::BTreeMap;
use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};

/// The variable whose value marks every process a test started: the
/// launcher gets it, and pattern manifests pass it on (`inherit_env`).
pub const TEST_TOKEN_VAR: &str = "PRISM_TEST_TOKEN";

/// True if `/proc/<pid>` exists and the process is not a zombie (pid 1 of
/// this machine does not reap orphans, so zombies linger).
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    !matches!(proc_state(pid), Some('Z' | 'X' | 'x') | None)
}

/// The fields of `/proc/<pid>/stat` from field 3 (state) on: field `n` of
/// proc(5) is at index `n - 3`. The command name may hold anything, so
/// fields are counted from the last ')'.
pub fn stat_fields(pid: i64) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`, parsed.
pub fn stat_num(pid: i64, n: usize) -> Option<u64> {
    stat_fields(pid)?.get(n - 3)?.parse().ok()
}

/// Process state (field 3): R, S, D, T, Z, ...
pub fn proc_state(pid: i64) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Session id (field 6).
pub fn session_of(pid: i64) -> Option<u64> {
    stat_num(pid, 6)
}

/// Start time in clock ticks after boot (field 22).
pub fn start_time(pid: i64) -> Option<u64> {
    stat_num(pid, 22)
}

/// utime + stime (fields 14 and 15, all threads of the process), in ticks.
pub fn cpu_ticks(pid: i64) -> Option<u64> {
    let f = stat_fields(pid)?;
    let get = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(get(14)? + get(15)?)
}

/// utime + stime of each thread of `pid`, summed by thread name.
pub fn thread_ticks(pid: i64) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        *by_name.entry(name.trim().to_string()).or_default() +=
            get(14).unwrap_or(0) + get(15).unwrap_or(0);
    }
    by_name
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf only reads a configuration value; no memory of ours
    // is involved.
    let t = unsafe { nix::libc::sysconf(nix::libc::_SC_CLK_TCK) };
    assert!(t > 0, "sysconf(_SC_CLK_TCK) failed: {t}");
    t as f64
}

/// A `/proc/<pid>/status` field in kB (`VmHWM`, `VmRSS`).
pub fn status_kb(pid: i64, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The environment of `pid` (`/proc/<pid>/environ`), None if unreadable.
pub fn environ(pid: i64) -> Option<BTreeMap<String, String>> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter_map(|var| {
                let var = String::from_utf8_lossy(var);
                let (k, v) = var.split_once('=')?;
                Some((k.to_string(), v.to_string()))
            })
            .collect(),
    )
}

/// The value of `key` in the environment of `pid`.
pub fn environ_var(pid: i64, key: &str) -> Option<String> {
    environ(pid).and_then(|mut e| e.remove(key))
}

/// Pids of live (non-zombie) processes whose environment holds
/// `<var>=<token>`, this process excluded.
pub fn token_pids_of(var: &str, token: &str) -> Vec<i32> {
    let needle = format!("{var}={token}");
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let found = environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes());
        if found && pid_alive(pid.into()) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// [`token_pids_of`] with [`TEST_TOKEN_VAR`].
pub fn token_pids(token: &str) -> Vec<i32> {
    token_pids_of(TEST_TOKEN_VAR, token)
}

/// SIGKILLs every live process carrying `<var>=<token>`, and its process
/// group when that group is not ours. Repeats until none is left (or
/// gives up after a few rounds). Returns the pids found the first time.
pub fn kill_token_processes_of(var: &str, token: &str) -> Vec<i32> {
    let our_pgid = getpgid(None).ok();
    let first = token_pids_of(var, token);
    let mut pids = first.clone();
    for _ in 0..10 {
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let pid = Pid::from_raw(pid);
            if let Ok(pgid) = getpgid(Some(pid))
                && Some(pgid) != our_pgid
                && pgid.as_raw() > 1
            {
                let _ = killpg(pgid, Signal::SIGKILL);
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
        // Poll interval of the sweep: the kills above are asynchronous.
        std::thread::sleep(Duration::from_millis(100));
        pids = token_pids_of(var, token);
    }
    first
}

/// [`kill_token_processes_of`] with [`TEST_TOKEN_VAR`].
pub fn kill_token_processes(token: &str) -> Vec<i32> {
    kill_token_processes_of(TEST_TOKEN_VAR, token)
}

/// Sends `sig` to `pid`; panics if that fails.
pub fn signal(pid: i64, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig)
        .unwrap_or_else(|e| panic!("kill({pid}, {sig}) failed: {e}"));
}

/// Sends `sig` to `pid` when it is a real process id (above 1); whether
/// it was delivered.
pub fn try_signal(pid: i64, sig: Signal) -> bool {
    match i32::try_from(pid) {
        Ok(raw) if raw > 1 => kill(Pid::from_raw(raw), sig).is_ok(),
        _ => false,
    }
}

/// Processes a test started itself (not through the launcher): SIGKILLed
/// by pid and reaped when dropped, also when the test panics.
#[derive(Default)]
pub struct OwnProcesses {
    children: Vec<Child>,
}

impl OwnProcesses {
    /// Spawns `cmd` with stdin, stdout and stderr on /dev/null; its pid.
    pub fn spawn(&mut self, cmd: &mut Command) -> i64 {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        self.adopt(child)
    }

    /// Takes `child` over; its pid.
    pub fn adopt(&mut self, child: Child) -> i64 {
        let pid = i64::from(child.id());
        self.children.push(child);
        pid
    }
}

impl Drop for OwnProcesses {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
