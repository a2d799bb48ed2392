//! The gate and the service together, with identities put in the requests
//! as a transport would, against a controller on the fake runtime in
//! paused time: refusals (codes and messages), and what a limited caller
//! is shown by List, Health, ListSources, GetProcessStatus, Describe,
//! Watch and RestartPattern.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::Code;

use super::*;
use crate::authz::policy::parse_policy;
use crate::authz::{Authz, Mode};
use crate::controller::{Controller, ControllerConfig, Watchers};
use crate::reconcile::PlanConfig;
use crate::runtime::fake::{Behaviour, FakeRuntime};
use crate::sources::{Catalog, FileEvent};

/// Patterns of the world: name, isolation of the manifest, crash at start.
const PATTERNS: [(&str, &str, bool); 3] = [
    ("p", "namespace", false),
    ("q", "namespace", true),
    ("shared-svc", "none", false),
];

const POLICY: &str = "rules:
  - uid: 0
    role: admin
  - uid: 1000
    role: tenant
    namespaces: [tenant-a]
  - uid: 1001
    role: tenant
    namespaces: [tenant-a, tenant-c]
    patterns: [p]
  - uid: 2000
    role: viewer
";

struct World {
    gate: Gate,
    _patterns: tempfile::TempDir,
    _desired: mpsc::UnboundedSender<FileEvent>,
    _reload: mpsc::UnboundedSender<crate::sources::catalog::watcher::Reloaded>,
}

fn world(mode: Mode) -> World {
    let dir = tempfile::tempdir().unwrap();
    for (name, isolation, _) in PATTERNS {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("manifest.yaml"),
            format!(
                "name: {name}\nversion: '1'\nexecutable: /bin/true\nisolation_level: {isolation}\n\
                 healthcheck:\n  interval: 30s\n  timeout: 5s\n"
            ),
        )
        .unwrap();
    }
    let (catalog, errors) = Catalog::discover(dir.path());
    assert!(errors.is_empty(), "{errors:?}");
    let (events_tx, events) = mpsc::unbounded_channel();
    let fake = FakeRuntime::new(events_tx);
    for (name, _, crash) in PATTERNS {
        fake.state().behaviour.insert(
            name.to_string(),
            Behaviour {
                healthy_at_start: !crash,
                crash_at_start: crash,
                ..Behaviour::default()
            },
        );
    }
    let (desired, desired_rx) = mpsc::unbounded_channel();
    let (reload, reload_rx) = mpsc::unbounded_channel();
    desired.send(FileEvent::Synced).unwrap();
    let cfg = ControllerConfig {
        patterns_dir: dir.path().to_path_buf(),
        port_range: 50000..=50999,
        plan: PlanConfig::default(),
        orphan_sweep: Duration::from_secs(60),
        keep_instances_on_exit: false,
        events: crate::events::EventLog::in_memory(),
        metrics: Default::default(),
        notifier: Default::default(),
    };
    let watchers = Watchers {
        desired: desired_rx,
        patterns: reload_rx,
    };
    let (controller, handle) =
        Controller::new(cfg, catalog, Vec::new(), watchers, fake, events).unwrap();
    tokio::spawn(controller.run());
    World {
        gate: Gate::new(LauncherService::new(handle), Authz::fixed(mode)),
        _patterns: dir,
        _desired: desired,
        _reload: reload,
    }
}

fn policy(text: &str) -> Mode {
    let p = parse_policy(text)
        .unwrap()
        .resolve(|_| Ok(None), |_| Ok(None))
        .unwrap();
    Mode::Policy {
        file: "authz.yaml".into(),
        policy: std::sync::Arc::new(p),
    }
}

fn uid(uid: u32) -> Identity {
    Identity::Unix {
        uid,
        gid: uid,
        pid: Some(4242),
    }
}

fn tcp() -> Identity {
    Identity::Tcp {
        addr: Some("127.0.0.1:40000".parse().unwrap()),
    }
}

fn req<T>(msg: T, id: &Identity) -> Request<T> {
    let mut r = Request::new(msg);
    r.extensions_mut().insert(id.clone());
    r
}

