//! The command line of `prism-launcher ctl`: global options, the
//! subcommands and their flags, and the parsers of their values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proto::{IsolationLevel, ProcessState};

/// The launcher's address when neither `--addr` nor `PRISM_ADDR` is given.
pub const DEFAULT_ADDR: &str = "localhost:8080";

/// Talks to a running launcher over its gRPC API.
#[derive(Debug, Parser)]
#[command(name = "ctl", version)]
pub struct Ctl {
    /// The launcher's gRPC address: host:port or http://host:port.
    #[arg(long, global = true, env = "PRISM_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Call the launcher on this Unix socket (its --unix-socket) instead
    /// of --addr.
    #[arg(long, global = true, value_name = "PATH")]
    pub unix_socket: Option<PathBuf>,
    /// TLS to --addr: the CA certificates (PEM) the launcher's certificate
    /// must chain to.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// mTLS: the client certificate (PEM, leaf first), with --tls-key.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the launcher's certificate must carry (default: the host
    /// of --addr).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Output format: human tables, tables with more columns, or the
    /// proto's canonical JSON (one object per line for streams).
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

impl Ctl {
    /// What clap cannot check of global options given on both sides of
    /// the subcommand: the socket excludes TLS; a client certificate needs
    /// its key and a CA, a server name a CA.
    ///
    /// # Errors
    ///
    /// A usage error (exit status 2) naming the flags.
    pub fn check(&self) -> Result<(), clap::Error> {
        let usage = |msg: &str| {
            Err(<Ctl as clap::CommandFactory>::command()
                .error(clap::error::ErrorKind::ArgumentConflict, msg))
        };
        let tls = self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some();
        if self.unix_socket.is_some() && tls {
            return usage("--unix-socket cannot be used with --tls-*: the socket has no TLS");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return usage("--tls-cert and --tls-key go together");
        }
        if tls && self.tls_ca.is_none() {
            return usage("TLS needs --tls-ca: the CA the launcher's certificate chains to");
        }
        Ok(())
    }
}

/// `-o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns, as `kubectl get` prints them.
    Table,
    /// The table with more columns (list, health --processes).
    Wide,
    /// The proto3 JSON mapping, as grpcurl prints it.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lists instances.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Shows everything about one instance: declaration, limits,
    /// conditions, recent events.
    Describe {
        /// The instance's process id.
        id: String,
    },
    /// Declares an instance and waits until it is healthy (or its start
    /// failed, or the start-up timeout passed).
    Launch(LaunchArgs),
    /// Removes an API declaration and waits until the process tree is gone.
    Terminate {
        /// The instance's process id.
        id: String,
        /// Grace period before SIGKILL: seconds, or a duration like 30s or
        /// 2m (default: the instance's own).
        #[arg(long, value_parser = parse_secs)]
        grace: Option<i64>,
        /// SIGKILL at once.
        #[arg(long)]
        force: bool,
    },
    /// Restarts an instance, or every instance of a pattern one by one.
    Restart(RestartArgs),
    /// Sends a signal to an instance's process group.
    Signal {
        /// The instance's process id.
        id: String,
        /// A name (HUP, SIGUSR1, TERM) or a number.
        signal: String,
    },
    /// Prints an instance's output, or several instances' merged.
    Logs(LogsArgs),
    /// Prints what happens, as it happens: the current state, then events.
    Watch(WatchArgs),
    /// Lists the desired-state files and pattern manifests, with errors.
    Sources,
    /// The launcher's health and counts (exits 1 when it is not healthy).
    Health {
        /// Also list every instance.
        #[arg(long)]
        processes: bool,
    },
    /// Prints a shell completion script for prism-launcher.
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only instances of this pattern.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Only instances in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only instances in this state.
    #[arg(long, value_enum)]
    pub state: Option<State>,
}

/// `launch`.
#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The pattern to run.
    pub pattern: String,
    /// The namespace (tenant), for namespace and session isolation.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The session id, for session isolation.
    #[arg(long)]
    pub session: Option<String>,
    /// Isolation level (default: the manifest's).
    #[arg(long, value_enum)]
    pub isolation: Option<Isolation>,
    /// Extra environment for the process, KEY=VALUE (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub config: Vec<(String, String)>,
    /// Grace period when this instance is stopped: seconds, or a duration
    /// like 30s.
    #[arg(long, value_parser = parse_secs)]
    pub grace: Option<i64>,
}

