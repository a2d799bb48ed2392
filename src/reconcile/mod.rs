//! Deciding what to do: the observed table's shape, how facts change it
//! (transitions), backoff, and the pure planner that turns (desired,
//! observed, now) into actions.
//!
//! Nothing here touches a process, a file or the clock: `now` is a
//! parameter, so every rule is tested with plain values.

pub mod backoff;
pub mod observed;
pub mod orphans;
pub mod plan;
pub mod transitions;

pub use observed::{Observed, ObservedInstance, Phase, StopReason};
pub use plan::{Action, Plan, PlanConfig, plan};
