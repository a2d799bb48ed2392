//! Hostile callers against the real binary: config that would reach the
//! dynamic loader, durations that overflow the clock, oversized config, an
//! exhausted port range and racing Launch/Terminate calls. Each attack is
//! refused with a clear error, and afterwards the launcher is unharmed.

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Builds a shared object whose constructor writes its uid into `marker`:
/// the payload of an `LD_PRELOAD` attack.
fn evil_library(env: &TestEnv, marker: &std::path::Path) -> std::path::PathBuf {
    let src = env.path("evil.c");
    let so = env.path("evil.so");
    fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <unistd.h>\n\
             __attribute__((constructor)) static void evil(void) {{\n\
               FILE *f = fopen(\"{}\", \"w\");\n\
               if (f) {{ fprintf(f, \"%d\\n\", (int)getuid()); fclose(f); }}\n\
             }}\n",
            marker.display()
        ),
    )
    .expect("write evil.c");
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .expect("gcc must be installed to build the attack's payload");
    assert!(
        out.status.success(),
        "gcc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

#[test]
fn config_that_reaches_the_dynamic_loader_is_refused_and_never_runs() {
    let env = TestEnv::start();
    let before = vec![{
        let r = env.launch_running("test-pattern", "victim", &[]);
        ("ns:victim:test-pattern".to_string(), jint(&r, "pid"))
    }];
    let marker = env.path("pwned");
    let so = evil_library(&env, &marker);
    let so = so.display().to_string();

    let err = env
        .launch_ns("test-pattern", "evil", &[("LD_PRELOAD", &so)])
        .expect_err("LD_PRELOAD in config must be refused");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(err.message.contains("LD_PRELOAD"), "{err}");
    assert!(
        !marker.exists(),
        "the preloaded library ran: {}",
        read_lossy(&marker)
    );
    for key in [
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "GCONV_PATH",
        "BASH_ENV",
        "ENV",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "NODE_OPTIONS",
        "PERL5OPT",
        "RUBYOPT",
        "GLIBC_TUNABLES",
    ] {
        let err = env
            .launch_ns("test-pattern", "evil", &[(key, "x")])
            .expect_err("a loader or interpreter hook in config must be refused");
        assert_eq!(err.code, "InvalidArgument", "{key}: {err}");
        assert!(err.message.contains(key), "{key}: {err}");
    }
    assert!(
        env.find("ns:evil:test-pattern").is_none(),
        "nothing may be declared by a refused launch"
    );

    // Through a desired file: the file is refused, naming the key.
    env.write_desired(
        "evil.yaml",
        &desired_doc("test-pattern", "evil-file", &[("LD_PRELOAD", &so)]),
    );
    let src = wait_for(WAIT, || {
        env.source("desired/evil.yaml")
            .filter(|s| jstr(s, "error").contains("LD_PRELOAD"))
    });
    assert!(src.is_some(), "the file's error must name LD_PRELOAD");
    assert!(env.find("ns:evil-file:test-pattern").is_none());

    // A declaration persisted by an older launcher is refused at start-up.
    env.assert_unharmed(&before);
    let store = env.state_dir.join("api-instances.json");
    let mut stored: Vec<serde_json::Value> =
        serde_json::from_str(&read_lossy(&store)).expect("the API store is JSON");
    stored.push(json!({
        "key": {"pattern": "test-pattern", "isolation": "namespace", "namespace": "stored-evil", "session_id": ""},
        "config": {"LD_PRELOAD": so},
        "grace_period": null
    }));
    let mut env = env;
    env.launcher().stop();
    fs::write(&store, serde_json::to_vec(&stored).expect("json")).expect("tamper the store");
    env.launcher().restart();
    wait_until(WAIT, || {
        env.read_log().contains("ignoring stored declaration")
    });
    assert!(
        env.read_log()
            .lines()
            .any(|l| l.contains("ns:stored-evil:test-pattern") && l.contains("LD_PRELOAD")),
        "the refused stored declaration must be logged with its key\n{}",
        env.log_tail(30)
    );
    env.wait_running("ns:victim:test-pattern");
    assert!(env.find("ns:stored-evil:test-pattern").is_none());
    assert!(
        !marker.exists(),
        "the preloaded library ran after a restart"
    );
}

#[test]
fn a_manifest_config_keys_list_refuses_every_other_key() {
    let env = TestEnv::builder()
        .raw_manifest(
            "strict",
            &format!(
                "name: strict\nversion: 1.0.0\nexecutable: {TEST_PATTERN_BIN:?}\n\
                 isolation_level: namespace\nconfig_keys: [LOG_LEVEL]\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\n"
            ),
        )
        .start();
    let err = env
        .launch_ns("strict", "a", &[("OTHER", "x")])
        .expect_err("a key outside config_keys must be refused");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(
        err.message.contains("OTHER") && err.message.contains("LOG_LEVEL"),
        "{err}"
    );
    let ok = env.launch_running("strict", "a", &[("LOG_LEVEL", "debug")]);
    assert_eq!(
        environ_var(jint(&ok, "pid"), "LOG_LEVEL").as_deref(),
        Some("debug")
    );
}

#[test]
fn instances_get_a_clean_environment_and_no_inherited_descriptors() {
    // A secret file the launcher's parent left open without close-on-exec.
    let holder = tempfile::tempdir().expect("temp dir");
    let secret = holder.path().join("secret");
    fs::write(&secret, "s3cr3t").expect("write secret");
    let file = fs::File::open(&secret).expect("open secret");
    let fd = file.as_raw_fd();
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .expect("clear close-on-exec");

    let env = TestEnv::builder()
        .raw_manifest(
            "inheriting",
            &format!(
                "name: inheriting\nversion: 1.0.0\nexecutable: {TEST_PATTERN_BIN:?}\n\
                 isolation_level: namespace\ninherit_env: [PRISM_TEST_TOKEN, SHARED_SETTING]\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\n"
            ),
        )
        .env("AWS_SECRET_ACCESS_KEY", "do-not-leak")
        .env("SHARED_SETTING", "shared")
        .start();
    let launcher = env.launcher_pid().expect("launcher pid");
    assert!(
        fs::read_link(format!("/proc/{launcher}/fd/{fd}")).is_ok_and(|p| p == secret),
        "the launcher must have inherited the secret descriptor (the test's premise)"
    );
    drop(file);

    for (pattern, inherits) in [("test-pattern", false), ("inheriting", true)] {
        let r = env.launch_running(pattern, "clean", &[("APP_SETTING", "on")]);
        let pid = jint(&r, "pid");
        let vars = environ(pid).expect("the instance's environment");
        assert!(
            !vars.contains_key("AWS_SECRET_ACCESS_KEY"),
            "{pattern}: the launcher's environment leaked: {vars:?}"
        );
        assert_eq!(vars.get("APP_SETTING").map(String::as_str), Some("on"));
        assert_eq!(
            vars.get("PROCESS_ID").map(String::as_str),
            Some(&*format!("ns:clean:{pattern}"))
        );
        assert!(vars.contains_key("PATH"), "{pattern}: a PATH is always set");
        assert_eq!(
            vars.contains_key("SHARED_SETTING"),
            inherits,
            "{pattern}: inherit_env decides: {vars:?}"
        );
        // The pattern opens sockets of its own after the exec; no file of
        // the launcher's may be among its descriptors.
        for entry in fs::read_dir(format!("/proc/{pid}/fd")).expect("list the descriptors") {
            let entry = entry.expect("descriptor entry");
            let n: i32 = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1);
            let target = fs::read_link(entry.path()).unwrap_or_default();
            assert!(
                target != secret,
                "{pattern}: descriptor {n} is the launcher's secret file"
            );
            assert!(
                n <= 2 || !target.is_absolute(),
                "{pattern}: descriptor {n} ({}) crossed the exec",
                target.display()
            );
        }
    }
}

#[test]
fn durations_that_overflow_the_clock_are_refused_at_every_edge() {
    let env = TestEnv::builder()
        .raw_manifest(
            "forever",
            &format!(
                "name: forever\nversion: 1.0.0\nexecutable: {TEST_PATTERN_BIN:?}\n\
                 isolation_level: namespace\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\n  startup_timeout: 300000000000y\n"
            ),
        )
        .start();
    let r = env.launch_running("test-pattern", "steady", &[]);
    let before = vec![("ns:steady:test-pattern".to_string(), jint(&r, "pid"))];

    // TerminatePattern with the largest grace period the wire allows.
    let err = env
        .grpc(
            "TerminatePattern",
            json!({"process_id": "ns:steady:test-pattern", "grace_period_secs": "9223372036854775807"}),
        )
        .expect_err("a grace period of i64::MAX must be refused");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(err.message.contains("limit of 86400 s"), "{err}");

    // LaunchPattern with it: refused, so nothing is persisted.
    let err = env
        .grpc(
            "LaunchPattern",
            json!({"pattern_name": "test-pattern", "namespace": "long", "grace_period_secs": "9223372036854775807"}),
        )
        .expect_err("a grace period of i64::MAX must be refused");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(
        !read_lossy(env.state_dir.join("api-instances.json")).contains("ns:long"),
        "a refused launch must not be persisted"
    );

    // The manifest is reported, naming the key and the limit; others load.
    let m = env
        .source("forever/manifest.yaml")
        .expect("the manifest is listed");
    assert!(
        jstr(&m, "error").contains("startup_timeout") && jstr(&m, "error").contains("limit"),
        "{m}"
    );
    let err = env
        .launch_ns("forever", "a", &[])
        .expect_err("skipped manifest");
    assert_eq!(err.code, "NotFound", "{err}");

    // A desired file with an overlong grace period is a file error.
    env.write_desired(
        "long.yaml",
        "pattern: test-pattern\nnamespace: long-file\ngrace_period: 300000000000y\n",
    );
    let src = wait_for(WAIT, || {
        env.source("desired/long.yaml")
            .filter(|s| jstr(s, "error").contains("grace_period"))
    });
    assert!(
        src.is_some(),
        "the file must be refused naming grace_period"
    );

    env.assert_unharmed(&before);
    // A graceful stop still works after all of it.
    let reply = env
        .terminate("ns:steady:test-pattern", 5, false)
        .expect("TerminatePattern");
    assert!(jbool(&reply, "success"), "{reply}");
}

#[test]
fn oversized_config_is_refused_naming_the_limit_and_nothing_is_saved() {
    let env = TestEnv::start();
    let r = env.launch_running("test-pattern", "steady", &[]);
    let before = vec![("ns:steady:test-pattern".to_string(), jint(&r, "pid"))];

    let many: Vec<(String, String)> = (0..100).map(|i| (format!("KEY_{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = env
        .launch_ns("test-pattern", "many", &many)
        .expect_err("100 keys");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(err.message.contains("limit is 64"), "{err}");

    let huge = "x".repeat(3 << 20);
    let err = env
        .launch_ns("test-pattern", "huge", &[("BLOB", &huge)])
        .expect_err("a 3 MB value");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(err.message.contains("limit"), "{err}");

    let wide: Vec<(String, String)> = (0..20)
        .map(|i| (format!("KEY_{i}"), "y".repeat(8000)))
        .collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = env
        .launch_ns("test-pattern", "wide", &wide)
        .expect_err("160 KB of config");
    assert_eq!(err.code, "InvalidArgument", "{err}");
    assert!(err.message.contains("bytes of keys and values"), "{err}");

    let store = fs::metadata(env.state_dir.join("api-instances.json")).map_or(0, |m| m.len());
    assert!(store < 16 << 10, "the API store grew to {store} bytes");
    env.assert_unharmed(&before);
}

#[test]
fn an_exhausted_port_range_is_refused_at_once_persists_nothing_and_is_logged_once() {
    let env = TestEnv::builder().ports(20).start();
    let (a, b) = env.ports.instance_range();
    let mut running = Vec::new();
    let mut exhausted = None;
    for i in 0..=(b - a) {
        let started = Instant::now();
        match env.launch_ns("test-pattern", &format!("t{i}"), &[]) {
            Ok(r) => {
                assert_eq!(jstr(&r, "state"), "STATE_RUNNING", "{r}");
                running.push((jstr(&r, "processId"), jint(&r, "pid")));
            }
            Err(e) => {
                exhausted = Some((e, started.elapsed(), format!("ns:t{i}:test-pattern")));
                break;
            }
        }
    }
    let (err, took, id) = exhausted.expect("the range must run out");
    assert_eq!(err.code, "ResourceExhausted", "{err}");
    assert!(
        err.message.contains(&format!("{a}-{b}")),
        "the error must name the range {a}-{b}: {err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "the refusal must come at once, it took {took:?}"
    );
    // Again and again: still refused, nothing declared or saved, one log line.
    for _ in 0..5 {
        let e = env
            .launch_ns("test-pattern", "more", &[])
            .expect_err("still full");
        assert_eq!(e.code, "ResourceExhausted", "{e}");
    }
    assert!(
        env.find(&id).is_none(),
        "a refused launch must not be listed"
    );
    let store = read_lossy(env.state_dir.join("api-instances.json"));
    assert!(
        !store.contains(&id) && !store.contains("ns:more:"),
        "{store}"
    );
    let lines = env
        .read_log()
        .lines()
        .filter(|l| l.contains("no free port left"))
        .count();
    assert_eq!(
        lines,
        1,
        "the exhaustion must be logged once:\n{}",
        env.log_tail(20)
    );

    // Freeing an instance makes room again.
    let (freed, _) = running.pop().expect("at least one instance ran");
    let reply = env.terminate(&freed, 5, false).expect("terminate");
    assert!(jbool(&reply, "success"), "{reply}");
    env.launch_running("test-pattern", "more", &[]);
    env.assert_unharmed(&running);
}

#[test]
fn terminate_racing_launch_of_the_same_instance_gets_prompt_true_answers() {
    let env = TestEnv::start();
    let r = env.launch_running("test-pattern", "steady", &[]);
    let before = vec![("ns:steady:test-pattern".to_string(), jint(&r, "pid"))];
    let id = "ns:race:test-pattern";
    // A generous bound: the bug this guards against hung for 35-40 s.
    let bound = Duration::from_secs(20);
    for round in 0..6 {
        let (launch, terminate) = std::thread::scope(|s| {
            let l = s.spawn(|| {
                let t = Instant::now();
                (env.launch_ns("test-pattern", "race", &[]), t.elapsed())
            });
            let t = s.spawn(|| {
                let t = Instant::now();
                (env.terminate(id, 5, false), t.elapsed())
            });
            (
                l.join().expect("launch thread"),
                t.join().expect("terminate thread"),
            )
        });
        for (what, took) in [("launch", launch.1), ("terminate", terminate.1)] {
            assert!(took < bound, "round {round}: {what} took {took:?}");
        }
        match &launch.0 {
            Ok(r) => assert!(
                jstr(r, "state") == "STATE_RUNNING",
                "round {round}: a launch that succeeds reports a running instance: {r}"
            ),
            Err(e) => assert!(
                e.code == "Aborted" && e.message.contains("terminated"),
                "round {round}: a launch overtaken by a terminate says so: {e}"
            ),
        }
        match &terminate.0 {
            Ok(r) => assert!(jbool(r, "success"), "round {round}: {r}"),
            Err(e) => assert_eq!(e.code, "NotFound", "round {round}: {e}"),
        }
        // The outcome is consistent: listed exactly when still declared.
        let declared = read_lossy(env.state_dir.join("api-instances.json")).contains("\"race\"");
        if declared {
            env.wait_running(id);
            let reply = env.terminate(id, 5, false).expect("clean up the round");
            assert!(jbool(&reply, "success"), "{reply}");
        } else {
            env.wait_unlisted(id);
        }
    }
    env.assert_unharmed(&before);
}
