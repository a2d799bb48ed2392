//! The planner: one pure function from (desired, catalog, observed, now) to
//! the actions that converge them, and when to look again.
//!
//! Every lifecycle decision is made here: spawn, restart after backoff,
//! break the circuit, stop gracefully, kill at the deadline, forget.
//! Level-triggered: the result depends on the state only, never on what
//! woke the loop.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backoff;
use super::observed::{Observed, ObservedInstance, Phase, StopReason};
use crate::desired::{DesiredInstance, DesiredSet};
use crate::sources::Catalog;

/// Tunables of the lifecycle (SPEC §6 defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    /// Grace period of a graceful stop when nobody chose one.
    pub default_grace: Duration,
    /// How long an instance may take to become healthy.
    pub startup_timeout: Duration,
    /// Consecutive failures that break the circuit.
    pub breaker_threshold: u32,
    /// Healthy this long and the failure count starts again from zero.
    pub healthy_reset: Duration,
    /// A changed manifest or executable restarts a pattern's instances one
    /// at a time, each healthy before the next is stopped. When false, all
    /// at once.
    pub rolling_restart: bool,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            default_grace: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            breaker_threshold: 5,
            healthy_reset: Duration::from_secs(30),
            rolling_restart: true,
        }
    }
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a process for a desired instance (first start or restart).
    Spawn {
        /// Instance.
        process_id: String,
        /// The circuit was open and a new declaration closes it.
        reset_breaker: bool,
    },
    /// SIGTERM the process group (SIGKILL when `force`).
    Stop {
        /// Instance.
        process_id: String,
        /// Why.
        reason: StopReason,
        /// Time before SIGKILL.
        grace: Duration,
        /// Kill at once.
        force: bool,
    },
    /// The grace period ended: SIGKILL the process group.
    Kill {
        /// Instance.
        process_id: String,
    },
    /// Too many consecutive failures: stop restarting.
    BreakCircuit {
        /// Instance.
        process_id: String,
    },
    /// Healthy long enough: the consecutive-failure count restarts at zero.
    ResetFailures {
        /// Instance.
        process_id: String,
    },
    /// Not desired and no process left: drop the entry, free its ports.
    Forget {
        /// Instance.
        process_id: String,
    },
}

/// What to do now, and when to plan again at the latest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Actions, in process_id order.
    pub actions: Vec<Action>,
    /// The earliest time a timer-driven decision falls due.
    pub wake_at: Option<Instant>,
}

impl Plan {
    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

/// Patterns whose instances are being rolled over to a new manifest or
/// executable: at most one instance of each is down at a time.
struct Rollout<'a> {
    desired: &'a DesiredSet,
    observed: &'a Observed,
    /// Patterns with an instance not up: starting, stopping, or waiting
    /// for a restart. Their rollout waits. Computed on first use: most
    /// passes have no pattern change at all.
    busy: Option<HashSet<&'a str>>,
}

impl<'a> Rollout<'a> {
    /// Marks `pattern` as having an instance going down; false when one
    /// already is (the caller must wait).
    fn take(&mut self, pattern: &'a str) -> bool {
        let (desired, observed) = (self.desired, self.observed);
        let busy = self.busy.get_or_insert_with(|| {
            observed
                .iter()
                .filter(|(id, o)| match o.phase {
                    Phase::Starting | Phase::Terminating => true,
                    // A circuit-broken instance halts a rollout: the new
                    // version may be what breaks it.
                    Phase::Exited | Phase::Failed => desired.get(id).is_some(),
                    Phase::Running | Phase::Finished => false,
                })
                .map(|(_, o)| o.spec.key.pattern.as_str())
                .collect()
        });
        busy.insert(pattern)
    }
}

/// Plans one pass. See the module doc.
pub fn plan(
    desired: &DesiredSet,
    catalog: &Catalog,
    observed: &Observed,
    now: Instant,
    cfg: &PlanConfig,
) -> Plan {
    let mut plan = Plan::default();
    let mut rollout = Rollout {
        desired,
        observed,
        busy: None,
    };
    // Both sides are sorted by process_id: walk them together.
    let mut want = desired.iter().peekable();
    let mut have = observed.iter().peekable();
    loop {
        let order = match (want.peek(), have.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((w, _)), Some((h, _))) => w.as_str().cmp(h.as_str()),
        };
        match order {
            // Desired, no entry yet.
            Ordering::Less => {
                if let Some((id, d)) = want.next()
                    && catalog.get(&d.spec().key.pattern).is_some()
                {
                    plan.actions.push(Action::Spawn {
                        process_id: id.clone(),
                        reset_breaker: false,
                    });
                }
            }
            Ordering::Greater => {
                if let Some((id, o)) = have.next() {
                    plan_undesired(id, o, now, cfg, &mut plan);
                }
            }
            Ordering::Equal => {
                if let (Some((id, d)), Some((_, o))) = (want.next(), have.next()) {
                    plan_desired(id, d, o, catalog, now, cfg, &mut rollout, &mut plan);
                }
            }
        }
    }
    plan
}

/// What differs between what an instance should run and what its process
/// was started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Nothing.
    None,
    /// Its declaration (config): restart it now.
    Declaration,
    /// Its pattern's manifest or executable: restart it in a rollout.
    Pattern,
}

