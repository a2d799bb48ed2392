//! Tests of the render module.
use std::collections::HashMap;

use super::*;
use crate::proto::{Condition, DeclaredBy, ProcessState, SourceInfo};

fn at(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: secs,
        nanos: 0,
    })
}

const NOW: i64 = 1_700_000_000;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW as u64)
}

fn info(id: &str, state: ProcessState, pid: i32, uptime: i64) -> PatternInfo {
    PatternInfo {
        process_id: id.into(),
        pattern_name: "test-pattern".into(),
        state: state.into(),
        pid,
        grpc_port: if pid > 0 { 50051 } else { 0 },
        uptime_seconds: uptime,
        restart_count: 2,
        source: "api".into(),
        ..Default::default()
    }
}

#[test]
fn list_is_a_kubectl_style_table() {
    let out = instances(
        &[
            info("ns:a:test-pattern", ProcessState::StateRunning, 4242, 192),
            info("shared:test-pattern", ProcessState::StateTerminated, 0, 0),
        ],
        false,
    );
    assert_eq!(
        out,
        "PROCESS ID            PATTERN        STATE        PID      PORT     RESTARTS   AGE      SOURCE\n\
         ns:a:test-pattern     test-pattern   Running      4242     50051    2          3m12s    api\n\
         shared:test-pattern   test-pattern   Terminated   <none>   <none>   2          <none>   api\n"
    );
    assert_eq!(instances(&[], false), "No instances found.\n");
    let wide = instances(&[info("x", ProcessState::StateFailed, 0, 0)], true);
    assert!(
        wide.lines()
            .next()
            .is_some_and(|h| h.ends_with("LAST ERROR")),
        "{wide}"
    );
}

#[test]
fn sources_show_the_error_with_its_line() {
    let r = ListSourcesResponse {
        sources: vec![
            SourceInfo {
                kind: "desired".into(),
                path: "desired/a.yaml".into(),
                ok: false,
                error: "bad key".into(),
                line: 3,
                ..Default::default()
            },
            SourceInfo {
                kind: "desired".into(),
                path: "desired/b.yaml".into(),
                ok: false,
                error: "desired/b.yaml:5: unknown key".into(),
                line: 5,
                ..Default::default()
            },
            SourceInfo {
                kind: "manifest".into(),
                path: "patterns/p/manifest.yaml".into(),
                ok: true,
                pattern_name: "p".into(),
                process_ids: vec!["shared:p".into()],
                ..Default::default()
            },
        ],
    };
    let out = sources(&r);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[2].ends_with("   desired/b.yaml:5: unknown key"),
        "{out}"
    );
    assert!(
        lines[1].contains("Invalid") && lines[1].ends_with("line 3: bad key"),
        "{out}"
    );
    assert!(
        lines[3].contains("OK") && lines[3].ends_with("<none>"),
        "{out}"
    );
}

