//! Desired-state files (`desired/*.yaml`, SPEC §4): the file format, what
//! can be validated without the pattern catalog, and which file names are
//! desired-state files at all.
//!
//! Pure: it parses the text it is given and never touches the file system
//! (reading and watching are [`super::watcher`]'s) nor the catalog. Whether
//! the pattern exists, the isolation level a document leaves to the
//! manifest, and two documents that declare one instance are the caller's
//! to check.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

pub use crate::spec::limits::MAX_GRACE_PERIOD;
use crate::spec::limits::MAX_INSTANCES_PER_SOURCE;
use crate::spec::yaml::{self, YamlError};
use crate::spec::{
    InstanceKey, Isolation, SpecError, config_key_of, is_valid_name, is_valid_pattern_name,
    validate_config,
};

/// One instance declared by a desired-state file, validated as far as the
/// file alone allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredDoc {
    /// Pattern name (syntax checked; existence is the catalog's).
    pub pattern: String,
    /// Isolation level; `None` means the manifest's.
    pub isolation: Option<Isolation>,
    /// Namespace; empty when not given.
    pub namespace: String,
    /// Session id; empty when not given.
    pub session_id: String,
    /// Extra environment (keys and values checked).
    pub config: BTreeMap<String, String>,
    /// Grace period of graceful stops; `None` is the launcher default.
    pub grace_period: Option<Duration>,
    /// 1-based line where the document's content starts, for errors found
    /// later (against the catalog, or another declaration).
    pub line: u64,
}

impl DesiredDoc {
    /// The instance identity: under the document's own isolation level
    /// when it names one, else under `manifest_isolation`.
    ///
    /// # Errors
    ///
    /// When the level needs a namespace or session id that the document
    /// lacks.
    pub fn key(&self, manifest_isolation: Isolation) -> Result<InstanceKey, SpecError> {
        InstanceKey::new(
            &self.pattern,
            self.isolation.unwrap_or(manifest_isolation),
            &self.namespace,
            &self.session_id,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    pattern: Spanned<String>,
    #[serde(default)]
    isolation: Option<Isolation>,
    #[serde(default)]
    namespace: Option<Spanned<String>>,
    #[serde(default)]
    session_id: Option<Spanned<String>>,
    #[serde(default)]
    config: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default)]
    grace_period: Option<Spanned<String>>,
}

fn at(file: &str, line: u64, message: String) -> YamlError {
    YamlError {
        file: file.to_string(),
        line: (line > 0).then_some(line),
        message,
    }
}

fn line_of<T>(s: &Spanned<T>) -> u64 {
    s.referenced.line()
}

/// Parses and validates the text of one desired-state file. `display`
/// names the file in errors. Empty documents (a lone `---`, comments only)
/// are skipped.
///
/// # Errors
///
/// The first bad document makes the whole file an error, naming the file,
/// the line and the key: YAML syntax, an unknown key, a wrong type, a bad
/// pattern name, namespace, session id, config key or grace period, or an
/// explicit isolation level without the namespace or session id it needs.
pub fn parse_desired(text: &str, display: &str) -> Result<Vec<DesiredDoc>, YamlError> {
    let raw: Vec<Spanned<RawDoc>> = yaml::parse_many(text, display)?;
    if let Some(over) = raw.get(MAX_INSTANCES_PER_SOURCE) {
        return Err(at(
            display,
            line_of(over),
            format!(
                "more than {MAX_INSTANCES_PER_SOURCE} instances in one file (the limit per source)"
            ),
        ));
    }
    raw.into_iter().map(|doc| validate(doc, display)).collect()
}