fn change(d: &DesiredInstance, o: &ObservedInstance, catalog: &Catalog) -> Change {
    if d.spec().config != o.spec.config {
        return Change::Declaration;
    }
    match catalog.get(&o.spec.key.pattern) {
        // The catalog keeps the same Arc while a manifest is unchanged.
        Some(p) if !Arc::ptr_eq(p, &o.pattern) && **p != *o.pattern => Change::Pattern,
        // A removed pattern keeps its running instances.
        _ => Change::None,
    }
}

fn stop(id: &str, o: &ObservedInstance, reason: StopReason, cfg: &PlanConfig) -> Action {
    let req = o.stop_request;
    Action::Stop {
        process_id: id.to_string(),
        reason,
        grace: req
            .and_then(|r| r.grace)
            .or(o.spec.grace_period)
            .unwrap_or(cfg.default_grace),
        force: req.is_some_and(|r| r.force),
    }
}

fn plan_terminating(id: &str, o: &ObservedInstance, now: Instant, plan: &mut Plan) {
    let Some(s) = o.stopping else { return };
    if s.killed {
        return;
    }
    let forced = o.stop_request.is_some_and(|r| r.force);
    if forced || now >= s.deadline {
        plan.actions.push(Action::Kill {
            process_id: id.to_string(),
        });
    } else {
        plan.wake(s.deadline);
    }
}

#[allow(clippy::too_many_arguments)] // one pass's whole context, read-only but for the outputs
fn plan_desired<'a>(
    id: &str,
    d: &DesiredInstance,
    o: &'a ObservedInstance,
    catalog: &Catalog,
    now: Instant,
    cfg: &PlanConfig,
    rollout: &mut Rollout<'a>,
    plan: &mut Plan,
) {
    let change = change(d, o, catalog);
    let changed = change != Change::None;
    let can_spawn = || catalog.get(&d.spec().key.pattern).is_some();
    let spawn = |reset_breaker| Action::Spawn {
        process_id: id.to_string(),
        reset_breaker,
    };
    match o.phase {
        Phase::Starting | Phase::Running if change == Change::Declaration => {
            plan.actions.push(stop(id, o, StopReason::SpecChanged, cfg));
        }
        // A new manifest or executable: one instance of the pattern down
        // at a time (a starting one is left to come up, or fail, first).
        Phase::Running if change == Change::Pattern => {
            let pattern = o.spec.key.pattern.as_str();
            if !cfg.rolling_restart || rollout.take(pattern) {
                plan.actions.push(stop(id, o, StopReason::SpecChanged, cfg));
            }
        }
        Phase::Starting => {
            let started = o.process.map_or(now, |p| p.started_at);
            let timeout = o
                .pattern
                .health
                .startup_timeout
                .unwrap_or(cfg.startup_timeout);
            match started.checked_add(timeout) {
                Some(deadline) if now < deadline => plan.wake(deadline),
                // Past it, or so far ahead that the clock cannot say.
                Some(_) => plan
                    .actions
                    .push(stop(id, o, StopReason::StartupTimeout, cfg)),
                None => {}
            }
        }
        Phase::Running => {
            if o.probe_failures >= o.pattern.health.failure_threshold {
                plan.actions.push(stop(id, o, StopReason::Liveness, cfg));
            } else if o.consecutive_failures > 0
                && let Some(since) = o.healthy_since
            {
                match since.checked_add(cfg.healthy_reset) {
                    Some(reset_at) if now < reset_at => plan.wake(reset_at),
                    Some(_) => plan.actions.push(Action::ResetFailures {
                        process_id: id.to_string(),
                    }),
                    None => {}
                }
            }
        }
        Phase::Terminating => plan_terminating(id, o, now, plan),
        Phase::Exited if can_spawn() => {
            if o.consecutive_failures >= cfg.breaker_threshold && !o.restart_now {
                plan.actions.push(Action::BreakCircuit {
                    process_id: id.to_string(),
                });
                return;
            }
            let due = next_restart(o, cfg).unwrap_or(now);
            if now >= due {
                plan.actions.push(spawn(false));
            } else {
                plan.wake(due);
            }
        }
        Phase::Failed if changed && can_spawn() => plan.actions.push(spawn(true)),
        Phase::Finished if can_spawn() => plan.actions.push(spawn(false)),
        Phase::Exited | Phase::Failed | Phase::Finished => {}
    }
}

/// The delay before an exited instance starts again: none when a restart
/// was asked for, else the backoff of its failures in a row (the
/// launcher's own failures to start it back off too, but never open the
/// circuit).
pub fn restart_delay(o: &ObservedInstance) -> Duration {
    if o.restart_now {
        Duration::ZERO
    } else {
        backoff::delay(
            o.consecutive_failures.saturating_add(o.launcher_failures),
            o.restart_jitter,
        )
    }
}

/// When an exited instance is due to start again, or `None` when the
/// circuit breaks instead (or it has not exited).
pub fn next_restart(o: &ObservedInstance, cfg: &PlanConfig) -> Option<Instant> {
    if o.consecutive_failures >= cfg.breaker_threshold && !o.restart_now {
        return None;
    }
    let exited = o.exited_at?;
    Some(exited.checked_add(restart_delay(o)).unwrap_or(exited))
}

fn plan_undesired(id: &str, o: &ObservedInstance, now: Instant, cfg: &PlanConfig, plan: &mut Plan) {
    match o.phase {
        Phase::Starting | Phase::Running => {
            plan.actions.push(stop(id, o, StopReason::NotDesired, cfg));
        }
        Phase::Terminating => plan_terminating(id, o, now, plan),
        Phase::Exited | Phase::Failed | Phase::Finished => plan.actions.push(Action::Forget {
            process_id: id.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests;
