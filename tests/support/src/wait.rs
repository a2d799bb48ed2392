//! Waiting on conditions, never on the clock: every wait here polls a
//! condition until it holds or a generous timeout passes, so that the tests
//! pass on a slow, shared 2-core machine and finish as soon as they can.

use std::time::{Duration, Instant};

/// How long the launcher may take to answer gRPC after it was started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a launcher gets to exit after SIGTERM before it is SIGKILLed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The generic timeout for conditions a test waits on.
pub const WAIT: Duration = Duration::from_secs(60);
/// The default poll interval of the waits below.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` every 50 ms until it is true (returns true) or `timeout`
/// passed (returns false).
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(timeout, POLL, cond)
}

/// [`wait_until`] polling every `every` (for conditions that are costly to
/// check, or fast sampling).
pub fn wait_until_every(
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    wait_for_every(timeout, every, || cond().then_some(())).is_some()
}

/// Polls `f` every 50 ms until it returns `Some` or `timeout` passed.
pub fn wait_for<T>(timeout: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    wait_for_every(timeout, POLL, f)
}

/// [`wait_for`] polling every `every`.
pub fn wait_for_every<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Checks `cond` every `every` for the whole `window` (a negative
/// assertion: something must not happen for that long). `Err` with the
/// time into the window at which it first failed.
pub fn holds_for(
    window: Duration,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<(), Duration> {
    let start = Instant::now();
    loop {
        if !cond() {
            return Err(start.elapsed());
        }
        if start.elapsed() >= window {
            return Ok(());
        }
        std::thread::sleep(every);
    }
}
