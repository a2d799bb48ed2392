//! GetLogs: an instance's output, its last lines then (with `follow`) new
//! ones as they are written; or the output of every instance of a pattern
//! and/or namespace, each instance's history after the other's, then new
//! lines as they come.
//!
//! One task per call (the pump) sends the history as the client reads it,
//! reading it a chunk at a time on the blocking pool. With `follow` it
//! first subscribes to each instance's log (the echo thread, which reads
//! every log anyway, hands it each line it reads), then drops the lines the
//! history already had, and watches the snapshots: an instance removed is
//! detached after its last lines (a call for one instance then ends), one
//! that appears in a merged call is added. Nothing here grows with what a
//! client does not read: the response holds [`OUT`] lines, the follower
//! [`crate::runtime::logs::follow::FOLLOW_BYTES`], and lines that do not
//! fit are replaced by a marker line saying how many.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use super::LauncherService;
use crate::controller::snapshot::{InstanceStatus, Snapshot};
use crate::proto;
use crate::runtime::logs::{Follower, LogEvent, LogFiles};

/// The stream of a GetLogs call.
pub type LogStream = Pin<Box<dyn Stream<Item = Result<proto::LogLine, Status>> + Send>>;

/// Lines of history sent when `tail_lines` is 0.
pub const DEFAULT_TAIL: usize = 100;

/// GetLogs calls with `follow` open at once.
pub const MAX_FOLLOWS: usize = 256;

/// Lines waiting in one call's response.
const OUT: usize = 16;

/// What GetLogs needs: the files, and the places of following calls.
#[derive(Clone)]
pub struct Logs {
    files: LogFiles,
    follows: Arc<Semaphore>,
}

impl Logs {
    pub(super) fn new(files: LogFiles) -> Logs {
        Logs {
            files,
            follows: Arc::new(Semaphore::new(MAX_FOLLOWS)),
        }
    }
}

