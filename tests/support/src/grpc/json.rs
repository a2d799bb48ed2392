//! grpcurl's JSON for the launcher's messages, both ways, written out by
//! hand for the RPCs the tests call (so the tests keep grpcurl's view
//! of a reply while calls go through tonic).
//!
//! Requests are read as grpcurl reads them (protobuf's JSON mapping): a
//! field by its proto name (`pattern_name`) or its JSON name
//! (`patternName`), enums by name or number, 64-bit integers as numbers or
//! strings, `null` for "not set"; an unknown field is an error. Replies are
//! written as `grpcurl -emit-defaults` prints them: JSON names, every
//! field present, enums by name, 64-bit integers as strings, an unset
//! message as `null`. `tests/testkit.rs` compares both with real grpcurl.
//!
//! Also the accessors tests read replies with ([`jstr`], [`jint`], ...).

use std::collections::HashMap;

use prism_launcher::proto::{
    GetLogsRequest, GetProcessStatusRequest, GetProcessStatusResponse, HealthRequest,
    HealthResponse, IsolationLevel, LaunchRequest, LaunchResponse, ListPatternsRequest,
    ListPatternsResponse, ListSourcesResponse, LogLine, PatternInfo, ProcessState, SourceInfo,
    TerminateRequest, TerminateResponse,
};
use serde_json::{Map, Value};

/// The JSON name protoc gives field `proto_name` (lowerCamelCase).
pub fn json_name(proto_name: &str) -> String {
    let mut out = String::with_capacity(proto_name.len());
    let mut upper = false;
    for c in proto_name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

/// The set fields of request `msg` in `v`, by proto name. Keys may be proto
/// or JSON names; an unknown one is an error (grpcurl's wording).
fn fields<'a>(
    msg: &str,
    v: &'a Value,
    names: &[&'static str],
) -> Result<Vec<(&'static str, &'a Value)>, String> {
    let obj = match v {
        Value::Object(o) => o,
        Value::Null => return Ok(Vec::new()),
        other => return Err(format!("{msg}: a JSON object expected, got {other}")),
    };
    let mut out = Vec::new();
    for (key, value) in obj {
        let name = names
            .iter()
            .find(|n| **n == key || json_name(n) == *key)
            .ok_or_else(|| {
                format!("message type prism.launcher.{msg} has no known field named {key}")
            })?;
        if !value.is_null() {
            out.push((*name, value));
        }
    }
    Ok(out)
}

fn string(field: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{field}: a string expected, got {v}"))
}

fn boolean(field: &str, v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("{field}: a boolean expected, got {v}"))
}

fn int64(field: &str, v: &Value) -> Result<i64, String> {
    let parsed = match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{field}: an integer expected, got {v}"))
}

fn enumeration(field: &str, v: &Value, by_name: fn(&str) -> Option<i32>) -> Result<i32, String> {
    let parsed = match v {
        Value::String(s) => by_name(s),
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{field}: an enum value expected, got {v}"))
}

fn isolation_by_name(s: &str) -> Option<i32> {
    IsolationLevel::from_str_name(s).map(|e| e as i32)
}

fn state_by_name(s: &str) -> Option<i32> {
    ProcessState::from_str_name(s).map(|e| e as i32)
}

fn string_map(field: &str, v: &Value) -> Result<HashMap<String, String>, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{field}: an object expected, got {v}"))?;
    obj.iter()
        .map(|(k, v)| Ok((k.clone(), string(&format!("{field}.{k}"), v)?)))
        .collect()
}

pub fn launch_request(v: &Value) -> Result<LaunchRequest, String> {
    let mut r = LaunchRequest::default();
    let names = [
        "pattern_name",
        "isolation",
        "namespace",
        "session_id",
        "config",
        "grace_period_secs",
    ];
    for (name, v) in fields("LaunchRequest", v, &names)? {
        match name {
            "pattern_name" => r.pattern_name = string(name, v)?,
            "isolation" => r.isolation = enumeration(name, v, isolation_by_name)?,
            "namespace" => r.namespace = string(name, v)?,
            "session_id" => r.session_id = string(name, v)?,
            "config" => r.config = string_map(name, v)?,
            _ => r.grace_period_secs = int64(name, v)?,
        }
    }
    Ok(r)
}

