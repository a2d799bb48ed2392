//! Prometheus metrics: the registry, the cheap handle the controller (and
//! the event log) record through ([`Metrics`]), the families computed at
//! scrape time from the controller's published [`Snapshot`], and their
//! text encoding (OpenMetrics, which `promtool check metrics` accepts).
//! The HTTP listener that serves them is [`server`].
//!
//! Cardinality is bounded: `prism_instances` has one series per pattern,
//! isolation and state of the instances that exist now; the restart
//! counters exist only for the instances that exist now (computed from the
//! snapshot at each scrape, so a removed instance's series disappears), and
//! at most [`MAX_INSTANCE_SERIES`] of them (the most restarted first);
//! `prism_events_total` keeps at most [`MAX_REASONS`] reasons, later ones
//! count under `reason="other"`.

pub mod server;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::controller::snapshot::Snapshot;
use crate::reconcile::Phase;

/// Default `--metrics-port` (the port OpenTelemetry's Prometheus exporter
/// uses by convention).
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// Most `prism_instance_restarts_total` series in one scrape.
pub const MAX_INSTANCE_SERIES: usize = 1000;

/// Most distinct `reason` labels of `prism_events_total`.
pub const MAX_REASONS: usize = 64;

/// The `reason` that counts events past [`MAX_REASONS`] distinct ones.
pub const OTHER_REASON: &str = "other";

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`prometheus_text`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the reconcile pass histogram (seconds): a pass plans and
/// carries out its actions, from microseconds to a slow spawn storm.
const RECONCILE_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of the spawn histogram (seconds): fork, cgroup, exec.
const SPAWN_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    pattern: String,
    isolation: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabels {
    process_id: String,
}

struct Inner {
    registry: Registry,
    reconcile: Histogram,
    spawn: Histogram,
    probe_failures: Counter,
    events: Family<ReasonLabels, Counter>,
    /// Reasons with a series of their own, at most [`MAX_REASONS`].
    reasons: Mutex<HashSet<String>>,
}

/// The launcher's metrics; clones share them. Cheap to call from the
/// controller loop: each method is an atomic update (an event of a new
/// reason also takes a short lock).
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Measures from its creation to its drop into a histogram.
#[must_use = "the time is measured until the timer is dropped"]
pub struct Timer {
    histogram: Histogram,
    started: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let reconcile = Histogram::new(RECONCILE_BUCKETS);
        registry.register_with_unit(
            "prism_reconcile_duration",
            "Time of one reconcile pass: planning and carrying out its actions",
            Unit::Seconds,
            reconcile.clone(),
        );
        let spawn = Histogram::new(SPAWN_BUCKETS);
        registry.register_with_unit(
            "prism_spawn_duration",
            "Time to start one instance process (fork, cgroup, exec)",
            Unit::Seconds,
            spawn.clone(),
        );
        let probe_failures = Counter::default();
        registry.register(
            "prism_probe_failures",
            "Health probes of instances that failed",
            probe_failures.clone(),
        );
        let events = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "prism_events",
            "Events of the event log, by reason",
            events.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "prism_build_info",
            "Always 1; the labels say which build of the launcher runs",
            build,
        );
        Metrics(Arc::new(Inner {
            registry,
            reconcile,
            spawn,
            probe_failures,
            events,
            reasons: Mutex::new(HashSet::new()),
        }))
    }

    /// Records the time of one reconcile pass.
    pub fn observe_reconcile(&self, d: Duration) {
        self.0.reconcile.observe(d.as_secs_f64());
    }

    /// A timer that records a reconcile pass when dropped.
    pub fn reconcile_timer(&self) -> Timer {
        Timer {
            histogram: self.0.reconcile.clone(),
            started: Instant::now(),
        }
    }

    /// Records the time of one spawn.
    pub fn observe_spawn(&self, d: Duration) {
        self.0.spawn.observe(d.as_secs_f64());
    }

    /// Runs `start` (a spawn) and records how long it took.
    pub fn time_spawn<T>(&self, start: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = start();
        self.observe_spawn(started.elapsed());
        out
    }

    /// Counts one failed health probe.
    pub fn probe_failed(&self) {
        self.0.probe_failures.inc();
    }

    /// Counts one event of the event log under its reason. Past
    /// [`MAX_REASONS`] distinct reasons, new ones count as
    /// [`OTHER_REASON`].
    pub fn event(&self, reason: &str) {
        let known = {
            let mut reasons = self
                .0
                .reasons
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            reasons.contains(reason)
                || (reasons.len() < MAX_REASONS && reasons.insert(reason.to_string()))
        };
        let reason = if known { reason } else { OTHER_REASON };
        self.0
            .events
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text a scrape gets: the recorded metrics, then the families
    /// computed from `snap`.
    pub fn encode(&self, snap: &Snapshot) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.0.registry)?;
        encode_registry(&mut out, &scrape_registry(snap))?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The same metrics in the Prometheus text format (0.0.4), for clients
