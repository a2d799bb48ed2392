//! `prism-launcher ctl` against a real launcher: the commands whose calls
//! the launcher serves (list, launch, terminate, health, sources), `-o
//! json`, exit codes and error messages, the address (`--addr`,
//! `PRISM_ADDR`), shell completion.

mod common;

use common::*;
use serde_json::{Value, json};

const PATTERN: &str = "test-pattern";

/// The lines of `out` after the header whose first column is `id`.
fn row<'a>(out: &'a str, id: &str) -> Option<Vec<&'a str>> {
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&id))
}

/// A JSON value with the fields at their default left out, as the
/// canonical mapping prints it (grpcurl without -emit-defaults).
fn without_defaults(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(_, v)| {
                    !matches!(v, Value::Null | Value::Bool(false))
                        && *v != &json!(0)
                        && *v != &json!("0")
                        && *v != &json!("")
                        && *v != &json!([])
                        && *v != &json!({})
                        && !v.as_str().is_some_and(|s| s.ends_with("_UNSPECIFIED"))
                })
                .map(|(k, v)| (k.clone(), without_defaults(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_defaults).collect()),
        other => other.clone(),
    }
}

/// `v` without `uptimeSeconds` anywhere (it ticks between two calls).
fn without_uptime(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| k.as_str() != "uptimeSeconds")
                .map(|(k, v)| (k.clone(), without_uptime(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_uptime).collect()),
        other => other.clone(),
    }
}

#[test]
fn launch_with_config_list_and_terminate_as_tables() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    let id = "ns:team-a:test-pattern";

    let launched = ctl(
        port,
        &[
            "launch",
            PATTERN,
            "--namespace",
            "team-a",
            "--isolation",
            "namespace",
            "--config",
            "GREETING=hello world",
            "--config",
            "ANSWER=42",
        ],
    );
    assert!(launched.ok(), "{launched}");
    let cells = row(&launched.stdout, id).unwrap_or_else(|| panic!("{launched}"));
    assert_eq!(cells[1], "Running", "{launched}");
    assert_eq!(cells[2], "true", "{launched}");
    let pid: i64 = cells[3].parse().unwrap_or_else(|_| panic!("{launched}"));
    assert!(pid_alive(pid), "{launched}");
    assert_eq!(environ_var(pid, "GREETING").as_deref(), Some("hello world"));
    assert_eq!(environ_var(pid, "ANSWER").as_deref(), Some("42"));

    let list = ctl(port, &["list"]);
    assert!(list.ok(), "{list}");
    let header: Vec<&str> = list
        .stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "PROCESS ID",
            "PATTERN",
            "STATE",
            "PID",
            "PORT",
            "RESTARTS",
            "AGE",
            "SOURCE"
        ],
        "{list}"
    );
    let entry = env.find(id).expect("listed");
    let cells = row(&list.stdout, id).unwrap_or_else(|| panic!("{list}"));
    assert_eq!(
        cells[1..6],
        [
            PATTERN,
            "Running",
            &pid.to_string(),
            &jint(&entry, "grpcPort").to_string(),
            "0"
        ],
        "{list}"
    );
    assert!(
        cells[6].ends_with('s') || cells[6].ends_with('m'),
        "an age: {list}"
    );
    assert_eq!(cells[7], "api", "{list}");

    let filtered = ctl(port, &["list", "--pattern", "other"]);
    assert!(filtered.ok(), "{filtered}");
    assert_eq!(filtered.stdout, "No instances found.\n");

    let terminated = ctl(port, &["terminate", id, "--grace", "5s"]);
    assert!(terminated.ok(), "{terminated}");
    assert_eq!(terminated.stdout, format!("{id} terminated\n"));
    assert!(
        !pid_alive(pid),
        "pid {pid} outlived a terminate that returned"
    );
    assert!(env.find(id).is_none(), "{:?}", env.list());
}

