//! What the launcher holds for each instance at run time, by process_id,
//! in one place ([`InstanceRuntime`]): its ports, the limits written into
//! its cgroup, where its current process's output begins in its log, the
//! reaping of orphans in its cgroup, cgroup work queued but not done, and
//! an exit waiting for that work.
//! Forgetting an instance is one call ([`Held::forget`]).
//!
//! Bookkeeping only: what to do is decided by the planner and by
//! [`crate::reconcile::orphans`].

use std::collections::HashMap;
use std::ops::RangeInclusive;

use crate::reconcile::observed::Ports;
use crate::reconcile::orphans::Reaping;
use crate::reconcile::transitions::ExitFacts;
use crate::runtime::cgroup::Limits;
use crate::runtime::ports::{Exhausted, PortAllocator};

/// One instance's runtime state (also of a cgroup whose instance is gone,
/// while work on it or a reaping in it goes on).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct InstanceRuntime {
    /// Its ports, while held.
    pub(super) ports: Option<Ports>,
    /// The limits last written into its cgroup: a restart with the same
    /// limits leaves the cgroup as it is.
    pub(super) limits: Option<Limits>,
    /// Where its current process's output begins in its log.
    pub(super) log_offset: u64,
    /// Orphans in its cgroup being stopped.
    pub(super) reaping: Option<Reaping>,
    /// Cgroup work (kill, remove) queued and not done yet: nothing starts
    /// in the cgroup until it is.
    pub(super) cgroup_work: u32,
    /// The end of its process of this epoch, taken in once the cgroup work
    /// is done (what the process left behind is killed first).
    pub(super) exit: Option<(u64, ExitFacts)>,
}

/// Every instance's runtime state, and the port allocator behind the ports.
pub(super) struct Held {
    by_id: HashMap<String, InstanceRuntime>,
    ports: PortAllocator,
    /// The range's exhaustion was logged (once until a port is freed).
    exhausted_logged: bool,
}

impl Held {
    /// Nothing held; ports come from `range` when `bindable`.
    pub(super) fn new(range: RangeInclusive<u16>, bindable: fn(u16) -> bool) -> Held {
        Held {
            by_id: HashMap::new(),
            ports: PortAllocator::new(range, bindable),
            exhausted_logged: false,
        }
    }

    /// What is held for `id`.
    pub(super) fn get(&self, id: &str) -> Option<&InstanceRuntime> {
        self.by_id.get(id)
    }

    fn entry(&mut self, id: &str) -> &mut InstanceRuntime {
        self.by_id.entry(id.to_string()).or_default()
    }

    /// Drops `id`'s entry once it holds nothing.
    fn tidy(&mut self, id: &str) {
        if self
            .by_id
            .get(id)
            .is_some_and(|r| *r == InstanceRuntime::default())
        {
            self.by_id.remove(id);
        }
    }

    /// Gives `id` two new ports (see [`PortAllocator::assign`]).
    pub(super) fn assign_ports(
        &mut self,
        id: &str,
        preferred_health: Option<u16>,
    ) -> Result<Ports, Exhausted> {
        self.release_ports(id);
        let ports = self.ports.assign(preferred_health)?;
        self.entry(id).ports = Some(ports);
        Ok(ports)
    }

    /// True the first time the range is found used up since a port was
    /// last freed (so that it is logged once).
    pub(super) fn first_exhaustion(&mut self) -> bool {
        !std::mem::replace(&mut self.exhausted_logged, true)
    }

    /// Holds the ports an adopted process runs with, unless one of them is
    /// held already; false then (and nothing is held).
    pub(super) fn hold_ports(&mut self, id: &str, ports: Ports) -> bool {
        self.release_ports(id);
        if !self.ports.try_hold(ports) {
            return false;
        }
        self.entry(id).ports = Some(ports);
        true
    }

    /// Frees `id`'s ports, if it holds any.
    pub(super) fn release_ports(&mut self, id: &str) {
        if let Some(ports) = self.by_id.get_mut(id).and_then(|r| r.ports.take()) {
            self.ports.release(ports);
            self.exhausted_logged = false;
            self.tidy(id);
        }
    }

    /// Where the output of `id`'s current process begins in its log.
    pub(super) fn log_offset(&self, id: &str) -> u64 {
        self.get(id).map_or(0, |r| r.log_offset)
    }

    /// A new process of `id` writes from `offset` on.
    pub(super) fn set_log_offset(&mut self, id: &str, offset: u64) {
        self.entry(id).log_offset = offset;
        self.tidy(id);
    }

    /// The limits last written into `id`'s cgroup.
    pub(super) fn limits(&self, id: &str) -> Option<Limits> {
        self.get(id).and_then(|r| r.limits)
    }

    /// Records the limits written into `id`'s cgroup (`None`: set it up
    /// again at the next start).
    pub(super) fn set_limits(&mut self, id: &str, limits: Option<Limits>) {
        self.entry(id).limits = limits;
        self.tidy(id);
    }

    /// True while work on `id`'s cgroup is queued.
    pub(super) fn cgroup_busy(&self, id: &str) -> bool {
        self.get(id).is_some_and(|r| r.cgroup_work > 0)
    }

