//! Whom a started process runs as: the ids of the manifest's `user:` and
//! `group:` and the user's supplementary groups, prepared in the launcher
//! before the clone (the child only makes the system calls), and the
//! variables that name the user (`HOME`, `USER`, `LOGNAME`).
//!
//! Decides only whether the launcher can switch to them at all: as root it
//! can; as anyone else only to itself.

use std::ffi::{CString, OsString};

use nix::unistd::{Gid, getegid, geteuid, getgrouplist};

use crate::spec::manifest::Pattern;
use crate::spec::run_as::{Ids, RunAs};

/// Why a pattern's processes cannot run as its manifest says.
#[derive(Debug, thiserror::Error)]
pub enum RunAsError {
    /// Only root can switch to another user.
    #[error(
        "the pattern runs as {who} but the launcher runs as uid {euid} gid {egid}, not as root: it cannot switch to another user (run the launcher as root, or remove `user:` from the manifest)"
    )]
    NotRoot {
        /// The account, as messages name it.
        who: String,
        /// The launcher's effective uid.
        euid: u32,
        /// The launcher's effective gid.
        egid: u32,
    },
    /// The catalog did not look the account up (a pattern built without
    /// the catalog): it is not started as the launcher's user instead.
    #[error("the pattern runs as {who}, whose ids were never looked up")]
    Unresolved {
        /// The account, as messages name it.
        who: String,
    },
    /// The group database could not be read.
    #[error("cannot look up the supplementary groups of {who}: {source}")]
    Groups {
        /// The account, as messages name it.
        who: String,
        /// The error of `getgrouplist`.
        source: nix::Error,
    },
}

/// The ids a child switches to before it execs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChildCreds {
    pub uid: nix::libc::uid_t,
    pub gid: nix::libc::gid_t,
    /// Supplementary groups: the user's in the group database, with `gid`.
    pub groups: Vec<nix::libc::gid_t>,
}

/// The resolved ids of a pattern with `user:`, or why there are none.
fn ids(run_as: &RunAs) -> Result<&Ids, RunAsError> {
    run_as.ids.as_ref().ok_or_else(|| RunAsError::Unresolved {
        who: run_as.describe(),
    })
}

/// Whether the launcher switches to other ids for `pattern`: `Some` when
/// it runs as root, `None` when the manifest names no user or names the
/// launcher's own uid and gid (nothing to switch).
fn switch_to(pattern: &Pattern) -> Result<Option<&Ids>, RunAsError> {
    let Some(run_as) = &pattern.run_as else {
        return Ok(None);
    };
    let ids = ids(run_as)?;
    let (euid, egid) = (geteuid().as_raw(), getegid().as_raw());
    if euid == 0 {
        return Ok(Some(ids));
    }
    if ids.uid == euid && ids.gid == egid {
        return Ok(None);
    }
    Err(RunAsError::NotRoot {
        who: run_as.describe(),
        euid,
        egid,
    })
}

/// Checks, before a launch is accepted, that the launcher can start
/// `pattern`'s processes as its manifest says. Looks nothing up.
///
/// # Errors
///
/// See [`RunAsError`] (all but `Groups`).
pub fn check_run_as(pattern: &Pattern) -> Result<(), RunAsError> {
    switch_to(pattern).map(drop)
}

/// The ids the child of `pattern` switches to, its supplementary groups
/// looked up now (`getgrouplist`, as `initgroups` at a login): the group
/// database as it is at each start.
pub(super) fn child_creds(pattern: &Pattern) -> Result<Option<ChildCreds>, RunAsError> {
    let Some(ids) = switch_to(pattern)? else {
        return Ok(None);
    };
    let groups = match &ids.name {
        Some(name) => {
            let who = || {
                pattern
                    .run_as
                    .as_ref()
                    .map(RunAs::describe)
                    .unwrap_or_default()
            };
            let name = CString::new(name.as_bytes()).map_err(|_| RunAsError::Groups {
                who: who(),
                source: nix::Error::EINVAL,
            })?;
            getgrouplist(&name, Gid::from_raw(ids.gid))
                .map_err(|source| RunAsError::Groups { who: who(), source })?
                .into_iter()
                .map(Gid::as_raw)
                .collect()
        }
        // A uid with no passwd entry is in no group of the database.
        None => vec![ids.gid],
    };
    Ok(Some(ChildCreds {
        uid: ids.uid,
        gid: ids.gid,
        groups,
    }))
}

