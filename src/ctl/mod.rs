//! `prism-launcher ctl`: the command-line client of a running launcher,
//! through the project's own tonic client.
//!
//! - [`args`]: the command line (clap);
//! - [`commands`]: one function per subcommand: the call, then the output;
//! - [`render`]: the human output of each reply, pure;
//! - [`table`]: aligned tables, ages and relative times, escaping, pure;
//! - [`json`]: `-o json`, the proto's canonical JSON mapping.
//!
//! Errors print one line on stderr and exit 1: the server's status code
//! and message, or the address that could not be reached. Usage errors
//! exit 2 (clap).

pub mod args;
mod commands;
pub mod json;
mod render;
pub mod table;

#[cfg(test)]
mod fake_server_tests;

use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use tonic::transport::{Channel, Endpoint};

use self::args::{CONNECT_TIMEOUT, Command, Ctl};
use self::json::JsonError;
use crate::proto::pattern_launcher_client::PatternLauncherClient;

/// What can end a `ctl` command with exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// `--addr` is neither `host:port` nor `http://host:port`.
    #[error("--addr {0:?}: expected host:port or http://host:port")]
    Addr(String),
    /// The launcher cannot be reached.
    #[error(
        "cannot connect to the launcher at {addr}: {reason} (is it running there? --addr or PRISM_ADDR names another address)"
    )]
    Connect {
        /// `--addr` as given.
        addr: String,
        /// The innermost cause (such as "Connection refused").
        reason: String,
    },
    /// The server answered with an error status.
    #[error("Error from server ({code:?}): {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// The server replied, and the reply says the request failed (a
    /// launch whose start failed, a terminate or restart that did not
    /// succeed, an unhealthy launcher).
    #[error("{0}")]
    Failed(String),
    /// A reply cannot be printed as JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Standard output cannot be written.
    #[error("cannot write the output: {0}")]
    Write(#[from] std::io::Error),
}

impl From<tonic::Status> for CtlError {
    fn from(s: tonic::Status) -> CtlError {
        CtlError::Server {
            code: s.code(),
            message: s.message().trim().to_string(),
        }
    }
}

/// The gRPC client.
pub type Client = PatternLauncherClient<Channel>;

/// Runs `ctl` with `args` (the first one is `ctl` itself) and returns the
/// exit status. `server` is the launcher's own command line, for the
/// completion scripts.
pub async fn main(args: impl IntoIterator<Item = OsString>, server: clap::Command) -> i32 {
    let matches = Ctl::command()
        .bin_name("prism-launcher ctl")
        .try_get_matches_from(args);
    let ctl = match matches.and_then(|m| Ctl::from_arg_matches(&m)) {
        Ok(ctl) => ctl,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut out = std::io::stdout();
    let done = match ctl.command {
        Command::Completion { shell } => completion(shell, server, &mut out),
        _ => match connect(&ctl.addr).await {
            Ok(mut client) => commands::run(ctl, &mut client, &mut out).await,
            Err(e) => Err(e),
        },
    };
    let done = done.and_then(|()| out.flush().map_err(CtlError::from));
    match done {
        Ok(()) => 0,
        // A reader that went away (`ctl logs x | head`) is not an error.
        Err(CtlError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e @ CtlError::Server { .. }) => {
            eprintln!("{e}");
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// A connection to the launcher at `addr` (`--addr`), opened now so that
/// an unreachable launcher is reported as such.
async fn connect(addr: &str) -> Result<Client, CtlError> {
    let uri = args::uri_of(addr).ok_or_else(|| CtlError::Addr(addr.into()))?;
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|_| CtlError::Addr(addr.into()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint.connect().await.map_err(|e| {
        // The innermost cause says it best ("Connection refused (os
        // error 111)"); the layers above say "transport error".
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        CtlError::Connect {
            addr: addr.into(),
            reason: cause.to_string(),
        }
    })?;
    Ok(PatternLauncherClient::new(channel))
}

/// `completion SHELL`: the script for the whole `prism-launcher` command
/// (the launcher's flags and `ctl`).
fn completion(
    shell: clap_complete::Shell,
    server: clap::Command,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let mut cmd = server
        .name("prism-launcher")
        .subcommand(Ctl::command().name("ctl"));
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "prism-launcher", &mut buf);
    out.write_all(&buf)?;
    Ok(())
}