    /// Work on `id`'s cgroup was queued.
    pub(super) fn work_queued(&mut self, id: &str) {
        self.entry(id).cgroup_work += 1;
    }

    /// Work on `id`'s cgroup was done; once none is left, the exit that
    /// waited for it (epoch and facts), if one did.
    pub(super) fn work_done(&mut self, id: &str) -> Option<(u64, ExitFacts)> {
        let r = self.by_id.get_mut(id)?;
        r.cgroup_work = r.cgroup_work.saturating_sub(1);
        let exit = if r.cgroup_work == 0 {
            r.exit.take()
        } else {
            None
        };
        self.tidy(id);
        exit
    }

    /// The end of `id`'s process of `epoch` is taken in once the cgroup
    /// work queued is done ([`Held::work_done`] hands it back).
    pub(super) fn defer_exit(&mut self, id: &str, epoch: u64, facts: ExitFacts) {
        self.entry(id).exit = Some((epoch, facts));
    }

    /// The reaping in `id`'s cgroup, if one goes on.
    pub(super) fn reaping(&self, id: &str) -> Option<Reaping> {
        self.get(id).and_then(|r| r.reaping)
    }

    /// Starts or (with `None`) ends the reaping in `id`'s cgroup.
    pub(super) fn set_reaping(&mut self, id: &str, reaping: Option<Reaping>) {
        self.entry(id).reaping = reaping;
        self.tidy(id);
    }

    /// Every reaping going on, in process_id order.
    pub(super) fn reapings(&self) -> Vec<(String, Reaping)> {
        let mut v: Vec<(String, Reaping)> = self
            .by_id
            .iter()
            .filter_map(|(id, r)| Some((id.clone(), r.reaping?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The instance is gone: its ports are freed, the limits of its cgroup
    /// and the offset in its log forgotten. Work queued on its cgroup and a
    /// reaping in it go on: they concern the cgroup, not the instance.
    pub(super) fn forget(&mut self, id: &str) {
        self.release_ports(id);
        if let Some(r) = self.by_id.get_mut(id) {
            r.limits = None;
            r.log_offset = 0;
            r.exit = None;
            self.tidy(id);
        }
    }

    /// Instances with something held (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn all_free(_: u16) -> bool {
        true
    }

    #[test]
    fn forgetting_an_instance_frees_its_ports_and_drops_what_it_held() {
        let mut h = Held::new(100..=103, all_free);
        let a = h.assign_ports("a", None).expect("ports");
        let _b = h.assign_ports("b", None).expect("ports");
        assert!(h.assign_ports("c", None).is_err(), "the range is used up");
        assert!(h.first_exhaustion());
        assert!(!h.first_exhaustion(), "logged once");
        let limits = Limits {
            cpu: Some(0.5),
            memory: None,
            pids: Some(64),
        };
        h.set_limits("a", Some(limits));
        h.set_log_offset("a", 42);
        assert_eq!(h.limits("a"), Some(limits));
        assert_eq!(h.log_offset("a"), 42);

        h.forget("a");
        assert!(h.get("a").is_none(), "nothing of a is left");
        assert!(h.first_exhaustion(), "a freed port resets the log-once");
        assert_eq!(h.assign_ports("c", None).expect("a's ports"), a);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn queued_cgroup_work_and_a_reaping_outlive_the_instance() {
        let mut h = Held::new(100..=103, all_free);
        h.assign_ports("a", None).expect("ports");
        h.work_queued("a");
        h.forget("a");
        assert!(h.cgroup_busy("a"), "the removal queued is still pending");
        assert_eq!(h.get("a").and_then(|r| r.ports), None);
        assert_eq!(h.work_done("a"), None);
        assert!(!h.cgroup_busy("a"));
        assert!(h.get("a").is_none());

        // An exit waits for the work queued before it, all of it.
        let facts = ExitFacts {
            how: "exited with status 0".into(),
            oom_kills: 0,
            pids_refused: 0,
            tail: Vec::new(),
        };
        h.work_queued("b");
        h.work_queued("b");
        h.defer_exit("b", 7, facts.clone());
        assert_eq!(h.work_done("b"), None);
        assert_eq!(h.work_done("b"), Some((7, facts)));
        assert!(h.get("b").is_none());

        let kill_at = Instant::now() + Duration::from_secs(5);
        h.set_reaping("z", Some(Reaping { kill_at }));
        h.set_reaping("y", Some(Reaping { kill_at }));
        h.forget("z");
        let ids: Vec<String> = h.reapings().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, ["y", "z"]);
        h.set_reaping("z", None);
        h.set_reaping("y", None);
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn an_adopted_process_never_shares_a_port() {
        let mut h = Held::new(100..=109, all_free);
        let p = Ports {
            grpc: 105,
            health: 106,
        };
        assert!(h.hold_ports("a", p));
        assert!(!h.hold_ports("b", p));
        assert!(h.get("b").is_none());
        h.release_ports("a");
        assert!(h.hold_ports("b", p));
    }
}
