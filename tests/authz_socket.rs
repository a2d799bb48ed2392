//! Authorization where the transport vouches for the caller, against the
//! real launcher: the Unix socket (peer credentials; root, and an
//! unprivileged user through `setpriv`) and mTLS (the client certificate),
//! called with grpcurl as a user types it. A tenant acts and sees only
//! within its namespaces, never another tenant's output (an admin does);
//! the policy follows its file; the rate limit is per uid; `ctl` reaches
//! the launcher on the socket and over mTLS. The defaults without `--authz`
//! are here too, as the README's table states them.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use prism_testkit::grpc::watch::{Watch, summary};
use prism_testkit::grpc::{Target, lazy_channel};
use serde_json::{Value, json};
use tonic::transport::Channel;

const PATTERN: &str = "test-pattern";
/// nobody: the unprivileged user, and the socket's group.
const NOBODY: u32 = 65534;
/// A uid no rule names, in the socket's group.
const STRANGER: u32 = 4242;

/// Two tenants on the socket: root in tenant-a, nobody in tenant-b; a
/// member of nobody's group is admin (the first matching rule wins, so
/// nobody itself is a tenant).
const TWO_TENANTS: &str = "rules:
  - uid: 0
    role: tenant
    namespaces: [tenant-a]
  - uid: 65534
    role: tenant
    namespaces: [tenant-b]
  - gid: 65534
    role: admin
";

fn id_in(namespace: &str) -> String {
    format!("ns:{namespace}:{PATTERN}")
}

/// The `--authz` file, in a directory of its own.
struct Policy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Policy {
    fn new(text: &str) -> Policy {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("authz.yaml");
        write_atomic(&path, text);
        Policy { _dir: dir, path }
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }

    /// Replaces the file as an editor saving it does.
    fn write(&self, text: &str) {
        write_atomic(&self.path, text);
    }
}

/// A launcher on a Unix socket of group nobody, with `policy`.
fn socket_env(policy: &Policy, extra: &[&str]) -> TestEnv {
    TestEnv::builder()
        .unix_socket()
        .args(&["--socket-group", "65534", "--authz", &policy.arg()])
        .args(extra)
        .start()
}

/// A caller on the launcher's socket, through grpcurl.
struct Caller {
    grpcurl: Grpcurl,
    sock: String,
}

impl Caller {
    /// The test's own user: root.
    fn root(env: &TestEnv) -> Caller {
        Caller {
            grpcurl: Grpcurl::new(),
            sock: env.socket_path().display().to_string(),
        }
    }

    /// `uid`:`gid`, through setpriv.
    fn user(env: &TestEnv, uid: u32, gid: u32) -> Caller {
        Caller {
            grpcurl: env.grpcurl_as(uid, gid),
            sock: env.socket_path().display().to_string(),
        }
    }

    fn call(&self, method: &str, request: Value) -> Result<Value, GrpcError> {
        self.grpcurl.call(&UNIX_FLAGS, &self.sock, method, &request)
    }

    fn stream(&self, method: &str, request: Value) -> (Vec<Value>, Result<(), GrpcError>) {
        self.grpcurl
            .stream(&UNIX_FLAGS, &self.sock, method, &request)
    }

    fn launch_with(&self, namespace: &str, config: Value) -> Result<Value, GrpcError> {
        self.call(
            "LaunchPattern",
            json!({
                "pattern_name": PATTERN,
                "isolation": "ISOLATION_NAMESPACE",
                "namespace": namespace,
                "config": config,
            }),
        )
    }

    fn launch(&self, namespace: &str) -> Result<Value, GrpcError> {
        self.launch_with(namespace, json!({}))
    }

    /// ListPatterns with `request`: the process ids and `totalCount`.
    fn list(&self, request: Value) -> Result<(Vec<String>, i64), GrpcError> {
        let reply = self.call("ListPatterns", request)?;
        let ids = reply["patterns"]
            .as_array()
            .map(|a| a.iter().map(|p| jstr(p, "processId")).collect())
            .unwrap_or_default();
        Ok((ids, jint(&reply, "totalCount")))
    }
}

