//! The lifecycle bench's report: every figure a run produces
//! ([`Report::planned`], with the targets of issue 5), the samples pushed
//! by the scenarios, and the table the bench prints ([`Report::render`]).

use std::fmt::Write as _;
use std::time::Duration;

use super::Params;
use super::figures::{Figure, Target, Unit, ms};

/// Everything a run measured, in table order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The figures, in the order they are printed.
    pub figures: Vec<Figure>,
    /// Lines printed before the table (what ran, where).
    pub header: Vec<String>,
    /// Remarks printed after the table (launcher log findings, leftovers).
    pub notes: Vec<String>,
    /// Processes of the run found alive at the end (and killed).
    pub leftovers: Vec<i32>,
}

impl Report {
    /// Every figure a run with `p` produces, without samples.
    pub fn planned(p: &Params) -> Report {
        let mut r = Report::default();
        let mut add = |key: String, label: String, unit: Unit, raw: Option<String>| {
            r.figures.push(Figure {
                key,
                label,
                unit,
                samples: Vec::new(),
                raw,
                target: None,
            });
        };
        for &n in &p.ns {
            add(
                format!("raw.cold.{n}"),
                format!("raw: spawn {n} → all healthy"),
                Unit::Ms,
                None,
            );
        }
        for &n in &p.ns {
            add(
                format!("raw.stop.{n}"),
                format!("raw: SIGTERM {n} → all reaped"),
                Unit::Ms,
                None,
            );
        }
        add(
            "raw.kill.pid".into(),
            "raw: kill -9 → reaped, respawned".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.kill.healthy".into(),
            "raw: kill -9 → healthy again".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.spawn.spawned".into(),
            "raw: spawn → running (spawn log)".into(),
            Unit::Ms,
            None,
        );
        add(
            "raw.spawn.healthy".into(),
            "raw: spawn → healthy".into(),
            Unit::Ms,
            None,
        );
        for &n in &p.ns {
            for (how, what) in [
                ("file", "one file"),
                ("files", "files"),
                ("api", "LaunchPattern"),
            ] {
                add(
                    format!("cold.{how}.{n}"),
                    format!("cold start {n} ({what}) → all healthy"),
                    Unit::Ms,
                    Some(format!("raw.cold.{n}")),
                );
            }
        }
        for &n in &p.ns {
            add(
                format!("cold.health_p99.{n}"),
                format!("Health answer during cold start {n}, p99"),
                Unit::Ms,
                None,
            );
            add(
                format!("cold.health_max.{n}"),
                format!("Health answer during cold start {n}, max"),
                Unit::Ms,
                None,
            );
        }
        add(
            "kill.pid".into(),
            "kill -9 → new pid".into(),
            Unit::Ms,
            Some("raw.kill.pid".into()),
        );
        add(
            "kill.healthy".into(),
            "kill -9 → healthy again".into(),
            Unit::Ms,
            Some("raw.kill.healthy".into()),
        );
        add(
            "rename.spawned".into(),
            "file renamed in → spawned".into(),
            Unit::Ms,
            Some("raw.spawn.spawned".into()),
        );
        add(
            "rename.healthy".into(),
            "file renamed in → healthy".into(),
            Unit::Ms,
            Some("raw.spawn.healthy".into()),
        );
        let few = 2 * p.kills;
        add(
            "launch.p50".into(),
            format!("LaunchPattern on running, p50 ({few} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch.p99".into(),
            format!("LaunchPattern on running, p99 ({few} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch.rate".into(),
            format!(
                "LaunchPattern on running, {} clients ({few} inst.)",
                p.launch_clients
            ),
            Unit::PerSec,
            None,
        );
        let big = p.max_n();
        add(
            "launch_n.p50".into(),
            format!("LaunchPattern on running, p50 ({big} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch_n.p99".into(),
            format!("LaunchPattern on running, p99 ({big} inst.)"),
            Unit::Ms,
            None,
        );
        add(
            "launch_n.rate".into(),
            format!(
                "LaunchPattern on running, {} clients ({big} inst.)",
                p.launch_clients
            ),
            Unit::PerSec,
            None,
        );
        let secs = p.steady.as_secs();
        add(
            "steady.cpu".into(),
            format!("steady {big} inst. {secs}s: launcher CPU (1 core)"),
            Unit::Percent,
            None,
        );
        add(
            "steady.hwm".into(),
            format!("steady {big} inst.: launcher peak RSS (VmHWM)"),
            Unit::Mb,
            None,
        );
        add(
            "steady.rss".into(),
            format!("steady {big} inst.: launcher RSS at the end"),
            Unit::Mb,
            None,
        );
        // What watch clients cost: the ratio column compares with the
        // same figure without them.
        let w = super::watchers::WATCH_CLIENTS;
        add(
            "steady_w.cpu".into(),
            format!("  …with {w} watch clients: CPU (vs without)"),
            Unit::Percent,
            Some("steady.cpu".into()),
        );
        add(
            "steady_w.hwm".into(),
            format!("  …with {w} watch clients: peak RSS (vs without)"),
            Unit::Mb,
            Some("steady.hwm".into()),
        );
        add(
            "steady_w.rss".into(),
            format!("  …with {w} watch clients: RSS at the end"),
            Unit::Mb,
            Some("steady.rss".into()),
        );
        add(
            "launch_nw.p99".into(),
            format!("  …with {w} watch clients: LaunchPattern p99"),
            Unit::Ms,
            Some("launch_n.p99".into()),
        );
        add(
            "launch_evt.p99".into(),
            format!("LaunchPattern p99 ({few} inst.), 1000 events/s"),
            Unit::Ms,
            None,
        );
        add(
            "launch_stalled.p99".into(),
            "  …and a watch client that never reads".into(),
            Unit::Ms,
            Some("launch_evt.p99".into()),
        );
        for &n in &p.ns {
            add(
                format!("stop.{n}"),
                format!("graceful stop {n} → all gone, launcher exited"),
                Unit::Ms,
                Some(format!("raw.stop.{n}")),
            );
        }
        let pn = p.planner_n;
        add(
            format!("planner.noop.{pn}"),
            format!("planner pass, {pn} inst., nothing to do"),
            Unit::Ms,
            None,
        );
        add(
            format!("planner.changed.{pn}"),
            format!("planner pass, {pn} inst., 1% changed"),
            Unit::Ms,
            None,
        );

        // The targets of issue 5 (for a 2-core machine), where the sizes match.
        let mut target = |key: &str, t: Target, text: &str| {
            if let Some(f) = r.figures.iter_mut().find(|f| f.key == key) {
                f.target = Some((t, text.to_string()));
            }
        };
        for how in ["file", "files", "api"] {
            target(
                &format!("cold.{how}.200"),
                Target::RawRatioAtMost(2.0),
                "≤ 2× raw",
            );
        }
        target("kill.healthy", Target::RawRatioAtMost(3.0), "≤ 3× raw");
        target("rename.spawned", Target::AtMost(20.0), "≤ 20 ms");
        target("launch.p99", Target::AtMost(2.0), "≤ 2 ms");
        target("launch.rate", Target::AtLeast(5000.0), "≥ 5000/s");
        if big == 1000 {
            target("steady.cpu", Target::AtMost(1.0), "≤ 1 %");
            target("steady.hwm", Target::AtMost(30.0), "≤ 30 MB");
        }
        target("stop.1000", Target::AtMost(1000.0), "≤ 1 s");
        for key in [
            "steady_w.cpu",
            "steady_w.hwm",
            "launch_nw.p99",
            "launch_stalled.p99",
        ] {
            target(key, Target::RawRatioAtMost(1.1), "≤ 1.1× without");
        }
        target("planner.noop.10000", Target::AtMost(2.0), "≤ 2 ms");
        r
    }

    /// The figure with this key.
    pub fn get(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    /// Adds a sample to the figure with this key (which must be planned).
    pub fn push(&mut self, key: &str, v: f64) {
        match self.figures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.samples.push(v),
            None => panic!("figure {key} is not planned"),
        }
    }

    pub(super) fn push_ms(&mut self, key: &str, d: Duration) {
        self.push(key, ms(d));
    }

    /// The median of `f` over the median of its raw figure.
    pub fn ratio(&self, f: &Figure) -> Option<f64> {
        let raw = self.get(f.raw.as_deref()?)?.median()?;
        let m = f.median()?;
        (raw > 0.0).then(|| m / raw)
    }

    /// Whether `f` meets its target (on its median); `None` without target
    /// or samples.
    pub fn verdict(&self, f: &Figure) -> Option<bool> {
        let (t, _) = f.target.as_ref()?;
        let m = f.median()?;
        Some(match *t {
            Target::AtMost(x) => m <= x,
            Target::AtLeast(x) => m >= x,
            Target::RawRatioAtMost(x) => self.ratio(f)? <= x,
        })
    }

    /// The table and the notes, as printed by the bench.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for h in &self.header {
            let _ = writeln!(out, "{h}");
        }
        let _ = writeln!(
            out,
            "{:<50} {:>4} {:>11} {:>11} {:>11} {:>7}  target",
            "figure", "n", "median", "p95", "raw median", "×raw"
        );
        let mut section = "";
        for f in &self.figures {
            let s = if f.key.starts_with("raw.") {
                "raw limit: a plain spawn loop, no launcher"
            } else if f.key.starts_with("planner.") {
                "planner alone (in process)"
            } else {
                "launcher"
            };
            if s != section {
                section = s;
                let _ = writeln!(out, "--- {s} ---");
            }
            let show = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| f.unit.show(v));
            let raw = f
                .raw
                .as_deref()
                .and_then(|k| self.get(k))
                .and_then(Figure::median)
                .map_or_else(String::new, |v| f.unit.show(v));
            let ratio = self
                .ratio(f)
                .map_or_else(String::new, |r| format!("{r:.2}×"));
            let (target, verdict) = match (&f.target, self.verdict(f)) {
                (Some((_, text)), Some(true)) => (text.clone(), "PASS"),
                (Some((_, text)), Some(false)) => (text.clone(), "MISS"),
                (Some((_, text)), None) => (text.clone(), "—"),
                (None, _) => (String::new(), ""),
            };
            let _ = writeln!(
                out,
                "{:<50} {:>4} {:>11} {:>11} {:>11} {:>7}  {:<10} {}",
                f.label,
                f.samples.len(),
                show(f.median()),
                show(f.p95()),
                raw,
                ratio,
                target,
                verdict
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "{n}");
        }
        out
    }
}
