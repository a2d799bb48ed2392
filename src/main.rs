//! The `prism-launcher` binary: parses flags, sets up logging and signal
//! handling, and runs the library's [`Launcher`].

use std::io::IsTerminal;
use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use prism_launcher::Launcher;
use tokio::signal::unix::{SignalKind, signal};

/// A local reconciling launcher for pattern processes.
#[derive(Debug, Parser)]
#[command(
    name = "prism-launcher",
    version,
    args_override_self = true,
    after_help = "Client of a running launcher: prism-launcher ctl --help"
)]
struct Flags {
    /// One sub-directory per pattern, each with manifest.yaml.
    #[arg(long, default_value = "./patterns")]
    patterns_dir: PathBuf,
    /// Desired-state files (*.yaml, *.yml); created if missing.
    #[arg(long, default_value = "./desired")]
    desired_dir: PathBuf,
    /// API-declared instances, per-instance logs.
    #[arg(long, default_value = "./.prism")]
    state_dir: PathBuf,
    /// gRPC listen port.
    #[arg(long, default_value_t = 8080)]
    grpc_port: u16,
    /// Listen address. Beyond loopback it needs TLS (--tls-cert) or
    /// --insecure-listen.
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Ports handed to instances, as A-B.
    #[arg(long, default_value = "50051-59999", value_parser = parse_range)]
    port_range: RangeInclusive<u16>,
    /// How long an instance may take to become healthy.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    startup_timeout: Duration,
    /// Grace period of a graceful stop when neither the call nor the
    /// declaration sets one.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// How often `desired/` and `patterns/` are rescanned in full, to
    /// repair anything a lost file event missed.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    rescan_interval: Duration,
    /// Restart all instances of a pattern at once when its manifest or
    /// executable changes, instead of one at a time.
    #[arg(long)]
    no_rolling_restart: bool,
    /// How often processes that this state directory started and that no
    /// instance owns are looked for (also once at start-up).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    orphan_sweep_interval: Duration,
    /// On SIGTERM/SIGINT, leave the instances running for the next
    /// launcher with the same --state-dir to adopt.
    #[arg(long)]
    keep_instances_on_exit: bool,
    /// gRPC connections open at once. When all are taken, the oldest one
    /// that has not sent its HTTP/2 preface yet is closed for a new one,
    /// else the new one is. Lowered if the open-file limit would not leave
    /// a reserve for the launcher's own use.
    #[arg(long, default_value_t = prism_launcher::DEFAULT_MAX_CONNECTIONS,
          value_parser = positive)]
    max_connections: usize,
    /// Size at which an instance's log file is rotated (copied to
    /// `<file>.1`, then emptied): bytes, or a quantity like 16Mi.
    #[arg(long, default_value = "16Mi", value_parser = parse_log_max)]
    log_max_bytes: u64,
    /// Port of the Prometheus metrics listener (also /healthz, /readyz),
    /// on the --listen address; 0 turns it off. [default: 9464; the
    /// default port in use only turns metrics off, with a warning]
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Format of the launcher's own log on stderr: one JSON object per
    /// line, or text.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Rotated generations of an instance's log kept (`<file>.1` newest
    /// ... `<file>.N`), 1 to 100.
    #[arg(long, default_value_t = prism_launcher::runtime::logs::DEFAULT_LOG_KEEP,
          value_parser = parse_log_keep)]
    log_keep: usize,
    #[command(flatten)]
    transport: prism_launcher::api::listen::TransportFlags,
    /// Authorization policy (YAML): who may call, with which role, in
    /// which namespaces. Reloaded when it changes. Without it: root and
    /// the launcher's user on the Unix socket, anyone on loopback TCP.
    #[arg(long, value_name = "FILE")]
    authz: Option<PathBuf>,
    /// Mutating calls a second allowed to each caller (0: no limit).
    #[arg(long, default_value_t = prism_launcher::authz::rate::DEFAULT_PER_SECOND)]
    rate_limit: u32,
    /// Mutating calls each caller may make at once, above the rate.
    #[arg(long, default_value_t = prism_launcher::authz::rate::DEFAULT_BURST, value_parser = positive_u32)]
    rate_burst: u32,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn positive_u32(s: &str) -> Result<u32, String> {
    positive(s).and_then(|n| u32::try_from(n).map_err(|e| format!("{s:?}: {e}")))
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

fn parse_log_max(s: &str) -> Result<u64, String> {
    use prism_launcher::runtime::logs::MIN_LOG_BYTES;
    let bytes = prism_launcher::spec::quantity::parse_memory(s).map_err(|e| e.to_string())?;
    if bytes < MIN_LOG_BYTES {
        return Err(format!("{s:?}: at least {MIN_LOG_BYTES} bytes (64Ki)"));
    }
    Ok(bytes)
}

fn parse_log_keep(s: &str) -> Result<usize, String> {
    use prism_launcher::runtime::logs::MAX_LOG_KEEP;
    match positive(s)? {
        n if n <= MAX_LOG_KEEP => Ok(n),
        _ => Err(format!("{s:?}: at most {MAX_LOG_KEEP}")),
    }
}

fn parse_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is not a range like 50051-59999"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!("{s:?}: need 0 < A <= B"));
    }
    if u32::from(b) - u32::from(a) < 1 {
        return Err(format!("{s:?}: an instance needs two ports"));
    }
    Ok(a..=b)
}