pub(super) async fn get_logs(
    svc: &LauncherService,
    r: proto::GetLogsRequest,
) -> Result<Response<LogStream>, Status> {
    let Some(logs) = &svc.logs else {
        return Err(Status::unavailable("instance logs are not served"));
    };
    let tail = match r.tail_lines {
        0 => Some(DEFAULT_TAIL),
        -1 => None,
        n => Some(usize::try_from(n).map_err(|_| {
            Status::invalid_argument(format!(
                "tail_lines {n}: 0 (the last {DEFAULT_TAIL}), -1 (all that is kept) or a number of lines"
            ))
        })?),
    };
    let select = Select::new(r.process_id, r.pattern_name, r.namespace)?;
    let snap = svc.snapshot();
    let ids = select.matching(&snap);
    if ids.is_empty() {
        return Err(Status::not_found(select.none()));
    }
    let permit = if r.follow {
        Some(logs.follows.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{MAX_FOLLOWS} GetLogs calls with follow are open already"
            ))
        })?)
    } else {
        None
    };
    let (out, rx) = mpsc::channel(OUT);
    let pump = Pump {
        files: logs.files.clone(),
        tail,
        follow: r.follow,
        out,
    };
    let snapshots = svc.handle.snapshots.clone();
    tokio::spawn(async move {
        match permit {
            Some(permit) => pump.follow(select, ids, snapshots, permit).await,
            None => {
                for id in &ids {
                    if pump.history(id).await.is_none() {
                        break;
                    }
                }
            }
        }
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Which instances a call reads.
enum Select {
    One(String),
    Many { pattern: String, namespace: String },
}

impl Select {
    fn new(process_id: String, pattern: String, namespace: String) -> Result<Select, Status> {
        match (
            process_id.is_empty(),
            pattern.is_empty() && namespace.is_empty(),
        ) {
            (false, true) => Ok(Select::One(process_id)),
            (true, false) => Ok(Select::Many { pattern, namespace }),
            (false, false) => Err(Status::invalid_argument(
                "give process_id, or pattern_name and/or namespace, not both",
            )),
            (true, true) => Err(Status::invalid_argument(
                "process_id, or pattern_name and/or namespace, is required",
            )),
        }
    }

    fn matches(&self, s: &InstanceStatus) -> bool {
        match self {
            Select::One(id) => s.process_id == *id,
            Select::Many { pattern, namespace } => {
                (pattern.is_empty() || s.pattern == *pattern)
                    && (namespace.is_empty() || s.namespace == *namespace)
            }
        }
    }

    /// The instances it selects, in process_id order.
    fn matching(&self, snap: &Snapshot) -> Vec<String> {
        match self {
            Select::One(id) => snap
                .instances
                .get_key_value(id)
                .map(|(k, _)| k.clone())
                .into_iter()
                .collect(),
            Select::Many { .. } => snap
                .instances
                .values()
                .filter(|s| self.matches(s))
                .map(|s| s.process_id.clone())
                .collect(),
        }
    }

    /// Why nothing is selected.
    fn none(&self) -> String {
        match self {
            Select::One(id) => format!("no instance {id:?}"),
            Select::Many { pattern, namespace } => {
                let mut what = vec![];
                if !pattern.is_empty() {
                    what.push(format!("of pattern {pattern:?}"));
                }
                if !namespace.is_empty() {
                    what.push(format!("in namespace {namespace:?}"));
                }
                format!("no instance {}", what.join(" "))
            }
        }
    }
}

/// One followed instance of a call.
struct Source {
    /// Its subscription.
    sub: u64,
    /// Where its history ended (drop what the echo read up to there).
    end: u64,
    /// In which following of the file `end` counts.
    epoch: Option<u64>,
}

impl Source {
    /// True if `ev` is not in the history sent.
    fn is_new(&mut self, ev: &LogEvent) -> bool {
        match self.epoch {
            Some(e) if e == ev.epoch => ev.pos > self.end,
            // Followed again since (removed and declared again): all new.
            Some(_) => {
                (self.epoch, self.end) = (Some(ev.epoch), 0);
                true
            }
            // Not followed when its history was read: the first following
            // counts from the start of the file as the history did.
            None => {
                self.epoch = Some(ev.epoch);
                ev.pos > self.end
            }
        }
    }
}

/// The task of one call.
struct Pump {
    files: LogFiles,
    tail: Option<usize>,
    follow: bool,
    out: mpsc::Sender<Result<proto::LogLine, Status>>,
}

impl Pump {
    async fn send(&self, process_id: &str, line: String, time: SystemTime) -> Option<()> {
        let line = proto::LogLine {
            process_id: process_id.to_string(),
            line,
            time: Some(time.into()),
        };
        self.out.send(Ok(line)).await.ok()
    }

    /// Sends the history of `id` as the client reads it; where it ended
    /// and in which following of the file, or None if the client is gone.
    async fn history(&self, id: &str) -> Option<(u64, Option<u64>)> {
        let (files, pid, tail, follow) =
            (self.files.clone(), id.to_string(), self.tail, self.follow);
        let mut h = tokio::task::spawn_blocking(move || files.history(&pid, tail, follow))
            .await
            .ok()?;
        let ended = (h.end(), h.epoch());
        loop {
            let (back, lines, more) = tokio::task::spawn_blocking(move || {
                let mut lines = Vec::new();
                let more = h.next_lines(&mut lines);
                (h, lines, more)
            })
            .await
            .ok()?;
            h = back;
            for l in lines {
                self.send(id, l.line, l.time).await?;
            }
            if !more {
                return Some(ended);
            }
        }
    }

    /// Subscribes to `id`'s log, then sends its history; false if the
    /// client or the echo is gone.
    async fn add(
        &self,
        id: &str,
        follower: &Follower,
        sources: &mut HashMap<String, Source>,
    ) -> bool {
        let Some(sub) = self.files.subscribe(id, follower).await else {
            return false;
        };
        sources.insert(
            id.to_string(),
            Source {
                sub,
                end: 0,
                epoch: None,
            },
        );
        let Some((end, epoch)) = self.history(id).await else {
            return false;
        };
        if let Some(s) = sources.get_mut(id) {
            (s.end, s.epoch) = (end, epoch);
        }
        true
    }

    async fn follow(
        self,
        select: Select,
        ids: Vec<String>,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let mut follower = Follower::default();
        let mut sources = HashMap::new();
        let one = matches!(select, Select::One(_));
        let mut open = true;
        for id in &ids {
            open = open && self.add(id, &follower, &mut sources).await;
        }
        if one {
            // Ends once the instance is removed and its last lines sent.
            follower.seal();
        }
        snapshots.mark_changed();
        while open {
            tokio::select! {
                () = self.out.closed() => break,
                ev = follower.recv() => {
                    let Some(ev) = ev else { break };
                    let new = sources.get_mut(&*ev.process_id).is_none_or(|s| s.is_new(&ev));
                    if new && self.send(&ev.process_id, ev.line.to_string(), ev.time).await.is_none() {
                        break;
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().clone();
                    sources.retain(|id, s| {
                        let kept = snap.instances.get(id).is_some_and(|i| select.matches(i));
                        if !kept {
                            self.files.detach(id, s.sub);
                        }
                        kept
                    });
                    if !one {
                        for id in select.matching(&snap) {
                            if !sources.contains_key(&id) {
                                open = self.add(&id, &follower, &mut sources).await;
                                if !open {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        for (id, s) in sources {
            self.files.detach(&id, s.sub);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use tokio_stream::StreamExt;

    use super::*;
    use crate::controller::ControllerHandle;
    use crate::reconcile::PlanConfig;
    use crate::runtime::logs::{LogEcho, log_path};

    const WAIT: Duration = Duration::from_secs(20);

    fn status(process_id: &str) -> Arc<InstanceStatus> {
        let mut parts = process_id.split(':');
        let namespace = parts.next().unwrap_or_default().to_string();
        let _ = parts.next();
        let pattern = parts.next().unwrap_or_default();
        Arc::new(InstanceStatus::sample(process_id, pattern, &namespace))
    }

    fn snapshot(ids: &[&str]) -> Arc<Snapshot> {
        Arc::new(Snapshot {
            instances: ids.iter().map(|id| (id.to_string(), status(id))).collect(),
            ..Snapshot::default()
        })
    }

    /// A service whose instances are `ids` (`<namespace>:<x>:<pattern>`),
    /// with logs in a temp dir followed by a real echo thread.
    struct World {
        _dir: tempfile::TempDir,
        logs: PathBuf,
        echo: LogEcho,
        snapshots: watch::Sender<Arc<Snapshot>>,
        svc: LauncherService,
    }

    impl World {
        fn new(ids: &[&str]) -> World {
            let dir = tempfile::tempdir().unwrap();
            let logs = dir.path().join("logs");
            std::fs::create_dir(&logs).unwrap();
            let logs = logs.canonicalize().unwrap();
            let echo = LogEcho::start(&logs, 1 << 20, 3);
            let (snapshots, rx) = watch::channel(snapshot(ids));
            let (commands, _) = mpsc::channel(1);
            let handle = ControllerHandle {
                commands,
                snapshots: rx,
                heartbeat: Arc::default(),
                started: Instant::now(),
                plan: PlanConfig::default(),
                events: crate::events::EventLog::in_memory(),
            };
            let svc = LauncherService::new(handle).with_logs(echo.files());
            World {
                _dir: dir,
                logs,
                echo,
                snapshots,
                svc,
            }
        }

        fn path(&self, id: &str) -> PathBuf {
            log_path(&self.logs, id)
        }

        fn append(&self, id: &str, text: &str) {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(id))
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }

        /// Follows `id`'s log as a started process makes the runtime do.
        fn track(&self, id: &str, from: u64) {
            self.echo.track(self.path(id), Arc::from(id), from);
        }

        async fn call(&self, r: proto::GetLogsRequest) -> Result<LogStream, Status> {
            get_logs(&self.svc, r).await.map(Response::into_inner)
        }
    }

    fn one(id: &str, tail: i32, follow: bool) -> proto::GetLogsRequest {
        proto::GetLogsRequest {
            process_id: id.into(),
            tail_lines: tail,
            follow,
            ..Default::default()
        }
    }

    fn many(pattern: &str, namespace: &str, tail: i32, follow: bool) -> proto::GetLogsRequest {
        proto::GetLogsRequest {
            pattern_name: pattern.into(),
            namespace: namespace.into(),
            tail_lines: tail,
            follow,
            ..Default::default()
        }
    }

    /// The next line as `process_id line`; None at the end.
    async fn next(s: &mut LogStream) -> Option<String> {
        let item = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("a line or the end in time")?;
        let l = item.expect("a line, not an error");
        assert!(l.time.is_some(), "{l:?}");
        Some(format!("{} {}", l.process_id, l.line))
    }

    async fn all(mut s: LogStream) -> Vec<String> {
        let mut v = Vec::new();
        while let Some(l) = next(&mut s).await {
            v.push(l);
        }
        v
    }

    fn err(r: Result<LogStream, Status>) -> Status {
        match r {
            Ok(_) => panic!("the call was accepted"),
            Err(s) => s,
        }
    }

    #[tokio::test]
    async fn bad_requests_are_refused_with_their_reason() {
        let w = World::new(&["a:x:p"]);
        let s = err(w.call(one("b:x:p", 0, false)).await);
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("\"b:x:p\""), "{s:?}");
        let s = err(w.call(many("q", "a", 0, true)).await);
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().contains("\"q\""), "{s:?}");
        for r in [one("", 0, false), one("a:x:p", -2, false)] {
            assert_eq!(err(w.call(r).await).code(), tonic::Code::InvalidArgument);
        }
        let mut both = one("a:x:p", 0, false);
        both.pattern_name = "p".into();
        assert_eq!(err(w.call(both).await).code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn history_then_new_lines_each_once_until_the_instance_is_removed() {
        let w = World::new(&["a:x:p"]);
        w.append("a:x:p", "one\ntwo\nthr");
        // Not followed yet (no process started): history only.
        let mut s = w.call(one("a:x:p", 10, true)).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap(), "a:x:p one");
        assert_eq!(next(&mut s).await.unwrap(), "a:x:p two");
        // The process starts: the echo reads the file from its start again
        // (what the history sent is not sent twice), and its unfinished
        // line comes whole.
        w.track("a:x:p", 0);
        w.append("a:x:p", "ee\nfour\n");
        assert_eq!(next(&mut s).await.unwrap(), "a:x:p three");
        assert_eq!(next(&mut s).await.unwrap(), "a:x:p four");
        // Removed: its last lines, then the end.
        w.append("a:x:p", "last\n");
        w.echo.untrack(w.path("a:x:p"));
        w.snapshots.send_replace(snapshot(&[]));
        assert_eq!(all(s).await, vec!["a:x:p last"]);
    }

    #[tokio::test]
    async fn a_merged_call_reads_each_instance_and_adds_new_ones() {
        let w = World::new(&["b:x:p", "a:x:p", "a:x:q"]);
        for id in ["a:x:p", "b:x:p", "a:x:q"] {
            w.append(id, &format!("hello from {id}\n"));
            w.track(id, 0);
        }
        let got = all(w.call(many("p", "", 0, false)).await.unwrap()).await;
        assert_eq!(
            got,
            vec!["a:x:p hello from a:x:p", "b:x:p hello from b:x:p"]
        );
        let got = all(w.call(many("", "a", 0, false)).await.unwrap()).await;
        assert_eq!(
            got,
            vec!["a:x:p hello from a:x:p", "a:x:q hello from a:x:q"]
        );
        let mut s = w.call(many("p", "", 1, true)).await.unwrap();
        assert_eq!(next(&mut s).await.unwrap(), "a:x:p hello from a:x:p");
        assert_eq!(next(&mut s).await.unwrap(), "b:x:p hello from b:x:p");
        w.append("c:x:p", "first of c\n");
        w.track("c:x:p", 0);
        w.snapshots
            .send_replace(snapshot(&["a:x:p", "b:x:p", "c:x:p", "a:x:q"]));
        assert_eq!(next(&mut s).await.unwrap(), "c:x:p first of c");
        w.append("b:x:p", "more from b\n");
        assert_eq!(next(&mut s).await.unwrap(), "b:x:p more from b");
    }

    #[tokio::test]
    async fn following_calls_are_limited_and_a_closed_one_gives_its_place_back() {
        let w = World::new(&["a:x:p"]);
        let mut open = Vec::new();
        for _ in 0..MAX_FOLLOWS {
            open.push(w.call(one("a:x:p", 1, true)).await.unwrap());
        }
        let s = err(w.call(one("a:x:p", 1, true)).await);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        // Without follow: not counted.
        assert!(
            all(w.call(one("a:x:p", 1, false)).await.unwrap())
                .await
                .is_empty()
        );
        drop(open.pop());
        let deadline = Instant::now() + WAIT;
        while w.call(one("a:x:p", 1, true)).await.is_err() {
            assert!(Instant::now() < deadline, "the place was not given back");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
