//! Finding this launcher's instance processes as the kernel shows them, so
//! that a restarted launcher adopts what runs rather than what a file says.
//!
//! Every child carries `PRISM_INSTANCE=<launcher id>:<spec hash>` in its
//! environment (the launcher id is the name of its parent cgroup, derived
//! from the state directory). A process is one of our instances when it is
//! a process-group leader (each child gets a group of its own) whose
//! `/proc/<pid>/environ` holds our marker and its `PROCESS_ID`, and
//!
//! - with cgroups, it sits in that instance's cgroup under our parent;
//! - without, it runs as our user (a scan of `/proc`).
//!
//! Decides nothing about what to do with them; reads `/proc` only.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::Duration;

use super::cgroup::Cgroups;
use super::table;
use crate::reconcile::observed::Ports;
use crate::spec::{InstanceKey, InstanceSpec, Isolation};

/// The environment variable that marks a process as an instance of a
/// launcher: `<launcher id>:<spec hash, 16 hex digits>`.
pub const MARKER_VAR: &str = "PRISM_INSTANCE";

/// A config key no declaration can hold (config keys are environment
/// variable names): see [`unknown_spec`].
const UNKNOWN_CONFIG: &str = "(declaration unknown: started by an earlier launcher)";

/// A hash of what an instance runs with: its identity and config, not its
/// grace period (a stop setting). FNV-1a over an unambiguous encoding
/// (config values cannot hold NUL), so it is the same in every build.
pub fn spec_hash(spec: &InstanceSpec) -> u64 {
    let k = &spec.key;
    let mut bytes: Vec<u8> = Vec::with_capacity(128);
    for part in [
        "v1",
        k.pattern.as_str(),
        &k.isolation.to_string(),
        k.namespace.as_str(),
        k.session_id.as_str(),
    ] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    for (key, value) in spec.config.iter() {
        bytes.extend_from_slice(key.as_bytes());
        bytes.push(b'=');
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
    }
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The value of [`MARKER_VAR`] for an instance of `launcher` with `spec`.
pub fn marker(launcher: &str, spec: &InstanceSpec) -> String {
    format!("{launcher}:{:016x}", spec_hash(spec))
}

/// Splits a marker into the launcher id and the spec hash.
pub fn parse_marker(value: &str) -> Option<(&str, u64)> {
    let (launcher, hash) = value.rsplit_once(':')?;
    if launcher.is_empty() || hash.len() != 16 {
        return None;
    }
    Some((launcher, u64::from_str_radix(hash, 16).ok()?))
}

/// A spec for a process started with a declaration that cannot be
/// reconstructed: its config holds a key no declaration can hold, so the
/// planner sees a changed declaration and restarts the process gracefully
/// when the instance is still desired (or stops it when it is not). It is
/// never given to a process: a start uses the declaration's spec.
pub fn unknown_spec(key: InstanceKey, grace_period: Option<Duration>) -> InstanceSpec {
    let config = BTreeMap::from([(UNKNOWN_CONFIG.to_string(), String::new())]);
    InstanceSpec {
        key,
        config: Arc::new(config),
        grace_period,
    }
}

/// A running instance process of this launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its `PROCESS_ID`.
    pub process_id: String,
    /// Its pid (and process group).
    pub pid: u32,
    /// Its start time (clock ticks after boot).
    pub start_time: u64,
    /// The hash of the spec it was started with.
    pub spec_hash: u64,
    /// `GRPC_PORT` and `HEALTH_PORT`, when both are there and valid.
    pub ports: Option<Ports>,
    /// The identity its environment names, when valid and matching
    /// `process_id`.
    pub key: Option<InstanceKey>,
}

/// The variables of an environment that discovery reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct Vars {
    marker: Option<String>,
    process_id: Option<String>,
    grpc_port: Option<String>,
    health_port: Option<String>,
    pattern: Option<String>,
    isolation: Option<String>,
    namespace: Option<String>,
    session_id: Option<String>,
}

/// Reads our variables from a `/proc/<pid>/environ` image (NUL-separated
/// `KEY=value`; the first of a name wins, as `getenv` finds it).
fn parse_environ(raw: &[u8]) -> Vars {
    let mut v = Vars::default();
    for entry in raw.split(|b| *b == 0) {
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            continue;
        };
        let (name, value) = (&entry[..eq], &entry[eq + 1..]);
        let slot = match name {
            b"PRISM_INSTANCE" => &mut v.marker,
            b"PROCESS_ID" => &mut v.process_id,
            b"GRPC_PORT" => &mut v.grpc_port,
            b"HEALTH_PORT" => &mut v.health_port,
            b"PATTERN_NAME" => &mut v.pattern,
            b"ISOLATION" => &mut v.isolation,
            b"NAMESPACE" => &mut v.namespace,
            b"SESSION_ID" => &mut v.session_id,
            _ => continue,
        };
        if slot.is_none()
            && let Ok(s) = std::str::from_utf8(value)
        {
            *slot = Some(s.to_string());
        }
    }
    v
}

