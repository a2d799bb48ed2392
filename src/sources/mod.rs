//! The input side of the launcher: everything it reads from outside to
//! learn what it should run, turned into plain data for the controller.
//!
//! - [`catalog`]: the patterns directory -> the known patterns.
//! - [`desired_dir`]: the desired directory -> each file's declarations.
//! - [`api_store`]: the API's declarations, kept under `--state-dir` so
//!   that they survive a restart.
//! - [`state_file`]: small JSON files under `--state-dir`, written
//!   atomically (the API store's file, the runtime's process table).
//!
//! Nothing here decides what to run, touches a process or reads the clock
//! for anything but debouncing; the controller owns every decision.

pub mod api_store;
pub mod catalog;
pub mod desired_dir;
mod fsnotify;
pub mod state_file;

pub use api_store::{ApiStore, StoreError};
pub use catalog::{Catalog, DiscoveryError, watch_patterns};
pub use desired_dir::{DesiredDoc, FileEvent, watch_desired};
