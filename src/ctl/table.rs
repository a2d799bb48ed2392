//! The text building blocks of `ctl`'s human output, pure: aligned tables
//! in the style of `kubectl get`, ages and relative times (`5m`, `2s ago`),
//! enum names as words, and the escaping of untrusted text.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::proto::{IsolationLevel, ProcessState};

/// Spaces between two columns (as kubectl prints them).
const GAP: usize = 3;

/// What an empty value prints as.
pub const NONE: &str = "<none>";

/// A table: a header row and rows of cells, printed with every column as
/// wide as its widest cell. Cells are escaped ([`clean`]) when added.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_string()).collect()],
        }
    }

    /// Appends a row; missing cells print empty, extra ones are kept.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(
            cells
                .into_iter()
                .map(|c| clean(c.as_ref()).into())
                .collect(),
        );
    }

    /// Rows added so far (the header not counted).
    pub fn len(&self) -> usize {
        self.rows.len() - 1
    }

    /// True when no row was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The table, each line prefixed with `indent` and ended by a newline.
    /// The last column is not padded.
    pub fn render(&self, indent: &str) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::from(indent);
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                line.push_str(cell);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', w - width(cell) + GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// One line of a table whose rows arrive one by one (a stream): each cell
/// padded to at least its column's `widths` entry, the last one not.
pub fn stream_line<S: AsRef<str>>(widths: &[usize], cells: &[S]) -> String {
    let mut line = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = clean(cell.as_ref());
        line.push_str(&cell);
        if i + 1 < cells.len() {
            let w = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(
                ' ',
                w.saturating_sub(width(&cell)) + GAP,
            ));
        }
    }
    line.trim_end().to_string()
}

