//! The stack the child of a spawn runs on until it execs: a mapping of its
//! own with a guard page below it.

/// Stack of the child until it execs; it runs a few small frames.
pub(super) const CHILD_STACK: usize = 64 * 1024;

/// The child's stack: an anonymous mapping with a `PROT_NONE` guard page
/// below it (stacks grow down), unmapped when dropped.
pub(super) struct ChildStack {
    base: *mut nix::libc::c_void,
    len: usize,
    pub(super) page: usize,
}

impl ChildStack {
    #[allow(unsafe_code)] // mmap/mprotect of a fresh private mapping we own
    pub(super) fn new() -> std::io::Result<ChildStack> {
        use nix::libc;
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a new anonymous private mapping; no existing memory is
        // touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let stack = ChildStack { base, len, page };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The usable part, above the guard page.
    #[allow(unsafe_code)] // a slice of the mapping this value owns
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: [base + page, base + len) is mapped read-write, owned by
        // self and borrowed mutably for the slice's life.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.cast::<u8>().add(self.page),
                self.len - self.page,
            )
        }
    }
}

impl Drop for ChildStack {
    #[allow(unsafe_code)] // unmapping the mapping this value owns
    fn drop(&mut self) {
        // SAFETY: base/len are the mapping made in `new`, unmapped once.
        unsafe {
            nix::libc::munmap(self.base, self.len);
        }
    }
}
