//! The metrics listener of the real binary (`--metrics-port`): what a
//! scrape shows after an instance was launched, killed and restarted and
//! another one failed its probes and was removed; that `promtool check
//! metrics` accepts it; `/healthz`, `/readyz`; a port in use.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use common::*;
use nix::sys::signal::Signal;

const PATTERN: &str = "test-pattern";
const SICKLY: &str = "sickly-pattern";

/// Status code, headers (lower-case names) and body of a GET.
fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let raw = http_get_with(port, path, headers)
        .unwrap_or_else(|e| panic!("GET {path} on the metrics port {port}: {e}"));
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code: {head}"));
    (code, head.to_lowercase(), body.to_string())
}

/// Every sample of an exposition, by series (`name{labels}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without value: {l}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l}: {e}"));
            (series.to_string(), value)
        })
        .collect()
}

fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let (code, _, body) = get(port, "/metrics", &[]);
    assert_eq!(code, 200, "{body}");
    let s = samples(&body);
    (body, s)
}

/// `promtool` from PATH (scripts/test.sh installs it into
/// target/test-tools/bin from the Debian package `prometheus`).
fn promtool() -> String {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "promtool is not on PATH: run the tests through scripts/test.sh, which installs it \
         (Debian package prometheus) into target/test-tools/bin"
    );
    "promtool".into()
}

/// Runs `promtool check metrics` on `body`; its status and output.
fn promtool_check(body: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn instances(s: &BTreeMap<String, f64>, pattern: &str, state: &str) -> Option<f64> {
    s.get(&format!(
        "prism_instances{{pattern=\"{pattern}\",isolation=\"namespace\",state=\"{state}\"}}"
    ))
    .copied()
}

#[test]
fn a_scrape_counts_instances_restarts_spawns_and_probe_failures_and_passes_promtool() {
    let env = TestEnv::builder()
        .with_metrics()
        .pattern(
            PatternSpec::named(SICKLY)
                .interval("200ms")
                .timeout("1s")
                .failure_threshold(2),
        )
        .start();
    let port = env.ports.metrics_port();
    assert!(
        wait_until(WAIT, || get(port, "/readyz", &[]).0 == 200),
        "/readyz never answered 200: {:?}",
        get(port, "/readyz", &[])
    );
    let (code, _, body) = get(port, "/healthz", &[]);
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    // One instance killed and restarted.
    let id = "ns:crash:test-pattern";
    let first = env.launch_running(PATTERN, "crash", &[]);
    let old_pid = jint(&first, "pid");
    signal(old_pid, Signal::SIGKILL);
    env.wait_restarted(id, old_pid);

    // Another one that fails its probes, then is removed.
    let sick = "ns:sick:sickly-pattern";
    env.launch_running(SICKLY, "sick", &[("TEST_UNHEALTHY_AFTER_MS", "300")]);
    let seen = wait_for(WAIT, || {
        let (_, s) = scrape(port);
        (s.get("prism_probe_failures_total").copied().unwrap_or(0.0) >= 1.0).then_some(s)
    })
    .unwrap_or_else(|| panic!("no probe failure counted: {}", scrape(port).0));
    assert!(
        seen.contains_key(&format!(
            "prism_instance_restarts_total{{process_id=\"{sick}\"}}"
        )),
        "{seen:?}"
    );
    env.terminate(sick, 1, true).expect("TerminatePattern");
    env.wait_unlisted(sick);

    let (body, s) = wait_for(WAIT, || {
        let (body, s) = scrape(port);
        (instances(&s, PATTERN, "running") == Some(1.0)
            && instances(&s, SICKLY, "running").is_none())
        .then_some((body, s))
    })
    .unwrap_or_else(|| {
        panic!(
            "the gauges never showed one running instance: {}",
            scrape(port).0
        )
    });
    assert_eq!(instances(&s, PATTERN, "terminated"), Some(0.0), "{body}");
    assert_eq!(instances(&s, PATTERN, "failed"), Some(0.0), "{body}");
    assert_eq!(
        s.get(&format!(
            "prism_instance_restarts_total{{process_id=\"{id}\"}}"
        )),
        Some(&1.0),
        "{body}"
    );
    assert!(
        !body.contains(sick),
        "a removed instance keeps no series: {body}"
    );
    assert!(s["prism_spawn_duration_seconds_count"] >= 3.0, "{body}");
    assert!(s["prism_reconcile_duration_seconds_count"] >= 3.0, "{body}");
    assert!(s["prism_probe_failures_total"] >= 1.0, "{body}");
    // The event log counts by reason: the kill, the restarts, the removal.
    let events = |reason: &str| {
        s.get(&format!("prism_events_total{{reason=\"{reason}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    assert!(events("Exited") >= 1.0, "{body}");
    assert!(events("Spawned") >= 3.0, "{body}");
    assert!(events("Unhealthy") >= 1.0, "{body}");
    assert_eq!(events("Terminated"), 1.0, "{body}");
    assert!(
        body.contains("# TYPE prism_probe_failures_total counter"),
        "{body}"
    );
    assert!(
        s.keys()
            .any(|k| k.starts_with("prism_build_info{version=") && s[k] == 1.0),
        "{body}"
    );

    let (ok, out) = promtool_check(&body);
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n{body}"
    );

    // Prometheus asks for OpenMetrics and gets it.
    let (code, head, open) = get(
        port,
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    );
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(open.ends_with("# EOF\n"), "{open}");
    assert!(
        open.contains("# TYPE prism_probe_failures counter"),
        "{open}"
    );

    assert_eq!(get(port, "/nothing", &[]).0, 404);
}

#[test]
fn an_explicit_metrics_port_in_use_stops_the_start_naming_the_flag() {
    let holder = TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = holder.local_addr().expect("addr").port().to_string();
    let grpc = PortBlock::allocate().grpc_port().to_string();
    let t = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(t.path().join("patterns")).expect("patterns dir");
    let dir = |d: &str| t.path().join(d).display().to_string();
    let mut child = Command::new(LAUNCHER_BIN)
        .args(["--patterns-dir", &dir("patterns")])
        .args(["--desired-dir", &dir("desired")])
        .args(["--state-dir", &dir("state")])
        .args(["--grpc-port", &grpc, "--metrics-port", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run the launcher");
    let status = wait_for(READY_TIMEOUT, || child.try_wait().expect("wait"));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the launcher kept running with its metrics port in use");
    };
    let out = child.wait_with_output().expect("output");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!status.success(), "{text}");
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("--metrics-port"),
        "the error must name the address and the flag:\n{text}"
    );
}
