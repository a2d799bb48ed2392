//! The human output of each `ctl` command, pure: a reply (and the time
//! now) in, text out. Tables as `kubectl get` prints them; `describe` and
//! `health` as blocks like `kubectl describe`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::table::{
    NONE, Table, age, clean, field, isolation_word, num_or_none, or_none, relative,
    relative_or_none, state_word, stream_line, time_of, when,
};
use crate::proto::{
    DescribeResponse, HealthResponse, LaunchResponse, ListSourcesResponse, LogLine, PatternInfo,
    RestartResponse, SignalResponse, WatchEvent,
};

/// Width of the labels of a describe block.
const LABEL: usize = 15;

/// `list` (and `health --processes`): one row per instance.
pub fn instances(list: &[PatternInfo], wide: bool) -> String {
    if list.is_empty() {
        return "No instances found.\n".into();
    }
    let mut header = vec![
        "PROCESS ID",
        "PATTERN",
        "STATE",
        "PID",
        "PORT",
        "RESTARTS",
        "AGE",
        "SOURCE",
    ];
    if wide {
        header.extend(["ISOLATION", "ADDRESS", "HEALTH PORT", "LAST ERROR"]);
    }
    let mut t = Table::new(&header);
    for p in list {
        let mut row = vec![
            p.process_id.clone(),
            p.pattern_name.clone(),
            state_word(p.state),
            num_or_none(p.pid),
            num_or_none(p.grpc_port),
            p.restart_count.to_string(),
            if p.pid > 0 {
                uptime(p.uptime_seconds)
            } else {
                NONE.into()
            },
            or_none(&p.source).to_string(),
        ];
        if wide {
            row.extend([
                isolation_word(p.isolation),
                or_none(&p.address).to_string(),
                num_or_none(p.health_port),
                or_none(&p.last_error).to_string(),
            ]);
        }
        t.row(row);
    }
    t.render("")
}

