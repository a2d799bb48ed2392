//! Events, Describe, restart and signal requests, in simulated time: what
//! the controller records for each lifecycle step, in order.

use super::*;
use crate::events::{Filter, Item, Reason, Start};

impl Sim {
    /// Waits until the log holds an event of `id` with `reason`; returns the
    /// events of `id` so far.
    async fn until_event(&self, id: &str, reason: Reason) -> Vec<Arc<crate::events::Event>> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let events = self.handle.events.recent(id, 1000);
            if events.iter().any(|e| e.event.reason == reason) {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never {reason:?} for {id}: {:?}",
                reasons(&events)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, CommandError>>) -> Command,
    ) -> Result<T, CommandError> {
        let (reply, rx) = oneshot::channel();
        self.handle
            .commands
            .send(make(reply))
            .await
            .expect("the loop takes commands");
        rx.await.expect("the loop answers")
    }
}

fn reasons(events: &[Arc<crate::events::Event>]) -> Vec<Reason> {
    events.iter().map(|e| e.event.reason).collect()
}

fn healthy() -> Behaviour {
    Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_kill_shows_as_exited_naming_the_signal_then_spawned_then_healthy() {
    let sim = Sim::start(&["p"], healthy(), |_| {});
    let mut watch = sim.handle.events.subscribe(0, Filter::default()).unwrap();
    let id = sim.launch("a").await;
    sim.until_event(&id, Reason::Healthy).await;
    sim.fake.exit(&id, killed_by(Signal::SIGKILL));
    sim.until("restarted", |s| {
        s.instances
            .get(&id)
            .is_some_and(|i| i.restart_count == 1 && i.healthy)
    })
    .await;
    let mut seen = Vec::new();
    while let Ok(Item::Event(e)) = watch.live.try_recv() {
        seen.push(e);
    }
    let revs: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert!(revs.windows(2).all(|w| w[1] == w[0] + 1), "{revs:?}");
    let mine: Vec<_> = seen.iter().filter(|e| e.event.process_id == id).collect();
    let order: Vec<Reason> = mine.iter().map(|e| e.event.reason).collect();
    assert_eq!(
        order,
        [
            Reason::Declared,
            Reason::Spawned,
            Reason::Healthy,
            Reason::Exited,
            Reason::Spawned,
            Reason::Healthy
        ]
    );
    let exited = &mine[3].event;
    assert!(
        exited.message.contains("signal 9") && exited.message.contains("SIGKILL"),
        "{}",
        exited.message
    );
    // The instance after the event rides along: no pid once it exited.
    assert_eq!(exited.process.as_ref().map(|p| p.pid), Some(None));
    assert_eq!(mine[0].event.actor, "test");
}

#[tokio::test(start_paused = true)]
async fn a_crash_loop_records_each_backoff_then_the_open_circuit_and_describe_says_why() {
    let crash = Behaviour {
        crash_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], crash, |_| {});
    let id = sim.launch("a").await;
    let events = sim.until_event(&id, Reason::CircuitOpen).await;
    let backoffs: Vec<&str> = events
        .iter()
        .filter(|e| e.event.reason == Reason::BackOff)
        .map(|e| e.event.message.as_str())
        .collect();
    // The first restart is immediate (no BackOff), then 100, 200, 400 ms
    // (±10 % jitter); the fifth failure opens the circuit instead.
    assert_eq!(backoffs.len(), 3, "{backoffs:?}");
    for (msg, ms) in backoffs.iter().zip([100u64, 200, 400]) {
        let got: u64 = msg
            .trim_start_matches("next start in ")
            .trim_end_matches("ms")
            .parse()
            .unwrap_or_else(|_| panic!("{msg}"));
        assert!(
            got * 10 >= ms * 9 && got * 10 <= ms * 11,
            "{msg} is not {ms}ms"
        );
    }
    let exits = reasons(&events)
        .into_iter()
        .filter(|r| *r == Reason::Exited)
        .count();
    assert_eq!(exits, 5);
    let d = sim
        .ask(|reply| Command::Describe {
            process_id: id.clone(),
            reply,
        })
        .await
        .expect("describe");
    let open = d
        .conditions
        .iter()
        .find(|c| c.kind == "CircuitOpen")
        .expect("a CircuitOpen condition");
    assert_eq!(open.status, Some(true));
    assert_eq!(open.reason, "CircuitOpen");
    assert!(
        open.message.contains("5 consecutive failures") && open.message.contains("exit"),
        "{}",
        open.message
    );
    assert!(open.since.is_some());
    assert!(d.next_restart.is_none(), "no restart is pending");
    assert_eq!(
        d.events.last().map(|e| e.event.reason),
        Some(Reason::CircuitOpen)
    );
    let started = d.conditions.iter().find(|c| c.kind == "Started").unwrap();
    assert_eq!(started.status, Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_restart_request_stops_gracefully_and_starts_again_without_counting_a_failure() {
    let sim = Sim::start(&["p"], healthy(), |_| {});
    let id = sim.launch("a").await;
    let first = sim.until_phase(&id, Phase::Running).await;
    let old = first.pid.expect("a pid");
    let stopped = sim
        .ask(|reply| Command::Restart {
            process_id: id.clone(),
            grace: None,
            actor: "operator".into(),
            reply,
        })
        .await
        .expect("restart");
    assert_eq!(stopped, Some(old));
    let back = sim
        .until("running again", |s| {
            s.instances
                .get(&id)
                .is_some_and(|i| i.healthy && i.pid.is_some_and(|p| p != old))
        })
        .await;
    let i = &back.instances[&id];
    assert_eq!(i.error_count, 0, "a restart asked for is no failure");
    let events = sim.handle.events.recent(&id, 100);
    let order = reasons(&events);
    let from = order.iter().position(|r| *r == Reason::Restarting).unwrap();
    assert_eq!(
        order[from..],
        [
            Reason::Restarting,
            Reason::Terminating,
            Reason::Exited,
            Reason::Spawned,
            Reason::Healthy
        ]
    );
    assert_eq!(events[from].event.actor, "operator");
    assert!(sim.fake.calls().iter().any(|(_, c)| *c
        == Call::Signal {
            process_id: id.clone(),
            pid: old,
            sig: Signal::SIGTERM
        }));
}

#[tokio::test(start_paused = true)]
async fn a_signal_request_reaches_the_process_group_and_is_recorded() {
    let sim = Sim::start(&["p"], healthy(), |_| {});
    let id = sim.launch("a").await;
    let pid = sim.until_phase(&id, Phase::Running).await.pid.unwrap();
    let got = sim
        .ask(|reply| Command::Signal {
            process_id: id.clone(),
            signal: Signal::SIGHUP,
            actor: "operator".into(),
            reply,
        })
        .await
        .expect("signal");
    assert_eq!(got, pid);
    assert!(sim.fake.calls().iter().any(|(_, c)| *c
        == Call::Signal {
            process_id: id.clone(),
            pid,
            sig: Signal::SIGHUP
        }));
    let events = sim.until_event(&id, Reason::Signaled).await;
    let e = events
        .iter()
        .rfind(|e| e.event.reason == Reason::Signaled)
        .unwrap();
    assert!(e.event.message.contains("SIGHUP"), "{}", e.event.message);
    assert_eq!(e.event.actor, "operator");
    // Unknown instances are refused by name.
    let err = sim
        .ask(|reply| Command::Signal {
            process_id: "p:nope".into(),
            signal: Signal::SIGHUP,
            actor: "operator".into(),
            reply,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NotFound(m) if m.contains("p:nope")));
}

#[tokio::test(start_paused = true)]
async fn a_file_declaration_is_described_with_its_line_and_withdrawn_with_an_event() {
    let sim = Sim::start(&["p"], healthy(), |_| {});
    let doc = |ns: &str, line: u64| DesiredDoc {
        pattern: "p".into(),
        isolation: None,
        namespace: ns.into(),
        session_id: String::new(),
        config: BTreeMap::new(),
        grace_period: None,
        line,
    };
    sim.desired
        .send(FileEvent::Changed {
            name: "t.yaml".into(),
            result: Ok(vec![doc("x", 1), doc("y", 7)]),
        })
        .expect("file event");
    let id = "ns:y:p".to_string();
    sim.until_phase(&id, Phase::Running).await;
    let d = sim
        .ask(|reply| Command::Describe {
            process_id: id.clone(),
            reply,
        })
        .await
        .expect("describe");
    assert_eq!(
        d.declared_by,
        [super::super::DeclaredAt::File {
            path: "desired/t.yaml".into(),
            line: 7
        }]
    );
    let declared = d.conditions.iter().find(|c| c.kind == "Declared").unwrap();
    assert_eq!(declared.status, Some(true));
    sim.desired
        .send(FileEvent::Removed {
            name: "t.yaml".into(),
        })
        .expect("file event");
    let events = sim.until_event(&id, Reason::Terminated).await;
    let order = reasons(&events);
    let from = order.iter().position(|r| *r == Reason::Undeclared).unwrap();
    assert_eq!(
        order[from..],
        [
            Reason::Undeclared,
            Reason::Terminating,
            Reason::Exited,
            Reason::Terminated
        ]
    );
    assert_eq!(events[from].event.actor, "desired/t.yaml");
    // A watcher starting now sees neither instance in its snapshot.
    let Start::Snapshot { instances, .. } = sim
        .handle
        .events
        .subscribe(0, Filter::default())
        .unwrap()
        .start
    else {
        panic!("a snapshot")
    };
    assert!(instances.is_empty(), "{instances:?}");
}
