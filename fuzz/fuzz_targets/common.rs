//! What several fuzz targets share: a catalog of the project's own
//! manifests, pure user and group look-ups, and grants made from a policy
//! by the crate's own parser and decision code.

#![allow(dead_code)] // each target uses part of it

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use prism_launcher::api::identity::Identity;
use prism_launcher::authz::policy::{Policy, Principal};
use prism_launcher::authz::{Grant, Mode, Verb, parse_policy};
use prism_launcher::reconcile::observed::Ports;
use prism_launcher::runtime::{discover, spawn};
use prism_launcher::sources::Catalog;
use prism_launcher::spec::manifest::{Pattern, parse_manifest};
use prism_launcher::spec::{InstanceSpec, Isolation};

/// Every isolation level.
pub const LEVELS: [Isolation; 3] = [Isolation::None, Isolation::Namespace, Isolation::Session];

/// The sample patterns the launcher ships, and one that lists its config
/// keys (made once).
pub fn catalog() -> &'static Catalog {
    static CATALOG: LazyLock<Catalog> = LazyLock::new(make_catalog);
    &CATALOG
}

fn make_catalog() -> Catalog {
    let manifests = [
        (
            "hello-pattern",
            include_str!("../../patterns/hello-pattern/manifest.yaml").to_string(),
        ),
        (
            "config-lookup",
            include_str!("../../patterns/config-lookup/manifest.yaml").to_string(),
        ),
        (
            "keyed",
            "name: keyed\nversion: '1'\nexecutable: ./keyed\nisolation_level: session\n\
             config_keys: [LOG_LEVEL, COLOUR]\n"
                .to_string(),
        ),
    ];
    Catalog::from_patterns(manifests.into_iter().map(|(dir, text)| {
        let dir = Path::new("/srv/patterns").join(dir);
        parse_manifest(&text, "manifest.yaml", &dir).expect("a shipped manifest parses")
    }))
}

/// User and group names as a policy's `resolve` looks them up, without the
/// system's database: a few known names, one whose look-up fails.
pub fn user(name: &str) -> nix::Result<Option<u32>> {
    match name {
        "root" => Ok(Some(0)),
        "alice" => Ok(Some(1000)),
        "bob" => Ok(Some(1001)),
        "broken" => Err(nix::Error::EIO),
        _ => Ok(None),
    }
}

/// See [`user`].
pub fn group(name: &str) -> nix::Result<Option<u32>> {
    match name {
        "root" => Ok(Some(0)),
        "tenants-b" => Ok(Some(2000)),
        "broken" => Err(nix::Error::EIO),
        _ => Ok(None),
    }
}

/// A caller that `p` matches.
pub fn identity_of(p: &Principal) -> Identity {
    match p {
        Principal::Uid(u) => Identity::Unix {
            uid: *u,
            gid: 4242,
            pid: Some(1),
        },
        Principal::Gid(g) => Identity::Unix {
            uid: 4242,
            gid: *g,
            pid: None,
        },
        Principal::CertCn(cn) => Identity::Cert {
            cn: Some(cn.clone()),
            sans: Vec::new(),
            addr: None,
        },
        Principal::CertSan(san) => Identity::Cert {
            cn: None,
            sans: vec!["other".into(), san.clone()],
            addr: None,
        },
    }
}

/// Callers that match no rule of most policies, and callers without an
/// identity.
pub fn strangers() -> Vec<Identity> {
    vec![
        Identity::Unix {
            uid: 0,
            gid: 0,
            pid: None,
        },
        Identity::Unix {
            uid: 1000,
            gid: 1000,
            pid: Some(7),
        },
        Identity::Cert {
            cn: Some("dashboard".into()),
            sans: vec!["spiffe://prism/dashboard".into()],
            addr: None,
        },
        Identity::Tcp { addr: None },
        Identity::Unknown,
    ]
}

/// The policy of the README's example, as `--authz` would load it.
pub fn readme_policy() -> Policy<Principal> {
    let text = "\
rules:
  - uid: 0
    role: admin
  - user: alice
    role: tenant
    namespaces: [tenant-a]
  - group: tenants-b
    role: tenant
    namespaces: [tenant-b]
    patterns: [hello-pattern]
  - cert_cn: dashboard
    role: viewer
";
    parse_policy(text)
        .expect("the README's policy parses")
        .resolve(user, group)
        .expect("its names resolve")
}

/// The launch grants of every caller of the README's policy (and of the
/// defaults), as `api::gate` takes them before a launch (made once).
pub fn launch_grants() -> &'static [Grant] {
    static GRANTS: LazyLock<Vec<Grant>> = LazyLock::new(make_launch_grants);
    &GRANTS
}

fn make_launch_grants() -> Vec<Grant> {
    let policy = readme_policy();
    let mut ids: Vec<Identity> = policy.rules.iter().map(|r| identity_of(&r.who)).collect();
    ids.extend(strangers());
    let modes = [
        Mode::Policy {
            file: "authz.yaml".into(),
            policy: Arc::new(policy),
        },
        Mode::Default { owner: 1000 },
    ];
    modes
        .iter()
        .flat_map(|m| ids.iter().filter_map(|id| m.grant(id, Verb::Launch).ok()))
        .collect()
}

/// What a start of `spec` gives its process, as the runtime computes it.
pub fn start_environment(spec: &InstanceSpec, pattern: &Pattern) {
    let id = spec.key.process_id();
    let env = spawn::environment(
        &id,
        spec,
        pattern,
        Ports {
            grpc: 50051,
            health: pattern.health.port.unwrap_or(50052),
        },
        "prism-launcher-fuzz",
    );
    let (marker_var, marker) = env.last().expect("the marker is last");
    assert_eq!(marker_var, discover::MARKER_VAR);
    let (launcher, hash) = discover::parse_marker(marker).expect("a marker parses back");
    assert_eq!(launcher, "prism-launcher-fuzz");
    assert_eq!(hash, discover::spec_hash(spec));
    // The launcher's own variables cannot be overridden by config: the
    // value the process sees (the last one) is the launcher's.
    let last: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(last.get("PROCESS_ID"), Some(&id.as_str()));
}
