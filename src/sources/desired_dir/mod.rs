//! The desired directory (`desired/*.yaml`, SPEC §4): which files count,
//! what their text means ([`parse`]), and what the controller is told about
//! them.
//!
//! Owns the file format and reading the directory; it never writes there,
//! and never decides what a file means for the desired set (conflicts,
//! unknown patterns, replacing a file's declarations are the controller's).

pub mod parse;
pub mod watcher;

pub use parse::{DesiredDoc, is_candidate, parse_desired};
pub use watcher::{FileEvent, watch_desired};
