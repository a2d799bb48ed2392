//! Authorization: who may call the launcher, and what each caller may see
//! and do.
//!
//! - [`policy`]: the `--authz` file's format ([`policy::parse_policy`],
//!   pure) and the resolution of user and group names;
//! - [`decide`]: the decision for a caller and a call ([`decide::decide`]),
//!   with the defaults that hold without a policy;
//! - [`scope`]: the limits of a tenant or viewer, applied to instances,
//!   events and sources;
//! - [`rate`]: the per-caller rate limit of mutating calls;
//! - [`live`]: the policy in force, reloaded when its file changes.
//!
//! The API enforces it (`api::gate`); the caller's identity is the
//! transport's (`api::identity`).

pub mod decide;
pub mod live;
pub mod policy;
pub mod rate;
pub mod scope;

pub use decide::{Action, Decision, Grant, Mode, Refusal, Target, Verb, decide};
pub use live::{Authz, AuthzError};
pub use policy::{Policy, PolicyError, parse_policy};
pub use rate::RateLimit;
pub use scope::{InstanceRef, Limits};
