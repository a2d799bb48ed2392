//! LaunchPattern: the request as the wire brings it (protobuf, decoded by
//! prost), then the pure checks a launch goes through, in the order of
//! `api::gate`, `api::LauncherService::launch_pattern` and
//! `controller::commands` (`launch`): the wire isolation level, the
//! caller's grant, the pattern, the key, the grace period, the spec, the
//! pattern's `config_keys`, the process_id; then the declaration.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use prism_launcher::api::convert::isolation_from_wire;
use prism_launcher::authz::{Grant, InstanceRef, Target};
use prism_launcher::desired::{DesiredSet, Source};
use prism_launcher::proto::LaunchRequest;
use prism_launcher::spec::{InstanceKey, InstanceSpec, Isolation, grace_from_secs};
use prost::Message;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = LaunchRequest::decode(data) else {
        return;
    };
    let catalog = common::catalog();
    let mut set = DesiredSet::default();
    launch(&request, None, catalog, &mut set);
    for grant in common::launch_grants() {
        launch(&request, Some(grant), catalog, &mut set);
    }
});

/// One launch by a caller with `grant` (`None`: no authorization).
fn launch(
    r: &LaunchRequest,
    grant: Option<&Grant>,
    catalog: &prism_launcher::sources::Catalog,
    set: &mut DesiredSet,
) {
    // api::gate: the wire level, then what the call names.
    let isolation = match isolation_from_wire(r.isolation) {
        Ok(i) => i,
        Err(status) => {
            let _ = status.message().to_string();
            return;
        }
    };
    if let Some(g) = grant {
        let within = g.check(&Target::Within {
            namespace: &r.namespace,
            pattern: "",
        });
        let shared = match isolation {
            Some(Isolation::None) => g.check(&Target::Instance {
                isolation: Isolation::None,
                namespace: "",
                pattern: &r.pattern_name,
            }),
            _ => Ok(()),
        };
        if let Err(e) = within.and(shared) {
            let _ = e.to_string();
            return;
        }
    }
    // controller::commands::launch.
    if r.pattern_name.is_empty() {
        return;
    }
    let config: BTreeMap<String, String> = r
        .config
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let usable = |name: &str| grant.is_none_or(|g| g.may_use_pattern(name));
    let Some(pattern) = catalog
        .get(&r.pattern_name)
        .filter(|_| usable(&r.pattern_name))
    else {
        let names = catalog.iter().map(|p| p.name.as_str());
        let _ = match grant {
            Some(g) => g.known_patterns(names),
            None => names.collect::<Vec<_>>().join(", "),
        };
        return;
    };
    let level = isolation.unwrap_or(pattern.isolation);
    let Ok(key) = InstanceKey::new(&r.pattern_name, level, &r.namespace, &r.session_id)
        .map_err(|e| e.to_string())
    else {
        return;
    };
    if let Some(g) = grant {
        let target = Target::Instance {
            isolation: key.isolation,
            namespace: &key.namespace,
            pattern: &key.pattern,
        };
        if let Err(e) = g.check(&target) {
            let _ = e.to_string();
            return;
        }
    }
    let Ok(grace) = grace_from_secs(r.grace_period_secs).map_err(|e| e.to_string()) else {
        return;
    };
    let Ok(spec) = InstanceSpec::new(key, config, grace).map_err(|e| e.to_string()) else {
        return;
    };
    if let Err(e) = pattern.check_config(&spec.config) {
        let _ = e.to_string();
        return;
    }
    let id = spec.key.process_id();
    // A process_id names its instance back: authorization by id (terminate,
    // restart, signal, logs) relies on it.
    let named = InstanceRef::parse(&id).expect("a process_id parses back");
    assert_eq!(named.isolation, spec.key.isolation, "{id}");
    assert_eq!(named.namespace, spec.key.namespace, "{id}");
    assert_eq!(named.pattern, spec.key.pattern, "{id}");
    if let Some(g) = grant {
        assert!(
            g.check(&Target::Id(&id)).is_ok(),
            "{id}: launched, not reachable"
        );
    }
    common::start_environment(&spec, pattern);
    let _ = set.declare(Source::Api, spec).map_err(|e| e.to_string());
}
