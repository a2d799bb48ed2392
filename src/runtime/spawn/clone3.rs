//! `clone3(2)` with `CLONE_INTO_CGROUP` (Linux 5.7): the child is created
//! in its cgroup v2, so it writes no `cgroup.procs`. That write takes the
//! kernel's global threadgroup lock, which waits out an RCU grace period
//! whenever it was idle (9.4 ms median on a 2-core VM): every restart that
//! does not follow another start within milliseconds paid it.
//!
//! glibc exports no `clone3`, and a child that shares our memory must start
//! on its own stack, which a plain `syscall()` cannot arrange (the child
//! would return into the caller's frames on the caller's stack): the
//! system call is made here in assembly, x86-64 only. Elsewhere, and
//! whenever the kernel refuses it (older than 5.7, a seccomp filter, a
//! cgroup it will not create the child in, any other error: no child exists
//! then), the caller falls back to `clone` and the child's own
//! `cgroup.procs` write, whose failure is reported but not fatal.

use std::ffi::c_void;
use std::os::fd::RawFd;

use nix::errno::Errno;
use nix::libc;

/// `CLONE_INTO_CGROUP` (the libc crate's constant does not fit its type).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The child's entry: runs the callback, then exits with its value (it
/// ends in execve or `_exit` before that).
#[allow(unsafe_code)] // the pointer `clone_into_cgroup` passed; _exit
extern "C" fn entry(arg: *mut c_void) -> ! {
    // SAFETY: `arg` is the `&mut &mut dyn FnMut` that `clone_into_cgroup`
    // passed, alive while the parent is suspended (CLONE_VFORK).
    let cb = unsafe { &mut *arg.cast::<&mut dyn FnMut() -> isize>() };
    let code = cb();
    // SAFETY: _exit is async-signal-safe and ends the child at once.
    unsafe { libc::_exit(i32::try_from(code).unwrap_or(127)) }
}

/// Creates a child in the cgroup v2 directory `cgroup` (an open
/// descriptor of it) that runs `cb` on `stack` and shares what `flags`
/// (`CLONE_*` bits) say; returns its pid once the parent resumes.
///
/// # Safety
///
/// As for [`nix::sched::clone`] with the same flags: with `CLONE_VM` the
/// child shares our memory and must keep to what `ChildSetup::start`
/// lists; `flags` must hold `CLONE_VFORK` so that `cb` and `stack` outlive
/// the child's use of them; `stack` must end 16-byte aligned.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
pub(super) unsafe fn clone_into_cgroup(
    cb: &mut dyn FnMut() -> isize,
    stack: &mut [u8],
    flags: libc::c_int,
    cgroup: RawFd,
) -> Result<libc::pid_t, Errno> {
    debug_assert!(flags & libc::CLONE_VFORK != 0 && flags & libc::CSIGNAL == 0);
    let mut cb = cb;
    let args = CloneArgs {
        flags: u64::from(flags.cast_unsigned()) | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: stack.len() as u64,
        cgroup: u64::from(cgroup.cast_unsigned()),
        ..CloneArgs::default()
    };
    let arg: *mut c_void = (&raw mut cb).cast();
    let ret: i64;
    // SAFETY: the kernel starts the child at the instruction after
    // `syscall` with rax = 0 and rsp at the top of `stack` (aligned to 16
    // again before the call): it calls `entry`, which never returns (`ud2`
    // would trap if it did). The child's frames have no unwind info of
    // their own; nothing unwinds there (`entry` aborts on a panic). The
    // parent gets the pid or -errno in rax; `syscall` clobbers rcx and
    // r11; the parent's stack is not touched.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "and rsp, -16",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") &raw const args,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry as extern "C" fn(*mut c_void) -> !,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(Errno::from_raw(i32::try_from(-ret).unwrap_or(libc::EINVAL)));
    }
    libc::pid_t::try_from(ret)
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or(Errno::EINVAL)
}

/// Not on this architecture: the caller clones as before.
#[cfg(not(target_arch = "x86_64"))]
#[allow(unsafe_code)]
pub(super) unsafe fn clone_into_cgroup(
    _cb: &mut dyn FnMut() -> isize,
    _stack: &mut [u8],
    _flags: libc::c_int,
    _cgroup: RawFd,
) -> Result<libc::pid_t, Errno> {
    Err(Errno::ENOSYS)
}
