//! `test-pattern`: the configurable pattern the launcher's tests drive. Its behaviour is chosen
//! by `TEST_*` environment variables (exit codes and last words, health delays and failures,
//! SIGTERM handling, child processes in the same group / a new session / double-forked,
//! memory and CPU use, stdout written flat out, numbered lines, a line every few milliseconds);
//! without any it behaves like `config-lookup`. `test-pattern --child` is the long-lived child
//! it spawns: it only sleeps.
//!
//! It must not do anything the variables do not ask for, must not use tokio (health must be up
//! within about a millisecond), and must report a bad variable (exit 2) rather than panic.

#[path = "common/mod.rs"]
mod common;

use std::ffi::{CString, OsStr};
use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::ptr;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{SigHandler, Signal, signal};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, fork, setsid};
use signal_hook::consts::signal::SIGTERM;

use common::{fail, log};

const NAME: &str = "test-pattern";
const MIB: usize = 1024 * 1024;

/// How `TEST_SPAWN_CHILD` starts the long-lived child.
#[derive(Clone, Copy)]
enum ChildMode {
    /// Plain spawn: the child stays in the pattern's process group.
    Group,
    /// The child calls `setsid` before exec: new session and process group.
    Setsid,
    /// An intermediate process forks the child (which calls `setsid`) and exits at once.
    DoubleFork,
}

/// Everything the `TEST_*` variables ask for.
struct Config {
    exit_at_start: Option<i32>,
    exit_after: Option<Duration>,
    exit_code: i32,
    last_words: Option<String>,
    health_delay: Duration,
    no_health: bool,
    unhealthy_after: Option<Duration>,
    ignore_sigterm: bool,
    term_delay: Duration,
    spawn_child: Option<ChildMode>,
    child_pid_file: Option<PathBuf>,
    alloc_mib: Option<usize>,
    busy: bool,
    fork_bomb: Option<usize>,
    flood: Option<Flood>,
    flood_for: Option<Duration>,
    flood_done_file: Option<PathBuf>,
    print_lines: Option<usize>,
    print_done_file: Option<PathBuf>,
    tick: Option<Duration>,
}

/// What `TEST_FLOOD` writes to stdout, as fast as it can.
#[derive(Clone, Copy)]
enum Flood {
    /// Lines of about 100 bytes.
    Newline,
    /// One endless line.
    NoNewline,
}

impl Config {
    fn from_env() -> Self {
        let spawn_child = raw("TEST_SPAWN_CHILD").map(|value| match value.as_str() {
            "group" => ChildMode::Group,
            "setsid" => ChildMode::Setsid,
            "double-fork" => ChildMode::DoubleFork,
            _ => bad("TEST_SPAWN_CHILD", &value, "group, setsid or double-fork"),
        });
        // Validated here too so that a bad value is reported by the pattern, not its child.
        flag("TEST_CHILD_IGNORE_SIGTERM");
        Config {
            exit_at_start: exit_code("TEST_EXIT_AT_START"),
            exit_after: millis("TEST_EXIT_AFTER_MS"),
            exit_code: exit_code("TEST_EXIT_CODE").unwrap_or(3),
            last_words: raw("TEST_LAST_WORDS"),
            health_delay: millis("TEST_HEALTH_DELAY_MS").unwrap_or_default(),
            no_health: flag("TEST_NO_HEALTH"),
            unhealthy_after: millis("TEST_UNHEALTHY_AFTER_MS"),
            ignore_sigterm: flag("TEST_IGNORE_SIGTERM"),
            term_delay: millis("TEST_TERM_DELAY_MS").unwrap_or_default(),
            spawn_child,
            child_pid_file: path("TEST_CHILD_PID_FILE"),
            alloc_mib: number("TEST_ALLOC_MB", "a number of MiB"),
            busy: flag("TEST_BUSY"),
            fork_bomb: number("TEST_FORK_BOMB", "a number of children"),
            flood: raw("TEST_FLOOD").map(|value| match value.as_str() {
                "newline" => Flood::Newline,
                "nonewline" => Flood::NoNewline,
                _ => bad("TEST_FLOOD", &value, "newline or nonewline"),
            }),
            flood_for: millis("TEST_FLOOD_MS"),
            flood_done_file: path("TEST_FLOOD_DONE_FILE"),
            print_lines: number("TEST_PRINT_LINES", "a number of lines"),
            print_done_file: path("TEST_PRINT_DONE_FILE"),
            tick: millis("TEST_TICK_MS"),
        }
    }
}

