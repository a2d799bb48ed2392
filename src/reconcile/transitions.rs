//! How facts change an observed instance: an exit, a probe result, a start
//! that worked or failed, a stop, and the circuit breaker opening and
//! closing. Each is one pure function of the instance and the facts, so
//! every lifecycle rule lives in one place and is unit-tested with plain
//! values.
//!
//! Pure: no process, file or clock of its own (the caller passes `now` and
//! the jitter). What to *do* next (restart, stop, kill) stays the planner's;
//! this module only records what happened and what it means.

use std::time::{Duration, Instant};

use super::observed::{ObservedInstance, Phase, ProcessInfo, StopReason, Stopping};

/// What the runtime saw when a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitFacts {
    /// Exit code or signal, in words (or why it is unknown).
    pub how: String,
    /// The cgroup's OOM-kill count now.
    pub oom_kills: u64,
    /// Forks the cgroup's `pids.max` refused so far.
    pub pids_refused: u64,
    /// The last lines the process wrote.
    pub tail: Vec<String>,
}

/// What an exit meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// Stopped because it is no longer desired: done.
    Finished,
    /// Stopped to restart with a new spec: restart now, no failure.
    Replaced,
    /// Stopped after a failed liveness check or start-up timeout (already
    /// counted as a failure when the stop began).
    StoppedAfterFailure,
    /// Ended on its own: a failure.
    Crashed,
}

/// The outcome of [`exited`]: its meaning and the sentence to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitOutcome {
    /// What the exit meant.
    pub kind: ExitKind,
    /// How it ended, with the OOM kill or the pids limit when there was one
    /// and, for a crash, the last output.
    pub message: String,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
}

/// Records that the current process of `o` ended. Returns `None` when `o`
/// has no process (an exit reported twice).
pub fn exited(
    o: &mut ObservedInstance,
    facts: ExitFacts,
    now: Instant,
    jitter: f64,
) -> Option<ExitOutcome> {
    o.process.take()?;
    let mut how = facts.how;
    if facts.pids_refused > o.pids_refused_seen {
        how.push_str(&format!(
            "; it reached its pids limit of {} ({} forks refused)",
            o.pattern.resources.pids,
            facts.pids_refused - o.pids_refused_seen
        ));
        o.pids_refused_seen = facts.pids_refused;
    }
    let oom_killed = facts.oom_kills > o.oom_kills_before;
    if oom_killed {
        how = format!(
            "OOM-killed: the kernel killed it for exceeding its memory limit of {} bytes ({how})",
            o.pattern.resources.memory_limit.unwrap_or(0)
        );
        o.oom_kills_before = facts.oom_kills;
    }
    let stopping = o.stopping.take();
    o.healthy_since = None;
    o.probe_failures = 0;
    o.exited_at = Some(now);
    o.restart_jitter = jitter;
    o.restart_now = false;
    let was = o.phase;
    let kind = match (was, stopping.map(|s| s.reason)) {
        (Phase::Terminating, Some(StopReason::NotDesired)) => {
            o.phase = Phase::Finished;
            o.stop_request = None;
            ExitKind::Finished
        }
        (Phase::Terminating, Some(StopReason::SpecChanged)) => {
            o.phase = Phase::Exited;
            o.restart_now = true;
            ExitKind::Replaced
        }
        (Phase::Terminating, Some(reason)) => {
            if reason == StopReason::StartupTimeout {
                o.failed_starts += 1;
            }
            o.phase = Phase::Exited;
            ExitKind::StoppedAfterFailure
        }
        _ => {
            if !facts.tail.is_empty() {
                how.push_str("; last output: ");
                how.push_str(&facts.tail.join(" | "));
            }
            o.consecutive_failures += 1;
            if was == Phase::Starting {
                o.failed_starts += 1;
            }
            o.last_error = Some(how.clone());
            o.phase = Phase::Exited;
            ExitKind::Crashed
        }
    };
    Some(ExitOutcome {
        kind,
        message: how,
        oom_killed,
    })
}

/// What a probe result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The first success of a start: now RUNNING.
    Healthy,
    /// A success while RUNNING (a recovery, or nothing new).
    StillHealthy,
    /// A failed liveness probe: `failures` in a row of `threshold`.
    Failed {
        /// Consecutive failed probes.
        failures: u32,
        /// Failures that restart it.
        threshold: u32,
    },
    /// Not for this phase (a late probe of a stopping process, ...).
    Ignored,
}

