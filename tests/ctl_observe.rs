//! `prism-launcher ctl` for the calls that see and steer: watch, logs,
//! restart, signal, describe, each against a real launcher and real
//! processes.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

const PATTERN: &str = "test-pattern";

/// A pattern whose process group has a second member besides the leader:
/// a shell that writes `hup` to `$HUP_LOG` on SIGHUP, and copies the file
/// `$SAY_FILE` to stdout (then removes it) whenever it appears. The leader
/// is test-pattern, started with SIGHUP ignored so that it outlives a HUP.
const OBSERVED: &str = r#"#!/bin/sh
echo "wrapper up"
(
  trap 'echo hup >> "$HUP_LOG"' HUP
  echo "hup-ready"
  while :; do
    if [ -e "$SAY_FILE" ]; then cat "$SAY_FILE"; rm -f "$SAY_FILE"; fi
    sleep 0.1
  done
) &
trap '' HUP
exec "$REAL_PATTERN"
"#;

fn with_observed() -> TestEnv {
    TestEnv::builder()
        .pattern_file("observed/run.sh", OBSERVED, 0o755)
        .raw_manifest(
            "observed",
            &format!(
                "name: observed\nversion: 1.0.0\nexecutable: ./run.sh\nisolation_level: namespace\n\
                 environment: {{REAL_PATTERN: {TEST_PATTERN_BIN:?}}}\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\n"
            ),
        )
        .start()
}

/// Launches `observed` in `ns` through ctl; its process id.
fn launch_observed(env: &TestEnv, ns: &str) -> String {
    let hup = format!("HUP_LOG={}", env.path("hup.log").display());
    let say = format!("SAY_FILE={}", env.path("say").display());
    let run = ctl(
        env.ports.grpc_port(),
        &["launch", "observed", "-n", ns, "-c", &hup, "-c", &say],
    );
    assert!(run.ok(), "{run}");
    let id = format!("ns:{ns}:observed");
    env.wait_running(&id);
    id
}

/// The JSON objects of a `-o json` stream's lines.
fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"))
}

/// Waits for `reasons` in order among `stream`'s JSON events; the
/// events seen.
fn json_events_in_order(stream: &mut CtlStream, reasons: &[&str]) -> Vec<Value> {
    for want in reasons {
        let got = stream.until(WAIT, |l| jstr(&parse(l), "reason") == *want);
        assert!(
            got.is_some(),
            "no {want} event (wanted {reasons:?} in order); seen:\n{}",
            stream.report()
        );
    }
    stream.seen.iter().map(|l| parse(l)).collect()
}

/// The revisions of events other than Snapshot, in the order printed,
/// must increase strictly.
fn assert_increasing(events: &[Value]) {
    let revs: Vec<u64> = events
        .iter()
        .filter(|e| jstr(e, "reason") != "Snapshot")
        .map(|e| jint(e, "revision") as u64)
        .collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]) && revs.iter().all(|r| *r > 0),
        "revisions must increase strictly: {revs:?}\n{events:#?}"
    );
}

/// (revision, reason, process) of a `watch` table line.
fn table_event(line: &str) -> Option<(u64, String, String)> {
    let cells: Vec<&str> = line.split_whitespace().collect();
    // The time is "2s ago" (two words) or <none> (one).
    let at = if cells.get(1) == Some(&"ago") { 2 } else { 1 };
    let rev = cells.get(at)?.parse().ok()?;
    Some((
        rev,
        (*cells.get(at + 1)?).to_string(),
        (*cells.get(at + 2)?).to_string(),
    ))
}

