//! Watch, Describe, RestartPattern and SignalPattern against the real
//! launcher: events of a real kill, resuming without a gap, a reader that
//! never reads, and grpcurl's view of the stream.

mod common;

use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;
use prism_testkit::grpc::watch::{Next, Watch, summary};
use serde_json::{Value, json};

const PATTERN: &str = "test-pattern";

fn watch_request(since: u64, process_id: &str) -> proto::WatchRequest {
    proto::WatchRequest {
        since_revision: since,
        process_id: process_id.to_string(),
        ..Default::default()
    }
}

/// grpcurl's stream output: one JSON object per message.
fn json_objects(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|v| v.expect("grpcurl printed JSON"))
        .collect()
}

#[test]
fn a_kill_shows_up_in_grpcurl_as_exited_naming_the_signal_then_spawned_then_healthy() {
    let env = TestEnv::start();
    let id = "ns:w:test-pattern";
    let first = env.launch_running(PATTERN, "w", &[]);
    let old = jint(&first, "pid");
    let out = env.path("watch.json");
    let mut grpcurl = Command::new(grpcurl())
        .args(["-plaintext", "-d"])
        .arg(json!({ "process_id": id }).to_string())
        .arg(format!("127.0.0.1:{}", env.ports.grpc_port()))
        .arg(format!("{SERVICE}/Watch"))
        .stdout(std::fs::File::create(&out).expect("output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("grpcurl");
    // The snapshot and the bookmark come first.
    let read = || json_objects(&std::fs::read_to_string(&out).unwrap_or_default());
    let bookmark = wait_for(WAIT, || {
        read().into_iter().find(|e| jstr(e, "reason") == "Bookmark")
    });
    signal(old, Signal::SIGKILL);
    let events = wait_for(WAIT, || {
        let v = read();
        v.iter()
            .any(|e| jstr(e, "reason") == "Healthy")
            .then_some(v)
    });
    let _ = grpcurl.kill();
    let _ = grpcurl.wait();
    let bookmark = bookmark.expect("a Bookmark after the snapshot");
    let events = events.unwrap_or_else(|| panic!("no Healthy event: {:?}", read()));
    assert_eq!(jstr(&events[0], "reason"), "Snapshot", "{events:?}");
    assert_eq!(jstr(&events[0], "processId"), id);
    let live: Vec<&Value> = events
        .iter()
        .skip_while(|e| jstr(e, "reason") != "Bookmark")
        .skip(1)
        .collect();
    let reasons: Vec<String> = live.iter().map(|e| jstr(e, "reason")).collect();
    assert_eq!(reasons, ["Exited", "Spawned", "Healthy"], "{live:?}");
    let exited = jstr(live[0], "message");
    assert!(
        exited.contains("signal 9") && exited.contains("SIGKILL"),
        "{exited}"
    );
    // uint64 revisions are strings in JSON.
    let rev = |e: &Value| -> u64 { jstr(e, "revision").parse().expect("a revision") };
    let mut last = rev(&bookmark);
    for e in &live {
        assert!(rev(e) > last, "revisions must increase: {live:?}");
        last = rev(e);
        assert!(!jstr(e, "time").is_empty(), "{e}");
    }
    assert_ne!(jint(&live[2]["process"], "pid"), old);
}

#[test]
fn a_client_that_resumes_from_its_last_revision_misses_nothing_across_a_burst_of_1000_events() {
    let env = TestEnv::start();
    let id = "ns:burst:test-pattern";
    env.launch_running(PATTERN, "burst", &[]);
    let port = env.ports.grpc_port();
    let mut w = Watch::open(port, watch_request(0, id)).expect("Watch");
    let start = w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    let mut last = start.last().map(|e| e.revision).unwrap_or_default();
    // 1,000 SIGWINCH (ignored by the process): 1,000 events, from another
    // thread while this one reads, disconnects and resumes.
    let burst = std::thread::spawn(move || {
        let mut api = Api::connect(port);
        for _ in 0..1000 {
            api.signal("ns:burst:test-pattern", "WINCH")
                .expect("SignalPattern");
        }
    });
    let mut signaled = Vec::new();
    let mut resumes = 0;
    while signaled.len() < 1000 {
        // Read a while, then drop the connection and resume.
        for _ in 0..150 {
            match w.next(WAIT) {
                Next::Event(e) => {
                    assert!(e.revision > last, "{} after {last}", e.revision);
                    last = e.revision;
                    if e.reason == "Signaled" {
                        signaled.push(e.revision);
                    }
                    if signaled.len() == 1000 {
                        break;
                    }
                }
                other => panic!("the watch ended: {other:?}"),
            }
        }
        if signaled.len() < 1000 {
            w = Watch::open(port, watch_request(last, id)).expect("resume");
            resumes += 1;
        }
    }
    burst.join().expect("burst");
    assert!(resumes >= 5, "resumed {resumes} times");
    // Each signal once, revisions strictly increasing (checked above), and
    // nothing but the burst's events in between.
    assert_eq!(signaled.len(), 1000);
    let mut dedup = signaled.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), 1000);
}