/// An uptime in seconds as an age.
fn uptime(secs: i64) -> String {
    age(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// `launch`: the instance as the reply describes it.
pub fn launched(r: &LaunchResponse) -> String {
    let mut t = Table::new(&["PROCESS ID", "STATE", "HEALTHY", "PID", "ADDRESS"]);
    t.row([
        r.process_id.clone(),
        state_word(r.state),
        r.healthy.to_string(),
        num_or_none(r.pid),
        or_none(&r.address).to_string(),
    ]);
    t.render("")
}

/// `terminate`.
pub fn terminated(id: &str) -> String {
    format!("{} terminated\n", clean(id))
}

/// `restart`: the instances restarted, in order.
pub fn restarted(r: &RestartResponse) -> String {
    if r.process_ids.is_empty() {
        return "No instance restarted.\n".into();
    }
    r.process_ids
        .iter()
        .map(|id| format!("{} restarted\n", clean(id)))
        .collect()
}

/// `signal`.
pub fn signalled(id: &str, r: &SignalResponse) -> String {
    format!(
        "{} signalled: {} sent to process group {}\n",
        clean(id),
        clean(&r.signal),
        r.pid
    )
}

/// `sources`: one row per desired file or manifest.
pub fn sources(r: &ListSourcesResponse) -> String {
    if r.sources.is_empty() {
        return "No sources found.\n".into();
    }
    let mut t = Table::new(&["KIND", "PATH", "STATUS", "PATTERN", "INSTANCES", "ERROR"]);
    for s in &r.sources {
        // The server's error names the file and line already.
        let error = match (s.error.as_str(), s.line) {
            ("", _) => NONE.to_string(),
            (e, line) if line == 0 || e.contains(&format!(":{line}")) => e.to_string(),
            (e, line) => format!("line {line}: {e}"),
        };
        t.row([
            s.kind.clone(),
            s.path.clone(),
            if s.ok { "OK" } else { "Invalid" }.to_string(),
            or_none(&s.pattern_name).to_string(),
            s.process_ids.len().to_string(),
            error,
        ]);
    }
    t.render("")
}

/// `health`.
pub fn health(r: &HealthResponse, wide: bool) -> String {
    let mut out = String::new();
    field(&mut out, LABEL, "Healthy", &r.healthy.to_string());
    field(&mut out, LABEL, "Uptime", &uptime(r.uptime_seconds));
    field(
        &mut out,
        LABEL,
        "Instances",
        &format!(
            "{} total, {} running, {} terminating, {} failed",
            r.total_processes, r.running_processes, r.terminating_processes, r.failed_processes
        ),
    );
    let mut dist: Vec<_> = r.isolation_distribution.iter().collect();
    dist.sort();
    let dist: Vec<String> = dist.iter().map(|(k, v)| format!("{k}={v}")).collect();
    field(&mut out, LABEL, "Isolation", or_none(&dist.join(", ")));
    if r.problems.is_empty() {
        field(&mut out, LABEL, "Problems", NONE);
    } else {
        out.push_str("Problems:\n");
        for p in &r.problems {
            let _ = writeln!(out, "  {}", clean(p));
        }
    }
    if !r.processes.is_empty() {
        out.push('\n');
        out.push_str(&instances(&r.processes, wide));
    }
    out
}

/// `describe`: a block like `kubectl describe`, then the Conditions and
/// Events tables.
pub fn describe(r: &DescribeResponse, now: SystemTime) -> String {
    let p = r.process.clone().unwrap_or_default();
    let mut out = String::new();
    let mut f = |label: &str, value: &str| field(&mut out, LABEL, label, value);
    f("Name", &p.process_id);
    f("Pattern", &r.pattern_name);
    f("Isolation", &isolation_word(r.isolation));
    f("Namespace", or_none(&r.namespace));
    f("Session", or_none(&r.session_id));
    f("State", &state_word(p.state));
    f("Healthy", &p.healthy.to_string());
    f("PID", &num_or_none(r.pid));
    f("Start Time", &when(now, r.start_time.as_ref()));
    f("Restarts", &r.restart_count.to_string());
    f("Next Restart", &when(now, r.next_restart_time.as_ref()));
    f("Address", or_none(&p.address));
    f(
        "Ports",
        &format!(
            "grpc {}, health {}",
            num_or_none(r.grpc_port),
            num_or_none(r.health_port)
        ),
    );
    f("Last Error", or_none(&p.last_error));
    f("Executable", or_none(&r.executable));
    f("Manifest", or_none(&r.manifest));
    f("Log", or_none(&r.log_path));
    f("Limits", or_none(&r.limits));
    f(
        "Grace Period",
        &if r.grace_period_secs > 0 {
            format!("{}s", r.grace_period_secs)
        } else {
            "<default>".into()
        },
    );
    let declared: Vec<String> = r
        .declared_by
        .iter()
        .map(|d| match (d.path.as_str(), d.line) {
            ("", _) => d.kind.clone(),
            (path, 0) => path.to_string(),
            (path, line) => format!("{path}:{line}"),
        })
        .collect();
    f("Declared By", or_none(&declared.join(", ")));
    if r.config.is_empty() {
        f("Config", NONE);
    } else {
        out.push_str("Config:\n");
        let mut config: Vec<_> = r.config.iter().collect();
        config.sort();
        for (k, v) in config {
            let _ = writeln!(out, "  {}={}", clean(k), clean(v));
        }
    }
    out.push_str("Conditions:\n");
    if r.conditions.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut t = Table::new(&["TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"]);
        for c in &r.conditions {
            t.row([
                c.r#type.clone(),
                c.status.clone(),
                or_none(&c.reason).to_string(),
                relative_or_none(now, c.last_transition_time.as_ref()),
                c.message.clone(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    out.push_str("Events:\n");
    if r.events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut t = Table::new(&["AGE", "REVISION", "REASON", "FROM", "MESSAGE"]);
        for e in &r.events {
            t.row([
                relative_or_none(now, e.time.as_ref()),
                e.revision.to_string(),
                e.reason.clone(),
                or_none(&e.actor).to_string(),
                e.message.clone(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    out
}

/// Column widths of `watch`'s lines (a stream: rows cannot be measured
/// before they are printed; a longer cell pushes its line's later ones).
const WATCH_WIDTHS: [usize; 4] = [8, 8, 12, 28];

/// `watch`'s header line.
pub fn watch_header() -> String {
    stream_line(
        &WATCH_WIDTHS,
        &["TIME", "REVISION", "REASON", "PROCESS", "MESSAGE"],
    )
}

/// One `watch` line; None for an event a person need not see (the
/// Bookmark that ends the initial snapshot).
pub fn watch_line(e: &WatchEvent, now: SystemTime) -> Option<String> {
    if e.reason == "Bookmark" {
        return None;
    }
    let subject = if e.process_id.is_empty() {
        if e.pattern_name.is_empty() {
            or_none(&e.source).to_string()
        } else {
            e.pattern_name.clone()
        }
    } else {
        e.process_id.clone()
    };
    let time = time_of(e.time.as_ref()).map_or_else(|| NONE.into(), |t| relative(now, t));
    Some(stream_line(
        &WATCH_WIDTHS,
        &[
            time,
            e.revision.to_string(),
            e.reason.clone(),
            subject,
            e.message.clone(),
        ],
    ))
}

/// One `logs` line: `[process id] ` first when several instances are
/// merged, the time first with `--timestamps`. The line is escaped when
/// `escape` (a terminal reads it).
pub fn log_line(l: &LogLine, prefix: bool, timestamps: bool, escape: bool) -> String {
    let mut out = String::new();
    if timestamps {
        let t = time_of(l.time.as_ref()).map_or_else(
            || NONE.into(),
            |t| humantime::format_rfc3339_millis(t).to_string(),
        );
        out.push_str(&t);
        out.push(' ');
    }
    if prefix {
        let _ = write!(out, "[{}] ", clean(&l.process_id));
    }
    if escape {
        out.push_str(&clean(&l.line));
    } else {
        out.push_str(&l.line);
    }
    out
}

#[cfg(test)]
mod tests;
