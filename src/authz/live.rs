//! The authorization in force, as the API reads it at each call: the
//! defaults, or the `--authz` policy file, loaded at start-up (a file that
//! cannot be loaded then stops the launcher) and again whenever it
//! changes. A change that cannot be loaded is logged, and the last good
//! policy stays in force.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::decide::Mode;
use super::policy::parse_policy;
use crate::sources::watched_file::{FileSink, watch_file};
use crate::spec::yaml::{self, YamlError};

/// The authorization in force and what became of the last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// What decides.
    pub mode: Mode,
    /// Why the policy file's current content is not in force, if it is not.
    pub rejected: Option<String>,
    /// Counts the policies put in force.
    pub generation: u64,
}

/// The `--authz` file cannot be used at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// Missing, unreadable, or not a valid policy.
    #[error("--authz {0}")]
    Invalid(#[from] YamlError),
    /// The watcher's thread could not be started.
    #[error("--authz: cannot watch {file}: {source}")]
    Watch {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The authorization in force (cheap to clone; every clone sees reloads).
#[derive(Debug, Clone)]
pub struct Authz {
    rx: watch::Receiver<Arc<State>>,
}

fn load(text: &str, file: &str) -> Result<Mode, YamlError> {
    let policy = parse_policy(text)
        .and_then(|p| p.resolve_on_system())
        .map_err(|e| e.in_file(file))?;
    Ok(Mode::Policy {
        file: file.to_string(),
        policy: Arc::new(policy),
    })
}

fn hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Authz {
    /// A fixed mode, never reloaded.
    pub fn fixed(mode: Mode) -> Authz {
        let (tx, rx) = watch::channel(Arc::new(State {
            mode,
            rejected: None,
            generation: 1,
        }));
        // Nothing will send: the receiver keeps the last value.
        drop(tx);
        Authz { rx }
    }

    /// The defaults of a launcher running as `owner`.
    pub fn defaults(owner: u32) -> Authz {
        Authz::fixed(Mode::Default { owner })
    }

    /// Loads the policy at `path` and keeps watching it: every change is
    /// loaded (names resolved again), at the latest at the next rescan.
    ///
    /// # Errors
    ///
    /// The file is missing, unreadable or no valid policy now.
    pub fn watch(path: &Path, rescan: Duration) -> Result<Authz, AuthzError> {
        let file = path.display().to_string();
        let text = yaml::read_limited(path, &file)?;
        let mode = load(&text, &file)?;
        let (tx, rx) = watch::channel(Arc::new(State {
            mode,
            rejected: None,
            generation: 1,
        }));
        let sink = Reloader {
            file: file.clone(),
            tx,
            applied: hash(&text),
        };
        watch_file(path.to_path_buf(), file.clone(), rescan, sink)
            .map_err(|source| AuthzError::Watch { file, source })?;
        Ok(Authz { rx })
    }

    /// The state in force now.
    pub fn state(&self) -> Arc<State> {
        self.rx.borrow().clone()
    }

    /// A receiver of every new state (tests wait on it).
    pub fn subscribe(&self) -> watch::Receiver<Arc<State>> {
        self.rx.clone()
    }
}

/// Loads each new content of the policy file.
struct Reloader {
    file: String,
    tx: watch::Sender<Arc<State>>,
    /// The hash of the text in force.
    applied: u64,
}

impl Reloader {
    fn reject(&self, why: String) {
        tracing::warn!("authz: {why}; the last good policy stays in force");
        self.tx.send_modify(|s| {
            *s = Arc::new(State {
                rejected: Some(why),
                ..State::clone(s)
            });
        });
    }
}

impl FileSink for Reloader {
    fn changed(&mut self, read: Result<String, YamlError>) {
        let text = match read {
            Ok(text) => text,
            Err(e) => return self.reject(e.to_string()),
        };
        let h = hash(&text);
        if h == self.applied {
            // Back to the text in force (or the first read of it).
            if self.tx.borrow().rejected.is_some() {
                tracing::info!("authz: {} is the policy in force again", self.file);
                self.tx.send_modify(|s| {
                    *s = Arc::new(State {
                        rejected: None,
                        ..State::clone(s)
                    });
                });
            }
            return;
        }
        match load(&text, &self.file) {
            Ok(mode) => {
                let rules = match &mode {
                    Mode::Policy { policy, .. } => policy.rules.len(),
                    Mode::Default { .. } => 0,
                };
                tracing::info!("authz: {} loaded: {rules} rules in force", self.file);
                self.applied = h;
                self.tx.send_modify(|s| {
                    *s = Arc::new(State {
                        mode,
                        rejected: None,
                        generation: s.generation + 1,
                    });
                });
            }
            Err(e) => self.reject(e.to_string()),
        }
    }

    fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::Identity;
    use crate::authz::decide::{Action, Target, Verb, decide};

    const PATIENCE: Duration = Duration::from_secs(30);

    fn unix(uid: u32) -> Identity {
        Identity::Unix {
            uid,
            gid: uid,
            pid: None,
        }
    }

    fn may_launch_in(a: &Authz, uid: u32, ns: &str) -> bool {
        let action = Action {
            verb: Verb::Launch,
            target: Target::Within {
                namespace: ns,
                pattern: "p",
            },
        };
        decide(&a.state().mode, &unix(uid), &action).is_ok()
    }

    fn write(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    async fn until(a: &Authz, what: &str, cond: impl Fn(&State) -> bool) {
        let mut rx = a.subscribe();
        let r = tokio::time::timeout(PATIENCE, rx.wait_for(|s| cond(s))).await;
        assert!(r.is_ok(), "never {what}: {:?}", a.state());
    }

    #[tokio::test]
    async fn an_edit_changes_decisions_and_a_bad_edit_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.yaml");
        write(
            &path,
            "rules:\n  - uid: 1000\n    role: tenant\n    namespaces: [a]\n",
        );
        // A long rescan: the edits must be seen through inotify.
        let authz = Authz::watch(&path, Duration::from_secs(3600)).unwrap();
        assert!(may_launch_in(&authz, 1000, "a"));
        assert!(!may_launch_in(&authz, 1000, "b"));

        write(
            &path,
            "rules:\n  - uid: 1000\n    role: tenant\n    namespaces: [b]\n",
        );
        until(&authz, "reloaded", |s| s.generation == 2).await;
        assert!(may_launch_in(&authz, 1000, "b"));
        assert!(!may_launch_in(&authz, 1000, "a"));

        write(
            &path,
            "rules:\n  - uid: 1000\n    role: tenant\n    bogus: 1\n",
        );
        until(&authz, "the bad edit seen", |s| s.rejected.is_some()).await;
        let st = authz.state();
        let why = st.rejected.as_deref().unwrap();
        assert!(
            why.contains("authz.yaml:4") && why.contains("bogus"),
            "{why}"
        );
        assert_eq!(st.generation, 2);
        assert!(
            may_launch_in(&authz, 1000, "b"),
            "the last good policy stays"
        );

        std::fs::remove_file(&path).unwrap();
        until(&authz, "the removal seen", |s| {
            s.rejected.as_deref().is_some_and(|r| !r.contains("bogus"))
        })
        .await;
        assert!(
            may_launch_in(&authz, 1000, "b"),
            "the last good policy stays"
        );

        write(&path, "rules:\n  - uid: 1000\n    role: admin\n");
        until(&authz, "reloaded", |s| s.generation == 3).await;
        assert!(authz.state().rejected.is_none());
        assert!(may_launch_in(&authz, 1000, "zzz"));
    }

    #[test]
    fn a_missing_or_bad_file_at_start_up_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.yaml");
        let e = Authz::watch(&path, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("none.yaml"), "{e}");
        std::fs::write(
            &path,
            "rules:\n  - user: no-such-user-here\n    role: admin\n",
        )
        .unwrap();
        let e = Authz::watch(&path, Duration::from_secs(1)).unwrap_err();
        assert!(
            e.to_string().contains("none.yaml:2") && e.to_string().contains("no-such-user-here"),
            "{e}"
        );
    }
}
