//! What a new user hits in the first ten minutes, driven as they would type
//! it: the run script with their own flags, a mistyped patterns directory, a
//! port that is taken, a circuit-broken instance launched again after its
//! fix, and error messages that say where to look.

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn a_patterns_directory_that_does_not_exist_stops_the_launcher_with_a_clear_error() {
    let t = tempfile::tempdir().expect("temp dir");
    let missing = t.path().join("no-such-patterns");
    let port = PortBlock::allocate().grpc_port().to_string();
    let (status, out) = run_to_exit(&[
        "--patterns-dir",
        &missing.display().to_string(),
        "--desired-dir",
        &t.path().join("desired").display().to_string(),
        "--state-dir",
        &t.path().join("state").display().to_string(),
        "--grpc-port",
        &port,
    ]);
    assert!(
        !status.success(),
        "it must not serve without patterns: {out}"
    );
    assert!(
        out.contains(&missing.display().to_string()) && out.contains("--patterns-dir"),
        "the error must name the directory and the flag:\n{out}"
    );
}

#[test]
fn a_grpc_port_in_use_is_an_error_that_names_the_flag() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = holder.local_addr().expect("addr").port().to_string();
    let t = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(t.path().join("patterns")).expect("patterns dir");
    let (status, out) = run_to_exit(&[
        "--patterns-dir",
        &t.path().join("patterns").display().to_string(),
        "--desired-dir",
        &t.path().join("desired").display().to_string(),
        "--state-dir",
        &t.path().join("state").display().to_string(),
        "--grpc-port",
        &port,
    ]);
    assert!(!status.success(), "{out}");
    assert!(
        out.contains(&format!("127.0.0.1:{port}")) && out.contains("--grpc-port"),
        "the error must name the address and hint at --grpc-port:\n{out}"
    );
}

#[test]
fn with_no_pattern_known_not_found_says_where_the_launcher_looked() {
    let env = TestEnv::builder().no_patterns().start();
    let err = env
        .launch_ns("hello-pattern", "a", &[])
        .expect_err("no patterns");
    assert_eq!(err.code, "NotFound", "{err}");
    assert!(
        err.message
            .contains(&env.patterns_dir.display().to_string()),
        "the error must say where patterns were looked for: {err}"
    );
    let err = env
        .grpc("LaunchPattern", serde_json::json!({"namespace": "a"}))
        .expect_err("an empty pattern_name");
    assert_eq!(err.code, "InvalidArgument", "{err}");
}

#[test]
fn a_desired_file_naming_an_unknown_pattern_lists_the_known_ones() {
    let env = TestEnv::start();
    env.write_desired("typo.yaml", &desired_doc("test-patern", "a", &[]));
    let src = wait_for(WAIT, || {
        env.source("desired/typo.yaml")
            .filter(|s| !jstr(s, "error").is_empty())
    })
    .expect("the file's error is listed");
    let error = jstr(&src, "error");
    assert!(
        error.contains("test-patern") && error.contains("known: test-pattern"),
        "{error}"
    );
    // This file never had good content: the log must not claim otherwise.
    assert!(
        wait_until(WAIT, || env
            .read_log()
            .contains("nothing of it is in force")),
        "{}",
        env.log_tail(20)
    );
    assert!(
        !env.read_log()
            .lines()
            .any(|l| l.contains("typo.yaml") && l.contains("last good content")),
        "{}",
        env.log_tail(20)
    );
}

/// A pattern that fails at start until a file `fixed` appears next to it.
const FLAKY: &str =
    "#!/bin/sh\n[ -e fixed ] || { echo 'not fixed yet' >&2; exit 1; }\nexec \"$REAL_PATTERN\"\n";

