//! The desired-state directory (`--desired-dir`): files declare instances;
//! creating, editing and deleting them starts, restarts and stops exactly
//! those instances; bad files are reported and change nothing; temporary,
//! hidden and editor files are ignored. A large burst of changes is
//! `tests/desired_burst.rs`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Instant;

use common::*;
use serde_json::Value;

const PATTERN: &str = "test-pattern";

fn ns_id(namespace: &str) -> String {
    format!("ns:{namespace}:{PATTERN}")
}

fn doc(namespace: &str, config: &[(&str, &str)]) -> String {
    desired_doc(PATTERN, namespace, config)
}

/// Waits until ListSources has an entry for `path` that `ok` accepts.
fn wait_source(env: &TestEnv, path: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = None;
    wait_for(WAIT, || {
        last = env.source(path);
        last.clone().filter(|s| ok(s))
    })
    .unwrap_or_else(|| {
        panic!(
            "ListSources entry {path}: never {what}; last: {last:?}\n--- launcher log ---\n{}",
            env.log_tail(60)
        )
    })
}

#[test]
fn a_dropped_file_runs_its_instances_with_the_file_as_their_source() {
    let env = TestEnv::start();

    env.write_desired("one.yaml", &doc("drop-a", &[]));
    let a = env.wait_running(&ns_id("drop-a"));
    assert_eq!(jstr(&a, "source"), "desired/one.yaml", "{a}");
    assert!(
        env.token_processes().contains(&(jint(&a, "pid") as i32)),
        "the instance's pid is not one of our processes: {a}"
    );

    // Two documents, and the `.yml` extension.
    env.write_desired(
        "two.yml",
        &desired_stream(&[doc("drop-b", &[]), doc("drop-c", &[("GEN", "1")])]),
    );
    for ns in ["drop-b", "drop-c"] {
        let p = env.wait_running(&ns_id(ns));
        assert_eq!(jstr(&p, "source"), "desired/two.yml", "{p}");
        assert_eq!(jstr(&p, "isolation"), "ISOLATION_NAMESPACE", "{p}");
        assert_eq!(jstr(&p, "namespace"), ns, "{p}");
    }
    let c = env.find(&ns_id("drop-c")).expect("drop-c listed");
    assert_eq!(
        environ_var(jint(&c, "pid"), "GEN").as_deref(),
        Some("1"),
        "config is not in the instance's environment: {c}"
    );

    // GetProcessStatus carries the source too.
    let status = env
        .grpc(
            "GetProcessStatus",
            serde_json::json!({"process_id": ns_id("drop-b")}),
        )
        .expect("GetProcessStatus");
    assert_eq!(
        jstr(&status["process"], "source"),
        "desired/two.yml",
        "{status}"
    );

    let one = env
        .source("desired/one.yaml")
        .expect("one.yaml in ListSources");
    assert_eq!(jstr(&one, "kind"), "desired", "{one}");
    assert!(jbool(&one, "ok"), "{one}");
    assert_eq!(source_ids(&one), vec![ns_id("drop-a")], "{one}");
    let two = env
        .source("desired/two.yml")
        .expect("two.yml in ListSources");
    assert!(jbool(&two, "ok"), "{two}");
    assert_eq!(
        source_ids(&two),
        vec![ns_id("drop-b"), ns_id("drop-c")],
        "{two}"
    );
    assert_eq!(env.list().len(), 3, "{:?}", env.list());
}

#[test]
fn editing_one_of_two_instances_in_a_file_restarts_only_that_one() {
    let env = TestEnv::start();
    let (a, b) = (ns_id("pair-a"), ns_id("pair-b"));
    env.write_desired(
        "pair.yaml",
        &desired_stream(&[
            doc("pair-a", &[("GEN", "1")]),
            doc("pair-b", &[("GEN", "1")]),
        ]),
    );
    let a_pid = jint(&env.wait_running(&a), "pid");
    let b_pid = jint(&env.wait_running(&b), "pid");

    env.write_desired(
        "pair.yaml",
        &desired_stream(&[
            doc("pair-a", &[("GEN", "1")]),
            doc("pair-b", &[("GEN", "2")]),
        ]),
    );
    let b2 = env.wait_restarted(&b, b_pid);
    let b2_pid = jint(&b2, "pid");
    assert_eq!(
        environ_var(b2_pid, "GEN").as_deref(),
        Some("2"),
        "the restarted instance does not have the new config: {b2}"
    );
    assert!(
        wait_until(WAIT, || !pid_alive(b_pid)),
        "the old process {b_pid} of {b} still lives"
    );

    let a_now = env.find(&a).expect("pair-a listed");
    assert_eq!(
        jint(&a_now, "pid"),
        a_pid,
        "the unchanged instance was restarted: {a_now}\n--- launcher log ---\n{}",
        env.log_tail(40)
    );
    assert!(is_running(&a_now), "{a_now}");
    assert_eq!(environ_var(a_pid, "GEN").as_deref(), Some("1"));
    let mut ours = env.token_processes();
    ours.sort_unstable();
    let mut expected = vec![a_pid as i32, b2_pid as i32];
    expected.sort_unstable();
    assert_eq!(ours, expected, "processes carrying the test token");
}

