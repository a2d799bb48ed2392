//! Unit tests of the parent module.

use std::collections::BTreeMap;

use super::*;
use crate::desired::Source;
use crate::reconcile::observed::{Ports, ProcessInfo, StopRequest, Stopping};
use crate::spec::manifest::Pattern;
use crate::spec::{InstanceKey, InstanceSpec, Isolation};

fn pattern() -> Pattern {
    Pattern::sample("p")
}

fn spec(ns: &str) -> InstanceSpec {
    InstanceSpec::new(
        InstanceKey::new("p", Isolation::Namespace, ns, "").unwrap(),
        BTreeMap::new(),
        None,
    )
    .unwrap()
}

struct World {
    desired: DesiredSet,
    catalog: Catalog,
    observed: Observed,
    cfg: PlanConfig,
    t0: Instant,
}

impl World {
    fn new() -> Self {
        World {
            desired: DesiredSet::default(),
            catalog: Catalog::from_patterns([pattern()]),
            observed: Observed::new(),
            cfg: PlanConfig::default(),
            t0: Instant::now(),
        }
    }
    fn want(&mut self, ns: &str) {
        self.desired.declare(Source::Api, spec(ns)).unwrap();
    }
    fn with(&mut self, ns: &str, phase: Phase) -> &mut ObservedInstance {
        let pattern = self.catalog.get("p").unwrap().clone();
        let mut o = ObservedInstance::new(spec(ns), pattern, Ports { grpc: 1, health: 2 });
        o.phase = phase;
        o.restart_now = false;
        o.process = Some(ProcessInfo {
            pid: 42,
            epoch: 1,
            started_at: self.t0,
            start_time: 0,
        });
        self.observed.insert(format!("ns:{ns}:p"), o);
        self.observed.get_mut(&format!("ns:{ns}:p")).unwrap()
    }
    fn plan_at(&self, after: Duration) -> Plan {
        plan(
            &self.desired,
            &self.catalog,
            &self.observed,
            self.t0 + after,
            &self.cfg,
        )
    }
}

fn id(ns: &str) -> String {
    format!("ns:{ns}:p")
}

#[test]
fn a_desired_instance_without_a_process_is_spawned() {
    let mut w = World::new();
    w.want("a");
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Spawn {
            process_id: id("a"),
            reset_breaker: false
        }]
    );
}

#[test]
fn nothing_is_done_when_everything_runs_as_desired() {
    let mut w = World::new();
    w.want("a");
    w.with("a", Phase::Running);
    let p = w.plan_at(Duration::from_secs(1));
    assert!(p.actions.is_empty());
    assert_eq!(p.wake_at, None);
}

#[test]
fn an_instance_of_an_unknown_pattern_is_not_spawned() {
    let mut w = World::new();
    w.catalog = Catalog::default();
    w.want("a");
    assert!(w.plan_at(Duration::ZERO).actions.is_empty());
}

#[test]
fn the_first_restart_after_a_crash_is_immediate_and_later_ones_back_off() {
    let mut w = World::new();
    w.want("a");
    let t0 = w.t0;
    let o = w.with("a", Phase::Exited);
    o.consecutive_failures = 1;
    o.exited_at = Some(t0);
    assert_eq!(w.plan_at(Duration::ZERO).actions.len(), 1);

    let o = w.observed.get_mut(&id("a")).unwrap();
    o.consecutive_failures = 3;
    let p = w.plan_at(Duration::from_millis(10));
    assert!(p.actions.is_empty());
    assert_eq!(p.wake_at, Some(w.t0 + Duration::from_millis(200)));
    assert_eq!(w.plan_at(Duration::from_millis(200)).actions.len(), 1);
}

#[test]
fn five_consecutive_failures_break_the_circuit() {
    let mut w = World::new();
    w.want("a");
    let t0 = w.t0;
    let o = w.with("a", Phase::Exited);
    o.consecutive_failures = 5;
    o.exited_at = Some(t0);
    assert_eq!(
        w.plan_at(Duration::from_secs(60)).actions,
        vec![Action::BreakCircuit {
            process_id: id("a")
        }]
    );
}

