//! `--authz FILE`: the policy parser, its name resolution (with look-ups
//! that need no user database), and the decisions of `authz::decide` for
//! the callers each rule names and for callers it does not.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prism_launcher::authz::policy::Role;
use prism_launcher::authz::{Action, Limits, Mode, Target, Verb, decide, parse_policy};
use prism_launcher::spec::Isolation;

#[path = "common.rs"]
mod common;

/// A verb that changes something and one that only reads: the decision
/// tells them apart only so.
const VERBS: [Verb; 2] = [Verb::Launch, Verb::Read];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match parse_policy(text) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.clone().in_file("authz.yaml").to_string();
            let _ = e.to_string();
            return;
        }
    };
    let policy = match policy.resolve(common::user, common::group) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    // Names a rule's limits list, and names no rule lists.
    let mut namespaces = vec!["tenant-a".to_string(), "default".to_string(), String::new()];
    let mut patterns = vec!["hello-pattern".to_string(), "config-lookup".to_string()];
    let mut callers = common::strangers();
    for r in &policy.rules {
        let _ = (r.who.to_string(), r.role.name());
    }
    // A few rules' callers and names: enough to reach every branch, few
    // enough to keep each input fast.
    for r in policy.rules.iter().take(4) {
        callers.push(common::identity_of(&r.who));
        if let Role::Tenant(l) | Role::Viewer(l) = &r.role {
            let Limits {
                namespaces: ns,
                patterns: ps,
            } = l;
            namespaces.extend(ns.iter().flatten().take(1).cloned());
            patterns.extend(ps.iter().flatten().take(1).cloned());
        }
    }
    namespaces.truncate(5);
    patterns.truncate(4);
    let mode = Mode::Policy {
        file: "authz.yaml".into(),
        policy: Arc::new(policy.clone()),
    };
    let ids: Vec<String> = namespaces
        .iter()
        .zip(patterns.iter().cycle())
        .flat_map(|(ns, p)| [format!("ns:{ns}:{p}"), format!("session:{ns}:u:{p}")])
        .collect();
    for id in &callers {
        for verb in VERBS {
            let mut targets = vec![
                Target::Within {
                    namespace: "",
                    pattern: "",
                },
                Target::Id("garbage"),
                Target::Id("shared:config-lookup"),
            ];
            targets.extend(ids.iter().map(|i| Target::Id(i)));
            for ns in &namespaces {
                for p in &patterns {
                    targets.push(Target::Within {
                        namespace: ns,
                        pattern: p,
                    });
                    for isolation in common::LEVELS {
                        targets.push(Target::Instance {
                            isolation,
                            namespace: ns,
                            pattern: p,
                        });
                    }
                }
            }
            for target in targets {
                match decide(&mode, id, &Action { verb, target }) {
                    Ok(grant) => {
                        // A viewer never changes anything.
                        assert!(!(verb.mutates() && grant.role == "viewer"), "{grant:?}");
                        // Under limits on namespaces, nobody touches a
                        // shared instance.
                        if let (Some(l), Target::Instance { isolation, .. }) =
                            (&grant.limits, target)
                        {
                            assert!(
                                l.namespaces.is_none() || isolation != Isolation::None,
                                "{grant:?} {target:?}"
                            );
                        }
                        let _ = grant.known_patterns(patterns.iter().map(String::as_str));
                    }
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
});
