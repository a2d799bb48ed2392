//! The controller's lifecycle under simulated time: the real reconcile
//! loop, planner and transitions against [`FakeRuntime`], with tokio's
//! clock paused (it jumps to the next timer when everything waits), so a
//! test of minutes of launcher time takes milliseconds.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use super::snapshot::{InstanceStatus, Snapshot};
use super::{
    Accepted, Command, CommandError, Controller, ControllerConfig, ControllerHandle, LaunchParams,
    Watchers,
};
use crate::reconcile::PlanConfig;
use crate::reconcile::observed::{Phase, Ports};
use crate::runtime::CgroupWork;
use crate::runtime::discover::{self, Found};
use crate::runtime::fake::{Behaviour, Call, FakeRuntime, killed_by};
use crate::sources::Catalog;
use crate::sources::DesiredDoc;
use crate::sources::FileEvent;
use crate::sources::catalog::watcher::Reloaded;
use crate::spec::{InstanceKey, InstanceSpec, Isolation};

mod cgroups;
mod events;

/// Longest a simulated wait may take (virtual time).
const PATIENCE: Duration = Duration::from_secs(600);

fn manifest(name: &str, version: &str) -> String {
    format!(
        "name: {name}\nversion: {version}\nexecutable: /bin/true\nisolation_level: namespace\n\
         healthcheck:\n  interval: 30s\n  timeout: 5s\n"
    )
}

fn write_manifest(dir: &Path, name: &str, version: &str) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("pattern dir");
    std::fs::write(d.join("manifest.yaml"), manifest(name, version)).expect("manifest");
}

/// A controller on a fake runtime, its loop running on the paused clock.
struct Sim {
    fake: FakeRuntime,
    handle: ControllerHandle,
    desired: mpsc::UnboundedSender<FileEvent>,
    patterns: mpsc::UnboundedSender<Reloaded>,
    patterns_dir: tempfile::TempDir,
}

impl Sim {
    /// Patterns `names` (manifests in a temp dir), each process behaving as
    /// `behaviour` says, and whatever `setup` puts in the fake first.
    fn start(
        names: &[&str],
        behaviour: Behaviour,
        setup: impl FnOnce(&mut crate::runtime::fake::FakeState),
    ) -> Sim {
        let patterns_dir = tempfile::tempdir().expect("temp dir");
        for n in names {
            write_manifest(patterns_dir.path(), n, "1");
        }
        let (catalog, errors) = Catalog::discover(patterns_dir.path());
        assert!(errors.is_empty(), "{errors:?}");
        let (events_tx, events) = mpsc::unbounded_channel();
        let fake = FakeRuntime::new(events_tx);
        {
            let mut st = fake.state();
            for n in names {
                st.behaviour.insert((*n).to_string(), behaviour);
            }
            setup(&mut st);
        }
        let (desired, desired_rx) = mpsc::unbounded_channel();
        let (patterns, patterns_rx) = mpsc::unbounded_channel();
        desired.send(FileEvent::Synced).expect("synced");
        let cfg = ControllerConfig {
            patterns_dir: patterns_dir.path().to_path_buf(),
            port_range: 50000..=50999,
            plan: PlanConfig::default(),
            orphan_sweep: Duration::from_secs(60),
            keep_instances_on_exit: false,
            events: crate::events::EventLog::in_memory(),
            metrics: Default::default(),
            notifier: Default::default(),
        };
        let watchers = Watchers {
            desired: desired_rx,
            patterns: patterns_rx,
        };
        let (controller, handle) =
            Controller::new(cfg, catalog, Vec::new(), watchers, fake.clone(), events)
                .expect("controller");
        tokio::spawn(controller.run());
        Sim {
            fake,
            handle,
            desired,
            patterns,
            patterns_dir,
        }
    }

    /// The patterns watcher's part: the catalog loaded again, handed over.
    fn reload_patterns(&self) {
        let (catalog, errors) = Catalog::discover(self.patterns_dir.path());
        self.patterns
            .send(Reloaded { catalog, errors })
            .expect("the loop takes catalogs");
    }

