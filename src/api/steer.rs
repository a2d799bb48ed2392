//! RestartPattern and SignalPattern: an operator's hand on running
//! instances. A pattern-wide restart rolls: each instance is restarted once
//! the one before is healthy again, and a failure halts the rollout.

use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use tonic::{Request, Response, Status};

use super::{LauncherService, WAIT_MARGIN};
use crate::controller::Command;
use crate::proto;
use crate::reconcile::Phase;

/// A signal named as `kill` takes it: `HUP`, `SIGHUP`, `sighup` or `1`.
pub fn parse_signal(s: &str) -> Result<Signal, Status> {
    let s = s.trim();
    if s.is_empty() {
        return Err(Status::invalid_argument("signal is required (e.g. HUP)"));
    }
    let bad = || {
        Status::invalid_argument(format!(
            "unknown signal {s:?}: give a name such as HUP, SIGUSR1 or TERM, or a number"
        ))
    };
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

pub(super) async fn signal(
    svc: &LauncherService,
    request: Request<proto::SignalRequest>,
) -> Result<Response<proto::SignalResponse>, Status> {
    let actor = super::actor(&request);
    let r = request.into_inner();
    if r.process_id.is_empty() {
        return Err(Status::invalid_argument("process_id is required"));
    }
    let sig = parse_signal(&r.signal)?;
    let pid = svc
        .ask(|reply| Command::Signal {
            process_id: r.process_id,
            signal: sig,
            actor,
            reply,
        })
        .await?;
    Ok(Response::new(proto::SignalResponse {
        pid: i32::try_from(pid).unwrap_or(0),
        signal: sig.as_str().to_string(),
    }))
}

pub(super) async fn restart(
    svc: &LauncherService,
    request: Request<proto::RestartRequest>,
) -> Result<Response<proto::RestartResponse>, Status> {
    let actor = super::actor(&request);
    let within = super::gate::limits(&request);
    let r = request.into_inner();
    let grace = crate::spec::grace_from_secs(r.grace_period_secs)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let ids = match (r.process_id.is_empty(), r.pattern_name.is_empty()) {
        (false, true) => vec![r.process_id],
        (true, false) => {
            let ids: Vec<String> = svc
                .snapshot()
                .instances
                .values()
                .filter(|s| s.pattern == r.pattern_name && !s.source.is_empty())
                .filter(|s| within.as_ref().is_none_or(|l| l.admits_instance(s)))
                .map(|s| s.process_id.clone())
                .collect();
            if ids.is_empty() {
                return Err(Status::not_found(format!(
                    "no declared instance of pattern {:?}",
                    r.pattern_name
                )));
            }
            ids
        }
        (false, false) => {
            return Err(Status::invalid_argument(
                "give process_id or pattern_name, not both",
            ));
        }
        (true, true) => {
            return Err(Status::invalid_argument(
                "process_id or pattern_name is required",
            ));
        }
    };
    let mut done = Vec::new();
    for id in ids {
        if let Err(error) = restart_one(svc, &id, grace, actor.clone()).await {
            let error = if done.is_empty() {
                error
            } else {
                format!(
                    "{error}; the rollout stopped after restarting {}",
                    done.join(", ")
                )
            };
            return Ok(Response::new(proto::RestartResponse {
                process_ids: done,
                success: false,
                error,
            }));
        }
        done.push(id);
    }
    Ok(Response::new(proto::RestartResponse {
        process_ids: done,
        success: true,
        error: String::new(),
    }))
}

/// Restarts one instance and waits until it is healthy again; the error
/// says why it is not. A refusal of the controller (unknown instance, a
/// launcher shutting down) is an error too.
async fn restart_one(
    svc: &LauncherService,
    id: &str,
    grace: Option<Duration>,
    actor: String,
) -> Result<(), String> {
    let before = svc.snapshot();
    let failed_before = before.instances.get(id).map_or(0, |s| s.failed_starts);
    let old = svc
        .ask(|reply| Command::Restart {
            process_id: id.to_string(),
            grace,
            actor,
            reply,
        })
        .await
        .map_err(|s| s.message().to_string())?;
    let plan = svc.handle.plan;
    let timeout = grace.unwrap_or(plan.default_grace) + plan.startup_timeout + WAIT_MARGIN;
    let snap = svc
        .wait(timeout, |s| {
            s.instances.get(id).is_none_or(|i| {
                (i.pid.is_some() && i.pid != old && i.healthy)
                    || i.phase == Phase::Failed
                    || i.failed_starts > failed_before
            })
        })
        .await;
    match snap.instances.get(id) {
        None => Err(format!("{id} was removed during its restart")),
        Some(i) if i.pid.is_some() && i.pid != old && i.healthy => Ok(()),
        Some(i) if i.phase == Phase::Failed || i.failed_starts > failed_before => {
            Err(format!("{id} did not come back healthy: {}", i.last_error))
        }
        Some(i) => Err(format!(
            "{id} is not healthy again after {timeout:?} ({:?}, pid {:?})",
            i.phase, i.pid
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_as_kill_names_them() {
        for s in ["HUP", "SIGHUP", "hup", "1", " SIGhup "] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGHUP, "{s}");
        }
        assert_eq!(parse_signal("USR1").unwrap(), Signal::SIGUSR1);
        for s in ["", "NOPE", "SIG", "999", "-1"] {
            let e = parse_signal(s).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{s}");
        }
    }
}
