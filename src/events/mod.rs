//! The event log: what happened to instances, patterns and sources, in
//! order, each with a revision that only ever grows (across restarts too,
//! see [`revision`]).
//!
//! The controller appends the events of a pass together with the snapshot
//! they lead to ([`EventLog::publish`]); readers subscribe from a revision
//! or from the current state ([`EventLog::subscribe`]) under the same lock,
//! so a subscriber sees every event after its starting point exactly once.
//! The last [`RETAINED`] events are kept for replay and for Describe.
//!
//! Each subscriber has a bounded queue that is filled without waiting: a
//! subscriber that falls [`QUEUE`] events behind is cut off (it learns so
//! as its last item, and resumes from its last revision), so no reader can
//! slow the controller.

pub mod revision;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use tokio::sync::mpsc;

use crate::controller::snapshot::{InstanceStatus, Snapshot};
use revision::Revisions;

/// Events kept for replay.
pub const RETAINED: usize = 10_000;
/// Events a subscriber may have queued, unread, before it is cut off.
pub const QUEUE: usize = 1024;

/// Why an event happened: one CamelCase word on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// The launcher started (the first event of each launcher's life).
    LauncherStarted,
    /// A source declared the instance (or declared it anew).
    Declared,
    /// No source declares the instance any more.
    Undeclared,
    /// A process of the instance started.
    Spawned,
    /// A process could not be started.
    SpawnFailed,
    /// The instance passed its health check.
    Healthy,
    /// A health check failed.
    Unhealthy,
    /// The process ended.
    Exited,
    /// The kernel killed the process for exceeding its memory limit.
    OomKilled,
    /// A restart waits for its backoff delay.
    BackOff,
    /// Too many failures in a row: no more restarts until something changes.
    CircuitOpen,
    /// The circuit closed (healthy long enough, launched again, a changed
    /// declaration).
    CircuitClosed,
    /// A graceful stop began.
    Terminating,
    /// SIGKILL was sent.
    Killed,
    /// The instance stopped and was removed.
    Terminated,
    /// A process an earlier launcher started was taken over.
    Adopted,
    /// Processes no instance owns were stopped.
    OrphanReaped,
    /// A desired file or a manifest was refused.
    SourceInvalid,
    /// A refused source was accepted again.
    SourceValid,
    /// A new pattern was found.
    PatternAdded,
    /// A pattern's manifest or executable changed.
    PatternChanged,
    /// A pattern directory went away.
    PatternRemoved,
    /// A restart was asked for (RestartPattern).
    Restarting,
    /// A signal was sent on request (SignalPattern).
    Signaled,
}

impl Reason {
    /// Every reason, for metrics that list them all.
    pub const ALL: [Reason; 24] = [
        Reason::LauncherStarted,
        Reason::Declared,
        Reason::Undeclared,
        Reason::Spawned,
        Reason::SpawnFailed,
        Reason::Healthy,
        Reason::Unhealthy,
        Reason::Exited,
        Reason::OomKilled,
        Reason::BackOff,
        Reason::CircuitOpen,
        Reason::CircuitClosed,
        Reason::Terminating,
        Reason::Killed,
        Reason::Terminated,
        Reason::Adopted,
        Reason::OrphanReaped,
        Reason::SourceInvalid,
        Reason::SourceValid,
        Reason::PatternAdded,
        Reason::PatternChanged,
        Reason::PatternRemoved,
        Reason::Restarting,
        Reason::Signaled,
    ];

    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LauncherStarted => "LauncherStarted",
            Reason::Declared => "Declared",
            Reason::Undeclared => "Undeclared",
            Reason::Spawned => "Spawned",
            Reason::SpawnFailed => "SpawnFailed",
            Reason::Healthy => "Healthy",
            Reason::Unhealthy => "Unhealthy",
            Reason::Exited => "Exited",
            Reason::OomKilled => "OOMKilled",
            Reason::BackOff => "BackOff",
            Reason::CircuitOpen => "CircuitOpen",
            Reason::CircuitClosed => "CircuitClosed",
            Reason::Terminating => "Terminating",
            Reason::Killed => "Killed",
            Reason::Terminated => "Terminated",
            Reason::Adopted => "Adopted",
            Reason::OrphanReaped => "OrphanReaped",
            Reason::SourceInvalid => "SourceInvalid",
            Reason::SourceValid => "SourceValid",
            Reason::PatternAdded => "PatternAdded",
            Reason::PatternChanged => "PatternChanged",
            Reason::PatternRemoved => "PatternRemoved",
            Reason::Restarting => "Restarting",
            Reason::Signaled => "Signaled",
        }
    }
}

