//! Pure domain types: isolation levels, instance identity (`process_id`),
//! instance specs and the validation rules of names and config.
//!
//! Owns no I/O: everything here is plain values and is unit-tested as such.

pub mod limits;
pub mod manifest;
pub mod quantity;
pub mod run_as;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many processes serve a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// One process shared by everybody.
    None,
    /// One process per namespace.
    Namespace,
    /// One process per session within a namespace.
    Session,
}

impl Isolation {
    /// The key used in `HealthResponse.isolation_distribution`.
    pub fn distribution_key(self) -> &'static str {
        match self {
            Isolation::None => "None",
            Isolation::Namespace => "Namespace",
            Isolation::Session => "Session",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::None => "none",
            Isolation::Namespace => "namespace",
            Isolation::Session => "session",
        })
    }
}

/// Environment variables the launcher sets itself; config may not override them.
pub const RESERVED_ENV: [&str; 9] = [
    "PRISM_INSTANCE",
    "PATTERN_NAME",
    "PATTERN_VERSION",
    "PROCESS_ID",
    "NAMESPACE",
    "SESSION_ID",
    "ISOLATION",
    "HEALTH_PORT",
    "GRPC_PORT",
];

/// Namespace used for SESSION instances when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A rule an instance declaration broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// `namespace` is required for this isolation level.
    #[error("namespace is required for isolation level {0}")]
    MissingNamespace(Isolation),
    /// `session_id` is required for SESSION isolation.
    #[error("session_id is required for isolation level session")]
    MissingSession,
    /// A namespace or session id that does not match the allowed form.
    #[error("invalid {field} {value:?}: must match [A-Za-z0-9][A-Za-z0-9._-]{{0,62}}")]
    BadName {
        /// `namespace` or `session_id`.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// A pattern name that is no DNS label (every source checks it first;
    /// this is the last guard before it becomes part of a path).
    #[error("invalid pattern name {0:?}: must match [a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?")]
    BadPatternName(String),
    /// A config key that is not an environment variable name.
    #[error("invalid config key {0:?}: must match [A-Z_][A-Z0-9_]*")]
    BadConfigKey(String),
    /// A config key that would override a variable the launcher sets.
    #[error("config key {0:?} is reserved: the launcher sets it")]
    ReservedConfigKey(String),
    /// A config value with a NUL byte cannot be passed to a process.
    #[error("config value of {0:?} contains a NUL byte")]
    BadConfigValue(String),
    /// A negative grace period.
    #[error("grace period must not be negative, got {0}")]
    NegativeGrace(i64),
    /// A grace period over [`limits::MAX_GRACE_PERIOD`].
    #[error("grace period of {0} s is over the limit of {limit} s", limit = limits::MAX_GRACE_PERIOD.as_secs())]
    GraceTooLong(i64),
    /// A config key that would reach the dynamic loader, a shell or an
    /// interpreter's start-up hooks.
    #[error("config key {key:?} is not allowed: it {why}")]
    ForbiddenConfigKey {
        /// The key.
        key: String,
        /// What it would do.
        why: &'static str,
    },
    /// A config key the pattern's manifest does not list in `config_keys`.
    #[error("config key {key:?} is not accepted by pattern {pattern} (config_keys: {accepted})")]
    UnacceptedConfigKey {
        /// The key.
        key: String,
        /// The pattern.
        pattern: String,
        /// The keys it accepts, joined.
        accepted: String,
    },
    /// Config over one of the size limits of [`limits`].
    #[error("config is too large: {0}")]
    ConfigTooLarge(String),
}

/// True when `s` is a valid namespace or session id.
pub fn is_valid_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// True when `s` is a valid pattern name (DNS label).
pub fn is_valid_pattern_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && ok(&b[0])
        && ok(&b[b.len() - 1])
        && b.iter().all(|c| ok(c) || *c == b'-')
}

