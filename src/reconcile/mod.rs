//! Deciding what to do: the observed table's shape, backoff, and the pure
//! planner that turns (desired, observed, now) into actions.
//!
//! Nothing here touches a process, a file or the clock: `now` is a
//! parameter, so every rule is tested with plain values.

pub mod backoff;
pub mod observed;
pub mod plan;

pub use observed::{Observed, ObservedInstance, Phase, StopReason};
pub use plan::{Action, Plan, PlanConfig, plan};