    async fn launch_with(
        &self,
        pattern: &str,
        namespace: &str,
        config: &[(&str, &str)],
    ) -> Result<Accepted, CommandError> {
        let (reply, rx) = oneshot::channel();
        let params = LaunchParams {
            pattern: pattern.into(),
            isolation: Some(Isolation::Namespace),
            namespace: namespace.into(),
            session_id: String::new(),
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            grace_period_secs: 0,
            actor: "test".into(),
            grant: None,
        };
        self.handle
            .commands
            .send(Command::Launch { params, reply })
            .await
            .expect("the loop takes commands");
        rx.await.expect("the loop answers")
    }

    async fn launch(&self, namespace: &str) -> String {
        self.launch_with("p", namespace, &[])
            .await
            .expect("launch")
            .process_id
    }

    async fn terminate(&self, id: &str, grace: Duration) -> Result<Option<u32>, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.handle
            .commands
            .send(Command::Terminate {
                process_id: id.into(),
                grace: Some(grace),
                force: false,
                actor: "test".into(),
                reply,
            })
            .await
            .expect("the loop takes commands");
        rx.await.expect("the loop answers")
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.handle.snapshots.borrow().clone()
    }

    fn status(&self, id: &str) -> Option<Arc<InstanceStatus>> {
        self.snapshot().instances.get(id).cloned()
    }

    /// Waits (in virtual time) until `cond` holds for a snapshot.
    async fn until(&self, what: &str, cond: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
        let mut rx = self.handle.snapshots.clone();
        let ok = tokio::time::timeout(PATIENCE, rx.wait_for(|s| cond(s))).await;
        assert!(
            ok.is_ok_and(|r| r.is_ok()),
            "never {what}; last: {:?}\ncalls: {:?}",
            self.snapshot().instances,
            self.fake.calls()
        );
        self.snapshot()
    }

    /// Waits (in virtual time) until a call matching `cond` was made.
    async fn until_call(&self, what: &str, cond: impl Fn(&Call) -> bool) -> Instant {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some((t, _)) = self.fake.calls().into_iter().find(|(_, c)| cond(c)) {
                return t;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {what}; calls: {:?}",
                self.fake.calls()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the processes `pids` of `process_id`'s cgroup got
    /// SIGTERM, then the cgroup SIGKILL; returns when each was sent.
    async fn reaped(&self, process_id: &str, pids: &[u32]) -> (Instant, Instant) {
        let term = Call::SignalPids {
            pids: pids.to_vec(),
            sig: Signal::SIGTERM,
        };
        let kill = Call::CgroupWork {
            process_id: process_id.to_string(),
            work: CgroupWork::Kill,
        };
        let termed = self
            .until_call(&format!("SIGTERM to {pids:?}"), |c| *c == term)
            .await;
        let killed = self
            .until_call(&format!("SIGKILL to {process_id}'s cgroup"), |c| *c == kill)
            .await;
        (termed, killed)
    }

    async fn until_phase(&self, id: &str, phase: Phase) -> Arc<InstanceStatus> {
        let snap = self
            .until(&format!("{id} {phase:?}"), |s| {
                s.instances.get(id).is_some_and(|i| i.phase == phase)
            })
            .await;
        snap.instances[id].clone()
    }

    /// The pids started for `id`, with when.
    fn starts(&self, id: &str) -> Vec<(Instant, u32)> {
        self.fake
            .calls()
            .into_iter()
            .filter_map(|(t, c)| match c {
                Call::Start { process_id, pid } if process_id == id => Some((t, pid)),
                _ => None,
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_spawns_exactly_five_times_with_backoff_then_opens_the_circuit() {
    let crash = Behaviour {
        crash_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], crash, |_| {});
    let id = sim.launch("a").await;
    let failed = sim.until_phase(&id, Phase::Failed).await;
    assert!(
        failed
            .last_error
            .starts_with("circuit open after 5 consecutive failures"),
        "{}",
        failed.last_error
    );
    // It stays failed: nothing more is started, however long we wait.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let starts = sim.starts(&id);
    assert_eq!(starts.len(), 5, "{starts:?}");
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert_eq!(gaps[0], Duration::ZERO, "the first restart is immediate");
    for (gap, base) in gaps[1..].iter().zip([100u64, 200, 400]) {
        let base = Duration::from_millis(base);
        assert!(
            *gap >= base.mul_f64(0.9) && *gap <= base.mul_f64(1.1),
            "gap {gap:?} is not {base:?} ±10%: {gaps:?}"
        );
    }
    // A new launch closes the circuit and starts it again.
    sim.launch("a").await;
    sim.until(&format!("{id} started again"), |_| {
        sim.starts(&id).len() > 5
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn the_failure_count_resets_after_thirty_seconds_healthy() {
    let healthy = Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], healthy, |_| {});
    let id = sim.launch("a").await;
    sim.until_phase(&id, Phase::Running).await;
    sim.fake.exit(&id, killed_by(Signal::SIGKILL));
    let back = sim
        .until("restarted and healthy", |s| {
            s.instances
                .get(&id)
                .is_some_and(|i| i.phase == Phase::Running && i.restart_count == 1)
        })
        .await;
    assert_eq!(back.instances[&id].error_count, 1);
    assert!(back.instances[&id].last_error.contains("SIGKILL"));
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(sim.status(&id).unwrap().error_count, 1, "not yet");
    tokio::time::sleep(Duration::from_secs(2)).await;
    sim.until("forgiven", |s| s.instances[&id].error_count == 0)
        .await;
}

#[tokio::test(start_paused = true)]
async fn terminate_sends_sigterm_then_sigkill_when_the_grace_period_ends() {
    let stubborn = Behaviour {
        healthy_at_start: true,
        ignore_sigterm: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], stubborn, |_| {});
    let id = sim.launch("a").await;
    let pid = sim.until_phase(&id, Phase::Running).await.pid;
    let asked = tokio::time::Instant::now().into_std();
    assert_eq!(sim.terminate(&id, Duration::from_secs(5)).await, Ok(pid));
    sim.until("gone", |s| !s.instances.contains_key(&id)).await;
    let calls = sim.fake.calls();
    let term = calls
        .iter()
        .find(|(_, c)| {
            matches!(
                c,
                Call::Signal {
                    sig: Signal::SIGTERM,
                    ..
                }
            )
        })
        .expect("SIGTERM sent");
    let kill = calls
        .iter()
        .find(|(_, c)| matches!(c, Call::Kill { .. }))
        .expect("SIGKILL sent");
    assert!(
        term.0 - asked < Duration::from_millis(10),
        "SIGTERM at once"
    );
    assert_eq!(
        kill.0 - term.0,
        Duration::from_secs(5),
        "SIGKILL at the end of the grace"
    );
}

#[tokio::test(start_paused = true)]
async fn a_process_that_still_runs_is_adopted_after_a_restart_not_started_again() {
    let key = InstanceKey::new("p", Isolation::Namespace, "a", "").unwrap();
    let spec = InstanceSpec::new(key.clone(), BTreeMap::new(), None).unwrap();
    let found = Found {
        process_id: key.process_id(),
        pid: 4242,
        start_time: 77,
        spec_hash: discover::spec_hash(&spec),
        ports: Some(Ports {
            grpc: 50000,
            health: 50001,
        }),
        key: Some(key.clone()),
    };
    let sim = Sim::start(&["p"], Behaviour::default(), |st| {
        st.api = vec![spec];
        st.found = vec![found];
    });
    let id = key.process_id();
    let adopted = sim.until_phase(&id, Phase::Starting).await;
    assert_eq!(adopted.pid, Some(4242));
    sim.fake.probe(&id, true);
    sim.until_phase(&id, Phase::Running).await;
    assert!(
        sim.starts(&id).is_empty(),
        "an adopted process is not started again"
    );
    assert!(sim.fake.calls().iter().any(|(_, c)| *c
        == Call::Adopt {
            process_id: id.clone(),
            pid: 4242
        }));
}

#[tokio::test(start_paused = true)]
async fn the_orphan_sweep_stops_what_no_instance_owns() {
    let sim = Sim::start(&["p"], Behaviour::default(), |st| {
        st.orphans.insert("ns:ghost:p".into(), vec![777]);
    });
    let t0 = tokio::time::Instant::now().into_std();
    let (term, kill) = sim.reaped("ns:ghost:p", &[777]).await;
    assert!(term - t0 < Duration::from_secs(1), "swept at start-up");
    assert_eq!(kill - term, PlanConfig::default().default_grace);
    assert!(
        sim.snapshot().instances.is_empty(),
        "an orphan is no instance"
    );
}

fn doc(namespace: &str, config: &[(&str, &str)]) -> DesiredDoc {
    DesiredDoc {
        pattern: "p".into(),
        isolation: None,
        namespace: namespace.into(),
        session_id: String::new(),
        config: config
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
        grace_period: None,
        line: 1,
    }
}

#[tokio::test(start_paused = true)]
async fn a_file_and_the_api_that_disagree_refuse_the_later_declaration() {
    let sim = Sim::start(&["p"], Behaviour::default(), |_| {});
    sim.desired
        .send(FileEvent::Changed {
            name: "a.yaml".into(),
            result: Ok(vec![doc("t", &[("LEVEL", "1")])]),
        })
        .unwrap();
    sim.until("declared by the file", |s| {
        s.instances.contains_key("ns:t:p")
    })
    .await;
    let err = sim
        .launch_with("p", "t", &[("LEVEL", "2")])
        .await
        .expect_err("another config for the same instance");
    assert!(
        matches!(&err, CommandError::FailedPrecondition(m) if m.contains("desired/a.yaml")),
        "{err:?}"
    );
    // The API first, then a file that disagrees: the file is refused.
    sim.launch_with("p", "u", &[("LEVEL", "1")]).await.unwrap();
    sim.desired
        .send(FileEvent::Changed {
            name: "b.yaml".into(),
            result: Ok(vec![doc("u", &[("LEVEL", "2")])]),
        })
        .unwrap();
    let snap = sim
        .until("the file refused", |s| {
            s.sources
                .iter()
                .any(|f| f.path == "desired/b.yaml" && f.error.is_some())
        })
        .await;
    let e = snap
        .sources
        .iter()
        .find(|f| f.path == "desired/b.yaml")
        .and_then(|f| f.error.clone())
        .unwrap();
    assert!(e.message.contains("ns:u:p"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_new_pattern_directory_is_launchable_without_a_restart() {
    let sim = Sim::start(&["p"], Behaviour::default(), |_| {});
    let err = sim
        .launch_with("q", "a", &[])
        .await
        .expect_err("unknown yet");
    assert!(matches!(err, CommandError::NotFound(_)), "{err:?}");
    write_manifest(sim.patterns_dir.path(), "q", "1");
    sim.reload_patterns();
    sim.until("q known", |s| s.sources.iter().any(|f| f.pattern == "q"))
        .await;
    sim.launch_with("q", "a", &[])
        .await
        .expect("launchable now");
}

#[tokio::test(start_paused = true)]
async fn a_changed_manifest_restarts_its_instances_one_at_a_time() {
    let healthy = Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], healthy, |_| {});
    let ids = [
        sim.launch("a").await,
        sim.launch("b").await,
        sim.launch("c").await,
    ];
    for id in &ids {
        sim.until_phase(id, Phase::Running).await;
    }
    let before = sim.fake.calls().len();
    write_manifest(sim.patterns_dir.path(), "p", "2");
    sim.reload_patterns();
    sim.until("all restarted", |s| {
        ids.iter().all(|id| {
            s.instances
                .get(id)
                .is_some_and(|i| i.restart_count == 1 && i.phase == Phase::Running)
        })
    })
    .await;
    // Stop, start, stop, start: never two instances down at once.
    let order: Vec<String> = sim.fake.calls()[before..]
        .iter()
        .map(|(_, c)| match c {
            Call::Signal { process_id, .. } => format!("stop {process_id}"),
            Call::Start { process_id, .. } => format!("start {process_id}"),
            other => format!("{other:?}"),
        })
        .collect();
    let expected: Vec<String> = ids
        .iter()
        .flat_map(|id| [format!("stop {id}"), format!("start {id}")])
        .collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_of_many_runs_in_batches_of_at_most_sixty_four() {
    let healthy = Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], healthy, |_| {});
    let docs: Vec<DesiredDoc> = (0..150).map(|i| doc(&format!("t{i}"), &[])).collect();
    sim.desired
        .send(FileEvent::Changed {
            name: "many.yaml".into(),
            result: Ok(docs),
        })
        .unwrap();
    sim.until("all 150 running", |s| {
        s.instances.len() == 150 && s.instances.values().all(|i| i.phase == Phase::Running)
    })
    .await;
    let batches = sim.fake.state().batches.clone();
    assert_eq!(batches, vec![64, 64, 22], "starts per batch");
    let starts = sim
        .fake
        .calls()
        .iter()
        .filter(|(_, c)| matches!(c, Call::Start { .. }))
        .count();
    assert_eq!(starts, 150, "each instance started once");
}
