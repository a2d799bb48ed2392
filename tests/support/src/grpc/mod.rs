//! The launcher's gRPC API as the tests call it: through the project's own
//! tonic client, with requests and replies in grpcurl's JSON ([`json`]) and
//! errors named as grpcurl names them ([`GrpcError`]), so a test reads the
//! same either way. [`GrpcClient`] is the one connection of a test's
//! launcher (over TCP or the launcher's Unix socket, [`Target`]);
//! [`grpc_call`] a call on a connection of its own; [`probe`] the
//! readiness check; [`logs`] the streams of GetLogs. [`grpcurl`] runs
//! the real grpcurl, for the tests that check what a user types.

pub mod api;
pub mod grpcurl;
pub mod json;
pub mod logs;
pub mod watch;

use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use prism_launcher::proto::pattern_launcher_client::PatternLauncherClient;
use serde_json::Value;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint, Uri};

/// The gRPC service.
pub const SERVICE: &str = "prism.launcher.PatternLauncher";

/// Longest a call may take (grpcurl's `-max-time 120` of old).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest a connection may take to open (grpcurl's default).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the readiness probe waits for the server to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A gRPC error as grpcurl reports it (`Code: NotFound`, `Message: ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcError {
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for GrpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// The name grpc-go (and so grpcurl) prints for `code`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

impl From<tonic::Status> for GrpcError {
    fn from(s: tonic::Status) -> GrpcError {
        GrpcError {
            code: code_name(s.code()).to_string(),
            // grpcurl prints the message on a line of its own, trimmed.
            message: s.message().trim().to_string(),
        }
    }
}

fn deadline_exceeded(after: Duration) -> GrpcError {
    GrpcError {
        code: "DeadlineExceeded".into(),
        message: format!("no answer within {after:?}"),
    }
}

fn unavailable(what: impl std::fmt::Display) -> GrpcError {
    GrpcError {
        code: "Unavailable".into(),
        message: what.to_string(),
    }
}

/// Calls `method` of [`SERVICE`] with the grpcurl-JSON `request`; the reply
/// in grpcurl's JSON. Panics on a method the kit does not know or a request
/// that is not valid JSON for it (a mistake in the test, not an answer).
pub async fn invoke(
    client: &mut PatternLauncherClient<Channel>,
    method: &str,
    request: &Value,
) -> Result<Value, GrpcError> {
    let reply = match method {
        "LaunchPattern" => {
            let r =
                json::launch_request(request).unwrap_or_else(|e| bad_request(method, request, &e));
            json::launch_response(client.launch_pattern(r).await?.get_ref())
        }
        "ListPatterns" => {
            let r = json::list_patterns_request(request)
                .unwrap_or_else(|e| bad_request(method, request, &e));
            json::list_patterns_response(client.list_patterns(r).await?.get_ref())
        }
        "TerminatePattern" => {
            let r = json::terminate_request(request)
                .unwrap_or_else(|e| bad_request(method, request, &e));
            json::terminate_response(client.terminate_pattern(r).await?.get_ref())
        }
        "Health" => {
            let r =
                json::health_request(request).unwrap_or_else(|e| bad_request(method, request, &e));
            json::health_response(client.health(r).await?.get_ref())
        }
        "GetProcessStatus" => {
            let r = json::get_process_status_request(request)
                .unwrap_or_else(|e| bad_request(method, request, &e));
            json::get_process_status_response(client.get_process_status(r).await?.get_ref())
        }
        "ListSources" => {
            json::list_sources_request(request)
                .unwrap_or_else(|e| bad_request(method, request, &e));
            let r = prism_launcher::proto::ListSourcesRequest {};
            json::list_sources_response(client.list_sources(r).await?.get_ref())
        }
        other => panic!("the test kit does not know the method {SERVICE}/{other}"),
    };
    Ok(reply)
}

fn bad_request<T>(method: &str, request: &Value, e: &str) -> T {
    panic!("{method}: the request is not valid: {e}: {request}")
}

fn endpoint(port: u16) -> Endpoint {
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URI")
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
}

/// Where a test's calls go: the TCP port on 127.0.0.1, or the launcher's
/// Unix socket (`--unix-socket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// 127.0.0.1:port.
    Tcp(u16),
    /// A Unix socket.
    Unix(PathBuf),
}

/// A channel to `target`, connected at the first call.
pub fn lazy_channel(target: &Target) -> Channel {
    match target {
        Target::Tcp(port) => endpoint(*port).connect_lazy(),
        Target::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://localhost")
                .connect_timeout(CONNECT_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(s))
                    }
                }))
        }
    }
}

