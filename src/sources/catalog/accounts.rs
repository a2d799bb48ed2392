//! Looking up a manifest's `user:` and `group:` in the user and group
//! databases (whatever `nsswitch.conf` names: `/etc/passwd`, `/etc/group`,
//! LDAP...) when the catalog loads the manifest: a name that does not
//! resolve makes the manifest invalid, as any other error in it does.
//!
//! The supplementary groups are not looked up here but at each start (see
//! `runtime::spawn`), as a login does.

use crate::spec::manifest::Pattern;
use crate::spec::run_as::{Account, Ids};
use crate::spec::yaml::YamlError;
use nix::unistd::{Gid, Group, Uid, User};

/// Fills in `pattern.run_as.ids`; a pattern without `user:` is returned
/// as it is.
///
/// # Errors
///
/// A user or group the databases do not know, a numeric user with no
/// passwd entry and no `group:`, or a failed look-up; each names the key
/// and the value.
pub fn resolve(mut pattern: Pattern, display: &str) -> Result<Pattern, YamlError> {
    let Some(run_as) = pattern.run_as.as_mut() else {
        return Ok(pattern);
    };
    let err = |message: String| YamlError::file(display, message);
    let (uid, user) = match &run_as.user {
        Account::Name(name) => match User::from_name(name) {
            Ok(Some(u)) => (u.uid.as_raw(), Some(u)),
            Ok(None) => {
                return Err(err(format!(
                    "key `user`: no user named {name:?} in the user database"
                )));
            }
            Err(e) => return Err(err(format!("key `user`: cannot look up {name:?}: {e}"))),
        },
        Account::Id(uid) => (
            *uid,
            User::from_uid(Uid::from_raw(*uid))
                .map_err(|e| err(format!("key `user`: cannot look up uid {uid}: {e}")))?,
        ),
    };
    let gid = match &run_as.group {
        Some(Account::Name(name)) => match Group::from_name(name) {
            Ok(Some(g)) => g.gid.as_raw(),
            Ok(None) => {
                return Err(err(format!(
                    "key `group`: no group named {name:?} in the group database"
                )));
            }
            Err(e) => return Err(err(format!("key `group`: cannot look up {name:?}: {e}"))),
        },
        Some(Account::Id(gid)) => Group::from_gid(Gid::from_raw(*gid))
            .map(|_| *gid)
            .map_err(|e| err(format!("key `group`: cannot look up gid {gid}: {e}")))?,
        None => match &user {
            Some(u) => u.gid.as_raw(),
            None => {
                return Err(err(format!(
                    "key `user`: uid {uid} has no entry in the user database, so no primary group: set `group`"
                )));
            }
        },
    };
    run_as.ids = Some(Ids {
        uid,
        gid,
        name: user.as_ref().map(|u| u.name.clone()),
        home: user.map(|u| u.dir),
    });
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::run_as::RunAs;

    fn with(user: &str, group: Option<&str>) -> Result<Ids, YamlError> {
        let mut p = Pattern::sample("p");
        p.run_as = Some(RunAs {
            user: Account::parse(user).unwrap(),
            group: group.map(|g| Account::parse(g).unwrap()),
            ids: None,
        });
        resolve(p, "patterns/p/manifest.yaml").map(|p| p.run_as.unwrap().ids.unwrap())
    }

    #[test]
    fn names_and_ids_resolve_through_the_databases() {
        // nobody and root are in every passwd; nobody's group is named
        // nogroup or nobody depending on the distribution.
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let ids = with("nobody", None).unwrap();
        assert_eq!(ids.uid, nobody.uid.as_raw());
        assert_eq!(ids.gid, nobody.gid.as_raw(), "the primary group by default");
        assert_eq!(ids.name.as_deref(), Some("nobody"));
        assert_eq!(ids.home, Some(nobody.dir.clone()));
        // A numeric user gets its name and home from passwd too.
        let ids = with(&nobody.uid.to_string(), None).unwrap();
        assert_eq!(ids.name.as_deref(), Some("nobody"));
        let root = with("0", Some("root")).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let root_home = User::from_uid(Uid::from_raw(0)).unwrap().unwrap().dir;
        assert_eq!(root.home, Some(root_home));
        let ids = with("nobody", Some("0")).unwrap();
        assert_eq!((ids.uid, ids.gid), (nobody.uid.as_raw(), 0));
    }

    #[test]
    fn unknown_names_make_the_manifest_invalid_naming_them() {
        let e = with("no-such-user-x9", None).unwrap_err();
        assert_eq!(e.file, "patterns/p/manifest.yaml");
        assert!(e.message.contains("key `user`"), "{e}");
        assert!(e.message.contains("\"no-such-user-x9\""), "{e}");
        let e = with("nobody", Some("no-such-group-x9")).unwrap_err();
        assert!(e.message.contains("key `group`"), "{e}");
        assert!(e.message.contains("\"no-such-group-x9\""), "{e}");
    }

    #[test]
    fn a_numeric_user_without_an_entry_needs_a_group() {
        let free = (4_000_000..)
            .find(|u| User::from_uid(Uid::from_raw(*u)).unwrap().is_none())
            .unwrap();
        let e = with(&free.to_string(), None).unwrap_err();
        assert!(e.message.contains("set `group`"), "{e}");
        let ids = with(&free.to_string(), Some("12345")).unwrap();
        assert_eq!((ids.uid, ids.gid), (free, 12345));
        assert_eq!((ids.name, ids.home), (None, None));
    }

    #[test]
    fn a_pattern_without_user_is_left_alone() {
        let p = Pattern::sample("p");
        assert_eq!(resolve(p.clone(), "m").unwrap(), p);
    }

    #[test]
    fn the_catalog_reports_an_unknown_user_as_an_invalid_manifest() {
        use super::super::{Catalog, DiscoveryError, MANIFEST_FILE};
        let t = tempfile::tempdir().unwrap();
        let write = |user: &str| {
            std::fs::create_dir_all(t.path().join("a")).unwrap();
            let m = format!(
                "name: alpha\nversion: '1'\nexecutable: ./x\nisolation_level: none\nuser: {user}\n"
            );
            std::fs::write(t.path().join("a").join(MANIFEST_FILE), m).unwrap();
        };
        write("nobody");
        let (cat, errors) = Catalog::discover(t.path());
        assert!(errors.is_empty(), "{errors:?}");
        let ids = cat.get("alpha").unwrap().run_as.clone().unwrap().ids;
        assert_eq!(ids.map(|i| i.name), Some(Some("nobody".to_string())));
        write("no-such-user-x9");
        let (next, errors) = cat.reload(t.path());
        assert!(
            matches!(&errors[..], [DiscoveryError::Invalid { kept: true, error }]
                if error.message.contains("no-such-user-x9")),
            "{errors:?}"
        );
        assert!(next.manifests()[0].error.is_some());
        assert!(next.get("alpha").is_some(), "the last good version stays");
    }
}