/// A launch that must start a healthy instance `ns:<namespace>:test-pattern`.
fn launched(caller: &Caller, namespace: &str) {
    let reply = caller
        .launch(namespace)
        .unwrap_or_else(|e| panic!("LaunchPattern in {namespace}: {e}"));
    assert_eq!(jstr(&reply, "processId"), id_in(namespace), "{reply}");
    assert_eq!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
}

/// A refusal that names the caller and what it may not touch.
fn assert_denied<T: std::fmt::Debug>(result: Result<T, GrpcError>, who: &str, what: &str) {
    let e = result.expect_err("refused");
    assert_eq!(e.code, "PermissionDenied", "{e}");
    assert!(
        e.message.contains(who) && e.message.contains(what),
        "the refusal names {who:?} and {what:?}: {e}"
    );
}

#[test]
fn without_a_policy_root_is_admin_on_the_socket_another_uid_is_refused_and_loopback_tcp_may_all() {
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--socket-group", "65534"])
        .start();
    let root = Caller::root(&env);
    for ns in ["tenant-a", "tenant-b"] {
        launched(&root, ns);
    }
    // A member of the socket's group reaches it, and is refused.
    let nobody = Caller::user(&env, NOBODY, NOBODY);
    for (method, request) in [
        ("Health", json!({})),
        ("ListPatterns", json!({})),
        (
            "LaunchPattern",
            json!({"pattern_name": PATTERN, "namespace": "tenant-b"}),
        ),
    ] {
        assert_denied(
            nobody.call(method, request),
            "uid 65534 gid 65534",
            "without --authz only root and uid 0 (the launcher's user) may call it on the Unix socket",
        );
    }
    // Loopback TCP: everything, as before authorization.
    let listed = grpcurl_call(env.ports.grpc_port(), "ListPatterns", &json!({}))
        .expect("ListPatterns over loopback TCP");
    assert_eq!(jint(&listed, "totalCount"), 2, "{listed}");
    grpcurl_call(
        env.ports.grpc_port(),
        "TerminatePattern",
        &json!({"process_id": id_in("tenant-b")}),
    )
    .expect("TerminatePattern over loopback TCP");
}

#[test]
fn over_the_socket_root_and_an_unprivileged_user_each_act_only_in_their_namespace_and_see_only_their_instances()
 {
    let policy = Policy::new(TWO_TENANTS);
    let env = socket_env(&policy, &[]);
    let root = Caller::root(&env);
    let nobody = Caller::user(&env, NOBODY, NOBODY);
    let admin = Caller::user(&env, STRANGER, NOBODY);
    let tenants = [
        (&root, "tenant-a", "tenant-b", "uid 0 gid 0"),
        (&nobody, "tenant-b", "tenant-a", "uid 65534 gid 65534"),
    ];

    for (caller, own, other, who) in tenants {
        launched(caller, own);
        assert_denied(caller.launch(other), who, &format!("namespace {other:?}"));
    }

    let (everything, total) = admin.list(json!({})).expect("the admin lists");
    assert_eq!(total, 2, "{everything:?}");
    for (caller, own, other, who) in tenants {
        assert!(
            everything.contains(&id_in(other)),
            "the other tenant's instance exists: {everything:?}"
        );
        let (mine, total) = caller.list(json!({})).expect("ListPatterns");
        assert_eq!(mine, vec![id_in(own)], "{who} sees only its own instance");
        assert_eq!(total, 1, "{who}: total_count counts only its own");
        let (mine, _) = caller
            .list(json!({"namespace": own}))
            .expect("ListPatterns in its namespace");
        assert_eq!(mine, vec![id_in(own)]);
        assert_denied(
            caller.list(json!({"namespace": other})),
            who,
            &format!("namespace {other:?}"),
        );
        assert_denied(
            caller.call("GetProcessStatus", json!({"process_id": id_in(other)})),
            who,
            &id_in(other),
        );
        assert_denied(
            caller.call("TerminatePattern", json!({"process_id": id_in(other)})),
            who,
            &id_in(other),
        );
    }
    let (after, _) = admin.list(json!({})).expect("the admin lists");
    assert_eq!(after, everything, "the refused calls changed nothing");
}

