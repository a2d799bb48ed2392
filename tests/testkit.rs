//! The test kit's own checks (`tests/support`): the JSON its tonic client
//! returns is what `grpcurl -emit-defaults` prints for the same call on the
//! same launcher, for every RPC the tests use, errors included; requests
//! are read as grpcurl reads them; and the binaries it finds at run time
//! are the ones cargo built. So the kit and grpcurl cannot drift apart.

mod common;

use std::path::Path;

use common::*;
use prism_testkit::bins;
use prism_testkit::grpc::{code_name, json};
use serde_json::{Value, json};

/// `v` with every `uptimeSeconds` replaced by a placeholder (it may tick
/// between two calls), after checking it is a 64-bit integer as a string.
fn without_uptime(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| {
                    if k == "uptimeSeconds" {
                        assert!(
                            v.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
                            "uptimeSeconds is not an int64 string: {v}"
                        );
                        (k.clone(), Value::from("<uptime>"))
                    } else {
                        (k.clone(), without_uptime(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_uptime).collect()),
        other => other.clone(),
    }
}

/// Calls `method` with `request` through the kit (tonic) and through
/// grpcurl, and asserts both give the same JSON, or the same error.
fn same_answer(env: &TestEnv, method: &str, request: Value) -> Result<Value, GrpcError> {
    let kit = env.grpc(method, request.clone());
    let real = grpcurl_call(env.ports.grpc_port(), method, &request);
    match (&kit, &real) {
        (Ok(a), Ok(b)) => assert_eq!(
            without_uptime(a),
            without_uptime(b),
            "{method} {request}: the kit's JSON (left) is not grpcurl's (right)"
        ),
        (Err(a), Err(b)) => assert_eq!(
            a, b,
            "{method} {request}: the kit's error (left) is not grpcurl's (right)"
        ),
        _ => panic!("{method} {request}: the kit answered {kit:?}, grpcurl {real:?}"),
    }
    kit
}

#[test]
fn every_rpc_answers_the_kit_as_it_answers_grpcurl() {
    let env = TestEnv::start();
    env.write_desired("good.yaml", &desired_doc("test-pattern", "from-file", &[]));
    env.write_desired("bad.yaml", "pattern: test-pattern\nnamespace: [oops\n");
    assert!(
        wait_until(WAIT, || env
            .source("desired/bad.yaml")
            .is_some_and(|s| !jstr(&s, "error").is_empty())
            && env.find("ns:from-file:test-pattern").is_some()),
        "the desired files were never read: {:?}",
        env.list_sources()
    );

    // LaunchPattern: the same declaration twice is the same instance.
    let launch = json!({
        "pattern_name": "test-pattern",
        "isolation": "ISOLATION_NAMESPACE",
        "namespace": "drift",
        "config": {"MODE": "one"},
        "grace_period_secs": "5",
    });
    let reply = same_answer(&env, "LaunchPattern", launch).expect("LaunchPattern");
    assert_eq!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
    let session = json!({
        "patternName": "test-pattern",
        "isolation": 3,
        "namespace": "drift",
        "sessionId": "user-1",
    });
    same_answer(&env, "LaunchPattern", session).expect("LaunchPattern of a session");
    for (bad, code) in [
        (
            json!({"pattern_name": "no-such-pattern", "namespace": "a"}),
            "NotFound",
        ),
        (
            json!({"pattern_name": "test-pattern", "namespace": "../x"}),
            "InvalidArgument",
        ),
        (
            json!({"pattern_name": "test-pattern", "namespace": "a", "grace_period_secs": "9223372036854775807"}),
            "InvalidArgument",
        ),
        (
            json!({"pattern_name": "test-pattern", "namespace": "drift", "config": {"MODE": "two"}}),
            "FailedPrecondition",
        ),
    ] {
        let err = same_answer(&env, "LaunchPattern", bad.clone()).expect_err("refused");
        assert_eq!(err.code, code, "{bad}: {err}");
    }

    // ListPatterns, with and without filters (enums by name and number).
    for request in [
        json!({}),
        json!({"state": "STATE_RUNNING", "patternName": "test-pattern"}),
        json!({"state": 2, "namespace": "drift"}),
        json!({"pattern_name": "nothing-like-it"}),
    ] {
        same_answer(&env, "ListPatterns", request).expect("ListPatterns");
    }

    // Health, GetProcessStatus (found and not), ListSources.
    same_answer(&env, "Health", json!({})).expect("Health");
    let h = same_answer(&env, "Health", json!({"include_processes": true})).expect("Health");
    assert_eq!(jint(&h, "totalProcesses"), 3, "{h}");
    let found = same_answer(
        &env,
        "GetProcessStatus",
        json!({"process_id": "ns:drift:test-pattern"}),
    )
    .expect("GetProcessStatus");
    assert!(found["process"].is_object(), "{found}");
    let missing = same_answer(&env, "GetProcessStatus", json!({"processId": "ns:no:such"}))
        .expect("GetProcessStatus of nothing");
    assert!(
        missing["process"].is_null() && jbool(&missing, "notFound"),
        "{missing}"
    );
    let sources = same_answer(&env, "ListSources", json!({})).expect("ListSources");
    assert!(
        sources["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| jint(s, "line") > 0)),
        "a source with an error line expected: {sources}"
    );

    // TerminatePattern: an unknown id, then one instance each way.
    let err = same_answer(
        &env,
        "TerminatePattern",
        json!({"process_id": "ns:no:such"}),
    )
    .expect_err("unknown id");
    assert_eq!(err.code, "NotFound", "{err}");
    let by_kit = env
        .terminate("ns:drift:test-pattern", 5, false)
        .expect("TerminatePattern through the kit");
    let by_grpcurl = grpcurl_call(
        env.ports.grpc_port(),
        "TerminatePattern",
        &json!({"process_id": "session:drift:user-1:test-pattern", "grace_period_secs": 5}),
    )
    .expect("TerminatePattern through grpcurl");
    assert_eq!(by_kit, by_grpcurl);
    assert!(jbool(&by_kit, "success"), "{by_kit}");
}

#[test]
fn requests_are_read_as_grpcurl_reads_them() {
    let r = json::launch_request(&json!({
        "patternName": "p",
        "isolation": "ISOLATION_SESSION",
        "namespace": "n",
        "session_id": "s",
        "config": {"K": "v"},
        "gracePeriodSecs": 7,
    }))
    .expect("a valid LaunchRequest");
    assert_eq!(
        (r.pattern_name.as_str(), r.isolation, r.namespace.as_str()),
        ("p", 3, "n")
    );
    assert_eq!((r.session_id.as_str(), r.grace_period_secs), ("s", 7));
    assert_eq!(r.config.get("K").map(String::as_str), Some("v"));
    let r = json::terminate_request(
        &json!({"process_id": "x", "grace_period_secs": "-3", "force": null}),
    )
    .expect("a valid TerminateRequest");
    assert_eq!((r.grace_period_secs, r.force), (-3, false));

    let unknown = json::launch_request(&json!({"pattern": "p"})).expect_err("unknown field");
    assert!(
        unknown.contains("no known field named pattern"),
        "{unknown}"
    );
    assert!(json::launch_request(&json!({"isolation": "ISOLATION_ANY"})).is_err());
    assert!(json::terminate_request(&json!({"grace_period_secs": "1.5"})).is_err());
    assert!(json::health_request(&json!({"include_processes": "yes"})).is_err());
}

#[test]
fn grpc_codes_are_named_as_grpcurl_prints_them() {
    use tonic::Code;
    let names = [
        (Code::Ok, "OK"),
        (Code::Cancelled, "Canceled"),
        (Code::Unknown, "Unknown"),
        (Code::InvalidArgument, "InvalidArgument"),
        (Code::DeadlineExceeded, "DeadlineExceeded"),
        (Code::NotFound, "NotFound"),
        (Code::AlreadyExists, "AlreadyExists"),
        (Code::PermissionDenied, "PermissionDenied"),
        (Code::ResourceExhausted, "ResourceExhausted"),
        (Code::FailedPrecondition, "FailedPrecondition"),
        (Code::Aborted, "Aborted"),
        (Code::OutOfRange, "OutOfRange"),
        (Code::Unimplemented, "Unimplemented"),
        (Code::Internal, "Internal"),
        (Code::Unavailable, "Unavailable"),
        (Code::DataLoss, "DataLoss"),
        (Code::Unauthenticated, "Unauthenticated"),
    ];
    for (code, name) in names {
        assert_eq!(code_name(code), name);
    }
    let e = GrpcError::from(tonic::Status::aborted(" terminated meanwhile \n"));
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("Aborted", "terminated meanwhile")
    );
}

#[test]
fn the_kit_finds_the_binaries_cargo_built() {
    for (name, built) in [
        (bins::LAUNCHER, LAUNCHER_BIN),
        (bins::TEST_PATTERN, TEST_PATTERN_BIN),
        (bins::HELLO_PATTERN, HELLO_PATTERN_BIN),
        (bins::CONFIG_LOOKUP, CONFIG_LOOKUP_BIN),
    ] {
        let found = bins::bin_path(name);
        assert_eq!(
            found.canonicalize().expect("the found binary exists"),
            Path::new(built)
                .canonicalize()
                .expect("cargo's binary exists"),
            "{name}"
        );
    }
}