#[test]
fn a_client_that_never_reads_is_ended_with_resource_exhausted_and_launches_go_on() {
    let env = TestEnv::start();
    let id = "ns:idle:test-pattern";
    env.launch_running(PATTERN, "idle", &[]);
    let port = env.ports.grpc_port();
    let mut stalled =
        Watch::open_with_window(port, proto::WatchRequest::default(), Some(65_535)).expect("Watch");
    let mut api = Api::connect(port);
    // Far more than the per-client queue and the HTTP/2 buffers hold.
    for _ in 0..6000 {
        api.signal(id, "WINCH").expect("SignalPattern");
    }
    // The launcher is unharmed: a launch answers promptly.
    let t = std::time::Instant::now();
    env.launch_running(PATTERN, "other", &[]);
    assert!(t.elapsed() < WAIT, "{:?}", t.elapsed());
    // The stalled reader gets what was queued, then the notice.
    let mut read = 0u64;
    let mut last = 0;
    let status = loop {
        match stalled.next(WAIT) {
            Next::Event(e) => {
                read += 1;
                last = e.revision;
            }
            Next::Ended(s) => break s,
            other => panic!("after {read} events: {other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(&format!("since_revision {last}")),
        "the notice names the last revision sent ({last}): {}",
        status.message()
    );
    assert!(read < 6000, "it was cut off, not sent everything ({read})");
    // Resuming from there works.
    let mut again = Watch::open(port, watch_request(last, "")).expect("resume");
    assert!(matches!(again.next(WAIT), Next::Event(e) if e.revision == last + 1));
}

#[test]
fn revisions_keep_growing_across_a_launcher_restart_and_an_old_one_is_out_of_range() {
    let mut env = TestEnv::start();
    env.launch_running(PATTERN, "r", &[]);
    let port = env.ports.grpc_port();
    let mut w = Watch::all(port);
    let before = w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    let old = before.last().expect("bookmark").revision;
    drop(w);
    env.launcher().restart();
    let mut w = Watch::all(port);
    let after = w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    let new = after.last().expect("bookmark").revision;
    assert!(new > old, "{new} after {old}");
    let err = match Watch::open(port, watch_request(old, "")) {
        Ok(mut w) => match w.next(WAIT) {
            Next::Ended(s) => s,
            other => panic!("an old revision was accepted: {other:?}"),
        },
        Err(s) => s,
    };
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("oldest"), "{}", err.message());
}

#[test]
fn describe_of_a_crash_looping_instance_shows_the_open_circuit_and_why() {
    let env = TestEnv::start();
    let id = "ns:loop:test-pattern";
    let _ = env.launch_ns(PATTERN, "loop", &[("TEST_EXIT_AT_START", "4")]);
    env.wait_entry(id, "FAILED", |p| jstr(p, "state") == "STATE_FAILED");
    let out = Command::new(grpcurl())
        .args(["-plaintext", "-d"])
        .arg(json!({ "process_id": id }).to_string())
        .arg(format!("127.0.0.1:{}", env.ports.grpc_port()))
        .arg(format!("{SERVICE}/Describe"))
        .output()
        .expect("grpcurl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let conditions = d["conditions"].as_array().expect("conditions");
    let open = conditions
        .iter()
        .find(|c| jstr(c, "type") == "CircuitOpen")
        .unwrap_or_else(|| panic!("{d}"));
    assert_eq!(jstr(open, "status"), "True", "{open}");
    assert_eq!(jstr(open, "reason"), "CircuitOpen", "{open}");
    let why = jstr(open, "message");
    assert!(
        why.contains("5 consecutive failures") && why.contains("code 4"),
        "{why}"
    );
    assert!(!jstr(open, "lastTransitionTime").is_empty(), "{open}");
    assert_eq!(jstr(&d["declaredBy"][0], "kind"), "api", "{d}");
    assert!(jstr(&d, "logPath").ends_with(".log"), "{d}");
    assert_eq!(d["config"]["TEST_EXIT_AT_START"], "4", "{d}");
    let reasons: Vec<String> = d["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| jstr(e, "reason"))
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| *r == "Exited").count(),
        5,
        "{reasons:?}"
    );
    assert_eq!(reasons.last().map(String::as_str), Some("CircuitOpen"));
    // An unknown instance is NOT_FOUND by name.
    let e = Api::connect(env.ports.grpc_port())
        .describe("ns:nope:test-pattern")
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("ns:nope:test-pattern"), "{e:?}");
}