#[test]
fn a_failed_instance_stays_down_until_its_declaration_changes() {
    let mut w = World::new();
    w.want("a");
    w.with("a", Phase::Failed);
    assert!(w.plan_at(Duration::from_secs(3600)).actions.is_empty());
    let mut changed = spec("a");
    Arc::make_mut(&mut changed.config).insert("X".into(), "1".into());
    w.desired = DesiredSet::default();
    w.desired
        .declare(Source::File("f.yaml".into()), changed)
        .unwrap();
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Spawn {
            process_id: id("a"),
            reset_breaker: true
        }]
    );
}

#[test]
fn a_running_instance_no_longer_desired_is_stopped_gracefully_then_killed() {
    let mut w = World::new();
    w.with("a", Phase::Running);
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Stop {
            process_id: id("a"),
            reason: StopReason::NotDesired,
            grace: Duration::from_secs(10),
            force: false
        }]
    );
    let o = w.observed.get_mut(&id("a")).unwrap();
    o.phase = Phase::Terminating;
    o.stopping = Some(Stopping {
        reason: StopReason::NotDesired,
        deadline: w.t0 + Duration::from_secs(10),
        killed: false,
    });
    let p = w.plan_at(Duration::from_secs(5));
    assert!(p.actions.is_empty());
    assert_eq!(p.wake_at, Some(w.t0 + Duration::from_secs(10)));
    assert_eq!(
        w.plan_at(Duration::from_secs(10)).actions,
        vec![Action::Kill {
            process_id: id("a")
        }]
    );
}

#[test]
fn a_forced_stop_kills_without_waiting() {
    let mut w = World::new();
    let t0 = w.t0;
    let o = w.with("a", Phase::Terminating);
    o.stop_request = Some(StopRequest {
        grace: None,
        force: true,
    });
    o.stopping = Some(Stopping {
        reason: StopReason::NotDesired,
        deadline: t0 + Duration::from_secs(10),
        killed: false,
    });
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Kill {
            process_id: id("a")
        }]
    );
}

#[test]
fn an_exited_undesired_instance_is_forgotten() {
    let mut w = World::new();
    w.with("a", Phase::Finished);
    w.with("b", Phase::Failed);
    assert_eq!(w.plan_at(Duration::ZERO).actions.len(), 2);
    assert!(
        w.plan_at(Duration::ZERO)
            .actions
            .iter()
            .all(|a| matches!(a, Action::Forget { .. }))
    );
}

#[test]
fn failed_liveness_probes_up_to_the_threshold_restart_the_instance() {
    let mut w = World::new();
    w.want("a");
    let o = w.with("a", Phase::Running);
    o.probe_failures = 2;
    assert!(w.plan_at(Duration::ZERO).actions.is_empty());
    w.observed.get_mut(&id("a")).unwrap().probe_failures = 3;
    assert!(matches!(
        w.plan_at(Duration::ZERO).actions[..],
        [Action::Stop {
            reason: StopReason::Liveness,
            ..
        }]
    ));
}

#[test]
fn a_start_that_takes_too_long_is_a_failure() {
    let mut w = World::new();
    w.want("a");
    w.with("a", Phase::Starting);
    let p = w.plan_at(Duration::from_secs(1));
    assert!(p.actions.is_empty());
    assert_eq!(p.wake_at, Some(w.t0 + Duration::from_secs(30)));
    assert!(matches!(
        w.plan_at(Duration::from_secs(30)).actions[..],
        [Action::Stop {
            reason: StopReason::StartupTimeout,
            ..
        }]
    ));
}

#[test]
fn a_changed_config_restarts_only_that_instance() {
    let mut w = World::new();
    w.want("a");
    w.with("a", Phase::Running);
    w.with("b", Phase::Running);
    let mut changed = spec("b");
    Arc::make_mut(&mut changed.config).insert("X".into(), "1".into());
    w.desired
        .declare(Source::File("f.yaml".into()), changed)
        .unwrap();
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Stop {
            process_id: id("b"),
            reason: StopReason::SpecChanged,
            grace: Duration::from_secs(10),
            force: false
        }]
    );
}

