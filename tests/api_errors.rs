//! Bad calls get the documented gRPC status, and the launcher keeps serving.

mod common;

use common::*;
use serde_json::json;

fn expect_code(result: Result<serde_json::Value, GrpcError>, code: &str) -> GrpcError {
    match result {
        Ok(reply) => panic!("expected gRPC code {code}, got a reply: {reply}"),
        Err(e) => {
            assert_eq!(e.code, code, "wrong gRPC code: {e}");
            assert!(!e.message.is_empty(), "{code} without a message");
            e
        }
    }
}

#[test]
fn unknown_pattern_is_not_found() {
    let env = TestEnv::start();
    let e = expect_code(env.launch_ns("no-such-pattern", "a", &[]), "NotFound");
    assert!(
        e.message.contains("no-such-pattern"),
        "message should name the pattern: {e}"
    );
    env.assert_still_serving();
}

#[test]
fn namespace_isolation_without_a_namespace_is_invalid_argument() {
    let env = TestEnv::start();
    expect_code(
        env.grpc(
            "LaunchPattern",
            json!({"pattern_name": "test-pattern", "isolation": "ISOLATION_NAMESPACE"}),
        ),
        "InvalidArgument",
    );
    assert!(
        env.list().is_empty(),
        "a refused launch declared something: {:?}",
        env.list()
    );
    env.assert_still_serving();
}

#[test]
fn a_namespace_with_a_path_in_it_is_invalid_argument() {
    let env = TestEnv::start();
    expect_code(
        env.launch_ns("test-pattern", "../x", &[]),
        "InvalidArgument",
    );
    assert!(
        env.list().is_empty(),
        "a refused launch declared something: {:?}",
        env.list()
    );
    env.assert_still_serving();
}

#[test]
fn a_config_key_overriding_health_port_is_invalid_argument() {
    let env = TestEnv::start();
    let e = expect_code(
        env.launch_ns("test-pattern", "cfg", &[("HEALTH_PORT", "1234")]),
        "InvalidArgument",
    );
    assert!(
        e.message.contains("HEALTH_PORT"),
        "message should name the key: {e}"
    );
    assert!(
        env.list().is_empty(),
        "a refused launch declared something: {:?}",
        env.list()
    );
    env.assert_still_serving();
}

#[test]
fn a_manifest_whose_executable_does_not_exist_is_failed_precondition_naming_the_path() {
    let missing = std::env::temp_dir()
        .join(format!("prism-no-such-dir-{}", std::process::id()))
        .join("no-such-binary");
    let missing_s = missing.display().to_string();
    let env = TestEnv::builder()
        .pattern(PatternSpec::named("missing-exe").executable(missing_s.clone()))
        .start();
    let e = expect_code(env.launch_ns("missing-exe", "a", &[]), "FailedPrecondition");
    assert!(
        e.message.contains(&missing_s),
        "message should contain {missing_s}: {e}"
    );
    env.assert_still_serving();
}

#[test]
fn relaunching_an_existing_instance_with_a_different_config_is_failed_precondition() {
    let env = TestEnv::start();
    let id = "ns:dup:test-pattern";
    let first = env.launch_running("test-pattern", "dup", &[("MODE", "one")]);
    let pid = jint(&first, "pid");

    // The same declaration again is idempotent.
    let same = env
        .launch_ns("test-pattern", "dup", &[("MODE", "one")])
        .expect("identical LaunchPattern");
    assert_eq!(
        jint(&same, "pid"),
        pid,
        "an identical launch changed the process: {same}"
    );

    expect_code(
        env.launch_ns("test-pattern", "dup", &[("MODE", "two")]),
        "FailedPrecondition",
    );
    let still = env
        .find(id)
        .unwrap_or_else(|| panic!("{id} disappeared: {:?}", env.list()));
    assert_eq!(
        jint(&still, "pid"),
        pid,
        "the refused launch touched the instance: {still}"
    );
    assert_eq!(jstr(&still, "state"), "STATE_RUNNING", "{still}");
    assert!(pid_alive(pid));
    env.assert_still_serving();
}

#[test]
fn a_launch_that_cannot_be_persisted_is_unavailable_and_declares_nothing() {
    let env = TestEnv::start();
    let running = env.launch_running("test-pattern", "kept", &[]);
    // The store is replaced by renaming a temp file over it; a non-empty
    // directory in its place makes every write fail, even for root.
    let blocker = env.state_dir.join("api-instances.json");
    std::fs::remove_file(&blocker).expect("remove the store");
    std::fs::create_dir(&blocker).expect("blocking directory");
    std::fs::write(blocker.join("keep"), "").expect("fill the blocking directory");

    // Several launches at once: they share one write, and all fail.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let port = env.ports.grpc_port();
            std::thread::spawn(move || {
                grpc_call(
                    port,
                    "LaunchPattern",
                    &json!({"pattern_name": "test-pattern", "isolation": "ISOLATION_NAMESPACE",
                            "namespace": format!("lost-{i}")}),
                )
            })
        })
        .collect();
    for h in handles {
        let e = expect_code(h.join().expect("client thread"), "Unavailable");
        assert!(
            e.message.contains("api-instances.json"),
            "the error should name the store: {e}"
        );
    }
    let ids: Vec<String> = env.list().iter().map(|p| jstr(p, "processId")).collect();
    assert_eq!(
        ids,
        vec!["ns:kept:test-pattern"],
        "a launch that was not persisted left an instance"
    );
    assert!(pid_alive(jint(&running, "pid")));

    // A temporary file of a write still under way (the process table is
    // saved beside the store) goes away; one a failed write left stays.
    let temp_files = || {
        let mut left: Vec<String> = std::fs::read_dir(&env.state_dir)
            .expect("state dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        left.sort();
        left
    };
    wait_until(WAIT, || temp_files().is_empty());
    let left = temp_files();
    assert!(left.is_empty(), "failed writes left temp files: {left:?}");

    std::fs::remove_dir_all(&blocker).expect("remove the blocker");
    env.launch_running("test-pattern", "lost-0", &[]);
    let stored = std::fs::read_to_string(env.state_dir.join("api-instances.json"))
        .expect("the store is written");
    assert!(
        stored.contains("lost-0") && stored.contains("kept"),
        "{stored}"
    );
    assert!(!stored.contains("lost-1"), "{stored}");
}