#[test]
fn errors_exit_1_with_the_servers_status_and_message() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();

    let unknown = ctl(port, &["launch", "no-such-pattern", "-n", "a"]);
    assert_eq!(unknown.code, Some(1), "{unknown}");
    assert!(unknown.stdout.is_empty(), "{unknown}");
    let expected = env
        .launch_ns("no-such-pattern", "a", &[])
        .expect_err("the gRPC client sees an error too");
    assert_eq!(expected.code, "NotFound");
    assert_eq!(
        unknown.stderr,
        format!("Error from server (NotFound): {}\n", expected.message),
        "{unknown}"
    );

    // Describe is not served yet (UNIMPLEMENTED), and will answer NOT_FOUND
    // for an unknown id once it is: either way, a non-zero exit with the
    // server's code and message.
    let describe = ctl(port, &["describe", "ns:nobody:test-pattern"]);
    assert_eq!(describe.code, Some(1), "{describe}");
    let message = describe
        .stderr
        .strip_prefix("Error from server (")
        .and_then(|rest| rest.split_once("): "))
        .map(|(_, m)| m.trim())
        .unwrap_or_else(|| panic!("{describe}"));
    assert!(!message.is_empty(), "{describe}");
    assert_eq!(describe.stderr.lines().count(), 1, "{describe}");

    let terminate = ctl(port, &["terminate", "ns:nobody:test-pattern"]);
    assert_eq!(terminate.code, Some(1), "{terminate}");
    assert!(
        terminate
            .stderr
            .starts_with("Error from server (NotFound): ")
            && terminate.stderr.contains("ns:nobody:test-pattern"),
        "{terminate}"
    );

    // A usage error is clap's: exit 2.
    let usage = ctl(port, &["launch"]);
    assert_eq!(usage.code, Some(2), "{usage}");
}

#[test]
fn json_output_is_the_canonical_mapping_of_what_the_grpc_client_sees() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    env.launch_running(PATTERN, "j", &[("K", "v")]);
    env.write_desired("bad.yaml", "pattern: test-pattern\ncolour: blue\n");
    wait_for(WAIT, || {
        env.source("desired/bad.yaml").filter(|s| !jbool(s, "ok"))
    })
    .expect("bad.yaml refused");

    for (args, method) in [
        (&["-o", "json", "list"][..], "ListPatterns"),
        (&["list", "--output", "json"][..], "ListPatterns"),
        (&["-o", "json", "sources"][..], "ListSources"),
        (&["-o", "json", "health"][..], "Health"),
    ] {
        let run = ctl(port, args);
        assert!(run.ok(), "{args:?}: {run}");
        let printed: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {run}"));
        let seen = env.grpc(method, json!({})).expect(method);
        assert_eq!(
            without_uptime(&printed),
            without_uptime(&without_defaults(&seen)),
            "{args:?}"
        );
    }

    let list: Value =
        serde_json::from_str(&ctl(port, &["-o", "json", "list"]).stdout).expect("JSON");
    let p = &list["patterns"][0];
    assert_eq!(p["state"], "STATE_RUNNING", "enums by name: {p}");
    assert_eq!(p["isolation"], "ISOLATION_NAMESPACE", "{p}");
    assert!(
        p["uptimeSeconds"].is_string() || p.get("uptimeSeconds").is_none(),
        "int64 as a string: {p}"
    );
    assert!(p.get("lastError").is_none(), "defaults left out: {p}");
    assert!(p["pid"].is_number(), "int32 as a number: {p}");
}

#[test]
fn health_and_sources_as_tables() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    env.launch_running(PATTERN, "h", &[]);
    env.write_desired("good.yaml", &desired_doc(PATTERN, "from-file", &[]));
    env.write_desired("bad.yaml", "pattern: test-pattern\ncolour: blue\n");
    wait_for(WAIT, || {
        env.source("desired/bad.yaml").filter(|s| !jbool(s, "ok"))
    })
    .expect("bad.yaml refused");
    wait_for(WAIT, || {
        env.source("desired/good.yaml").filter(|s| jbool(s, "ok"))
    })
    .expect("good.yaml in force");

    let health = ctl(port, &["health"]);
    assert!(health.ok(), "{health}");
    assert!(
        health.stdout.starts_with("Healthy:        true\n"),
        "{health}"
    );
    assert!(
        health.stdout.contains("Problems:       <none>\n"),
        "{health}"
    );
    let h = env.grpc("Health", json!({})).expect("Health");
    assert!(
        health.stdout.contains(&format!(
            "Instances:      {} total",
            jint(&h, "totalProcesses")
        )),
        "{health}\n{h}"
    );

    let with = ctl(port, &["health", "--processes"]);
    assert!(with.ok(), "{with}");
    assert!(
        row(
            with.stdout.split("\n\n").nth(1).unwrap_or_default(),
            "ns:h:test-pattern"
        )
        .is_some(),
        "{with}"
    );

    let sources = ctl(port, &["sources"]);
    assert!(sources.ok(), "{sources}");
    let line_of = |path: &str| {
        sources
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(path))
            .unwrap_or_else(|| panic!("{path} not listed: {sources}"))
    };
    let bad = line_of("desired/bad.yaml");
    assert_eq!(bad.split_whitespace().nth(2), Some("Invalid"), "{sources}");
    assert!(bad.contains("colour"), "the error is shown: {sources}");
    let cells: Vec<&str> = line_of("desired/good.yaml").split_whitespace().collect();
    assert_eq!(
        cells[..3],
        ["desired", "desired/good.yaml", "OK"],
        "{sources}"
    );
    assert!(
        sources
            .stdout
            .lines()
            .any(|l| l.starts_with("manifest ") && l.contains(PATTERN)),
        "{sources}"
    );
}

