//! Test support of prism-launcher, shared by the integration tests
//! (`tests/*.rs`, through `tests/common/mod.rs`), the benches and
//! `tests/bench_smoke.rs`: one copy of the harness instead of one per
//! includer.
//!
//! The integration tests run the real `prism-launcher` binary in a temp
//! dir, on ports of their own ([`TestEnv`]), and call it through the
//! project's tonic client with grpcurl's JSON ([`GrpcClient`]); the tests
//! of what a user types use the real grpcurl ([`grpcurl_call`],
//! [`Grpcurl`], also as another user). Everything a test
//! or bench starts carries a token in its environment and is killed by pid
//! at the end, never by name.
//!
//! - [`bins`]: where cargo put the binaries;
//! - [`wait`]: waiting on conditions (never on the clock);
//! - [`procs`]: `/proc`, the token scan, signals, a test's own processes;
//! - [`cgroup`]: cgroup directories and the orphan-sweep witness;
//! - [`ports`]: port blocks held through lock files;
//! - [`files`], [`http`]: file and HTTP helpers;
//! - [`ctl`]: `prism-launcher ctl` run as a user runs it;
//! - [`grpc`]: the tonic client, grpcurl's JSON, GetLogs streams, the real
//!   grpcurl;
//! - [`pki`]: certificates made with `openssl` for TLS and mTLS;
//! - [`manifest`]: pattern manifests and desired-state documents;
//! - [`launcher`]: the launcher process;
//! - [`env`]: a test's world and its calls;
//! - [`lifecycle`]: the scenarios of the `lifecycle` and `planner` benches.

pub mod bins;
pub mod cgroup;
pub mod ctl;
pub mod env;
pub mod files;
pub mod grpc;
pub mod http;
pub mod launcher;
pub mod lifecycle;
pub mod manifest;
pub mod pki;
pub mod ports;
pub mod procs;
pub mod wait;

pub use prism_launcher::proto;

pub use cgroup::{cgroup_dir, cgroup_file, wait_orphan_sweeps};
pub use ctl::{CtlRun, CtlStream, ctl, ctl_command, run as run_ctl};
pub use env::{TestEnv, TestEnvBuilder, is_running, listed_pids, source_ids};
pub use files::{
    count_lines, file_len, read_lossy, tail, write_atomic, write_atomic_mode, write_file_mode,
};
pub use grpc::api::{Api, info_running};
pub use grpc::grpcurl::{
    GRPCURL_MAX_TIME, Grpcurl, UNIX_FLAGS, grpcurl, grpcurl_call, grpcurl_lists_service,
    output_text,
};
pub use grpc::json::{jbool, jint, jstr, mentions_number};
pub use grpc::logs::{LogItem, LogStream, get_logs};
pub use grpc::{GrpcClient, GrpcError, SERVICE, grpc_call, grpc_call_within};
pub use http::{http_get, http_get_with, http_ok};
pub use launcher::Launcher;
pub use manifest::{PatternSpec, desired_doc, desired_stream, with_token_env};
pub use pki::Pki;
pub use ports::{PortBlock, port_free};
pub use procs::{
    OwnProcesses, TEST_TOKEN_VAR, clk_tck, cpu_ticks, environ, environ_var, kill_token_processes,
    kill_token_processes_of, pid_alive, proc_state, session_of, signal, start_time, stat_fields,
    stat_num, status_kb, thread_ticks, token_pids, token_pids_of, try_signal,
};
pub use wait::{
    POLL, READY_TIMEOUT, STOP_TIMEOUT, WAIT, holds_for, wait_for, wait_for_every, wait_until,
    wait_until_every,
};
