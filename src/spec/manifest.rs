//! Pattern manifests (`patterns/<dir>/manifest.yaml`, SPEC §3): the file
//! format, its validation, and the validated [`Pattern`] the rest of the
//! launcher uses.
//!
//! Pure apart from reading the one manifest file it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::limits::MAX_MANIFEST_DURATION;
use super::run_as::{Account, RunAs};
use super::yaml::{self, YamlError};
use super::{Isolation, is_valid_env_key, is_valid_pattern_name, validate_env_names};
use super::{RESERVED_ENV, SpecError};

/// Defaults of the health check when the manifest leaves a field out.
pub const DEFAULT_HEALTH_PATH: &str = "/health";
/// Liveness probe interval default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Liveness probe timeout default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive failed probes before a restart, by default.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Spanned<String>,
    version: String,
    executable: Spanned<String>,
    #[serde(default)]
    args: Vec<String>,
    isolation_level: Isolation,
    #[serde(default)]
    healthcheck: Option<RawHealth>,
    #[serde(default)]
    resources: Option<RawResources>,
    #[serde(default)]
    environment: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    config_keys: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    inherit_env: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    group: Option<Spanned<String>>,
    #[serde(default)]
    no_new_privileges: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    port: Option<u16>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    failure_threshold: Option<Spanned<u32>>,
    startup_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    cpu_limit: Option<Spanned<f64>>,
    memory_limit: Option<Spanned<String>>,
    pids: Option<Spanned<u64>>,
}

/// How the launcher checks an instance's health.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    /// Preferred health port.
    pub port: Option<u16>,
    /// HTTP path probed.
    pub path: String,
    /// Liveness probe interval.
    pub interval: Duration,
    /// Liveness probe timeout.
    pub timeout: Duration,
    /// Consecutive failed liveness probes before a restart.
    pub failure_threshold: u32,
    /// Start-up timeout; `None` is the launcher default.
    pub startup_timeout: Option<Duration>,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            port: None,
            path: DEFAULT_HEALTH_PATH.to_string(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            startup_timeout: None,
        }
    }
}

/// Most processes (and threads) an instance may have at once when its
/// manifest sets no `resources.pids`: enough for any service, and a stop
/// to a fork bomb.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// Kernel-enforced limits asked for by a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    /// CPU limit in cores.
    pub cpu_limit: Option<f64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// Most tasks (processes and threads) at once.
    pub pids: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpu_limit: None,
            memory_limit: None,
            pids: DEFAULT_PIDS_LIMIT,
        }
    }
}

/// A validated pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// Unique name.
    pub name: String,
    /// Version string.
    pub version: String,
    /// The pattern's directory (working directory of its processes).
    pub dir: PathBuf,
    /// The executable, resolved against `dir`.
    pub executable: PathBuf,
    /// Arguments.
    pub args: Vec<String>,
    /// Default isolation level.
    pub isolation: Isolation,
    /// Health check.
    pub health: HealthCheck,
    /// Limits.
    pub resources: Resources,
    /// Extra environment.
    pub environment: BTreeMap<String, String>,
    /// The config keys instances may set; `None`: any key the general
    /// rules allow.
    pub config_keys: Option<Vec<String>>,
    /// Names of the launcher's environment variables its processes get.
    pub inherit_env: Vec<String>,
    /// Hash of the executable's content (filled in by the catalog; 0 when
    /// unknown). A rebuilt executable changes the pattern.
    pub exe_hash: u64,
    /// `user:` and `group:`; `None`: the launcher's own user.
    pub run_as: Option<RunAs>,
    /// Whether its processes run with `no_new_privs` (default on).
    pub no_new_privileges: bool,
}

fn at<T>(file: &str, s: &Spanned<T>, message: String) -> YamlError {
    let line = s.referenced.line();
    YamlError {
        file: file.to_string(),
        line: (line > 0).then_some(line),
        message,
    }
}

fn duration(file: &str, key: &str, s: &Spanned<String>) -> Result<Duration, YamlError> {
    let d = humantime::parse_duration(s.value.trim()).map_err(|e| {
        at(
            file,
            s,
            format!("key `{key}`: {:?} is not a duration ({e})", s.value),
        )
    })?;
    if d.is_zero() {
        return Err(at(file, s, format!("key `{key}`: must be greater than 0")));
    }
    if d > MAX_MANIFEST_DURATION {
        return Err(at(
            file,
            s,
            format!(
                "key `{key}`: {:?} is over the limit of {}",
                s.value,
                humantime::format_duration(MAX_MANIFEST_DURATION)
            ),
        ));
    }
    Ok(d)
}

