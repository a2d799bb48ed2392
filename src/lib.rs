//! prism-launcher: a local, Kubernetes-style reconciling controller for
//! pattern processes.
//!
//! # Theory of operation
//!
//! Sources (gRPC calls, files in `desired/`) write one desired set.
//! The controller task owns that set, the pattern catalog and the observed
//! process table. Each pass of its loop asks the pure planner
//! ([`reconcile::plan()`]) what to do, carries the actions out (spawn,
//! signal, forget), and publishes a snapshot on a `watch` channel. Process
//! supervisors report exits and probe results back as events. The gRPC
//! service only sends commands and waits on snapshots.
//!
//! # Where to look
//!
//! - [`spec`]: the vocabulary, pure: manifests, instance identity and
//!   specs, validation, quantities, the YAML budgets.
//! - [`sources`]: the input side, as plain data: `desired/` (the file
//!   format and its watcher), `patterns/` (the catalog and its watcher),
//!   the stored API declarations, atomic state files. Reads; decides
//!   nothing.
//! - [`desired`]: the desired set: every instance some source declares,
//!   and who declares it. Pure.
//! - [`reconcile`]: every decision, pure: the planner, (desired, catalog,
//!   observed, now) -> actions; the transitions (what an exit, a probe, a
//!   start or a stop means); the orphan sweep; backoff.
//! - [`controller`]: the reconcile loop and the state it owns; it carries
//!   decisions out through a runtime and publishes snapshots.
//! - [`runtime`]: everything that touches the operating system, behind the
//!   [`runtime::Runtime`] trait: spawn, supervisors (exit, probes), ports,
//!   logs, cgroups, the process table, discovery of running instances.
//! - [`api`]: the gRPC service, wire conversions, the bounded listener
//!   and its transports (TCP, TLS, the Unix socket).
//! - [`authz`]: who may call, what each caller may see and do; the rate
//!   limit.
//! - [`ctl`]: `prism-launcher ctl`, the command-line client of the API.
//! - [`metrics`]: Prometheus metrics and their HTTP listener (with
//!   `/healthz` and `/readyz`); [`service`]: systemd notifications.
//! - this file: [`Launcher`] (settings, start-up, shutdown) and the
//!   generated [`proto`] types; `main.rs` is the command line.

#![deny(unsafe_code)]

pub mod api;
pub mod authz;
pub mod controller;
pub mod ctl;
pub mod desired;
pub mod events;
pub mod metrics;
pub mod reconcile;
pub mod runtime;
pub mod service;
pub mod sources;
pub mod spec;
#[cfg(test)]
mod test_util;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::controller::{Command, Controller, ControllerConfig, Watchers};
use crate::reconcile::PlanConfig;
use crate::runtime::cgroup::Cgroups;
use crate::sources::DiscoveryError;

/// The name of this launcher's parent cgroup: one per state directory, so
/// that a restarted launcher finds its instances and two launchers with
/// different state directories never touch each other's.
fn cgroup_name(state_dir: &std::path::Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    // FNV-1a: stable across builds, unlike std's hasher.
    let hash = abs
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("prism-launcher-{hash:016x}")
}

/// Generated wire types and the descriptor set for reflection.
#[allow(missing_docs, clippy::pedantic)] // generated code
pub mod proto {
    tonic::include_proto!("prism.launcher");

    /// Encoded `FileDescriptorSet` of the launcher's proto, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/launcher_descriptor.bin"));
}

/// Warns when `--port-range` overlaps the kernel's ephemeral port range
/// (unless those ports are reserved): any outgoing connection on the
/// machine, the launcher's own probes included, may then hold a port that
/// an instance is about to bind.
fn warn_if_ephemeral(range: &RangeInclusive<u16>) {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}")).ok();
    let Some((lo, hi)) = read("ip_local_port_range").and_then(|s| {
        let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    }) else {
        return;
    };
    let reserved = read("ip_local_reserved_ports").unwrap_or_default();
    if range.start() <= &hi && &lo <= range.end() && reserved.trim().is_empty() {
        tracing::warn!(
            "--port-range {}-{} overlaps the ephemeral port range {lo}-{hi}: a client connection may take a port an instance is about to bind; reserve the range (sysctl net.ipv4.ip_local_reserved_ports) or choose one below {lo}",
            range.start(),
            range.end()
        );
    }
}

