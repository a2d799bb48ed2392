//! Three low descriptors reserved at start-up, through which a new process
//! gets its stdin, stdout and stderr, so that it never copies (then closes)
//! the launcher's descriptor table.
//!
//! A launcher with a thousand instances holds two thousand descriptors (a
//! pidfd and a log file each). A child cloned with its own copy of the
//! table pays for every one of them twice: the copy at the clone, and a
//! close (with its flush) of each before the exec. Instead the child is
//! cloned sharing the table (`CLONE_FILES`), and its first system call is
//! `close_range(max slot + 1, ~0, CLOSE_RANGE_UNSHARE)`: the kernel gives
//! it a table of its own holding only the descriptors below that, without
//! copying or closing the rest. Its stdio is in the slots by then; it moves
//! it onto 0, 1 and 2 and closes everything above.
//!
//! The slots hold `/dev/null` between starts. One start at a time fills
//! them ([`Slots::fill`] holds a lock until the child has exec'd).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

/// The reserved descriptors, and one more `/dev/null` to empty them with.
pub(super) struct Slots {
    fds: [OwnedFd; 3],
    null: OwnedFd,
}

static SLOTS: OnceLock<Option<Mutex<Slots>>> = OnceLock::new();

/// Reserves the slots, as low as they can be: call it at start-up, before
/// instances open their descriptors. Later calls do nothing. Without slots
/// (no descriptor left, no `/dev/null`) a child gets a copy of the table.
pub fn reserve() {
    SLOTS.get_or_init(|| match Slots::open() {
        Ok(s) => Some(Mutex::new(s)),
        Err(e) => {
            tracing::warn!("cannot reserve descriptors for starting processes: {e}");
            None
        }
    });
}

impl Slots {
    fn open() -> std::io::Result<Slots> {
        let null = || -> std::io::Result<OwnedFd> {
            let f = std::fs::File::open("/dev/null")?;
            // At 3 or above, whatever the launcher's own stdio is.
            let low = fcntl(&f, FcntlArg::F_DUPFD_CLOEXEC(3))?;
            // SAFETY: a new descriptor the kernel just returned, owned by
            // nobody else.
            #[allow(unsafe_code)]
            Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(low) })
        };
        Ok(Slots {
            fds: [null()?, null()?, null()?],
            null: null()?,
        })
    }

    /// The slots in use, once `stdio` is in them (close-on-exec, as all of
    /// the launcher's descriptors); `None` without slots.
    pub(super) fn fill(stdio: &[OwnedFd; 3]) -> std::io::Result<Option<Filled>> {
        let Some(Some(lock)) = SLOTS.get() else {
            return Ok(None);
        };
        let slots = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let filled = Filled(slots);
        for (from, to) in stdio.iter().zip(&filled.0.fds) {
            dup_onto(from, to)?;
        }
        Ok(Some(filled))
    }
}

/// The slots holding a child's stdio; emptied (back to `/dev/null`) when
/// dropped, which lets the next start fill them.
pub(super) struct Filled(MutexGuard<'static, Slots>);

impl Filled {
    /// The descriptors that become the child's 0, 1 and 2.
    pub(super) fn raw(&self) -> [RawFd; 3] {
        let [a, b, c] = &self.0.fds;
        [a.as_raw_fd(), b.as_raw_fd(), c.as_raw_fd()]
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        let s = &*self.0;
        for fd in &s.fds {
            // On failure it keeps the last child's file open until the next
            // start replaces it: harmless.
            let _ = dup_onto(&s.null, fd);
        }
    }
}

/// `dup3(from, to, O_CLOEXEC)`: `to` now names `from`'s file, atomically.
fn dup_onto(from: &OwnedFd, to: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: both descriptors are open and owned by the caller; dup3
    // replaces what `to` names without closing the number, which stays
    // owned by `to`.
    #[allow(unsafe_code)]
    let r = unsafe { nix::libc::dup3(from.as_raw_fd(), to.as_raw_fd(), OFlag::O_CLOEXEC.bits()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