#[test]
fn mtls_a_policy_gives_alice_her_namespace_and_refuses_a_certificate_it_does_not_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::standard(root.path().join("pki"));
    pki.leaf("bob", "ca", "bob", prism_testkit::pki::CLIENT_EXT);
    let policy =
        Policy::new("rules:\n  - cert_cn: alice\n    role: tenant\n    namespaces: [tenant-a]\n");
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--tls-cert", &pki.path("server.pem")])
        .args(&["--tls-key", &pki.path("server.key")])
        .args(&["--tls-client-ca", &pki.path("ca.pem")])
        .args(&["--authz", &policy.arg()])
        .start();
    let addr = format!("127.0.0.1:{}", env.ports.grpc_port());
    let grpcurl = Grpcurl::new();
    let with = |client: Option<&str>| {
        let mut flags = pki.grpcurl_flags("ca", client);
        // A refused handshake is retried until the connect timeout.
        flags.extend(["-connect-timeout".to_string(), "5".to_string()]);
        flags
    };
    let call = |client: Option<&str>, method: &str, request: Value| {
        let flags = with(client);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        grpcurl.call(&flags, &addr, method, &request)
    };
    let launch = |client: Option<&str>, namespace: &str| {
        call(
            client,
            "LaunchPattern",
            json!({"pattern_name": PATTERN, "isolation": "ISOLATION_NAMESPACE", "namespace": namespace}),
        )
    };

    let reply = launch(Some("alice"), "tenant-a").expect("alice launches in tenant-a");
    assert_eq!(jstr(&reply, "state"), "STATE_RUNNING", "{reply}");
    assert_denied(
        launch(Some("alice"), "tenant-b"),
        "cert CN=alice",
        "namespace \"tenant-b\"",
    );
    let listed = call(Some("alice"), "ListPatterns", json!({})).expect("alice lists");
    assert_eq!(jint(&listed, "totalCount"), 1, "{listed}");

    // Without a client certificate: no call at all.
    let e = launch(None, "tenant-a").expect_err("no client certificate");
    assert!(
        e.code.starts_with("grpcurl-failed"),
        "the handshake fails, no answer: {e}"
    );
    // A certificate of the CA that no rule names: refused, named.
    assert_denied(
        call(Some("bob"), "Health", json!({})),
        "cert CN=bob",
        "no rule of",
    );
    assert_denied(launch(Some("bob"), "tenant-a"), "cert CN=bob", "no rule of");
    let listed = call(Some("alice"), "ListPatterns", json!({})).expect("alice lists");
    assert_eq!(jint(&listed, "totalCount"), 1, "nothing more: {listed}");
}

/// A tonic client on the launcher's socket, as the test's user (root).
struct Client {
    rt: tokio::runtime::Runtime,
    client: PatternLauncherClient<Channel>,
}

impl Client {
    fn on_socket(env: &TestEnv) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let channel = {
            let _in = rt.enter();
            lazy_channel(&Target::Unix(env.socket_path()))
        };
        Client {
            rt,
            client: PatternLauncherClient::new(channel),
        }
    }

    fn signal(&mut self, process_id: &str) -> Result<(), tonic::Status> {
        let r = proto::SignalRequest {
            process_id: process_id.into(),
            signal: "HUP".into(),
        };
        self.rt.block_on(self.client.signal_pattern(r)).map(drop)
    }
}

/// Events up to (and with) the first of `process_id`.
fn events_until(w: &mut Watch, process_id: &str) -> Vec<proto::WatchEvent> {
    w.read_until(WAIT, |s| s.iter().any(|e| e.process_id == process_id))
}