/// that do not ask for OpenMetrics (`curl`, `promtool check metrics`).
/// The two differ in what this rewrites: a counter family is named
/// without `_total` in OpenMetrics and with it in the text format; `# UNIT`
/// and `# EOF` lines do not exist there. Samples and escaping are the same.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| Some((p, line.strip_prefix(p)?)));
        match descriptor {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The state label of a phase: the API's state name, in lower case.
fn state_label(p: Phase) -> &'static str {
    match crate::api::convert::state_to_wire(p) {
        crate::proto::ProcessState::StateUnspecified => "unspecified",
        crate::proto::ProcessState::StateStarting => "starting",
        crate::proto::ProcessState::StateRunning => "running",
        crate::proto::ProcessState::StateTerminating => "terminating",
        crate::proto::ProcessState::StateTerminated => "terminated",
        crate::proto::ProcessState::StateFailed => "failed",
        crate::proto::ProcessState::StateFinished => "finished",
    }
}

const PHASES: [Phase; 6] = [
    Phase::Starting,
    Phase::Running,
    Phase::Terminating,
    Phase::Exited,
    Phase::Failed,
    Phase::Finished,
];

/// The families computed from a snapshot, in a registry of their own.
fn scrape_registry(snap: &Snapshot) -> Registry {
    let mut registry = Registry::default();
    // Every state of each (pattern, isolation) that has an instance: a
    // count that drops to zero shows 0 instead of vanishing.
    let mut counts: BTreeMap<(&str, String), [i64; PHASES.len()]> = BTreeMap::new();
    for s in snap.instances.values() {
        let row = counts
            .entry((s.pattern.as_str(), s.isolation.to_string()))
            .or_default();
        if let Some(i) = PHASES.iter().position(|p| *p == s.phase) {
            row[i] += 1;
        }
    }
    let instances = Family::<InstanceLabels, Gauge>::default();
    for ((pattern, isolation), row) in counts {
        for (phase, n) in PHASES.iter().zip(row) {
            instances
                .get_or_create(&InstanceLabels {
                    pattern: pattern.to_string(),
                    isolation: isolation.clone(),
                    state: state_label(*phase),
                })
                .set(n);
        }
    }
    registry.register(
        "prism_instances",
        "Instances that exist now, by pattern, isolation and state",
        instances,
    );

    let mut by_restarts: Vec<_> = snap.instances.values().collect();
    by_restarts.sort_by(|a, b| {
        b.restart_count
            .cmp(&a.restart_count)
            .then_with(|| a.process_id.cmp(&b.process_id))
    });
    let restarts = Family::<ProcessLabels, Counter>::default();
    for s in by_restarts.into_iter().take(MAX_INSTANCE_SERIES) {
        restarts
            .get_or_create(&ProcessLabels {
                process_id: s.process_id.clone(),
            })
            .inc_by(u64::from(s.restart_count));
    }
    registry.register(
        "prism_instance_restarts",
        format!(
            "Restarts of each instance that exists now (at most {MAX_INSTANCE_SERIES} series, the most restarted)"
        ),
        restarts,
    );
    registry
}

#[cfg(test)]
mod tests;