pub fn list_patterns_request(v: &Value) -> Result<ListPatternsRequest, String> {
    let mut r = ListPatternsRequest::default();
    let names = ["pattern_name", "namespace", "state"];
    for (name, v) in fields("ListPatternsRequest", v, &names)? {
        match name {
            "pattern_name" => r.pattern_name = string(name, v)?,
            "namespace" => r.namespace = string(name, v)?,
            _ => r.state = enumeration(name, v, state_by_name)?,
        }
    }
    Ok(r)
}

pub fn terminate_request(v: &Value) -> Result<TerminateRequest, String> {
    let mut r = TerminateRequest::default();
    let names = ["process_id", "grace_period_secs", "force"];
    for (name, v) in fields("TerminateRequest", v, &names)? {
        match name {
            "process_id" => r.process_id = string(name, v)?,
            "grace_period_secs" => r.grace_period_secs = int64(name, v)?,
            _ => r.force = boolean(name, v)?,
        }
    }
    Ok(r)
}

pub fn health_request(v: &Value) -> Result<HealthRequest, String> {
    let mut r = HealthRequest::default();
    for (name, v) in fields("HealthRequest", v, &["include_processes"])? {
        r.include_processes = boolean(name, v)?;
    }
    Ok(r)
}

pub fn get_process_status_request(v: &Value) -> Result<GetProcessStatusRequest, String> {
    let mut r = GetProcessStatusRequest::default();
    for (name, v) in fields("GetProcessStatusRequest", v, &["process_id"])? {
        r.process_id = string(name, v)?;
    }
    Ok(r)
}

pub fn list_sources_request(v: &Value) -> Result<(), String> {
    fields("ListSourcesRequest", v, &[]).map(drop)
}

pub fn get_logs_request(v: &Value) -> Result<GetLogsRequest, String> {
    let mut r = GetLogsRequest::default();
    let names = [
        "process_id",
        "pattern_name",
        "namespace",
        "tail_lines",
        "follow",
    ];
    for (name, v) in fields("GetLogsRequest", v, &names)? {
        match name {
            "process_id" => r.process_id = string(name, v)?,
            "pattern_name" => r.pattern_name = string(name, v)?,
            "namespace" => r.namespace = string(name, v)?,
            "tail_lines" => {
                r.tail_lines = i32::try_from(int64(name, v)?)
                    .map_err(|_| format!("{name}: an int32 expected, got {v}"))?;
            }
            _ => r.follow = boolean(name, v)?,
        }
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

/// An object with fields in proto order, keyed by JSON name.
fn object(fields: Vec<(&str, Value)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (json_name(k), v))
            .collect::<Map<String, Value>>(),
    )
}

/// A 64-bit integer: a string, as protobuf's JSON mapping prints it.
fn int64s(v: i64) -> Value {
    Value::String(v.to_string())
}

/// An enum by name; a value the proto does not know, by number.
fn enum_value(v: i32, name: Option<&'static str>) -> Value {
    name.map_or_else(|| Value::from(v), Value::from)
}

fn state(v: i32) -> Value {
    enum_value(v, ProcessState::try_from(v).ok().map(|s| s.as_str_name()))
}

fn isolation(v: i32) -> Value {
    enum_value(v, IsolationLevel::try_from(v).ok().map(|s| s.as_str_name()))
}

fn strings(v: &[String]) -> Value {
    Value::Array(v.iter().map(|s| Value::from(s.as_str())).collect())
}

pub fn launch_response(r: &LaunchResponse) -> Value {
    object(vec![
        ("process_id", r.process_id.as_str().into()),
        ("state", state(r.state)),
        ("address", r.address.as_str().into()),
        ("healthy", r.healthy.into()),
        ("error", r.error.as_str().into()),
        ("pid", r.pid.into()),
        ("health_port", r.health_port.into()),
    ])
}

pub fn pattern_info(p: &PatternInfo) -> Value {
    object(vec![
        ("pattern_name", p.pattern_name.as_str().into()),
        ("process_id", p.process_id.as_str().into()),
        ("state", state(p.state)),
        ("address", p.address.as_str().into()),
        ("healthy", p.healthy.into()),
        ("uptime_seconds", int64s(p.uptime_seconds)),
        ("namespace", p.namespace.as_str().into()),
        ("session_id", p.session_id.as_str().into()),
        ("last_error", p.last_error.as_str().into()),
        ("error_count", p.error_count.into()),
        ("restart_count", p.restart_count.into()),
        ("pid", p.pid.into()),
        ("health_port", p.health_port.into()),
        ("isolation", isolation(p.isolation)),
        ("source", p.source.as_str().into()),
        ("grpc_port", p.grpc_port.into()),
        ("limits", p.limits.as_str().into()),
    ])
}