#[test]
fn launching_a_circuit_broken_instance_again_waits_for_the_new_attempt() {
    let env = TestEnv::builder()
        .pattern_file("flaky/run.sh", FLAKY, 0o755)
        .raw_manifest(
            "flaky",
            &format!(
                "name: flaky\nversion: 1.0.0\nexecutable: ./run.sh\nisolation_level: namespace\n\
                 environment: {{REAL_PATTERN: {TEST_PATTERN_BIN:?}}}\n\
                 healthcheck:\n  interval: 1s\n  timeout: 1s\n"
            ),
        )
        .start();
    let id = "ns:a:flaky";
    let first = env
        .launch_ns("flaky", "a", &[])
        .expect("a failed start is a reply");
    assert_ne!(jstr(&first, "state"), "STATE_RUNNING", "{first}");
    env.wait_entry(id, "FAILED", |p| jstr(p, "state") == "STATE_FAILED");

    fs::write(env.patterns_dir.join("flaky/fixed"), "").expect("fix the pattern");
    let again = env.launch_ns("flaky", "a", &[]).expect("launch again");
    assert_eq!(
        jstr(&again, "state"),
        "STATE_RUNNING",
        "the reply must be the new attempt's, not the old failure: {again}"
    );
    assert!(jbool(&again, "healthy"), "{again}");
}

/// A fake `cargo` for the run script: the build is a test double (the
/// binaries were built for the test already); the script's own logic runs.
fn fake_cargo(dir: &Path) -> PathBuf {
    let bin = dir.join("fake-bin");
    fs::create_dir_all(&bin).expect("fake bin dir");
    let cargo = bin.join("cargo");
    fs::write(&cargo, "#!/bin/sh\nexit 0\n").expect("fake cargo");
    fs::set_permissions(&cargo, fs::Permissions::from_mode(0o755)).expect("chmod");
    bin
}