/// True when `s` is a valid environment variable name for config.
pub fn is_valid_env_key(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_uppercase() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// Checks environment names and values set by a trusted manifest: each key
/// an environment name that is not one of the launcher's, no NUL in values.
pub fn validate_env_names(env: &BTreeMap<String, String>) -> Result<(), SpecError> {
    for (k, v) in env {
        if !is_valid_env_key(k) {
            return Err(SpecError::BadConfigKey(k.clone()));
        }
        if RESERVED_ENV.contains(&k.as_str()) {
            return Err(SpecError::ReservedConfigKey(k.clone()));
        }
        if v.contains('\0') {
            return Err(SpecError::BadConfigValue(k.clone()));
        }
    }
    Ok(())
}

/// Checks an instance's config, which comes from untrusted callers: the
/// rules of [`validate_env_names`], no key that reaches the loader or an
/// interpreter ([`limits::forbidden_config_key`]), and the size limits.
pub fn validate_config(config: &BTreeMap<String, String>) -> Result<(), SpecError> {
    use limits::{MAX_CONFIG_KEYS, MAX_CONFIG_TOTAL_BYTES, MAX_CONFIG_VALUE_BYTES};
    if config.len() > MAX_CONFIG_KEYS {
        return Err(SpecError::ConfigTooLarge(format!(
            "{} keys, the limit is {MAX_CONFIG_KEYS}",
            config.len()
        )));
    }
    let mut total = 0usize;
    for (k, v) in config {
        if v.len() > MAX_CONFIG_VALUE_BYTES {
            return Err(SpecError::ConfigTooLarge(format!(
                "the value of {k:?} has {} bytes, the limit is {MAX_CONFIG_VALUE_BYTES} bytes per value",
                v.len()
            )));
        }
        total = total.saturating_add(k.len() + v.len());
    }
    if total > MAX_CONFIG_TOTAL_BYTES {
        return Err(SpecError::ConfigTooLarge(format!(
            "{total} bytes of keys and values, the limit is {MAX_CONFIG_TOTAL_BYTES} bytes"
        )));
    }
    validate_env_names(config)?;
    if let Some((key, why)) = config
        .keys()
        .find_map(|k| limits::forbidden_config_key(k).map(|why| (k, why)))
    {
        return Err(SpecError::ForbiddenConfigKey {
            key: key.clone(),
            why,
        });
    }
    Ok(())
}

/// The key of a [`SpecError`] about one config key, to point at its line.
pub fn config_key_of(e: &SpecError) -> Option<&str> {
    match e {
        SpecError::BadConfigKey(k)
        | SpecError::ReservedConfigKey(k)
        | SpecError::BadConfigValue(k)
        | SpecError::ForbiddenConfigKey { key: k, .. }
        | SpecError::UnacceptedConfigKey { key: k, .. } => Some(k),
        _ => None,
    }
}

/// The identity of an instance: which process serves whom.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    /// Pattern name.
    pub pattern: String,
    /// Resolved isolation level (never "unspecified").
    pub isolation: Isolation,
    /// Namespace; empty for NONE.
    pub namespace: String,
    /// Session id; empty unless SESSION.
    pub session_id: String,
}

impl InstanceKey {
    /// Builds a key from a request, applying the rules of SPEC §4: the
    /// namespace/session fields that the isolation level does not use are
    /// dropped, the ones it needs are required and checked. The process id
    /// made of them names a log file and a cgroup: every part is checked.
    pub fn new(
        pattern: &str,
        isolation: Isolation,
        namespace: &str,
        session_id: &str,
    ) -> Result<Self, SpecError> {
        if !is_valid_pattern_name(pattern) {
            return Err(SpecError::BadPatternName(pattern.to_string()));
        }
        let (namespace, session_id) = match isolation {
            Isolation::None => (String::new(), String::new()),
            Isolation::Namespace => {
                if namespace.is_empty() {
                    return Err(SpecError::MissingNamespace(isolation));
                }
                check_name("namespace", namespace)?;
                (namespace.to_string(), String::new())
            }
            Isolation::Session => {
                if session_id.is_empty() {
                    return Err(SpecError::MissingSession);
                }
                let ns = if namespace.is_empty() {
                    DEFAULT_NAMESPACE
                } else {
                    namespace
                };
                check_name("namespace", ns)?;
                check_name("session_id", session_id)?;
                (ns.to_string(), session_id.to_string())
            }
        };
        Ok(InstanceKey {
            pattern: pattern.to_string(),
            isolation,
            namespace,
            session_id,
        })
    }

    /// The `process_id` of SPEC §4.
    pub fn process_id(&self) -> String {
        match self.isolation {
            Isolation::None => format!("shared:{}", self.pattern),
            Isolation::Namespace => format!("ns:{}:{}", self.namespace, self.pattern),
            Isolation::Session => format!(
                "session:{}:{}:{}",
                self.namespace, self.session_id, self.pattern
            ),
        }
    }
}

fn check_name(field: &'static str, value: &str) -> Result<(), SpecError> {
    if is_valid_name(value) {
        Ok(())
    } else {
        Err(SpecError::BadName {
            field,
            value: value.to_string(),
        })
    }
}