fn main() {
    let start = Instant::now();
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("--child")) {
        child_main();
    }
    append_spawn_log();
    let env = common::PatternEnv::read(NAME);
    log(&format!(
        "{NAME} starting pid={} process_id={}",
        process::id(),
        env.process_id
    ));
    let cfg = Config::from_env();
    install_signal_handling(&cfg);
    // `TEST_LAST_WORDS`: a line printed to stdout just before either exit.
    let say_last_words = {
        let words = cfg.last_words.clone();
        move || {
            if let Some(w) = &words {
                log(w);
            }
        }
    };
    if let Some(code) = cfg.exit_at_start {
        say_last_words();
        fail(code, &format!("{NAME} exiting at start with code {code}"));
    }
    if let Some(after) = cfg.exit_after {
        let code = cfg.exit_code;
        spawn(move || {
            thread::sleep(after.saturating_sub(start.elapsed()));
            say_last_words();
            fail(code, &format!("{NAME} exiting with code {code}"));
        });
    }

    if !cfg.no_health {
        let port = env.health_port();
        let (delay, unhealthy_after) = (cfg.health_delay, cfg.unhealthy_after);
        let open = move || {
            thread::sleep(delay.saturating_sub(start.elapsed()));
            common::start_health_server(NAME, port, move || match unhealthy_after {
                Some(after) if start.elapsed() >= after => (503, "UNHEALTHY".to_string()),
                _ => (200, "OK".to_string()),
            });
            log(&format!("{NAME} health server on :{port}"));
        };
        if delay.is_zero() {
            open();
        } else {
            spawn(open);
        }
    }

    if let Some(mode) = cfg.spawn_child {
        let pid = spawn_child(mode);
        if let Some(file) = &cfg.child_pid_file {
            write_pid_file(file, pid);
        }
        log(&format!("{NAME} child pid={pid}"));
    }
    if let Some(n) = cfg.fork_bomb {
        fork_bomb(n);
    }
    if let Some(mib) = cfg.alloc_mib {
        spawn(move || allocate(mib));
    }
    if cfg.busy {
        spawn(|| {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        });
    }
    if let Some(kind) = cfg.flood {
        let until = cfg.flood_for.map(|d| start + d);
        let done_file = cfg.flood_done_file.clone();
        spawn(move || {
            let written = flood(kind, until);
            if let Some(file) = &done_file {
                write_atomically(file, &written.to_string(), "TEST_FLOOD_DONE_FILE");
            }
        });
    }
    if let Some(n) = cfg.print_lines {
        let done_file = cfg.print_done_file.clone();
        spawn(move || {
            print_lines(n);
            if let Some(file) = &done_file {
                write_atomically(file, &n.to_string(), "TEST_PRINT_DONE_FILE");
            }
        });
    }
    if let Some(every) = cfg.tick {
        spawn(move || tick(every));
    }
    common::sleep_forever();
}