#[test]
fn a_tenant_never_sees_another_tenants_output_in_any_reply_while_an_admin_does() {
    // Root is the tenant here (the kit's tonic client is root); nobody is
    // the admin.
    let policy = Policy::new(
        "rules:\n  - uid: 0\n    role: tenant\n    namespaces: [tenant-a]\n  - uid: 65534\n    role: admin\n",
    );
    let env = socket_env(&policy, &[]);
    let secret = format!("tenant-b private words {}", env.token);
    let (own, theirs) = (id_in("tenant-a"), id_in("tenant-b"));
    let tenant = Caller::root(&env);
    let admin = Caller::user(&env, NOBODY, NOBODY);

    // The tenant watches from before anything happens.
    let mut live = Watch::open_on(
        &Target::Unix(env.socket_path()),
        proto::WatchRequest::default(),
    )
    .expect("the tenant watches");
    live.read_until(WAIT, |s| s.iter().any(|e| e.reason == "Bookmark"));
    launched(&tenant, "tenant-a");

    // tenant-b's instance says its last words and crashes, again and again.
    admin
        .launch_with(
            "tenant-b",
            json!({"TEST_EXIT_AFTER_MS": "1500", "TEST_LAST_WORDS": secret}),
        )
        .expect("the admin launches in tenant-b");
    let mut last_error = String::new();
    let seen = wait_until(WAIT, || {
        let status = admin
            .call("GetProcessStatus", json!({"process_id": theirs}))
            .expect("the admin reads its status");
        last_error = jstr(&status["process"], "lastError");
        last_error.contains(&secret)
    });
    assert!(
        seen,
        "the admin sees the last words in last_error: {last_error:?}\n{}",
        env.log_tail(30)
    );

    // What the tenant is shown, and whether it may name the other
    // instance (a refusal names what the tenant asked for).
    let mut replies: Vec<(String, String, bool)> = Vec::new();
    let who = "uid 0 gid 0";
    for (method, request) in [
        ("GetProcessStatus", json!({"process_id": theirs})),
        ("Describe", json!({"process_id": theirs})),
    ] {
        let refused = tenant.call(method, request);
        replies.push((method.into(), format!("{refused:?}"), true));
        assert_denied(refused, who, &theirs);
    }
    for request in [
        json!({"process_id": theirs}),
        json!({"namespace": "tenant-b"}),
    ] {
        let (lines, end) = tenant.stream("GetLogs", request);
        assert!(lines.is_empty(), "{lines:?}");
        replies.push(("GetLogs".into(), format!("{end:?}"), true));
        assert_denied(end, who, "tenant-b");
    }
    let mut keep = |what: &str, text: String| replies.push((what.to_string(), text, false));
    let listed = tenant
        .call("ListPatterns", json!({}))
        .expect("ListPatterns");
    assert_eq!(jint(&listed, "totalCount"), 1, "{listed}");
    keep("ListPatterns", listed.to_string());
    let health = tenant
        .call("Health", json!({"include_processes": true}))
        .expect("Health");
    assert_eq!(
        health["processes"].as_array().map(Vec::len),
        Some(1),
        "{health}"
    );
    keep("Health", health.to_string());
    keep(
        "ListSources",
        tenant
            .call("ListSources", json!({}))
            .expect("ListSources")
            .to_string(),
    );
    keep(
        "Describe (its own)",
        tenant
            .call("Describe", json!({"process_id": own}))
            .expect("Describe its own")
            .to_string(),
    );
    // The pattern's logs merged: narrowed to its namespace, its own lines.
    let (lines, end) = tenant.stream(
        "GetLogs",
        json!({"pattern_name": PATTERN, "tail_lines": -1}),
    );
    end.expect("GetLogs of everything it may see");
    assert!(
        !lines.is_empty() && lines.iter().all(|l| jstr(l, "processId") == own),
        "{lines:?}"
    );
    keep("GetLogs", format!("{lines:?}"));

    // Events: up to a launch of its own made now, live and replayed from
    // the start.
    let marker = format!("session:tenant-a:marker:{PATTERN}");
    tenant
        .call(
            "LaunchPattern",
            json!({"pattern_name": PATTERN, "isolation": "ISOLATION_SESSION", "namespace": "tenant-a", "session_id": "marker"}),
        )
        .expect("a launch of its own");
    let events = events_until(&mut live, &marker);
    assert!(
        events.iter().any(|e| e.process_id == own),
        "{:?}",
        summary(&events)
    );
    keep("Watch", format!("{events:?}"));
    let mut replay = Watch::open_on(
        &Target::Unix(env.socket_path()),
        proto::WatchRequest {
            since_revision: 1,
            ..Default::default()
        },
    )
    .expect("the tenant replays");
    let events = events_until(&mut replay, &marker);
    keep("Watch (replayed)", format!("{events:?}"));

    for (what, text, may_name_it) in &replies {
        assert!(
            !text.contains(&secret) && (*may_name_it || !text.contains(&theirs)),
            "{what} shows the tenant another tenant's instance or output: {text}"
        );
    }
}