/// A list of environment names (`config_keys`, `inherit_env`).
fn env_names(file: &str, key: &str, s: &Spanned<Vec<String>>) -> Result<Vec<String>, YamlError> {
    for name in &s.value {
        if !is_valid_env_key(name) {
            return Err(at(
                file,
                s,
                format!("key `{key}`: {name:?} is not an environment name ([A-Z_][A-Z0-9_]*)"),
            ));
        }
    }
    let mut names = s.value.clone();
    names.sort();
    names.dedup();
    Ok(names)
}

impl Pattern {
    /// A pattern named `name` with every default, for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(name: &str) -> Pattern {
        Pattern {
            name: name.into(),
            version: "1".into(),
            dir: PathBuf::from("/p"),
            executable: PathBuf::from("/p/x"),
            args: vec![],
            isolation: Isolation::Namespace,
            health: HealthCheck::default(),
            resources: Resources::default(),
            environment: BTreeMap::new(),
            config_keys: None,
            inherit_env: Vec::new(),
            exe_hash: 0,
            run_as: None,
            no_new_privileges: true,
        }
    }

    /// Checks an instance's config against this pattern's `config_keys`
    /// (the general rules are [`crate::spec::validate_config`]'s).
    ///
    /// # Errors
    ///
    /// The first key the manifest does not list.
    pub fn check_config(&self, config: &BTreeMap<String, String>) -> Result<(), SpecError> {
        let Some(accepted) = &self.config_keys else {
            return Ok(());
        };
        match config.keys().find(|k| accepted.binary_search(k).is_err()) {
            None => Ok(()),
            Some(key) => Err(SpecError::UnacceptedConfigKey {
                key: key.clone(),
                pattern: self.name.clone(),
                accepted: if accepted.is_empty() {
                    "none".into()
                } else {
                    accepted.join(", ")
                },
            }),
        }
    }
}

/// Parses and validates manifest text. `display` names the file in errors;
/// `dir` is the pattern directory that relative executables resolve against.
pub fn parse_manifest(text: &str, display: &str, dir: &Path) -> Result<Pattern, YamlError> {
    let raw: RawManifest = yaml::parse_one(text, display)?;
    if !is_valid_pattern_name(&raw.name.value) {
        return Err(at(
            display,
            &raw.name,
            format!(
                "key `name`: {:?} must match [a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?",
                raw.name.value
            ),
        ));
    }
    if raw.version.trim().is_empty() {
        return Err(YamlError::file(display, "key `version`: must not be empty"));
    }
    if raw.executable.value.trim().is_empty() {
        return Err(at(
            display,
            &raw.executable,
            "key `executable`: must not be empty".into(),
        ));
    }
    let exe = PathBuf::from(&raw.executable.value);
    let executable = if exe.is_absolute() {
        exe
    } else {
        dir.join(exe)
    };

    let mut health = HealthCheck::default();
    if let Some(h) = raw.healthcheck {
        health.port = h.port;
        if let Some(p) = h.path {
            if !p.value.starts_with('/') {
                return Err(at(
                    display,
                    &p,
                    format!("key `path`: {:?} must start with '/'", p.value),
                ));
            }
            health.path = p.value;
        }
        if let Some(i) = h.interval {
            health.interval = duration(display, "interval", &i)?;
        }
        if let Some(t) = h.timeout {
            health.timeout = duration(display, "timeout", &t)?;
        }
        if let Some(t) = h.startup_timeout {
            health.startup_timeout = Some(duration(display, "startup_timeout", &t)?);
        }
        if let Some(f) = h.failure_threshold {
            if f.value == 0 {
                return Err(at(
                    display,
                    &f,
                    "key `failure_threshold`: must be at least 1".into(),
                ));
            }
            health.failure_threshold = f.value;
        }
    }

    let mut resources = Resources::default();
    if let Some(r) = raw.resources {
        if let Some(c) = r.cpu_limit {
            if !(c.value.is_finite() && c.value > 0.0 && c.value <= 1024.0) {
                return Err(at(
                    display,
                    &c,
                    format!(
                        "key `cpu_limit`: {} must be a number of cores above 0",
                        c.value
                    ),
                ));
            }
            resources.cpu_limit = Some(c.value);
        }
        if let Some(m) = r.memory_limit {
            let bytes = super::quantity::parse_memory(&m.value)
                .map_err(|e| at(display, &m, format!("key `memory_limit`: {e}")))?;
            resources.memory_limit = Some(bytes);
        }
        if let Some(p) = r.pids {
            if p.value == 0 || p.value > u64::from(u32::MAX) {
                return Err(at(
                    display,
                    &p,
                    format!(
                        "key `pids`: {} must be a number of processes from 1 to {}",
                        p.value,
                        u32::MAX
                    ),
                ));
            }
            resources.pids = p.value;
        }
    }

    let config_keys = match raw.config_keys {
        Some(keys) => {
            let names = env_names(display, "config_keys", &keys)?;
            if let Some((name, why)) = names
                .iter()
                .find_map(|n| super::limits::forbidden_config_key(n).map(|why| (n, why)))
            {
                return Err(at(
                    display,
                    &keys,
                    format!("key `config_keys`: {name:?} can never be config: it {why}"),
                ));
            }
            if let Some(name) = names.iter().find(|n| RESERVED_ENV.contains(&n.as_str())) {
                return Err(at(
                    display,
                    &keys,
                    format!("key `config_keys`: {name:?} is set by the launcher"),
                ));
            }
            Some(names)
        }
        None => None,
    };
    let inherit_env = match raw.inherit_env {
        Some(names) => env_names(display, "inherit_env", &names)?,
        None => Vec::new(),
    };

    let environment = match raw.environment {
        Some(env) => {
            validate_env_names(&env.value)
                .map_err(|e| at(display, &env, format!("key `environment`: {e}")))?;
            env.value
        }
        None => BTreeMap::new(),
    };

    Ok(Pattern {
        name: raw.name.value,
        version: raw.version,
        dir: dir.to_path_buf(),
        executable,
        args: raw.args,
        isolation: raw.isolation_level,
        health,
        resources,
        environment,
        config_keys,
        inherit_env,
        exe_hash: 0,
        run_as: run_as(display, raw.user, raw.group)?,
        no_new_privileges: raw.no_new_privileges.unwrap_or(true),
    })
}