/// An event before it has a revision, as the controller records it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// When it happened.
    pub time: SystemTime,
    /// Why.
    pub reason: Reason,
    /// The instance, or empty.
    pub process_id: String,
    /// The pattern, or empty.
    pub pattern: String,
    /// The instance's namespace, or empty.
    pub namespace: String,
    /// What happened, in a sentence.
    pub message: String,
    /// The instance right after the event, where there is one.
    pub process: Option<Arc<InstanceStatus>>,
    /// Who asked, for events a call or a file caused; empty otherwise.
    pub actor: String,
    /// The source file, for source events.
    pub source: String,
}

impl NewEvent {
    /// An event of no instance (a pattern or a source).
    pub fn general(reason: Reason, message: String) -> Self {
        NewEvent {
            time: SystemTime::now(),
            reason,
            process_id: String::new(),
            pattern: String::new(),
            namespace: String::new(),
            message,
            process: None,
            actor: String::new(),
            source: String::new(),
        }
    }
}

/// An event in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its place in the log.
    pub revision: u64,
    /// What happened.
    pub event: NewEvent,
}

/// What a subscriber wants to see (all empty: everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this instance.
    pub process_id: String,
    /// Only instances of this namespace.
    pub namespace: String,
    /// Only this pattern (its instances and its pattern events).
    pub pattern: String,
    /// Only what a limited caller may see (see [`crate::authz::Limits`]).
    pub within: Option<Arc<crate::authz::Limits>>,
}

impl Filter {
    /// Whether `e` passes.
    pub fn admits(&self, e: &NewEvent) -> bool {
        (self.process_id.is_empty() || e.process_id == self.process_id)
            && (self.namespace.is_empty() || e.namespace == self.namespace)
            && (self.pattern.is_empty() || e.pattern == self.pattern)
            && self.within.as_ref().is_none_or(|l| l.admits_event(e))
    }

    /// Whether the instance passes (for the snapshot at the start).
    pub fn admits_instance(&self, s: &InstanceStatus) -> bool {
        (self.process_id.is_empty() || s.process_id == self.process_id)
            && (self.namespace.is_empty() || s.namespace == self.namespace)
            && (self.pattern.is_empty() || s.pattern == self.pattern)
            && self.within.as_ref().is_none_or(|l| l.admits_instance(s))
    }
}

/// An item of a subscription's live queue.
#[derive(Debug, Clone)]
pub enum Item {
    /// An event.
    Event(Arc<Event>),
    /// The subscriber fell [`QUEUE`] events behind and was cut off; the
    /// revision is the last one it was sent.
    Lagged(u64),
}

/// Where a subscription starts.
#[derive(Debug)]
pub enum Start {
    /// The state at `revision`: every instance then.
    Snapshot {
        /// The revision the instances reflect.
        revision: u64,
        /// The instances the filter admits.
        instances: Vec<Arc<InstanceStatus>>,
    },
    /// The retained events after the asked revision.
    Replay(Vec<Arc<Event>>),
}

/// A subscription: where it starts, then its live queue.
#[derive(Debug)]
pub struct Subscription {
    /// The state or history before the live events.
    pub start: Start,
    /// The live events, in order, right after the start.
    pub live: mpsc::Receiver<Item>,
}

/// Why a subscription cannot start where asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The revision is older than the history kept.
    #[error(
        "revision {asked} is no longer retained: the oldest event kept is revision {oldest} (watch without since_revision to start from the current state)"
    )]
    TooOld {
        /// What was asked.
        asked: u64,
        /// The oldest event kept.
        oldest: u64,
    },
    /// The revision has not happened yet.
    #[error("revision {asked} is ahead of the latest, {latest}")]
    Ahead {
        /// What was asked.
        asked: u64,
        /// The latest revision.
        latest: u64,
    },
}

struct Subscriber {
    filter: Filter,
    tx: mpsc::Sender<Item>,
    /// The last revision queued for it.
    last: u64,
}

struct Inner {
    revisions: Revisions,
    /// The first revision of this launcher's life.
    first: u64,
    /// The latest revision handed out.
    latest: u64,
    events: VecDeque<Arc<Event>>,
    subscribers: Vec<Subscriber>,
    snapshot: Arc<Snapshot>,
    counts: [u64; Reason::ALL.len()],
}

/// The shared event log (cheap to clone).
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").finish_non_exhaustive()
    }
}

