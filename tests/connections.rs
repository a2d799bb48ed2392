//! Idle and hostile TCP connections to the gRPC port: they must not take
//! the launcher's descriptors or memory, nor its instances down.

mod common;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// The launcher's resident memory, in MiB.
fn rss_mib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("launcher status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .expect("VmRSS")
}

/// The launcher's open descriptors.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// This test process holds thousands of sockets: lift its own soft limit.
fn raise_own_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
}

/// Opens up to `n` TCP connections to `port` that send nothing; stops early
/// when the port no longer takes any (the old launcher, out of
/// descriptors, leaves them in the backlog until it overflows).
fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = Vec::with_capacity(n);
    let mut failed_in_a_row = 0;
    while held.len() < n && failed_in_a_row < 5 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => {
                failed_in_a_row = 0;
                held.push(s);
            }
            Err(_) => failed_in_a_row += 1,
        }
    }
    held
}

/// Waits until the server has closed every one of `held` (a read gives
/// EOF or an error); returns how many it closed.
fn wait_closed_by_server(held: &mut Vec<TcpStream>, timeout: Duration) -> usize {
    for s in held.iter() {
        s.set_nonblocking(true).expect("nonblocking");
    }
    let total = held.len();
    let mut buf = [0u8; 4096];
    wait_until(timeout, || {
        held.retain_mut(|s| {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return false,
                    Ok(_) => {} // the server's SETTINGS frame
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        });
        held.is_empty()
    });
    total - held.len()
}

/// `Health` on a new connection of its own, within `max_time` (the
/// connection included).
fn health(port: u16, max_time: Duration) -> Result<Value, String> {
    grpc_call_within(port, "Health", &serde_json::json!({}), max_time).map_err(|e| e.to_string())
}

/// Asserts that the instances in `pids` still run with those pids, healthy,
/// and never failed nor restarted.
fn assert_untouched(env: &TestEnv, pids: &BTreeMap<String, i64>, when: &str) {
    for (id, pid) in pids {
        let p = env
            .find(id)
            .unwrap_or_else(|| panic!("{when}: {id} is not listed"));
        assert!(
            is_running(&p)
                && jint(&p, "pid") == *pid
                && jint(&p, "errorCount") == 0
                && jint(&p, "restartCount") == 0,
            "{when}: {id} should still run as pid {pid} with no failure: {p}\n--- launcher log ---\n{}",
            env.log_tail(40)
        );
    }
}

#[test]
fn idle_connections_past_the_fd_limit_take_no_instance_down() {
    raise_own_fd_limit();
    let env = TestEnv::builder()
        .pattern(
            PatternSpec::test_pattern()
                .interval("500ms")
                .failure_threshold(2),
        )
        .fd_limit(1024)
        .start();
    let launcher = env.launcher_pid().expect("launcher pid");
    let mut pids = BTreeMap::new();
    for ns in ["a", "b", "c"] {
        let r = env.launch_running("test-pattern", ns, &[]);
        pids.insert(jstr(&r, "processId"), jint(&r, "pid"));
    }
    let rss_before = rss_mib(launcher);

    // More than --max-connections, and more than the launcher's 1024
    // descriptors.
    let opened = Instant::now();
    let mut held = open_idle(env.ports.grpc_port(), 1500);
    let rss_during = rss_mib(launcher);
    let fds_during = open_fds(launcher);
    eprintln!(
        "opened {} idle connections in {:?}; launcher: {fds_during} fds, RSS {rss_before} -> {rss_during} MiB",
        held.len(),
        opened.elapsed()
    );

    // The API still answers, at once, while they are held.
    let h = health(env.ports.grpc_port(), Duration::from_secs(20)).unwrap_or_else(|e| {
        panic!(
            "Health failed while {} idle connections were held ({fds_during} fds open): {e}\n--- launcher log ---\n{}",
            held.len(),
            env.log_tail(40)
        )
    });
    assert!(jbool(&h, "healthy"), "{h}");
    assert_untouched(&env, &pids, "with the connections held");

    // The controller still works: a killed instance comes back.
    let (victim, victim_pid) = pids.pop_first().expect("an instance");
    signal(victim_pid, Signal::SIGKILL);
    let back = env.wait_restarted(&victim, victim_pid);
    assert_eq!(jint(&back, "restartCount"), 1, "{back}");

    // Connections that send nothing are closed by the server.
    let total = held.len();
    let closed = wait_closed_by_server(&mut held, Duration::from_secs(30));
    assert_eq!(
        closed,
        total,
        "{} of {total} idle connections still open {:?} after they were opened",
        total - closed,
        opened.elapsed()
    );
    eprintln!(
        "the server closed all {total} within {:?} of the first",
        opened.elapsed()
    );
    assert_untouched(&env, &pids, "after the connections were closed");
    let listed = env.find(&victim).expect("the restarted instance");
    assert!(is_running(&listed), "{listed}");

    drop(held);
    let rss_after = rss_mib(launcher);
    eprintln!("launcher RSS after: {rss_after} MiB (before {rss_before})");
    assert!(
        rss_after <= rss_before + 32,
        "launcher RSS grew from {rss_before} to {rss_after} MiB"
    );
    // Refusals are logged once per interval, not once per connection.
    let log = env.read_log();
    let reports = log
        .lines()
        .filter(|l| l.contains("--max-connections") && l.contains("WARN"))
        .count();
    assert!(
        (1..=10).contains(&reports),
        "{reports} connection-limit warnings\n{}",
        env.log_tail(40)
    );
}