/// The gRPC client of one launcher: a tokio runtime of its own (one
/// worker, which keeps the connection alive between calls: it answers the
/// server's keepalive pings) and one HTTP/2 connection, opened at the first
/// call and shared by every thread of the test. [`GrpcClient::reconnect`]
/// drops it (the launcher restarted); the next call opens a new one.
pub struct GrpcClient {
    target: Target,
    rt: Runtime,
    client: Mutex<Option<PatternLauncherClient<Channel>>>,
}

impl GrpcClient {
    /// A client of `127.0.0.1:port`; nothing is connected yet.
    pub fn new(port: u16) -> GrpcClient {
        GrpcClient::of(Target::Tcp(port))
    }

    /// A client of `target`; nothing is connected yet.
    pub fn of(target: Target) -> GrpcClient {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit-grpc")
            .enable_all()
            .build()
            .expect("a tokio runtime for the gRPC client");
        GrpcClient {
            target,
            rt,
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> PatternLauncherClient<Channel> {
        let mut slot = self.client.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert_with(|| {
            let _in_runtime = self.rt.enter();
            PatternLauncherClient::new(lazy_channel(&self.target))
        })
        .clone()
    }

    /// Forgets the connection; the next call opens a new one.
    pub fn reconnect(&self) {
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// [`invoke`] on this client, within 120 s.
    pub fn call(&self, method: &str, request: &Value) -> Result<Value, GrpcError> {
        let mut client = self.client();
        self.rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, invoke(&mut client, method, request))
                .await
                .unwrap_or_else(|_| Err(deadline_exceeded(CALL_TIMEOUT)))
        })
    }
}

/// One call on a connection of its own (as a grpcurl process made), within
/// 120 s.
pub fn grpc_call(port: u16, method: &str, request: &Value) -> Result<Value, GrpcError> {
    grpc_call_within(port, method, request, CALL_TIMEOUT)
}

/// [`grpc_call`] within `max_time`, the connection included.
pub fn grpc_call_within(
    port: u16,
    method: &str,
    request: &Value,
    max_time: Duration,
) -> Result<Value, GrpcError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let call = async {
            let channel = endpoint(port)
                .connect()
                .await
                .map_err(|e| unavailable(format!("cannot connect to 127.0.0.1:{port}: {e}")))?;
            invoke(&mut PatternLauncherClient::new(channel), method, request).await
        };
        tokio::time::timeout(max_time, call)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded(max_time)))
    })
}

/// The readiness check on the Unix socket at `path`: `Health` on a
/// connection of its own.
pub fn probe_unix(path: &std::path::Path, max_time: Duration) -> Result<Value, GrpcError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let call = async {
            let channel = lazy_channel(&Target::Unix(path.to_path_buf()));
            invoke(
                &mut PatternLauncherClient::new(channel),
                "Health",
                &serde_json::json!({}),
            )
            .await
        };
        tokio::time::timeout(max_time, call)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded(max_time)))
    })
}

/// The readiness check: `Health` on a connection of its own, which it then
/// closes and waits (up to 5 s) for the server to close too, so that the
/// probe no longer holds one of the launcher's `--max-connections` places
/// when the test starts.
pub fn probe(port: u16, max_time: Duration) -> Result<Value, GrpcError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, max_time)
        .map_err(|e| unavailable(format!("cannot connect to {addr}: {e}")))?;
    // A second descriptor of the socket, kept when tonic drops its own, to
    // close our side and then see the server close its side.
    let witness = stream.try_clone().map_err(unavailable)?;
    stream.set_nodelay(true).map_err(unavailable)?;
    stream.set_nonblocking(true).map_err(unavailable)?;
    let slot = Arc::new(Mutex::new(Some(stream)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let reply = rt.block_on(async {
        let connector = tower::service_fn(move |_: Uri| {
            let stream = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            async move {
                let stream =
                    stream.ok_or_else(|| std::io::Error::other("probe connection used"))?;
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::TcpStream::from_std(stream)?))
            }
        });
        let call = async {
            let channel = endpoint(port)
                .connect_with_connector(connector)
                .await
                .map_err(unavailable)?;
            invoke(
                &mut PatternLauncherClient::new(channel),
                "Health",
                &serde_json::json!({}),
            )
            .await
        };
        tokio::time::timeout(max_time, call)
            .await
            .unwrap_or_else(|_| Err(deadline_exceeded(max_time)))
    });
    // Dropping the runtime drops the connection and tonic's descriptor.
    drop(rt);
    // The descriptors share O_NONBLOCK: the wait below blocks (bounded).
    let _ = witness.set_nonblocking(false);
    let _ = witness.shutdown(Shutdown::Write);
    let _ = witness.set_read_timeout(Some(CLOSE_WAIT));
    let mut buf = [0u8; 4096];
    while let Ok(n) = (&witness).read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    reply
}
