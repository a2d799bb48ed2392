//! The desired directory (`desired/*.yaml`, SPEC §4) as a source: which
//! files count and what their text means ([`parse`], pure), reading one
//! file without blocking (`read`), and the [`watcher`] that tells the
//! controller what changed, as [`FileEvent`]s (plain data).
//!
//! Owns the file format and reading the directory; it never writes there,
//! and never decides what a file means for the desired set (conflicts,
//! unknown patterns, replacing a file's declarations are the controller's).

pub mod parse;
mod read;
pub mod watcher;

#[cfg(test)]
mod tests;

pub use parse::{DesiredDoc, is_candidate, parse_desired};
pub use watcher::watch_desired;

use crate::spec::yaml::YamlError;

/// What [`watch_desired`] reports about one file of the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileEvent {
    /// A candidate file's content is new or changed since it was last
    /// reported (or it could not be read, or no longer can).
    Changed {
        /// File name inside the directory.
        name: String,
        /// Its documents, or why they cannot be had (read or parse error,
        /// naming the file and, where known, the line).
        result: Result<Vec<DesiredDoc>, YamlError>,
    },
    /// A file that was reported before is gone (deleted, or renamed away).
    Removed {
        /// File name inside the directory.
        name: String,
    },
    /// Sent once, after the events of the first full scan: from here on
    /// the receiver has seen every file that was there at start (a file
    /// modified just before start is waited for, up to
    /// [`watcher::SYNC_PATIENCE`]).
    Synced,
}
