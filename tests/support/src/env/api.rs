//! A test's calls to its launcher, in grpcurl's JSON: the shorthands
//! (launch, list, find, terminate, sources), the waits on what ListPatterns
//! shows, and the checks every attack test ends with.

use std::collections::{BTreeMap, BTreeSet};

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getpgid};
use serde_json::{Value, json};

use super::TestEnv;
use crate::grpc::GrpcError;
use crate::grpc::api::Api;
use crate::grpc::json::{jbool, jint, jstr};
use crate::grpc::logs::{LogStream, get_logs};
use crate::procs::{environ_var, pid_alive, signal};
use crate::wait::{WAIT, wait_for, wait_until};

/// A ListPatterns entry that is RUNNING, healthy, and whose pid is alive.
pub fn is_running(p: &Value) -> bool {
    jstr(p, "state") == "STATE_RUNNING" && jbool(p, "healthy") && pid_alive(jint(p, "pid"))
}

/// `process_id -> pid` of every entry of a ListPatterns `list`.
pub fn listed_pids(list: &[Value]) -> BTreeMap<String, i64> {
    list.iter()
        .map(|p| (jstr(p, "processId"), jint(p, "pid")))
        .collect()
}

/// The `processIds` of a ListSources entry.
pub fn source_ids(source: &Value) -> Vec<String> {
    source
        .get("processIds")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl TestEnv {
    /// Every line of a GetLogs call without `follow` (grpcurl-JSON
    /// request and lines), on a connection of its own.
    pub fn logs(&self, request: Value) -> Result<Vec<Value>, GrpcError> {
        get_logs(self.launcher_ref().grpc_port(), &request)
    }

    /// A GetLogs call read as it goes (with `follow`, typically), on a
    /// connection of its own.
    pub fn follow_logs(&self, request: Value) -> Result<LogStream, GrpcError> {
        LogStream::open(self.launcher_ref().grpc_port(), &request)
    }

    /// LaunchPattern with namespace isolation.
    pub fn launch_ns(
        &self,
        pattern: &str,
        namespace: &str,
        config: &[(&str, &str)],
    ) -> Result<Value, GrpcError> {
        let config: BTreeMap<&str, &str> = config.iter().copied().collect();
        self.grpc(
            "LaunchPattern",
            json!({
                "pattern_name": pattern,
                "isolation": "ISOLATION_NAMESPACE",
                "namespace": namespace,
                "config": config,
            }),
        )
    }

    /// LaunchPattern that must succeed with a RUNNING, healthy instance.
    pub fn launch_running(&self, pattern: &str, namespace: &str, config: &[(&str, &str)]) -> Value {
        let reply = self
            .launch_ns(pattern, namespace, config)
            .unwrap_or_else(|e| panic!("LaunchPattern {pattern} in {namespace} failed: {e}"));
        assert_eq!(
            jstr(&reply, "state"),
            "STATE_RUNNING",
            "LaunchPattern {pattern} in {namespace}: not RUNNING: {reply}\n--- launcher log ---\n{}",
            self.log_tail(40)
        );
        assert!(
            jbool(&reply, "healthy"),
            "LaunchPattern reply not healthy: {reply}"
        );
        assert!(
            jint(&reply, "pid") > 0,
            "LaunchPattern reply has no pid: {reply}"
        );
        reply
    }

    /// ListPatterns (no filter): the `patterns` array.
    pub fn list(&self) -> Vec<Value> {
        let reply = self
            .grpc("ListPatterns", json!({}))
            .unwrap_or_else(|e| panic!("ListPatterns failed: {e}"));
        reply
            .get("patterns")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The ListPatterns entry of `process_id`, if listed.
    pub fn find(&self, process_id: &str) -> Option<Value> {
        self.list()
            .into_iter()
            .find(|p| jstr(p, "processId") == process_id)
    }

    /// TerminatePattern.
    pub fn terminate(
        &self,
        process_id: &str,
        grace_secs: i64,
        force: bool,
    ) -> Result<Value, GrpcError> {
        self.grpc(
            "TerminatePattern",
            json!({
                "process_id": process_id,
                "grace_period_secs": grace_secs,
                "force": force,
            }),
        )
    }

    /// The `(process_id, pid)` of every listed instance.
    pub fn pids(&self) -> Vec<(String, i64)> {
        self.list()
            .iter()
            .map(|p| (jstr(p, "processId"), jint(p, "pid")))
            .collect()
    }

    /// ListSources: the `sources` array.
    pub fn list_sources(&self) -> Vec<Value> {
        let reply = self
            .grpc("ListSources", json!({}))
            .unwrap_or_else(|e| panic!("ListSources failed: {e}"));
        reply
            .get("sources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// The ListSources entry whose path is `path` or ends with `/<path>`
    /// (manifests are listed by the path the launcher was given).
    pub fn source(&self, path: &str) -> Option<Value> {
        let suffix = format!("/{path}");
        self.list_sources().into_iter().find(|s| {
            let p = jstr(s, "path");
            p == path || p.ends_with(&suffix)
        })
    }

    /// A typed tonic client of its own, for sampling faster than JSON.
    pub fn api(&self) -> Api {
        Api::connect(self.ports.grpc_port())
    }

    // --- waits -------------------------------------------------------------

    /// Waits (up to [`WAIT`]) until `process_id` is listed and `ok` holds for
    /// its entry; returns the entry. Panics with the entry and the log tail.
    pub fn wait_entry(&self, process_id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        wait_for(WAIT, || {
            last = self.find(process_id);
            last.clone().filter(|p| ok(p))
        })
        .unwrap_or_else(|| {
            panic!(
                "{process_id}: never {what}; last seen: {last:?}\n--- launcher log ---\n{}",
                self.log_tail(60)
            )
        })
    }

    /// Waits until `process_id` is RUNNING, healthy and has a live pid.
    pub fn wait_running(&self, process_id: &str) -> Value {
        self.wait_entry(process_id, "RUNNING and healthy", is_running)
    }

    /// Waits until `process_id` is RUNNING and healthy with a pid other than
    /// `old_pid` (a restart).
    pub fn wait_restarted(&self, process_id: &str, old_pid: i64) -> Value {
        self.wait_entry(
            process_id,
            &format!("RUNNING with a pid other than {old_pid}"),
            |p| is_running(p) && jint(p, "pid") != old_pid,
        )
    }

    /// Waits until `process_id` is no longer listed.
    pub fn wait_unlisted(&self, process_id: &str) {
        let mut last = None;
        let gone = wait_until(WAIT, || {
            last = self.find(process_id);
            last.is_none()
        });
        assert!(
            gone,
            "{process_id} is still listed: {last:?}\n--- launcher log ---\n{}",
            self.log_tail(60)
        );
    }

    // --- checks --------------------------------------------------------------

    /// What must hold after any attack on the launcher: Health says
    /// healthy, every instance of `before` still runs with the same pid, a
    /// `kill -9` of one of them is still restarted, and no instance has two
    /// processes nor a process that no listed instance owns.
    pub fn assert_unharmed(&self, before: &[(String, i64)]) {
        let health = self
            .grpc("Health", json!({}))
            .unwrap_or_else(|e| panic!("Health failed after the attack: {e}"));
        assert!(
            jbool(&health, "healthy"),
            "Health is not healthy after the attack: {health}\n--- launcher log ---\n{}",
            self.log_tail(40)
        );
        for (id, pid) in before {
            let now = self.wait_running(id);
            assert_eq!(
                jint(&now, "pid"),
                *pid,
                "{id} was restarted by the attack: {now}\n--- launcher log ---\n{}",
                self.log_tail(40)
            );
        }
        if let Some((id, pid)) = before.first() {
            signal(*pid, Signal::SIGKILL);
            self.wait_restarted(id, *pid);
        }
        self.assert_one_process_per_instance();
    }

    /// Every process this test's launcher started belongs to a listed
    /// instance, and no instance has two main processes (process-group
    /// leaders carrying its PROCESS_ID).
    pub fn assert_one_process_per_instance(&self) {
        let listed: BTreeSet<String> = self.list().iter().map(|p| jstr(p, "processId")).collect();
        let mut leaders: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for pid in self.token_processes() {
            let Some(id) = environ_var(i64::from(pid), "PROCESS_ID") else {
                continue;
            };
            assert!(
                listed.contains(&id),
                "pid {pid} runs {id}, which is not listed (an orphan); listed: {listed:?}"
            );
            if getpgid(Some(Pid::from_raw(pid))).is_ok_and(|g| g.as_raw() == pid) {
                leaders.entry(id).or_default().push(pid);
            }
        }
        for (id, pids) in leaders {
            assert!(
                pids.len() == 1,
                "{id} has {} processes: {pids:?}",
                pids.len()
            );
        }
    }

    /// A normal launch works (the launcher keeps serving after a bad call).
    pub fn assert_still_serving(&self) {
        let reply = self.launch_running("test-pattern", "still-serving", &[]);
        assert_eq!(jstr(&reply, "processId"), "ns:still-serving:test-pattern");
    }
}
