//! Restart backoff (SPEC §6): the first restart after a failure is
//! immediate; each further consecutive failure doubles the delay, from
//! 100 ms up to 30 s, with jitter.
//!
//! Pure: the jitter is an input, drawn by the caller.

use std::time::Duration;

/// Delay of the second restart in a row.
pub const BASE: Duration = Duration::from_millis(100);
/// Longest delay.
pub const MAX: Duration = Duration::from_secs(30);
/// Jitter spreads a delay over ±10 %.
pub const JITTER_SPREAD: f64 = 0.2;

/// The delay before restarting after `failures` consecutive failures.
/// `jitter` is in `[0, 1)`; 0.5 is the undisturbed delay.
pub fn delay(failures: u32, jitter: f64) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let doublings = (failures - 2).min(20);
    let raw = BASE.saturating_mul(1u32 << doublings).min(MAX);
    let factor = 1.0 + (jitter.clamp(0.0, 1.0) - 0.5) * JITTER_SPREAD;
    raw.mul_f64(factor).min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_restart_after_a_failure_is_immediate() {
        assert_eq!(delay(0, 0.9), Duration::ZERO);
        assert_eq!(delay(1, 0.9), Duration::ZERO);
    }

    #[test]
    fn each_further_failure_doubles_the_delay() {
        assert_eq!(delay(2, 0.5), Duration::from_millis(100));
        assert_eq!(delay(3, 0.5), Duration::from_millis(200));
        assert_eq!(delay(4, 0.5), Duration::from_millis(400));
    }

    #[test]
    fn the_delay_is_capped_at_thirty_seconds() {
        assert_eq!(delay(40, 0.5), MAX);
        assert_eq!(delay(40, 1.0), MAX);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let lo = delay(3, 0.0);
        let hi = delay(3, 0.999);
        assert!(lo >= Duration::from_millis(180) && lo < Duration::from_millis(200));
        assert!(hi > Duration::from_millis(200) && hi <= Duration::from_millis(220));
    }
}
