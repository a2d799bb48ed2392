//! The launcher's own restart, and many concurrent launches.

mod common;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;

use common::*;
use serde_json::json;

#[test]
fn launcher_restart_stops_every_instance_and_brings_back_the_api_declared_ones() {
    let mut env = TestEnv::start();
    let mut old = BTreeMap::new();
    for ns in ["alpha", "beta"] {
        let r = env.launch_running("test-pattern", ns, &[]);
        old.insert(jstr(&r, "processId"), jint(&r, "pid"));
    }
    let s = env
        .grpc(
            "LaunchPattern",
            json!({
                "pattern_name": "test-pattern",
                "isolation": "ISOLATION_SESSION",
                "namespace": "alpha",
                "session_id": "user-1",
            }),
        )
        .expect("LaunchPattern session");
    assert_eq!(jstr(&s, "state"), "STATE_RUNNING", "{s}");
    old.insert(jstr(&s, "processId"), jint(&s, "pid"));
    assert_eq!(old.len(), 3);
    assert!(old.values().all(|p| pid_alive(*p)), "{old:?}");

    let status = env.launcher().stop();
    assert_eq!(
        status.code(),
        Some(0),
        "prism-launcher should exit 0 on SIGTERM, got {status}"
    );
    for (id, pid) in &old {
        assert!(
            !pid_alive(*pid),
            "{id} (pid {pid}) survived the launcher's SIGTERM"
        );
    }
    assert!(
        env.token_processes().is_empty(),
        "processes left behind after the launcher exited: {:?}",
        env.token_processes()
    );

    env.launcher().restart();
    let back = wait_for(WAIT, || {
        let list = env.list();
        let ready = list.len() == old.len()
            && list.iter().all(|p| {
                jstr(p, "state") == "STATE_RUNNING"
                    && jbool(p, "healthy")
                    && pid_alive(jint(p, "pid"))
                    && old.contains_key(&jstr(p, "processId"))
            });
        ready.then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "API-declared instances did not come back RUNNING after the restart: {:?}",
            env.list()
        )
    });
    for p in &back {
        let id = jstr(p, "processId");
        assert_ne!(
            jint(p, "pid"),
            old[&id],
            "{id} kept a pid that was terminated: {p}"
        );
        assert_eq!(jstr(p, "source"), "api", "{p}");
    }
}

#[test]
fn two_hundred_concurrent_launches_of_twenty_instances_make_exactly_twenty_processes() {
    const IDS: usize = 20;
    const CALLS: usize = 200;
    const WORKERS: usize = 16;
    let env = TestEnv::start();

    // Interleaved: every round asks for all twenty ids once.
    let queue: Mutex<VecDeque<String>> = Mutex::new(
        (0..CALLS)
            .map(|i| format!("tenant-{:02}", i % IDS))
            .collect(),
    );
    let results: Mutex<Vec<(String, Result<serde_json::Value, GrpcError>)>> =
        Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let Some(ns) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let r = env.launch_ns("test-pattern", &ns, &[]);
                    results.lock().unwrap().push((ns, r));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), CALLS);
    let mut replied_pids: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for (ns, r) in &results {
        let reply = r
            .as_ref()
            .unwrap_or_else(|e| panic!("LaunchPattern {ns} failed under concurrency: {e}"));
        assert_eq!(
            jstr(reply, "processId"),
            format!("ns:{ns}:test-pattern"),
            "{reply}"
        );
        assert_eq!(jstr(reply, "state"), "STATE_RUNNING", "{ns}: {reply}");
        replied_pids
            .entry(ns.clone())
            .or_default()
            .insert(jint(reply, "pid"));
    }
    for (ns, pids) in &replied_pids {
        assert_eq!(
            pids.len(),
            1,
            "{ns} was answered with several pids: {pids:?}"
        );
    }

    let list = env.list();
    assert_eq!(list.len(), IDS, "expected {IDS} instances: {list:?}");
    let listed: BTreeSet<i32> = list.iter().map(|p| jint(p, "pid") as i32).collect();
    assert_eq!(listed.len(), IDS, "expected {IDS} distinct pids: {list:?}");
    assert!(
        list.iter().all(|p| jstr(p, "state") == "STATE_RUNNING"),
        "{list:?}"
    );
    let live: BTreeSet<i32> = env.token_processes().into_iter().collect();
    assert_eq!(
        live.len(),
        IDS,
        "expected exactly {IDS} live pattern processes, found {live:?} (listed {listed:?})"
    );
    assert_eq!(live, listed, "live processes and listed pids differ");
}