impl EventLog {
    /// A log whose revisions continue those of `revisions`, starting with
    /// a [`Reason::LauncherStarted`] event.
    pub fn new(revisions: Revisions) -> Self {
        let first = revisions.first();
        let log = EventLog {
            inner: Arc::new(Mutex::new(Inner {
                revisions,
                first,
                latest: first - 1,
                events: VecDeque::with_capacity(RETAINED.min(1024)),
                subscribers: Vec::new(),
                snapshot: Arc::new(Snapshot::default()),
                counts: [0; Reason::ALL.len()],
            })),
        };
        log.append(vec![NewEvent::general(
            Reason::LauncherStarted,
            format!(
                "prism-launcher {} started (pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        )]);
        log
    }

    /// A log that keeps nothing across restarts (tests).
    pub fn in_memory() -> Self {
        EventLog::new(Revisions::in_memory())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `events` in order and makes `snapshot` the state they lead
    /// to, in one step for subscribers.
    pub fn publish(&self, events: Vec<NewEvent>, snapshot: Arc<Snapshot>) {
        let mut inner = self.lock();
        inner.snapshot = snapshot;
        inner.append(events);
    }

    /// Appends `events` in order (the snapshot stays as it is).
    pub fn append(&self, events: Vec<NewEvent>) {
        self.lock().append(events);
    }

    /// The latest revision.
    pub fn latest(&self) -> u64 {
        self.lock().latest
    }

    /// The oldest revision kept.
    pub fn oldest(&self) -> u64 {
        let inner = self.lock();
        inner
            .events
            .front()
            .map_or(inner.latest + 1, |e| e.revision)
    }

    /// How many events of each reason this launcher has recorded.
    pub fn counts(&self) -> Vec<(Reason, u64)> {
        let inner = self.lock();
        Reason::ALL.iter().copied().zip(inner.counts).collect()
    }

    /// The last `n` retained events of an instance, oldest first.
    pub fn recent(&self, process_id: &str, n: usize) -> Vec<Arc<Event>> {
        let inner = self.lock();
        let mut v: Vec<Arc<Event>> = inner
            .events
            .iter()
            .rev()
            .filter(|e| e.event.process_id == process_id)
            .take(n)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// Subscribes: from the current state when `since` is 0, else from
    /// the events after revision `since`.
    ///
    /// # Errors
    ///
    /// `since` is older than the history kept, or ahead of the latest.
    pub fn subscribe(&self, since: u64, filter: Filter) -> Result<Subscription, SubscribeError> {
        let mut inner = self.lock();
        let start = if since == 0 {
            Start::Snapshot {
                revision: inner.latest,
                instances: inner
                    .snapshot
                    .instances
                    .values()
                    .filter(|s| filter.admits_instance(s))
                    .cloned()
                    .collect(),
            }
        } else {
            let oldest = inner
                .events
                .front()
                .map_or(inner.latest + 1, |e| e.revision);
            if since > inner.latest {
                return Err(SubscribeError::Ahead {
                    asked: since,
                    latest: inner.latest,
                });
            }
            // Revisions before this life's first may have had events after
            // them that no one kept.
            if since + 1 < oldest || since < inner.first {
                return Err(SubscribeError::TooOld {
                    asked: since,
                    oldest,
                });
            }
            let skip = usize::try_from(since + 1 - oldest).unwrap_or(usize::MAX);
            Start::Replay(
                inner
                    .events
                    .iter()
                    .skip(skip)
                    .filter(|e| filter.admits(&e.event))
                    .cloned()
                    .collect(),
            )
        };
        // One slot more than the queue, for the notice of being cut off.
        let (tx, live) = mpsc::channel(QUEUE + 1);
        let last = inner.latest;
        inner.subscribers.push(Subscriber { filter, tx, last });
        Ok(Subscription { start, live })
    }
}

impl Inner {
    fn append(&mut self, events: Vec<NewEvent>) {
        for event in events {
            let revision = self.latest + 1;
            self.revisions.reserve(revision);
            self.latest = revision;
            if let Some(i) = Reason::ALL.iter().position(|r| *r == event.reason) {
                self.counts[i] += 1;
            }
            let e = Arc::new(Event { revision, event });
            if self.events.len() == RETAINED {
                self.events.pop_front();
            }
            self.events.push_back(e.clone());
            self.subscribers.retain_mut(|s| s.offer(&e));
        }
        // Gone readers go at once, even when nothing they wanted came.
        self.subscribers.retain(|s| !s.tx.is_closed());
    }
}

impl Subscriber {
    /// Queues `e` if the filter admits it; false when the subscriber is
    /// gone or was cut off.
    fn offer(&mut self, e: &Arc<Event>) -> bool {
        if !self.filter.admits(&e.event) {
            return !self.tx.is_closed();
        }
        if self.tx.capacity() <= 1 {
            // The last slot carries the notice.
            let _ = self.tx.try_send(Item::Lagged(self.last));
            return false;
        }
        match self.tx.try_send(Item::Event(e.clone())) {
            Ok(()) => {
                self.last = e.revision;
                true
            }
            Err(_) => false,
        }
    }
}
