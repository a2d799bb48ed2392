//! Helpers for unit tests that need a process of their own: running out of
//! descriptors must not disturb the other tests of the binary.

use std::fs::File;

/// Set in the child process that runs one test.
const CHILD: &str = "PRISM_UNIT_TEST_CHILD";

/// In the test process: runs the test `name` (its full path, like
/// `sources::catalog::tests::x`) again in a child process of this test binary,
/// asserts that it passed and printed `marker`, and returns false. In that
/// child: returns true, and the caller does the work and prints `marker`.
pub fn in_child(name: &str, marker: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains(marker), "{text}");
    false
}

/// Lowers the open-file limit to 256 and opens files until none more can
/// be: every open now fails with EMFILE while the result is held.
pub fn exhaust_fds() -> Vec<File> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 256.min(hard), hard).expect("setrlimit");
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => return held,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}
