//! `bench-pattern`: the smallest pattern, for `cargo bench --bench lifecycle`.
//!
//! - If `BENCH_SPAWN_LOG` names a file, appends its pid to it first thing
//!   (one `write`, so concurrent instances never interleave), so that a
//!   benchmark can see the moment the process runs.
//! - Binds `127.0.0.1:$HEALTH_PORT` at once and answers `GET /health` with
//!   `200 OK` (anything else `404`), one connection at a time, closing each.
//! - Exits 0 on SIGTERM, at once (SIGINT keeps its default: it ends the
//!   process too).
//!
//! std only (plus signal-hook for the handler), no threads, no runtime:
//! healthy within about a millisecond of its exec, and small enough that a
//! thousand of them cost little.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use signal_hook::consts::signal::SIGTERM;

/// Longest a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

fn die(code: i32, msg: &str) -> ! {
    eprintln!("bench-pattern: {msg}");
    std::process::exit(code);
}

fn main() {
    // SAFETY: the action only calls `_exit`, which is async-signal-safe.
    let handler =
        unsafe { signal_hook::low_level::register(SIGTERM, || signal_hook::low_level::exit(0)) };
    if let Err(e) = handler {
        die(1, &format!("cannot handle SIGTERM: {e}"));
    }
    if let Some(path) = std::env::var_os("BENCH_SPAWN_LOG") {
        let line = format!("{}\n", std::process::id());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            die(
                1,
                &format!("cannot append to {}: {e}", path.to_string_lossy()),
            );
        }
    }
    let port: u16 = match std::env::var("HEALTH_PORT") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| die(2, &format!("HEALTH_PORT={v:?} is not a port"))),
        Err(_) => die(2, "HEALTH_PORT is not set"),
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| die(1, &format!("cannot bind 127.0.0.1:{port}: {e}")));
    // A failed accept (a client that gave up) changes nothing.
    for stream in listener.incoming().flatten() {
        serve(stream);
    }
}

/// Reads one request (its head: a GET has no body) and answers it.
fn serve(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut buf = [0u8; 2048];
    let mut len = 0;
    loop {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
            break;
        }
    }
    let head = &buf[..len];
    let health = head.starts_with(b"GET /health ") || head.starts_with(b"GET /health?");
    let reply: &[u8] = if health {
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nOK\n"
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n"
    };
    let _ = stream.write_all(reply);
}