#[test]
fn watch_shows_exited_spawned_healthy_after_a_kill_9_with_increasing_revisions() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    let first = env.launch_running(PATTERN, "w", &[]);
    let id = "ns:w:test-pattern";
    let pid = jint(&first, "pid");

    let mut json = CtlStream::start(port, &["-o", "json", "watch", "--id", id]);
    let mut table = CtlStream::start(port, &["watch", "--id", id]);
    // Both streams are live once the initial state is through.
    let bookmark = json.until(WAIT, |l| jstr(&parse(l), "reason") == "Bookmark");
    assert!(
        bookmark.is_some(),
        "no Bookmark: {}\n{}",
        json.report(),
        json.stop()
    );
    let before = jint(&parse(&bookmark.unwrap_or_default()), "revision");
    let snapshot = table.until(WAIT, |l| l.contains("Snapshot") && l.contains(id));
    assert!(
        snapshot.is_some(),
        "no Snapshot line: {}\n{}",
        table.report(),
        table.stop()
    );
    assert!(
        table.seen[0].starts_with("TIME") && table.seen[0].contains("REVISION"),
        "a header first: {}",
        table.report()
    );

    signal(pid, Signal::SIGKILL);

    let events = json_events_in_order(&mut json, &["Exited", "Spawned", "Healthy"]);
    assert_increasing(&events);
    for e in events.iter().filter(|e| jstr(e, "reason") != "Bookmark") {
        assert_eq!(jstr(e, "processId"), id, "filtered by --id: {e}");
    }
    let exited = events
        .iter()
        .find(|e| jstr(e, "reason") == "Exited")
        .expect("seen");
    assert!(jint(exited, "revision") > before, "{exited}");
    assert!(
        exited["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "a Timestamp in RFC 3339: {exited}"
    );

    let mut order = Vec::new();
    for want in ["Exited", "Spawned", "Healthy"] {
        let line = table.until(WAIT, |l| table_event(l).is_some_and(|(_, r, _)| r == want));
        let (rev, _, process) = line
            .as_deref()
            .and_then(table_event)
            .unwrap_or_else(|| panic!("no {want} line:\n{}", table.report()));
        assert_eq!(process, id);
        order.push(rev);
    }
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    assert!(
        table.seen.iter().any(|l| l.contains(" ago ")),
        "relative times: {}",
        table.report()
    );

    // The same events again, replayed from the revision before the kill.
    let since = before.to_string();
    let mut replay = CtlStream::start(
        port,
        &["-o", "json", "watch", "--since", &since, "--id", id],
    );
    let replayed = json_events_in_order(&mut replay, &["Exited", "Spawned", "Healthy"]);
    assert!(
        replayed.iter().all(|e| jint(e, "revision") > before),
        "only events after --since: {replayed:#?}"
    );
}

#[test]
fn logs_prints_history_and_follow_shows_a_line_the_instance_writes() {
    let env = with_observed();
    let port = env.ports.grpc_port();
    let id = launch_observed(&env, "l");
    assert!(
        wait_until(WAIT, || env.instance_log(&id).contains("hup-ready")),
        "{}",
        env.instance_log(&id)
    );

    let history = ctl(port, &["logs", &id, "--tail", "-1"]);
    assert!(history.ok(), "{history}");
    assert!(
        history.stdout.lines().any(|l| l == "wrapper up"),
        "{history}"
    );

    let mut follow = CtlStream::start(port, &["logs", &id, "-f", "--tail", "2"]);
    let first = follow.until(WAIT, |_| true);
    assert!(first.is_some(), "no history line: {}", follow.stop());
    let marker = format!("marker {}", env.token);
    write_atomic(&env.path("say"), &format!("{marker}\n"));
    let shown = follow.until(WAIT, |l| l == marker);
    assert!(
        shown.is_some(),
        "{marker:?} not followed:\n{}",
        follow.report()
    );
    drop(follow);

    let merged = ctl(port, &["logs", "--pattern", "observed", "--tail", "-1"]);
    assert!(merged.ok(), "{merged}");
    assert!(
        merged
            .stdout
            .lines()
            .any(|l| l == format!("[{id}] {marker}")),
        "merged lines name their instance: {merged}"
    );

    let json = ctl(port, &["-o", "json", "logs", &id, "--tail", "-1"]);
    assert!(json.ok(), "{json}");
    let lines: Vec<Value> = json.stdout.lines().map(parse).collect();
    assert!(
        lines
            .iter()
            .any(|l| jstr(l, "line") == marker && jstr(l, "processId") == id),
        "{json}"
    );
}

#[test]
fn restart_changes_the_pid_of_one_instance_or_of_a_whole_pattern() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    let a = env.launch_running(PATTERN, "ra", &[]);
    let b = env.launch_running(PATTERN, "rb", &[]);
    let (ida, idb) = ("ns:ra:test-pattern", "ns:rb:test-pattern");
    let (pa, pb) = (jint(&a, "pid"), jint(&b, "pid"));

    let one = ctl(port, &["restart", ida]);
    assert!(one.ok(), "{one}");
    assert_eq!(one.stdout, format!("{ida} restarted\n"));
    let a2 = env.wait_restarted(ida, pa);
    assert!(!pid_alive(pa), "the old pid {pa} is gone");
    assert_eq!(
        env.find(idb).map(|p| jint(&p, "pid")),
        Some(pb),
        "the other instance is left alone"
    );

    let all = ctl(port, &["restart", "--pattern", PATTERN]);
    assert!(all.ok(), "{all}");
    assert!(
        all.stdout.contains(&format!("{ida} restarted"))
            && all.stdout.contains(&format!("{idb} restarted")),
        "{all}"
    );
    env.wait_restarted(ida, jint(&a2, "pid"));
    env.wait_restarted(idb, pb);
}

