//! One function per `ctl` subcommand: build the request from the flags,
//! call the launcher, print the reply (a table or block by default, the
//! canonical JSON with `-o json`).

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use super::args::{Command, Ctl, LaunchArgs, ListArgs, LogsArgs, Output, RestartArgs, WatchArgs};
use super::json::{self, Wire};
use super::{Client, CtlError, render};
use crate::proto::{
    DescribeRequest, GetLogsRequest, HealthRequest, IsolationLevel, LaunchRequest,
    ListPatternsRequest, ListSourcesRequest, ProcessState, RestartRequest, SignalRequest,
    TerminateRequest, WatchRequest,
};

/// Runs `ctl`'s command (all but `completion`) on `client`.
pub(super) async fn run(
    ctl: Ctl,
    client: &mut Client,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let o = ctl.output;
    match ctl.command {
        Command::List(a) => list(client, a, o, out).await,
        Command::Describe { id } => {
            let r = client
                .describe(DescribeRequest { process_id: id })
                .await?
                .into_inner();
            print(out, o, &r, || render::describe(&r, SystemTime::now()))
        }
        Command::Launch(a) => launch(client, a, o, out).await,
        Command::Terminate { id, grace, force } => {
            let r = client
                .terminate_pattern(TerminateRequest {
                    process_id: id.clone(),
                    grace_period_secs: grace.unwrap_or(0),
                    force,
                })
                .await?
                .into_inner();
            print(out, o, &r, || render::terminated(&id))?;
            failed_if(!r.success, || format!("terminate {id}: {}", r.error))
        }
        Command::Restart(a) => restart(client, a, o, out).await,
        Command::Signal { id, signal } => {
            let r = client
                .signal_pattern(SignalRequest {
                    process_id: id.clone(),
                    signal,
                })
                .await?
                .into_inner();
            print(out, o, &r, || render::signalled(&id, &r))
        }
        Command::Logs(a) => logs(client, a, o, out).await,
        Command::Watch(a) => watch(client, a, o, out).await,
        Command::Sources => {
            let r = client
                .list_sources(ListSourcesRequest {})
                .await?
                .into_inner();
            print(out, o, &r, || render::sources(&r))
        }
        Command::Health { processes } => {
            let r = client
                .health(HealthRequest {
                    include_processes: processes,
                })
                .await?
                .into_inner();
            print(out, o, &r, || render::health(&r, o == Output::Wide))?;
            failed_if(!r.healthy, || "the launcher is not healthy".to_string())
        }
        // Answered before connecting.
        Command::Completion { .. } => Ok(()),
    }
}

/// Prints a unary reply: `-o json` pretty, else `table()`.
fn print<M: Wire>(
    out: &mut impl Write,
    o: Output,
    msg: &M,
    table: impl FnOnce() -> String,
) -> Result<(), CtlError> {
    match o {
        Output::Json => writeln!(out, "{}", json::pretty(msg)?)?,
        Output::Table | Output::Wide => out.write_all(table().as_bytes())?,
    }
    Ok(())
}

/// `Err(Failed)` when `failed`.
fn failed_if(failed: bool, why: impl FnOnce() -> String) -> Result<(), CtlError> {
    if failed {
        Err(CtlError::Failed(why()))
    } else {
        Ok(())
    }
}

async fn list(
    client: &mut Client,
    a: ListArgs,
    o: Output,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let r = client
        .list_patterns(ListPatternsRequest {
            pattern_name: a.pattern.unwrap_or_default(),
            namespace: a.namespace.unwrap_or_default(),
            state: a.state.map_or(0, |s| ProcessState::from(s).into()),
        })
        .await?
        .into_inner();
    print(out, o, &r, || {
        render::instances(&r.patterns, o == Output::Wide)
    })
}

async fn launch(
    client: &mut Client,
    a: LaunchArgs,
    o: Output,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let r = client
        .launch_pattern(LaunchRequest {
            pattern_name: a.pattern,
            isolation: a.isolation.map_or(0, |i| IsolationLevel::from(i).into()),
            namespace: a.namespace.unwrap_or_default(),
            session_id: a.session.unwrap_or_default(),
            config: a.config.into_iter().collect(),
            grace_period_secs: a.grace.unwrap_or(0),
        })
        .await?
        .into_inner();
    print(out, o, &r, || render::launched(&r))?;
    failed_if(!r.error.is_empty(), || {
        format!("{} did not start: {}", r.process_id, r.error)
    })
}

async fn restart(
    client: &mut Client,
    a: RestartArgs,
    o: Output,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let what =
        a.id.clone()
            .or_else(|| a.pattern.as_ref().map(|p| format!("pattern {p}")))
            .unwrap_or_default();
    let r = client
        .restart_pattern(RestartRequest {
            process_id: a.id.unwrap_or_default(),
            pattern_name: a.pattern.unwrap_or_default(),
            grace_period_secs: a.grace.unwrap_or(0),
        })
        .await?
        .into_inner();
    print(out, o, &r, || render::restarted(&r))?;
    failed_if(!r.success, || format!("restart {what}: {}", r.error))
}

async fn logs(
    client: &mut Client,
    a: LogsArgs,
    o: Output,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    // Several instances merged: say whose each line is.
    let prefix = a.id.is_none();
    let mut stream = client
        .get_logs(GetLogsRequest {
            process_id: a.id.unwrap_or_default(),
            pattern_name: a.pattern.unwrap_or_default(),
            namespace: a.namespace.unwrap_or_default(),
            tail_lines: a.tail.unwrap_or(0),
            follow: a.follow,
        })
        .await?
        .into_inner();
    let escape = std::io::stdout().is_terminal();
    while let Some(l) = stream.message().await? {
        match o {
            Output::Json => writeln!(out, "{}", json::line(&l)?)?,
            Output::Table | Output::Wide => writeln!(
                out,
                "{}",
                render::log_line(&l, prefix, a.timestamps, escape)
            )?,
        }
        out.flush()?;
    }
    Ok(())
}

/// `watch`: prints events until the server ends the stream. A watcher
/// that fell too far behind is ended by the server with
/// RESOURCE_EXHAUSTED; it resumes from the last revision it printed, as
/// long as each stream got further than the one before.
async fn watch(
    client: &mut Client,
    a: WatchArgs,
    o: Output,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    let mut since = a.since.unwrap_or(0);
    // The revision to resume after: that of the last live event or
    // Bookmark (a Snapshot event carries the older revision it reflects).
    let mut resume = since;
    let mut header = o == Output::Json;
    loop {
        let mut stream = client
            .watch(WatchRequest {
                since_revision: since,
                process_id: a.id.clone().unwrap_or_default(),
                namespace: a.namespace.clone().unwrap_or_default(),
                pattern_name: a.pattern.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        if !header {
            writeln!(out, "{}", render::watch_header())?;
            header = true;
        }
        loop {
            match stream.message().await {
                Ok(Some(e)) => {
                    if e.reason != "Snapshot" {
                        resume = resume.max(e.revision);
                    }
                    match o {
                        Output::Json => writeln!(out, "{}", json::line(&e)?)?,
                        Output::Table | Output::Wide => {
                            if let Some(l) = render::watch_line(&e, SystemTime::now()) {
                                writeln!(out, "{l}")?;
                            }
                        }
                    }
                    out.flush()?;
                }
                Ok(None) => return Ok(()),
                Err(s) if s.code() == tonic::Code::ResourceExhausted && resume > since => {
                    eprintln!(
                        "fell behind ({}); resuming after revision {resume}",
                        s.message()
                    );
                    since = resume;
                    break;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }
}
