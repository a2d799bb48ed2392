//! A few instances under one launcher: `kill -9` of each until it is
//! replaced and healthy again, a desired file renamed in until its process
//! runs and is healthy, and LaunchPattern on a running instance (latency of
//! sequential calls, rate of concurrent clients).

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use tonic::transport::Channel;

use super::figures::percentile;
use super::session::{
    Client, Session, launch_request, launched, note_findings, process_id, running,
};
use super::{Ctx, SPAWN_POLL, STATUS_POLL, WAIT, WARMUP_CALLS, desired_doc};
use crate::files::file_len;
use crate::procs::try_signal;

/// Sequential p50/p99 and concurrent calls/s of LaunchPattern on the running
/// instance of `namespace`.
pub(super) fn launch_on_running(
    ctx: &Ctx<'_>,
    s: &Session,
    namespace: &str,
) -> (Duration, Duration, f64) {
    for _ in 0..WARMUP_CALLS {
        match s.client.launch(namespace) {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern({namespace}): {other:?}")),
        }
    }
    let mut lat = Vec::with_capacity(ctx.params.launch_calls);
    for _ in 0..ctx.params.launch_calls {
        let t = Instant::now();
        let r = s.client.launch(namespace);
        lat.push(t.elapsed().as_secs_f64());
        match r {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern({namespace}): {other:?}")),
        }
    }
    lat.sort_by(f64::total_cmp);
    let p = |q| Duration::from_secs_f64(percentile(&lat, q).unwrap_or(0.0));
    let (p50, p99) = (p(50.0), p(99.0));

    let clients: Vec<PatternLauncherClient<Channel>> = (0..ctx.params.launch_clients)
        .map(|_| {
            Client::connect(ctx.rt.handle(), ctx.ports.grpc)
                .unwrap_or_else(|e| s.fail(&format!("connect: {e}")))
                .inner
        })
        .collect();
    let window = ctx.params.launch_window;
    let failures = Arc::new(AtomicUsize::new(0));
    let ns = namespace.to_string();
    let (calls, took) = ctx.rt.block_on(async {
        let t0 = Instant::now();
        let deadline = t0 + window;
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (ns, failures) = (ns.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut calls = 0usize;
                    while Instant::now() < deadline {
                        match c.launch_pattern(launch_request(&ns)).await {
                            Ok(r) if launched(r.get_ref()) => calls += 1,
                            _ => {
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    calls
                })
            })
            .collect();
        let mut calls = 0;
        for t in tasks {
            calls += t.await.expect("client task");
        }
        (calls, t0.elapsed())
    });
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        s.fail(&format!(
            "{failed} concurrent LaunchPattern calls failed or were not RUNNING"
        ));
    }
    (p50, p99, calls as f64 / took.as_secs_f64())
}

/// Kills, renames and LaunchPattern with a few instances.
pub(super) fn small_session(ctx: &mut Ctx<'_>) {
    let k = ctx.params.kills;
    let s = Session::start(ctx, "small");
    for i in 0..k {
        match s.client.launch(&format!("k{i}")) {
            Ok(r) if launched(&r) => {}
            other => s.fail(&format!("LaunchPattern(k{i}): {other:?}")),
        }
    }

    // kill -9 → new pid → healthy, once per instance.
    for i in 0..k {
        let id = process_id(&format!("k{i}"));
        let before = s.status(&id);
        if !running(&before) {
            s.fail(&format!("{id} is not running before its kill: {before:?}"));
        }
        let old = before.pid;
        let t0 = Instant::now();
        try_signal(i64::from(old), Signal::SIGKILL);
        let mut new_pid = None;
        let healthy = loop {
            let p = s.status(&id);
            let replaced = p.pid > 0 && p.pid != old;
            if replaced && new_pid.is_none() {
                new_pid = Some(t0.elapsed());
            }
            if replaced && running(&p) {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id} not healthy again {WAIT:?} after kill -9: {p:?}"
                ));
            }
            thread::sleep(STATUS_POLL);
        };
        ctx.report
            .push_ms("kill.pid", new_pid.expect("seen with the healthy one"));
        ctx.report.push_ms("kill.healthy", healthy);
    }

    // A file renamed into desired/ → spawned → healthy.
    let spawn_log = s.dir.join("spawns.log");
    for i in 0..k {
        let ns = format!("r{i}");
        let id = process_id(&ns);
        let tmp = s.desired.join(format!(".{ns}.tmp"));
        fs::write(&tmp, desired_doc(&ns, Some(&spawn_log))).expect("write desired file");
        let before = file_len(&spawn_log);
        let t0 = Instant::now();
        fs::rename(&tmp, s.desired.join(format!("{ns}.yaml"))).expect("rename");
        let spawned = loop {
            if file_len(&spawn_log) > before {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id}: no spawn seen {WAIT:?} after its file appeared"
                ));
            }
            thread::sleep(SPAWN_POLL);
        };
        let healthy = loop {
            if let Ok(Some(p)) = s.client.status(&id)
                && running(&p)
            {
                break t0.elapsed();
            }
            if t0.elapsed() > WAIT {
                s.fail(&format!(
                    "{id}: not healthy {WAIT:?} after its file appeared"
                ));
            }
            thread::sleep(STATUS_POLL);
        };
        ctx.report.push_ms("rename.spawned", spawned);
        ctx.report.push_ms("rename.healthy", healthy);
    }

    let (p50, p99, rate) = launch_on_running(ctx, &s, "k0");
    ctx.report.push_ms("launch.p50", p50);
    ctx.report.push_ms("launch.p99", p99);
    ctx.report.push("launch.rate", rate);
    super::watchers::launch_with_a_stalled_client(ctx, &s, "k0");
    note_findings(ctx, &s, "one WARN per kill -9");
    s.stop();
}