/// Makes a panic anywhere (any thread, any task) end the launcher with
/// status 101 once it is logged. A panicking task would otherwise leave a
/// half-alive launcher: serving calls that no controller answers, with
/// nobody restarting crashed instances. Exiting lets the service manager
/// start it again; the instances keep running and the next launcher adopts
/// them.
pub fn exit_on_panic() {
    let print = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        print(info);
        tracing::error!(
            "internal error, exiting with status 101 (the instances keep running for the next launcher): {info}"
        );
        // Not `process::exit`: other threads keep running during exit
        // handlers, and none of them may act on a broken state.
        // SAFETY: _exit ends the process at once; it touches no Rust state.
        #[allow(unsafe_code)]
        unsafe {
            nix::libc::_exit(101)
        }
    }));
}

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// How long calls in flight may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(2);

/// The outcome of the server task.
fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), LaunchError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LaunchError::Serve(e)),
        Err(e) => Err(LaunchError::ServerTask(e)),
    }
}

/// What can stop the launcher from starting.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The controller could not be set up.
    #[error(transparent)]
    Setup(#[from] controller::SetupError),
    /// A directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The patterns directory cannot be read (a typo in `--patterns-dir`,
    /// or the launcher started in another directory).
    #[error(
        "cannot read the patterns directory {path}: {source} (create it, or name an existing one with --patterns-dir)"
    )]
    PatternsDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The gRPC port cannot be bound.
    #[error(
        "cannot listen on {addr}: {source} (another process holds it? choose one with --grpc-port)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The metrics port cannot be bound.
    #[error(
        "cannot listen on {addr} for metrics: {source} (another process holds it? choose one with --metrics-port, 0 turns metrics off)"
    )]
    MetricsListen {
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The Unix socket or TLS could not be set up, or plain TCP would be
    /// exposed.
    #[error(transparent)]
    Transport(#[from] api::listen::ListenError),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The server failed.
    #[error("gRPC server: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The server's task panicked or was cancelled.
    #[error("gRPC server: {0}")]
    ServerTask(#[source] tokio::task::JoinError),
    /// The `--authz` policy cannot be loaded.
    #[error(transparent)]
    Authz(#[from] authz::AuthzError),
}

/// Settings of a launcher; build with [`Launcher::builder`].
#[derive(Debug, Clone)]
pub struct Launcher {
    patterns_dir: PathBuf,
    desired_dir: PathBuf,
    state_dir: PathBuf,
    listen: IpAddr,
    grpc_port: u16,
    port_range: RangeInclusive<u16>,
    plan: PlanConfig,
    rescan: Duration,
    orphan_sweep: Duration,
    keep_instances_on_exit: bool,
    max_connections: usize,
    log_max_bytes: u64,
    metrics_port: Option<u16>,
    log_keep: usize,
    transport: api::listen::Transport,
    authz: Option<PathBuf>,
    rate: (u32, u32),
}

/// Builder of a [`Launcher`], with the defaults of SPEC §2.
#[derive(Debug, Clone)]
pub struct LauncherBuilder(Launcher);

impl LauncherBuilder {
    /// `--patterns-dir`.
    pub fn patterns_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.0.patterns_dir = d.into();
        self
    }
    /// `--desired-dir`.
    pub fn desired_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.0.desired_dir = d.into();
        self
    }
    /// `--state-dir`.
    pub fn state_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.0.state_dir = d.into();
        self
    }
    /// `--listen`.
    pub fn listen(mut self, a: IpAddr) -> Self {
        self.0.listen = a;
        self
    }
    /// `--grpc-port`.
    pub fn grpc_port(mut self, p: u16) -> Self {
        self.0.grpc_port = p;
        self
    }
    /// `--port-range`.
    pub fn port_range(mut self, r: RangeInclusive<u16>) -> Self {
        self.0.port_range = r;
        self
    }
    /// `--startup-timeout`.
    pub fn startup_timeout(mut self, d: Duration) -> Self {
        self.0.plan.startup_timeout = d;
        self
    }
    /// `--grace-period` (default grace of graceful stops).
    pub fn default_grace(mut self, d: Duration) -> Self {
        self.0.plan.default_grace = d;
        self
    }
    /// `--rescan-interval`: full rescans of `desired/` and `patterns/`
    /// that repair whatever a lost file event missed.
    pub fn rescan_interval(mut self, d: Duration) -> Self {
        self.0.rescan = d;
        self
    }
    /// `--no-rolling-restart` when false.
    pub fn rolling_restart(mut self, on: bool) -> Self {
        self.0.plan.rolling_restart = on;
        self
    }
    /// `--orphan-sweep-interval`.
    pub fn orphan_sweep(mut self, d: Duration) -> Self {
        self.0.orphan_sweep = d;
        self
    }
    /// `--keep-instances-on-exit`.
    pub fn keep_instances_on_exit(mut self, on: bool) -> Self {
        self.0.keep_instances_on_exit = on;
        self
    }
    /// `--max-connections`: gRPC connections open at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.0.max_connections = n.max(1);
        self
    }
    /// `--log-max-bytes`: the size at which an instance's log is rotated.
    pub fn log_max_bytes(mut self, bytes: u64) -> Self {
        self.0.log_max_bytes = bytes;
        self
    }
    /// `--metrics-port`: `Some(0)` turns metrics off; `None` is the
    /// default port, [`metrics::DEFAULT_METRICS_PORT`], where a port in use
    /// is only a warning (an explicit port in use stops the start).
    pub fn metrics_port(mut self, port: Option<u16>) -> Self {
        self.0.metrics_port = port;
        self
    }
    /// `--log-keep`: rotated generations of an instance's log kept.
    pub fn log_keep(mut self, n: usize) -> Self {
        self.0.log_keep = n.clamp(1, runtime::logs::MAX_LOG_KEEP);
        self
    }
    /// `--unix-socket`, `--socket-group`, `--tls-*`, `--insecure-listen`,
    /// `--max-concurrent-streams`, `--call-timeout`.
    pub fn transport(mut self, t: api::listen::Transport) -> Self {
        self.0.transport = t;
        self
    }
    /// `--authz`: the policy file; `None`: the defaults.
    pub fn authz(mut self, file: Option<PathBuf>) -> Self {
        self.0.authz = file;
        self
    }
    /// `--rate-limit` and `--rate-burst`: mutating calls a second and at
    /// once, per caller; 0 calls a second: no limit.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.0.rate = (per_second, burst);
        self
    }
    /// The launcher.
    pub fn build(self) -> Launcher {
        self.0
    }
}

