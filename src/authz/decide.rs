//! Who may do what: the caller's role under the policy in force (or the
//! defaults without one), and whether the instance, namespace or pattern a
//! call names is within it. Pure.
//!
//! [`decide`] is the whole decision; the API takes it in two steps: the
//! role and verb first ([`Mode::grant`]), then each name the call carries
//! ([`Grant::check`]), keeping the [`Grant`] to filter what it returns.

use std::fmt;
use std::sync::Arc;

use super::policy::{Policy, Principal, Role};
use super::scope::{InstanceRef, Limits};
use crate::api::identity::Identity;
use crate::spec::Isolation;

/// What a call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// LaunchPattern.
    Launch,
    /// TerminatePattern.
    Terminate,
    /// RestartPattern.
    Restart,
    /// SignalPattern.
    Signal,
    /// Everything that only reads: List, Describe, GetProcessStatus,
    /// GetLogs, Watch, Health, ListSources.
    Read,
}

impl Verb {
    /// Whether it changes anything (the rate limit and the audit log are
    /// for these).
    pub fn mutates(self) -> bool {
        self != Verb::Read
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verb::Launch => "launch",
            Verb::Terminate => "terminate",
            Verb::Restart => "restart",
            Verb::Signal => "signal",
            Verb::Read => "read",
        })
    }
}

/// What a call names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Whatever the caller may see, narrowed to this namespace and
    /// pattern when they are not empty.
    Within {
        /// A namespace the call names, or empty.
        namespace: &'a str,
        /// A pattern the call names, or empty.
        pattern: &'a str,
    },
    /// One instance by its process_id.
    Id(&'a str),
    /// One instance by what it is.
    Instance {
        /// Its isolation level.
        isolation: Isolation,
        /// Its namespace (empty for NONE).
        namespace: &'a str,
        /// Its pattern.
        pattern: &'a str,
    },
}

/// A call: what it does and what it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action<'a> {
    /// What it does.
    pub verb: Verb,
    /// What it names.
    pub target: Target<'a>,
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The caller has no identity the launcher can trust (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (PERMISSION_DENIED).
    #[error("{0}")]
    Denied(String),
}

/// The outcome of [`decide`].
pub type Decision = Result<Grant, Refusal>;

/// The authorization in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No `--authz`: root and `owner` (the launcher's user) are admin on
    /// the Unix socket, other users are refused; TCP callers (loopback
    /// unless the transport says otherwise) and verified client
    /// certificates are admin; a caller of unknown origin is refused.
    Default {
        /// The launcher's user id.
        owner: u32,
    },
    /// A policy file's rules.
    Policy {
        /// The file, as errors name it.
        file: String,
        /// Its rules, names resolved.
        policy: Arc<Policy<Principal>>,
    },
}

/// What a caller was granted: who it is, its role, and the limits every
/// name it uses and everything it is shown must be within.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The caller, as messages and the audit log name it.
    pub who: String,
    /// Its role: `admin`, `tenant` or `viewer`.
    pub role: &'static str,
    /// Its limits; `None` when it may see everything.
    pub limits: Option<Arc<Limits>>,
    /// What it asked to do.
    pub verb: Verb,
}

fn principal_matches(p: &Principal, id: &Identity) -> bool {
    match (p, id) {
        (Principal::Uid(u), Identity::Unix { uid, .. }) => u == uid,
        // The primary group only: SO_PEERCRED carries no other.
        (Principal::Gid(g), Identity::Unix { gid, .. }) => g == gid,
        (Principal::CertCn(c), Identity::Cert { cn: Some(cn), .. }) => c == cn,
        (Principal::CertSan(s), Identity::Cert { sans, .. }) => sans.iter().any(|x| x == s),
        _ => false,
    }
}