/// `TEST_PRINT_LINES=<n>`: prints `n` numbered lines of 98 bytes (`line 00000000 yyy...`), at
/// most 100 a millisecond, then `printed <n> lines` (and writes `n` to `TEST_PRINT_DONE_FILE`:
/// the last line may go with a rotation of the log).
fn print_lines(n: usize) {
    let pad = "y".repeat(70);
    for i in 0..n {
        log(&format!("{NAME} line {i:08} {pad}"));
        if i % 100 == 99 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    log(&format!("{NAME} printed {n} lines"));
}

/// `TEST_TICK_MS=<ms>`: prints `tick <n> at <nanoseconds since the epoch>` every `ms`, the time
/// taken just before the write.
fn tick(every: Duration) {
    for n in 0u64.. {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        log(&format!("{NAME} tick {n} at {ns}"));
        thread::sleep(every);
    }
}

/// `TEST_FORK_BOMB=<n>`: starts `n` sleeping children in the pattern's
/// group, going on past the ones the kernel refuses, then ends 16 of them
/// so that the pattern itself can make threads again (its health server
/// needs them); says how many started.
fn fork_bomb(n: usize) {
    let Ok(exe) = std::env::current_exe() else {
        fail(1, &format!("{NAME}: cannot find its own executable"));
    };
    let mut children: Vec<process::Child> = (0..n)
        .filter_map(|_| {
            Command::new(&exe)
                .arg("--child")
                .stdin(Stdio::null())
                .spawn()
                .ok()
        })
        .collect();
    let started = children.len();
    for mut c in children.drain(..started.min(16)) {
        let _ = c.kill();
        let _ = c.wait();
    }
    log(&format!(
        "{NAME} fork bomb: {started} of {n} children started, {} refused",
        n - started
    ));
}

/// `TEST_FLOOD`: writes stdout flat out until `until` (for ever without `TEST_FLOOD_MS`), 8 KiB
/// at a time as a buffered program printing in a loop does (lines, or one endless line), then
/// ends the line, says `flood done` and returns the number of bytes written (also written to
/// `TEST_FLOOD_DONE_FILE`: the last line may go with a rotation of the log).
fn flood(kind: Flood, until: Option<Instant>) -> u64 {
    let line = format!("{NAME} flood line {}\n", "x".repeat(80));
    let chunk: Vec<u8> = match kind {
        Flood::Newline => line.bytes().cycle().take(8192).collect(),
        Flood::NoNewline => vec![b'x'; 8192],
    };
    // Unbuffered: each chunk is one write.
    let mut out = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => fs::File::from(fd),
        Err(err) => fail(1, &format!("{NAME}: cannot duplicate stdout: {err}")),
    };
    let mut written = 0u64;
    while until.is_none_or(|t| Instant::now() < t) {
        if out.write_all(&chunk).is_err() {
            break;
        }
        written += chunk.len() as u64;
    }
    let _ = writeln!(out, "\n{NAME} flood done after {written} bytes");
    written
}

/// `test-pattern --child`: sleep until killed (SIGTERM ignored if `TEST_CHILD_IGNORE_SIGTERM=1`).
fn child_main() -> ! {
    if flag("TEST_CHILD_IGNORE_SIGTERM") {
        // SAFETY: SIG_IGN installs no handler code, so no signal-safety concerns arise.
        if let Err(err) = unsafe { signal(Signal::SIGTERM, SigHandler::SigIgn) } {
            fail(1, &format!("{NAME} --child: cannot ignore SIGTERM: {err}"));
        }
    }
    common::sleep_forever()
}

/// `TEST_SPAWN_LOG`: append `<pid>\n` in one write, so concurrent spawns never interleave.
fn append_spawn_log() {
    let Some(file) = path("TEST_SPAWN_LOG") else {
        return;
    };
    let line = format!("{}\n", process::id());
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(err) = written {
        bad(
            "TEST_SPAWN_LOG",
            &file.to_string_lossy(),
            &format!("a writable file ({err})"),
        );
    }
}

fn install_signal_handling(cfg: &Config) {
    let (ignore, delay) = (cfg.ignore_sigterm, cfg.term_delay);
    common::on_signals(NAME, move |sig| {
        if sig == SIGTERM && ignore {
            log(&format!("{NAME} ignoring SIGTERM"));
            return;
        }
        log(&format!("{NAME} received {}", common::signal_name(sig)));
        thread::sleep(delay);
        process::exit(0);
    });
}

/// Starts the long-lived child (`<current exe> --child`) and returns its pid.
fn spawn_child(mode: ChildMode) -> u32 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => fail(1, &format!("{NAME}: cannot find own executable: {err}")),
    };
    match mode {
        ChildMode::Group => spawn_direct(&exe, false),
        ChildMode::Setsid => spawn_direct(&exe, true),
        ChildMode::DoubleFork => double_fork(&exe),
    }
}

/// Spawns the child directly (optionally in a new session) and reaps it if it ever exits.
fn spawn_direct(exe: &Path, new_session: bool) -> u32 {
    let mut command = Command::new(exe);
    command.arg("--child").stdin(Stdio::null());
    if new_session {
        // SAFETY: setsid is async-signal-safe and the closure allocates nothing.
        unsafe {
            command.pre_exec(|| setsid().map(drop).map_err(io::Error::from));
        }
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => fail(1, &format!("{NAME}: cannot spawn child: {err}")),
    };
    let pid = child.id();
    spawn(move || {
        let _ = child.wait();
    });
    pid
}

