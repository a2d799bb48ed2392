//! The input side of the launcher: what it reads from outside to learn
//! what should run, handed to the controller as plain data.
//!
//! - [`desired_dir`]: `desired/*.yaml`: the file format
//!   ([`desired_dir::parse`], pure), a non-blocking read of one file, and
//!   the watcher that sends [`FileEvent`]s.
//! - [`catalog`]: `patterns/`: discovery of the known patterns
//!   ([`Catalog`]) and the watcher that says when to look again.
//! - [`api_store`]: the API's declarations, kept under `--state-dir` so
//!   that they survive a restart.
//! - [`state_file`]: small JSON files under `--state-dir`, replaced
//!   atomically (the API store's file, the runtime's process table).
//! - [`watched_file`]: a watcher of one file (the `--authz` policy).
//! - `fsnotify`: the inotify plumbing the watchers share.
//!
//! Nothing here decides what to run or touches a process: what a file or
//! a pattern means for the desired set and the instances is the
//! controller's. The watchers run on threads of their own and only read;
//! the state files are the only writes.

pub mod api_store;
pub mod catalog;
pub mod desired_dir;
mod fsnotify;
pub mod state_file;
pub mod watched_file;

pub use api_store::{ApiStore, StoreError};
pub use catalog::{Catalog, DiscoveryError, watch_patterns};
pub use desired_dir::{DesiredDoc, FileEvent, watch_desired};
pub use fsnotify::QUIET;
