//! Each integration test's door to the shared test kit (`prism-testkit`,
//! in `tests/support`): the whole kit, plus the paths at which cargo built
//! the binaries for this test.
//!
//! The kit runs the real `prism-launcher` binary in a temp dir, on ports
//! of its own, and calls it through the project's tonic client with
//! grpcurl's JSON; it owns everything a test starts (see
//! `prism_testkit::env`).

#![allow(dead_code, unused_imports)] // each test uses a part of the kit

pub use prism_testkit::*;

/// The launcher under test.
pub const LAUNCHER_BIN: &str = env!("CARGO_BIN_EXE_prism-launcher");
/// Sample pattern binaries built from this package.
pub const HELLO_PATTERN_BIN: &str = env!("CARGO_BIN_EXE_hello-pattern");
pub const CONFIG_LOOKUP_BIN: &str = env!("CARGO_BIN_EXE_config-lookup");
pub const TEST_PATTERN_BIN: &str = env!("CARGO_BIN_EXE_test-pattern");
