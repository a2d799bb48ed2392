//! Measurement of the lifecycle bench: a [`Figure`] is one measured
//! quantity with its samples, unit and target; its median and p95 are
//! nearest-rank percentiles.

use std::time::Duration;

/// Unit of a figure's samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Calls per second.
    PerSec,
    /// Percent of one core.
    Percent,
    /// Megabytes (10^6 bytes).
    Mb,
}

impl Unit {
    pub(super) fn show(self, v: f64) -> String {
        match self {
            Unit::Ms if v < 10.0 => format!("{v:.3} ms"),
            Unit::Ms => format!("{v:.1} ms"),
            Unit::PerSec => format!("{v:.0}/s"),
            Unit::Percent => format!("{v:.2} %"),
            Unit::Mb => format!("{v:.1} MB"),
        }
    }
}

/// What a figure's median must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// At most this value.
    AtMost(f64),
    /// At least this value.
    AtLeast(f64),
    /// At most this many times the matching raw figure.
    RawRatioAtMost(f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// Stable key (`cold.file.200`, `kill.healthy`, ...).
    pub key: String,
    /// What it is, for the table.
    pub label: String,
    /// Unit of the samples.
    pub unit: Unit,
    /// The samples.
    pub samples: Vec<f64>,
    /// Key of the matching raw figure.
    pub raw: Option<String>,
    /// Target, and how it reads.
    pub target: Option<(Target, String)>,
}

impl Figure {
    fn sorted(&self) -> Vec<f64> {
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Median (nearest rank); `None` without samples.
    pub fn median(&self) -> Option<f64> {
        percentile(&self.sorted(), 50.0)
    }

    /// 95th percentile (nearest rank); `None` without samples.
    pub fn p95(&self) -> Option<f64> {
        percentile(&self.sorted(), 95.0)
    }
}

/// Nearest-rank percentile of sorted `v`.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
