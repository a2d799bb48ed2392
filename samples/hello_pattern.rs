//! `hello-pattern`: the sample pattern shipped with the launcher. It logs a line every 5 s
//! and answers `GET /health` on `127.0.0.1:$HEALTH_PORT`; SIGTERM/SIGINT make it exit 0.
//!
//! It must not do anything else: no child processes, no extra ports, no tokio (it has to be
//! serving health within about a millisecond of start).

#[path = "common/mod.rs"]
mod common;

use std::thread;
use std::time::Duration;

const TICK: Duration = Duration::from_secs(5);

fn main() {
    let env = common::PatternEnv::read("hello-pattern");
    common::exit_on_signals(&env.pattern_name);
    let port = env.health_port();
    common::log(&format!(
        "Starting {} (namespace={}, health_port={port})",
        env.pattern_name, env.namespace
    ));
    common::log(&format!("Health server starting on :{port}"));
    let body = format!("OK - {} is healthy\n", env.pattern_name);
    common::start_health_server(&env.pattern_name, port, move || (200, body.clone()));

    let tick = format!("[{}:{}] Processing...", env.namespace, env.pattern_name);
    loop {
        thread::sleep(TICK);
        common::log(&tick);
    }
}
