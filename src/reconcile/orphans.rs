//! The orphan sweep and the reaping of what it finds: processes in this
//! launcher's cgroups that no instance owns (left by a crashed launcher, or
//! by an instance's process that escaped its group) get SIGTERM, SIGKILL at
//! the end of the grace period, and their cgroup is removed once empty.
//!
//! Pure: it is handed how one cgroup looks now (and its [`Reaping`], which
//! the controller keeps with the rest of the instance's runtime state) and
//! returns what to do; the controller reads the cgroups and sends the
//! signals.

use std::time::{Duration, Instant};

/// How soon a cgroup whose orphans were sent SIGKILL is looked at again
/// while they die.
pub const RELOOK: Duration = Duration::from_millis(10);

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

/// The orphans of one cgroup being stopped: they got SIGTERM, and get
/// SIGKILL at `kill_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaping {
    /// The end of their grace period.
    pub kill_at: Instant,
}

/// Starts reaping `pids` of `process_id`'s cgroup.
pub fn reap(
    process_id: &str,
    pids: Vec<u32>,
    grace: Duration,
    now: Instant,
) -> (Reaping, OrphanAction) {
    let kill_at = now.checked_add(grace).unwrap_or(now);
    (
        Reaping { kill_at },
        OrphanAction::Terminate {
            process_id: process_id.to_string(),
            pids,
        },
    )
}

/// What a sweep does with one instance cgroup (`reaping`: its orphans are
/// being stopped already): unowned processes start being reaped (the
/// reaping is returned); an empty cgroup nobody uses is removed.
pub fn sweep(
    c: CgroupView,
    reaping: bool,
    grace: Duration,
    now: Instant,
) -> Option<(OrphanAction, Option<Reaping>)> {
    if c.owned || reaping {
        return None;
    }
    if c.pids.is_empty() {
        return (!c.observed).then_some((
            OrphanAction::Remove {
                process_id: c.process_id,
            },
            None,
        ));
    }
    let (r, action) = reap(&c.process_id, c.pids, grace, now);
    Some((action, Some(r)))
}

/// Where a reaping stands after a look at its cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// What to do now.
    pub action: Option<OrphanAction>,
    /// The reaping goes on.
    pub goes_on: bool,
    /// When to look again at the latest (while it goes on).
    pub look_again: Option<Instant>,
}

/// Moves the reaping in `process_id`'s cgroup on, given how the cgroup
/// looks now (`owned`: an instance owns a process there now; `empty`: no
/// process is left).
pub fn progress(r: Reaping, process_id: &str, owned: bool, empty: bool, now: Instant) -> Progress {
    // Never kill what an instance owns now.
    if owned {
        return Progress {
            action: None,
            goes_on: false,
            look_again: None,
        };
    }
    if empty {
        return Progress {
            action: Some(OrphanAction::Remove {
                process_id: process_id.to_string(),
            }),
            goes_on: false,
            look_again: None,
        };
    }
    if now >= r.kill_at {
        return Progress {
            action: Some(OrphanAction::Kill {
                process_id: process_id.to_string(),
            }),
            goes_on: true,
            look_again: Some(now + RELOOK),
        };
    }
    Progress {
        action: None,
        goes_on: true,
        look_again: Some(r.kill_at),
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
        let now = Instant::now();
        let sweep = |v: CgroupView, reaping: bool| sweep(v, reaping, GRACE, now);
        assert_eq!(sweep(view("ns:owned:p", true, true, &[10]), false), None);
        assert_eq!(
            sweep(view("ns:orphan:p", false, false, &[11, 12]), false),
            Some((
                OrphanAction::Terminate {
                    process_id: "ns:orphan:p".into(),
                    pids: vec![11, 12]
                },
                Some(Reaping {
                    kill_at: now + GRACE
                })
            ))
        );
        assert_eq!(
            sweep(view("ns:empty:p", false, false, &[]), false),
            Some((
                OrphanAction::Remove {
                    process_id: "ns:empty:p".into()
                },
                None
            ))
        );
        assert_eq!(sweep(view("ns:waiting:p", false, true, &[]), false), None);
        // A sweep during the reaping does not signal it again.
        assert_eq!(sweep(view("ns:orphan:p", false, false, &[11]), true), None);
    }

    #[test]
    fn reaping_kills_at_the_deadline_and_ends_when_the_cgroup_is_empty() {
        let t0 = Instant::now();
        let (r, _) = reap("ns:x:p", vec![5], GRACE, t0);
        let busy = |now| progress(r, "ns:x:p", false, false, now);
        assert_eq!(
            busy(t0 + Duration::from_secs(1)),
            Progress {
                action: None,
                goes_on: true,
                look_again: Some(t0 + GRACE)
            }
        );
        // At the deadline, SIGKILL; then a look soon, while they die.
        assert_eq!(
            busy(t0 + GRACE),
            Progress {
                action: Some(OrphanAction::Kill {
                    process_id: "ns:x:p".into()
                }),
                goes_on: true,
                look_again: Some(t0 + GRACE + RELOOK)
            }
        );
        assert_eq!(
            progress(r, "ns:x:p", false, true, t0 + GRACE),
            Progress {
                action: Some(OrphanAction::Remove {
                    process_id: "ns:x:p".into()
                }),
                goes_on: false,
                look_again: None
            }
        );
    }

    #[test]
    fn what_an_instance_owns_again_is_never_killed() {
        let t0 = Instant::now();
        let (r, _) = reap("ns:x:p", vec![5], GRACE, t0);
        let p = progress(r, "ns:x:p", true, false, t0 + GRACE * 2);
        assert_eq!(p.action, None);
        assert!(!p.goes_on);
    }
}