impl Launcher {
    /// A builder with the defaults.
    pub fn builder() -> LauncherBuilder {
        LauncherBuilder(Launcher {
            patterns_dir: PathBuf::from("./patterns"),
            desired_dir: PathBuf::from("./desired"),
            state_dir: PathBuf::from("./.prism"),
            listen: IpAddr::from([127, 0, 0, 1]),
            grpc_port: 8080,
            port_range: 50051..=59999,
            plan: PlanConfig::default(),
            rescan: Duration::from_secs(10),
            orphan_sweep: Duration::from_secs(60),
            keep_instances_on_exit: false,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            log_max_bytes: runtime::logs::DEFAULT_MAX_LOG_BYTES,
            metrics_port: None,
            log_keep: runtime::logs::DEFAULT_LOG_KEEP,
            transport: api::listen::Transport::default(),
            authz: None,
            rate: (authz::rate::DEFAULT_PER_SECOND, authz::rate::DEFAULT_BURST),
        })
    }

    /// Runs until `shutdown` completes, then stops every instance and
    /// returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), LaunchError> {
        tracing::info!(
            "Discovering patterns in directory: {}",
            self.patterns_dir.display()
        );
        std::fs::read_dir(&self.patterns_dir).map_err(|source| LaunchError::PatternsDir {
            path: self.patterns_dir.clone(),
            source,
        })?;
        for dir in [&self.desired_dir, &self.state_dir] {
            std::fs::create_dir_all(dir).map_err(|source| LaunchError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        sources::state_file::make_private(&self.state_dir);
        let authz = match &self.authz {
            Some(file) => authz::Authz::watch(file, self.rescan)?,
            None => authz::Authz::defaults(nix::unistd::geteuid().as_raw()),
        };
        let rate = std::num::NonZeroU32::new(self.rate.0).map(|per_second| {
            let burst = std::num::NonZeroU32::new(self.rate.1).unwrap_or(per_second);
            authz::RateLimit::new(per_second, burst)
        });
        // Watch first, so that nothing changed during discovery is missed
        // (the patterns watcher discovers once its watches are set).
        let (found, patterns) = sources::watch_patterns(self.patterns_dir.clone(), self.rescan);
        let watchers = Watchers {
            patterns,
            desired: sources::watch_desired(self.desired_dir.clone(), self.rescan),
        };
        let (catalog, errors) = (found.catalog, found.errors);
        for e in &errors {
            match e {
                DiscoveryError::Duplicate { .. } => tracing::warn!("{e}"),
                _ => tracing::error!("{e}"),
            }
        }
        for p in catalog.iter() {
            tracing::info!(
                "Discovered pattern: {} (version: {}, isolation: {})",
                p.name,
                p.version,
                p.isolation
            );
        }
        warn_if_ephemeral(&self.port_range);
        let launcher_id = cgroup_name(&self.state_dir);
        let cgroups = Cgroups::detect(&launcher_id);
        if cgroups.enforced() {
            tracing::info!("resource limits and process trees: {}", cgroups.describe());
        } else {
            tracing::warn!(
                "resource limits are NOT enforced and process trees are tracked by process group only: {}",
                cgroups.describe()
            );
        }
        tracing::info!(
            "Pattern launcher service created with {} patterns",
            catalog.len()
        );

        let addr = SocketAddr::new(self.listen, self.grpc_port);
        api::listen::check_exposure(addr, &self.transport)?;
        api::listen::warn_if_calls_outlast(
            &self.transport,
            self.plan.startup_timeout,
            self.plan.default_grace,
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LaunchError::Listen { addr, source })?;
        let metrics_listener = self.bind_metrics().await?;
        let metrics = metrics::Metrics::new();
        let notifier = service::Notifier::from_env();
        let opened = api::listen::open(&self.transport)?;
        let (unix, socket_file) = opened.unix.unzip();

        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let rt = runtime::linux::LinuxRuntime::new(
            &self.state_dir,
            cgroups,
            launcher_id,
            self.log_max_bytes,
            self.log_keep,
            events_tx,
        )
        .map_err(controller::SetupError::from)?;
        let log_files = rt.log_files();
        let (controller, handle) = Controller::new(
            ControllerConfig {
                patterns_dir: self.patterns_dir.clone(),
                port_range: self.port_range.clone(),
                plan: self.plan,
                orphan_sweep: self.orphan_sweep,
                keep_instances_on_exit: self.keep_instances_on_exit,
                events: events::EventLog::new(events::revision::Revisions::open(&self.state_dir)),
                metrics: metrics.clone(),
                notifier: notifier.clone(),
            },
            catalog,
            errors.iter().map(ToString::to_string).collect(),
            watchers,
            rt,
            events,
        )?;
        let loop_task = tokio::spawn(controller.run());
        let metrics_task =
            metrics_listener.map(|l| metrics::server::spawn(l, metrics, handle.clone()));
        let status_task = service::spawn_status(notifier.clone(), handle.snapshots.clone());

        let reflection = LaunchError::Reflection;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(reflection)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(reflection)?;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<proto::pattern_launcher_server::PatternLauncherServer<api::gate::Gate>>()
            .await;

        let service = proto::pattern_launcher_server::PatternLauncherServer::new(
            api::gate::Gate::new(
                api::LauncherService::new(handle.clone()).with_logs(log_files),
                authz,
            )
            .rate_limit(rate),
        );
        tracing::info!(
            "Serving gRPC on :{} ({addr}){}",
            self.grpc_port,
            api::listen::describe_tcp(&self.transport)
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = api::incoming::bounded(
            listener,
            unix,
            opened.tls,
            self.max_connections,
            handle.snapshots.clone(),
        );
        let mut server = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(api::conn::KEEPALIVE_INTERVAL))
                .http2_keepalive_timeout(Some(api::conn::KEEPALIVE_TIMEOUT))
                .max_concurrent_streams(self.transport.max_concurrent_streams)
                .timeout(self.transport.call_timeout)
                .add_service(service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                }),
        );
        let served = tokio::select! {
            () = shutdown => {
                // Stop accepting; give calls in flight a moment, but never
                // let an idle or stuck client hold the instances hostage.
                let _ = stop_tx.send(());
                match tokio::time::timeout(DRAIN, &mut server).await {
                    Ok(joined) => flatten(joined),
                    Err(_) => {
                        tracing::warn!(
                            "client connections still open after {DRAIN:?}: closing them"
                        );
                        server.abort();
                        Ok(())
                    }
                }
            }
            joined = &mut server => flatten(joined),
        };
        notifier.stopping();
        if let Some(t) = status_task {
            t.abort();
        }
        drop(socket_file);
        tracing::info!("gRPC server stopped; terminating instances");
        let _ = handle.commands.send(Command::Shutdown).await;
        let _ = loop_task.await;
        tracing::info!("controller stopped");
        if let Some(t) = metrics_task {
            t.abort();
        }
        served
    }

    /// The metrics listener, unless `--metrics-port 0`. The default port in
    /// use is a warning (metrics are then off), an explicit one an error.
    async fn bind_metrics(&self) -> Result<Option<tokio::net::TcpListener>, LaunchError> {
        let port = self.metrics_port.unwrap_or(metrics::DEFAULT_METRICS_PORT);
        if port == 0 {
            return Ok(None);
        }
        let addr = SocketAddr::new(self.listen, port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tracing::info!("Serving metrics on http://{addr}/metrics (and /healthz, /readyz)");
                Ok(Some(l))
            }
            Err(source) if self.metrics_port.is_some() => {
                Err(LaunchError::MetricsListen { addr, source })
            }
            Err(e) => {
                tracing::warn!(
                    "metrics are off: cannot listen on {addr}: {e} (choose a port with --metrics-port, or 0 to silence this)"
                );
                Ok(None)
            }
        }
    }
}