#[test]
fn deleting_a_file_terminates_its_instances_gracefully() {
    let env = TestEnv::start();
    env.write_desired(
        "gone.yaml",
        &desired_stream(&[doc("gone-a", &[]), doc("gone-b", &[])]),
    );
    env.write_desired("stay.yaml", &doc("stay", &[]));
    let ids = [ns_id("gone-a"), ns_id("gone-b")];
    let pids: Vec<i64> = ids
        .iter()
        .map(|id| jint(&env.wait_running(id), "pid"))
        .collect();
    let stay_pid = jint(&env.wait_running(&ns_id("stay")), "pid");

    env.remove_desired("gone.yaml");
    for (id, pid) in ids.iter().zip(&pids) {
        env.wait_unlisted(id);
        assert!(
            wait_until(WAIT, || !pid_alive(*pid)),
            "{id}: pid {pid} still alive after it left the list"
        );
        let log_path = env.instance_log_path(id);
        assert!(
            wait_until(WAIT, || read_lossy(&log_path)
                .contains("test-pattern received SIGTERM")),
            "{id} was not stopped with SIGTERM; its log {}:\n{}",
            log_path.display(),
            read_lossy(&log_path)
        );
    }
    assert!(
        env.source("desired/gone.yaml").is_none(),
        "a deleted file is still a source: {:?}",
        env.list_sources()
    );
    let stay = env.find(&ns_id("stay")).expect("stay listed");
    assert_eq!(
        jint(&stay, "pid"),
        stay_pid,
        "another file's instance was touched: {stay}"
    );
    assert_eq!(env.token_processes(), vec![stay_pid as i32]);
}

