//! What a limited caller (a tenant, a viewer with namespaces or patterns)
//! may see and touch: [`Limits`], and the instance a `process_id` names
//! ([`InstanceRef`]). Pure: the filters of List, Health, ListSources, Watch
//! and GetLogs ask it about instances, events and sources.

use std::collections::BTreeSet;
use std::fmt;

use crate::controller::snapshot::{InstanceStatus, Snapshot, SourceKind};
use crate::events::{NewEvent, Reason};
use crate::spec::Isolation;

/// The instances a caller is limited to. `None` in a field: no limit on
/// it. Namespaces, when limited, never include an instance of isolation
/// NONE (it has no namespace).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// The namespaces it may see and act in.
    pub namespaces: Option<BTreeSet<String>>,
    /// The patterns whose instances it may see and act on.
    pub patterns: Option<BTreeSet<String>>,
}

/// What a limited caller is told of the launcher's own problems.
pub const HIDDEN_PROBLEMS: &str =
    "the launcher cannot do all of its work (an admin's Health call says why)";

/// What a limited caller is told of why a desired file is refused.
pub const HIDDEN_SOURCE_ERROR: &str =
    "its current content is refused, the last good one stays (an admin's ListSources says why)";

impl Limits {
    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.namespaces.is_none() && self.patterns.is_none()
    }

    /// Whether `namespace` is one of its namespaces (always, when they are
    /// not limited).
    pub fn admits_namespace(&self, namespace: &str) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|set| !namespace.is_empty() && set.contains(namespace))
    }

    /// Whether the pattern is one it may use.
    pub fn admits_pattern(&self, pattern: &str) -> bool {
        self.patterns
            .as_ref()
            .is_none_or(|set| set.contains(pattern))
    }

    /// Whether an instance of `pattern` in `namespace` under `isolation` is
    /// within the limits. With limited namespaces an instance of isolation
    /// NONE (shared by everybody) never is.
    pub fn admits(&self, isolation: Isolation, namespace: &str, pattern: &str) -> bool {
        let shared_ok = self.namespaces.is_none() || isolation != Isolation::None;
        shared_ok && self.admits_namespace(namespace) && self.admits_pattern(pattern)
    }

    /// [`Limits::admits`] for an instance as the API reports it.
    pub fn admits_instance(&self, s: &InstanceStatus) -> bool {
        self.admits(s.isolation, &s.namespace, &s.pattern)
    }

    /// [`Limits::admits`] for an instance named by its `process_id`; an id
    /// that names no instance is never admitted.
    pub fn admits_id(&self, process_id: &str) -> bool {
        InstanceRef::parse(process_id)
            .is_some_and(|r| self.admits(r.isolation, &r.namespace, &r.pattern))
    }

    /// Whether an event may reach a limited subscriber: events of its
    /// instances, the launcher's start, and the pattern events of its
    /// patterns. Source events (desired files, manifests) and the events
    /// of other instances never do: their messages may quote what others
    /// wrote.
    pub fn admits_event(&self, e: &NewEvent) -> bool {
        if !e.process_id.is_empty() {
            // Only NONE instances have no namespace; `admits_namespace`
            // refuses the empty one when namespaces are limited.
            return self.admits_namespace(&e.namespace) && self.admits_pattern(&e.pattern);
        }
        match e.reason {
            Reason::LauncherStarted => true,
            Reason::PatternAdded | Reason::PatternChanged | Reason::PatternRemoved => {
                self.admits_pattern(&e.pattern)
            }
            _ => false,
        }
    }

    /// The part of `snap` within the limits: its instances; the manifests
    /// of its patterns; the desired files whose every instance (at least
    /// one) is its own. The launcher's own problems are said to exist, not
    /// what they are (their text may name any instance).
    pub fn restrict(&self, snap: &Snapshot) -> Snapshot {
        let sources = snap
            .sources
            .iter()
            .filter(|s| match s.kind {
                SourceKind::Manifest => !s.pattern.is_empty() && self.admits_pattern(&s.pattern),
                SourceKind::Desired => {
                    !s.process_ids.is_empty() && s.process_ids.iter().all(|id| self.admits_id(id))
                }
            })
            .map(|s| {
                let mut s = s.clone();
                // The refused content of a desired file may be about others.
                if s.kind == SourceKind::Desired
                    && let Some(e) = &mut s.error
                {
                    e.line = None;
                    e.message = HIDDEN_SOURCE_ERROR.to_string();
                }
                s
            })
            .collect();
        Snapshot {
            seq: snap.seq,
            problems: std::sync::Arc::new(if snap.problems.is_empty() {
                Vec::new()
            } else {
                vec![HIDDEN_PROBLEMS.to_string()]
            }),
            instances: snap
                .instances
                .iter()
                .filter(|(_, s)| self.admits_instance(s))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            sources: std::sync::Arc::new(sources),
            synced: snap.synced,
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        match (&self.namespaces, &self.patterns) {
            (None, None) => write!(f, "everything"),
            (Some(n), None) => write!(f, "namespaces [{}]", join(n)),
            (None, Some(p)) => write!(f, "patterns [{}]", join(p)),
            (Some(n), Some(p)) => write!(f, "namespaces [{}], patterns [{}]", join(n), join(p)),
        }
    }
}

