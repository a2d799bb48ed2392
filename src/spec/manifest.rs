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

use super::yaml::{self, YamlError};
use super::{Isolation, is_valid_pattern_name, validate_config};

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

/// Kernel-enforced limits asked for by a manifest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    /// CPU limit in cores.
    pub cpu_limit: Option<f64>,
    /// Memory limit in bytes.
    pub memory_limit: Option<u64>,
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
    /// Hash of the executable's content (filled in by the catalog; 0 when
    /// unknown). A rebuilt executable changes the pattern.
    pub exe_hash: u64,
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
    Ok(d)
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
    }

    let environment = match raw.environment {
        Some(env) => {
            validate_config(&env.value)
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
        exe_hash: 0,
    })
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
    fn missing_required_keys_are_named() {
        let e = parse_manifest("name: x\nversion: 1\n", "m", Path::new("/")).unwrap_err();
        assert!(e.message.contains("executable"), "{e}");
    }
}