fn validate(doc: Spanned<RawDoc>, file: &str) -> Result<DesiredDoc, YamlError> {
    let line = line_of(&doc);
    let raw = doc.value;

    let pattern = raw.pattern;
    if !is_valid_pattern_name(&pattern.value) {
        return Err(at(
            file,
            line_of(&pattern),
            format!(
                "key `pattern`: {:?} is not a pattern name (must match \
                 [a-z0-9]([a-z0-9-]{{0,61}}[a-z0-9])?)",
                pattern.value
            ),
        ));
    }

    let name = |field: &'static str, v: Option<Spanned<String>>| match v {
        None => Ok(String::new()),
        Some(s) if s.value.is_empty() || is_valid_name(&s.value) => Ok(s.value),
        Some(s) => {
            let e = SpecError::BadName {
                field,
                value: s.value.clone(),
            };
            Err(at(file, line_of(&s), format!("key `{field}`: {e}")))
        }
    };
    let namespace = name("namespace", raw.namespace)?;
    let session_id = name("session_id", raw.session_id)?;

    let mut config = BTreeMap::new();
    let mut config_lines = BTreeMap::new();
    for (k, v) in raw.config.unwrap_or_default() {
        config_lines.insert(k.clone(), line_of(&v));
        config.insert(k, v.value);
    }
    if let Err(e) = validate_config(&config) {
        let bad = config_key_of(&e).and_then(|k| config_lines.get(k).copied());
        return Err(at(file, bad.unwrap_or(line), format!("key `config`: {e}")));
    }

    let grace_period = raw
        .grace_period
        .map(|g| grace(&g).map_err(|m| at(file, line_of(&g), format!("key `grace_period`: {m}"))))
        .transpose()?;

    if let Some(isolation) = raw.isolation {
        InstanceKey::new(&pattern.value, isolation, &namespace, &session_id)
            .map_err(|e| at(file, line, e.to_string()))?;
    }

    Ok(DesiredDoc {
        pattern: pattern.value,
        isolation: raw.isolation,
        namespace,
        session_id,
        config,
        grace_period,
        line,
    })
}

/// A `grace_period` that is refused; each variant holds the text.
#[derive(Debug, thiserror::Error)]
enum GraceError {
    /// Digits only, but too many.
    #[error("{text:?} is not a duration ({source})")]
    Seconds {
        /// The value as written.
        text: String,
        /// Why it is no number of seconds.
        source: std::num::ParseIntError,
    },
    /// Not a humantime duration.
    #[error("{text:?} is not a duration ({source})")]
    Duration {
        /// The value as written.
        text: String,
        /// Why it is no duration.
        source: humantime::DurationError,
    },
    /// Longer than [`MAX_GRACE_PERIOD`].
    #[error(
        "{text:?} is longer than the limit of {}",
        humantime::format_duration(MAX_GRACE_PERIOD)
    )]
    TooLong {
        /// The value as written.
        text: String,
    },
}

/// A grace period: a humantime duration (`10s`, `1m 30s`) or a plain number
/// of seconds, `0` (kill at once) to [`MAX_GRACE_PERIOD`].
fn grace(s: &Spanned<String>) -> Result<Duration, GraceError> {
    let text = s.value.trim();
    let d = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|source| GraceError::Seconds {
                text: text.to_string(),
                source,
            })?
    } else {
        humantime::parse_duration(text).map_err(|source| GraceError::Duration {
            text: text.to_string(),
            source,
        })?
    };
    if d > MAX_GRACE_PERIOD {
        return Err(GraceError::TooLong {
            text: text.to_string(),
        });
    }
    Ok(d)
}