/// What the variables say of an instance of `launcher`, if they mark one.
fn found_in(vars: Vars, launcher: &str, pid: u32, start_time: u64) -> Option<Found> {
    let (owner, spec_hash) = parse_marker(vars.marker.as_deref()?)?;
    if owner != launcher {
        return None;
    }
    let process_id = vars.process_id?;
    let port = |p: &Option<String>| p.as_deref()?.parse::<u16>().ok().filter(|p| *p > 0);
    let ports = match (port(&vars.grpc_port), port(&vars.health_port)) {
        (Some(grpc), Some(health)) if grpc != health => Some(Ports { grpc, health }),
        _ => None,
    };
    let isolation = match vars.isolation.as_deref() {
        Some("none") => Some(Isolation::None),
        Some("namespace") => Some(Isolation::Namespace),
        Some("session") => Some(Isolation::Session),
        _ => None,
    };
    let key = isolation
        .and_then(|i| {
            InstanceKey::new(
                vars.pattern.as_deref()?,
                i,
                vars.namespace.as_deref().unwrap_or_default(),
                vars.session_id.as_deref().unwrap_or_default(),
            )
            .ok()
        })
        .filter(|k| k.process_id() == process_id);
    Some(Found {
        process_id,
        pid,
        start_time,
        spec_hash,
        ports,
        key,
    })
}

/// `pid` as an instance of `launcher`: a live process-group leader with
/// our marker.
fn inspect(pid: u32, launcher: &str) -> Option<Found> {
    let (pgid, start_time) = table::group_and_start(pid)?;
    if pgid != pid {
        return None;
    }
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let found = found_in(parse_environ(&raw), launcher, pid, start_time)?;
    // The pid may have been reused while it was read.
    table::is_same_process(pid, start_time).then_some(found)
}

/// Of several processes claiming one instance (a child that called
/// `setsid` carries the marker too), the one started first.
fn first(candidates: impl IntoIterator<Item = Found>) -> Option<Found> {
    candidates.into_iter().min_by_key(|f| (f.start_time, f.pid))
}

/// The instance process in `process_id`'s cgroup, if one runs there.
pub fn in_cgroup(cgroups: &Cgroups, process_id: &str, launcher: &str) -> Option<Found> {
    first(
        cgroups
            .pids(process_id)
            .into_iter()
            .filter_map(|pid| inspect(pid, launcher))
            .filter(|f| f.process_id == process_id),
    )
}

/// The instance processes of `launcher` among the processes of our user:
/// where there are no cgroups to look in.
fn in_proc(launcher: &str) -> Vec<Found> {
    // `/proc/<pid>` belongs to the process's effective uid.
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut by_id: BTreeMap<String, Vec<Found>> = BTreeMap::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if entry.metadata().map(|m| m.uid()).ok() != Some(uid) {
            continue;
        }
        if let Some(f) = inspect(pid, launcher) {
            by_id.entry(f.process_id.clone()).or_default().push(f);
        }
    }
    by_id.into_values().filter_map(first).collect()
}