/// Every instance costs the launcher a few descriptors (pidfd, probe
/// sockets): lift the soft limit on open files to the hard one, as
/// supervisors usually do. Instances get the limits the launcher started
/// with.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limits = getrlimit(Resource::RLIMIT_NOFILE);
    if let Ok((soft, hard)) = limits {
        prism_launcher::runtime::spawn::keep_child_fd_limit(soft, hard);
    }
    match limits {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}

fn main() -> anyhow::Result<()> {
    few_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

/// At most two glibc malloc arenas. glibc gives each thread that allocates
/// under contention an arena of its own and keeps what it freed there;
/// with a thread per concern (the loop's workers, the blocking pool, the
/// log, table and cgroup threads) that was 9 MB of the launcher's 33 MB
/// with 1,000 instances (lifecycle bench: 32.7 MB against 23.9 MB with
/// two arenas). Called before any other thread exists: glibc fixes the
/// limit when it first makes a second arena.
fn few_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a tunable of glibc's allocator; nothing of
    // ours is involved, and no other thread is running yet.
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 2);
    }
}

async fn run() -> anyhow::Result<()> {
    // `prism-launcher ctl ...`: the client, not the launcher.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        let args = std::env::args_os().skip(1);
        std::process::exit(prism_launcher::ctl::main(args, Flags::command()).await);
    }
    let flags = Flags::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // notify warns when the kernel has already dropped the watch of a
    // removed directory: an ordinary part of removing a pattern, not news.
    // Shown again when RUST_LOG names notify.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("notify"))
        && let Ok(quiet) = "notify::inotify=error".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match flags.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => log.json().flatten_event(true).init(),
    }
    prism_launcher::exit_on_panic();
    raise_fd_limit();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    };
    Launcher::builder()
        .patterns_dir(flags.patterns_dir)
        .desired_dir(flags.desired_dir)
        .state_dir(flags.state_dir)
        .listen(flags.listen)
        .grpc_port(flags.grpc_port)
        .port_range(flags.port_range)
        .startup_timeout(flags.startup_timeout)
        .default_grace(flags.grace_period)
        .rescan_interval(flags.rescan_interval)
        .rolling_restart(!flags.no_rolling_restart)
        .orphan_sweep(flags.orphan_sweep_interval)
        .keep_instances_on_exit(flags.keep_instances_on_exit)
        .max_connections(flags.max_connections)
        .log_max_bytes(flags.log_max_bytes)
        .metrics_port(flags.metrics_port)
        .log_keep(flags.log_keep)
        .transport(flags.transport.into())
        .authz(flags.authz)
        .rate_limit(flags.rate_limit, flags.rate_burst)
        .build()
        .run(shutdown)
        .await
        .context("prism-launcher")
}