fn launch_req(pattern: &str, ns: &str, isolation: proto::IsolationLevel) -> proto::LaunchRequest {
    proto::LaunchRequest {
        pattern_name: pattern.into(),
        namespace: ns.into(),
        isolation: isolation.into(),
        ..Default::default()
    }
}

use proto::IsolationLevel::{IsolationNone, Unspecified};

impl World {
    async fn launch(&self, id: &Identity, pattern: &str, ns: &str) -> Result<String, Status> {
        let r = launch_req(pattern, ns, Unspecified);
        let reply = self.gate.launch_pattern(req(r, id)).await?;
        Ok(reply.into_inner().process_id)
    }

    async fn list(&self, id: &Identity) -> Result<proto::ListPatternsResponse, Status> {
        let r = proto::ListPatternsRequest::default();
        Ok(self.gate.list_patterns(req(r, id)).await?.into_inner())
    }

    /// Instances in two tenants' namespaces and a shared one, each with
    /// a last_error of its own (the crashing pattern `q`).
    async fn populate(&self) {
        let admin = uid(0);
        self.launch(&admin, "p", "tenant-a").await.unwrap();
        self.launch(&admin, "q", "tenant-a").await.unwrap();
        self.launch(&admin, "p", "tenant-b").await.unwrap();
        self.launch(&admin, "q", "tenant-b").await.unwrap();
        self.launch(&admin, "shared-svc", "").await.unwrap();
        assert_eq!(self.list(&admin).await.unwrap().patterns.len(), 5);
    }
}