/// Every running instance process of `launcher`, one per instance: from
/// each instance cgroup where cgroups are enforced, else from `/proc`.
pub fn running(cgroups: &Cgroups, launcher: &str) -> Vec<Found> {
    if cgroups.enforced() {
        cgroups
            .instances()
            .iter()
            .filter_map(|id| in_cgroup(cgroups, id, launcher))
            .collect()
    } else {
        in_proc(launcher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn spec(ns: &str, config: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec::new(
            InstanceKey::new("p", Isolation::Namespace, ns, "").unwrap(),
            config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn the_spec_hash_is_stable_and_covers_identity_and_config_only() {
        let a = spec("a", &[("LEVEL", "debug")]);
        // The same in every build and run: a restarted launcher compares it
        // (FNV-1a of "v1\0p\0namespace\0a\0\0LEVEL=debug\0").
        assert_eq!(
            spec_hash(&a),
            0x2120_1acc_1866_c3c0,
            "{:016x}",
            spec_hash(&a)
        );
        assert_ne!(spec_hash(&a), spec_hash(&spec("a", &[("LEVEL", "info")])));
        assert_ne!(spec_hash(&a), spec_hash(&spec("b", &[("LEVEL", "debug")])));
        assert_ne!(
            spec_hash(&spec("a", &[("A", "1"), ("B", "2")])),
            spec_hash(&spec("a", &[("A", "1")]))
        );
        let mut graceful = a.clone();
        graceful.grace_period = Some(Duration::from_secs(9));
        assert_eq!(spec_hash(&a), spec_hash(&graceful));
    }

    #[test]
    fn markers_round_trip_and_malformed_ones_are_refused() {
        let s = spec("a", &[]);
        let m = marker("prism-launcher-00ff", &s);
        assert_eq!(
            parse_marker(&m),
            Some(("prism-launcher-00ff", spec_hash(&s)))
        );
        assert_eq!(parse_marker("x:1"), None);
        assert_eq!(parse_marker(":0123456789abcdef"), None);
        assert_eq!(parse_marker("x:0123456789abcdeg"), None);
        assert_eq!(parse_marker("no-colon"), None);
    }

    #[test]
    fn an_environment_with_our_marker_names_its_instance_ports_and_key() {
        let raw = b"PATH=/bin\0PRISM_INSTANCE=me:00000000000000ff\0PROCESS_ID=ns:a:p\0\
GRPC_PORT=50051\0HEALTH_PORT=9090\0PATTERN_NAME=p\0ISOLATION=namespace\0NAMESPACE=a\0\
SESSION_ID=\0PROCESS_ID=ns:b:p\0";
        let f = found_in(parse_environ(raw), "me", 7, 8).unwrap();
        assert_eq!(f.process_id, "ns:a:p");
        assert_eq!(f.spec_hash, 0xff);
        assert_eq!(
            f.ports,
            Some(Ports {
                grpc: 50051,
                health: 9090
            })
        );
        assert_eq!(f.key.unwrap().process_id(), "ns:a:p");
        // Another launcher's instance, or none at all.
        assert_eq!(found_in(parse_environ(raw), "other", 7, 8), None);
        assert_eq!(found_in(parse_environ(b"PROCESS_ID=x\0"), "me", 7, 8), None);
        // Bad ports and a key that does not match are left out, not guessed.
        let raw = b"PRISM_INSTANCE=me:00000000000000ff\0PROCESS_ID=ns:a:p\0GRPC_PORT=x\0\
HEALTH_PORT=1\0PATTERN_NAME=q\0ISOLATION=namespace\0NAMESPACE=a\0";
        let f = found_in(parse_environ(raw), "me", 7, 8).unwrap();
        assert_eq!((f.ports, f.key), (None, None));
    }

    #[test]
    fn the_unknown_spec_never_agrees_with_a_declaration() {
        let s = spec("a", &[]);
        let u = unknown_spec(s.key.clone(), None);
        assert!(!u.agrees_with(&s));
        assert!(crate::spec::validate_config(&u.config).is_err());
    }

    #[test]
    fn a_process_group_leader_with_our_marker_is_found_in_proc() {
        let launcher = format!("prism-launcher-test-{}", std::process::id());
        let s = spec("scan", &[]);
        let spawn = |own_group: bool| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("600")
                .env(MARKER_VAR, marker(&launcher, &s))
                .env("PROCESS_ID", "ns:scan:p")
                .env("GRPC_PORT", "40001")
                .env("HEALTH_PORT", "40002");
            if own_group {
                cmd.process_group(0);
            }
            let mut child = cmd.spawn().unwrap();
            // `spawn` returns once the child has let go of our memory,
            // which is before the kernel has set up the new program's
            // environment: until then `/proc/<pid>/environ` reads empty.
            let environ = format!("/proc/{}/environ", child.id());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let has_marker = || {
                let raw = std::fs::read(&environ).unwrap_or_default();
                raw.windows(MARKER_VAR.len())
                    .any(|w| w == MARKER_VAR.as_bytes())
            };
            while !has_marker() {
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{environ} stays without the marker");
                }
                std::thread::yield_now();
            }
            child
        };
        let mut leader = spawn(true);
        // Not a group leader: a process the instance forked, not the instance.
        let mut member = spawn(false);
        let found: Vec<Found> = in_proc(&launcher);
        let _ = leader.kill();
        let _ = member.kill();
        let _ = leader.wait();
        let _ = member.wait();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, leader.id());
        assert_eq!(found[0].spec_hash, spec_hash(&s));
        assert_eq!(
            found[0].ports,
            Some(Ports {
                grpc: 40001,
                health: 40002
            })
        );
        assert!(in_proc("prism-launcher-nobody").is_empty());
    }
}