#[test]
fn an_edited_policy_is_followed_and_an_invalid_edit_leaves_the_last_good_one_in_force() {
    let policy = Policy::new(
        "rules:\n  - uid: 0\n    role: admin\n  - uid: 65534\n    role: tenant\n    namespaces: [tenant-b]\n",
    );
    let env = socket_env(&policy, &[]);
    let nobody = Caller::user(&env, NOBODY, NOBODY);
    let who = "uid 65534 gid 65534";
    nobody
        .list(json!({"namespace": "tenant-b"}))
        .expect("tenant-b is its own");
    assert_denied(
        nobody.list(json!({"namespace": "tenant-a"})),
        who,
        "namespace \"tenant-a\"",
    );

    policy.write(
        "rules:\n  - uid: 0\n    role: admin\n  - uid: 65534\n    role: tenant\n    namespaces: [tenant-a]\n",
    );
    let moved = wait_until(WAIT, || {
        nobody.list(json!({"namespace": "tenant-a"})).is_ok()
    });
    assert!(moved, "the edit is never followed:\n{}", env.log_tail(30));
    assert_denied(
        nobody.list(json!({"namespace": "tenant-b"})),
        who,
        "namespace \"tenant-b\"",
    );
    launched(&nobody, "tenant-a");

    // A typo that would move it back: refused, logged, the last good policy stays.
    policy.write(
        "rules:\n  - uid: 0\n    role: admin\n  - uid: 65534\n    role: tennant\n    namespaces: [tenant-b]\n",
    );
    let file = policy.arg();
    let logged = wait_until(WAIT, || {
        env.read_log().lines().any(|l| {
            l.contains("WARN")
                && l.contains(&file)
                && l.contains("tennant")
                && l.contains("the last good policy stays in force")
        })
    });
    assert!(logged, "no warning of the bad edit:\n{}", env.log_tail(30));
    let (mine, _) = nobody
        .list(json!({"namespace": "tenant-a"}))
        .expect("tenant-a is still its own");
    assert_eq!(mine, vec![id_in("tenant-a")]);
    assert_denied(nobody.launch("tenant-b"), who, "namespace \"tenant-b\"");
}

#[test]
fn over_its_rate_limit_a_uid_is_told_when_to_retry_while_another_uid_is_not_refused() {
    let policy = Policy::new(TWO_TENANTS);
    let env = socket_env(&policy, &["--rate-limit", "5", "--rate-burst", "5"]);
    // Root floods SignalPattern in its namespace (nothing there: NOT_FOUND).
    let mut flooder = Client::on_socket(&env);
    let mut answers = Vec::new();
    let limited = loop {
        match flooder.signal(&id_in("tenant-a")) {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            other => answers.push(other.err().map(|s| s.code())),
        }
        assert!(answers.len() < 500, "never limited: {answers:?}");
    };
    assert!(
        answers.len() >= 5 && answers.iter().all(|a| *a == Some(tonic::Code::NotFound)),
        "the burst passes first: {answers:?}"
    );
    assert!(
        limited.message().contains("uid 0 gid 0") && limited.message().contains("retry after"),
        "{}",
        limited.message()
    );
    let ms = retry_after_ms(&limited);
    assert!((1..=200).contains(&ms), "a token every 200 ms: {ms}");

    // Root goes on flooding while nobody makes its burst of calls.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, refused) = (stop.clone(), refused.clone());
        let id = id_in("tenant-a");
        std::thread::spawn(move || {
            let until = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                if let Err(s) = flooder.signal(&id)
                    && s.code() == tonic::Code::ResourceExhausted
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Once the flood is refused again, nobody's calls go through.
    assert!(wait_until(WAIT, || refused.load(Ordering::Relaxed) > 0));
    let nobody = Caller::user(&env, NOBODY, NOBODY);
    let before = refused.load(Ordering::Relaxed);
    let mut codes = Vec::new();
    for _ in 0..5 {
        let e = nobody
            .call(
                "SignalPattern",
                json!({"process_id": id_in("tenant-b"), "signal": "HUP"}),
            )
            .expect_err("nothing to signal");
        codes.push(e.code);
    }
    let during = refused.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    flood.join().expect("the flooder");
    assert!(
        codes.iter().all(|c| c == "NotFound"),
        "nobody is not limited by root's flood: {codes:?}"
    );
    assert!(
        during > 0,
        "root was refused while nobody's calls went through"
    );
    let log = env.read_log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("uid 65534 gid 65534 pid")
            && l.contains("SignalPattern")
            && l.ends_with(": NotFound")),
        "nobody's calls are audited with its uid:\n{}",
        tail(&log, 30)
    );
}

