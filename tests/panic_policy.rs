//! A panic anywhere in the launcher ends the process with a non-zero status
//! instead of leaving it half alive (a dead controller behind a live API).
//!
//! The test runs its own binary again as the child that panics, so that the
//! hook the launcher installs is the one under test.

use std::process::Command;

const CHILD: &str = "PRISM_PANIC_POLICY_CHILD";

#[test]
fn a_panic_in_a_spawned_task_ends_the_process_with_status_101() {
    if std::env::var_os(CHILD).is_some() {
        prism_launcher::exit_on_panic();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            // Without the hook tokio catches this panic and the process goes on.
            let _ =
                tokio::spawn(async { panic!("deliberate panic in a controller-like task") }).await;
        });
        // Reached only when the panic did not end the process.
        std::process::exit(0);
    }
    let exe = std::env::current_exe().expect("current test binary");
    let out = Command::new(exe)
        .args([
            "--exact",
            "a_panic_in_a_spawned_task_ends_the_process_with_status_101",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(101),
        "the child must exit with 101 after the panic; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("deliberate panic"),
        "the panic message must be printed; stderr:\n{stderr}"
    );
}