#[test]
fn many_connection_attempts_leave_the_launcher_small() {
    raise_own_fd_limit();
    let env = TestEnv::start();
    let launcher = env.launcher_pid().expect("launcher pid");
    let r = env.launch_running("test-pattern", "small", &[]);
    let pid = jint(&r, "pid");
    let rss_before = rss_mib(launcher);
    let started = Instant::now();
    let mut held = open_idle(env.ports.grpc_port(), 5000);
    let rss_during = rss_mib(launcher);
    eprintln!(
        "{} connections in {:?}: launcher RSS {rss_before} -> {rss_during} MiB, {} fds",
        held.len(),
        started.elapsed(),
        open_fds(launcher)
    );
    let total = held.len();
    let closed = wait_closed_by_server(&mut held, Duration::from_secs(30));
    assert_eq!(closed, total, "idle connections left open");
    drop(held);
    let rss_after = rss_mib(launcher);
    eprintln!("launcher RSS after: {rss_after} MiB");
    // 5,000 idle connections held used to cost ~15 KiB each (75 MiB), and
    // the memory stayed after they closed.
    assert!(
        rss_during <= rss_before + 40 && rss_after <= rss_before + 40,
        "launcher RSS {rss_before} -> {rss_during} -> {rss_after} MiB"
    );
    let p = env.find("ns:small:test-pattern").expect("listed");
    assert!(
        is_running(&p) && jint(&p, "pid") == pid && jint(&p, "errorCount") == 0,
        "{p}"
    );
}

/// Reads HTTP/2 frames until the server's SETTINGS acknowledgement.
fn read_until_settings_ack(s: &mut TcpStream) {
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).expect("an HTTP/2 frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).expect("an HTTP/2 frame payload");
        if head[3] == 0x4 && head[4] & 0x1 == 0x1 {
            return;
        }
    }
}

#[test]
fn past_max_connections_new_connections_are_closed_at_once_and_logged_once() {
    let env = TestEnv::builder().arg("--max-connections").arg("8").start();
    let addr = SocketAddr::from(([127, 0, 0, 1], env.ports.grpc_port()));
    // Eight clients that sent their HTTP/2 preface keep their places.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
    let mut greeted: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(preface).expect("preface");
            s
        })
        .collect();
    // The server acknowledges each one's SETTINGS once it has read the
    // preface.
    for s in &mut greeted {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        read_until_settings_ack(s);
    }
    // Every further one is accepted and closed at once.
    let t0 = Instant::now();
    let mut refused = open_idle(env.ports.grpc_port(), 50);
    assert_eq!(refused.len(), 50);
    let closed = wait_closed_by_server(&mut refused, Duration::from_secs(4));
    assert_eq!(
        closed,
        50,
        "connections past the cap still open after {:?}",
        t0.elapsed()
    );
    let log = env.read_log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused a gRPC connection"))
        .collect();
    // Once per 10 s, not once per connection.
    assert!((1..=2).contains(&lines.len()), "{lines:#?}");
    assert!(
        lines[0].contains("--max-connections 8 reached"),
        "{}",
        lines[0]
    );
    // The places come back when the clients leave.
    drop(greeted);
    let h = wait_for(WAIT, || {
        health(env.ports.grpc_port(), Duration::from_secs(10)).ok()
    })
    .expect("Health once the clients left");
    assert!(jbool(&h, "healthy"), "{h}");
}