#[test]
fn the_address_comes_from_addr_or_prism_addr_and_a_refused_one_is_named() {
    let env = TestEnv::start();
    let port = env.ports.grpc_port();
    env.launch_running(PATTERN, "addr", &[]);
    let id = "ns:addr:test-pattern";

    let mut cmd = ctl_command(&["list"]);
    cmd.env("PRISM_ADDR", format!("127.0.0.1:{port}"));
    let via_env = run_ctl(cmd);
    assert!(via_env.ok(), "{via_env}");
    assert!(row(&via_env.stdout, id).is_some(), "{via_env}");

    let uri = format!("http://127.0.0.1:{port}");
    let mut cmd = ctl_command(&["list", "--addr", &uri]);
    cmd.env("PRISM_ADDR", "127.0.0.1:1");
    let flag_wins = run_ctl(cmd);
    assert!(flag_wins.ok(), "--addr wins over PRISM_ADDR: {flag_wins}");
    assert!(row(&flag_wins.stdout, id).is_some(), "{flag_wins}");

    // A port of this test's block that nothing uses (below the instances'
    // range, above the gRPC and health ports).
    let closed = env.ports.base + 5;
    assert!(port_free(closed), "port {closed} should be free");
    let refused = ctl(closed, &["list"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(refused.stdout.is_empty(), "{refused}");
    assert_eq!(refused.stderr.lines().count(), 1, "one line: {refused}");
    assert!(
        refused.stderr.contains(&format!("127.0.0.1:{closed}"))
            && refused.stderr.to_lowercase().contains("refused"),
        "{refused}"
    );

    let mut cmd = ctl_command(&["health"]);
    cmd.env("PRISM_ADDR", format!("127.0.0.1:{closed}"));
    let refused_env = run_ctl(cmd);
    assert_eq!(refused_env.code, Some(1), "{refused_env}");
    assert!(
        refused_env.stderr.contains(&format!("127.0.0.1:{closed}")),
        "{refused_env}"
    );

    let bad = run_ctl(ctl_command(&["--addr", "https://127.0.0.1:1", "list"]));
    assert_eq!(bad.code, Some(1), "{bad}");
    assert!(bad.stderr.contains("https://127.0.0.1:1"), "{bad}");
}

#[test]
fn completion_scripts_name_the_subcommands() {
    let bash = run_ctl(ctl_command(&["completion", "bash"]));
    assert!(bash.ok(), "{bash}");
    assert!(!bash.stdout.is_empty());
    for word in [
        "prism-launcher",
        "ctl",
        "launch",
        "describe",
        "watch",
        "logs",
        "--grpc-port",
    ] {
        assert!(
            bash.stdout.contains(word),
            "{word} missing from the bash script"
        );
    }
    let zsh = run_ctl(ctl_command(&["completion", "zsh"]));
    assert!(zsh.ok() && zsh.stdout.contains("terminate"), "{zsh}");
    // Completion needs no launcher.
    let mut cmd = ctl_command(&["completion", "fish"]);
    cmd.env("PRISM_ADDR", "127.0.0.1:1");
    let fish = run_ctl(cmd);
    assert!(fish.ok() && fish.stdout.contains("restart"), "{fish}");
}

#[test]
fn the_launchers_own_flags_still_run_the_launcher() {
    // `ctl` is only the first argument: the launcher's help still lists its
    // flags, and points at the client.
    let help = run_ctl({
        let mut c = std::process::Command::new(LAUNCHER_BIN);
        c.arg("--help");
        c
    });
    assert!(help.ok(), "{help}");
    assert!(help.stdout.contains("--grpc-port"), "{help}");
    assert!(help.stdout.contains("prism-launcher ctl --help"), "{help}");
    let ctl_help = run_ctl(ctl_command(&["--help"]));
    assert!(ctl_help.ok(), "{ctl_help}");
    assert!(
        ctl_help.stdout.contains("Usage: prism-launcher ctl"),
        "{ctl_help}"
    );
}