#[test]
fn a_file_with_an_error_is_reported_with_its_line_and_its_last_good_content_stays() {
    let env = TestEnv::start();
    let (a, b, c, other) = (
        ns_id("err-a"),
        ns_id("err-b"),
        ns_id("err-c"),
        ns_id("err-other"),
    );
    env.write_desired(
        "err.yaml",
        &desired_stream(&[doc("err-a", &[("GEN", "1")]), doc("err-b", &[("GEN", "1")])]),
    );
    env.write_desired("other.yaml", &doc("err-other", &[]));
    let pid_of = |id: &str| jint(&env.wait_running(id), "pid");
    let before: BTreeMap<&str, i64> = [&a, &b, &other]
        .into_iter()
        .map(|id| (id.as_str(), pid_of(id)))
        .collect();
    let unchanged = |when: &str| {
        for (id, pid) in &before {
            let p = env
                .find(id)
                .unwrap_or_else(|| panic!("{when}: {id} is no longer listed"));
            assert_eq!(
                jint(&p, "pid"),
                *pid,
                "{when}: {id} was restarted: {p}\n--- launcher log ---\n{}",
                env.log_tail(40)
            );
            assert!(is_running(&p), "{when}: {p}");
        }
    };

    // A YAML syntax error on line 6 (an indented line after a plain scalar).
    let syntax_error = "pattern: test-pattern\n\
                        namespace: err-a\n\
                        ---\n\
                        pattern: test-pattern\n\
                        namespace: err-b\n  \
                        oops: indented by mistake\n";
    env.write_desired("err.yaml", syntax_error);
    let s = wait_source(&env, "desired/err.yaml", "refused", |s| {
        !jbool(s, "ok") && !jstr(s, "error").is_empty()
    });
    let err = jstr(&s, "error");
    assert_eq!(jint(&s, "line"), 6, "wrong line for the syntax error: {s}");
    assert!(
        err.starts_with("desired/err.yaml:6"),
        "the error should name the file and line: {s}"
    );
    assert_eq!(
        source_ids(&s),
        vec![a.clone(), b.clone()],
        "the last good content should stay in force: {s}"
    );
    assert!(
        env.read_log()
            .lines()
            .any(|l| l.contains("ERROR") && l.contains("desired/err.yaml:6")),
        "no ERROR line naming the file in the launcher log:\n{}",
        env.log_tail(40)
    );
    let o = env.source("desired/other.yaml").expect("other.yaml listed");
    assert!(jbool(&o, "ok"), "another file was affected: {o}");
    unchanged("after the syntax error");

    // A well-formed file with an unknown key on line 5.
    let unknown_key = "pattern: test-pattern\n\
                       namespace: err-a\n\
                       ---\n\
                       pattern: test-pattern\n\
                       colour: blue\n\
                       namespace: err-b\n";
    env.write_desired("err.yaml", unknown_key);
    let s = wait_source(&env, "desired/err.yaml", "refused for `colour`", |s| {
        !jbool(s, "ok") && jstr(s, "error").contains("colour")
    });
    assert_eq!(jint(&s, "line"), 5, "wrong line for the unknown key: {s}");
    assert!(
        jstr(&s, "error").starts_with("desired/err.yaml:5"),
        "the error should name the file and line: {s}"
    );
    unchanged("after the unknown key");
    assert!(env.find(&c).is_none());

    // Fixed: err-b's config changes and err-c is new; err-a stays as it was.
    env.write_desired(
        "err.yaml",
        &desired_stream(&[
            doc("err-a", &[("GEN", "1")]),
            doc("err-b", &[("GEN", "2")]),
            doc("err-c", &[]),
        ]),
    );
    env.wait_running(&c);
    let b2 = env.wait_restarted(&b, before[b.as_str()]);
    assert_eq!(environ_var(jint(&b2, "pid"), "GEN").as_deref(), Some("2"));
    let s = wait_source(&env, "desired/err.yaml", "ok again", |s| jbool(s, "ok"));
    assert_eq!(source_ids(&s), vec![a.clone(), b.clone(), c.clone()], "{s}");
    assert!(jstr(&s, "error").is_empty(), "{s}");
    for id in [&a, &other] {
        let p = env.find(id).expect("listed");
        assert_eq!(jint(&p, "pid"), before[id.as_str()], "{id} restarted: {p}");
    }
}

#[test]
fn a_write_through_a_temporary_file_spawns_once_and_swap_hidden_and_other_files_are_ignored() {
    let env = TestEnv::builder()
        .arg("--rescan-interval")
        .arg("500ms")
        .start();
    let spawn_log = env.path("spawns.log");
    let spawn_log_s = spawn_log.display().to_string();

    // Valid content under names the launcher must ignore.
    let ignored = [
        ".atomic.yaml.swp",
        ".hidden.yaml",
        "notes.txt",
        "atomic.yaml~",
        ".#atomic.yaml",
        "draft.yaml.tmp",
    ];
    for (i, name) in ignored.iter().enumerate() {
        env.write_desired(name, &doc(&format!("ignored-{i}"), &[]));
    }

    // Temporary dot-file + rename.
    let tmp = env.desired_path(".atomic.yaml.tmp");
    fs::write(
        &tmp,
        doc("atomic", &[("TEST_SPAWN_LOG", spawn_log_s.as_str())]),
    )
    .expect("write temp file");
    fs::rename(&tmp, env.desired_path("atomic.yaml")).expect("rename");
    let atomic = env.wait_running(&ns_id("atomic"));
    assert_eq!(jstr(&atomic, "source"), "desired/atomic.yaml", "{atomic}");

    // Make sure the launcher has caught up, through both of its paths:
    // `marker.yaml` is a hard link of a file outside the directory. Its
    // creation is an event; a later in-place write through the outside
    // link raises no event in `desired/` (inotify reports a change to the
    // directory of the path it was made through), so only a full rescan
    // can see the second namespace.
    let outside = env.path("outside");
    fs::create_dir_all(&outside).expect("mkdir outside");
    let marker = outside.join("marker.yaml");
    fs::write(&marker, doc("marker-1", &[])).expect("write marker");
    fs::hard_link(&marker, env.desired_path("marker.yaml")).expect("link marker");
    env.wait_running(&ns_id("marker-1"));
    fs::write(&marker, doc("marker-2", &[])).expect("rewrite marker");
    let since = Instant::now();
    env.wait_running(&ns_id("marker-2"));
    eprintln!(
        "a change no event reported was found by a rescan after {:?}",
        since.elapsed()
    );
    env.wait_unlisted(&ns_id("marker-1"));

    assert_eq!(
        count_lines(&spawn_log),
        1,
        "a write through a temporary file spawned more than once: {}\n--- launcher log ---\n{}",
        read_lossy(&spawn_log),
        env.log_tail(40)
    );
    let now = env.find(&ns_id("atomic")).expect("atomic listed");
    assert_eq!(jint(&now, "pid"), jint(&atomic, "pid"), "{now}");

    let listed: Vec<String> = env.list().iter().map(|p| jstr(p, "processId")).collect();
    assert_eq!(
        listed,
        vec![ns_id("atomic"), ns_id("marker-2")],
        "ignored files were acted on"
    );
    let paths: BTreeSet<String> = env
        .list_sources()
        .iter()
        .filter(|s| jstr(s, "kind") == "desired")
        .map(|s| jstr(s, "path"))
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "desired/atomic.yaml".to_string(),
            "desired/marker.yaml".to_string()
        ]),
        "ListSources lists files that should be ignored"
    );
    assert!(
        wait_until(WAIT, || env.token_processes().len() == 2),
        "processes carrying the test token: {:?}",
        env.token_processes()
    );
}

