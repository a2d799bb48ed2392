//! Everything that touches processes: spawning, signals, ports, probes,
//! logs, and the controller that owns the observed table.

pub mod cgroup;
pub mod controller;
pub mod discover;
pub mod logs;
pub mod ports;
pub mod snapshot;
pub mod spawn;
pub mod supervise;
pub mod table;
