//! Where cargo put the binaries of prism-launcher built for this run.
//!
//! `env!("CARGO_BIN_EXE_<name>")` only works in the package's own tests and
//! benches, not in a dependency such as this kit; so the kit asks at run
//! time: cargo (1.86 and later) and nextest set `CARGO_BIN_EXE_<name>` and
//! `NEXTEST_BIN_EXE_<name>` in the environment of every test and bench they
//! run, and older cargos leave the binaries next to the `deps/` directory
//! the test executable is in. `tests/testkit.rs` checks that this finds the
//! very files `env!` names.

use std::path::PathBuf;

/// The launcher.
pub const LAUNCHER: &str = "prism-launcher";
/// The configurable pattern the tests drive.
pub const TEST_PATTERN: &str = "test-pattern";
/// The sample patterns of the quick start.
pub const HELLO_PATTERN: &str = "hello-pattern";
pub const CONFIG_LOOKUP: &str = "config-lookup";

/// The path of binary target `name` of prism-launcher, as built for this
/// test or bench run. Panics when it cannot be found: such a run is
/// misconfigured, never skipped.
pub fn bin_path(name: &str) -> PathBuf {
    for var in [
        format!("CARGO_BIN_EXE_{name}"),
        format!("NEXTEST_BIN_EXE_{name}"),
    ] {
        if let Some(p) = std::env::var_os(&var).map(PathBuf::from)
            && p.is_file()
        {
            return p;
        }
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find {name}: no path of the running test ({e})"));
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "cannot find the {name} binary: CARGO_BIN_EXE_{name} is not set and {} does not exist",
        p.display()
    );
    p
}

/// [`bin_path`] as a string (for manifests and commands).
pub fn bin(name: &str) -> String {
    bin_path(name).display().to_string()
}