/// What one declaration asks for: the identity plus what the process gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Identity.
    pub key: InstanceKey,
    /// Extra environment. Shared: the process's spec and the declaration it
    /// was started from hold the same map, so the planner's check that they
    /// still agree is a pointer comparison (`Arc`'s `PartialEq` compares
    /// pointers first when `T: Eq`).
    pub config: Arc<BTreeMap<String, String>>,
    /// Grace period for graceful stops; `None` is the launcher default.
    #[serde(with = "opt_secs", default)]
    pub grace_period: Option<Duration>,
}

impl InstanceSpec {
    /// Builds and validates a spec.
    pub fn new(
        key: InstanceKey,
        config: BTreeMap<String, String>,
        grace_period: Option<Duration>,
    ) -> Result<Self, SpecError> {
        validate_config(&config)?;
        Ok(InstanceSpec {
            key,
            config: Arc::new(config),
            grace_period,
        })
    }

    /// Checks a spec read back from the state directory as strictly as a
    /// new declaration: the files there are not trusted further than any
    /// other input.
    ///
    /// # Errors
    ///
    /// The first rule it breaks.
    pub fn revalidate(&self) -> Result<(), SpecError> {
        let k = &self.key;
        if !is_valid_pattern_name(&k.pattern) {
            return Err(SpecError::BadName {
                field: "pattern",
                value: k.pattern.clone(),
            });
        }
        let again = InstanceKey::new(&k.pattern, k.isolation, &k.namespace, &k.session_id)?;
        if again != *k {
            return Err(SpecError::BadName {
                field: "namespace",
                value: k.namespace.clone(),
            });
        }
        validate_config(&self.config)
    }

    /// Two declarations of one process_id agree when they ask for the same
    /// process (same config); the grace period is a stop setting, not part
    /// of what runs.
    pub fn agrees_with(&self, other: &InstanceSpec) -> bool {
        self.key == other.key && self.config == other.config
    }
}

