//! Shared plumbing for the sample pattern binaries (`hello-pattern`, `config-lookup`,
//! `test-pattern`): the launcher-provided environment, line-flushed logging, a tiny
//! `GET /health` HTTP/1.1 server and SIGTERM/SIGINT handling on a std thread.
//!
//! It must stay std-only (plus `signal-hook`): no tokio, nothing that slows start-up, and it
//! must never panic on bad input from the environment (report and exit instead).

// Each binary includes this module with `#[path]` and uses only part of it.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use signal_hook::consts::signal::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How long one health connection may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request head accepted (request line plus headers).
const MAX_HEAD: usize = 8 * 1024;

/// What the launcher tells a pattern process through its environment (SPEC section 5).
pub struct PatternEnv {
    pub pattern_name: String,
    pub namespace: String,
    pub process_id: String,
    /// Raw `HEALTH_PORT`, validated by [`health_port`] when the binary needs it.
    health_port: Option<String>,
}

impl PatternEnv {
    /// Reads the environment; `default_name` is used when `PATTERN_NAME` is unset.
    pub fn read(default_name: &str) -> Self {
        let var = |key: &str| std::env::var_os(key).map(|v| v.to_string_lossy().into_owned());
        PatternEnv {
            pattern_name: var("PATTERN_NAME")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default_name.to_string()),
            namespace: var("NAMESPACE").unwrap_or_default(),
            process_id: var("PROCESS_ID").unwrap_or_default(),
            health_port: var("HEALTH_PORT"),
        }
    }

    /// The validated `HEALTH_PORT`; prints an error to stderr and exits 1 if it is missing or bad.
    pub fn health_port(&self) -> u16 {
        let Some(raw) = self.health_port.as_deref() else {
            fail(1, &format!("{}: HEALTH_PORT is not set", self.pattern_name));
        };
        match raw.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => fail(
                1,
                &format!("{}: bad HEALTH_PORT value {raw:?}", self.pattern_name),
            ),
        }
    }
}

/// Writes one line to stdout and flushes it. Write errors (closed pipe) are ignored.
pub fn log(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Writes one line to stderr (unbuffered).
pub fn log_err(line: &str) {
    let _ = writeln!(io::stderr().lock(), "{line}");
}

/// Prints `message` to stderr and exits with `code`.
pub fn fail(code: i32, message: &str) -> ! {
    log_err(message);
    process::exit(code)
}

/// Status code and body of a `/health` answer.
pub type HealthFn = dyn Fn() -> (u16, String) + Send + Sync;

/// Binds `127.0.0.1:port` and serves `GET /health` (answered by `health`) on a background
/// thread; any other path is 404. Exits 1 (message on stderr) if the port cannot be bound.
/// The listening socket is close-on-exec (std default), so children never inherit it.
pub fn start_health_server<F>(name: &str, port: u16, health: F)
where
    F: Fn() -> (u16, String) + Send + Sync + 'static,
{
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(err) => fail(
            1,
            &format!("{name}: cannot bind health port 127.0.0.1:{port}: {err}"),
        ),
    };
    let health: Arc<HealthFn> = Arc::new(health);
    let spawned = thread::Builder::new()
        .name("health".into())
        .spawn(move || accept_loop(listener, health));
    if let Err(err) = spawned {
        fail(1, &format!("{name}: cannot start health thread: {err}"));
    }
}

fn accept_loop(listener: TcpListener, health: Arc<HealthFn>) {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let health = Arc::clone(&health);
        // One short-lived thread per connection, so a silent client cannot block the probes.
        // If the thread cannot be created the connection is simply dropped.
        let _ = thread::Builder::new()
            .name("health-conn".into())
            .spawn(move || handle_connection(stream, &*health));
    }
}

fn handle_connection(mut stream: TcpStream, health: &HealthFn) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let mut request_line = head.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("");
    let target = request_line.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET" | "HEAD", "/health") => health(),
        (_, "/health") => (405, "method not allowed\n".to_string()),
        _ => (404, "not found\n".to_string()),
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads up to the end of the request head (`\r\n\r\n`, or a bare `\n\n`).
/// `None` if the client closes, times out or sends an oversized head.
fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Calls `handler` with each SIGTERM / SIGINT on a dedicated thread. Exits 1 if the
/// handlers cannot be installed.
pub fn on_signals<F>(name: &str, mut handler: F)
where
    F: FnMut(i32) + Send + 'static,
{
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(signals) => signals,
        Err(err) => fail(1, &format!("{name}: cannot install signal handlers: {err}")),
    };
    let spawned = thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                handler(signal);
            }
        });
    if let Err(err) = spawned {
        fail(1, &format!("{name}: cannot start signal thread: {err}"));
    }
}

/// `SIGTERM` / `SIGINT` as text.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "signal",
    }
}

/// The usual reaction: log `<name> received SIGTERM, shutting down` (or SIGINT) and exit 0.
pub fn exit_on_signals(name: &str) {
    let owned = name.to_string();
    on_signals(name, move |signal| {
        log(&format!(
            "{owned} received {}, shutting down",
            signal_name(signal)
        ));
        process::exit(0);
    });
}

/// Blocks the calling thread forever.
pub fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