/// Records a probe result of the current process.
pub fn probed(o: &mut ObservedInstance, ok: bool, detail: &str, now: Instant) -> ProbeOutcome {
    match (o.phase, ok) {
        (Phase::Starting, true) => {
            o.phase = Phase::Running;
            o.healthy_since = Some(now);
            o.probe_failures = 0;
            ProbeOutcome::Healthy
        }
        (Phase::Running, true) => {
            o.probe_failures = 0;
            o.healthy_since = Some(now);
            ProbeOutcome::StillHealthy
        }
        (Phase::Running, false) => {
            o.probe_failures += 1;
            o.healthy_since = None;
            o.last_error = Some(format!("health check failed: {detail}"));
            ProbeOutcome::Failed {
                failures: o.probe_failures,
                threshold: o.pattern.health.failure_threshold,
            }
        }
        _ => ProbeOutcome::Ignored,
    }
}

/// Records a new process of `o` (its first start or a restart).
pub fn spawned(o: &mut ObservedInstance, process: ProcessInfo) {
    if o.exited_at.is_some() {
        o.restart_count += 1;
    }
    o.restart_now = false;
    o.stopping = None;
    o.probe_failures = 0;
    o.healthy_since = None;
    o.launcher_failures = 0;
    o.phase = Phase::Starting;
    o.process = Some(process);
}

/// Who could not start the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnFault {
    /// The pattern: its executable, its directory. A failure.
    Pattern,
    /// The launcher itself: its state directory, descriptors, memory.
    /// Retried with backoff, never counted towards the circuit breaker.
    Launcher,
}

/// Records a start that did not happen.
pub fn spawn_failed(
    o: &mut ObservedInstance,
    error: String,
    fault: SpawnFault,
    now: Instant,
    jitter: f64,
) {
    match fault {
        SpawnFault::Pattern => {
            o.consecutive_failures += 1;
            o.failed_starts += 1;
            o.last_error = Some(error);
        }
        SpawnFault::Launcher => {
            o.launcher_failures += 1;
            o.last_error = Some(format!("the launcher cannot start it: {error}"));
        }
    }
    o.phase = Phase::Exited;
    o.exited_at = Some(now);
    o.restart_jitter = jitter;
    o.restart_now = false;
    o.stopping = None;
}

/// Records that a stop began (SIGTERM sent, or SIGKILL when `force`).
/// A stop for a failure counts as one; returns the message saying why,
/// which is also the instance's `last_error`.
pub fn stop_began(
    o: &mut ObservedInstance,
    reason: StopReason,
    grace: Duration,
    force: bool,
    default_startup_timeout: Duration,
    now: Instant,
) -> Option<String> {
    let why = reason.is_failure().then(|| {
        o.consecutive_failures += 1;
        let why = match reason {
            StopReason::StartupTimeout => format!(
                "not healthy within the start-up timeout of {:?}",
                o.pattern
                    .health
                    .startup_timeout
                    .unwrap_or(default_startup_timeout)
            ),
            _ => o
                .last_error
                .clone()
                .unwrap_or_else(|| "health check failed".into()),
        };
        let msg = format!("{why}; restarting");
        o.last_error = Some(msg.clone());
        msg
    });
    o.phase = Phase::Terminating;
    // Grace periods are capped where they enter; a deadline the clock
    // cannot represent becomes the longest grace there is.
    let deadline = now
        .checked_add(grace)
        .or_else(|| now.checked_add(crate::spec::limits::MAX_GRACE_PERIOD))
        .unwrap_or(now);
    o.stopping = Some(Stopping {
        reason,
        deadline,
        killed: force,
    });
    why
}

/// Records that SIGKILL was sent at the end of the grace period.
pub fn killed(o: &mut ObservedInstance) {
    if let Some(s) = o.stopping.as_mut() {
        s.killed = true;
    }
}

/// Opens the circuit: the instance is not restarted until a new
/// declaration closes it. Returns the reason, also kept as `last_error`.
pub fn break_circuit(o: &mut ObservedInstance) -> String {
    let last = o.last_error.clone().unwrap_or_default();
    let msg = format!(
        "circuit open after {} consecutive failures; last: {last}",
        o.consecutive_failures
    );
    o.last_error = Some(msg.clone());
    o.phase = Phase::Failed;
    msg
}

/// Healthy long enough: the consecutive failures are forgiven.
pub fn reset_failures(o: &mut ObservedInstance) {
    o.consecutive_failures = 0;
}

/// Closes an open circuit (a new `LaunchPattern`, a changed desired file or
/// pattern): the failure count starts again from zero, and the instance is
/// started again at once. The one place a circuit closes. Returns whether
/// it was open; an instance that is not circuit-broken is left as it is (a
/// repeated launch does not forgive a crash loop in progress).
pub fn close_circuit(o: &mut ObservedInstance) -> bool {
    if o.phase != Phase::Failed {
        return false;
    }
    o.consecutive_failures = 0;
    o.phase = Phase::Exited;
    o.restart_now = true;
    true
}

