//! The controller: the one owner of the desired set, the catalog and the
//! observed table. It runs the reconcile loop:
//!
//! 1. apply what arrived (API commands, process events), recording facts;
//! 2. `plan(desired, catalog, observed, now)`;
//! 3. execute the actions (spawn, signal, forget);
//! 4. publish a snapshot; sleep until the next event or the planner's
//!    wake-up time (at most a second: the resync).
//!
//! Every decision is the planner's; this file carries them out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};

use super::cgroup::{Cgroups, Limits};
use super::logs::{self, LogEcho};
use super::ports::PortAllocator;
use super::snapshot::{InstanceStatus, Snapshot, SourceKind, SourceStatus};
use super::spawn::{self, check_executable, describe_exit, signal_group};
use super::supervise::{Exit, ProbeTarget, ProcEvent, supervise};
use super::table::{self, Entry, ProcessTable};
use crate::catalog::Catalog;
use crate::desired::api_store::ApiStore;
use crate::desired::files::DesiredDoc;
use crate::desired::{Declared, DesiredSet, Source};
use crate::reconcile::observed::{
    ObservedInstance, Phase, ProcessInfo, StopReason, StopRequest, Stopping,
};
use crate::reconcile::{Action, Observed, PlanConfig, plan};
use crate::spec::yaml::YamlError;
use crate::spec::{InstanceKey, InstanceSpec, Isolation};
use crate::watch::FileEvent;

/// Lines of output quoted in an error.
const ERROR_TAIL_LINES: usize = 5;
/// The loop runs at least this often, whatever happens.
const RESYNC: Duration = Duration::from_secs(1);
/// Most commands or events applied before planning again.
const BATCH: usize = 1024;
/// Longest wait for the desired directory's first scan at start-up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how an instance of `pattern` on `ports` is probed.
fn probe_target(
    pattern: &crate::spec::manifest::Pattern,
    ports: crate::reconcile::observed::Ports,
) -> ProbeTarget {
    ProbeTarget {
        url: format!("http://127.0.0.1:{}{}", ports.health, pattern.health.path),
        interval: pattern.health.interval,
        timeout: pattern.health.timeout,
    }
}

/// A LaunchPattern as the controller receives it.
#[derive(Debug, Clone)]
pub struct LaunchParams {
    /// Pattern name.
    pub pattern: String,
    /// Isolation level; `None` is the manifest's.
    pub isolation: Option<Isolation>,
    /// Namespace.
    pub namespace: String,
    /// Session id.
    pub session_id: String,
    /// Extra environment.
    pub config: BTreeMap<String, String>,
    /// Grace period in seconds (0 = default).
    pub grace_period_secs: i64,
}

/// Why a command was refused; the API maps each to a gRPC code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// Unknown pattern or instance.
    #[error("{0}")]
    NotFound(String),
    /// Bad names, missing fields, bad config.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request conflicts with the state of things.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The launcher could not do it (e.g. persisting failed).
    #[error("{0}")]
    Unavailable(String),
}

/// An accepted declaration.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The instance.
    pub process_id: String,
    /// Failed starts counted before this call; a higher count later means
    /// a start failed since.
    pub failed_starts: u64,
}

/// A launch waiting for the API declarations to be persisted.
struct UnsavedLaunch {
    /// The instance.
    process_id: String,
    /// The API's declaration before this launch, when the launch changed
    /// it (restored if it cannot be persisted).
    previous: Option<Option<InstanceSpec>>,
    reply: oneshot::Sender<Result<Accepted, CommandError>>,
    accepted: Accepted,
}

