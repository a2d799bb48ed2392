//! The API's transports against the real launcher, as a user reaches them
//! with grpcurl: the Unix socket (its mode, its group, the caller's
//! credentials, a stale or live socket at start-up, its removal on exit),
//! TLS and mTLS on TCP (certificates made with `openssl`, the kit's `Pki`),
//! the refusal of plain TCP beyond loopback, the streams per connection and
//! the call deadline. Who made a call shows in the `actor` of the `Declared` event
//! its LaunchPattern leaves on the event stream.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prism_testkit::grpc::Target;
use prism_testkit::grpc::watch::{Watch, summary};
use serde_json::{Value, json};

const PATTERN: &str = "test-pattern";

/// grpcurl retries a refused TLS handshake until its connect timeout (10 s
/// by default): a call that must fail gives up after this many seconds.
const FAIL_FAST: &str = "-connect-timeout";

fn launch_body(namespace: &str) -> String {
    json!({
        "pattern_name": PATTERN,
        "isolation": "ISOLATION_NAMESPACE",
        "namespace": namespace,
    })
    .to_string()
}

fn method(name: &str) -> String {
    format!("{SERVICE}/{name}")
}

/// A Watch of `process_id`, opened before its launch, on `target`.
fn watch_of(target: &Target, process_id: &str) -> Watch {
    let mut w = Watch::open_on(
        target,
        proto::WatchRequest {
            process_id: process_id.into(),
            ..Default::default()
        },
    )
    .expect("Watch");
    w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    w
}

/// The actor of the next `Declared` event on `w`.
fn declared_actor(w: &mut Watch) -> String {
    let events = w.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Declared"));
    let declared = events
        .iter()
        .find(|e| e.reason == "Declared")
        .unwrap_or_else(|| panic!("no Declared event: {:?}", summary(&events)));
    declared.actor.clone()
}

