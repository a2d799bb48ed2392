//! The encoding of the metrics: recorded values, the families computed
//! from a snapshot, their bounds, and the Prometheus text rewrite.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::controller::snapshot::InstanceStatus;
use crate::spec::Isolation;

fn status(
    id: &str,
    pattern: &str,
    isolation: Isolation,
    phase: Phase,
    restarts: u32,
) -> InstanceStatus {
    InstanceStatus {
        process_id: id.to_string(),
        pattern: pattern.to_string(),
        isolation,
        namespace: String::new(),
        session_id: String::new(),
        phase,
        pid: None,
        grpc_port: 0,
        health_port: 0,
        started_at: None,
        healthy: false,
        last_error: String::new(),
        error_count: 0,
        restart_count: restarts,
        failed_starts: 0,
        source: String::new(),
        limits: String::new(),
    }
}

fn snapshot(instances: Vec<InstanceStatus>) -> Snapshot {
    Snapshot {
        instances: instances
            .into_iter()
            .map(|s| (s.process_id.clone(), Arc::new(s)))
            .collect(),
        synced: true,
        ..Snapshot::default()
    }
}

/// Every sample of an exposition, by series (`name{labels}`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line has a value");
            let value = value.parse().unwrap_or_else(|e| panic!("{l}: {e}"));
            (series.to_string(), value)
        })
        .collect()
}

fn encode(m: &Metrics, snap: &Snapshot) -> (String, BTreeMap<String, f64>) {
    let text = m.encode(snap).expect("encode");
    let s = samples(&text);
    (text, s)
}