fn refused<T>(r: Result<T, Status>, code: Code) -> String {
    match r {
        Err(s) if s.code() == code => s.message().to_string(),
        Err(s) => panic!("expected {code:?}, got {s:?}"),
        Ok(_) => panic!("expected {code:?}, got an answer"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_tenant_launches_in_its_namespace_and_is_refused_elsewhere_naming_who_and_where() {
    let w = world(policy(POLICY));
    let t = uid(1000);
    assert_eq!(
        w.launch(&t, "p", "tenant-a").await.unwrap(),
        "ns:tenant-a:p"
    );
    let m = refused(w.launch(&t, "p", "tenant-b").await, Code::PermissionDenied);
    assert!(m.contains("uid 1000") && m.contains("\"tenant-b\""), "{m}");
    // Isolation NONE: asked for, or the manifest's.
    let r = launch_req("p", "tenant-a", IsolationNone);
    let m = refused(
        w.gate.launch_pattern(req(r, &t)).await,
        Code::PermissionDenied,
    );
    assert!(m.contains("isolation none"), "{m}");
    let m = refused(
        w.launch(&t, "shared-svc", "tenant-a").await,
        Code::PermissionDenied,
    );
    assert!(
        m.contains("isolation none") && m.contains("uid 1000"),
        "{m}"
    );
    // A session's default namespace is not the tenant's either.
    let r = proto::LaunchRequest {
        session_id: "s1".into(),
        ..launch_req("p", "", proto::IsolationLevel::IsolationSession)
    };
    let m = refused(
        w.gate.launch_pattern(req(r, &t)).await,
        Code::PermissionDenied,
    );
    assert!(m.contains("\"default\""), "{m}");
    // Nothing refused was declared.
    let all = w.list(&uid(0)).await.unwrap();
    let ids: Vec<&str> = all.patterns.iter().map(|p| p.process_id.as_str()).collect();
    assert_eq!(ids, ["ns:tenant-a:p"]);
    // Acting on another namespace's instance, existing or not.
    for id in ["ns:tenant-b:p", "shared:shared-svc", "nonsense"] {
        let r = proto::TerminateRequest {
            process_id: id.into(),
            ..Default::default()
        };
        let m = refused(
            w.gate.terminate_pattern(req(r, &t)).await,
            Code::PermissionDenied,
        );
        assert!(m.contains("uid 1000") && m.contains(id), "{m}");
        let r = proto::SignalRequest {
            process_id: id.into(),
            signal: "HUP".into(),
        };
        refused(
            w.gate.signal_pattern(req(r, &t)).await,
            Code::PermissionDenied,
        );
    }
}

#[tokio::test(start_paused = true)]
async fn callers_without_identity_are_unauthenticated_under_a_policy() {
    let w = world(policy(POLICY));
    for id in [tcp(), Identity::Unknown] {
        refused(w.list(&id).await, Code::Unauthenticated);
        refused(w.launch(&id, "p", "tenant-a").await, Code::Unauthenticated);
        let r = proto::HealthRequest::default();
        refused(w.gate.health(req(r, &id)).await, Code::Unauthenticated);
    }
    // A request without any identity (no transport, no address) too.
    let r = Request::new(proto::ListPatternsRequest::default());
    refused(w.gate.list_patterns(r).await, Code::Unauthenticated);
    // No rule for this uid.
    let m = refused(w.list(&uid(7)).await, Code::PermissionDenied);
    assert!(m.contains("uid 7"), "{m}");
}

#[tokio::test(start_paused = true)]
async fn without_a_policy_the_owner_and_tcp_are_admin_other_users_refused() {
    let w = world(Mode::Default { owner: 1234 });
    w.launch(&tcp(), "p", "x").await.unwrap();
    w.launch(&uid(1234), "p", "y").await.unwrap();
    w.launch(&uid(0), "shared-svc", "").await.unwrap();
    let m = refused(w.list(&uid(1000)).await, Code::PermissionDenied);
    assert!(m.contains("uid 1000"), "{m}");
    assert_eq!(w.list(&tcp()).await.unwrap().patterns.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_tenant_sees_only_its_instances_and_never_another_tenants_errors() {
    let w = world(policy(POLICY));
    w.populate().await;
    let t = uid(1000);
    let list = w.list(&t).await.unwrap();
    let ids: Vec<&str> = list
        .patterns
        .iter()
        .map(|p| p.process_id.as_str())
        .collect();
    assert_eq!(ids, ["ns:tenant-a:p", "ns:tenant-a:q"]);
    assert_eq!(list.total_count, 2, "counts only what it may see");
    let r = proto::ListPatternsRequest {
        namespace: "tenant-b".into(),
        ..Default::default()
    };
    let m = refused(
        w.gate.list_patterns(req(r, &t)).await,
        Code::PermissionDenied,
    );
    assert!(m.contains("\"tenant-b\"") && m.contains("uid 1000"), "{m}");

    let health = w
        .gate
        .health(req(
            proto::HealthRequest {
                include_processes: true,
            },
            &t,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.total_processes, 2);
    assert_eq!(health.processes.len(), 2);
    assert!(!health.isolation_distribution.contains_key("None"));

    let sources = w
        .gate
        .list_sources(req(proto::ListSourcesRequest {}, &t))
        .await
        .unwrap()
        .into_inner();
    for (path, ids) in sources.sources.iter().map(|s| (&s.path, &s.process_ids)) {
        assert!(
            ids.iter().all(|i| i.starts_with("ns:tenant-a:")),
            "{path}: {ids:?}"
        );
    }

    let r = proto::GetProcessStatusRequest {
        process_id: "ns:tenant-b:q".into(),
    };
    let m = refused(
        w.gate.get_process_status(req(r, &t)).await,
        Code::PermissionDenied,
    );
    assert!(m.contains("\"tenant-b\""), "{m}");
    let r = proto::DescribeRequest {
        process_id: "ns:tenant-b:q".into(),
    };
    refused(w.gate.describe(req(r, &t)).await, Code::PermissionDenied);
    let r = proto::GetProcessStatusRequest {
        process_id: "ns:tenant-a:q".into(),
    };
    let own = w
        .gate
        .get_process_status(req(r, &t))
        .await
        .unwrap()
        .into_inner();
    let err = own.process.unwrap().last_error;
    assert!(!err.is_empty(), "its own last_error is shown");
    let r = proto::DescribeRequest {
        process_id: "ns:tenant-a:q".into(),
    };
    let described = w.gate.describe(req(r, &t)).await.unwrap().into_inner();

    // Nothing any of it answered names the other tenant or the shared one.
    let everything = format!("{list:?}{health:?}{sources:?}{described:?}");
    assert!(!everything.contains("tenant-b"), "{everything}");
    assert!(!everything.contains("shared:"), "{everything}");
}

#[tokio::test(start_paused = true)]
async fn a_tenants_watch_carries_only_its_instances_events() {
    let w = world(policy(POLICY));
    w.populate().await;
    let t = uid(1000);
    let r = proto::WatchRequest {
        namespace: "tenant-b".into(),
        ..Default::default()
    };
    refused(w.gate.watch(req(r, &t)).await, Code::PermissionDenied);
    let r = proto::WatchRequest {
        process_id: "ns:tenant-b:p".into(),
        ..Default::default()
    };
    refused(w.gate.watch(req(r, &t)).await, Code::PermissionDenied);

    // From the state now, then from the start of the log.
    for since in [0, 1] {
        let r = proto::WatchRequest {
            since_revision: since,
            ..Default::default()
        };
        let mut stream = w.gate.watch(req(r, &t)).await.unwrap().into_inner();
        let admin = uid(0);
        w.launch(&admin, "p", &format!("tenant-b-{since}"))
            .await
            .unwrap();
        w.launch(&admin, "q", "tenant-c").await.unwrap();
        let id = w.launch(&uid(1001), "p", "tenant-c").await.unwrap();
        assert_eq!(id, "ns:tenant-c:p");
        // Its own new instance marks the end of what it could have seen.
        let r = proto::LaunchRequest {
            session_id: format!("s{since}"),
            ..launch_req("p", "tenant-a", proto::IsolationLevel::IsolationSession)
        };
        let mine = w
            .gate
            .launch_pattern(req(r, &t))
            .await
            .unwrap()
            .into_inner()
            .process_id;
        let mut seen = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(600), stream.next())
                .await
                .expect("an event")
                .expect("the stream goes on")
                .unwrap();
            seen.push(format!("{e:?}"));
            if e.process_id == mine && e.reason == "Declared" {
                assert!(e.actor.contains("uid 1000"), "{}", e.actor);
                break;
            }
        }
        let all = seen.join("\n");
        for other in ["tenant-b", "tenant-c", "shared:"] {
            assert!(!all.contains(other), "{other} in:\n{all}");
        }
        assert!(
            all.contains("ns:tenant-a:q"),
            "its own instances are there:\n{all}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn not_found_lists_only_the_patterns_a_tenant_may_use() {
    let w = world(policy(POLICY));
    let m = refused(
        w.launch(&uid(1001), "nope", "tenant-a").await,
        Code::NotFound,
    );
    assert!(m.contains("known: p") && !m.contains('q'), "{m}");
    let m = refused(w.launch(&uid(0), "nope", "tenant-a").await, Code::NotFound);
    assert!(m.contains("q") && m.contains("shared-svc"), "{m}");
    // A pattern it may not use is not found, as one that does not exist.
    let m = refused(w.launch(&uid(1001), "q", "tenant-a").await, Code::NotFound);
    assert!(
        m.contains("\"q\" not found") && m.contains("known: p)"),
        "{m}"
    );
    // A tenant without pattern limits may use every pattern.
    let m = refused(
        w.launch(&uid(1000), "nope", "tenant-a").await,
        Code::NotFound,
    );
    assert!(m.contains("known: p, q, shared-svc"), "{m}");
    // An empty pattern_name is an invalid argument, for everybody.
    for id in [uid(0), uid(1000), uid(1001)] {
        let m = refused(w.launch(&id, "", "tenant-a").await, Code::InvalidArgument);
        assert!(m.contains("pattern_name"), "{m}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_viewer_reads_but_changes_nothing() {
    let w = world(policy(POLICY));
    w.populate().await;
    let v = uid(2000);
    assert_eq!(w.list(&v).await.unwrap().patterns.len(), 5);
    let m = refused(w.launch(&v, "p", "tenant-a").await, Code::PermissionDenied);
    assert!(m.contains("viewer") && m.contains("launch"), "{m}");
    let r = proto::RestartRequest {
        pattern_name: "p".into(),
        ..Default::default()
    };
    refused(
        w.gate.restart_pattern(req(r, &v)).await,
        Code::PermissionDenied,
    );
}

#[tokio::test(start_paused = true)]
async fn a_pattern_wide_restart_by_a_tenant_restarts_only_its_instances() {
    let w = world(policy(POLICY));
    w.populate().await;
    let r = proto::RestartRequest {
        pattern_name: "p".into(),
        ..Default::default()
    };
    let reply = w
        .gate
        .restart_pattern(req(r, &uid(1000)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.process_ids, ["ns:tenant-a:p"], "{reply:?}");
}

#[tokio::test(start_paused = true)]
async fn a_merged_log_read_is_narrowed_to_the_callers_namespace_or_refused() {
    let w = world(policy(POLICY));
    let r = proto::GetLogsRequest {
        process_id: "ns:tenant-b:p".into(),
        ..Default::default()
    };
    refused(
        w.gate.get_logs(req(r, &uid(1000))).await,
        Code::PermissionDenied,
    );
    let r = proto::GetLogsRequest {
        namespace: "tenant-b".into(),
        ..Default::default()
    };
    refused(
        w.gate.get_logs(req(r, &uid(1000))).await,
        Code::PermissionDenied,
    );
    // Two namespaces and no namespace named: which one?
    let r = proto::GetLogsRequest {
        pattern_name: "p".into(),
        ..Default::default()
    };
    let m = refused(
        w.gate.get_logs(req(r, &uid(1001))).await,
        Code::PermissionDenied,
    );
    assert!(m.contains("tenant-a, tenant-c"), "{m}");

    let grant = |uid: u32| {
        policy(POLICY)
            .grant(&self::uid(uid), crate::authz::Verb::Read)
            .unwrap()
    };
    let mut r = proto::GetLogsRequest {
        pattern_name: "p".into(),
        ..Default::default()
    };
    narrow_logs(&grant(1000), &mut r).unwrap();
    assert_eq!(
        (r.namespace.as_str(), r.pattern_name.as_str()),
        ("tenant-a", "p")
    );
    let mut r = proto::GetLogsRequest {
        namespace: "tenant-c".into(),
        ..Default::default()
    };
    narrow_logs(&grant(1001), &mut r).unwrap();
    assert_eq!(
        (r.namespace.as_str(), r.pattern_name.as_str()),
        ("tenant-c", "p")
    );
    let mut r = proto::GetLogsRequest::default();
    narrow_logs(&grant(2000), &mut r).unwrap();
    assert_eq!(r, proto::GetLogsRequest::default(), "an unlimited viewer");
}

#[tokio::test(start_paused = true)]
async fn a_caller_over_its_rate_limit_is_told_when_to_retry_and_others_are_not_held() {
    let mut w = world(Mode::Default { owner: 1234 });
    let nz = |n| std::num::NonZeroU32::new(n).unwrap();
    w.gate = w
        .gate
        .rate_limit(Some(crate::authz::RateLimit::new(nz(1), nz(2))));
    let signal = |id: &Identity| {
        let r = proto::SignalRequest {
            process_id: "ns:x:p".into(),
            signal: "HUP".into(),
        };
        w.gate.signal_pattern(req(r, id))
    };
    let flooder = tcp();
    let mut answers = Vec::new();
    let st = loop {
        match signal(&flooder).await {
            Err(st) if st.code() == Code::ResourceExhausted => break st,
            other => answers.push(other.unwrap_err().code()),
        }
        assert!(answers.len() < 100, "never limited: {answers:?}");
    };
    assert!(answers.len() >= 2, "the burst passes: {answers:?}");
    assert!(answers.iter().all(|c| *c == Code::NotFound), "{answers:?}");
    assert!(st.message().contains("retry after"), "{}", st.message());
    assert_eq!(st.metadata().get("retry-after").unwrap(), "1");
    let ms: u64 = st
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1000).contains(&ms), "{ms}");
    // Reads are not limited; other callers are not held.
    w.list(&flooder).await.unwrap();
    refused(signal(&uid(0)).await, Code::NotFound);
    let other = Identity::Tcp {
        addr: Some("127.0.0.2:40000".parse().unwrap()),
    };
    refused(signal(&other).await, Code::NotFound);
}