/// Display width of `s`, counted in characters.
fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` with every control character (terminal escapes, newlines, tabs)
/// written as an escape such as `\u{1b}`: names, messages and log lines
/// come from API callers, desired files and pattern processes, none of
/// which may move the cursor or recolour the terminal of whoever reads
/// them.
pub fn clean(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`NONE`] for an empty value.
pub fn or_none(s: &str) -> &str {
    if s.is_empty() { NONE } else { s }
}

/// A number, or [`NONE`] when it is 0 (a pid or port not known).
pub fn num_or_none(n: i32) -> String {
    if n == 0 { NONE.into() } else { n.to_string() }
}

/// An age as `kubectl get` prints one: `45s`, `3m12s`, `25m`, `5h3m`,
/// `30h`, `3d4h`, `200d`, `2y10d`.
pub fn age(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        return with_rest(minutes, "m", secs % 60, "s");
    }
    if minutes < 3 * 60 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return with_rest(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_rest(days, "d", hours % 24, "h");
    }
    if days < 365 * 2 {
        return format!("{days}d");
    }
    if days < 365 * 8 {
        return with_rest(days / 365, "y", days % 365, "d");
    }
    format!("{}y", days / 365)
}

fn with_rest(big: u64, big_unit: &str, rest: u64, rest_unit: &str) -> String {
    if rest == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit}{rest}{rest_unit}")
    }
}

/// `then` relative to `now`: `2s ago`, `5m ago`, or `in 3s` for a time to
/// come (a due restart; or a clock a little ahead of ours).
pub fn relative(now: SystemTime, then: SystemTime) -> String {
    match now.duration_since(then) {
        Ok(past) => format!("{} ago", age(past)),
        Err(e) if e.duration() < Duration::from_secs(1) => "0s ago".into(),
        Err(e) => format!("in {}", age(e.duration())),
    }
}

/// A protobuf timestamp as a time (None when unset or out of range).
pub fn time_of(t: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

/// A timestamp relative to `now`, or [`NONE`].
pub fn relative_or_none(now: SystemTime, t: Option<&prost_types::Timestamp>) -> String {
    time_of(t).map_or_else(|| NONE.into(), |t| relative(now, t))
}

/// A timestamp as RFC 3339 (seconds, UTC) followed by how long ago, or
/// [`NONE`].
pub fn when(now: SystemTime, t: Option<&prost_types::Timestamp>) -> String {
    time_of(t).map_or_else(
        || NONE.into(),
        |t| {
            format!(
                "{} ({})",
                humantime::format_rfc3339_seconds(t),
                relative(now, t)
            )
        },
    )
}

/// `SCREAMING_SNAKE` words after `prefix` as one CamelCase word
/// (`STATE_RUNNING` → `Running`).
fn camel(name: &str, prefix: &str) -> String {
    let mut out = String::new();
    for word in name.trim_start_matches(prefix).split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.push(first);
            out.extend(chars.flat_map(char::to_lowercase));
        }
    }
    out
}

/// A state as a word (`Running`); a number the client does not know as
/// `Unknown(7)`.
pub fn state_word(v: i32) -> String {
    match ProcessState::try_from(v) {
        Ok(ProcessState::StateUnspecified) => NONE.into(),
        Ok(s) => camel(s.as_str_name(), "STATE_"),
        Err(_) => format!("Unknown({v})"),
    }
}

/// An isolation level as a word (`Namespace`).
pub fn isolation_word(v: i32) -> String {
    match IsolationLevel::try_from(v) {
        Ok(IsolationLevel::Unspecified) => NONE.into(),
        Ok(i) => camel(i.as_str_name(), "ISOLATION_"),
        Err(_) => format!("Unknown({v})"),
    }
}

/// `label:` padded to `width`, a space, `value` and a newline: one line
/// of a describe block.
pub fn field(out: &mut String, width: usize, label: &str, value: &str) {
    let label = format!("{label}:");
    let _ = writeln!(out, "{label:<width$} {}", clean(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_every_column_to_its_widest_cell() {
        let mut t = Table::new(&["PROCESS ID", "STATE", "PID"]);
        t.row(["shared:a", "Running", "12"]);
        t.row(["ns:tenant-1:long-pattern", "Starting", "<none>"]);
        assert_eq!(
            t.render(""),
            "PROCESS ID                 STATE      PID\n\
             shared:a                   Running    12\n\
             ns:tenant-1:long-pattern   Starting   <none>\n"
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_table_pads_missing_cells_and_keeps_no_trailing_spaces() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(["x"]);
        t.row(["", "", ""]);
        assert_eq!(t.render("  "), "  A   B   C\n  x\n\n");
        assert!(Table::new(&["A"]).is_empty());
    }

    #[test]
    fn cells_with_control_characters_are_escaped() {
        let mut t = Table::new(&["NAME", "X"]);
        t.row(["evil\u{1b}[2J\nname", "1"]);
        let out = t.render("");
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("evil\\u{1b}[2J\\nname   1"), "{out:?}");
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
        assert_eq!(clean("a\tb\u{9b}c"), "a\\tb\\u{9b}c");
    }

    #[test]
    fn stream_lines_pad_to_the_given_widths_and_overflow_past_them() {
        let widths = [4, 6];
        assert_eq!(
            stream_line(&widths, &["AGE", "REV", "MSG"]),
            "AGE    REV      MSG"
        );
        assert_eq!(
            stream_line(&widths, &["10m ago", "7", "hello"]),
            "10m ago   7        hello"
        );
        assert_eq!(stream_line(&widths, &["x", "", ""]), "x");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let s = Duration::from_secs;
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (192, "3m12s"),
            (599, "9m59s"),
            (600, "10m"),
            (3 * 3600 - 1, "179m"),
            (3 * 3600, "3h"),
            (5 * 3600 + 3 * 60 + 9, "5h3m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 59 * 60, "47h"),
            (48 * 3600, "2d"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (8 * 86400, "8d"),
            (729 * 86400, "729d"),
            (730 * 86400 + 10 * 86400, "2y10d"),
            (9 * 365 * 86400, "9y"),
        ] {
            assert_eq!(age(s(secs)), want, "{secs}s");
        }
        assert_eq!(age(Duration::from_millis(1999)), "1s");
    }

    #[test]
    fn relative_times_say_ago_or_in() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ago = |s| relative(now, now - Duration::from_secs(s));
        assert_eq!(ago(2), "2s ago");
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(300), "5m ago");
        assert_eq!(ago(90_000), "25h ago");
        assert_eq!(
            relative(now, now + Duration::from_millis(300)),
            "0s ago",
            "a clock a little ahead is now"
        );
        assert_eq!(relative(now, now + Duration::from_secs(3)), "in 3s");
    }

    #[test]
    fn timestamps_render_absolute_and_relative_or_none() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_060);
        let t = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(when(now, Some(&t)), "2023-11-14T22:13:20Z (60s ago)");
        assert_eq!(relative_or_none(now, Some(&t)), "60s ago");
        assert_eq!(when(now, None), "<none>");
        assert_eq!(relative_or_none(now, None), "<none>");
    }

    #[test]
    fn enum_values_print_as_words() {
        assert_eq!(state_word(ProcessState::StateRunning as i32), "Running");
        assert_eq!(
            state_word(ProcessState::StateTerminating as i32),
            "Terminating"
        );
        assert_eq!(state_word(0), "<none>");
        assert_eq!(state_word(42), "Unknown(42)");
        assert_eq!(
            isolation_word(IsolationLevel::IsolationNamespace as i32),
            "Namespace"
        );
        assert_eq!(isolation_word(IsolationLevel::IsolationNone as i32), "None");
    }

    #[test]
    fn fields_align_their_values() {
        let mut out = String::new();
        field(&mut out, 10, "Name", "a");
        field(&mut out, 10, "Namespace", "<none>");
        assert_eq!(out, "Name:      a\nNamespace: <none>\n");
    }
}