/// `user:` and `group:` as written (looked up later, by the catalog).
fn run_as(
    file: &str,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
) -> Result<Option<RunAs>, YamlError> {
    let account = |key: &str, s: &Spanned<String>| {
        Account::parse(&s.value).map_err(|e| at(file, s, format!("key `{key}`: {e}")))
    };
    match (user, group) {
        (None, None) => Ok(None),
        (None, Some(g)) => Err(at(file, &g, "key `group`: needs a `user` to run as".into())),
        (Some(u), g) => Ok(Some(RunAs {
            user: account("user", &u)?,
            group: g.map(|g| account("group", &g)).transpose()?,
            ids: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "\
name: hello-pattern
version: 1.0.0
executable: ./hello-pattern
isolation_level: namespace
healthcheck:
  port: 9090
  path: /health
  interval: 30s
  timeout: 5s
resources:
  cpu_limit: 1.0
  memory_limit: 256Mi
";

    #[test]
    fn the_quick_start_manifest_parses_with_defaults() {
        let p = parse_manifest(HELLO, "m.yaml", Path::new("/p/hello")).unwrap();
        assert_eq!(p.name, "hello-pattern");
        assert_eq!(p.executable, Path::new("/p/hello/./hello-pattern"));
        assert_eq!(p.isolation, Isolation::Namespace);
        assert_eq!(p.health.port, Some(9090));
        assert_eq!(p.health.failure_threshold, 3);
        assert_eq!(p.resources.memory_limit, Some(256 << 20));
    }

    #[test]
    fn a_bad_duration_names_file_line_and_key() {
        let text = HELLO.replace("interval: 30s", "interval: soon");
        let e = parse_manifest(&text, "patterns/h/manifest.yaml", Path::new("/p")).unwrap_err();
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("interval"), "{e}");
        assert!(
            e.to_string().starts_with("patterns/h/manifest.yaml:8:"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = parse_manifest(&format!("{HELLO}colour: red\n"), "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
        let e = parse_manifest(
            &HELLO.replace("isolation_level: namespace", "isolation_level: tenant"),
            "m",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        let e = parse_manifest(
            &HELLO.replace("name: hello-pattern", "name: Hello_Pattern"),
            "m",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        let e = parse_manifest(&HELLO.replace("256Mi", "lots"), "m", Path::new("/")).unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert!(e.message.contains("memory_limit"), "{e}");
    }

    #[test]
    fn durations_over_the_limit_are_errors_not_panics() {
        let text = HELLO.replace(
            "timeout: 5s",
            "timeout: 5s\n  startup_timeout: 300000000000y",
        );
        let e = parse_manifest(&text, "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("startup_timeout"), "{e}");
        let text = HELLO.replace("interval: 30s", "interval: 25h");
        let e = parse_manifest(&text, "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("over the limit of 1day"), "{e}");
    }

    #[test]
    fn config_keys_limit_what_instances_may_set() {
        let text = format!("{HELLO}config_keys: [LOG_LEVEL, COLOUR]\ninherit_env: [HOME]\n");
        let p = parse_manifest(&text, "m", Path::new("/")).unwrap();
        assert_eq!(p.inherit_env, vec!["HOME"]);
        let ok = BTreeMap::from([("LOG_LEVEL".to_string(), "debug".to_string())]);
        assert!(p.check_config(&ok).is_ok());
        let other = BTreeMap::from([("OTHER".to_string(), "x".to_string())]);
        let e = p.check_config(&other).unwrap_err();
        assert!(e.to_string().contains("\"OTHER\""), "{e}");
        assert!(e.to_string().contains("COLOUR, LOG_LEVEL"), "{e}");
        // Without the list, any key the general rules allow.
        let p = parse_manifest(HELLO, "m", Path::new("/")).unwrap();
        assert!(p.check_config(&other).is_ok());
    }

    #[test]
    fn config_keys_may_not_list_loader_variables() {
        let text = format!("{HELLO}config_keys: [LD_PRELOAD]\n");
        let e = parse_manifest(&text, "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("LD_PRELOAD"), "{e}");
    }

    #[test]
    fn pids_default_and_bounds() {
        let p = parse_manifest(HELLO, "m", Path::new("/")).unwrap();
        assert_eq!(p.resources.pids, DEFAULT_PIDS_LIMIT);
        let text = HELLO.replace("memory_limit: 256Mi", "memory_limit: 256Mi\n  pids: 64");
        let p = parse_manifest(&text, "m", Path::new("/")).unwrap();
        assert_eq!(p.resources.pids, 64);
        let text = HELLO.replace("memory_limit: 256Mi", "memory_limit: 256Mi\n  pids: 0");
        assert!(parse_manifest(&text, "m", Path::new("/")).is_err());
    }

    #[test]
    fn user_group_and_no_new_privileges() {
        let p = parse_manifest(HELLO, "m", Path::new("/")).unwrap();
        assert_eq!(p.run_as, None);
        assert!(p.no_new_privileges, "on by default");
        let text = format!("{HELLO}user: nobody\ngroup: 65534\nno_new_privileges: false\n");
        let p = parse_manifest(&text, "m", Path::new("/")).unwrap();
        let run_as = p.run_as.unwrap();
        assert_eq!(run_as.user, Account::Name("nobody".into()));
        assert_eq!(run_as.group, Some(Account::Id(65534)));
        assert_eq!(run_as.ids, None, "looked up by the catalog, not here");
        assert!(!p.no_new_privileges);
        let p = parse_manifest(&format!("{HELLO}user: '1000'\n"), "m", Path::new("/")).unwrap();
        assert_eq!(p.run_as.unwrap().user, Account::Id(1000));
    }

    #[test]
    fn bad_user_and_group_values_name_key_and_line() {
        let e =
            parse_manifest(&format!("{HELLO}user: 4294967295\n"), "m", Path::new("/")).unwrap_err();
        assert_eq!(e.line, Some(13), "{e}");
        assert!(e.message.contains("key `user`"), "{e}");
        let e = parse_manifest(
            &format!("{HELLO}user: x\ngroup: 'a b'\n"),
            "m",
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.line, Some(14), "{e}");
        assert!(e.message.contains("key `group`"), "{e}");
        let e = parse_manifest(&format!("{HELLO}group: staff\n"), "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("needs a `user`"), "{e}");
        let e = parse_manifest(&format!("{HELLO}user: [a]\n"), "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("user"), "{e}");
        let e = parse_manifest(
            &format!("{HELLO}no_new_privileges: maybe\n"),
            "m",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.message.contains("no_new_privileges"), "{e}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let e = parse_manifest("name: x\nversion: 1\n", "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("executable"), "{e}");
    }
}