/// `restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// The instance's process id.
    #[arg(required_unless_present = "pattern", conflicts_with = "pattern")]
    pub id: Option<String>,
    /// Every instance of this pattern, one by one.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Grace period of each stop: seconds, or a duration like 30s (default:
    /// each instance's own).
    #[arg(long, value_parser = parse_secs)]
    pub grace: Option<i64>,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The instance's process id.
    #[arg(
        required_unless_present_any = ["pattern", "namespace"],
        conflicts_with_all = ["pattern", "namespace"]
    )]
    pub id: Option<String>,
    /// Every instance of this pattern, merged.
    #[arg(long)]
    pub pattern: Option<String>,
    /// Every instance in this namespace, merged.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Keep printing new lines as they are written.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Lines of history per instance (default 100; -1: all that is kept).
    #[arg(long, allow_negative_numbers = true, value_parser = parse_tail)]
    pub tail: Option<i32>,
    /// Prefix each line with the time it was read.
    #[arg(long)]
    pub timestamps: bool,
}

/// `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Replay every event after this revision, then go live (default: the
    /// current state first).
    #[arg(long, value_name = "REV")]
    pub since: Option<u64>,
    /// Only events of this instance.
    #[arg(long)]
    pub id: Option<String>,
    /// Only events in this namespace.
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only events of this pattern.
    #[arg(long)]
    pub pattern: Option<String>,
}

/// `--isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    None,
    Namespace,
    Session,
}

impl From<Isolation> for IsolationLevel {
    fn from(i: Isolation) -> IsolationLevel {
        match i {
            Isolation::None => IsolationLevel::IsolationNone,
            Isolation::Namespace => IsolationLevel::IsolationNamespace,
            Isolation::Session => IsolationLevel::IsolationSession,
        }
    }
}

/// `--state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum State {
    Starting,
    Running,
    Terminating,
    Terminated,
    Failed,
    Finished,
}

impl From<State> for ProcessState {
    fn from(s: State) -> ProcessState {
        match s {
            State::Starting => ProcessState::StateStarting,
            State::Running => ProcessState::StateRunning,
            State::Terminating => ProcessState::StateTerminating,
            State::Terminated => ProcessState::StateTerminated,
            State::Failed => ProcessState::StateFailed,
            State::Finished => ProcessState::StateFinished,
        }
    }
}

/// Why a value on the command line is refused (clap prints it).
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// `--config` without `=`.
    #[error("{0:?} is not KEY=VALUE")]
    NotKeyValue(String),
    /// `--config =V`.
    #[error("{0:?}: the key is empty")]
    EmptyKey(String),
    /// Neither seconds nor a duration.
    #[error("{0:?} is neither seconds nor a duration like 30s or 2m")]
    NotDuration(String),
    /// A duration with a fraction of a second, or too long.
    #[error("{0:?}: a whole number of seconds is needed")]
    NotWholeSeconds(String),
    /// `--tail` below -1, or not a number.
    #[error("{0:?}: a number of lines (-1 for all) is needed")]
    NotTail(String),
}

/// `KEY=VALUE`.
pub fn parse_kv(s: &str) -> Result<(String, String), ValueError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ValueError::NotKeyValue(s.into()))?;
    if k.is_empty() {
        return Err(ValueError::EmptyKey(s.into()));
    }
    Ok((k.into(), v.into()))
}

/// Seconds (`30`) or a duration (`30s`, `2m`), as whole seconds.
pub fn parse_secs(s: &str) -> Result<i64, ValueError> {
    if let Ok(n) = s.trim().parse::<i64>() {
        return if n >= 0 {
            Ok(n)
        } else {
            Err(ValueError::NotDuration(s.into()))
        };
    }
    let d = humantime::parse_duration(s.trim()).map_err(|_| ValueError::NotDuration(s.into()))?;
    if d.subsec_nanos() != 0 {
        return Err(ValueError::NotWholeSeconds(s.into()));
    }
    i64::try_from(d.as_secs()).map_err(|_| ValueError::NotWholeSeconds(s.into()))
}

/// `--tail`: a count of lines, or -1. 0 would mean the server's default
/// of 100 on the wire, so it is refused rather than misread.
pub fn parse_tail(s: &str) -> Result<i32, ValueError> {
    match s.trim().parse::<i32>() {
        Ok(n) if n == -1 || n > 0 => Ok(n),
        _ => Err(ValueError::NotTail(s.into())),
    }
}

/// The URI of `--addr`: `host:port` gets `http://`; `http://host:port` is
/// taken as it is. None for another scheme (this client speaks plain
/// HTTP/2 only, as the launcher does).
pub fn uri_of(addr: &str) -> Option<String> {
    let addr = addr.trim();
    match addr.split_once("://") {
        Some(("http", rest)) if !rest.is_empty() => Some(addr.to_string()),
        Some(_) => None,
        None if !addr.is_empty() => Some(format!("http://{addr}")),
        None => None,
    }
}