fn pattern_infos(v: &[PatternInfo]) -> Value {
    Value::Array(v.iter().map(pattern_info).collect())
}

pub fn list_patterns_response(r: &ListPatternsResponse) -> Value {
    object(vec![
        ("patterns", pattern_infos(&r.patterns)),
        ("total_count", r.total_count.into()),
    ])
}

pub fn terminate_response(r: &TerminateResponse) -> Value {
    object(vec![
        ("success", r.success.into()),
        ("error", r.error.as_str().into()),
    ])
}

pub fn health_response(r: &HealthResponse) -> Value {
    // Map keys come out sorted, as grpcurl prints them.
    let mut dist: Vec<(&String, &i32)> = r.isolation_distribution.iter().collect();
    dist.sort();
    let dist: Map<String, Value> = dist
        .into_iter()
        .map(|(k, v)| (k.clone(), Value::from(*v)))
        .collect();
    object(vec![
        ("healthy", r.healthy.into()),
        ("total_processes", r.total_processes.into()),
        ("running_processes", r.running_processes.into()),
        ("terminating_processes", r.terminating_processes.into()),
        ("failed_processes", r.failed_processes.into()),
        ("isolation_distribution", Value::Object(dist)),
        ("processes", pattern_infos(&r.processes)),
        ("uptime_seconds", int64s(r.uptime_seconds)),
        ("problems", strings(&r.problems)),
    ])
}

pub fn get_process_status_response(r: &GetProcessStatusResponse) -> Value {
    object(vec![
        (
            "process",
            r.process.as_ref().map_or(Value::Null, pattern_info),
        ),
        ("not_found", r.not_found.into()),
    ])
}

pub fn source_info(s: &SourceInfo) -> Value {
    object(vec![
        ("kind", s.kind.as_str().into()),
        ("path", s.path.as_str().into()),
        ("ok", s.ok.into()),
        ("error", s.error.as_str().into()),
        ("line", s.line.into()),
        ("process_ids", strings(&s.process_ids)),
        ("pattern_name", s.pattern_name.as_str().into()),
    ])
}

pub fn list_sources_response(r: &ListSourcesResponse) -> Value {
    object(vec![(
        "sources",
        Value::Array(r.sources.iter().map(source_info).collect()),
    )])
}

pub fn log_line(l: &LogLine) -> Value {
    object(vec![
        ("process_id", Value::from(l.process_id.clone())),
        ("line", Value::from(l.line.clone())),
        (
            "time",
            l.time
                .as_ref()
                .map_or(Value::Null, |t| Value::from(rfc3339(t.seconds, t.nanos))),
        ),
    ])
}

/// A `google.protobuf.Timestamp` as protobuf's JSON mapping writes it:
/// RFC 3339 in UTC, with 0, 3, 6 or 9 digits of fraction.
pub fn rfc3339(seconds: i64, nanos: i32) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = match nanos {
        0 => String::new(),
        n if n % 1_000_000 == 0 => format!(".{:03}", n / 1_000_000),
        n if n % 1_000 == 0 => format!(".{:06}", n / 1_000),
        n => format!(".{n:09}"),
    };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

// ---------------------------------------------------------------------------
// Accessors (64-bit integers come as strings)
// ---------------------------------------------------------------------------

/// The string at `key` ("" if absent or not a string).
pub fn jstr(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The integer at `key`, a number or a string (0 if absent).
pub fn jint(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Number(n)) => n.as_i64().unwrap_or_default(),
        Some(Value::String(s)) => s.parse().unwrap_or_default(),
        _ => 0,
    }
}

/// The boolean at `key` (false if absent).
pub fn jbool(v: &Value, key: &str) -> bool {
    v.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// True if `text` contains `n` as a whole number (not part of a longer one).
pub fn mentions_number(text: &str, n: i64) -> bool {
    let n = n.to_string();
    let bytes = text.as_bytes();
    text.match_indices(&n).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| bytes[j]);
        let after = bytes.get(i + n.len()).copied();
        !before.is_some_and(|b| b.is_ascii_digit()) && !after.is_some_and(|b| b.is_ascii_digit())
    })
}