/// An operator asked for a restart while no process runs: it starts at
/// once, whatever backoff or open circuit held it. Returns whether the
/// circuit was open.
pub fn restart_requested(o: &mut ObservedInstance) -> bool {
    let was_open = close_circuit(o);
    o.restart_now = true;
    was_open
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::reconcile::observed::Ports;
    use crate::spec::manifest::{Pattern, Resources};
    use crate::spec::{InstanceKey, InstanceSpec, Isolation};

    fn instance(phase: Phase) -> ObservedInstance {
        let pattern = Pattern {
            resources: Resources {
                memory_limit: Some(64 << 20),
                ..Resources::default()
            },
            ..Pattern::sample("p")
        };
        let spec = InstanceSpec::new(
            InstanceKey::new("p", Isolation::Namespace, "t", "").unwrap(),
            BTreeMap::new(),
            None,
        )
        .unwrap();
        let mut o = ObservedInstance::new(spec, Arc::new(pattern), Ports { grpc: 1, health: 2 });
        o.phase = phase;
        o.process = Some(ProcessInfo {
            pid: 7,
            epoch: 1,
            started_at: Instant::now(),
            start_time: 1,
        });
        o
    }

    fn facts(how: &str) -> ExitFacts {
        ExitFacts {
            how: how.into(),
            oom_kills: 0,
            pids_refused: 0,
            tail: vec!["last words".into()],
        }
    }

    #[test]
    fn a_crash_is_a_failure_and_keeps_the_last_output() {
        let mut o = instance(Phase::Running);
        let now = Instant::now();
        let out = exited(&mut o, facts("killed by signal 9 (SIGKILL)"), now, 0.3).unwrap();
        assert_eq!(out.kind, ExitKind::Crashed);
        assert_eq!(o.consecutive_failures, 1);
        assert_eq!(o.failed_starts, 0, "it had started");
        assert_eq!(o.phase, Phase::Exited);
        assert_eq!(o.exited_at, Some(now));
        assert!(!o.restart_now, "the backoff decides, not the exit");
        assert_eq!(
            o.last_error.as_deref(),
            Some("killed by signal 9 (SIGKILL); last output: last words")
        );
        assert!(o.process.is_none());
        assert_eq!(exited(&mut o, facts("again"), now, 0.3), None);
    }

    #[test]
    fn a_crash_while_starting_is_a_failed_start() {
        let mut o = instance(Phase::Starting);
        exited(&mut o, facts("exited with status 1"), Instant::now(), 0.5).unwrap();
        assert_eq!((o.consecutive_failures, o.failed_starts), (1, 1));
    }

    #[test]
    fn an_oom_kill_is_named_and_counted_once() {
        let mut o = instance(Phase::Running);
        let mut f = facts("killed by signal 9 (SIGKILL)");
        f.oom_kills = 1;
        let out = exited(&mut o, f.clone(), Instant::now(), 0.5).unwrap();
        assert!(out.message.starts_with("OOM-killed"), "{}", out.message);
        assert!(out.message.contains("67108864 bytes"), "{}", out.message);
        o.process = instance(Phase::Running).process;
        o.phase = Phase::Running;
        let out = exited(&mut o, f, Instant::now(), 0.5).unwrap();
        assert!(
            !out.message.starts_with("OOM"),
            "counted once: {}",
            out.message
        );
    }

    #[test]
    fn a_restart_asked_for_starts_at_once_and_closes_an_open_circuit() {
        let mut backing_off = instance(Phase::Exited);
        backing_off.consecutive_failures = 3;
        assert!(!restart_requested(&mut backing_off));
        assert!(backing_off.restart_now);
        let mut broken = instance(Phase::Failed);
        broken.consecutive_failures = 5;
        assert!(restart_requested(&mut broken));
        assert_eq!(broken.phase, Phase::Exited);
        assert_eq!(broken.consecutive_failures, 0);
        assert!(broken.restart_now);
    }

    #[test]
    fn a_stop_we_asked_for_is_no_failure() {
        let now = Instant::now();
        let mut o = instance(Phase::Running);
        stop_began(
            &mut o,
            StopReason::NotDesired,
            Duration::from_secs(1),
            false,
            Duration::from_secs(30),
            now,
        );
        assert_eq!(o.phase, Phase::Terminating);
        let out = exited(&mut o, facts("exited with status 0"), now, 0.5).unwrap();
        assert_eq!(out.kind, ExitKind::Finished);
        assert_eq!((o.phase, o.consecutive_failures), (Phase::Finished, 0));

        let mut o = instance(Phase::Running);
        stop_began(
            &mut o,
            StopReason::SpecChanged,
            Duration::from_secs(1),
            false,
            Duration::from_secs(30),
            now,
        );
        let out = exited(&mut o, facts("exited with status 0"), now, 0.5).unwrap();
        assert_eq!(out.kind, ExitKind::Replaced);
        assert!(o.restart_now);
        assert_eq!(o.consecutive_failures, 0);
    }

    #[test]
    fn a_stop_for_a_failure_counts_once_when_it_begins() {
        let now = Instant::now();
        let mut o = instance(Phase::Starting);
        let why = stop_began(
            &mut o,
            StopReason::StartupTimeout,
            Duration::from_secs(1),
            false,
            Duration::from_secs(30),
            now,
        );
        assert!(why.unwrap().contains("start-up timeout of 30s"));
        assert_eq!(o.consecutive_failures, 1);
        assert_eq!(o.stopping.unwrap().deadline, now + Duration::from_secs(1));
        let out = exited(&mut o, facts("killed by signal 15 (SIGTERM)"), now, 0.5).unwrap();
        assert_eq!(out.kind, ExitKind::StoppedAfterFailure);
        assert_eq!((o.consecutive_failures, o.failed_starts), (1, 1));
    }

    #[test]
    fn a_grace_beyond_the_clock_is_no_panic() {
        let mut o = instance(Phase::Running);
        let now = Instant::now();
        stop_began(
            &mut o,
            StopReason::NotDesired,
            Duration::MAX,
            false,
            Duration::from_secs(30),
            now,
        );
        assert!(o.stopping.unwrap().deadline >= now);
    }

    #[test]
    fn probes_make_it_healthy_and_count_liveness_failures() {
        let now = Instant::now();
        let mut o = instance(Phase::Starting);
        assert_eq!(probed(&mut o, false, "refused", now), ProbeOutcome::Ignored);
        assert_eq!(probed(&mut o, true, "", now), ProbeOutcome::Healthy);
        assert_eq!(o.phase, Phase::Running);
        assert_eq!(
            probed(&mut o, false, "GET /health answered 503", now),
            ProbeOutcome::Failed {
                failures: 1,
                threshold: 3
            }
        );
        assert_eq!(o.healthy_since, None);
        assert_eq!(probed(&mut o, true, "", now), ProbeOutcome::StillHealthy);
        assert_eq!(o.probe_failures, 0);
    }

    #[test]
    fn a_failed_start_counts_unless_the_launcher_is_at_fault() {
        let now = Instant::now();
        let mut o = instance(Phase::Exited);
        o.process = None;
        spawn_failed(
            &mut o,
            "cannot execute /p/x: Permission denied".into(),
            SpawnFault::Pattern,
            now,
            0.5,
        );
        assert_eq!(
            (o.consecutive_failures, o.failed_starts, o.launcher_failures),
            (1, 1, 0)
        );
        spawn_failed(
            &mut o,
            "cannot open log file: Read-only file system".into(),
            SpawnFault::Launcher,
            now,
            0.5,
        );
        assert_eq!((o.consecutive_failures, o.launcher_failures), (1, 1));
        assert!(
            o.last_error
                .unwrap()
                .starts_with("the launcher cannot start it")
        );
    }

    #[test]
    fn the_circuit_opens_and_closes_in_one_place() {
        let mut o = instance(Phase::Exited);
        o.process = None;
        o.consecutive_failures = 5;
        o.last_error = Some("exited with status 1".into());
        let msg = break_circuit(&mut o);
        assert_eq!(
            msg,
            "circuit open after 5 consecutive failures; last: exited with status 1"
        );
        assert_eq!(o.phase, Phase::Failed);
        assert!(close_circuit(&mut o));
        assert_eq!(
            (o.phase, o.consecutive_failures, o.restart_now),
            (Phase::Exited, 0, true)
        );
        assert!(!close_circuit(&mut o), "already closed");
    }

    #[test]
    fn a_new_process_after_an_exit_is_a_restart() {
        let mut o = instance(Phase::Running);
        let now = Instant::now();
        exited(&mut o, facts("exited with status 1"), now, 0.5).unwrap();
        let p = ProcessInfo {
            pid: 8,
            epoch: 2,
            started_at: now,
            start_time: 2,
        };
        spawned(&mut o, p);
        assert_eq!(
            (o.phase, o.restart_count, o.consecutive_failures),
            (Phase::Starting, 1, 1)
        );
        assert_eq!(o.process, Some(p));
    }
}