/// How long opening the connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Ctl, clap::Error> {
        let ctl = Ctl::try_parse_from(std::iter::once("ctl").chain(args.iter().copied()))?;
        ctl.check().map(|()| ctl)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Ctl::command().debug_assert();
    }

    #[test]
    fn launch_takes_repeated_config_and_the_other_flags() {
        let c = parse(&[
            "launch",
            "p",
            "--namespace",
            "t",
            "--session",
            "s",
            "--isolation",
            "session",
            "--config",
            "A=1",
            "-c",
            "B=x=y",
            "--grace",
            "2m",
        ])
        .expect("parses");
        let Command::Launch(a) = c.command else {
            panic!("{c:?}")
        };
        assert_eq!(a.pattern, "p");
        assert_eq!(a.namespace.as_deref(), Some("t"));
        assert_eq!(a.session.as_deref(), Some("s"));
        assert_eq!(a.isolation, Some(Isolation::Session));
        assert_eq!(
            a.config,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert_eq!(a.grace, Some(120));
        assert!(parse(&["launch", "p", "--config", "novalue"]).is_err());
        assert!(parse(&["launch", "p", "--config", "=v"]).is_err());
    }

    #[test]
    fn global_options_go_anywhere() {
        let c = parse(&["list", "-o", "json", "--addr", "h:1"]).expect("parses");
        assert_eq!(c.output, Output::Json);
        assert_eq!(c.addr, "h:1");
    }

    #[test]
    fn the_socket_excludes_tls_and_a_client_certificate_needs_its_key_and_a_ca() {
        let c = parse(&["list", "--unix-socket", "/run/p.sock"]).expect("parses");
        assert_eq!(c.unix_socket, Some(PathBuf::from("/run/p.sock")));
        assert!(parse(&["list", "--unix-socket", "s", "--tls-ca", "ca.pem"]).is_err());
        assert!(parse(&["list", "--tls-ca", "ca.pem"]).is_ok());
        assert!(parse(&["list", "--tls-ca", "c", "--tls-cert", "a.pem"]).is_err());
        assert!(parse(&["list", "--tls-cert", "a.pem", "--tls-key", "a.key"]).is_err());
        assert!(parse(&["list", "--tls-key", "a.key"]).is_err());
        assert!(parse(&["list", "--tls-server-name", "h"]).is_err());
        let c = parse(&[
            "--tls-ca",
            "c",
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "a.key",
            "list",
            "--tls-server-name",
            "h",
        ])
        .expect("parses");
        assert_eq!(c.tls_server_name.as_deref(), Some("h"));
    }

    #[test]
    fn restart_needs_an_id_or_a_pattern_but_not_both() {
        assert!(parse(&["restart"]).is_err());
        assert!(parse(&["restart", "x", "--pattern", "p"]).is_err());
        assert!(parse(&["restart", "x"]).is_ok());
        assert!(parse(&["restart", "--pattern", "p"]).is_ok());
    }

    #[test]
    fn logs_needs_an_id_or_filters_and_tail_takes_minus_one() {
        assert!(parse(&["logs"]).is_err());
        assert!(parse(&["logs", "-f"]).is_err());
        assert!(parse(&["logs", "x", "--pattern", "p"]).is_err());
        assert!(parse(&["logs", "--pattern", "p", "-n", "t"]).is_ok());
        let c = parse(&["logs", "x", "-f", "--tail", "-1"]).expect("parses");
        let Command::Logs(a) = c.command else {
            panic!("{c:?}")
        };
        assert!(a.follow);
        assert_eq!(a.tail, Some(-1));
        assert!(parse(&["logs", "x", "--tail", "0"]).is_err());
        assert!(parse(&["logs", "x", "--tail", "-2"]).is_err());
    }

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_secs("30").ok(), Some(30));
        assert_eq!(parse_secs("0").ok(), Some(0));
        assert_eq!(parse_secs("2m").ok(), Some(120));
        assert_eq!(parse_secs("1h 1s").ok(), Some(3601));
        assert!(parse_secs("1.5s").is_err());
        assert!(parse_secs("-3").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn addresses_are_host_port_or_http_uris() {
        assert_eq!(
            uri_of("localhost:8080").as_deref(),
            Some("http://localhost:8080")
        );
        assert_eq!(
            uri_of("http://10.0.0.1:9").as_deref(),
            Some("http://10.0.0.1:9")
        );
        assert_eq!(uri_of(" [::1]:80 ").as_deref(), Some("http://[::1]:80"));
        assert_eq!(uri_of("https://h:1"), None);
        assert_eq!(uri_of("http://"), None);
        assert_eq!(uri_of(""), None);
    }
}
