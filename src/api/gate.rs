//! The gate every call passes before [`LauncherService`]: it takes the
//! caller's identity (the transport's, [`identity`]), holds mutating calls
//! to the caller's rate limit, asks the authorization in force
//! ([`crate::authz`]) whether the caller may make the call on what it
//! names, and puts the [`Grant`] in the request: the service filters what
//! it returns by its limits ([`limits`]).
//!
//! Each mutating call leaves an audit line in the launcher's log (target
//! `audit`): who, which call, on what, and the outcome. Calls refused by
//! the rate limit are logged at debug level only, so that a flood does not
//! flood the log.
//!
//! The service trusts the gate: served without it, it answers every caller
//! as an admin.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::identity::{Identity, identity};
use super::{LauncherService, convert, logs, watch};
use crate::authz::rate::key_of;
use crate::authz::{Authz, Grant, Limits, RateLimit, Refusal, Target, Verb};
use crate::proto;
use crate::proto::pattern_launcher_server::PatternLauncher;
use crate::spec::Isolation;

/// The service behind its gate.
#[derive(Clone)]
pub struct Gate {
    inner: LauncherService,
    authz: Authz,
    rate: Option<Arc<RateLimit>>,
}

/// The limits the gate granted the caller of `request`; `None` when it may
/// see everything.
pub fn limits<T>(request: &Request<T>) -> Option<Arc<Limits>> {
    request
        .extensions()
        .get::<Grant>()
        .and_then(|g| g.limits.clone())
}

fn refused(r: Refusal) -> Status {
    match r {
        Refusal::Unauthenticated(m) => Status::unauthenticated(m),
        Refusal::Denied(m) => Status::permission_denied(m),
    }
}

/// RESOURCE_EXHAUSTED with when to try again: in the message, and as
/// `retry-after` (whole seconds, rounded up, as HTTP has it) and
/// `retry-after-ms` metadata.
fn exhausted(who: &str, rate: &RateLimit, wait: Duration) -> Status {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut st = Status::resource_exhausted(format!(
        "{who} is over its rate limit of {} mutating calls a second (bursts of {}): retry after {ms} ms",
        rate.per_second(),
        rate.burst()
    ));
    let secs = ms.div_ceil(1000);
    st.metadata_mut()
        .insert("retry-after", MetadataValue::from(secs));
    st.metadata_mut()
        .insert("retry-after-ms", MetadataValue::from(ms));
    st
}

/// The audit line of a mutating call: who, which call, on what, and the
/// outcome's code (the caller has the message; what went wrong is logged
/// where it went wrong). Everything a caller wrote is quoted (`{:?}`), so
/// that no line break or escape sequence reaches the log.
fn audit<R>(who: &str, method: &str, what: &str, result: &Result<R, Status>) {
    let who = who.escape_debug();
    match result {
        Ok(_) => tracing::info!(target: "audit", "{who} {method} {what}: OK"),
        Err(s) => tracing::info!(target: "audit", "{who} {method} {what}: {:?}", s.code()),
    }
}

/// An instance named by id, or (an empty id, which the service refuses as
/// an invalid argument) nothing.
fn by_id(process_id: &str) -> Target<'_> {
    if process_id.is_empty() {
        Target::Within {
            namespace: "",
            pattern: "",
        }
    } else {
        Target::Id(process_id)
    }
}

impl Gate {
    /// The service behind a gate deciding by `authz`, without a rate limit.
    pub fn new(inner: LauncherService, authz: Authz) -> Self {
        Gate {
            inner,
            authz,
            rate: None,
        }
    }

    /// Holds each caller to `rate` on mutating calls.
    #[must_use]
    pub fn rate_limit(mut self, rate: Option<RateLimit>) -> Self {
        self.rate = rate.map(Arc::new);
        self
    }

    /// Whether the caller may make the call on what `check` says it
    /// names; on success the grant goes into the request.
    fn admit<T>(
        &self,
        request: &mut Request<T>,
        id: &Identity,
        verb: Verb,
        check: impl FnOnce(&Grant, &T) -> Result<(), Refusal>,
    ) -> Result<(), Status> {
        let grant = self.authz.state().mode.grant(id, verb).map_err(refused)?;
        check(&grant, request.get_ref()).map_err(refused)?;
        request.extensions_mut().insert(grant);
        Ok(())
    }