/// True when a file of this name (inside `desired/`) is a desired-state
/// file: `*.yaml` or `*.yml`, and not a dot-file, an editor's swap, backup
/// or lock file, or a temporary file (which all end otherwise or start with
/// `.` or `#`). Names with control characters are refused too: they would
/// garble every log line that names the file.
pub fn is_candidate(file_name: &str) -> bool {
    let yaml = [".yaml", ".yml"]
        .iter()
        .any(|ext| file_name.len() > ext.len() && file_name.ends_with(ext));
    yaml && !file_name.starts_with(['.', '#']) && !file_name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "\
pattern: hello-pattern
isolation: namespace
namespace: tenant-a
config: {LOG_LEVEL: debug}
grace_period: 10s
";

    fn parse(text: &str) -> Result<Vec<DesiredDoc>, YamlError> {
        parse_desired(text, "desired/a.yaml")
    }

    fn err(text: &str) -> YamlError {
        match parse(text) {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn the_spec_example_parses_into_one_document() {
        let v = parse(ONE).unwrap();
        assert_eq!(v.len(), 1);
        let d = &v[0];
        assert_eq!(d.pattern, "hello-pattern");
        assert_eq!(d.isolation, Some(Isolation::Namespace));
        assert_eq!(d.namespace, "tenant-a");
        assert_eq!(d.session_id, "");
        assert_eq!(d.config.get("LOG_LEVEL").map(String::as_str), Some("debug"));
        assert_eq!(d.grace_period, Some(Duration::from_secs(10)));
        assert_eq!(d.line, 1);
    }

    #[test]
    fn optional_keys_default_to_the_manifest_and_the_launcher() {
        let v = parse("pattern: p\nnamespace: a\n").unwrap();
        assert_eq!(v[0].isolation, None);
        assert!(v[0].config.is_empty());
        assert_eq!(v[0].grace_period, None);
        let key = v[0].key(Isolation::Namespace).unwrap();
        assert_eq!(key.process_id(), "ns:a:p");
        assert_eq!(v[0].key(Isolation::Session), Err(SpecError::MissingSession));
    }

    #[test]
    fn every_isolation_level_is_spelled_in_lowercase() {
        for (word, level) in [
            ("none", Isolation::None),
            ("namespace", Isolation::Namespace),
            ("session", Isolation::Session),
        ] {
            let v = parse(&format!(
                "pattern: p\nisolation: {word}\nnamespace: n\nsession_id: s\n"
            ))
            .unwrap();
            assert_eq!(v[0].isolation, Some(level), "{word}");
        }
        let e = err("pattern: p\nisolation: tenant\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("isolation"), "{e}");
    }

    #[test]
    fn several_documents_keep_their_own_start_lines() {
        let text = format!(
            "{ONE}---\npattern: other\nisolation: none\n---\n\n# third\npattern: p\nisolation: session\nsession_id: u1\n"
        );
        let v = parse(&text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].pattern, "other");
        assert_eq!(v[1].line, 7);
        assert_eq!(v[2].line, 12);
        assert_eq!(v[2].session_id, "u1");
    }

    #[test]
    fn empty_documents_and_comment_only_files_are_skipped() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# nothing here\n").unwrap().is_empty());
        assert!(parse("---\n").unwrap().is_empty());
        let v = parse(&format!("---\n---\n{ONE}---\n# trailing\n")).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].line, 3);
    }

    #[test]
    fn an_unknown_key_names_file_line_and_key() {
        let e = err(&format!("{ONE}colour: red\n"));
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.message.contains("colour"), "{e}");
        assert!(e.to_string().starts_with("desired/a.yaml:6: "), "{e}");
    }

    #[test]
    fn an_error_in_a_later_document_names_its_own_line() {
        let e = err(&format!(
            "{ONE}---\npattern: p\nnamespace: a\ngrace_period: soon\n"
        ));
        assert_eq!(e.line, Some(9), "{e}");
        assert!(e.message.contains("grace_period"), "{e}");
    }

    #[test]
    fn a_missing_pattern_is_named() {
        let e = err("namespace: a\n");
        assert!(e.message.contains("pattern"), "{e}");
    }

    #[test]
    fn wrong_types_are_errors_naming_the_key() {
        let e = err("pattern: p\nconfig: [A, B]\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("config"), "{e}");
        let e = err("pattern: p\nnamespace: {a: b}\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("namespace"), "{e}");
        let e = err("- pattern: p\n");
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn a_bad_pattern_name_is_refused_with_its_line() {
        let e = err("namespace: a\npattern: Hello_Pattern\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("pattern"), "{e}");
    }

    #[test]
    fn bad_namespaces_and_session_ids_are_refused_with_their_line() {
        let e = err("pattern: p\nnamespace: ../etc\n");
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("namespace"), "{e}");
        let e = err("pattern: p\nnamespace: a\nsession_id: 'no spaces'\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("session_id"), "{e}");
    }

    #[test]
    fn an_explicit_level_must_come_with_the_names_it_needs() {
        let e = err("pattern: p\nisolation: namespace\n");
        assert_eq!(e.line, Some(1), "{e}");
        assert!(e.message.contains("namespace is required"), "{e}");
        let e = err("pattern: p\nisolation: session\nnamespace: a\n");
        assert!(e.message.contains("session_id is required"), "{e}");
        let v = parse("pattern: p\nisolation: session\nsession_id: u\n").unwrap();
        assert_eq!(
            v[0].key(Isolation::None).unwrap().process_id(),
            "session:default:u:p"
        );
    }

    #[test]
    fn config_keys_follow_the_environment_rules_and_name_their_line() {
        let e = err("pattern: p\nconfig:\n  GOOD: x\n  bad-key: y\n");
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("bad-key"), "{e}");
        let e = err("pattern: p\nconfig:\n  PROCESS_ID: x\n");
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("reserved"), "{e}");
    }

    #[test]
    fn config_values_may_be_any_scalar_and_are_kept_as_text() {
        let v = parse("pattern: p\nconfig:\n  PORT: 8080\n  DEBUG: true\n  NAME: 'x y'\n").unwrap();
        let c = &v[0].config;
        assert_eq!(c.get("PORT").map(String::as_str), Some("8080"));
        assert_eq!(c.get("DEBUG").map(String::as_str), Some("true"));
        assert_eq!(c.get("NAME").map(String::as_str), Some("x y"));
    }

    #[test]
    fn grace_periods_are_durations_or_seconds_within_a_limit() {
        let g =
            |s: &str| parse(&format!("pattern: p\ngrace_period: {s}\n")).map(|v| v[0].grace_period);
        assert_eq!(g("1m 30s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(g("500ms"), Ok(Some(Duration::from_millis(500))));
        assert_eq!(g("15"), Ok(Some(Duration::from_secs(15))));
        assert_eq!(g("0s"), Ok(Some(Duration::ZERO)));
        for (bad, why) in [
            ("soon", "is not a duration ("),
            ("-5s", "is not a duration ("),
            ("25h", "is longer than the limit of "),
            ("99999999999999999999", "is not a duration ("),
        ] {
            let e = g(bad).unwrap_err();
            assert_eq!(e.line, Some(2), "{bad}: {e}");
            let start = format!("key `grace_period`: {bad:?} {why}");
            assert!(e.message.starts_with(&start), "{bad}: {e}");
        }
    }

    #[test]
    fn yaml_and_yml_files_are_candidates() {
        for name in [
            "a.yaml",
            "tenant-a.yml",
            "x.y.yaml",
            "a b.yaml",
            "4913.yaml",
        ] {
            assert!(is_candidate(name), "{name}");
        }
    }

    #[test]
    fn dot_files_editor_files_and_other_names_are_not_candidates() {
        for name in [
            ".hidden.yaml",
            ".a.yaml.swp",
            ".a.yaml.swx",
            "a.yaml~",
            ".#a.yaml",
            "#a.yaml#",
            "a.yaml.tmp",
            "a.tmp",
            "4913",
            "notes.txt",
            "a.yaml.bak",
            "a.YAML",
            ".yaml",
            "yaml",
            "",
            "a\n.yaml",
        ] {
            assert!(!is_candidate(name), "{name:?}");
        }
    }
}