/// A child leading its own process group: the group is SIGKILLed when this
/// is dropped with the leader not yet reaped (a test that panics halfway
/// leaves nothing running).
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = killpg(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_run_script_lets_the_users_flags_win() {
    let t = tempfile::tempdir().expect("temp dir");
    // The script runs <target>/release/<bin>: point it at the test's builds.
    let release = t.path().join("target/release");
    fs::create_dir_all(&release).expect("target dir");
    for (name, built) in [
        ("prism-launcher", LAUNCHER_BIN),
        ("hello-pattern", HELLO_PATTERN_BIN),
        ("config-lookup", CONFIG_LOOKUP_BIN),
    ] {
        std::os::unix::fs::symlink(built, release.join(name)).expect("link a binary");
    }
    let fake = fake_cargo(t.path());
    let port = PortBlock::allocate().grpc_port();
    let state = t.path().join("state");
    let desired = t.path().join("desired");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = fs::File::create(t.path().join("run.log")).expect("log");
    let mut child = Group(
        Command::new("bash")
            .arg(Path::new(REPO).join("scripts/run.sh"))
            .args(["--grpc-port", &port.to_string()])
            // Given twice: the last one wins, as with most command-line tools.
            .args(["--state-dir", "/nonexistent/ignored"])
            .args(["--state-dir", &state.display().to_string()])
            .args(["--desired-dir", &desired.display().to_string()])
            .env("PATH", path)
            .env("CARGO_TARGET_DIR", t.path().join("target"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("run scripts/run.sh"),
    );
    let pgid = Pid::from_raw(child.0.id() as i32);
    // As the user checks it: `grpcurl -plaintext 127.0.0.1:<port> list`.
    let served = wait_until(READY_TIMEOUT, || {
        child.0.try_wait().ok().flatten().is_none() && grpcurl_lists_service(port)
    });
    let _ = killpg(pgid, Signal::SIGTERM);
    let stopped = wait_until(STOP_TIMEOUT, || child.0.try_wait().ok().flatten().is_some());
    drop(child);
    let log = read_lossy(t.path().join("run.log"));
    assert!(
        served,
        "scripts/run.sh --grpc-port {port} did not serve on {port}:\n{log}"
    );
    assert!(stopped, "the launcher did not stop on SIGTERM:\n{log}");
    assert!(log.contains(&format!("Serving gRPC on :{port}")), "{log}");
    assert!(state.exists(), "the last --state-dir must win:\n{log}");
}

#[test]
fn removing_pattern_directories_is_no_warning() {
    let env = TestEnv::start();
    for i in 0..6 {
        let name = format!("gone-{i}");
        let dir = env.patterns_dir.join(&name);
        fs::create_dir(&dir).expect("pattern dir");
        fs::write(
            dir.join("manifest.yaml"),
            PatternSpec::named(&name).to_yaml(env.ports.health_port()),
        )
        .expect("manifest");
        let manifest = format!("{name}/manifest.yaml");
        assert!(
            wait_until(WAIT, || env
                .source(&manifest)
                .is_some_and(|s| jbool(&s, "ok"))),
            "{name} never loaded"
        );
        fs::remove_dir_all(&dir).expect("remove the pattern dir");
        assert!(
            wait_until(WAIT, || env.source(&manifest).is_none()),
            "{name} never went away"
        );
    }
    let noise: Vec<String> = env
        .read_log()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("WatchNotFound"))
        .map(String::from)
        .collect();
    assert!(noise.is_empty(), "noise in the log: {noise:?}");
}

#[test]
fn making_the_executable_runnable_brings_back_a_circuit_broken_desired_instance() {
    let env = TestEnv::builder()
        .pattern_file(
            "fixable/run.sh",
            &format!("#!/bin/sh\nexec {TEST_PATTERN_BIN:?}\n"),
            0o644,
        )
        .raw_manifest(
            "fixable",
            "name: fixable\nversion: 1.0.0\nexecutable: ./run.sh\nisolation_level: namespace\n\
             healthcheck:\n  interval: 1s\n  timeout: 1s\n",
        )
        .start();
    env.write_desired("fixable.yaml", &desired_doc("fixable", "a", &[]));
    let id = "ns:a:fixable";
    let failed = env.wait_entry(id, "FAILED", |p| jstr(p, "state") == "STATE_FAILED");
    assert!(
        jstr(&failed, "lastError").contains("Permission denied"),
        "{failed}"
    );
    fs::set_permissions(
        env.patterns_dir.join("fixable/run.sh"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod +x");
    env.wait_running(id);
}

#[test]
fn the_first_line_of_every_start_reaches_the_launchers_log() {
    let env = TestEnv::builder()
        .pattern_file(
            "blurt/run.sh",
            "#!/bin/sh\necho \"first line of $PROCESS_ID\"\nexit 3\n",
            0o755,
        )
        .raw_manifest(
            "blurt",
            "name: blurt\nversion: 1.0.0\nexecutable: ./run.sh\nisolation_level: namespace\n\
             healthcheck:\n  interval: 1s\n  timeout: 1s\n",
        )
        .ports(220)
        .start();
    let docs: Vec<String> = (0..50)
        .map(|i| desired_doc("blurt", &format!("n{i}"), &[]))
        .collect();
    env.write_desired("blurt.yaml", &desired_stream(&docs));
    let ids: Vec<String> = (0..50).map(|i| format!("ns:n{i}:blurt")).collect();
    // Each starts, prints, exits, and is retried until its circuit opens.
    for id in &ids {
        env.wait_entry(id, "FAILED", |p| jstr(p, "state") == "STATE_FAILED");
    }
    for id in &ids {
        let line = format!("first line of {id}");
        let written = env.instance_log(id).matches(&line).count();
        assert!(written >= 1, "{id} never ran");
        let echoed = format!("[{id}] {line}");
        // The echo may lag the exit a little: wait for it, not for time.
        let all_there = wait_until(WAIT, || env.read_log().matches(&echoed).count() == written);
        assert!(
            all_there,
            "{id}: {written} first lines written, {} echoed",
            env.read_log().matches(&echoed).count()
        );
    }
}