#[test]
fn a_pattern_restart_rolls_one_instance_at_a_time_each_healthy_before_the_next() {
    let env = TestEnv::start();
    let a = env.launch_running(PATTERN, "ra", &[]);
    let b = env.launch_running(PATTERN, "rb", &[]);
    let port = env.ports.grpc_port();
    let mut w = Watch::open(
        port,
        proto::WatchRequest {
            pattern_name: PATTERN.into(),
            ..Default::default()
        },
    )
    .expect("Watch");
    w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    let reply = Api::connect(port)
        .restart(proto::RestartRequest {
            pattern_name: PATTERN.into(),
            ..Default::default()
        })
        .expect("RestartPattern");
    assert!(reply.success, "{reply:?}");
    assert_eq!(
        reply.process_ids,
        ["ns:ra:test-pattern", "ns:rb:test-pattern"],
        "{reply:?}"
    );
    for (was, ns) in [(&a, "ra"), (&b, "rb")] {
        let now = env
            .find(&format!("ns:{ns}:test-pattern"))
            .expect("still listed");
        assert_ne!(jint(&now, "pid"), jint(was, "pid"), "{now}");
        assert_eq!(jint(&now, "errorCount"), 0, "{now}");
    }
    let events = w.read_until(WAIT, |s| {
        s.iter().filter(|e| e.reason == "Healthy").count() >= 2
    });
    let order: Vec<String> = events
        .iter()
        .filter(|e| ["Restarting", "Healthy"].contains(&e.reason.as_str()))
        .map(|e| format!("{} {}", e.reason, e.process_id))
        .collect();
    assert_eq!(
        order,
        [
            "Restarting ns:ra:test-pattern",
            "Healthy ns:ra:test-pattern",
            "Restarting ns:rb:test-pattern",
            "Healthy ns:rb:test-pattern"
        ],
        "{:?}",
        summary(&events)
    );
}

#[test]
fn a_signal_reaches_the_whole_process_group_and_bad_names_are_refused() {
    let env = TestEnv::start();
    let id = "ns:sig:test-pattern";
    let child_file = env.path("child.pid");
    let child_file_s = child_file.display().to_string();
    let reply = env.launch_running(
        PATTERN,
        "sig",
        &[
            ("TEST_SPAWN_CHILD", "group"),
            ("TEST_CHILD_PID_FILE", child_file_s.as_str()),
        ],
    );
    let pid = jint(&reply, "pid");
    let child = wait_for(WAIT, || {
        std::fs::read_to_string(&child_file)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
    })
    .expect("the child's pid");
    let mut api = Api::connect(env.ports.grpc_port());
    let bad = api.signal(id, "NOPE").unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("NOPE"), "{bad:?}");
    let r = api.signal(id, "HUP").expect("SignalPattern");
    assert_eq!(i64::from(r.pid), pid, "{r:?}");
    assert_eq!(r.signal, "SIGHUP", "{r:?}");
    // SIGHUP's default action ends both, the child too: the group got it.
    assert!(wait_until(WAIT, || !pid_alive(pid) && !pid_alive(child)));
    let restarted = env.wait_restarted(id, pid);
    assert!(
        jstr(&restarted, "lastError").contains("SIGHUP"),
        "{restarted}"
    );
}

#[test]
fn restart_and_signal_work_through_grpcurl_as_a_user_types_them() {
    let env = TestEnv::start();
    let id = "ns:g:test-pattern";
    let first = env.launch_running(PATTERN, "g", &[]);
    let port = env.ports.grpc_port();
    let r = grpcurl_call(port, "RestartPattern", &json!({ "process_id": id }))
        .expect("RestartPattern through grpcurl");
    assert!(jbool(&r, "success"), "{r}");
    assert_eq!(r["processIds"], json!([id]), "{r}");
    let now = env.find(id).expect("listed");
    assert_ne!(jint(&now, "pid"), jint(&first, "pid"), "{now}");
    let s = grpcurl_call(
        port,
        "SignalPattern",
        &json!({ "process_id": id, "signal": "SIGWINCH" }),
    )
    .expect("SignalPattern through grpcurl");
    assert_eq!(jint(&s, "pid"), jint(&now, "pid"), "{s}");
    assert_eq!(jstr(&s, "signal"), "SIGWINCH", "{s}");
    let e = grpcurl_call(port, "RestartPattern", &json!({})).unwrap_err();
    assert_eq!(e.code, "InvalidArgument", "{e}");
}
