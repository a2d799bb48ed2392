//! The child's side of a spawn, between the clone and the exec: it runs
//! on memory the parent prepared ([`ChildSetup`]), shares the parent's
//! address space, and may only make async-signal-safe calls (see
//! `ChildSetup::start`).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::{
    ChildSetup, SH, STAGE_CHDIR, STAGE_EXEC, STAGE_NO_NEW_PRIVS, STAGE_PGID, STAGE_SETGID,
    STAGE_SETGROUPS, STAGE_SETUID, STAGE_STDIO,
};

impl ChildSetup {
    /// The child's side, up to exec. Never returns.
    #[allow(unsafe_code)]
    pub(super) fn in_child(
        &self,
        stage: &AtomicI32,
        errno: &AtomicI32,
        joined: &AtomicBool,
        shared: Option<[std::os::fd::RawFd; 3]>,
        in_cgroup: bool,
    ) -> isize {
        use nix::libc;
        let fail = |at: i32| -> isize {
            errno.store(nix::errno::Errno::last_raw(), Ordering::SeqCst);
            stage.store(at, Ordering::SeqCst);
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe { libc::_exit(127) }
        };
        // SAFETY (whole block): only async-signal-safe calls on memory
        // prepared before the clone (see `start`).
        unsafe {
            // Sharing the launcher's descriptor table (CLONE_FILES): first
            // a table of our own, with the descriptors up to the slots
            // only. Nothing else touches a descriptor before this.
            let stdio = match shared {
                Some(slots) => {
                    let above = slots.iter().max().map_or(3, |m| m + 1) as libc::c_uint;
                    let unshared = libc::syscall(
                        libc::SYS_close_range,
                        above,
                        libc::c_uint::MAX,
                        libc::CLOSE_RANGE_UNSHARE,
                    ) == 0;
                    // Before Linux 5.9: a whole copy.
                    if !unshared && libc::unshare(libc::CLONE_FILES) != 0 {
                        return fail(STAGE_STDIO);
                    }
                    slots
                }
                None => [
                    self.stdio[0].as_raw_fd(),
                    self.stdio[1].as_raw_fd(),
                    self.stdio[2].as_raw_fd(),
                ],
            };
            // Handlers back to the default before signals are unblocked;
            // SIGPIPE too, which the Rust runtime ignores. Other ignored
            // signals stay ignored, as across any exec.
            for sig in 1..=libc::SIGRTMAX() {
                let mut cur: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut cur) != 0 {
                    continue;
                }
                let handled =
                    cur.sa_sigaction != libc::SIG_DFL && cur.sa_sigaction != libc::SIG_IGN;
                if handled || (sig == libc::SIGPIPE && cur.sa_sigaction == libc::SIG_IGN) {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if libc::setpgid(0, 0) != 0 {
                return fail(STAGE_PGID);
            }
            for (fd, target) in stdio.into_iter().zip(0..) {
                if libc::dup2(fd, target) < 0 {
                    return fail(STAGE_STDIO);
                }
            }
            if let Some((soft, hard)) = self.nofile {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                // Lowering a limit is always allowed; on failure the
                // pattern keeps the launcher's.
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            // Created in its cgroup (`clone3`), it has nothing to join.
            let join: &[CString] = if in_cgroup { &[] } else { &self.cgroup_join };
            for path in join {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    joined.store(false, Ordering::SeqCst);
                    continue;
                }
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    joined.store(false, Ordering::SeqCst);
                }
                libc::close(fd);
            }
            // In its cgroups (joined as root), it becomes the manifest's
            // user: groups first, then gid, then uid (after which it could
            // change neither). Raw system calls: glibc's wrappers would
            // signal every thread of the launcher to change theirs too
            // (its setxid broadcast), from a child that is not the
            // launcher but shares its memory.
            if let Some(c) = &self.creds {
                let n = c.groups.len() as libc::c_long;
                if libc::syscall(libc::SYS_setgroups, n, c.groups.as_ptr()) != 0 {
                    return fail(STAGE_SETGROUPS);
                }
                let gid = c.gid as libc::c_long;
                if libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0 {
                    return fail(STAGE_SETGID);
                }
                let uid = c.uid as libc::c_long;
                if libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0 {
                    return fail(STAGE_SETUID);
                }
            }
            // As that user: a directory it may not enter is an error here,
            // not a process running somewhere it cannot read.
            if libc::chdir(self.dir.as_ptr()) != 0 {
                return fail(STAGE_CHDIR);
            }
            // No setuid bit or file capability can raise it again.
            if self.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail(STAGE_NO_NEW_PRIVS);
            }
            // Only 0-2 cross the exec: whatever else the launcher holds, or
            // inherited without close-on-exec from its own parent, stays.
            if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
                // Before Linux 5.9: close them one by one.
                let mut lim: libc::rlimit = std::mem::zeroed();
                let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur.min(1 << 20)
                } else {
                    1024
                };
                for fd in 3..max {
                    libc::close(fd as libc::c_int);
                }
            }
            libc::execve(self.exe.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
            // A script without a `#!` line runs under /bin/sh, as execvp
            // (and so std's Command) runs it.
            if nix::errno::Errno::last_raw() == libc::ENOEXEC {
                libc::execve(SH.as_ptr(), self.sh_argv.as_ptr(), self.envp.as_ptr());
                nix::errno::Errno::set_raw(libc::ENOEXEC);
            }
        }
        fail(STAGE_EXEC)
    }
}
