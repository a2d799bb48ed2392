//! The controller: the one owner of the desired set, the catalog and the
//! observed table, and the reconcile loop over them ([`Controller::run`]
//! lists its phases).
//!
//! Decisions are made elsewhere, in pure code: what a fact means in
//! [`crate::reconcile::transitions`], what to do in
//! [`crate::reconcile::plan`], what to do with orphans in
//! [`crate::reconcile::orphans`]. Everything that touches the operating
//! system goes through a [`Runtime`]. The files of this module:
//!
//! - `mod.rs`: the state it owns, the loop and its phases, snapshots;
//! - `handle.rs`: commands, answers, settings, the API's handle;
//! - `commands.rs`: launch and terminate;
//! - `files.rs`: desired files and catalog reloads;
//! - `execute.rs`: process events in, planner actions out;
//! - `start.rs`: starts, batched off the loop; cgroup work;
//! - `held.rs`: each instance's runtime state (ports, limits, reaping);
//! - `adopt.rs`: adoption, the orphan sweep, the process table;
//! - `snapshot.rs`: the read-only view the API reads;
//! - `sim_tests.rs`: the loop in simulated time against a fake runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, watch};

mod adopt;
mod commands;
mod execute;
mod files;
mod handle;
mod held;
#[cfg(test)]
mod sim_tests;
pub mod snapshot;
mod start;
mod steer;

use handle::UnsavedLaunch;
pub use handle::{
    Accepted, Command, CommandError, Condition, ControllerConfig, ControllerHandle, DeclaredAt,
    Described, LaunchParams, SetupError, Watchers,
};

use crate::desired::{Declared, DesiredSet, Source};
use crate::reconcile::observed::{ObservedInstance, Phase, ProcessInfo, StopReason, StopRequest};
use crate::reconcile::orphans::{self, CgroupView, OrphanAction};
use crate::reconcile::transitions::{self, ExitFacts, ExitKind, ProbeOutcome, SpawnFault};
use crate::reconcile::{Action, Observed, plan};
use crate::runtime::cgroup::Limits;
use crate::runtime::discover;
use crate::runtime::linux::LinuxRuntime;
use crate::runtime::spawn::describe_exit;
use crate::runtime::supervise::ProcEvent;
use crate::runtime::table::Entry;
use crate::runtime::{CgroupWork, Runtime, StartJob, StartRequest};
use crate::sources::Catalog;
use crate::sources::DesiredDoc;
use crate::sources::FileEvent;
use crate::sources::catalog::watcher::Reloaded;
use crate::spec::InstanceSpec;
use crate::spec::yaml::YamlError;
use held::Held;
use snapshot::{InstanceStatus, Snapshot, SourceKind, SourceStatus};

/// The loop runs at least this often, whatever happens.
const RESYNC: Duration = Duration::from_secs(1);
/// Most commands or events applied before planning again.
const BATCH: usize = 1024;
/// Longest wait for the desired directory's first scan at start-up.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// The reconcile loop and everything it owns; `R` does what touches the
/// operating system.
pub struct Controller<R: Runtime = LinuxRuntime> {
    rt: R,
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
    observed: Observed,
    /// Each instance's runtime state: ports, cgroup limits written, log
    /// offset, reaping, cgroup work queued.
    held: Held,
    /// The starts prepared in this pass, run together after its actions.
    starts: Vec<StartJob>,
    /// Starts left for the next pass, this one's batch being full.
    starts_deferred: bool,
    commands: mpsc::Receiver<Command>,
    events: mpsc::UnboundedReceiver<ProcEvent>,
    snapshot_tx: watch::Sender<Arc<Snapshot>>,
    statuses: BTreeMap<String, Arc<InstanceStatus>>,
    dirty: BTreeSet<String>,
    heartbeat: Arc<AtomicU64>,
    started: Instant,
    next_epoch: u64,
    shutting_down: bool,
    table_dirty: bool,
    /// Launches answered once the API declarations are persisted, which
    /// happens once for all the launches a pass takes in.
    unsaved_launches: Vec<UnsavedLaunch>,
    next_sweep: Instant,
    /// The desired directory's first scan has been applied.
    synced: bool,
    /// Snapshots published so far.
    seq: u64,
    /// The launcher's own problems, by what they concern.
    problems: BTreeMap<&'static str, String>,
    problems_shown: Arc<Vec<String>>,
    problems_dirty: bool,
    /// The process table an earlier launcher left, until adoption.
    recorded: Vec<Entry>,
    /// Events of this pass, appended to the log when it publishes.
    pending_events: Vec<crate::events::NewEvent>,
}

