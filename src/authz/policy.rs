//! The `--authz` policy file: its format ([`parse_policy`], pure: no file
//! system, no name lookups) and the step that turns user and group names
//! into ids ([`Policy::resolve`], given the lookups).
//!
//! ```yaml
//! rules:                     # the first rule that matches the caller wins
//!   - uid: 1000              # exactly one of: uid, user, gid, group, cert_cn, cert_san
//!     role: tenant           # admin | tenant | viewer
//!     namespaces: [tenant-a] # tenant: required; viewer: optional; admin: none
//!     patterns: [hello]      # tenant, viewer: optional (default: every pattern)
//! ```

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::scope::Limits;
use crate::spec::yaml::{self, YamlError};
use crate::spec::{is_valid_name, is_valid_pattern_name};

/// Most rules in a policy.
pub const MAX_RULES: usize = 1000;
/// Most namespaces or patterns in one rule.
pub const MAX_NAMES: usize = 1000;
/// Longest user or group name, certificate CN or SAN.
pub const MAX_TEXT: usize = 1024;

/// A policy the file's text cannot be: the line (when known) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// 1-based line.
    pub line: Option<u64>,
    /// What is wrong, naming the key.
    pub message: String,
}

impl PolicyError {
    fn at(line: u64, message: impl Into<String>) -> Self {
        PolicyError {
            line: (line > 0).then_some(line),
            message: message.into(),
        }
    }

    /// The same error, naming the file it is in.
    pub fn in_file(self, file: &str) -> YamlError {
        YamlError {
            file: file.to_string(),
            line: self.line,
            message: self.message,
        }
    }
}

impl From<YamlError> for PolicyError {
    fn from(e: YamlError) -> Self {
        PolicyError {
            line: e.line,
            message: e.message,
        }
    }
}

/// Whom a rule is about, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A Unix socket peer's user id.
    Uid(u32),
    /// A user name (resolved to a uid when the policy is loaded).
    User(String),
    /// A Unix socket peer's group id.
    Gid(u32),
    /// A group name (resolved to a gid when the policy is loaded).
    Group(String),
    /// The common name of a verified client certificate.
    CertCn(String),
    /// A subject alternative name of a verified client certificate.
    CertSan(String),
}

/// Whom a rule is about, with names resolved: what a caller is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// User id.
    Uid(u32),
    /// Group id.
    Gid(u32),
    /// Certificate common name.
    CertCn(String),
    /// Certificate subject alternative name.
    CertSan(String),
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Uid(u) => write!(f, "uid {u}"),
            Principal::Gid(g) => write!(f, "gid {g}"),
            Principal::CertCn(c) => write!(f, "cert_cn {c:?}"),
            Principal::CertSan(s) => write!(f, "cert_san {s:?}"),
        }
    }
}

/// What a rule lets its caller do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Launch, terminate, restart, signal and read, within the limits
    /// (namespaces always limited).
    Tenant(Limits),
    /// Read only, within the limits (possibly none).
    Viewer(Limits),
}

impl Role {
    /// The word in the file.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant(_) => "tenant",
            Role::Viewer(_) => "viewer",
        }
    }
}

/// One rule: whom it matches, what they may do, where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule<P> {
    /// Whom it matches.
    pub who: P,
    /// What they may do.
    pub role: Role,
    /// Its line in the file.
    pub line: u64,
}

/// A policy: rules in order, the first match wins. `P` is [`Who`] as
/// parsed, [`Principal`] once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy<P = Who> {
    /// The rules.
    pub rules: Vec<Rule<P>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Admin,
    Tenant,
    Viewer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    cert_cn: Option<String>,
    #[serde(default)]
    cert_san: Option<String>,
    role: RoleName,
    #[serde(default)]
    namespaces: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    patterns: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Parses and validates a policy's text. Pure: user and group names are
/// checked for form only ([`Policy::resolve`] looks them up).
///
/// # Errors
///
/// The first fault, with its line: an empty file, YAML syntax, an unknown key, a wrong
/// type, a rule with no or several identities, a role without the
/// namespaces it needs or with some it does not take, a bad namespace or
/// pattern name, more than [`MAX_RULES`] rules or [`MAX_NAMES`] names.
pub fn parse_policy(text: &str) -> Result<Policy, PolicyError> {
    // An empty file is more likely one being written than a policy that
    // refuses everybody (which is `rules: []`). Lines and blanks as YAML
    // has them: a lone CR ends a line, only space and tab are blank.
    let blank = |l: &str| {
        let l = l.trim_matches([' ', '\t']);
        l.is_empty() || l.starts_with('#')
    };
    if yaml::lines(text).all(blank) {
        return Err(PolicyError {
            line: None,
            message:
                "the file is empty: a policy is `rules:` and a list (`rules: []` refuses everybody)"
                    .into(),
        });
    }
    let raw: RawPolicy = yaml::parse_one(text, "")?;
    if let Some(over) = raw.rules.get(MAX_RULES) {
        return Err(PolicyError::at(
            over.referenced.line(),
            format!("more than {MAX_RULES} rules"),
        ));
    }
    let rules = raw
        .rules
        .into_iter()
        .map(|r| rule(r.value, r.referenced.line()))
        .collect::<Result<_, _>>()?;
    Ok(Policy { rules })
}