#[test]
fn signal_hup_reaches_the_whole_process_group() {
    let env = with_observed();
    let port = env.ports.grpc_port();
    let id = launch_observed(&env, "s");
    assert!(
        wait_until(WAIT, || env.instance_log(&id).contains("hup-ready")),
        "{}",
        env.instance_log(&id)
    );
    let leader = jint(&env.find(&id).expect("listed"), "pid");

    let run = ctl(port, &["signal", &id, "HUP"]);
    assert!(run.ok(), "{run}");
    assert!(
        run.stdout.contains("SIGHUP") && mentions_number(&run.stdout, leader),
        "names the signal and the group: {run}"
    );
    // The shell is a member of the group, not its leader.
    let hup = env.path("hup.log");
    assert!(
        wait_until(WAIT, || read_lossy(&hup).contains("hup")),
        "the group member never got SIGHUP"
    );
    // The leader ignores SIGHUP: still the same, healthy instance.
    let after = env.wait_running(&id);
    assert_eq!(jint(&after, "pid"), leader, "{after}");

    let bad = ctl(port, &["signal", &id, "NOT-A-SIGNAL"]);
    assert_eq!(bad.code, Some(1), "{bad}");
    assert!(bad.stderr.starts_with("Error from server ("), "{bad}");
}

#[test]
fn describe_shows_the_declaration_conditions_and_events() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    let reply = env.launch_running(PATTERN, "d", &[("COLOUR", "blue")]);
    let id = "ns:d:test-pattern";
    let pid = jint(&reply, "pid");

    let run = ctl(port, &["describe", id]);
    assert!(run.ok(), "{run}");
    let out = &run.stdout;
    assert!(out.contains(&format!("Name:           {id}\n")), "{run}");
    assert!(out.contains(&format!("PID:            {pid}\n")), "{run}");
    assert!(out.contains("Config:\n  COLOUR=blue\n"), "{run}");
    assert!(out.contains("Declared By:    api\n"), "{run}");
    let conditions = out
        .split("Conditions:\n")
        .nth(1)
        .and_then(|rest| rest.split("Events:\n").next())
        .unwrap_or_else(|| panic!("no Conditions: {run}"));
    assert!(
        conditions.starts_with("  TYPE ") && conditions.contains("STATUS"),
        "{run}"
    );
    assert!(
        conditions.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.first() == Some(&"Healthy") && cells.get(1) == Some(&"True")
        }),
        "Healthy True: {run}"
    );
    let events = out
        .split("Events:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events: {run}"));
    assert!(events.starts_with("  AGE "), "{run}");
    assert!(events.lines().any(|l| l.contains("Spawned")), "{run}");

    let json = ctl(port, &["-o", "json", "describe", id]);
    assert!(json.ok(), "{json}");
    let v = parse(&json.stdout.replace('\n', ""));
    assert_eq!(v["process"]["processId"], id, "{v}");
    assert_eq!(v["config"]["COLOUR"], "blue", "{v}");
    assert!(
        v["conditions"].as_array().is_some_and(|c| !c.is_empty()),
        "{v}"
    );
    assert!(v["events"].as_array().is_some_and(|e| !e.is_empty()), "{v}");

    let unknown = ctl(port, &["describe", "ns:nobody:test-pattern"]);
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(
        unknown.stderr.starts_with("Error from server (NotFound): "),
        "{unknown}"
    );
}

/// A watch that outlives its launcher ends with an error, not a hang.
#[test]
fn watch_ends_when_the_launcher_stops() {
    let mut env = TestEnv::start();
    let port = env.ports.grpc_port();
    let mut watch = CtlStream::start(port, &["-o", "json", "watch"]);
    assert!(
        watch
            .until(WAIT, |l| jstr(&parse(l), "reason") == "Bookmark")
            .is_some(),
        "{}",
        watch.report()
    );
    env.launcher().stop();
    let ended = watch.ended(Duration::from_secs(30));
    let stderr = watch.stop();
    assert!(
        ended.is_some(),
        "still watching a stopped launcher: {stderr}"
    );
}