/// Requests to the controller.
#[derive(Debug)]
pub enum Command {
    /// Declare an instance through the API.
    Launch {
        /// The request.
        params: LaunchParams,
        /// The answer.
        reply: oneshot::Sender<Result<Accepted, CommandError>>,
    },
    /// Remove an API declaration and stop the instance.
    Terminate {
        /// Instance.
        process_id: String,
        /// Grace period override.
        grace: Option<Duration>,
        /// SIGKILL at once.
        force: bool,
        /// The answer.
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Stop every instance and end the loop.
    Shutdown,
}

/// Settings of a controller.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// `--patterns-dir`.
    pub patterns_dir: PathBuf,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--port-range`.
    pub port_range: std::ops::RangeInclusive<u16>,
    /// Lifecycle tunables.
    pub plan: PlanConfig,
    /// The containment backend.
    pub cgroups: Cgroups,
    /// How often processes nobody owns are looked for.
    pub orphan_sweep: Duration,
    /// Leave instances running on shutdown, for the next launcher.
    pub keep_instances_on_exit: bool,
    /// `--log-max-bytes`: the size at which an instance's log is rotated.
    pub log_max_bytes: u64,
}

/// Handles to talk to a running controller.
#[derive(Clone)]
pub struct ControllerHandle {
    /// Commands.
    pub commands: mpsc::Sender<Command>,
    /// Snapshots.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Milliseconds since `started` at the last loop pass.
    pub heartbeat: Arc<AtomicU64>,
    /// When the controller started.
    pub started: Instant,
    /// The lifecycle tunables (for timeouts of waiting callers).
    pub plan: PlanConfig,
}

impl ControllerHandle {
    /// How long ago the loop last ran.
    pub fn loop_age(&self) -> Duration {
        let beat = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(beat)
    }
}

/// What the directory watchers send the controller.
pub struct Watchers {
    /// Desired-state file changes.
    pub desired: mpsc::UnboundedReceiver<FileEvent>,
    /// "Look at the patterns directory again."
    pub patterns: mpsc::UnboundedReceiver<()>,
}

/// The reconcile loop and everything it owns.
pub struct Controller {
    watchers: Watchers,
    /// The last content reported of each desired file.
    files: BTreeMap<String, Result<Vec<DesiredDoc>, YamlError>>,
    /// Desired files whose current content is refused.
    file_errors: BTreeMap<String, YamlError>,
    /// Discovery errors last reported (so each is logged once).
    catalog_errors: Vec<String>,
    sources: Arc<Vec<SourceStatus>>,
    sources_dirty: bool,
    cfg: ControllerConfig,
    catalog: Catalog,
    desired: DesiredSet,
    api_store: ApiStore,
    observed: Observed,
    ports: PortAllocator,
    logs_dir: PathBuf,
    echo: LogEcho,
    client: reqwest::Client,
    commands: mpsc::Receiver<Command>,
    events_tx: mpsc::UnboundedSender<ProcEvent>,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    statuses: BTreeMap<String, Arc<InstanceStatus>>,
    dirty: BTreeSet<String>,
    log_offsets: HashMap<String, u64>,
    heartbeat: Arc<AtomicU64>,
    started: Instant,
    next_epoch: u64,
    shutting_down: bool,
    table: ProcessTable,
    table_dirty: bool,
    /// The limits last written into each observed instance's cgroup: a
    /// restart with the same limits leaves the cgroup as it is.
    cgroup_limits: HashMap<String, Limits>,
    /// Launches answered once the API declarations are persisted, which
    /// happens once for all the launches a pass takes in.
    unsaved_launches: Vec<UnsavedLaunch>,
    /// Orphaned cgroups sent SIGTERM, and when they get SIGKILL.
    reaping: Vec<(String, Instant)>,
    next_sweep: Instant,
    /// The desired directory's first scan has been applied.
    synced: bool,
}

/// A controller could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The state directory cannot be created.
    #[error("cannot create {path}: {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The persisted API declarations cannot be read.
    #[error("cannot load API declarations: {0}")]
    Store(crate::desired::api_store::StoreError),
    /// The HTTP client for probes cannot be built.
    #[error("cannot build the probe client: {0}")]
    Client(String),
}

impl Controller {
    /// Sets up a controller with a catalog; loads the API declarations.
    pub fn new(
        cfg: ControllerConfig,
        catalog: Catalog,
        catalog_errors: Vec<String>,
        watchers: Watchers,
    ) -> Result<(Controller, ControllerHandle), SetupError> {
        let logs_dir = cfg.state_dir.join("logs");
        std::fs::create_dir_all(&logs_dir).map_err(|source| SetupError::StateDir {
            path: logs_dir.clone(),
            source,
        })?;
        // inotify reports absolute paths: follow the logs by theirs, or a
        // relative --state-dir (the default) would match no event.
        let logs_dir = std::fs::canonicalize(&logs_dir).map_err(|source| SetupError::StateDir {
            path: logs_dir.clone(),
            source,
        })?;
        let api_store = ApiStore::new(&cfg.state_dir);
        let mut desired = DesiredSet::default();
        for spec in api_store.load().map_err(SetupError::Store)? {
            let id = spec.key.process_id();
            if let Err(e) = desired.declare(Source::Api, spec) {
                tracing::warn!("ignoring stored declaration of {id}: {e}");
            }
        }
        if !desired.is_empty() {
            tracing::info!("restored {} API-declared instances", desired.len());
        }
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        let (cmd_tx, commands) = mpsc::channel(4096);
        let (events_tx, events) = mpsc::unbounded_channel();
        let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let heartbeat = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let handle = ControllerHandle {
            commands: cmd_tx,
            snapshots,
            heartbeat: heartbeat.clone(),
            started,
            plan: cfg.plan,
        };
        let echo = LogEcho::start(&logs_dir, cfg.log_max_bytes);
        let ports = PortAllocator::new(cfg.port_range.clone(), super::ports::os_bindable);
        let table = ProcessTable::new(&cfg.state_dir);
        // A table that cannot be read costs the adoption, not the start:
        // what it recorded is still found in the cgroups and reaped.
        let recorded = table.load().unwrap_or_else(|e| {
            tracing::error!("cannot read the process table, adopting nothing: {e}");
            Vec::new()
        });
        let mut c = Controller {
            watchers,
            files: BTreeMap::new(),
            file_errors: BTreeMap::new(),
            catalog_errors,
            sources: Arc::new(Vec::new()),
            sources_dirty: true,
            cfg,
            catalog,
            desired,
            api_store,
            observed: Observed::new(),
            ports,
            logs_dir,
            echo,
            client,
            commands,
            events_tx,
            events,
            snapshot_tx,
            statuses: BTreeMap::new(),
            dirty: BTreeSet::new(),
            log_offsets: HashMap::new(),
            heartbeat,
            started,
            next_epoch: 1,
            shutting_down: false,
            table,
            table_dirty: true,
            cgroup_limits: HashMap::new(),
            unsaved_launches: Vec::new(),
            reaping: Vec::new(),
            next_sweep: started,
            synced: false,
        };
        c.adopt(recorded);
        Ok((c, handle))
    }

    // ----- containment: adoption, orphans, the process table ------------

    /// Takes over the processes an earlier launcher with this state
    /// directory recorded and that are still alive (pid and start time
    /// match). Whether they are still desired is the planner's to decide,
    /// once the desired directory has been read.
    fn adopt(&mut self, recorded: Vec<Entry>) {
        for e in recorded {
            if !table::is_same_process(e.pid, e.start_time) {
                tracing::info!(
                    "{}: recorded pid {} is gone (or now another process); not touched",
                    e.process_id,
                    e.pid
                );
                continue;
            }
            let fd = match table::pidfd_open(e.pid) {
                Ok(fd) if table::is_same_process(e.pid, e.start_time) => fd,
                Ok(_) => continue,
                Err(err) => {
                    tracing::warn!(
                        "{}: cannot watch pid {}: {err}; not adopted",
                        e.process_id,
                        e.pid
                    );
                    continue;
                }
            };
            let Some(pattern) = self.catalog.get(&e.spec.key.pattern).cloned() else {
                // Without its pattern it can neither be probed nor
                // restarted: the orphan sweep stops it.
                tracing::warn!(
                    "{}: pid {} runs pattern {} which is not in the catalog; not adopted, the orphan sweep stops it",
                    e.process_id,
                    e.pid,
                    e.spec.key.pattern
                );
                continue;
            };
            let ports = e.ports();
            self.ports.hold(ports);
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let mut o = ObservedInstance::new(e.spec.clone(), pattern.clone(), ports);
            o.phase = Phase::Starting;
            o.restart_now = false;
            o.process = Some(ProcessInfo {
                pid: e.pid,
                epoch,
                started_at: Instant::now(),
                start_time: e.start_time,
            });
            o.oom_kills_before = self.cfg.cgroups.oom_kills(&e.process_id);
            o.limits = self.limits_text(&pattern);
            tracing::info!(
                "{}: adopted pid {} from an earlier launcher",
                e.process_id,
                e.pid
            );
            let id: Arc<str> = Arc::from(e.process_id.as_str());
            let log = logs::log_path(&self.logs_dir, &e.process_id);
            self.log_offsets
                .insert(e.process_id.clone(), logs::log_len(&log));
            self.echo.track(log, id.clone());
            tokio::spawn(supervise(
                Exit::Adopted(fd),
                id,
                epoch,
                probe_target(&pattern, ports),
                self.client.clone(),
                self.events_tx.clone(),
            ));
            self.touch(&e.process_id);
            self.observed.insert(e.process_id, o);
        }
    }

    /// Writes the process table when it changed.
    fn save_table(&mut self) {
        if !std::mem::take(&mut self.table_dirty) {
            return;
        }
        let entries: Vec<Entry> = self
            .observed
            .iter()
            .filter_map(|(id, o)| {
                let p = o.process?;
                Some(Entry {
                    process_id: id.clone(),
                    spec: o.spec.clone(),
                    pid: p.pid,
                    start_time: p.start_time,
                    cgroups: self.cfg.cgroups.dirs(id),
                    grpc_port: o.ports.grpc,
                    health_port: o.ports.health,
                })
            })
            .collect();
        if let Err(e) = self.table.save(&entries) {
            tracing::error!("cannot write the process table: {e}");
            self.table_dirty = true;
        }
    }

    /// Finds processes in this launcher's cgroups that no instance owns,
    /// and stops them: SIGTERM now, SIGKILL after the default grace period.
    fn sweep_orphans(&mut self, now: Instant) {
        let grace = self.cfg.plan.default_grace;
        for id in self.cfg.cgroups.instances() {
            let owned = self.observed.get(&id).is_some_and(|o| o.process.is_some());
            if owned || self.reaping.iter().any(|(r, _)| *r == id) {
                continue;
            }
            let pids = self.cfg.cgroups.pids(&id);
            if pids.is_empty() {
                if !self.observed.contains_key(&id)
                    && let Err(e) = self.cfg.cgroups.remove(&id)
                {
                    tracing::debug!("cannot remove the cgroup of {id}: {e}");
                }
                continue;
            }
            tracing::warn!(
                "orphan processes of {id} (pids {pids:?}): no instance owns them; stopping them (grace {grace:?})"
            );
            for pid in pids {
                if let Ok(raw) = i32::try_from(pid)
                    && raw > 1
                {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), Signal::SIGTERM);
                }
            }
            self.reaping.push((id, now + grace));
        }
    }

    fn finish_reaping(&mut self, now: Instant) -> Option<Instant> {
        let cgroups = &self.cfg.cgroups;
        self.reaping.retain(|(id, deadline)| {
            if cgroups.pids(id).is_empty() {
                let _ = cgroups.remove(id);
                tracing::info!("orphan processes of {id} are gone");
                return false;
            }
            if now >= *deadline {
                tracing::warn!("orphan processes of {id} outlived the grace period: SIGKILL");
                let _ = cgroups.kill_all(id);
            }
            true
        });
        self.reaping.iter().map(|(_, d)| *d).min()
    }

    fn limits_text(&self, pattern: &crate::spec::manifest::Pattern) -> String {
        let r = &pattern.resources;
        if r.cpu_limit.is_none() && r.memory_limit.is_none() {
            return "none requested".into();
        }
        let mut parts = Vec::new();
        if let Some(m) = r.memory_limit {
            parts.push(format!("memory {m} bytes"));
        }
        if let Some(c) = r.cpu_limit {
            parts.push(format!("cpu {c} cores"));
        }
        if self.cfg.cgroups.enforced() {
            format!("{} by {}", parts.join(", "), self.cfg.cgroups.describe())
        } else {
            format!(
                "NOT ENFORCED ({}): {}",
                parts.join(", "),
                self.cfg.cgroups.describe()
            )
        }
    }

    /// Runs the loop until a [`Command::Shutdown`] has stopped every
    /// instance (or every command sender is gone).
    pub async fn run(mut self) {
        let empty = DesiredSet::default();
        let mut passes_in_a_row = 0u32;
        self.wait_for_sync().await;
        loop {
            let now = Instant::now();
            self.heartbeat.store(
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            let desired = if self.shutting_down {
                &empty
            } else {
                &self.desired
            };
            if self.shutting_down && self.cfg.keep_instances_on_exit {
                self.save_table();
                tracing::info!(
                    "leaving {} instances running for the next launcher",
                    self.observed
                        .values()
                        .filter(|o| o.process.is_some())
                        .count()
                );
                return;
            }
            let p = plan(desired, &self.catalog, &self.observed, now, &self.cfg.plan);
            let acted = !p.actions.is_empty();
            for action in p.actions {
                self.execute(action, now);
            }
            if now >= self.next_sweep && !self.shutting_down {
                self.sweep_orphans(now);
                self.next_sweep = now + self.cfg.orphan_sweep;
            }
            let reap_at = self.finish_reaping(now);
            self.save_table();
            self.publish();
            if self.shutting_down && self.observed.is_empty() {
                self.cfg.cgroups.remove_parents();
                return;
            }
            // Actions change the state: plan again at once, but never spin.
            passes_in_a_row = if acted { passes_in_a_row + 1 } else { 0 };
            if acted && passes_in_a_row < 8 {
                continue;
            }
            let wake = [
                p.wake_at,
                reap_at,
                Some(self.next_sweep),
                Some(now + RESYNC),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + RESYNC);
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => self.shutting_down = true,
                },
                Some(ev) = self.events.recv() => self.event(ev),
                Some(ev) = self.watchers.desired.recv() => self.file_event(ev),
                Some(()) = self.watchers.patterns.recv() => self.reload_catalog(),
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            for _ in 0..BATCH {
                match self.watchers.desired.try_recv() {
                    Ok(ev) => self.file_event(ev),
                    Err(_) => break,
                }
            }
            if self.watchers.patterns.try_recv().is_ok() {
                while self.watchers.patterns.try_recv().is_ok() {}
                self.reload_catalog();
            }
            for _ in 0..BATCH {
                match self.commands.try_recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            for _ in 0..BATCH {
                match self.events.try_recv() {
                    Ok(ev) => self.event(ev),
                    Err(_) => break,
                }
            }
            self.save_launches();
        }
    }

    /// Applies the desired directory's first scan before anything is
    /// planned: an adopted instance declared by a file must not look
    /// undesired for the moment before the file is read. Commands wait.
    async fn wait_for_sync(&mut self) {
        let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
        while !self.synced {
            tokio::select! {
                ev = self.watchers.desired.recv() => match ev {
                    Some(ev) => self.file_event(ev),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!("the desired directory was not read within {SYNC_TIMEOUT:?}; going on");
                    break;
                }
            }
        }
        self.synced = true;
        self.share_adopted_configs();
    }

    /// An adopted instance's spec was read from the process table, so its
    /// config is a copy of the declaration's: share the declaration's, which
    /// keeps the planner's per-pass comparison a pointer check.
    fn share_adopted_configs(&mut self) {
        for (id, o) in &mut self.observed {
            if let Some(d) = self.desired.get(id)
                && d.spec().config == o.spec.config
            {
                o.spec.config = d.spec().config.clone();
            }
        }
    }

    fn touch(&mut self, id: &str) {
        if !self.dirty.contains(id) {
            self.dirty.insert(id.to_string());
        }
    }

    fn publish(&mut self) {
        if self.dirty.is_empty() && !self.sources_dirty {
            return;
        }
        if std::mem::take(&mut self.sources_dirty) {
            self.sources = Arc::new(self.source_statuses());
        }
        for id in std::mem::take(&mut self.dirty) {
            match self.observed.get(&id) {
                Some(o) => {
                    let source = self
                        .desired
                        .get(&id)
                        .map(|d| d.sources_text())
                        .unwrap_or_default();
                    self.statuses
                        .insert(id.clone(), Arc::new(InstanceStatus::of(&id, o, source)));
                }
                None => {
                    self.statuses.remove(&id);
                }
            }
        }
        self.snapshot_tx.send_replace(Arc::new(Snapshot {
            instances: self.statuses.clone(),
            sources: self.sources.clone(),
        }));
    }

    fn source_statuses(&self) -> Vec<SourceStatus> {
        // One walk over the desired set, not one per file.
        let mut by_file: HashMap<&str, Vec<String>> = HashMap::new();
        for (id, d) in self.desired.iter() {
            for source in d.sources() {
                if let Source::File(name) = source {
                    by_file.entry(name.as_str()).or_default().push(id.clone());
                }
            }
        }
        let mut v: Vec<SourceStatus> = self
            .files
            .keys()
            .map(|name| SourceStatus {
                kind: SourceKind::Desired,
                path: Source::File(name.clone()).to_string(),
                error: self.file_errors.get(name).cloned(),
                process_ids: by_file.remove(name.as_str()).unwrap_or_default(),
                pattern: String::new(),
            })
            .collect();
        v.extend(self.catalog.manifests().iter().map(|m| SourceStatus {
            kind: SourceKind::Manifest,
            path: m.path.clone(),
            error: m.error.clone(),
            process_ids: Vec::new(),
            pattern: m.pattern.clone().unwrap_or_default(),
        }));
        v
    }

    // ----- desired files and the catalog --------------------------------

    fn file_event(&mut self, ev: FileEvent) {
        match ev {
            FileEvent::Changed { name, result } => {
                // Errors name the file as users know it: desired/<name>.
                let result = result.map_err(|mut e| {
                    e.file = Source::File(name.clone()).to_string();
                    e
                });
                self.files.insert(name.clone(), result);
                self.apply_file(&name);
            }
            FileEvent::Synced => self.synced = true,
            FileEvent::Removed { name } => {
                self.files.remove(&name);
                self.file_errors.remove(&name);
                let source = Source::File(name);
                // Withdrawing everything cannot conflict.
                let touched = self
                    .desired
                    .replace_source(&source, &[])
                    .unwrap_or_default();
                tracing::info!(
                    "{source} removed: {} instances no longer declared by it",
                    touched.len()
                );
                for id in touched {
                    self.touch(&id);
                }
                self.sources_dirty = true;
            }
        }
    }

    /// Makes the desired set hold what file `name` declares now, or, when
    /// its content is refused, keeps what it declared before.
    fn apply_file(&mut self, name: &str) {
        let source = Source::File(name.to_string());
        let shown = source.to_string();
        let outcome = match self.files.get(name) {
            Some(Ok(docs)) => self.specs_of(&shown, docs),
            Some(Err(e)) => Err(e.clone()),
            None => return,
        }
        .and_then(|(specs, lines)| {
            self.desired
                .replace_source(&source, &specs)
                .map_err(|(i, conflict)| YamlError {
                    file: shown.clone(),
                    line: lines.get(i).copied(),
                    message: conflict.to_string(),
                })
        });
        self.sources_dirty = true;
        match outcome {
            Ok(touched) => {
                let was_refused = self.file_errors.remove(name).is_some();
                if was_refused || !touched.is_empty() {
                    tracing::info!(
                        "{shown}: applied, {} instances declared",
                        self.desired.declared_by(&source).len()
                    );
                }
                for id in touched {
                    self.reopen_circuit(&id);
                    self.touch(&id);
                }
            }
            Err(e) => {
                if self.file_errors.get(name) != Some(&e) {
                    tracing::error!("{e} (the file's last good content stays in force)");
                }
                self.file_errors.insert(name.to_string(), e);
            }
        }
    }

    /// Turns a file's documents into specs, checking them against the
    /// catalog; also returns each spec's line.
    fn specs_of(
        &self,
        display: &str,
        docs: &[DesiredDoc],
    ) -> Result<(Vec<InstanceSpec>, Vec<u64>), YamlError> {
        let at = |line: u64, message: String| YamlError {
            file: display.to_string(),
            line: Some(line),
            message,
        };
        let mut specs = Vec::with_capacity(docs.len());
        let mut lines = Vec::with_capacity(docs.len());
        let mut seen: HashMap<String, u64> = HashMap::new();
        for doc in docs {
            let pattern = self
                .catalog
                .get(&doc.pattern)
                .ok_or_else(|| at(doc.line, format!("unknown pattern {:?}", doc.pattern)))?;
            let key = doc
                .key(pattern.isolation)
                .map_err(|e| at(doc.line, e.to_string()))?;
            let spec = InstanceSpec::new(key, doc.config.clone(), doc.grace_period)
                .map_err(|e| at(doc.line, e.to_string()))?;
            let id = spec.key.process_id();
            if let Some(first) = seen.insert(id.clone(), doc.line) {
                return Err(at(
                    doc.line,
                    format!("{id} is declared twice in this file (first at line {first})"),
                ));
            }
            specs.push(spec);
            lines.push(doc.line);
        }
        Ok((specs, lines))
    }

    /// A circuit-broken instance whose declaration changed starts again.
    fn reopen_circuit(&mut self, id: &str) {
        if let Some(o) = self.observed.get_mut(id)
            && o.phase == Phase::Failed
            && self.desired.get(id).is_some()
        {
            tracing::info!("{id}: declaration changed, circuit closed");
            o.phase = Phase::Exited;
            o.consecutive_failures = 0;
            o.restart_now = true;
        }
    }

    fn reload_catalog(&mut self) {
        let (next, errors) = self.catalog.reload(&self.cfg.patterns_dir);
        for p in next.iter() {
            match self.catalog.get(&p.name) {
                None => tracing::info!(
                    "Discovered pattern: {} (version: {}, isolation: {})",
                    p.name,
                    p.version,
                    p.isolation
                ),
                Some(old) if **old != **p => tracing::info!(
                    "pattern {} changed (version: {}): its instances restart{}",
                    p.name,
                    p.version,
                    if self.cfg.plan.rolling_restart {
                        " one at a time"
                    } else {
                        ""
                    }
                ),
                Some(_) => {}
            }
        }
        for old in self.catalog.iter() {
            if next.get(&old.name).is_none() {
                let running = self
                    .observed
                    .values()
                    .filter(|o| o.spec.key.pattern == old.name)
                    .count();
                tracing::warn!(
                    "pattern {} removed: its {running} instances keep running; new launches get NOT_FOUND",
                    old.name
                );
            }
        }
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for e in &errors {
            if !self.catalog_errors.contains(e) {
                tracing::error!("{e}");
            }
        }
        self.catalog_errors = errors;
        self.catalog = next;
        // A file may name a pattern that just appeared, or rely on a
        // manifest's isolation level that just changed.
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            self.apply_file(&name);
        }
        self.sources_dirty = true;
    }

    // ----- commands ---------------------------------------------------

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Launch { params, reply } => match self.launch(params) {
                Ok((accepted, previous)) => {
                    let pending = previous.is_some()
                        || self
                            .unsaved_launches
                            .iter()
                            .any(|u| u.process_id == accepted.process_id);
                    if pending {
                        self.unsaved_launches.push(UnsavedLaunch {
                            process_id: accepted.process_id.clone(),
                            previous,
                            reply,
                            accepted,
                        });
                    } else {
                        let _ = reply.send(Ok(accepted));
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Terminate {
                process_id,
                grace,
                force,
                reply,
            } => {
                let r = self.terminate(&process_id, grace, force);
                let _ = reply.send(r);
            }
            Command::Shutdown => {
                tracing::info!("shutting down: stopping {} instances", self.observed.len());
                self.shutting_down = true;
            }
        }
    }

    /// Declares the instance; also returns the API's previous declaration
    /// when this one changed it (it is not persisted yet: see
    /// [`Controller::save_launches`]).
    #[allow(clippy::type_complexity)]
    fn launch(
        &mut self,
        p: LaunchParams,
    ) -> Result<(Accepted, Option<Option<InstanceSpec>>), CommandError> {
        if self.shutting_down {
            return Err(CommandError::Unavailable(
                "the launcher is shutting down".into(),
            ));
        }
        let Some(pattern) = self.catalog.get(&p.pattern).cloned() else {
            return Err(CommandError::NotFound(format!(
                "pattern {:?} not found (known: {})",
                p.pattern,
                self.catalog
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let invalid = |e: crate::spec::SpecError| CommandError::InvalidArgument(e.to_string());
        let isolation = p.isolation.unwrap_or(pattern.isolation);
        let key = InstanceKey::new(&p.pattern, isolation, &p.namespace, &p.session_id)
            .map_err(invalid)?;
        let grace = crate::spec::grace_from_secs(p.grace_period_secs).map_err(invalid)?;
        let spec = InstanceSpec::new(key, p.config, grace).map_err(invalid)?;
        check_executable(&pattern.executable)
            .map_err(|e| CommandError::FailedPrecondition(format!("cannot execute {e}")))?;
        let id = spec.key.process_id();
        let previous = self
            .desired
            .get(&id)
            .and_then(|d| d.spec_of(&Source::Api))
            .cloned();
        let declared = self
            .desired
            .declare(Source::Api, spec)
            .map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
        // A launch of a running instance changes nothing: no new snapshot.
        let mut changed = declared != Declared::Unchanged;
        let mut failed_starts = 0;
        if let Some(o) = self.observed.get_mut(&id) {
            failed_starts = o.failed_starts;
            if o.phase == Phase::Failed {
                // Launching a circuit-broken instance closes the circuit.
                tracing::info!("{id}: launched again, circuit closed");
                o.phase = Phase::Exited;
                o.consecutive_failures = 0;
                o.restart_now = true;
                changed = true;
            }
        }
        if changed {
            self.touch(&id);
        }
        let previous = (declared != Declared::Unchanged).then_some(previous);
        Ok((
            Accepted {
                process_id: id,
                failed_starts,
            },
            previous,
        ))
    }

    /// Persists the API declarations once for every launch taken in since
    /// the last pass, then answers them; when the write fails, their
    /// declarations are taken back (latest first) and they are refused.
    fn save_launches(&mut self) {
        if self.unsaved_launches.is_empty() {
            return;
        }
        let launches = std::mem::take(&mut self.unsaved_launches);
        match self.persist_api() {
            Ok(()) => {
                for u in launches {
                    let _ = u.reply.send(Ok(u.accepted));
                }
            }
            Err(e) => {
                for u in launches.iter().rev() {
                    if let Some(previous) = &u.previous {
                        self.restore_api(&u.process_id, previous.clone());
                        self.touch(&u.process_id);
                    }
                }
                for u in launches {
                    let _ = u.reply.send(Err(CommandError::Unavailable(e.clone())));
                }
            }
        }
    }

    fn terminate(
        &mut self,
        id: &str,
        grace: Option<Duration>,
        force: bool,
    ) -> Result<(), CommandError> {
        let files = |d: &crate::desired::DesiredInstance| {
            d.sources()
                .filter(|s| **s != Source::Api)
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if let Some(d) = self.desired.get(id) {
            if !d.declared_by(&Source::Api) {
                return Err(CommandError::FailedPrecondition(format!(
                    "{id} is declared by {}: remove it there",
                    files(d)
                )));
            }
            let previous = d.spec_of(&Source::Api).cloned();
            self.desired.withdraw(&Source::Api, id);
            if let Err(e) = self.persist_api() {
                self.restore_api(id, previous);
                return Err(CommandError::Unavailable(e));
            }
            if let Some(d) = self.desired.get(id) {
                let msg = format!(
                    "the API declaration of {id} is removed, but {} still declares it",
                    files(d)
                );
                self.touch(id);
                return Err(CommandError::FailedPrecondition(msg));
            }
        } else if !self.observed.contains_key(id) {
            return Err(CommandError::NotFound(format!("no instance {id:?}")));
        }
        if let Some(o) = self.observed.get_mut(id) {
            o.stop_request = Some(StopRequest { grace, force });
        }
        self.touch(id);
        Ok(())
    }

    /// Puts the API's declaration of `id` back as it was before a change
    /// that could not be persisted.
    fn restore_api(&mut self, id: &str, previous: Option<InstanceSpec>) {
        self.desired.withdraw(&Source::Api, id);
        if let Some(spec) = previous {
            // It was declared before, so it agrees with the other sources.
            let _ = self.desired.declare(Source::Api, spec);
        }
    }

    fn persist_api(&self) -> Result<(), String> {
        self.api_store
            .save(&self.desired.declared_by(&Source::Api))
            .map_err(|e| {
                tracing::error!("cannot persist API declarations: {e}");
                format!("cannot persist the declaration: {e}")
            })
    }

    // ----- events -----------------------------------------------------

    fn current<'a>(
        observed: &'a mut Observed,
        id: &str,
        epoch: u64,
    ) -> Option<&'a mut ObservedInstance> {
        observed
            .get_mut(id)
            .filter(|o| o.process.is_some_and(|p| p.epoch == epoch))
    }

    fn event(&mut self, ev: ProcEvent) {
        let now = Instant::now();
        match ev {
            ProcEvent::Probe {
                process_id,
                epoch,
                ok,
                detail,
            } => {
                let Some(o) = Self::current(&mut self.observed, &process_id, epoch) else {
                    return;
                };
                match (o.phase, ok) {
                    (Phase::Starting, true) => {
                        o.phase = Phase::Running;
                        o.healthy_since = Some(now);
                        o.probe_failures = 0;
                        tracing::info!("{process_id}: healthy");
                    }
                    (Phase::Running, true) => {
                        o.probe_failures = 0;
                        o.healthy_since = Some(now);
                    }
                    (Phase::Running, false) => {
                        o.probe_failures += 1;
                        o.healthy_since = None;
                        tracing::warn!(
                            "{process_id}: health check failed ({}/{}): {detail}",
                            o.probe_failures,
                            o.pattern.health.failure_threshold
                        );
                        o.last_error = Some(format!("health check failed: {detail}"));
                    }
                    _ => return,
                }
                self.touch(&process_id);
            }
            ProcEvent::Exited {
                process_id,
                epoch,
                status,
            } => self.exited(&process_id, epoch, status, now),
        }
    }

    fn exited(
        &mut self,
        id: &str,
        epoch: u64,
        status: Result<std::process::ExitStatus, String>,
        now: Instant,
    ) {
        let oom_now = self.cfg.cgroups.oom_kills(id);
        let cgroups = self.cfg.cgroups.clone();
        let log = logs::log_path(&self.logs_dir, id);
        let offset = self.log_offsets.get(id).copied().unwrap_or(0);
        let Some(o) = Self::current(&mut self.observed, id, epoch) else {
            return;
        };
        let Some(proc_info) = o.process.take() else {
            return;
        };
        // Whatever the main process left behind goes with it: its process
        // group, and everything in its cgroup (setsid, double fork).
        if let Err(e) = signal_group(proc_info.pid, Signal::SIGKILL) {
            tracing::warn!("{id}: cannot kill process group {}: {e}", proc_info.pid);
        }
        let left = cgroups.pids(id);
        if !left.is_empty() {
            tracing::info!("{id}: killing what its main process left behind: {left:?}");
            if let Err(e) = cgroups.kill_all(id) {
                tracing::warn!("{id}: cannot kill what is left in its cgroup: {e}");
            }
        }
        let mut how = match status {
            Ok(s) => describe_exit(s),
            Err(e) => e,
        };
        if oom_now > o.oom_kills_before {
            how = format!(
                "OOM-killed: the kernel killed it for exceeding its memory limit of {} bytes ({how})",
                o.pattern.resources.memory_limit.unwrap_or(0)
            );
            o.oom_kills_before = oom_now;
        }
        let stopping = o.stopping.take();
        o.healthy_since = None;
        o.probe_failures = 0;
        o.exited_at = Some(now);
        o.restart_jitter = rand::random::<f64>();
        o.restart_now = false;
        let was = o.phase;
        match (was, stopping.map(|s| s.reason)) {
            (Phase::Terminating, Some(StopReason::NotDesired)) => {
                tracing::info!("{id}: stopped ({how})");
                o.phase = Phase::Finished;
                o.stop_request = None;
            }
            (Phase::Terminating, Some(StopReason::SpecChanged)) => {
                tracing::info!("{id}: stopped for a restart with a new spec ({how})");
                o.phase = Phase::Exited;
                o.restart_now = true;
            }
            (Phase::Terminating, Some(reason)) => {
                tracing::info!("{id}: stopped after a failure ({how})");
                if reason == StopReason::StartupTimeout {
                    o.failed_starts += 1;
                }
                o.phase = Phase::Exited;
            }
            _ => {
                let tail = logs::tail(&log, offset, ERROR_TAIL_LINES);
                let mut msg = how.clone();
                if !tail.is_empty() {
                    msg.push_str("; last output: ");
                    msg.push_str(&tail.join(" | "));
                }
                o.consecutive_failures += 1;
                if was == Phase::Starting {
                    o.failed_starts += 1;
                }
                tracing::warn!(
                    "{id}: pid {} {} (failure {} in a row)",
                    proc_info.pid,
                    msg,
                    o.consecutive_failures
                );
                o.last_error = Some(msg);
                o.phase = Phase::Exited;
            }
        }
        self.table_dirty = true;
        self.touch(id);
    }

    // ----- actions ----------------------------------------------------

    fn execute(&mut self, action: Action, now: Instant) {
        match action {
            Action::Spawn {
                process_id,
                reset_breaker,
            } => self.spawn(&process_id, reset_breaker, now),
            Action::Stop {
                process_id,
                reason,
                grace,
                force,
            } => self.stop(&process_id, reason, grace, force, now),
            Action::Kill { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    if let Some(s) = o.stopping.as_mut() {
                        s.killed = true;
                    }
                    if let Some(p) = o.process {
                        tracing::warn!("{process_id}: sending SIGKILL to pid {}", p.pid);
                        if let Err(e) = signal_group(p.pid, Signal::SIGKILL) {
                            tracing::error!("{process_id}: SIGKILL failed: {e}");
                        }
                        if let Err(e) = self.cfg.cgroups.kill_all(&process_id) {
                            tracing::error!("{process_id}: cgroup kill failed: {e}");
                        }
                    }
                    self.touch(&process_id);
                }
            }
            Action::BreakCircuit { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    let last = o.last_error.clone().unwrap_or_default();
                    let msg = format!(
                        "circuit open after {} consecutive failures; last: {last}",
                        o.consecutive_failures
                    );
                    tracing::error!("{process_id}: {msg}");
                    o.last_error = Some(msg);
                    o.phase = Phase::Failed;
                    self.touch(&process_id);
                }
            }
            Action::ResetFailures { process_id } => {
                if let Some(o) = self.observed.get_mut(&process_id) {
                    o.consecutive_failures = 0;
                    self.touch(&process_id);
                }
            }
            Action::Forget { process_id } => {
                if let Some(o) = self.observed.remove(&process_id) {
                    self.ports.release(o.ports);
                    self.cgroup_limits.remove(&process_id);
                    if let Err(e) = self.cfg.cgroups.remove(&process_id) {
                        tracing::warn!("{process_id}: cannot remove its cgroup: {e}");
                    }
                    self.table_dirty = true;
                    self.echo
                        .untrack(logs::log_path(&self.logs_dir, &process_id));
                    self.log_offsets.remove(&process_id);
                    self.touch(&process_id);
                }
            }
        }
    }

    fn stop(&mut self, id: &str, reason: StopReason, grace: Duration, force: bool, now: Instant) {
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
        let Some(p) = o.process else {
            return;
        };
        if reason.is_failure() {
            o.consecutive_failures += 1;
            let why = match reason {
                StopReason::StartupTimeout => format!(
                    "not healthy within the start-up timeout of {:?}",
                    o.pattern
                        .health
                        .startup_timeout
                        .unwrap_or(self.cfg.plan.startup_timeout)
                ),
                _ => o
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "health check failed".into()),
            };
            let msg = format!("{why}; restarting");
            tracing::warn!("{id}: {msg}");
            o.last_error = Some(msg);
        }
        let sig = if force {
            Signal::SIGKILL
        } else {
            Signal::SIGTERM
        };
        tracing::info!("{id}: stopping pid {} with {sig} (grace {grace:?})", p.pid);
        if let Err(e) = signal_group(p.pid, sig) {
            tracing::error!("{id}: cannot signal process group {}: {e}", p.pid);
        }
        // Processes that left the group (setsid) are still in the cgroup.
        for pid in self.cfg.cgroups.pids(id) {
            if let Ok(raw) = i32::try_from(pid)
                && raw > 1
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), sig);
            }
        }
        o.phase = Phase::Terminating;
        o.stopping = Some(Stopping {
            reason,
            deadline: now + grace,
            killed: force,
        });
        self.touch(id);
    }

    fn spawn(&mut self, id: &str, reset_breaker: bool, now: Instant) {
        let Some(d) = self.desired.get(id) else {
            return;
        };
        let spec = d.spec().clone();
        let Some(pattern) = self.catalog.get(&spec.key.pattern).cloned() else {
            return;
        };
        if !self.observed.contains_key(id) {
            let ports = match self.ports.assign(pattern.health.port) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("{id}: cannot start: {e}");
                    return;
                }
            };
            self.observed.insert(
                id.to_string(),
                ObservedInstance::new(spec.clone(), pattern.clone(), ports),
            );
        }
        let log = logs::log_path(&self.logs_dir, id);
        let offset = logs::log_len(&log);
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let limits = Limits {
            cpu: pattern.resources.cpu_limit,
            memory: pattern.resources.memory_limit,
        };
        let mut limits_text = self.limits_text(&pattern);
        let known = self.cgroup_limits.get(id) == Some(&limits);
        let oom_before = match self.observed.get(id) {
            // A restart: the cgroup is as this launcher left it, and its
            // OOM-kill count was read when the last process exited.
            Some(o) if known => o.oom_kills_before,
            _ => match self.cfg.cgroups.create(id, limits) {
                Ok(new) => {
                    self.cgroup_limits.insert(id.to_string(), limits);
                    if new {
                        0
                    } else {
                        self.cfg.cgroups.oom_kills(id)
                    }
                }
                Err(e) => {
                    tracing::error!("{id}: cannot set up its cgroup: {e}");
                    limits_text = format!("NOT ENFORCED: cannot set up the cgroup: {e}");
                    self.cfg.cgroups.oom_kills(id)
                }
            },
        };
        let cgroups = self.cfg.cgroups.clone();
        let Some(o) = self.observed.get_mut(id) else {
            return;
        };
        if reset_breaker {
            o.consecutive_failures = 0;
        }
        if o.exited_at.is_some() {
            o.restart_count += 1;
        }
        o.spec = spec;
        o.pattern = pattern.clone();
        o.restart_now = false;
        o.stopping = None;
        o.probe_failures = 0;
        o.healthy_since = None;
        o.oom_kills_before = oom_before;
        let procs = cgroups.procs_files(id);
        match spawn::spawn(id, &o.spec, &pattern, o.ports, &log, &procs) {
            Ok(child) => {
                let pid = child.pid;
                // The child joined its cgroups before exec; when one of its
                // writes failed, move it from here (which says why).
                if !child.joined_cgroups {
                    // Set the cgroup up again at the next start.
                    self.cgroup_limits.remove(id);
                    if let Err(e) = cgroups.add(id, pid) {
                        tracing::error!("{id}: cannot move pid {pid} into its cgroup: {e}");
                        limits_text =
                            format!("NOT ENFORCED: cannot move the process into its cgroup: {e}");
                    }
                }
                o.limits = limits_text;
                tracing::info!(
                    "{id}: started pid {pid} (grpc port {}, health port {})",
                    o.ports.grpc,
                    o.ports.health
                );
                o.phase = Phase::Starting;
                o.process = Some(ProcessInfo {
                    pid,
                    epoch,
                    started_at: now,
                    start_time: table::start_time(pid).unwrap_or(0),
                });
                let pid_key: Arc<str> = Arc::from(id);
                self.log_offsets.insert(id.to_string(), offset);
                self.echo.track(log, pid_key.clone());
                tokio::spawn(supervise(
                    Exit::Child(child.pidfd),
                    pid_key,
                    epoch,
                    probe_target(&pattern, o.ports),
                    self.client.clone(),
                    self.events_tx.clone(),
                ));
            }
            Err(e) => {
                tracing::error!("{id}: {e}");
                o.consecutive_failures += 1;
                o.failed_starts += 1;
                o.last_error = Some(e.to_string());
                o.phase = Phase::Exited;
                o.exited_at = Some(now);
                o.restart_jitter = rand::random::<f64>();
            }
        }
        self.table_dirty = true;
        self.touch(id);
    }
}
