//! Starts and the instance's cgroup in simulated time: a start waits for
//! what runs in the cgroup, and for kills and removals still queued on it.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_first_start_waits_until_what_runs_in_the_cgroup_is_gone() {
    let sim = Sim::start(&["p"], Behaviour::default(), |_| {});
    // After the start-up sweep, something unmarked runs in the cgroup of
    // an instance nobody declared yet (the next sweep is a minute away).
    tokio::time::sleep(Duration::from_millis(10)).await;
    sim.fake.state().orphans.insert("ns:a:p".into(), vec![555]);
    let id = sim.launch("a").await;
    let (termed, killed) = sim.reaped(&id, &[555]).await;
    assert_eq!(killed - termed, PlanConfig::default().default_grace);
    sim.until("started", |_| !sim.starts(&id).is_empty()).await;
    let started = sim.starts(&id)[0].0;
    assert!(
        started >= killed,
        "a second copy started beside the leftovers: {:?}",
        sim.fake.calls()
    );
}

/// The calls about `id`'s cgroup and its starts, in order.
fn cgroup_and_starts(calls: &[(Instant, Call)], id: &str) -> Vec<String> {
    calls
        .iter()
        .filter_map(|(_, c)| match c {
            Call::Start { process_id, .. } if process_id == id => Some("start".to_string()),
            Call::CgroupWork { process_id, work } if process_id == id => {
                Some(format!("queue {work:?}"))
            }
            Call::CgroupDone { process_id, work } if process_id == id => {
                Some(format!("done {work:?}"))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_relaunched_instance_starts_only_once_its_old_cgroup_is_removed() {
    let healthy = Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], healthy, |_| {});
    let id = sim.launch("a").await;
    sim.until_phase(&id, Phase::Running).await;
    // The janitor is slow: the removal of the cgroup waits.
    sim.fake.state().hold_cgroup_work = true;
    sim.terminate(&id, Duration::from_secs(5)).await.unwrap();
    sim.until("gone", |s| !s.instances.contains_key(&id)).await;
    sim.launch("a").await;
    // However long the removal takes, the new process does not start in
    // the cgroup about to be removed.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(sim.starts(&id).len(), 1, "{:?}", sim.fake.calls());
    sim.fake.state().hold_cgroup_work = false;
    sim.fake.release_cgroup_work();
    sim.until_phase(&id, Phase::Running).await;
    assert_eq!(
        cgroup_and_starts(&sim.fake.calls(), &id),
        ["start", "queue Remove", "done Remove", "start"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_waits_until_what_the_last_process_left_behind_is_killed() {
    let healthy = Behaviour {
        healthy_at_start: true,
        ..Behaviour::default()
    };
    let sim = Sim::start(&["p"], healthy, |_| {});
    let id = sim.launch("a").await;
    sim.until_phase(&id, Phase::Running).await;
    // Its process forked a daemon (setsid) into its cgroup, then crashed.
    sim.fake.state().orphans.insert(id.clone(), vec![9999]);
    sim.fake.state().hold_cgroup_work = true;
    sim.fake.exit(&id, killed_by(Signal::SIGSEGV));
    sim.until_call("the leftovers' kill queued", |c| {
        matches!(c, Call::CgroupWork { process_id, work: CgroupWork::Kill } if *process_id == id)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(sim.starts(&id).len(), 1, "restarted beside its leftovers");
    // Its end is taken in once they are gone: until then it looks alive.
    let first_pid = sim.starts(&id)[0].1;
    assert_eq!(sim.status(&id).unwrap().pid, Some(first_pid));
    sim.fake.state().hold_cgroup_work = false;
    sim.fake.release_cgroup_work();
    sim.until("restarted", |_| sim.starts(&id).len() == 2).await;
    assert_eq!(
        cgroup_and_starts(&sim.fake.calls(), &id),
        ["start", "queue Kill", "done Kill", "start"]
    );
}