fn text(key: &str, v: String, line: u64) -> Result<String, PolicyError> {
    if v.is_empty() || v.len() > MAX_TEXT || v.contains('\0') {
        return Err(PolicyError::at(
            line,
            format!("key `{key}`: must be 1 to {MAX_TEXT} bytes, without NUL"),
        ));
    }
    Ok(v)
}

fn rule(r: RawRule, line: u64) -> Result<Rule<Who>, PolicyError> {
    let mut who = Vec::new();
    if let Some(u) = r.uid {
        who.push(("uid", Who::Uid(u)));
    }
    if let Some(u) = r.user {
        who.push(("user", Who::User(text("user", u, line)?)));
    }
    if let Some(g) = r.gid {
        who.push(("gid", Who::Gid(g)));
    }
    if let Some(g) = r.group {
        who.push(("group", Who::Group(text("group", g, line)?)));
    }
    if let Some(c) = r.cert_cn {
        who.push(("cert_cn", Who::CertCn(text("cert_cn", c, line)?)));
    }
    if let Some(s) = r.cert_san {
        who.push(("cert_san", Who::CertSan(text("cert_san", s, line)?)));
    }
    let who = match <[(&str, Who); 1]>::try_from(who) {
        Ok([(_, who)]) => who,
        Err(found) => {
            let found: Vec<&str> = found.iter().map(|(k, _)| *k).collect();
            return Err(PolicyError::at(
                line,
                format!(
                    "a rule names exactly one of uid, user, gid, group, cert_cn, cert_san (found: {})",
                    if found.is_empty() {
                        "none".to_string()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        }
    };
    let namespaces = names("namespaces", r.namespaces, is_valid_name)?;
    let patterns = names("patterns", r.patterns, is_valid_pattern_name)?;
    let role = match r.role {
        RoleName::Admin => {
            if namespaces.is_some() || patterns.is_some() {
                return Err(PolicyError::at(
                    line,
                    "key `role`: admin takes no namespaces or patterns (it may do everything)",
                ));
            }
            Role::Admin
        }
        RoleName::Tenant => {
            if namespaces.as_ref().is_none_or(BTreeSet::is_empty) {
                return Err(PolicyError::at(
                    line,
                    "key `namespaces`: a tenant needs at least one namespace",
                ));
            }
            Role::Tenant(Limits {
                namespaces,
                patterns,
            })
        }
        RoleName::Viewer => Role::Viewer(Limits {
            namespaces,
            patterns,
        }),
    };
    Ok(Rule { who, role, line })
}

type Names = Option<Spanned<Vec<Spanned<String>>>>;

fn names(
    key: &str,
    list: Names,
    valid: fn(&str) -> bool,
) -> Result<Option<BTreeSet<String>>, PolicyError> {
    let Some(list) = list else { return Ok(None) };
    if list.value.len() > MAX_NAMES {
        return Err(PolicyError::at(
            list.referenced.line(),
            format!("key `{key}`: more than {MAX_NAMES} names"),
        ));
    }
    let mut set = BTreeSet::new();
    for n in list.value {
        if !valid(&n.value) {
            return Err(PolicyError::at(
                n.referenced.line(),
                format!("key `{key}`: {:?} is not a valid name", n.value),
            ));
        }
        set.insert(n.value);
    }
    Ok(Some(set))
}

impl Policy<Who> {
    /// The policy with user and group names replaced by their ids, as
    /// `user` and `group` find them.
    ///
    /// # Errors
    ///
    /// A name that does not exist, or whose lookup failed, with its line.
    pub fn resolve(
        self,
        user: impl Fn(&str) -> nix::Result<Option<u32>>,
        group: impl Fn(&str) -> nix::Result<Option<u32>>,
    ) -> Result<Policy<Principal>, PolicyError> {
        let lookup = |kind: &str, name: &str, found: nix::Result<Option<u32>>, line| match found {
            Ok(Some(id)) => Ok(id),
            Ok(None) => Err(PolicyError::at(
                line,
                format!("key `{kind}`: no {kind} {name:?}"),
            )),
            Err(e) => Err(PolicyError::at(
                line,
                format!("key `{kind}`: cannot look up {name:?}: {e}"),
            )),
        };
        let rules = self
            .rules
            .into_iter()
            .map(|r| {
                let who = match r.who {
                    Who::Uid(u) => Principal::Uid(u),
                    Who::Gid(g) => Principal::Gid(g),
                    Who::User(n) => Principal::Uid(lookup("user", &n, user(&n), r.line)?),
                    Who::Group(n) => Principal::Gid(lookup("group", &n, group(&n), r.line)?),
                    Who::CertCn(c) => Principal::CertCn(c),
                    Who::CertSan(s) => Principal::CertSan(s),
                };
                Ok(Rule {
                    who,
                    role: r.role,
                    line: r.line,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        Ok(Policy { rules })
    }

    /// [`Policy::resolve`] against the system's user and group database.
    ///
    /// # Errors
    ///
    /// As [`Policy::resolve`].
    pub fn resolve_on_system(self) -> Result<Policy<Principal>, PolicyError> {
        use nix::unistd::{Group, User};
        self.resolve(
            |n| User::from_name(n).map(|u| u.map(|u| u.uid.as_raw())),
            |n| Group::from_name(n).map(|g| g.map(|g| g.gid.as_raw())),
        )
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
