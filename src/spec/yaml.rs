//! Reading YAML input safely: size limit, alias/expansion budgets, and
//! errors that name the file, the line and the key.
//!
//! Reads files but keeps no state; callers decide what an error means.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

/// Largest file the launcher reads (SPEC §9).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A YAML input that could not be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct YamlError {
    /// The file, as the user knows it (e.g. `desired/a.yaml`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<u64>,
    /// What is wrong, naming the key where one is at fault.
    pub message: String,
}

impl YamlError {
    /// An error about a whole file (no line).
    pub fn file(file: &str, message: impl Into<String>) -> Self {
        YamlError {
            file: file.to_string(),
            line: None,
            message: message.into(),
        }
    }
}

/// Reads a file of at most [`MAX_FILE_BYTES`] as UTF-8.
pub fn read_limited(path: &Path, display: &str) -> Result<String, YamlError> {
    let f = std::fs::File::open(path).map_err(|e| YamlError::file(display, e.to_string()))?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| YamlError::file(display, e.to_string()))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(YamlError::file(
            display,
            format!("file is larger than the limit of {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(buf).map_err(|e| YamlError::file(display, format!("not UTF-8: {e}")))
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_events = 200_000;
    budget.max_depth = 64;
    budget.max_recorded_anchor_events = 50_000;
    let mut o = serde_saphyr::Options::default();
    o.budget = Some(budget);
    o
}

/// Parses one document.
pub fn parse_one<T: DeserializeOwned>(text: &str, display: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str_with_options(text, options()).map_err(|e| convert(&e, text, display))
}

/// Parses a multi-document stream (empty documents are skipped).
pub fn parse_many<T: DeserializeOwned>(text: &str, display: &str) -> Result<Vec<T>, YamlError> {
    serde_saphyr::from_multiple_with_options(text, options())
        .map_err(|e| convert(&e, text, display))
}

/// Turns a parser error into a [`YamlError`]: the line, and the message with
/// the key at that line where the parser's own message does not name one.
fn convert(e: &serde_saphyr::Error, text: &str, display: &str) -> YamlError {
    let at = e.location().map(|l| l.line()).filter(|l| *l > 0);
    // At the end of input the parser names the line after the final
    // newline, which no editor shows: name the last line instead (but look
    // for a key only where the parser pointed).
    let last = u64::try_from(lines(text).count().max(1)).unwrap_or(u64::MAX);
    let line = at.map(|l| l.min(last));
    let full = e.to_string();
    let first = full.lines().next().unwrap_or_default();
    // The parser prefixes "error: line L column C: "; the line is ours to show.
    let first = first.trim_start_matches("error: ");
    let message = match first.find(": ") {
        Some(i) if first.starts_with("line ") && first[..i].contains(" column ") => {
            first[i + 2..].to_string()
        }
        _ => first.to_string(),
    };
    // A missing key is named by the message; the line is the mapping's.
    let key = at
        .filter(|_| !message.starts_with("missing field"))
        .and_then(|l| key_at_line(text, l));
    let message = match key {
        Some(k) if !message.contains(&format!("`{k}`")) => format!("key `{k}`: {message}"),
        _ => message,
    };
    YamlError {
        file: display.to_string(),
        line,
        message,
    }
}

/// The lines of `text` as YAML counts them: a line ends at `\r\n`, `\r` or
/// `\n` (`str::lines` knows no lone `\r`, the parser does).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text).filter(|t| !t.is_empty());
    std::iter::from_fn(move || {
        let t = rest?;
        let Some(i) = t.find(['\r', '\n']) else {
            rest = None;
            return Some(t);
        };
        let next = &t[i + if t[i..].starts_with("\r\n") { 2 } else { 1 }..];
        rest = Some(next).filter(|n| !n.is_empty());
        Some(&t[..i])
    })
}

/// The mapping key written on a line (`  port: 90000` gives `port`).
fn key_at_line(text: &str, line: u64) -> Option<String> {
    let l = lines(text).nth(usize::try_from(line).ok()?.checked_sub(1)?)?;
    let l = l.trim_start().trim_start_matches("- ");
    let (k, _) = l.split_once(':')?;
    let k = k.trim().trim_matches(|c| c == '"' || c == '\'');
    (!k.is_empty() && !k.contains(' ') && !k.starts_with('#')).then(|| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // fields exist to be parsed
    struct Doc {
        name: String,
        port: Option<u16>,
    }

    #[test]
    fn a_wrong_type_names_line_and_key() {
        let e = parse_one::<Doc>("name: a\nport: 90000\n", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("port"), "{e}");
        assert!(e.to_string().starts_with("x.yaml:2: "), "{e}");
        assert!(!e.message.contains("column"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = parse_one::<Doc>("name: a\nbogus: 1\n", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("bogus"), "{e}");
    }

    #[test]
    fn an_error_at_the_end_of_input_names_the_last_line_not_one_past_it() {
        // Found by the `manifest` fuzz target: the parser names the line
        // after the final newline, which the file does not have.
        let e = parse_one::<Doc>("# only\n# comments\n", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().starts_with("x.yaml:2: "), "{e}");
        // A missing key is not blamed on the key of the last line.
        let e = parse_one::<Doc>("port: 1\n", "x.yaml").unwrap_err();
        assert!(e.line.is_none_or(|l| l == 1), "{e}");
        assert!(e.message.contains("name"), "{e}");
        assert!(!e.message.contains("`port`"), "{e}");
    }

    #[test]
    fn lines_end_where_yaml_ends_them() {
        // Found by the `manifest` fuzz target: a lone CR is a line break
        // to the parser, so an error's line and its key are counted so too.
        let e = parse_one::<Doc>("# a\rname: a\r\nport: 90000\r# b\r", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.message.contains("port"), "{e}");
        let e = parse_one::<Doc>("name: a\r# b\r# c\r\r", "x.yaml");
        assert!(e.is_ok(), "{e:?}");
        let e = parse_one::<Doc>("# a\r# b\r\n# c\r", "x.yaml").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        fn split(t: &str) -> Vec<&str> {
            lines(t).collect()
        }
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split("a"), ["a"]);
        assert_eq!(split("a\r\n\rb\n"), ["a", "", "b"]);
        assert_eq!(split("\n\n"), ["", ""]);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut y = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            y.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let r = parse_one::<std::collections::BTreeMap<String, serde_json::Value>>(&y, "bomb.yaml");
        assert!(r.is_err());
    }

    #[test]
    fn multi_document_streams_parse_and_skip_empty_documents() {
        let v: Vec<Doc> = parse_many("name: a\n---\nname: b\n", "m.yaml").unwrap();
        assert_eq!(v.len(), 2);
        let v: Vec<Doc> = parse_many("# nothing\n", "m.yaml").unwrap();
        assert!(v.is_empty());
    }
}
