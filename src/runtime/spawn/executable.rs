//! The check, before a launch is accepted, that a pattern's executable
//! can be run at all: it exists, is a regular file, has an execute bit.
//! Runs nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Why a pattern's executable cannot be run, found without running it.
#[derive(Debug, thiserror::Error)]
pub enum ExecutableError {
    /// It cannot be looked at (missing, or a directory on its path is not
    /// searchable).
    #[error("{path}: {source}")]
    Unreadable {
        /// The executable.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is a directory, a device, a socket...
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The executable.
        path: PathBuf,
    },
    /// No execute bit is set.
    #[error("{path}: not executable (mode {mode:o})")]
    NotExecutable {
        /// The executable.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Checks that `path` is an executable file, without running it.
pub fn check_executable(path: &Path) -> Result<(), ExecutableError> {
    let path_buf = || path.to_path_buf();
    let meta = std::fs::metadata(path).map_err(|source| ExecutableError::Unreadable {
        path: path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(ExecutableError::NotAFile { path: path_buf() });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o111 == 0 {
        return Err(ExecutableError::NotExecutable {
            path: path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_the_path_and_what_is_wrong() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = check_executable(&missing).unwrap_err();
        assert!(
            matches!(&e, ExecutableError::Unreadable { path, source }
                if path == &missing && source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{}: No such file or directory (os error 2)",
                missing.display()
            )
        );

        let e = check_executable(t.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: not a regular file", t.path().display())
        );

        let plain = t.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_executable(&plain).unwrap_err();
        assert!(
            matches!(e, ExecutableError::NotExecutable { mode: 0o640, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("{}: not executable (mode 640)", plain.display())
        );

        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert!(check_executable(&plain).is_ok());
    }
}