#[test]
fn describe_has_the_fields_then_conditions_and_events() {
    let r = DescribeResponse {
        process: Some(info("ns:a:p", ProcessState::StateRunning, 7, 10)),
        pattern_name: "p".into(),
        namespace: "a".into(),
        config: HashMap::from([("K".into(), "v".into())]),
        declared_by: vec![
            DeclaredBy {
                kind: "api".into(),
                ..Default::default()
            },
            DeclaredBy {
                kind: "file".into(),
                path: "desired/x.yaml".into(),
                line: 4,
            },
        ],
        pid: 7,
        start_time: at(NOW - 10),
        conditions: vec![Condition {
            r#type: "Healthy".into(),
            status: "True".into(),
            reason: "ProbeSucceeded".into(),
            message: "GET /health answered 200".into(),
            last_transition_time: at(NOW - 5),
        }],
        events: vec![WatchEvent {
            revision: 12,
            time: at(NOW - 2),
            reason: "Spawned".into(),
            message: "pid 7".into(),
            actor: "api".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let out = describe(&r, now());
    for want in [
        "Name:           ns:a:p\n",
        "Namespace:      a\n",
        "Session:        <none>\n",
        "Start Time:     2023-11-14T22:13:10Z (10s ago)\n",
        "Declared By:    api, desired/x.yaml:4\n",
        "Config:\n  K=v\n",
        "Conditions:\n  TYPE      STATUS   REASON           LAST TRANSITION   MESSAGE\n  Healthy   True     ProbeSucceeded   5s ago            GET /health answered 200\n",
        "Events:\n  AGE      REVISION   REASON    FROM   MESSAGE\n  2s ago   12         Spawned   api    pid 7\n",
    ] {
        assert!(out.contains(want), "{want:?} missing in:\n{out}");
    }
    let empty = describe(&DescribeResponse::default(), now());
    assert!(
        empty.contains("Conditions:\n  <none>\nEvents:\n  <none>\n"),
        "{empty}"
    );
}

#[test]
fn watch_lines_carry_a_relative_time_the_revision_and_the_subject() {
    let e = WatchEvent {
        revision: 41,
        time: at(NOW - 2),
        process_id: "ns:a:p".into(),
        reason: "Exited".into(),
        message: "killed by signal 9".into(),
        ..Default::default()
    };
    assert_eq!(
        watch_line(&e, now()).as_deref(),
        Some(
            "2s ago     41         Exited         ns:a:p                         killed by signal 9"
        )
    );
    assert_eq!(
        watch_header(),
        "TIME       REVISION   REASON         PROCESS                        MESSAGE"
    );
    let pattern = WatchEvent {
        pattern_name: "p".into(),
        reason: "PatternChanged".into(),
        ..Default::default()
    };
    let line = watch_line(&pattern, now()).expect("shown");
    assert!(
        line.starts_with("<none>     0          PatternChanged   p"),
        "{line}"
    );
    let bookmark = WatchEvent {
        reason: "Bookmark".into(),
        ..Default::default()
    };
    assert_eq!(watch_line(&bookmark, now()), None);
}

#[test]
fn log_lines_are_prefixed_when_merged_and_escaped_for_a_terminal() {
    let l = LogLine {
        process_id: "ns:a:p".into(),
        line: "hi \u{1b}[31mred".into(),
        time: at(NOW),
    };
    assert_eq!(log_line(&l, false, false, false), "hi \u{1b}[31mred");
    assert_eq!(
        log_line(&l, true, false, true),
        "[ns:a:p] hi \\u{1b}[31mred"
    );
    assert_eq!(
        log_line(&l, false, true, false),
        "2023-11-14T22:13:20.000Z hi \u{1b}[31mred"
    );
}

#[test]
fn health_summarises_counts_and_problems() {
    let r = HealthResponse {
        healthy: false,
        total_processes: 3,
        running_processes: 2,
        failed_processes: 1,
        isolation_distribution: HashMap::from([("Session".into(), 1), ("None".into(), 2)]),
        uptime_seconds: 61,
        problems: vec!["the reconcile loop stalled".into()],
        ..Default::default()
    };
    assert_eq!(
        health(&r, false),
        "Healthy:        false\n\
         Uptime:         61s\n\
         Instances:      3 total, 2 running, 0 terminating, 1 failed\n\
         Isolation:      None=2, Session=1\n\
         Problems:\n  the reconcile loop stalled\n"
    );
}

#[test]
fn one_line_replies() {
    assert_eq!(terminated("x"), "x terminated\n");
    assert_eq!(
        signalled(
            "x",
            &SignalResponse {
                pid: 9,
                signal: "SIGHUP".into()
            }
        ),
        "x signalled: SIGHUP sent to process group 9\n"
    );
    assert_eq!(
        restarted(&RestartResponse {
            process_ids: vec!["a".into(), "b".into()],
            success: true,
            error: String::new()
        }),
        "a restarted\nb restarted\n"
    );
    let l = launched(&LaunchResponse {
        process_id: "x".into(),
        state: ProcessState::StateRunning.into(),
        healthy: true,
        pid: 5,
        address: "127.0.0.1:1".into(),
        ..Default::default()
    });
    assert_eq!(
        l,
        "PROCESS ID   STATE     HEALTHY   PID   ADDRESS\nx            Running   true      5     127.0.0.1:1\n"
    );
}
