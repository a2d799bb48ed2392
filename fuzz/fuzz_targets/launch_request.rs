//! LaunchPattern: the request as the wire brings it (protobuf, decoded by
//! prost), then the pure checks a launch goes through, in the order of
//! `api::gate`, `api::LauncherService::launch_pattern` and
//! `controller::commands` (`launch`): the wire isolation level, the
//! caller's grant, the pattern, the key, the grace period, the spec, the
//! pattern's `config_keys`, the process_id; then the declaration.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prism_launcher::api::convert::isolation_from_wire;
use prism_launcher::authz::{Grant, InstanceRef, Target};
use prism_launcher::controller::LaunchParams;
use prism_launcher::desired::{DesiredSet, Source};
use prism_launcher::proto::LaunchRequest;
use prism_launcher::spec::Isolation;
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
    // controller::commands::launch: the same checks, the same code.
    let params = LaunchParams {
        pattern: r.pattern_name.clone(),
        isolation,
        namespace: r.namespace.clone(),
        session_id: r.session_id.clone(),
        config: r
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        grace_period_secs: r.grace_period_secs,
        actor: "fuzz".to_string(),
        grant: grant.cloned(),
    };
    let (spec, pattern) = match params.check(catalog, || "known: ...".to_string()) {
        Ok(checked) => checked,
        Err(e) => {
            let _ = format!("{e:?}");
            return;
        }
    };
    let pattern = &*pattern;
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