/// Converts a wire grace period (seconds, 0 = default) into a duration, at
/// most [`limits::MAX_GRACE_PERIOD`].
pub fn grace_from_secs(secs: i64) -> Result<Option<Duration>, SpecError> {
    match secs {
        0 => Ok(None),
        s if s < 0 => Err(SpecError::NegativeGrace(s)),
        s if s.unsigned_abs() > limits::MAX_GRACE_PERIOD.as_secs() => {
            Err(SpecError::GraceTooLong(s))
        }
        s => Ok(Some(Duration::from_secs(s.unsigned_abs()))),
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        // Stored state is not trusted further than any other input: a value
        // out of range is dropped (the default applies), never a panic.
        let v: Option<f64> = Option::deserialize(d)?;
        let max = super::limits::MAX_GRACE_PERIOD.as_secs_f64();
        Ok(v.filter(|s| s.is_finite() && (0.0..=max).contains(s))
            .map(Duration::from_secs_f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids_follow_the_isolation_level() {
        let k = InstanceKey::new("p", Isolation::None, "ignored", "ignored").unwrap();
        assert_eq!(k.process_id(), "shared:p");
        let k = InstanceKey::new("p", Isolation::Namespace, "tenant-a", "").unwrap();
        assert_eq!(k.process_id(), "ns:tenant-a:p");
        let k = InstanceKey::new("p", Isolation::Session, "", "user-1").unwrap();
        assert_eq!(k.process_id(), "session:default:user-1:p");
    }

    #[test]
    fn missing_or_bad_names_are_refused() {
        assert_eq!(
            InstanceKey::new("p", Isolation::Namespace, "", ""),
            Err(SpecError::MissingNamespace(Isolation::Namespace))
        );
        assert!(matches!(
            InstanceKey::new("p", Isolation::Namespace, "../x", ""),
            Err(SpecError::BadName { .. })
        ));
        assert_eq!(
            InstanceKey::new("p", Isolation::Session, "a", ""),
            Err(SpecError::MissingSession)
        );
        assert!(is_valid_name("a.b_c-D9"));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name(&"a".repeat(64)));
        assert!(is_valid_name(&"a".repeat(63)));
    }

    #[test]
    fn config_keys_must_be_env_names_and_not_reserved() {
        let mut c = BTreeMap::new();
        c.insert("LOG_LEVEL".to_string(), "debug".to_string());
        assert!(validate_config(&c).is_ok());
        c.insert("HEALTH_PORT".to_string(), "1".to_string());
        assert_eq!(
            validate_config(&c),
            Err(SpecError::ReservedConfigKey("HEALTH_PORT".into()))
        );
        let mut c = BTreeMap::new();
        c.insert("lower".to_string(), "x".to_string());
        assert_eq!(
            validate_config(&c),
            Err(SpecError::BadConfigKey("lower".into()))
        );
    }

    #[test]
    fn config_that_reaches_the_loader_is_refused_naming_the_key() {
        let c = BTreeMap::from([("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())]);
        let e = validate_config(&c).unwrap_err();
        assert!(e.to_string().contains("LD_PRELOAD"), "{e}");
        assert!(matches!(e, SpecError::ForbiddenConfigKey { .. }));
        // A trusted manifest may set it.
        assert!(validate_env_names(&c).is_ok());
    }

    #[test]
    fn config_sizes_are_bounded_and_the_limit_is_named() {
        let many: BTreeMap<String, String> = (0..=limits::MAX_CONFIG_KEYS)
            .map(|i| (format!("K{i}"), "v".to_string()))
            .collect();
        let e = validate_config(&many).unwrap_err();
        assert!(e.to_string().contains("limit is 64"), "{e}");
        let big = BTreeMap::from([(
            "BIG".to_string(),
            "x".repeat(limits::MAX_CONFIG_VALUE_BYTES + 1),
        )]);
        let e = validate_config(&big).unwrap_err();
        assert!(e.to_string().contains("per value"), "{e}");
        let wide: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("K{i}"), "x".repeat(limits::MAX_CONFIG_VALUE_BYTES)))
            .collect();
        let e = validate_config(&wide).unwrap_err();
        assert!(e.to_string().contains("bytes of keys and values"), "{e}");
    }

    #[test]
    fn grace_periods_are_capped() {
        assert_eq!(grace_from_secs(0), Ok(None));
        assert_eq!(grace_from_secs(10), Ok(Some(Duration::from_secs(10))));
        let e = grace_from_secs(i64::MAX).unwrap_err();
        assert!(e.to_string().contains("limit of 86400 s"), "{e}");
        assert!(grace_from_secs(-1).is_err());
    }

    #[test]
    fn a_stored_grace_out_of_range_is_dropped_not_a_panic() {
        let k = InstanceKey::new("p", Isolation::None, "", "").unwrap();
        let mut json =
            serde_json::to_value(InstanceSpec::new(k, BTreeMap::new(), None).unwrap()).unwrap();
        json["grace_period"] = serde_json::json!(1e300);
        let spec: InstanceSpec = serde_json::from_value(json).unwrap();
        assert_eq!(spec.grace_period, None);
    }

    #[test]
    fn pattern_names_are_dns_labels() {
        assert!(is_valid_pattern_name("hello-pattern"));
        assert!(!is_valid_pattern_name("Hello"));
        assert!(!is_valid_pattern_name("a-"));
        assert!(!is_valid_pattern_name(""));
    }

    /// Process ids name each instance's log file (`<logs>/<id>.log`) and
    /// cgroup leaf: whatever a caller or a desired/ file sends as pattern,
    /// namespace or session id, an accepted one is a single path component
    /// and lands inside those directories.
    #[test]
    fn no_declaration_forms_a_path_outside_the_launchers_directories() {
        use std::path::{Component, Path};
        let hostile = [
            "..",
            ".",
            "../x",
            "a/../../b",
            "/etc",
            "a/b",
            "a\\b",
            ".hidden",
            "a..",
            "..a",
            "%2e%2e",
            "a\0b",
            "a\nb",
            "~root",
            "*",
            "",
            "a:b",
            "x.log",
        ];
        let logs = Path::new("/state/logs");
        let mut accepted = 0;
        for a in hostile {
            for b in hostile {
                for isolation in [Isolation::None, Isolation::Namespace, Isolation::Session] {
                    for pattern in ["p", a] {
                        let Ok(key) = InstanceKey::new(pattern, isolation, a, b) else {
                            continue;
                        };
                        accepted += 1;
                        let id = key.process_id();
                        assert!(!id.contains(['/', '\\', '\0']), "{id:?}");
                        let file = crate::runtime::logs::log_path(logs, &id);
                        assert_eq!(file.parent(), Some(logs), "{id:?}");
                        let parts: Vec<_> = Path::new(&id).components().collect();
                        assert!(
                            matches!(parts[..], [Component::Normal(_)]),
                            "{id:?} is not one plain path component"
                        );
                    }
                }
            }
        }
        assert!(accepted > 10, "the test exercised too few keys: {accepted}");
    }
}
