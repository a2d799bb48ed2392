//! Cold starts of the lifecycle bench: N instances declared at once (one
//! desired file, N files, or N LaunchPattern calls) until all are healthy;
//! for the largest N the steady state and LaunchPattern with N instances
//! running; then the graceful stop.

use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use super::figures::{ms, percentile};
use super::session::{Session, launch_request, launched, note_findings, running};
use super::small::launch_on_running;
use super::{Ctx, SETTLE, desired_doc, watchers};
use crate::procs::{clk_tck, cpu_ticks, status_kb, thread_ticks};

/// utime + stime of the launcher `pid` (0 once it is gone).
fn ticks_of(pid: u32) -> u64 {
    cpu_ticks(i64::from(pid)).unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Declare {
    File,
    Files,
    Api,
}

impl Declare {
    fn key(self) -> &'static str {
        match self {
            Declare::File => "file",
            Declare::Files => "files",
            Declare::Api => "api",
        }
    }
}

/// Cold start of `n` instances, then (for the largest n) the steady state
/// and LaunchPattern with n instances, then the graceful stop.
pub(super) fn cold(ctx: &mut Ctx<'_>, n: usize, how: Declare, steady: bool) {
    let s = Session::start(ctx, &format!("cold-{}-{n}", how.key()));
    let (took, answers) = match how {
        Declare::File => {
            let tmp = s.desired.join(".all.tmp");
            let docs: Vec<String> = (0..n)
                .map(|i| desired_doc(&format!("c{i}"), None))
                .collect();
            fs::write(&tmp, docs.join("---\n")).expect("write desired file");
            let t0 = Instant::now();
            fs::rename(&tmp, s.desired.join("all.yaml")).expect("rename");
            s.wait_all_healthy(n, t0)
        }
        Declare::Files => {
            for i in 0..n {
                fs::write(
                    s.desired.join(format!(".c{i}.tmp")),
                    desired_doc(&format!("c{i}"), None),
                )
                .expect("write desired file");
            }
            let t0 = Instant::now();
            for i in 0..n {
                fs::rename(
                    s.desired.join(format!(".c{i}.tmp")),
                    s.desired.join(format!("c{i}.yaml")),
                )
                .expect("rename");
            }
            s.wait_all_healthy(n, t0)
        }
        Declare::Api => {
            let next = Arc::new(AtomicUsize::new(0));
            let errors = Arc::new(Mutex::new(Vec::<String>::new()));
            let t0 = Instant::now();
            let workers: Vec<_> = (0..ctx.params.cold_in_flight.min(n))
                .map(|_| {
                    let (next, errors) = (next.clone(), errors.clone());
                    let mut c = s.client.inner.clone();
                    ctx.rt.spawn(async move {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= n {
                                return;
                            }
                            let ns = format!("c{i}");
                            let r = c.launch_pattern(launch_request(&ns)).await;
                            let bad = match r {
                                Ok(r) if launched(r.get_ref()) => None,
                                Ok(r) => Some(format!("{ns}: {:?}", r.into_inner())),
                                Err(e) => Some(format!("{ns}: {e}")),
                            };
                            if let Some(b) = bad {
                                errors.lock().expect("errors").push(b);
                            }
                        }
                    })
                })
                .collect();
            let (took, answers) = s.wait_all_healthy(n, t0);
            for w in workers {
                ctx.rt.block_on(w).expect("launch worker");
            }
            let errors = errors.lock().expect("errors");
            if !errors.is_empty() {
                s.fail(&format!(
                    "{} LaunchPattern calls did not answer RUNNING and healthy, e.g. {:?}",
                    errors.len(),
                    &errors[..errors.len().min(3)]
                ));
            }
            (took, answers)
        }
    };
    ctx.report.push_ms(&format!("cold.{}.{n}", how.key()), took);
    let mut answers: Vec<f64> = answers.iter().map(|d| ms(*d)).collect();
    answers.sort_by(f64::total_cmp);
    if let (Some(p99), Some(max)) = (percentile(&answers, 99.0), answers.last()) {
        ctx.report.push(&format!("cold.health_p99.{n}"), p99);
        ctx.report.push(&format!("cold.health_max.{n}"), *max);
    }
    if steady {
        steady_state(ctx, &s, n, "steady");
        let (p50, p99, rate) = launch_on_running(ctx, &s, "c0");
        ctx.report.push_ms("launch_n.p50", p50);
        ctx.report.push_ms("launch_n.p99", p99);
        ctx.report.push("launch_n.rate", rate);
        // The same with watch clients reading everything.
        let (readers, read) = watchers::start_readers(ctx, &s, watchers::WATCH_CLIENTS);
        steady_state(ctx, &s, n, "steady_w");
        let (_, p99, _) = launch_on_running(ctx, &s, "c0");
        ctx.report.push_ms("launch_nw.p99", p99);
        for r in readers {
            r.abort();
        }
        // Each reader got at least the snapshot of every instance.
        let got = read.load(std::sync::atomic::Ordering::Relaxed);
        if got < (watchers::WATCH_CLIENTS * n) as u64 {
            s.fail(&format!("the watch clients read only {got} events"));
        }
    }
    note_findings(ctx, &s, "none");
    let stop = s.stop();
    ctx.report.push_ms(&format!("stop.{n}"), stop);
}

/// The steady-state figures `<key>.cpu`, `<key>.hwm` and `<key>.rss`.
fn steady_state(ctx: &mut Ctx<'_>, s: &Session, n: usize, key: &str) {
    thread::sleep(SETTLE);
    let ticks = clk_tck();
    let (t0, c0, threads0) = (
        Instant::now(),
        ticks_of(s.pid),
        thread_ticks(i64::from(s.pid)),
    );
    thread::sleep(ctx.params.steady);
    let (took, c1, threads1) = (
        t0.elapsed(),
        ticks_of(s.pid),
        thread_ticks(i64::from(s.pid)),
    );
    if key == "steady" {
        for (name, t1) in threads1 {
            let t0 = threads0.get(&name).copied().unwrap_or(0);
            *ctx.steady_threads.0.entry(name).or_default() += t1.saturating_sub(t0);
        }
        ctx.steady_threads.1 += took.as_secs_f64();
    }
    let cpu = (c1.saturating_sub(c0)) as f64 / ticks / took.as_secs_f64() * 100.0;
    let mb = |kb: Option<u64>| kb.unwrap_or(0) as f64 * 1024.0 / 1e6;
    let hwm = mb(status_kb(i64::from(s.pid), "VmHWM"));
    let rss = mb(status_kb(i64::from(s.pid), "VmRSS"));
    let list = s
        .client
        .list()
        .unwrap_or_else(|e| s.fail(&format!("ListPatterns failed: {e}")));
    let up = list.iter().filter(|p| running(p)).count();
    if up != n {
        s.fail(&format!(
            "only {up} of {n} instances RUNNING and healthy after the steady window"
        ));
    }
    // A zero CPU reading is a real result (less than a tick in the window),
    // but a figure must be positive to be told from a missing one: count it
    // as half a tick.
    let floor = 0.5 / ticks / took.as_secs_f64() * 100.0;
    ctx.report.push(&format!("{key}.cpu"), cpu.max(floor));
    ctx.report.push(&format!("{key}.hwm"), hwm);
    ctx.report.push(&format!("{key}.rss"), rss);
}
