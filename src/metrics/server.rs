//! The metrics listener: plain HTTP/1.1 on a port of its own
//! (`--metrics-port`), serving `GET /metrics` (Prometheus), `/healthz`
//! (the process and its reconcile loop are alive) and `/readyz` (the first
//! full sync is done).
//!
//! It shares the API's address, so it is bounded like it: at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once), no keep-alive,
//! request headers within [`HEADER_TIMEOUT`], a whole connection within
//! [`CONNECTION_TIMEOUT`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::{CONTENT_TYPE as METRICS_TYPE, Metrics, PROMETHEUS_CONTENT_TYPE, prometheus_text};
use crate::api::STALL_AFTER;
use crate::controller::ControllerHandle;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, metrics: Metrics, handle: ControllerHandle) -> JoinHandle<()> {
    tokio::spawn(serve(listener, metrics, handle))
}

async fn serve(listener: TcpListener, metrics: Metrics, handle: ControllerHandle) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, mostly: wait a moment, do not spin.
                tracing::warn!("metrics listener: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let metrics = metrics.clone();
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let reply = answer(
                    req.method(),
                    req.uri().path(),
                    wants_openmetrics(req.headers()),
                    &metrics,
                    &handle,
                );
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Whether the client asks for OpenMetrics (Prometheus does); others get
/// the older text format every tool reads.
fn wants_openmetrics(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(hyper::header::ACCEPT).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.contains("application/openmetrics-text"))
    })
}

/// The answer to one request.
fn answer(
    method: &Method,
    path: &str,
    openmetrics: bool,
    metrics: &Metrics,
    handle: &ControllerHandle,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let snap = handle.snapshots.borrow().clone();
    match path {
        "/metrics" => match metrics.encode(&snap) {
            Ok(body) => {
                let (body, kind) = if openmetrics {
                    (body, METRICS_TYPE)
                } else {
                    (prometheus_text(&body), PROMETHEUS_CONTENT_TYPE)
                };
                let mut r = text(StatusCode::OK, body);
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
                r
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode the metrics: {e}\n"),
            ),
        },
        "/healthz" => {
            let age = handle.loop_age();
            if snap.synced && age > STALL_AFTER {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the reconcile loop has not run for {age:?}\n"),
                )
            } else {
                text(StatusCode::OK, "ok\n")
            }
        }
        "/readyz" => {
            if snap.synced {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the first sync of desired/ and adoption are not done\n",
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    use http_body_util::BodyExt;
    use tokio::sync::{mpsc, watch};

    use super::*;
    use crate::controller::snapshot::Snapshot;

    /// A handle whose loop last ran `loop_age` ago, publishing `snap`.
    fn handle(snap: Snapshot, loop_age: Duration) -> ControllerHandle {
        let (commands, _) = mpsc::channel(1);
        let (_, snapshots) = watch::channel(Arc::new(snap));
        let started = Instant::now()
            .checked_sub(loop_age)
            .expect("an instant far enough from boot");
        ControllerHandle {
            commands,
            snapshots,
            heartbeat: Arc::new(AtomicU64::new(0)),
            started,
            plan: crate::reconcile::PlanConfig::default(),
            events: crate::events::EventLog::in_memory(),
        }
    }

    fn synced(on: bool) -> Snapshot {
        Snapshot {
            synced: on,
            ..Snapshot::default()
        }
    }

    async fn call(
        path: &str,
        openmetrics: bool,
        h: &ControllerHandle,
    ) -> (StatusCode, String, String) {
        let r = answer(&Method::GET, path, openmetrics, &Metrics::new(), h);
        let status = r.status();
        let kind = r.headers()[CONTENT_TYPE]
            .to_str()
            .expect("type")
            .to_string();
        let body = r.into_body().collect().await.expect("body").to_bytes();
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn readyz_waits_for_the_first_sync() {
        let (code, _, body) = call("/readyz", false, &handle(synced(false), Duration::ZERO)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (code, _, body) = call("/readyz", false, &handle(synced(true), Duration::ZERO)).await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "ready\n"));
    }

    #[tokio::test]
    async fn healthz_fails_once_a_synced_loop_stalls() {
        let stalled = STALL_AFTER + Duration::from_secs(5);
        let (code, _, body) = call("/healthz", false, &handle(synced(true), stalled)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("reconcile loop"), "{body}");
        // Before the first sync the loop has not started: not a stall.
        let (code, _, _) = call("/healthz", false, &handle(synced(false), stalled)).await;
        assert_eq!(code, StatusCode::OK);
        let (code, _, _) = call("/healthz", false, &handle(synced(true), Duration::ZERO)).await;
        assert_eq!(code, StatusCode::OK);
    }

    #[tokio::test]
    async fn metrics_come_as_openmetrics_when_asked_else_as_prometheus_text() {
        let h = handle(synced(true), Duration::ZERO);
        let (code, kind, body) = call("/metrics", true, &h).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(kind, METRICS_TYPE);
        assert!(body.ends_with("# EOF\n"), "{body}");
        let (code, kind, body) = call("/metrics", false, &h).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(kind, PROMETHEUS_CONTENT_TYPE);
        assert!(
            body.contains("# TYPE prism_probe_failures_total counter"),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
    }

    #[tokio::test]
    async fn other_paths_and_methods_are_refused() {
        let h = handle(synced(true), Duration::ZERO);
        assert_eq!(call("/", false, &h).await.0, StatusCode::NOT_FOUND);
        let r = answer(&Method::POST, "/metrics", false, &Metrics::new(), &h);
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_accept_header_chooses_openmetrics() {
        let mut h = hyper::HeaderMap::new();
        assert!(!wants_openmetrics(&h));
        h.insert(
            hyper::header::ACCEPT,
            HeaderValue::from_static("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
        );
        assert!(wants_openmetrics(&h));
    }
}
