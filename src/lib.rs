//! prism-launcher: a local, Kubernetes-style reconciling controller for
//! pattern processes.
//!
//! # Theory of operation
//!
//! Sources (gRPC calls, and later `desired/` files) write one desired set.
//! The controller task owns that set, the pattern catalog and the observed
//! process table. Each pass of its loop asks the pure planner
//! ([`reconcile::plan`]) what to do, carries the actions out (spawn,
//! signal, forget), and publishes a snapshot on a `watch` channel. Process
//! supervisors report exits and probe results back as events. The gRPC
//! service only sends commands and waits on snapshots.

pub mod api;
pub mod catalog;
pub mod desired;
pub mod reconcile;
pub mod runtime;
pub mod spec;
pub mod state_file;
pub mod watch;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;

use crate::catalog::{Catalog, DiscoveryError};
use crate::reconcile::PlanConfig;
use crate::runtime::cgroup::Cgroups;
use crate::runtime::controller::{Command, Controller, ControllerConfig, Watchers};

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

/// Accepted connections with Nagle's algorithm off: small replies must not
/// wait for the client's delayed ACK (tonic only does this for listeners
/// it binds itself).
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        // Only latency is at stake: a socket that refuses still serves.
        let _ = conn.set_nodelay(true);
        Ok(conn)
    })
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

/// How long calls in flight may take to finish once shutdown begins.
const DRAIN: Duration = Duration::from_secs(2);

/// The outcome of the server task.
fn flatten(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), LaunchError> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(LaunchError::Serve(e.to_string())),
        Err(e) => Err(LaunchError::Serve(e.to_string())),
    }
}

/// What can stop the launcher from starting.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The controller could not be set up.
    #[error(transparent)]
    Setup(#[from] runtime::controller::SetupError),
    /// A directory cannot be created.
    #[error("cannot create {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The gRPC port cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The server failed.
    #[error("gRPC server: {0}")]
    Serve(String),
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
    log_max_bytes: u64,
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
    /// `--log-max-bytes`: the size at which an instance's log is rotated.
    pub fn log_max_bytes(mut self, bytes: u64) -> Self {
        self.0.log_max_bytes = bytes;
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
            log_max_bytes: runtime::logs::DEFAULT_MAX_LOG_BYTES,
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
        for dir in [&self.desired_dir, &self.state_dir] {
            std::fs::create_dir_all(dir).map_err(|source| LaunchError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        // Watch first, so that nothing changed during discovery is missed.
        let watchers = Watchers {
            patterns: watch::watch_patterns(self.patterns_dir.clone(), self.rescan),
            desired: watch::watch_desired(self.desired_dir.clone(), self.rescan),
        };
        let (catalog, errors) = Catalog::discover(&self.patterns_dir);
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
        let cgroups = Cgroups::detect(&cgroup_name(&self.state_dir));
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
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| LaunchError::Listen { addr, source })?;

        let (controller, handle) = Controller::new(
            ControllerConfig {
                patterns_dir: self.patterns_dir.clone(),
                state_dir: self.state_dir.clone(),
                port_range: self.port_range.clone(),
                plan: self.plan,
                cgroups,
                orphan_sweep: self.orphan_sweep,
                keep_instances_on_exit: self.keep_instances_on_exit,
                log_max_bytes: self.log_max_bytes,
            },
            catalog,
            errors.iter().map(ToString::to_string).collect(),
            watchers,
        )?;
        let loop_task = tokio::spawn(controller.run());

        let reflection =
            |e: tonic_reflection::server::Error| LaunchError::Reflection(e.to_string());
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
            .set_serving::<proto::pattern_launcher_server::PatternLauncherServer<api::LauncherService>>()
            .await;

        let service = proto::pattern_launcher_server::PatternLauncherServer::new(
            api::LauncherService::new(handle.clone()),
        );
        tracing::info!("Serving gRPC on :{} ({addr})", self.grpc_port);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_service(health_service)
                .serve_with_incoming_shutdown(incoming(listener), async {
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
        tracing::info!("gRPC server stopped; terminating instances");
        let _ = handle.commands.send(Command::Shutdown).await;
        let _ = loop_task.await;
        tracing::info!("controller stopped");
        served
    }
}