/// Runs the launcher binary with `args` (a start-up that must fail) and
/// returns its output; it is killed (by pid) if it does not exit.
fn launcher_fails(dir: &Path, args: &[&str]) -> Output {
    for d in ["patterns", "desired", "state"] {
        std::fs::create_dir_all(dir.join(d)).expect("dir");
    }
    let child = Command::new(LAUNCHER_BIN)
        .arg("--patterns-dir")
        .arg(dir.join("patterns"))
        .arg("--desired-dir")
        .arg(dir.join("desired"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--grpc-port", "0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .process_group(0)
        .spawn()
        .expect("spawn the launcher");
    let pid = child.id() as i32;
    let exited = wait_until(WAIT, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    });
    if !exited {
        try_signal(i64::from(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let out = child.wait_with_output().expect("wait for the launcher");
    assert!(exited, "the launcher did not exit: {}", output_text(&out));
    assert!(
        !out.status.success(),
        "the launcher started: {}",
        output_text(&out)
    );
    out
}

/// The launcher's fatal error: what follows anyhow's "Caused by:", which
/// must be one line.
fn fatal_error(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err
        .lines()
        .skip_while(|l| l.trim() != "Caused by:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one line of error expected: {}",
        output_text(o)
    );
    lines[0].trim().to_string()
}

#[test]
fn the_unix_socket_serves_grpcurl_with_mode_0660_and_its_group_and_names_the_caller_by_uid() {
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--socket-group", "nogroup"])
        .start();
    let sock = env.socket_path();
    let meta = std::fs::symlink_metadata(&sock).expect("the socket exists");
    assert_eq!(meta.mode() & 0o7777, 0o660, "mode {:o}", meta.mode());
    assert_eq!(meta.gid(), 65534, "the group named by --socket-group");
    let sock_s = sock.display().to_string();

    // Reflection (v1 or v1alpha, whichever grpcurl asks) and health.
    let (out, _) = Grpcurl::new().run(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        &sock_s,
        "list",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        listed.contains(SERVICE) && listed.contains("grpc.health.v1.Health"),
        "{listed}"
    );
    let (out, _) = Grpcurl::new().run(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        &sock_s,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SERVING"),
        "{}",
        output_text(&out)
    );

    // A launch over the socket is named by the caller's credentials.
    let target = Target::Unix(sock.clone());
    let mut w = watch_of(&target, "ns:sock:test-pattern");
    let body = launch_body("sock");
    let (out, pid) = Grpcurl::new().run(&[
        "-plaintext",
        "-unix",
        "-authority",
        "localhost",
        "-d",
        &body,
        &sock_s,
        &method("LaunchPattern"),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    let reply: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    assert_eq!(
        declared_actor(&mut w),
        format!("uid {uid} gid {gid} pid {pid}")
    );

    // The TCP port serves the same API beside it; its callers are named by
    // their address.
    let port = env.ports.grpc_port().to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut w = watch_of(&target, "ns:tcp:test-pattern");
    let body = launch_body("tcp");
    let (out, _) =
        Grpcurl::new().run(&["-plaintext", "-d", &body, &addr, &method("LaunchPattern")]);
    assert!(out.status.success(), "{}", output_text(&out));
    let actor = declared_actor(&mut w);
    assert!(actor.starts_with("api 127.0.0.1:"), "{actor}");
}

#[test]
fn an_unprivileged_caller_in_the_sockets_group_is_named_by_its_uid_and_one_outside_it_is_refused() {
    // Without --authz only root and the launcher's user may call on the
    // socket: a policy lets nobody in (tests/authz_socket.rs tests both).
    let policy = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(
        policy.path(),
        "rules:\n  - uid: 0\n    role: admin\n  - uid: 65534\n    role: tenant\n    namespaces: [nobody]\n",
    )
    .expect("policy");
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--socket-group", "65534"])
        .args(&["--authz", &policy.path().display().to_string()])
        .start();
    let sock_s = env.socket_path().display().to_string();
    let run_as = |gid: u32, args: &[&str]| env.grpcurl_as(65534, gid).run(args);

    let mut w = watch_of(&Target::Unix(env.socket_path()), "ns:nobody:test-pattern");
    let body = launch_body("nobody");
    // setpriv execs grpcurl: the pid stays the same.
    let (out, pid) = run_as(
        65534,
        &[
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            "-d",
            &body,
            &sock_s,
            &method("LaunchPattern"),
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        declared_actor(&mut w),
        format!("uid 65534 gid 65534 pid {pid}")
    );

    // Outside the socket's group (and not its owner): mode 0660 keeps it out.
    let (out, _) = run_as(
        65533,
        &[
            "-plaintext",
            "-unix",
            "-authority",
            "localhost",
            &sock_s,
            &method("Health"),
        ],
    );
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn a_live_socket_is_refused_a_stale_one_replaced_and_the_socket_removed_on_exit() {
    let mut env = TestEnv::builder().unix_socket().start();
    let sock = env.socket_path();
    let sock_s = sock.display().to_string();

    // A second launcher on the same socket: refused, the first untouched.
    let out = launcher_fails(&env.path("second"), &["--unix-socket", &sock_s]);
    let err = fatal_error(&out);
    assert!(
        err.contains(&sock_s) && err.contains("another process is serving on it"),
        "{}",
        output_text(&out)
    );
    env.grpc("Health", json!({}))
        .expect("the first launcher still serves on its socket");

    // Removed on exit...
    env.launcher().stop();
    assert!(
        !sock.exists(),
        "the socket is removed when the launcher stops"
    );

    // ...and a stale one (its launcher died without removing it) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("a stale socket"));
    assert!(sock.exists());
    env.launcher().restart();
    env.grpc("Health", json!({}))
        .expect("served on the replaced socket");
    assert!(
        env.read_log().contains("replacing the stale socket"),
        "{}",
        env.log_tail(30)
    );
}

#[test]
fn tls_serves_grpcurl_with_cacert_and_beyond_loopback_without_insecure_listen() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::standard(root.path().to_path_buf());
    let env = TestEnv::builder()
        .unix_socket()
        .args(&[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
        ])
        .args(&["--listen", "0.0.0.0"])
        .start();
    let addr = format!("127.0.0.1:{}", env.ports.grpc_port());
    let (out, _) = Grpcurl::new().run(&["-cacert", &pki.path("ca.pem"), &addr, "list"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(SERVICE),
        "{}",
        output_text(&out)
    );
    let (out, _) = Grpcurl::new().run(&[
        "-cacert",
        &pki.path("ca.pem"),
        "-d",
        "{}",
        &addr,
        &method("Health"),
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    // Plain text is not served on the port any more.
    let (out, _) = Grpcurl::new().run(&[
        "-plaintext",
        FAIL_FAST,
        "3",
        "-d",
        "{}",
        &addr,
        &method("Health"),
    ]);
    assert!(!out.status.success(), "{}", output_text(&out));
    let log = env.read_log();
    assert!(
        log.contains("without --tls-client-ca: clients are not authenticated"),
        "{log}"
    );
    assert!(!log.contains("--insecure-listen"), "{log}");
}

#[test]
fn mtls_takes_a_client_certificate_of_its_ca_only_and_names_the_caller_by_cn() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::standard(root.path().to_path_buf());
    let env = TestEnv::builder()
        .unix_socket()
        .args(&[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
        ])
        .args(&["--tls-client-ca", &pki.path("ca.pem")])
        .start();
    let addr = format!("127.0.0.1:{}", env.ports.grpc_port());
    let ca = pki.path("ca.pem");

    let mut w = watch_of(&Target::Unix(env.socket_path()), "ns:mtls:test-pattern");
    let body = launch_body("mtls");
    let alice = [
        "-cacert",
        &ca,
        "-cert",
        &pki.path("alice.pem"),
        "-key",
        &pki.path("alice.key"),
    ];
    let (out, _) =
        Grpcurl::new().run(&[&alice[..], &["-d", &body, &addr, &method("LaunchPattern")]].concat());
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(declared_actor(&mut w), "cert CN=alice");

    // No client certificate, or one of another CA: no call at all.
    let (out, _) = Grpcurl::new().run(&[
        FAIL_FAST,
        "3",
        "-cacert",
        &ca,
        "-d",
        "{}",
        &addr,
        &method("Health"),
    ]);
    assert!(
        !out.status.success(),
        "without a client certificate: {}",
        output_text(&out)
    );
    let mallory = [
        "-cacert",
        &ca,
        "-cert",
        &pki.path("mallory.pem"),
        "-key",
        &pki.path("mallory.key"),
    ];
    let (out, _) = Grpcurl::new().run(
        &[
            &mallory[..],
            &[FAIL_FAST, "3", "-d", "{}", &addr, &method("Health")],
        ]
        .concat(),
    );
    assert!(
        !out.status.success(),
        "with a certificate of another CA: {}",
        output_text(&out)
    );
    let logged = wait_until(WAIT, || {
        env.read_log().contains("TLS handshake with 127.0.0.1:")
    });
    assert!(
        logged,
        "the refused handshake is logged: {}",
        env.log_tail(30)
    );
    // The launcher is unharmed and alice still gets in.
    let (out, _) =
        Grpcurl::new().run(&[&alice[..], &["-d", "{}", &addr, &method("Health")]].concat());
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn certificate_errors_at_start_up_are_one_line_naming_the_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::standard(root.path().join("pki"));
    let missing = pki.path("missing.pem");
    let garbage = pki.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--tls-cert", &missing, "--tls-key", &key],
            &["--tls-cert", &missing],
        ),
        (
            &["--tls-cert", &garbage, "--tls-key", &key],
            &["--tls-cert", &garbage],
        ),
        // The key of another certificate.
        (
            &["--tls-cert", &cert, "--tls-key", &pki.path("alice.key")],
            &["--tls-cert", &cert, "--tls-key", "alice.key"],
        ),
        (
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &garbage,
            ],
            &["--tls-client-ca", &garbage],
        ),
    ];
    for (i, (args, named)) in cases.iter().enumerate() {
        let out = launcher_fails(&root.path().join(format!("l{i}")), args);
        let err = fatal_error(&out);
        for n in *named {
            assert!(
                err.contains(n),
                "{args:?}: {err:?} does not name {n}\n{}",
                output_text(&out)
            );
        }
    }
}

#[test]
fn plain_tcp_beyond_loopback_is_refused_unless_insecure_listen_which_warns() {
    let root = tempfile::tempdir().expect("tempdir");
    let out = launcher_fails(root.path(), &["--listen", "0.0.0.0"]);
    let err = fatal_error(&out);
    assert!(
        err.contains("refusing to serve the API without TLS on 0.0.0.0"),
        "{}",
        output_text(&out)
    );
    assert!(err.contains("--insecure-listen"), "{err}");

    let env = TestEnv::builder()
        .args(&["--listen", "0.0.0.0", "--insecure-listen"])
        .start();
    env.grpc("Health", json!({})).expect("served");
    let log = env.read_log();
    assert!(
        log.contains("WARN")
            && log.contains("--insecure-listen: serving the API without TLS on 0.0.0.0"),
        "{log}"
    );
}

#[test]
fn a_connection_carries_32_calls_at_once_and_the_next_waits_for_a_free_stream() {
    let env = TestEnv::builder().unix_socket().start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let channel = {
        let _in = rt.enter();
        prism_testkit::grpc::lazy_channel(&Target::Unix(env.socket_path()))
    };
    let mut client = proto::pattern_launcher_client::PatternLauncherClient::new(channel);
    let mut open = rt.block_on(async {
        let mut open = Vec::new();
        for _ in 0..32 {
            let s = client
                .watch(proto::WatchRequest::default())
                .await
                .expect("Watch")
                .into_inner();
            open.push(s);
        }
        open
    });
    // The 33rd on the same connection waits...
    let mut c = client.clone();
    let mut next = rt.spawn(async move { c.watch(proto::WatchRequest::default()).await });
    let waited = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(2), &mut next)
            .await
            .is_err()
    });
    assert!(waited, "a 33rd stream was opened while 32 were open");
    // ...until one ends.
    open.pop();
    let t0 = Instant::now();
    let got = rt.block_on(async { tokio::time::timeout(WAIT, next).await });
    let got = got.expect("the 33rd stream opens once one is free");
    got.expect("join").expect("Watch");
    assert!(t0.elapsed() < WAIT);
}

#[test]
fn a_call_is_cut_at_the_call_timeout_but_a_watch_runs_past_it() {
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--call-timeout", "2s", "--startup-timeout", "60s"])
        .start();
    let target = Target::Unix(env.socket_path());
    let mut w = watch_of(&target, "ns:late:test-pattern");
    // A launch that waits for a health check that never passes.
    let t0 = Instant::now();
    let e = env
        .launch_ns(PATTERN, "never", &[("TEST_NO_HEALTH", "1")])
        .expect_err("cut by the call timeout");
    let took = t0.elapsed();
    assert_eq!(e.code, "Canceled", "{e}");
    assert!(e.message.contains("Timeout expired"), "{e}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "{took:?}"
    );
    let log = env.read_log();
    assert!(
        log.contains("--call-timeout 2s is shorter than a restart may take"),
        "{log}"
    );
    // The watch opened before has outlived the timeout: it still delivers.
    env.launch_running(PATTERN, "late", &[]);
    assert!(!declared_actor(&mut w).is_empty());
}