/// The process ids of a `ctl list` table.
fn listed_ids(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn ctl_reaches_the_launcher_on_the_socket_as_a_tenant_and_over_mtls_as_alice() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = Pki::standard(root.path().join("pki"));
    let policy = Policy::new(
        "rules:
  - uid: 0
    role: tenant
    namespaces: [tenant-a]
  - cert_cn: alice
    role: tenant
    namespaces: [tenant-b]
",
    );
    let env = TestEnv::builder()
        .unix_socket()
        .args(&["--tls-cert", &pki.path("server.pem")])
        .args(&["--tls-key", &pki.path("server.key")])
        .args(&["--tls-client-ca", &pki.path("ca.pem")])
        .args(&["--authz", &policy.arg()])
        .start();
    let sock = env.socket_path().display().to_string();
    let on_socket = |args: &[&str]| {
        let mut full = vec!["--unix-socket", sock.as_str()];
        full.extend_from_slice(args);
        run_ctl(ctl_command(&full))
    };

    // Root on the socket: tenant-a's tenant.
    let launched = on_socket(&["launch", PATTERN, "-n", "tenant-a"]);
    assert!(launched.ok(), "{launched}");
    let refused = on_socket(&["launch", PATTERN, "-n", "tenant-b"]);
    assert_eq!(refused.code, Some(1), "{refused}");
    assert!(
        refused
            .stderr
            .starts_with("Error from server (PermissionDenied): uid 0 gid 0")
            && refused.stderr.contains("namespace \"tenant-b\""),
        "{refused}"
    );

    // alice over mTLS: tenant-b's tenant. The certificate names 127.0.0.1
    // and localhost: either is checked.
    let addr = format!("127.0.0.1:{}", env.ports.grpc_port());
    let alice = |args: &[&str]| {
        let mut full = vec![
            "--addr".to_string(),
            addr.clone(),
            "--tls-ca".into(),
            pki.path("ca.pem"),
            "--tls-cert".into(),
            pki.path("alice.pem"),
            "--tls-key".into(),
            pki.path("alice.key"),
        ];
        full.extend(args.iter().map(|a| a.to_string()));
        let full: Vec<&str> = full.iter().map(String::as_str).collect();
        run_ctl(ctl_command(&full))
    };
    let launched = alice(&["launch", PATTERN, "-n", "tenant-b"]);
    assert!(launched.ok(), "{launched}");
    let listed = alice(&["list", "--tls-server-name", "localhost"]);
    assert!(listed.ok(), "{listed}");
    assert_eq!(
        listed_ids(&listed.stdout),
        vec![id_in("tenant-b")],
        "{listed}"
    );

    // Each sees only its own.
    let listed = on_socket(&["list"]);
    assert!(listed.ok(), "{listed}");
    assert_eq!(
        listed_ids(&listed.stdout),
        vec![id_in("tenant-a")],
        "{listed}"
    );

    // TLS without a client certificate: the handshake fails, named.
    let anonymous = run_ctl(ctl_command(&[
        "--addr",
        &addr,
        "--tls-ca",
        &pki.path("ca.pem"),
        "list",
    ]));
    // (TLS 1.3: the client's handshake completes, then the launcher
    // refuses it and closes the connection.)
    assert_eq!(anonymous.code, Some(1), "{anonymous}");
    assert!(anonymous.stdout.is_empty(), "{anonymous}");
    assert!(
        anonymous
            .stderr
            .starts_with("error: the connection to the launcher failed before it answered")
            && anonymous.stderr.contains("--tls-cert"),
        "{anonymous}"
    );
    // The socket excludes TLS: a usage error.
    let usage = on_socket(&["--tls-ca", &pki.path("ca.pem"), "list"]);
    assert_eq!(usage.code, Some(2), "{usage}");
}