#[test]
fn staying_healthy_for_thirty_seconds_resets_the_failure_count() {
    let mut w = World::new();
    w.want("a");
    let t0 = w.t0;
    let o = w.with("a", Phase::Running);
    o.consecutive_failures = 3;
    o.healthy_since = Some(t0);
    let p = w.plan_at(Duration::from_secs(29));
    assert!(p.actions.is_empty());
    assert_eq!(p.wake_at, Some(w.t0 + Duration::from_secs(30)));
    assert_eq!(
        w.plan_at(Duration::from_secs(30)).actions,
        vec![Action::ResetFailures {
            process_id: id("a")
        }]
    );
}

#[test]
fn a_new_executable_restarts_a_patterns_instances_one_at_a_time() {
    let mut w = World::new();
    for ns in ["a", "b", "c"] {
        w.want(ns);
        w.with(ns, Phase::Running);
    }
    let mut rebuilt = pattern();
    rebuilt.exe_hash = 7;
    w.catalog = Catalog::from_patterns([rebuilt]);
    let stops = |p: &Plan| {
        p.actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Stop {
                        reason: StopReason::SpecChanged,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(stops(&w.plan_at(Duration::ZERO)), 1);
    // While the first one is down, nothing else is stopped.
    w.observed.get_mut(&id("a")).unwrap().phase = Phase::Terminating;
    assert_eq!(stops(&w.plan_at(Duration::ZERO)), 0);
    w.observed.get_mut(&id("a")).unwrap().phase = Phase::Starting;
    assert_eq!(stops(&w.plan_at(Duration::ZERO)), 0);
    // Healthy on the new version: the next one goes.
    let new = w.catalog.get("p").unwrap().clone();
    let o = w.observed.get_mut(&id("a")).unwrap();
    o.phase = Phase::Running;
    o.pattern = new;
    assert_eq!(
        w.plan_at(Duration::ZERO).actions,
        vec![Action::Stop {
            process_id: id("b"),
            reason: StopReason::SpecChanged,
            grace: Duration::from_secs(10),
            force: false
        }]
    );
    // Without rolling restarts, all at once.
    w.cfg.rolling_restart = false;
    assert_eq!(stops(&w.plan_at(Duration::ZERO)), 2);
}

#[tokio::test(start_paused = true)]
async fn backoff_schedule_under_paused_time_spawns_five_times_then_breaks() {
    // Drive the planner the way the loop does, with the transitions the
    // controller applies: every spawn starts a process that crashes at
    // once. tokio's paused clock stands in for time.
    use crate::reconcile::transitions::{self, ExitFacts};
    let mut w = World::new();
    w.want("a");
    let mut spawned_at = Vec::new();
    let mut broke = false;
    for epoch in 0..50 {
        let now = tokio::time::Instant::now().into_std();
        let p = plan(&w.desired, &w.catalog, &w.observed, now, &w.cfg);
        for a in &p.actions {
            match a {
                Action::Spawn { .. } => {
                    spawned_at.push(now);
                    if !w.observed.contains_key(&id("a")) {
                        w.with("a", Phase::Exited).process = None;
                    }
                    let o = w.observed.get_mut(&id("a")).unwrap();
                    let process = ProcessInfo {
                        pid: 100 + epoch,
                        epoch: u64::from(epoch),
                        started_at: now,
                        start_time: 0,
                    };
                    transitions::spawned(o, process);
                    let crash = ExitFacts {
                        how: "exited with status 1".into(),
                        oom_kills: 0,
                        pids_refused: 0,
                        tail: Vec::new(),
                    };
                    transitions::exited(o, crash, now, 0.5).unwrap();
                }
                Action::BreakCircuit { .. } => {
                    broke = true;
                    transitions::break_circuit(w.observed.get_mut(&id("a")).unwrap());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        match p.wake_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None if p.actions.is_empty() => break,
            None => {}
        }
    }
    assert_eq!(
        spawned_at.len(),
        5,
        "exactly five starts, then the circuit opens"
    );
    assert!(broke);
    let o = w.observed.get(&id("a")).unwrap();
    assert_eq!((o.phase, o.consecutive_failures), (Phase::Failed, 5));
    // The first restart is immediate, then 100 ms doubling (no jitter
    // at 0.5).
    let gaps: Vec<Duration> = spawned_at.windows(2).map(|w| w[1] - w[0]).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, vec![ms(0), ms(100), ms(200), ms(400)]);
}
