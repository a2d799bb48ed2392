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

/// Runs the launcher binary to its end with `args`; returns (status, output).
pub fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(LAUNCHER_BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn the launcher");
    let exited = wait_for_every(READY_TIMEOUT, std::time::Duration::from_millis(20), || {
        child.try_wait().expect("wait")
    });
    let Some(status) = exited else {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        panic!("the launcher did not exit within {READY_TIMEOUT:?} with {args:?}");
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status, text)
}

/// The retry-after of a call refused by the rate limit: `retry-after` is
/// whole seconds rounded up (1 under a second); returns `retry-after-ms`.
pub fn retry_after_ms(limited: &tonic::Status) -> u64 {
    let retry_after = limited.metadata().get("retry-after").expect("retry-after");
    assert_eq!(retry_after, "1", "whole seconds, rounded up");
    limited
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("retry-after-ms")
}