/// `HOME`, `USER` and `LOGNAME` of the manifest's user, as systemd's
/// `User=` sets them: its home (`/` without a passwd entry) and its name
/// (unset without one). Nothing for a pattern without `user:`.
pub(super) fn user_env(pattern: &Pattern) -> Vec<(OsString, OsString)> {
    let Some(ids) = pattern.run_as.as_ref().and_then(|r| r.ids.as_ref()) else {
        return Vec::new();
    };
    let home = ids
        .home
        .as_ref()
        .map_or_else(|| OsString::from("/"), |h| h.as_os_str().to_owned());
    let mut env = vec![(OsString::from("HOME"), home)];
    if let Some(name) = &ids.name {
        env.push(("USER".into(), name.into()));
        env.push(("LOGNAME".into(), name.into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::run_as::Account;

    fn as_user(uid: u32, gid: u32, name: Option<&str>) -> Pattern {
        let mut p = Pattern::sample("p");
        p.run_as = Some(RunAs {
            user: name.map_or(Account::Id(uid), |n| Account::Name(n.into())),
            group: None,
            ids: Some(Ids {
                uid,
                gid,
                name: name.map(Into::into),
                home: name.map(|n| format!("/home/{n}").into()),
            }),
        });
        p
    }

    #[test]
    fn an_unresolved_user_is_never_started_as_the_launcher() {
        let mut p = as_user(65534, 65534, Some("nobody"));
        if let Some(r) = p.run_as.as_mut() {
            r.ids = None;
        }
        assert!(matches!(
            child_creds(&p),
            Err(RunAsError::Unresolved { .. })
        ));
        assert!(check_run_as(&p).is_err());
    }

    #[test]
    fn root_switches_with_the_users_groups_from_the_database() {
        assert!(geteuid().is_root(), "this test needs root");
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        let p = as_user(nobody.uid.as_raw(), nobody.gid.as_raw(), Some("nobody"));
        let c = child_creds(&p).unwrap().unwrap();
        assert_eq!((c.uid, c.gid), (nobody.uid.as_raw(), nobody.gid.as_raw()));
        let expected: Vec<u32> = getgrouplist(c"nobody", nobody.gid)
            .unwrap()
            .into_iter()
            .map(Gid::as_raw)
            .collect();
        assert_eq!(c.groups, expected);
        assert!(c.groups.contains(&nobody.gid.as_raw()));
        assert!(!c.groups.contains(&0), "none of root's groups");
        // Without a passwd entry: only the group given.
        let c = child_creds(&as_user(4_000_123, 777, None))
            .unwrap()
            .unwrap();
        assert_eq!(c.groups, vec![777]);
        assert!(child_creds(&Pattern::sample("p")).unwrap().is_none());
    }

    #[test]
    fn home_user_and_logname_name_the_user() {
        let env = user_env(&as_user(65534, 65534, Some("nobody")));
        let get = |k: &str| {
            env.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("HOME").as_deref(), Some("/home/nobody"));
        assert_eq!(get("USER").as_deref(), Some("nobody"));
        assert_eq!(get("LOGNAME").as_deref(), Some("nobody"));
        let env = user_env(&as_user(4_000_123, 777, None));
        assert_eq!(env, vec![("HOME".into(), "/".into())]);
        assert!(user_env(&Pattern::sample("p")).is_empty());
    }

    /// In a process of its own, switched to nobody as an unprivileged
    /// launcher would run.
    #[test]
    fn a_launcher_that_is_not_root_refuses_other_users_but_not_its_own() {
        const SEEN: &str = "not-root refusal checked";
        if !crate::test_util::in_child(
            "runtime::spawn::credentials::tests::a_launcher_that_is_not_root_refuses_other_users_but_not_its_own",
            SEEN,
        ) {
            return;
        }
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        nix::unistd::setgroups(&[]).unwrap();
        nix::unistd::setresgid(nobody.gid, nobody.gid, nobody.gid).unwrap();
        nix::unistd::setresuid(nobody.uid, nobody.uid, nobody.uid).unwrap();
        let own = as_user(nobody.uid.as_raw(), nobody.gid.as_raw(), Some("nobody"));
        assert!(check_run_as(&own).is_ok());
        assert_eq!(child_creds(&own).unwrap(), None, "nothing to switch");
        let root = as_user(0, 0, Some("root"));
        let e = child_creds(&root).unwrap_err();
        assert!(matches!(e, RunAsError::NotRoot { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("\"root\" (uid 0, gid 0)"), "{text}");
        assert!(text.contains(&format!("uid {}", nobody.uid)), "{text}");
        assert!(check_run_as(&root).is_err());
        // Its own uid with another group is a switch too.
        let other_group = as_user(nobody.uid.as_raw(), 0, Some("nobody"));
        assert!(check_run_as(&other_group).is_err());
        println!("{SEEN}");
    }
}
