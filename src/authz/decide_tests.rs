//! Tests of the decision: first match, identity kinds, roles, verbs,
//! namespaces, isolation NONE, and the defaults without a policy.

use super::*;
use crate::authz::policy::parse_policy;

const ALL_VERBS: [Verb; 5] = [
    Verb::Launch,
    Verb::Terminate,
    Verb::Restart,
    Verb::Signal,
    Verb::Read,
];

fn policy(text: &str) -> Mode {
    let p = parse_policy(text)
        .unwrap()
        .resolve(|_| Ok(Some(4242)), |_| Ok(Some(4343)))
        .unwrap();
    Mode::Policy {
        file: "authz.yaml".into(),
        policy: Arc::new(p),
    }
}

fn unix(uid: u32, gid: u32) -> Identity {
    Identity::Unix {
        uid,
        gid,
        pid: Some(77),
    }
}

fn cert(cn: Option<&str>, sans: &[&str]) -> Identity {
    Identity::Cert {
        cn: cn.map(Into::into),
        sans: sans.iter().map(|s| (*s).to_string()).collect(),
        addr: None,
    }
}

fn tcp() -> Identity {
    Identity::Tcp {
        addr: Some("127.0.0.1:5000".parse().unwrap()),
    }
}

fn on_id<'a>(verb: Verb, id: &'a str) -> Action<'a> {
    Action {
        verb,
        target: Target::Id(id),
    }
}

fn within<'a>(verb: Verb, namespace: &'a str, pattern: &'a str) -> Action<'a> {
    Action {
        verb,
        target: Target::Within { namespace, pattern },
    }
}

fn denied(d: Decision) -> String {
    match d {
        Err(Refusal::Denied(m)) => m,
        other => panic!("expected a denial, got {other:?}"),
    }
}

const POLICY: &str = "rules:
  - uid: 1000
    role: tenant
    namespaces: [tenant-a]
  - uid: 1000
    role: admin
  - user: viewer-user
    role: viewer
  - gid: 500
    role: viewer
    namespaces: [tenant-a, tenant-b]
  - group: tenants-b
    role: tenant
    namespaces: [tenant-b]
    patterns: [hello]
  - cert_cn: ops
    role: admin
  - cert_san: tenant-c.example
    role: tenant
    namespaces: [tenant-c]
";

#[test]
fn the_first_matching_rule_wins() {
    let m = policy(POLICY);
    // uid 1000 is a tenant (rule 1), not the admin of rule 2.
    let g = decide(&m, &unix(1000, 1), &on_id(Verb::Terminate, "ns:tenant-a:p")).unwrap();
    assert_eq!(g.role, "tenant");
    denied(decide(
        &m,
        &unix(1000, 1),
        &on_id(Verb::Terminate, "ns:x:p"),
    ));
}

#[test]
fn each_identity_kind_matches_its_rules() {
    let m = policy(POLICY);
    let role = |id: &Identity| m.grant(id, Verb::Read).map(|g| g.role);
    // `user:` resolved to 4242, `group:` to 4343.
    assert_eq!(role(&unix(4242, 1)), Ok("viewer"));
    assert_eq!(role(&unix(1, 500)), Ok("viewer"));
    assert_eq!(role(&unix(1, 4343)), Ok("tenant"));
    assert_eq!(role(&cert(Some("ops"), &[])), Ok("admin"));
    assert_eq!(role(&cert(None, &["x", "tenant-c.example"])), Ok("tenant"));
    // A SAN does not match a cert_cn rule, nor a CN a cert_san rule.
    assert!(role(&cert(Some("tenant-c.example"), &["ops"])).is_err());
    // A uid is not matched against gid rules, nor a gid against uid rules.
    assert!(role(&unix(500, 1)).is_err());
    let m = denied(m.grant(&unix(1, 1), Verb::Read));
    assert!(
        m.contains("uid 1 gid 1") && m.contains("no rule of authz.yaml"),
        "{m}"
    );
}

#[test]
fn admin_may_do_everything_anywhere() {
    let m = policy(POLICY);
    for verb in ALL_VERBS {
        for id in ["shared:p", "ns:any:p", "session:x:s:q", "not an id"] {
            let g = decide(&m, &cert(Some("ops"), &[]), &on_id(verb, id)).unwrap();
            assert_eq!(g.limits, None);
        }
    }
}

