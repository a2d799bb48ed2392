//! The orphan sweep and the reaping of what it finds: processes in this
//! launcher's cgroups that no instance owns (left by a crashed launcher, or
//! by an instance's process that escaped its group) get SIGTERM, SIGKILL at
//! the end of the grace period, and their cgroup is removed once empty.
//!
//! Pure: it is handed what the cgroups hold now and returns what to do;
//! the controller reads the cgroups and sends the signals.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One instance cgroup as the sweep sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupView {
    /// The instance the cgroup is named after.
    pub process_id: String,
    /// An observed instance has a live process in it.
    pub owned: bool,
    /// An observed instance of this name exists (with or without process):
    /// its cgroup is kept for its next start.
    pub observed: bool,
    /// Live processes in the cgroup.
    pub pids: Vec<u32>,
}

/// A side effect the controller carries out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanAction {
    /// SIGTERM each of these processes.
    Terminate {
        /// The cgroup's instance.
        process_id: String,
        /// Its processes.
        pids: Vec<u32>,
    },
    /// SIGKILL everything in the cgroup (the grace period is over).
    Kill {
        /// The cgroup's instance.
        process_id: String,
    },
    /// The cgroup is empty and nobody's: remove it.
    Remove {
        /// The cgroup's instance.
        process_id: String,
    },
}

/// Cgroups being reaped, with the end of their grace period.
#[derive(Debug, Clone, Default)]
pub struct Orphans {
    reaping: BTreeMap<String, Instant>,
}

impl Orphans {
    /// True while the orphans of `process_id` are being stopped: a new
    /// process of it must wait, or it would run beside them.
    pub fn is_reaping(&self, process_id: &str) -> bool {
        self.reaping.contains_key(process_id)
    }

    /// Starts reaping `pids` of `process_id`'s cgroup.
    pub fn reap(
        &mut self,
        process_id: &str,
        pids: Vec<u32>,
        grace: Duration,
        now: Instant,
    ) -> OrphanAction {
        let deadline = now.checked_add(grace).unwrap_or(now);
        self.reaping.insert(process_id.to_string(), deadline);
        OrphanAction::Terminate {
            process_id: process_id.to_string(),
            pids,
        }
    }

    /// A sweep over every instance cgroup: the unowned ones with processes
    /// start being reaped; the empty ones nobody uses are removed.
    pub fn sweep(
        &mut self,
        cgroups: impl IntoIterator<Item = CgroupView>,
        grace: Duration,
        now: Instant,
    ) -> Vec<OrphanAction> {
        let mut actions = Vec::new();
        for c in cgroups {
            if c.owned || self.is_reaping(&c.process_id) {
                continue;
            }
            if c.pids.is_empty() {
                if !c.observed {
                    actions.push(OrphanAction::Remove {
                        process_id: c.process_id,
                    });
                }
                continue;
            }
            actions.push(self.reap(&c.process_id, c.pids, grace, now));
        }
        actions
    }

    /// Moves every reaping on, given how each cgroup looks now (`owned`:
    /// an instance owns a process there now; `empty`: no process is left).
    /// Returns what to do and when to look again at the latest.
    pub fn progress(
        &mut self,
        look: impl Fn(&str) -> (bool, bool),
        now: Instant,
    ) -> (Vec<OrphanAction>, Option<Instant>) {
        let mut actions = Vec::new();
        self.reaping.retain(|id, deadline| {
            let (owned, empty) = look(id);
            // Never kill what an instance owns now.
            if owned {
                return false;
            }
            if empty {
                actions.push(OrphanAction::Remove {
                    process_id: id.clone(),
                });
                return false;
            }
            if now >= *deadline {
                actions.push(OrphanAction::Kill {
                    process_id: id.clone(),
                });
            }
            true
        });
        (actions, self.reaping.values().min().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, owned: bool, observed: bool, pids: &[u32]) -> CgroupView {
        CgroupView {
            process_id: id.into(),
            owned,
            observed,
            pids: pids.to_vec(),
        }
    }

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn the_sweep_reaps_only_unowned_processes_and_removes_unused_empty_cgroups() {
        let mut o = Orphans::default();
        let now = Instant::now();
        let actions = o.sweep(
            [
                view("ns:owned:p", true, true, &[10]),
                view("ns:orphan:p", false, false, &[11, 12]),
                view("ns:empty:p", false, false, &[]),
                view("ns:waiting:p", false, true, &[]),
            ],
            GRACE,
            now,
        );
        assert_eq!(
            actions,
            vec![
                OrphanAction::Terminate {
                    process_id: "ns:orphan:p".into(),
                    pids: vec![11, 12]
                },
                OrphanAction::Remove {
                    process_id: "ns:empty:p".into()
                },
            ]
        );
        assert!(o.is_reaping("ns:orphan:p"));
        // A second sweep does not signal it again.
        assert!(
            o.sweep([view("ns:orphan:p", false, false, &[11])], GRACE, now)
                .is_empty()
        );
    }

    #[test]
    fn reaping_kills_at_the_deadline_and_ends_when_the_cgroup_is_empty() {
        let mut o = Orphans::default();
        let t0 = Instant::now();
        o.reap("ns:x:p", vec![5], GRACE, t0);
        let busy = |_: &str| (false, false);
        let (actions, wake) = o.progress(busy, t0 + Duration::from_secs(1));
        assert!(actions.is_empty());
        assert_eq!(wake, Some(t0 + GRACE));
        let (actions, _) = o.progress(busy, t0 + GRACE);
        assert_eq!(
            actions,
            vec![OrphanAction::Kill {
                process_id: "ns:x:p".into()
            }]
        );
        let (actions, wake) = o.progress(|_| (false, true), t0 + GRACE);
        assert_eq!(
            actions,
            vec![OrphanAction::Remove {
                process_id: "ns:x:p".into()
            }]
        );
        assert_eq!(wake, None);
        assert!(!o.is_reaping("ns:x:p"));
    }

    #[test]
    fn what_an_instance_owns_again_is_never_killed() {
        let mut o = Orphans::default();
        let t0 = Instant::now();
        o.reap("ns:x:p", vec![5], GRACE, t0);
        let (actions, wake) = o.progress(|_| (true, false), t0 + GRACE * 2);
        assert!(actions.is_empty());
        assert_eq!(wake, None);
    }
}