/// What a `process_id` says of its instance (SPEC §4): `shared:<pattern>`,
/// `ns:<namespace>:<pattern>`, `session:<namespace>:<session>:<pattern>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRef {
    /// Its isolation level.
    pub isolation: Isolation,
    /// Its namespace (empty for NONE).
    pub namespace: String,
    /// Its pattern.
    pub pattern: String,
}

impl InstanceRef {
    /// The instance `process_id` names; `None` when it is no process_id
    /// (names never contain `:`, so the split is unambiguous).
    pub fn parse(process_id: &str) -> Option<InstanceRef> {
        let parts: Vec<&str> = process_id.split(':').collect();
        let (isolation, namespace, pattern) = match parts.as_slice() {
            ["shared", p] => (Isolation::None, "", *p),
            ["ns", n, p] => (Isolation::Namespace, *n, *p),
            ["session", n, s, p] if !s.is_empty() => (Isolation::Session, *n, *p),
            _ => return None,
        };
        let named = isolation == Isolation::None || !namespace.is_empty();
        (named && !pattern.is_empty()).then(|| InstanceRef {
            isolation,
            namespace: namespace.to_string(),
            pattern: pattern.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::snapshot::SourceStatus;
    use std::sync::Arc;

    fn set(v: &[&str]) -> Option<BTreeSet<String>> {
        Some(v.iter().map(|s| (*s).to_string()).collect())
    }

    fn tenant(ns: &[&str]) -> Limits {
        Limits {
            namespaces: set(ns),
            patterns: None,
        }
    }

    #[test]
    fn process_ids_name_their_instance() {
        let r = InstanceRef::parse("ns:tenant-a:hello").unwrap();
        assert_eq!(
            (r.isolation, r.namespace.as_str(), r.pattern.as_str()),
            (Isolation::Namespace, "tenant-a", "hello")
        );
        let r = InstanceRef::parse("session:a:s1:hello").unwrap();
        assert_eq!(
            (r.isolation, r.namespace.as_str()),
            (Isolation::Session, "a")
        );
        let r = InstanceRef::parse("shared:hello").unwrap();
        assert_eq!((r.isolation, r.namespace.as_str()), (Isolation::None, ""));
        for bad in [
            "",
            "hello",
            "ns:a",
            "ns::p",
            "ns:a:",
            "session:a::p",
            "x:a:p",
            "ns:a:b:c",
        ] {
            assert_eq!(InstanceRef::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn limited_namespaces_never_admit_shared_instances() {
        let t = tenant(&["a"]);
        assert!(t.admits(Isolation::Namespace, "a", "p"));
        assert!(t.admits(Isolation::Session, "a", "p"));
        assert!(!t.admits(Isolation::Namespace, "b", "p"));
        assert!(!t.admits(Isolation::None, "", "p"));
        assert!(!t.admits_id("shared:p"));
        assert!(!t.admits_id("garbage"));
        assert!(t.admits_id("session:a:s:p"));
        // Only patterns limited: shared instances of those are visible.
        let v = Limits {
            namespaces: None,
            patterns: set(&["p"]),
        };
        assert!(v.admits_id("shared:p"));
        assert!(!v.admits_id("shared:q"));
        assert!(v.admits_id("ns:any:p"));
    }

    fn event(reason: Reason, id: &str, ns: &str, pattern: &str) -> NewEvent {
        NewEvent {
            process_id: id.into(),
            namespace: ns.into(),
            pattern: pattern.into(),
            ..NewEvent::general(reason, "m".into())
        }
    }

    #[test]
    fn events_of_others_and_of_sources_are_not_admitted() {
        let t = Limits {
            namespaces: set(&["a"]),
            patterns: set(&["p"]),
        };
        assert!(t.admits_event(&event(Reason::Exited, "ns:a:p", "a", "p")));
        assert!(!t.admits_event(&event(Reason::Exited, "ns:b:p", "b", "p")));
        assert!(!t.admits_event(&event(Reason::Exited, "ns:a:q", "a", "q")));
        assert!(!t.admits_event(&event(Reason::Exited, "shared:p", "", "p")));
        assert!(t.admits_event(&event(Reason::LauncherStarted, "", "", "")));
        assert!(t.admits_event(&event(Reason::PatternChanged, "", "", "p")));
        assert!(!t.admits_event(&event(Reason::PatternChanged, "", "", "q")));
        assert!(!t.admits_event(&event(Reason::SourceInvalid, "", "", "")));
    }

    fn status(id: &str) -> Arc<InstanceStatus> {
        let r = InstanceRef::parse(id).unwrap();
        Arc::new(InstanceStatus {
            process_id: id.into(),
            pattern: r.pattern,
            isolation: r.isolation,
            namespace: r.namespace,
            session_id: String::new(),
            phase: crate::reconcile::Phase::Running,
            pid: Some(1),
            grpc_port: 1,
            health_port: 2,
            started_at: None,
            healthy: true,
            last_error: format!("secret of {id}"),
            error_count: 0,
            restart_count: 0,
            failed_starts: 0,
            source: "api".into(),
            limits: String::new(),
        })
    }

    fn source(kind: SourceKind, path: &str, ids: &[&str], pattern: &str) -> SourceStatus {
        SourceStatus {
            kind,
            path: path.into(),
            error: None,
            process_ids: ids.iter().map(|s| (*s).to_string()).collect(),
            pattern: pattern.into(),
        }
    }

    #[test]
    fn a_restricted_snapshot_keeps_only_what_is_within() {
        let ids = ["ns:a:p", "ns:b:p", "shared:p", "session:a:s:q"];
        let snap = Snapshot {
            seq: 7,
            problems: Arc::new(vec!["cannot open ns:b:p.log".into(), "y".into()]),
            instances: ids.iter().map(|i| ((*i).to_string(), status(i))).collect(),
            sources: Arc::new(vec![
                SourceStatus {
                    error: Some(crate::spec::yaml::YamlError {
                        file: "desired/a.yaml".into(),
                        line: Some(3),
                        message: "invalid namespace \"b!\"".into(),
                    }),
                    ..source(SourceKind::Desired, "desired/a.yaml", &["ns:a:p"], "")
                },
                source(
                    SourceKind::Desired,
                    "desired/ab.yaml",
                    &["ns:a:p", "ns:b:p"],
                    "",
                ),
                source(SourceKind::Desired, "desired/bad.yaml", &[], ""),
                source(SourceKind::Manifest, "patterns/p/manifest.yaml", &[], "p"),
            ]),
            synced: true,
        };
        let r = tenant(&["a"]).restrict(&snap);
        assert_eq!(r.seq, 7);
        assert_eq!(
            *r.problems,
            [HIDDEN_PROBLEMS],
            "said to exist, not what they are"
        );
        let kept: Vec<&str> = r.instances.keys().map(String::as_str).collect();
        assert_eq!(kept, ["ns:a:p", "session:a:s:q"]);
        let paths: Vec<&str> = r.sources.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["desired/a.yaml", "patterns/p/manifest.yaml"]);
        let e = r.sources[0].error.as_ref().unwrap();
        assert_eq!((e.line, e.message.as_str()), (None, HIDDEN_SOURCE_ERROR));
        let only_q = Limits {
            namespaces: set(&["a"]),
            patterns: set(&["q"]),
        }
        .restrict(&snap);
        let paths: Vec<&str> = only_q.sources.iter().map(|s| s.path.as_str()).collect();
        assert!(paths.is_empty(), "{paths:?}");
    }
}