impl Mode {
    /// The caller's role, if it may do `verb` at all.
    ///
    /// # Errors
    ///
    /// No identity under a policy (or an unknown origin): unauthenticated;
    /// no matching rule, a user refused by the defaults, or a viewer asking
    /// to change something: denied.
    pub fn grant(&self, id: &Identity, verb: Verb) -> Decision {
        let who = id.to_string();
        let (role, rule) = match self {
            Mode::Default { owner } => match id {
                Identity::Unix { uid, .. } if *uid == 0 || uid == owner => (Role::Admin, None),
                Identity::Unix { .. } => {
                    return Err(Refusal::Denied(format!(
                        "{who} may not use the launcher: without --authz only root and uid {owner} (the launcher's user) may call it on the Unix socket"
                    )));
                }
                Identity::Cert { .. } | Identity::Tcp { .. } => (Role::Admin, None),
                Identity::Unknown => {
                    return Err(Refusal::Unauthenticated(
                        "the caller's identity is unknown".into(),
                    ));
                }
            },
            Mode::Policy { file, policy } => {
                if !id.is_authenticated() {
                    return Err(Refusal::Unauthenticated(format!(
                        "{who} has no identity, and the policy {file} is in force: call on the Unix socket or with a client certificate"
                    )));
                }
                match policy.rules.iter().find(|r| principal_matches(&r.who, id)) {
                    Some(r) => (r.role.clone(), Some(format!("{file}:{}", r.line))),
                    None => {
                        return Err(Refusal::Denied(format!(
                            "{who} may not use the launcher: no rule of {file} matches it"
                        )));
                    }
                }
            }
        };
        let role_name = role.name();
        let limits = match role {
            Role::Admin => None,
            Role::Viewer(_) if verb.mutates() => {
                let at = rule.map(|r| format!(" (rule at {r})")).unwrap_or_default();
                return Err(Refusal::Denied(format!(
                    "{who} is a viewer{at} and may not {verb}"
                )));
            }
            Role::Tenant(l) | Role::Viewer(l) => (!l.is_unlimited()).then(|| Arc::new(l)),
        };
        Ok(Grant {
            who,
            role: role_name,
            limits,
            verb,
        })
    }
}

/// The whole decision for one call: the caller's role, then what it names.
///
/// # Errors
///
/// As [`Mode::grant`] and [`Grant::check`].
pub fn decide(mode: &Mode, id: &Identity, action: &Action<'_>) -> Decision {
    let grant = mode.grant(id, action.verb)?;
    grant.check(&action.target)?;
    Ok(grant)
}

impl Grant {
    /// Whether `target` is within the grant's limits.
    ///
    /// # Errors
    ///
    /// Denied, naming the caller and the namespace (or pattern, or
    /// instance) outside its limits.
    pub fn check(&self, target: &Target<'_>) -> Result<(), Refusal> {
        let Some(limits) = &self.limits else {
            return Ok(());
        };
        let why = match *target {
            Target::Within { namespace, pattern } => {
                if !namespace.is_empty() && !limits.admits_namespace(namespace) {
                    Some(self.outside("namespace", namespace, limits))
                } else if !pattern.is_empty() && !limits.admits_pattern(pattern) {
                    Some(self.outside("pattern", pattern, limits))
                } else {
                    None
                }
            }
            Target::Id(id) => match InstanceRef::parse(id) {
                Some(r) => self.instance(limits, r.isolation, &r.namespace, &r.pattern),
                None => Some(format!(
                    "{id:?} is not the process_id of an instance within its {limits}"
                )),
            },
            Target::Instance {
                isolation,
                namespace,
                pattern,
            } => self.instance(limits, isolation, namespace, pattern),
        };
        match why {
            None => Ok(()),
            Some(why) => Err(Refusal::Denied(format!(
                "{} ({}) may not {}{}: {why}",
                self.who,
                self.role,
                self.verb,
                match target {
                    Target::Id(id) => format!(" {id}"),
                    _ => String::new(),
                }
            ))),
        }
    }

    fn outside(&self, what: &str, name: &str, limits: &Limits) -> String {
        format!("{what} {name:?} is outside its {limits}")
    }

    fn instance(
        &self,
        limits: &Limits,
        isolation: Isolation,
        namespace: &str,
        pattern: &str,
    ) -> Option<String> {
        if limits.admits(isolation, namespace, pattern) {
            None
        } else if isolation == Isolation::None && limits.namespaces.is_some() {
            Some(format!(
                "an instance of isolation none (pattern {pattern:?}) is shared by every namespace; it is outside its {limits}"
            ))
        } else if !limits.admits_namespace(namespace) {
            Some(self.outside("namespace", namespace, limits))
        } else {
            Some(self.outside("pattern", pattern, limits))
        }
    }

    /// Whether the instance is one the caller may see.
    pub fn admits_instance(&self, s: &crate::controller::snapshot::InstanceStatus) -> bool {
        self.limits.as_ref().is_none_or(|l| l.admits_instance(s))
    }

    /// Whether the caller may use the pattern.
    pub fn may_use_pattern(&self, name: &str) -> bool {
        self.limits.as_ref().is_none_or(|l| l.admits_pattern(name))
    }

    /// Of `names`, the patterns the caller may use.
    pub fn usable_patterns<'a>(&self, names: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
        names.filter(|n| self.may_use_pattern(n)).collect()
    }

    /// The patterns of `names` it may use, as a "not found" error lists
    /// them.
    pub fn known_patterns<'a>(&self, names: impl Iterator<Item = &'a str>) -> String {
        let usable = self.usable_patterns(names);
        if usable.is_empty() {
            "no pattern it may use is known".to_string()
        } else {
            format!("known: {}", usable.join(", "))
        }
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
