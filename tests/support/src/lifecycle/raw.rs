//! The raw limit: the same pattern spawned by a plain loop
//! (`std::process::Command`, its own `HEALTH_PORT` each) and its health
//! port polled with a raw `GET`, no launcher: N → all healthy, SIGTERM to
//! all → all reaped, `kill -9` → respawned → healthy, spawn → running →
//! healthy. The launcher's figures are read against these.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{Ctx, RAW_POLL, SPAWN_LOG_VAR, SPAWN_POLL, TOKEN_VAR, WAIT};
use crate::files::{file_len, read_lossy, tail};
use crate::http::http_ok;
use crate::procs::try_signal;

fn raw_spawn(ctx: &Ctx<'_>, port: u16, spawn_log: Option<&Path>) -> Child {
    let mut cmd = Command::new(&ctx.bins.pattern);
    cmd.env("HEALTH_PORT", port.to_string())
        .env(TOKEN_VAR, &ctx.token)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(ctx.raw_log.try_clone().expect("raw log handle"));
    if let Some(log) = spawn_log {
        cmd.env(SPAWN_LOG_VAR, log);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", ctx.bins.pattern.display()))
}

/// Polls `port` until it answers 200; panics if `child` exits first.
fn raw_wait_healthy(ctx: &Ctx<'_>, port: u16, child: &mut Child, t0: Instant) {
    while !http_ok(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "raw bench-pattern on port {port} exited ({status}):\n{}",
                tail(&read_lossy(ctx.root.path().join("raw.log")), 10)
            );
        }
        assert!(
            t0.elapsed() < WAIT,
            "raw bench-pattern on port {port} not healthy after {WAIT:?}"
        );
        thread::sleep(RAW_POLL);
    }
}

/// SIGTERM to each, then waits for each; must all exit 0.
fn raw_stop(children: Vec<Child>) -> Duration {
    let t0 = Instant::now();
    for c in &children {
        try_signal(i64::from(c.id()), Signal::SIGTERM);
    }
    let mut bad: Vec<ExitStatus> = Vec::new();
    for mut c in children {
        match c.wait() {
            Ok(s) if s.success() => {}
            Ok(s) => bad.push(s),
            Err(e) => panic!("waiting for a raw child: {e}"),
        }
    }
    let took = t0.elapsed();
    assert!(
        bad.is_empty(),
        "raw children exited badly on SIGTERM: {bad:?}"
    );
    took
}

pub(super) fn raw_cold(ctx: &mut Ctx<'_>, n: usize) {
    let ports: Vec<u16> = ctx.ports.raw[..n].to_vec();
    let t0 = Instant::now();
    let mut children: Vec<Child> = ports.iter().map(|p| raw_spawn(ctx, *p, None)).collect();
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        raw_wait_healthy(ctx, *port, child, t0);
    }
    let took = t0.elapsed();
    ctx.report.push_ms(&format!("raw.cold.{n}"), took);
    let stop = raw_stop(children);
    ctx.report.push_ms(&format!("raw.stop.{n}"), stop);
}

/// kill -9 → reaped → respawned → healthy, once per child.
pub(super) fn raw_restarts(ctx: &mut Ctx<'_>) {
    let k = ctx.params.kills;
    let ports: Vec<u16> = ctx.ports.raw[..k].to_vec();
    let t0 = Instant::now();
    let mut children: Vec<Child> = ports.iter().map(|p| raw_spawn(ctx, *p, None)).collect();
    for (port, child) in ports.iter().zip(children.iter_mut()) {
        raw_wait_healthy(ctx, *port, child, t0);
    }
    for i in 0..k {
        let t0 = Instant::now();
        try_signal(i64::from(children[i].id()), Signal::SIGKILL);
        let _ = children[i].wait();
        children[i] = raw_spawn(ctx, ports[i], None);
        let respawned = t0.elapsed();
        raw_wait_healthy(ctx, ports[i], &mut children[i], t0);
        let healthy = t0.elapsed();
        ctx.report.push_ms("raw.kill.pid", respawned);
        ctx.report.push_ms("raw.kill.healthy", healthy);
    }
    raw_stop(children);
}

/// spawn → the spawn log grows → healthy, one child at a time.
pub(super) fn raw_spawns(ctx: &mut Ctx<'_>) {
    let spawn_log = ctx.root.path().join("raw-spawns.log");
    let port = ctx.ports.raw[0];
    for _ in 0..ctx.params.kills {
        let before = file_len(&spawn_log);
        let t0 = Instant::now();
        let mut child = raw_spawn(ctx, port, Some(&spawn_log));
        while file_len(&spawn_log) <= before {
            assert!(t0.elapsed() < WAIT, "raw spawn log never grew");
            thread::sleep(SPAWN_POLL);
        }
        let spawned = t0.elapsed();
        raw_wait_healthy(ctx, port, &mut child, t0);
        let healthy = t0.elapsed();
        ctx.report.push_ms("raw.spawn.spawned", spawned);
        ctx.report.push_ms("raw.spawn.healthy", healthy);
        raw_stop(vec![child]);
    }
}
