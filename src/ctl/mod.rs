//! `prism-launcher ctl`: the command-line client of a running launcher,
//! through the project's own tonic client.
//!
//! - [`args`]: the command line (clap);
//! - [`connect`]: the connection: TCP, TLS or mTLS, or the Unix socket;
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
mod connect;
pub mod json;
mod render;
pub mod table;

#[cfg(test)]
mod fake_server_tests;

use std::ffi::OsString;
use std::io::Write;

use clap::{CommandFactory, FromArgMatches};
use tonic::transport::Channel;

use self::args::{Command, Ctl};
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
        "cannot connect to the launcher at {addr}: {reason} (is it running there? --addr or PRISM_ADDR names another address, --unix-socket a socket)"
    )]
    Connect {
        /// `--addr` as given, or the `--unix-socket` path.
        addr: String,
        /// The innermost cause (such as "Connection refused").
        reason: String,
    },
    /// A TLS file (`--tls-ca`, `--tls-cert`, `--tls-key`) cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::api::tls::TlsError),
    /// `--tls-ca` has no certificate that can be a trust anchor.
    #[error("--tls-ca {}: no usable CA certificate", .0.display())]
    TlsCa(std::path::PathBuf),
    /// The name to check the launcher's certificate against cannot be one.
    #[error(
        "{0:?} is not a DNS name or IP address to check the launcher's certificate against (name one with --tls-server-name)"
    )]
    ServerName(String),
    /// The connection failed before the server answered.
    #[error(
        "the connection to the launcher failed before it answered ({code:?}): {reason} (a launcher that requires client certificates closes the connection of a client without --tls-cert and --tls-key)"
    )]
    Lost {
        /// The status code the client gave the failure.
        code: tonic::Code,
        /// The innermost cause.
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
        // A status the client made of a failed connection carries that
        // failure as its source; one the server sent carries none.
        let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(&s);
        let mut innermost = None;
        while let Some(c) = cause {
            innermost = Some(c.to_string());
            cause = c.source();
        }
        match innermost {
            Some(reason) => CtlError::Lost {
                code: s.code(),
                reason,
            },
            None => CtlError::Server {
                code: s.code(),
                message: s.message().trim().to_string(),
            },
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
    let ctl = match matches
        .and_then(|m| Ctl::from_arg_matches(&m))
        .and_then(|c| c.check().map(|()| c))
    {
        Ok(ctl) => ctl,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let mut out = std::io::stdout();
    let done = match ctl.command {
        Command::Completion { shell } => completion(shell, server, &mut out),
        _ => match connect::connect(&ctl).await {
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