#[test]
fn a_tenant_acts_only_in_its_namespaces_and_never_on_shared_instances() {
    let m = policy(POLICY);
    let t = unix(1000, 1);
    for verb in ALL_VERBS {
        decide(&m, &t, &on_id(verb, "ns:tenant-a:p")).unwrap();
        decide(&m, &t, &on_id(verb, "session:tenant-a:s1:p")).unwrap();
        decide(&m, &t, &within(verb, "tenant-a", "")).unwrap();
        let msg = denied(decide(&m, &t, &on_id(verb, "ns:tenant-b:p")));
        assert!(
            msg.contains("uid 1000")
                && msg.contains("\"tenant-b\"")
                && msg.contains(&verb.to_string()),
            "{msg}"
        );
        let msg = denied(decide(&m, &t, &on_id(verb, "shared:p")));
        assert!(msg.contains("isolation none"), "{msg}");
        let msg = denied(decide(&m, &t, &on_id(verb, "bogus")));
        assert!(msg.contains("\"bogus\""), "{msg}");
        denied(decide(&m, &t, &within(verb, "tenant-b", "")));
    }
    let launch_none = Action {
        verb: Verb::Launch,
        target: Target::Instance {
            isolation: Isolation::None,
            namespace: "",
            pattern: "p",
        },
    };
    let msg = denied(decide(&m, &t, &launch_none));
    assert!(msg.contains("isolation none"), "{msg}");
    let launch_ns = Action {
        verb: Verb::Launch,
        target: Target::Instance {
            isolation: Isolation::Namespace,
            namespace: "tenant-a",
            pattern: "p",
        },
    };
    decide(&m, &t, &launch_ns).unwrap();
}

#[test]
fn a_tenant_limited_to_patterns_uses_only_those() {
    let m = policy(POLICY);
    let t = unix(1, 4343);
    decide(&m, &t, &on_id(Verb::Restart, "ns:tenant-b:hello")).unwrap();
    let msg = denied(decide(&m, &t, &on_id(Verb::Restart, "ns:tenant-b:other")));
    assert!(msg.contains("pattern \"other\""), "{msg}");
    denied(decide(&m, &t, &within(Verb::Launch, "tenant-b", "other")));
    let g = m.grant(&t, Verb::Read).unwrap();
    assert_eq!(
        g.usable_patterns(["a", "hello", "z"].into_iter()),
        ["hello"]
    );
}

#[test]
fn a_viewer_only_reads_within_its_namespaces_if_it_has_any() {
    let m = policy(POLICY);
    let all = unix(4242, 1);
    let some = unix(1, 500);
    for verb in ALL_VERBS.into_iter().filter(|v| v.mutates()) {
        for v in [&all, &some] {
            let msg = denied(decide(&m, v, &on_id(verb, "ns:tenant-a:p")));
            assert!(
                msg.contains("viewer") && msg.contains(&verb.to_string()),
                "{msg}"
            );
        }
    }
    let g = decide(&m, &all, &on_id(Verb::Read, "shared:p")).unwrap();
    assert_eq!(
        g.limits, None,
        "a viewer without namespaces sees everything"
    );
    decide(&m, &some, &on_id(Verb::Read, "ns:tenant-b:p")).unwrap();
    denied(decide(&m, &some, &on_id(Verb::Read, "ns:tenant-c:p")));
    denied(decide(&m, &some, &on_id(Verb::Read, "shared:p")));
}

#[test]
fn callers_without_an_identity_are_unauthenticated_under_a_policy() {
    let m = policy(POLICY);
    for id in [tcp(), Identity::Unknown] {
        for verb in ALL_VERBS {
            match m.grant(&id, verb) {
                Err(Refusal::Unauthenticated(msg)) => assert!(msg.contains("authz.yaml"), "{msg}"),
                other => panic!("{id}: {other:?}"),
            }
        }
    }
}

#[test]
fn without_a_policy_root_and_the_owner_are_admin_on_the_socket_and_tcp_is_open() {
    let m = Mode::Default { owner: 1234 };
    for id in [unix(0, 0), unix(1234, 99), tcp(), cert(Some("any"), &[])] {
        for verb in ALL_VERBS {
            let g = decide(&m, &id, &on_id(verb, "shared:p")).unwrap();
            assert_eq!((g.role, g.limits), ("admin", None), "{id}");
        }
    }
    let msg = denied(m.grant(&unix(1000, 1000), Verb::Read));
    assert!(
        msg.contains("uid 1000") && msg.contains("uid 1234"),
        "{msg}"
    );
    assert!(matches!(
        m.grant(&Identity::Unknown, Verb::Read),
        Err(Refusal::Unauthenticated(_))
    ));
}

#[test]
fn an_empty_policy_refuses_everybody() {
    let m = policy("rules: []\n");
    denied(m.grant(&unix(0, 0), Verb::Read));
    denied(m.grant(&cert(Some("ops"), &[]), Verb::Read));
}
