//! The Unix socket of `--unix-socket`: bound with mode 0660 and the group
//! of `--socket-group` before it appears at its path (bound under a
//! temporary name, then renamed into place), so that no one outside the
//! owner and the group can connect even for a moment; a stale socket left
//! by a dead launcher is replaced, a live one (something answers on it) is
//! refused; removed again when the launcher stops, unless another process
//! has put its own socket there since.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// The mode of the socket: owner and group may connect.
pub const SOCKET_MODE: u32 = 0o660;

/// Why the Unix socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    /// `--socket-group` names no group.
    #[error("--socket-group {0}: no such group")]
    NoGroup(String),
    /// The group database could not be read.
    #[error("--socket-group {name}: cannot look the group up: {cause}")]
    GroupLookup {
        /// The name given.
        name: String,
        /// OS error (in the message, so that the error stays one line).
        cause: nix::Error,
    },
    /// Another process answers on the path.
    #[error(
        "--unix-socket {}: another process is serving on it (another launcher?); stop it or choose another path",
        .0.display()
    )]
    Live(PathBuf),
    /// The path holds something that is not a socket.
    #[error("--unix-socket {}: the path exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    /// An operation on the path failed.
    #[error("--unix-socket {}: cannot {what}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// OS error (in the message, so that the error stays one line).
        cause: io::Error,
    },
}

/// The group id of `--socket-group`: a number, or a group's name.
pub fn resolve_group(name: &str) -> Result<u32, UnixSocketError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(UnixSocketError::NoGroup(name.to_string())),
        Err(cause) => Err(UnixSocketError::GroupLookup {
            name: name.to_string(),
            cause,
        }),
    }
}

/// The socket file, removed when dropped if it is still the one this
/// launcher bound (same device and inode).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!("cannot remove the socket {}: {e}", self.path.display());
        }
    }
}

/// What is at `path` now.
fn check_existing(path: &Path) -> Result<(), UnixSocketError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(cause) => {
            return Err(UnixSocketError::Io {
                path: path.to_path_buf(),
                what: "inspect the path",
                cause,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(UnixSocketError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixSocketError::Live(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(
                "replacing the stale socket {} (nothing answers on it)",
                path.display()
            );
            Ok(())
        }
        Err(cause) => Err(UnixSocketError::Io {
            path: path.to_path_buf(),
            what: "check whether something answers on the existing socket",
            cause,
        }),
    }
}

/// Binds the socket at `path` with mode [`SOCKET_MODE`] and group `gid`
/// (the launcher's own when None). Must run inside a tokio runtime.
pub fn bind(path: &Path, gid: Option<u32>) -> Result<(UnixListener, SocketFile), UnixSocketError> {
    let io_err = |what, cause| UnixSocketError::Io {
        path: path.to_path_buf(),
        what,
        cause,
    };
    check_existing(path)?;
    if path.file_name().is_none() {
        return Err(io_err("use it", io::Error::other("it names no file")));
    }
    // Short, so that a path that fits sun_path's 108 bytes mostly still
    // does with it; unique per launcher process.
    let tmp = path.with_file_name(format!(".{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| io_err("bind", e))?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| io_err("set its mode", e))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .map_err(|e| io_err("set its group", e))?;
        }
        std::fs::rename(&tmp, path).map_err(|e| io_err("move it into place", e))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err("inspect it", e))?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            id: (meta.dev(), meta.ino()),
        })
    })();
    match placed {
        Ok(file) => Ok((listener, file)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn groups_are_numbers_or_names() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("4242").unwrap(), 4242);
        assert_eq!(resolve_group("root").unwrap(), 0);
        let e = resolve_group("no-such-group-here").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--socket-group no-such-group-here: no such group"
        );
    }

    #[tokio::test]
    async fn the_socket_has_mode_0660_and_the_group_and_is_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind(&path, Some(4242)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, SOCKET_MODE);
        assert_eq!(meta.gid(), 4242);
        assert_eq!(file.path(), path);
        // Nothing else was left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let cred = server.peer_cred().unwrap();
        assert_eq!(cred.pid(), Some(std::process::id() as i32));
        drop((client, server, listener));
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // Stale: bound, then its listener closed (its process died).
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (live, file) = bind(&path, None).expect("the stale socket is replaced");
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, UnixSocketError::Live(_)), "{e}");
        assert!(
            e.to_string().contains("another process is serving on it"),
            "{e}"
        );
        // The refusal left the live socket alone.
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
        drop(live);
        drop(file);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, UnixSocketError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }

    #[tokio::test]
    async fn a_socket_that_another_process_put_in_place_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let (listener, file) = bind(&path, None).unwrap();
        drop(listener);
        // A newer launcher replaced the (now stale) socket. (The old one is
        // moved aside, not removed, so that its inode cannot be reused.)
        std::fs::rename(&path, dir.path().join("old.sock")).unwrap();
        let _newer = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists(), "the newer socket stays");
    }
}
