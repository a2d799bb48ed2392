//! The per-caller rate limit of mutating calls: a token bucket per
//! identity (GCRA, through `governor`), so that one caller's flood is
//! refused at once, before it reaches the controller, while every other
//! caller goes on as before.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::api::identity::Identity;

/// Default of `--rate-limit`: mutating calls per second per caller.
pub const DEFAULT_PER_SECOND: u32 = 50;
/// Default of `--rate-burst`: mutating calls a caller may make at once.
pub const DEFAULT_BURST: u32 = 100;

/// Callers tracked before the idle ones (full buckets) are forgotten.
const PRUNE_ABOVE: usize = 4096;

/// Token buckets by caller.
pub struct RateLimit<C: Clock = DefaultClock> {
    limiter: RateLimiter<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    per_second: NonZeroU32,
    burst: NonZeroU32,
}

impl<C: Clock> std::fmt::Debug for RateLimit<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RateLimit({}/s, burst {})", self.per_second, self.burst)
    }
}

impl RateLimit {
    /// `per_second` calls a second, `burst` at once, for each caller.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Self {
        RateLimit::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimit<C> {
    /// The same on `clock` (tests drive a fake one).
    pub fn with_clock(per_second: NonZeroU32, burst: NonZeroU32, clock: C) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimit {
            limiter: RateLimiter::hashmap_with_clock(quota, clock.clone()),
            clock,
            per_second,
            burst,
        }
    }

    /// Takes a token of `key`'s bucket.
    ///
    /// # Errors
    ///
    /// The bucket is empty: how long until it holds a token again.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let key = key.to_string();
        let r = self
            .limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()));
        if self.limiter.len() > PRUNE_ABOVE {
            self.limiter.retain_recent();
        }
        r
    }

    /// Calls a second, per caller.
    pub fn per_second(&self) -> NonZeroU32 {
        self.per_second
    }

    /// Calls at once, per caller.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }
}

/// The bucket a caller draws from: its identity; for a TCP caller without
/// a certificate its IP address (a new connection or source port is the
/// same caller).
pub fn key_of(id: &Identity) -> String {
    match id {
        Identity::Tcp { addr: Some(a) } => format!("ip {}", a.ip()),
        Identity::Unix { uid, .. } => format!("uid {uid}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_caller_gets_its_burst_then_waits_others_do_not() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(nz(10), nz(3), clock.clone());
        for _ in 0..3 {
            rl.check("uid 1").unwrap();
        }
        let wait = rl.check("uid 1").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another caller is not touched.
        for _ in 0..3 {
            rl.check("uid 2").unwrap();
        }
        clock.advance(wait);
        rl.check("uid 1").unwrap();
        assert!(rl.check("uid 1").is_err());
        // A full second refills the burst, not more.
        clock.advance(Duration::from_secs(1));
        for _ in 0..3 {
            rl.check("uid 1").unwrap();
        }
        assert!(rl.check("uid 1").is_err());
    }

    #[test]
    fn idle_callers_are_forgotten_when_many_are_tracked() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimit::with_clock(nz(1000), nz(1), clock.clone());
        for i in 0..PRUNE_ABOVE {
            rl.check(&format!("ip {i}")).unwrap();
        }
        clock.advance(Duration::from_secs(1));
        rl.check("one more").unwrap();
        assert!(rl.limiter.len() < 10, "{}", rl.limiter.len());
    }

    #[test]
    fn tcp_callers_are_keyed_by_address_not_port() {
        let a = Identity::Tcp {
            addr: Some("127.0.0.2:4000".parse().unwrap()),
        };
        let b = Identity::Tcp {
            addr: Some("127.0.0.2:4001".parse().unwrap()),
        };
        assert_eq!(key_of(&a), key_of(&b));
        let u = Identity::Unix {
            uid: 7,
            gid: 1,
            pid: Some(9),
        };
        let v = Identity::Unix {
            uid: 7,
            gid: 2,
            pid: Some(10),
        };
        assert_eq!(key_of(&u), key_of(&v));
    }
}
