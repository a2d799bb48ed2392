//! `config-lookup`: a second sample pattern (shared, `isolation_level: none`). It answers
//! `GET /health` with `OK` on `127.0.0.1:$HEALTH_PORT` and exits 0 on SIGTERM/SIGINT.
//!
//! It must not do anything else: no child processes, no extra ports, no tokio (it has to be
//! serving health within about a millisecond of start).

#[path = "common/mod.rs"]
mod common;

fn main() {
    let env = common::PatternEnv::read("config-lookup");
    common::exit_on_signals(&env.pattern_name);
    let port = env.health_port();
    common::start_health_server(&env.pattern_name, port, || (200, "OK".to_string()));
    common::log(&format!("Config lookup service on :{port}"));
    common::sleep_forever();
}