#[test]
fn a_fresh_registry_has_build_info_zeroed_counters_and_ends_with_eof() {
    let (text, s) = encode(&Metrics::new(), &Snapshot::default());
    assert!(text.ends_with("# EOF\n"), "{text}");
    let build = format!(
        "prism_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(s.get(&build), Some(&1.0), "{text}");
    assert_eq!(s.get("prism_probe_failures_total"), Some(&0.0), "{text}");
    assert_eq!(
        s.get("prism_reconcile_duration_seconds_count"),
        Some(&0.0),
        "{text}"
    );
    assert_eq!(
        s.get("prism_spawn_duration_seconds_count"),
        Some(&0.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE prism_reconcile_duration_seconds histogram"),
        "{text}"
    );
}

#[test]
fn recorded_durations_probe_failures_and_events_are_counted() {
    let m = Metrics::new();
    m.observe_reconcile(Duration::from_micros(300));
    drop(m.reconcile_timer());
    assert_eq!(m.time_spawn(|| 7), 7);
    m.observe_spawn(Duration::from_millis(30));
    m.probe_failed();
    m.probe_failed();
    m.event("spawned");
    m.event("spawned");
    m.event("crashed");
    let (text, s) = encode(&m, &Snapshot::default());
    assert_eq!(s["prism_reconcile_duration_seconds_count"], 2.0, "{text}");
    assert_eq!(
        s["prism_reconcile_duration_seconds_bucket{le=\"0.00025\"}"], 1.0,
        "{text}"
    );
    assert_eq!(
        s["prism_reconcile_duration_seconds_bucket{le=\"0.0005\"}"], 2.0,
        "{text}"
    );
    assert_eq!(s["prism_spawn_duration_seconds_count"], 2.0, "{text}");
    assert_eq!(
        s["prism_spawn_duration_seconds_bucket{le=\"0.025\"}"], 1.0,
        "{text}"
    );
    assert_eq!(
        s["prism_spawn_duration_seconds_bucket{le=\"+Inf\"}"], 2.0,
        "{text}"
    );
    assert!(s["prism_spawn_duration_seconds_sum"] >= 0.03, "{text}");
    assert_eq!(s["prism_probe_failures_total"], 2.0, "{text}");
    assert_eq!(s["prism_events_total{reason=\"spawned\"}"], 2.0, "{text}");
    assert_eq!(s["prism_events_total{reason=\"crashed\"}"], 1.0, "{text}");
    // Clones share the registry.
    m.clone().probe_failed();
    assert_eq!(
        encode(&m, &Snapshot::default()).1["prism_probe_failures_total"],
        3.0
    );
}

#[test]
fn event_reasons_past_the_cap_count_as_other() {
    let m = Metrics::new();
    for i in 0..MAX_REASONS + 10 {
        m.event(&format!("reason{i}"));
    }
    m.event("reason0");
    m.event("yet-another");
    let (text, s) = encode(&m, &Snapshot::default());
    let reasons: Vec<_> = s
        .keys()
        .filter(|k| k.starts_with("prism_events_total{"))
        .collect();
    assert_eq!(reasons.len(), MAX_REASONS + 1, "{text}");
    assert_eq!(s["prism_events_total{reason=\"reason0\"}"], 2.0, "{text}");
    assert_eq!(s["prism_events_total{reason=\"other\"}"], 11.0, "{text}");
}

#[test]
fn instances_are_counted_by_pattern_isolation_and_state_with_zeros_for_the_other_states() {
    let snap = snapshot(vec![
        status("a", "p", Isolation::None, Phase::Running, 0),
        status("ns:b:p", "p", Isolation::Namespace, Phase::Running, 2),
        status("ns:c:p", "p", Isolation::Namespace, Phase::Failed, 5),
        status("ns:d:p", "p", Isolation::Namespace, Phase::Running, 0),
        status("q", "q", Isolation::None, Phase::Exited, 1),
    ]);
    let (text, s) = encode(&Metrics::new(), &snap);
    let g = |p: &str, i: &str, st: &str| {
        s.get(&format!(
            "prism_instances{{pattern=\"{p}\",isolation=\"{i}\",state=\"{st}\"}}"
        ))
        .copied()
    };
    assert_eq!(g("p", "namespace", "running"), Some(2.0), "{text}");
    assert_eq!(g("p", "namespace", "failed"), Some(1.0), "{text}");
    assert_eq!(g("p", "namespace", "starting"), Some(0.0), "{text}");
    assert_eq!(g("p", "none", "running"), Some(1.0), "{text}");
    assert_eq!(g("q", "none", "terminated"), Some(1.0), "{text}");
    assert_eq!(
        g("q", "namespace", "running"),
        None,
        "no instance, no series: {text}"
    );
    let instance_series = s
        .keys()
        .filter(|k| k.starts_with("prism_instances{"))
        .count();
    assert_eq!(instance_series, 3 * 6, "{text}");
    assert_eq!(
        s["prism_instance_restarts_total{process_id=\"ns:c:p\"}"], 5.0,
        "{text}"
    );
    assert_eq!(
        s["prism_instance_restarts_total{process_id=\"a\"}"], 0.0,
        "{text}"
    );
    assert!(text.contains("# TYPE prism_instances gauge"), "{text}");
    assert!(
        text.contains("# TYPE prism_instance_restarts counter"),
        "{text}"
    );
}

#[test]
fn a_removed_instance_loses_its_series() {
    let m = Metrics::new();
    let before = snapshot(vec![
        status("a", "p", Isolation::None, Phase::Running, 3),
        status("b", "p", Isolation::None, Phase::Running, 1),
    ]);
    assert!(
        encode(&m, &before)
            .1
            .contains_key("prism_instance_restarts_total{process_id=\"a\"}")
    );
    let after = snapshot(vec![status("b", "p", Isolation::None, Phase::Running, 1)]);
    let (text, s) = encode(&m, &after);
    assert!(
        !s.contains_key("prism_instance_restarts_total{process_id=\"a\"}"),
        "{text}"
    );
    assert_eq!(
        s["prism_instance_restarts_total{process_id=\"b\"}"], 1.0,
        "{text}"
    );
}

#[test]
fn restart_series_are_capped_keeping_the_most_restarted() {
    let n = MAX_INSTANCE_SERIES + 50;
    let snap = snapshot(
        (0..n)
            .map(|i| {
                let restarts = if i == n - 1 { 99 } else { 0 };
                status(
                    &format!("i{i:05}"),
                    "p",
                    Isolation::None,
                    Phase::Running,
                    restarts,
                )
            })
            .collect(),
    );
    let (text, s) = encode(&Metrics::new(), &snap);
    let series = s
        .keys()
        .filter(|k| k.starts_with("prism_instance_restarts_total{"))
        .count();
    assert_eq!(series, MAX_INSTANCE_SERIES);
    let last = format!(
        "prism_instance_restarts_total{{process_id=\"i{:05}\"}}",
        n - 1
    );
    assert_eq!(s.get(&last), Some(&99.0), "the most restarted one stays");
    assert!(
        !text.contains(&format!("\"i{:05}\"", n - 2)),
        "the cap drops the last ones"
    );
    assert_eq!(
        s["prism_instances{pattern=\"p\",isolation=\"none\",state=\"running\"}"],
        n as f64
    );
}

#[test]
fn label_values_are_escaped() {
    let snap = snapshot(vec![status(
        "x\"y\\z\nw",
        "p",
        Isolation::None,
        Phase::Running,
        1,
    )]);
    let (text, _) = encode(&Metrics::new(), &snap);
    assert!(
        text.contains(r#"prism_instance_restarts_total{process_id="x\"y\\z\nw"} 1"#),
        "{text}"
    );
}

#[test]
fn the_prometheus_text_names_counter_families_with_total_and_drops_unit_and_eof() {
    let m = Metrics::new();
    m.event("spawned");
    let snap = snapshot(vec![status("a", "p", Isolation::None, Phase::Running, 1)]);
    let open = m.encode(&snap).expect("encode");
    let text = prometheus_text(&open);
    for family in [
        "prism_probe_failures",
        "prism_events",
        "prism_instance_restarts",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}_total counter\n")),
            "{text}"
        );
        assert!(text.contains(&format!("# HELP {family}_total ")), "{text}");
        assert!(!text.contains(&format!("# TYPE {family} ")), "{text}");
    }
    assert!(text.contains("# TYPE prism_instances gauge\n"), "{text}");
    assert!(
        text.contains("# TYPE prism_spawn_duration_seconds histogram\n"),
        "{text}"
    );
    assert!(!text.contains("# UNIT"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");
    assert_eq!(samples(&text), samples(&open), "the samples are the same");
}