#[test]
fn terminate_pattern_on_a_file_declared_instance_is_refused_naming_the_file() {
    let env = TestEnv::start();
    let id = ns_id("held");
    env.write_desired("held.yaml", &doc("held", &[]));
    let pid = jint(&env.wait_running(&id), "pid");

    for force in [false, true] {
        let err = env
            .terminate(&id, 1, force)
            .expect_err("TerminatePattern of a file-declared instance should fail");
        assert_eq!(err.code, "FailedPrecondition", "force={force}: {err}");
        assert!(
            err.message.contains("desired/held.yaml"),
            "force={force}: the error should name the file: {err}"
        );
    }
    let p = env.find(&id).expect("still listed");
    assert_eq!(jint(&p, "pid"), pid, "{p}");
    assert!(is_running(&p), "{p}");
}

#[test]
fn an_instance_declared_by_the_api_and_a_file_lists_both_sources_and_a_conflicting_file_is_refused()
{
    let env = TestEnv::start();
    let id = ns_id("both");
    let sources_of = |p: &Value| -> BTreeSet<String> {
        jstr(p, "source").split(", ").map(str::to_string).collect()
    };
    let api = env.launch_running(PATTERN, "both", &[]);
    let pid = jint(&api, "pid");
    assert_eq!(jstr(&env.find(&id).expect("listed"), "source"), "api");

    // The same declaration in a file: one instance, two sources.
    env.write_desired("both.yaml", &doc("both", &[]));
    let two = BTreeSet::from(["api".to_string(), "desired/both.yaml".to_string()]);
    let p = env.wait_entry(&id, "declared by the API and both.yaml", |p| {
        sources_of(p) == two
    });
    assert_eq!(
        jint(&p, "pid"),
        pid,
        "a second declaration restarted it: {p}"
    );

    // A disagreeing declaration of the same instance is refused.
    env.write_desired("conflict.yaml", &doc("both", &[("GEN", "9")]));
    let s = wait_source(&env, "desired/conflict.yaml", "refused", |s| {
        !jbool(s, "ok") && !jstr(s, "error").is_empty()
    });
    eprintln!("conflict reported as: {s}");
    assert!(
        jstr(&s, "error").starts_with("desired/conflict.yaml"),
        "the error should name the file: {s}"
    );
    let p = env.find(&id).expect("listed");
    assert_eq!(jint(&p, "pid"), pid, "{p}");
    assert_eq!(sources_of(&p), two, "{p}");
    assert_eq!(environ_var(pid, "GEN"), None);

    // The file goes; the API declaration keeps the instance.
    env.remove_desired("both.yaml");
    let p = env.wait_entry(&id, "declared by the API alone", |p| {
        jstr(p, "source") == "api"
    });
    assert_eq!(jint(&p, "pid"), pid, "{p}");
    assert!(is_running(&p), "{p}");
}
