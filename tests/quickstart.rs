//! The quick start, step by step, against the real binary and the sample
//! patterns: isolation levels, shared instances, health counts, terminate.
//! Every call is a `grpcurl` process, as the README has the user type it.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn quick_start_walkthrough_behaves_as_documented() {
    let builder = TestEnv::builder()
        .with_samples()
        .default_port_range()
        .via_grpcurl();
    // Checked before the launcher starts (and after taking the default
    // range's lock): only then can the contract promise the first ports.
    let grpc_50051_free = port_free(50051);
    let health_9090_free = port_free(9090);
    let env = builder.start();

    // Step 4: the first tenant.
    let a = env
        .grpc(
            "LaunchPattern",
            json!({
                "pattern_name": "hello-pattern",
                "isolation": "ISOLATION_NAMESPACE",
                "namespace": "tenant-a",
            }),
        )
        .expect("LaunchPattern hello-pattern tenant-a");
    assert_eq!(jstr(&a, "processId"), "ns:tenant-a:hello-pattern", "{a}");
    assert_eq!(jstr(&a, "state"), "STATE_RUNNING", "{a}");
    assert!(jbool(&a, "healthy"), "first instance not healthy: {a}");
    assert!(jstr(&a, "error").is_empty(), "unexpected error: {a}");
    if grpc_50051_free {
        assert_eq!(jstr(&a, "address"), "localhost:50051", "{a}");
    } else {
        eprintln!("note: port 50051 was busy before the launch; address not checked");
        assert!(jstr(&a, "address").starts_with("localhost:"), "{a}");
    }
    let a_pid = jint(&a, "pid");
    assert!(pid_alive(a_pid), "tenant-a pid {a_pid} is not alive: {a}");
    let a_health = jint(&a, "healthPort");
    assert!(a_health > 0, "no healthPort in the reply: {a}");
    if health_9090_free {
        assert_eq!(a_health, 9090, "the manifest's health port was free: {a}");
    } else {
        eprintln!("note: port 9090 was busy before the launch; health port not checked");
    }
    let body = http_get(a_health as u16, "/health")
        .unwrap_or_else(|e| panic!("GET /health on port {a_health}: {e}"));
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "health answer is not 200: {body:?}"
    );
    assert!(
        body.contains("OK - hello-pattern is healthy"),
        "unexpected health body: {body:?}"
    );

    // Test 1: a second tenant is a second process.
    let b = env
        .grpc(
            "LaunchPattern",
            json!({
                "pattern_name": "hello-pattern",
                "isolation": "ISOLATION_NAMESPACE",
                "namespace": "tenant-b",
            }),
        )
        .expect("LaunchPattern hello-pattern tenant-b");
    assert_eq!(jstr(&b, "processId"), "ns:tenant-b:hello-pattern", "{b}");
    assert_eq!(jstr(&b, "state"), "STATE_RUNNING", "{b}");
    assert!(jbool(&b, "healthy"), "{b}");
    let b_pid = jint(&b, "pid");
    assert!(pid_alive(b_pid), "tenant-b pid {b_pid} is not alive: {b}");
    assert_ne!(a_pid, b_pid, "two tenants share one pid");
    assert_ne!(
        jstr(&a, "address"),
        jstr(&b, "address"),
        "same gRPC address"
    );
    assert_ne!(
        a_health,
        jint(&b, "healthPort"),
        "same health port: {a} / {b}"
    );

    let listed = env.list();
    assert_eq!(listed.len(), 2, "expected 2 instances: {listed:?}");
    for p in &listed {
        assert_eq!(jstr(p, "state"), "STATE_RUNNING", "{p}");
        assert_eq!(jstr(p, "patternName"), "hello-pattern", "{p}");
    }
    assert_eq!(jstr(&listed[0], "namespace"), "tenant-a");
    assert_eq!(jstr(&listed[1], "namespace"), "tenant-b");

    // Test 2: sessions are processes of their own.
    for user in ["user-1", "user-2"] {
        let s = env
            .grpc(
                "LaunchPattern",
                json!({
                    "pattern_name": "hello-pattern",
                    "isolation": "ISOLATION_SESSION",
                    "namespace": "tenant-a",
                    "session_id": user,
                }),
            )
            .unwrap_or_else(|e| panic!("LaunchPattern session {user}: {e}"));
        assert_eq!(
            jstr(&s, "processId"),
            format!("session:tenant-a:{user}:hello-pattern"),
            "{s}"
        );
        assert_eq!(jstr(&s, "state"), "STATE_RUNNING", "{s}");
    }
    let listed = env.list();
    assert_eq!(listed.len(), 4, "expected 4 instances: {listed:?}");
    let pids: BTreeSet<i64> = listed.iter().map(|p| jint(p, "pid")).collect();
    assert_eq!(pids.len(), 4, "expected 4 distinct pids: {listed:?}");
    assert!(
        pids.iter().all(|p| pid_alive(*p)),
        "a listed pid is dead: {listed:?}"
    );

    // Test 3: NONE isolation shares one process.
    let shared: Vec<_> = (0..2)
        .map(|i| {
            env.grpc(
                "LaunchPattern",
                json!({"pattern_name": "config-lookup", "isolation": "ISOLATION_NONE"}),
            )
            .unwrap_or_else(|e| panic!("LaunchPattern config-lookup #{i}: {e}"))
        })
        .collect();
    for s in &shared {
        assert_eq!(jstr(s, "processId"), "shared:config-lookup", "{s}");
        assert_eq!(jstr(s, "state"), "STATE_RUNNING", "{s}");
    }
    assert_eq!(
        jint(&shared[0], "pid"),
        jint(&shared[1], "pid"),
        "the shared instance changed pid: {} / {}",
        shared[0],
        shared[1]
    );
    assert!(jint(&shared[0], "pid") > 0, "{}", shared[0]);

    // Step 7: health and counts.
    let h = env
        .grpc("Health", json!({"include_processes": true}))
        .expect("Health");
    assert!(jbool(&h, "healthy"), "{h}");
    assert_eq!(jint(&h, "totalProcesses"), 5, "{h}");
    assert_eq!(jint(&h, "runningProcesses"), 5, "{h}");
    let dist = &h["isolationDistribution"];
    assert_eq!(jint(dist, "Namespace"), 2, "{h}");
    assert_eq!(jint(dist, "Session"), 2, "{h}");
    assert_eq!(jint(dist, "None"), 1, "{h}");
    assert_eq!(
        h["processes"].as_array().map(Vec::len),
        Some(5),
        "include_processes: {h}"
    );

    // Step 8: graceful terminate.
    let t = env
        .terminate("ns:tenant-a:hello-pattern", 10, false)
        .expect("TerminatePattern ns:tenant-a:hello-pattern");
    assert!(jbool(&t, "success"), "{t}");
    assert!(
        !pid_alive(a_pid),
        "pid {a_pid} still alive after TerminatePattern replied"
    );
    assert!(
        wait_until(Duration::from_secs(10), || env
            .instance_log("ns:tenant-a:hello-pattern")
            .contains("received SIGTERM")),
        "instance log {} lacks `received SIGTERM`:\n{}",
        env.instance_log_path("ns:tenant-a:hello-pattern").display(),
        env.instance_log("ns:tenant-a:hello-pattern")
    );
    assert!(
        wait_until(Duration::from_secs(5), || env
            .find("ns:tenant-a:hello-pattern")
            .is_none()),
        "still listed after terminate: {:?}",
        env.find("ns:tenant-a:hello-pattern")
    );
    let rest = env.list();
    assert_eq!(rest.len(), 4, "the other instances must stay: {rest:?}");
    assert!(
        rest.iter().all(|p| jstr(p, "state") == "STATE_RUNNING"),
        "{rest:?}"
    );
}