/// fork → (intermediate) fork → (grandchild) setsid + exec `--child`; the intermediate sends
/// the grandchild's pid through a pipe and exits at once, so the grandchild is reparented away.
fn double_fork(exe: &Path) -> u32 {
    let Ok(exe_c) = CString::new(exe.as_os_str().as_bytes()) else {
        fail(1, &format!("{NAME}: executable path {exe:?} contains NUL"));
    };
    let argv: [*const libc::c_char; 3] = [exe_c.as_ptr(), c"--child".as_ptr(), ptr::null()];
    // Both ends are close-on-exec, so the grandchild does not keep them after exec.
    let (mut reader, writer) = match io::pipe() {
        Ok(pipe) => pipe,
        Err(err) => fail(1, &format!("{NAME}: cannot create pipe: {err}")),
    };
    // SAFETY: after fork (this process is multi-threaded) the children only make
    // async-signal-safe calls (fork, setsid, execv, write, _exit) on data prepared before the
    // fork, and allocate nothing.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => unsafe {
            match fork() {
                Ok(ForkResult::Child) => {
                    let _ = setsid();
                    libc::execv(exe_c.as_ptr(), argv.as_ptr());
                    libc::_exit(127)
                }
                Ok(ForkResult::Parent { child }) => {
                    let _ = nix::unistd::write(&writer, &child.as_raw().to_ne_bytes());
                    libc::_exit(0)
                }
                Err(_) => libc::_exit(1),
            }
        },
        Ok(ForkResult::Parent { child }) => {
            drop(writer);
            let _ = waitpid(child, None);
            let mut pid = [0u8; 4];
            match reader.read_exact(&mut pid) {
                Ok(()) => i32::from_ne_bytes(pid).unsigned_abs(),
                Err(err) => fail(1, &format!("{NAME}: double fork failed: {err}")),
            }
        }
        Err(err) => fail(1, &format!("{NAME}: fork failed: {err}")),
    }
}

/// Writes `pid` to a temporary file and renames it over `file`: readers never see a partial file.
fn write_pid_file(file: &Path, pid: u32) {
    write_atomically(file, &pid.to_string(), "TEST_CHILD_PID_FILE");
}

/// Writes `contents` to a temporary file and renames it over `file` (named by the variable
/// `key`): readers never see a partial file.
fn write_atomically(file: &Path, contents: &str, key: &str) {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", process::id()));
    let written = fs::write(&tmp, contents).and_then(|()| fs::rename(&tmp, file));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        bad(
            key,
            &file.to_string_lossy(),
            &format!("a writable path ({err})"),
        );
    }
}

/// `TEST_ALLOC_MB`: allocate and touch `mib` MiB in 1 MiB steps, then keep it forever.
fn allocate(mib: usize) {
    let mut blocks = Vec::with_capacity(mib);
    for done in 1..=mib {
        // A non-zero fill writes every byte, so every page is really backed by memory.
        blocks.push(black_box(vec![0xA5u8; MIB]));
        if done % 16 == 0 || done == mib {
            log(&format!("{NAME} allocated {done} MiB"));
        }
    }
    black_box(&blocks);
    common::sleep_forever();
}

fn spawn(f: impl FnOnce() + Send + 'static) {
    if let Err(err) = thread::Builder::new().spawn(f) {
        fail(1, &format!("{NAME}: cannot start thread: {err}"));
    }
}

// --- environment parsing: a bad value is reported with its name and exits 2 ---

fn bad(key: &str, value: &str, expected: &str) -> ! {
    fail(
        2,
        &format!("{NAME}: bad value for {key}: {value:?} (expected {expected})"),
    )
}

fn raw(key: &str) -> Option<String> {
    let value = std::env::var_os(key)?;
    match value.into_string() {
        Ok(value) => Some(value),
        Err(value) => bad(key, &value.to_string_lossy(), "UTF-8 text"),
    }
}

fn number<T: FromStr>(key: &str, expected: &str) -> Option<T> {
    let value = raw(key)?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => bad(key, &value, expected),
    }
}

fn millis(key: &str) -> Option<Duration> {
    number(key, "milliseconds").map(Duration::from_millis)
}

fn exit_code(key: &str) -> Option<i32> {
    number::<u8>(key, "an exit code 0-255").map(i32::from)
}

/// `1`/`true` is on; unset, empty, `0`/`false` is off.
fn flag(key: &str) -> bool {
    match raw(key).as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => bad(key, other, "1 or 0"),
    }
}

fn path(key: &str) -> Option<PathBuf> {
    let value = std::env::var_os(key)?;
    if value.is_empty() {
        bad(key, "", "a file path");
    }
    Some(PathBuf::from(value))
}