impl<R: Runtime> Controller<R> {
    /// Sets up a controller with a catalog and a runtime that reports on
    /// `events`; loads the API declarations.
    ///
    /// # Errors
    ///
    /// The stored API declarations cannot be read.
    pub fn new(
        cfg: ControllerConfig,
        catalog: Catalog,
        catalog_errors: Vec<String>,
        watchers: Watchers,
        mut rt: R,
        events: mpsc::UnboundedReceiver<ProcEvent>,
    ) -> Result<(Controller<R>, ControllerHandle), SetupError> {
        let mut desired = DesiredSet::default();
        for spec in rt.load_api().map_err(SetupError::Store)? {
            let id = spec.key.process_id();
            if let Err(e) = spec.revalidate() {
                tracing::warn!("ignoring stored declaration of {id}: {e}");
                continue;
            }
            if let Err(e) = desired.declare(Source::Api, spec) {
                tracing::warn!("ignoring stored declaration of {id}: {e}");
            }
        }
        if !desired.is_empty() {
            tracing::info!("restored {} API-declared instances", desired.len());
        }
        let (cmd_tx, commands) = mpsc::channel(4096);
        let (snapshot_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let heartbeat = Arc::new(AtomicU64::new(0));
        let started = rt.now();
        let handle = ControllerHandle {
            commands: cmd_tx,
            snapshots,
            heartbeat: heartbeat.clone(),
            started,
            plan: cfg.plan,
            events: cfg.events.clone(),
        };
        let held = Held::new(cfg.port_range.clone(), rt.port_check());
        let recorded = rt.load_table();
        let c = Controller {
            rt,
            watchers,
            files: BTreeMap::new(),
            file_errors: BTreeMap::new(),
            catalog_errors,
            sources: Arc::new(Vec::new()),
            sources_dirty: true,
            cfg,
            catalog,
            desired,
            observed: Observed::new(),
            held,
            starts: Vec::new(),
            starts_deferred: false,
            commands,
            events,
            snapshot_tx,
            statuses: BTreeMap::new(),
            dirty: BTreeSet::new(),
            heartbeat,
            started,
            next_epoch: 1,
            shutting_down: false,
            table_dirty: true,
            unsaved_launches: Vec::new(),
            next_sweep: started,
            synced: false,
            seq: 0,
            problems: BTreeMap::new(),
            problems_shown: Arc::new(Vec::new()),
            problems_dirty: false,
            recorded,
            pending_events: Vec::new(),
        };
        Ok((c, handle))
    }

    /// Runs the loop until a [`Command::Shutdown`] has stopped every
    /// instance (or every command sender is gone). Each pass runs the
    /// phases in this order:
    ///
    /// 1. **plan**: the pure planner over the whole desired set and
    ///    observed table ([`plan`]);
    /// 2. **execute**: its actions, through the runtime ([`execute`]); the
    ///    starts among them in one batch off the loop, awaited ([`start`]);
    /// 3. **orphans**: the sweep when due, and reaping ([`adopt`]);
    /// 4. **persist**: the process table, when it changed (queued to a
    ///    writer thread);
    /// 5. **publish**: a snapshot for the API;
    /// 6. **ingest**: wait for the next command, process event, file
    ///    event or timer, then take in everything queued (transitions),
    ///    and persist the API declarations of the launches taken in (off
    ///    the loop, awaited).
    pub async fn run(mut self) {
        let mut passes_in_a_row = 0u32;
        self.wait_for_sync().await;
        self.adopt_running();
        loop {
            let now = self.rt.now();
            self.heartbeat.store(
                u64::try_from(now.saturating_duration_since(self.started).as_millis())
                    .unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            self.cfg.notifier.watchdog();
            if self.shutting_down && self.cfg.keep_instances_on_exit {
                self.save_table();
                self.rt.flush().await;
                tracing::info!(
                    "leaving {} instances running for the next launcher",
                    self.observed
                        .values()
                        .filter(|o| o.process.is_some())
                        .count()
                );
                return;
            }
            let (acted, wake_at) = self.plan_and_execute(now).await;
            let reap_at = self.orphans_phase(now);
            self.save_table();
            self.publish();
            if self.shutting_down && self.observed.is_empty() {
                self.rt.flush().await;
                self.rt.shutdown();
                return;
            }
            // Actions change the state: plan again at once, but never spin.
            // Starts left for the next pass: take in what arrived, then go
            // on at once.
            let deferred = std::mem::take(&mut self.starts_deferred);
            passes_in_a_row = if acted { passes_in_a_row + 1 } else { 0 };
            if acted && passes_in_a_row < 8 && !deferred {
                continue;
            }
            let wake = [wake_at, reap_at, Some(self.next_sweep), Some(now + RESYNC)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + RESYNC);
            let wake = if deferred { now } else { wake };
            self.ingest(wake).await;
        }
    }

    /// Phases 1 and 2: plans, then carries the actions out. Returns whether
    /// anything was done, and when the planner wants to look again.
    async fn plan_and_execute(&mut self, now: Instant) -> (bool, Option<Instant>) {
        let _timer = self.cfg.metrics.reconcile_timer();
        let empty = DesiredSet::default();
        let desired = if self.shutting_down {
            &empty
        } else {
            &self.desired
        };
        let p = plan(desired, &self.catalog, &self.observed, now, &self.cfg.plan);
        let acted = !p.actions.is_empty();
        for action in p.actions {
            self.execute(action, now);
        }
        self.run_starts(now).await;
        (acted, p.wake_at)
    }

    /// Phase 3: the orphan sweep when it is due, and the reaping in
    /// progress; returns when a reaping needs the next look.
    fn orphans_phase(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.next_sweep && !self.shutting_down {
            self.sweep_orphans(now);
            self.next_sweep = now
                .checked_add(self.cfg.orphan_sweep)
                .unwrap_or(now + RESYNC);
        }
        self.finish_reaping(now)
    }

    /// Phase 6: waits until something arrives or `wake` comes, then takes
    /// in everything queued: file events, a catalog reload, commands and
    /// process events (each a transition of the state), and persists the
    /// API declarations of the launches taken in, once for all.
    async fn ingest(&mut self, wake: Instant) {
        tokio::select! {
            cmd = self.commands.recv() => match cmd {
                Some(cmd) => self.command(cmd).await,
                None => self.shutting_down = true,
            },
            Some(ev) = self.events.recv() => self.event(ev),
            Some(ev) = self.watchers.desired.recv() => self.file_event(ev),
            Some(r) = self.watchers.patterns.recv() => self.reload_catalog(r),
            () = tokio::time::sleep_until(wake.into()) => {}
        }
        for _ in 0..BATCH {
            match self.watchers.desired.try_recv() {
                Ok(ev) => self.file_event(ev),
                Err(_) => break,
            }
        }
        // Each reload is a whole catalog: the latest is all that counts.
        let mut latest = None;
        while let Ok(r) = self.watchers.patterns.try_recv() {
            latest = Some(r);
        }
        if let Some(r) = latest {
            self.reload_catalog(r);
        }
        for _ in 0..BATCH {
            match self.commands.try_recv() {
                Ok(cmd) => self.command(cmd).await,
                Err(_) => break,
            }
        }
        for _ in 0..BATCH {
            match self.events.try_recv() {
                Ok(ev) => self.event(ev),
                Err(_) => break,
            }
        }
        self.save_launches().await;
    }

    /// Applies the desired directory's first scan before anything is
    /// adopted or planned: a running instance declared by a file must not
    /// look undesired for the moment before the file is read. Commands wait.
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
    }

    fn touch(&mut self, id: &str) {
        if !self.dirty.contains(id) {
            self.dirty.insert(id.to_string());
        }
    }

    fn publish(&mut self) {
        if self.dirty.is_empty()
            && !self.sources_dirty
            && !self.problems_dirty
            && self.pending_events.is_empty()
        {
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
        if std::mem::take(&mut self.problems_dirty) {
            self.problems_shown = Arc::new(self.problems.values().cloned().collect());
        }
        self.seq += 1;
        let snapshot = Arc::new(Snapshot {
            seq: self.seq,
            problems: self.problems_shown.clone(),
            instances: self.statuses.clone(),
            sources: self.sources.clone(),
            synced: self.synced,
        });
        let mut events = std::mem::take(&mut self.pending_events);
        for e in &mut events {
            self.cfg.metrics.event(e.reason.as_str());
            // An event that leaves the instance as published shares the
            // snapshot's status: the log keeps one copy, not one per event.
            if let (Some(mine), Some(published)) = (&e.process, self.statuses.get(&e.process_id))
                && **mine == **published
            {
                e.process = Some(published.clone());
            }
        }
        // Events first: a caller woken by the snapshot finds them in the log.
        self.cfg.events.publish(events, snapshot.clone());
        self.snapshot_tx.send_replace(snapshot);
    }

    /// Records (or, with `None`, clears) a problem of the launcher's own,
    /// logging it once when it appears or changes.
    fn problem(&mut self, what: &'static str, detail: Option<String>) {
        match detail {
            Some(d) => {
                if self.problems.get(what) != Some(&d) {
                    tracing::error!("{d}");
                    self.problems.insert(what, d);
                    self.problems_dirty = true;
                }
            }
            None => {
                if let Some(was) = self.problems.remove(what) {
                    tracing::info!("resolved: {was}");
                    self.problems_dirty = true;
                }
            }
        }
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
}