    async fn reading<T, R, Fut>(
        &self,
        mut request: Request<T>,
        check: impl FnOnce(&Grant, &T) -> Result<(), Refusal>,
        call: impl FnOnce(Request<T>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let id = identity(&request);
        self.admit(&mut request, &id, Verb::Read, check)?;
        call(request).await
    }

    async fn mutating<T, R, Fut>(
        &self,
        (method, verb, what): (&str, Verb, String),
        mut request: Request<T>,
        check: impl FnOnce(&Grant, &T) -> Result<(), Refusal>,
        call: impl FnOnce(Request<T>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let id = identity(&request);
        let who = id.to_string();
        if let Some(rate) = &self.rate
            && let Err(wait) = rate.check(&key_of(&id))
        {
            tracing::debug!(
                target: "audit",
                "{} {method} {what}: refused by the rate limit",
                who.escape_debug()
            );
            return Err(exhausted(&who, rate, wait));
        }
        let result = match self.admit(&mut request, &id, verb, check) {
            Ok(()) => call(request).await,
            Err(e) => Err(e),
        };
        audit(&who, method, &what, &result);
        result
    }
}

/// A merged GetLogs of a limited caller, narrowed to what the logs code
/// selects by equality: a caller with one namespace (or pattern) gets it
/// filled in; one with several must name one.
fn narrow_logs(grant: &Grant, r: &mut proto::GetLogsRequest) -> Result<(), Status> {
    let Some(limits) = &grant.limits else {
        return Ok(());
    };
    if !r.process_id.is_empty() {
        return Ok(());
    }
    let fill = |field: &mut String, allowed: &Option<std::collections::BTreeSet<String>>, what| {
        let Some(allowed) = allowed else {
            return Ok(());
        };
        if !field.is_empty() {
            return Ok(());
        }
        match allowed.iter().collect::<Vec<_>>().as_slice() {
            [only] => {
                field.clone_from(only);
                Ok(())
            }
            _ => Err(Status::permission_denied(format!(
                "{} ({}) may not read the logs of every {what}: name one of its {limits}",
                grant.who, grant.role
            ))),
        }
    };
    fill(&mut r.namespace, &limits.namespaces, "namespace")?;
    fill(&mut r.pattern_name, &limits.patterns, "pattern")
}

#[tonic::async_trait]
impl PatternLauncher for Gate {
    async fn launch_pattern(
        &self,
        request: Request<proto::LaunchRequest>,
    ) -> Result<Response<proto::LaunchResponse>, Status> {
        let r = request.get_ref();
        let isolation = convert::isolation_from_wire(r.isolation).ok().flatten();
        let what = format!(
            "pattern={:?} isolation={} namespace={:?} session_id={:?}",
            r.pattern_name,
            isolation.map_or_else(|| "manifest".to_string(), |i| i.to_string()),
            r.namespace,
            r.session_id
        );
        let call = ("LaunchPattern", Verb::Launch, what);
        let check = |g: &Grant, r: &proto::LaunchRequest| {
            // A pattern it may not use is one the controller does not find.
            g.check(&Target::Within {
                namespace: &r.namespace,
                pattern: "",
            })?;
            // The rest (the manifest's isolation, a session's default
            // namespace) once the controller has resolved the key.
            match isolation {
                Some(Isolation::None) => g.check(&Target::Instance {
                    isolation: Isolation::None,
                    namespace: "",
                    pattern: &r.pattern_name,
                }),
                _ => Ok(()),
            }
        };
        self.mutating(call, request, check, |r| self.inner.launch_pattern(r))
            .await
    }

    async fn list_patterns(
        &self,
        request: Request<proto::ListPatternsRequest>,
    ) -> Result<Response<proto::ListPatternsResponse>, Status> {
        let check = |g: &Grant, r: &proto::ListPatternsRequest| {
            g.check(&Target::Within {
                namespace: &r.namespace,
                pattern: &r.pattern_name,
            })
        };
        self.reading(request, check, |r| self.inner.list_patterns(r))
            .await
    }

    async fn terminate_pattern(
        &self,
        request: Request<proto::TerminateRequest>,
    ) -> Result<Response<proto::TerminateResponse>, Status> {
        let r = request.get_ref();
        let what = format!("process_id={:?} force={}", r.process_id, r.force);
        let call = ("TerminatePattern", Verb::Terminate, what);
        let check = |g: &Grant, r: &proto::TerminateRequest| g.check(&by_id(&r.process_id));
        self.mutating(call, request, check, |r| self.inner.terminate_pattern(r))
            .await
    }

    async fn health(
        &self,
        request: Request<proto::HealthRequest>,
    ) -> Result<Response<proto::HealthResponse>, Status> {
        self.reading(request, |_, _| Ok(()), |r| self.inner.health(r))
            .await
    }

    async fn get_process_status(
        &self,
        request: Request<proto::GetProcessStatusRequest>,
    ) -> Result<Response<proto::GetProcessStatusResponse>, Status> {
        let check = |g: &Grant, r: &proto::GetProcessStatusRequest| g.check(&by_id(&r.process_id));
        self.reading(request, check, |r| self.inner.get_process_status(r))
            .await
    }

    async fn list_sources(
        &self,
        request: Request<proto::ListSourcesRequest>,
    ) -> Result<Response<proto::ListSourcesResponse>, Status> {
        self.reading(request, |_, _| Ok(()), |r| self.inner.list_sources(r))
            .await
    }

    type WatchStream = watch::EventStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let check = |g: &Grant, r: &proto::WatchRequest| {
            g.check(&by_id(&r.process_id))?;
            g.check(&Target::Within {
                namespace: &r.namespace,
                pattern: &r.pattern_name,
            })
        };
        self.reading(request, check, |r| self.inner.watch(r)).await
    }

    type GetLogsStream = logs::LogStream;

    async fn get_logs(
        &self,
        mut request: Request<proto::GetLogsRequest>,
    ) -> Result<Response<Self::GetLogsStream>, Status> {
        let id = identity(&request);
        let check = |g: &Grant, r: &proto::GetLogsRequest| {
            g.check(&by_id(&r.process_id))?;
            g.check(&Target::Within {
                namespace: &r.namespace,
                pattern: &r.pattern_name,
            })
        };
        self.admit(&mut request, &id, Verb::Read, check)?;
        if let Some(grant) = request.extensions().get::<Grant>().cloned() {
            narrow_logs(&grant, request.get_mut())?;
        }
        self.inner.get_logs(request).await
    }

    async fn describe(
        &self,
        request: Request<proto::DescribeRequest>,
    ) -> Result<Response<proto::DescribeResponse>, Status> {
        let check = |g: &Grant, r: &proto::DescribeRequest| g.check(&by_id(&r.process_id));
        self.reading(request, check, |r| self.inner.describe(r))
            .await
    }

    async fn restart_pattern(
        &self,
        request: Request<proto::RestartRequest>,
    ) -> Result<Response<proto::RestartResponse>, Status> {
        let r = request.get_ref();
        let what = format!("process_id={:?} pattern={:?}", r.process_id, r.pattern_name);
        let call = ("RestartPattern", Verb::Restart, what);
        let check = |g: &Grant, r: &proto::RestartRequest| {
            g.check(&by_id(&r.process_id))?;
            g.check(&Target::Within {
                namespace: "",
                pattern: &r.pattern_name,
            })
        };
        self.mutating(call, request, check, |r| self.inner.restart_pattern(r))
            .await
    }

    async fn signal_pattern(
        &self,
        request: Request<proto::SignalRequest>,
    ) -> Result<Response<proto::SignalResponse>, Status> {
        let r = request.get_ref();
        let what = format!("process_id={:?} signal={:?}", r.process_id, r.signal);
        let call = ("SignalPattern", Verb::Signal, what);
        let check = |g: &Grant, r: &proto::SignalRequest| g.check(&by_id(&r.process_id));
        self.mutating(call, request, check, |r| self.inner.signal_pattern(r))
            .await
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
