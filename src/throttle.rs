//! Usage plans: a route's `rate_limit`, an exact token bucket (GCRA, the `governor` crate) per
//! key: the whole route (the backend's budget, shared by every caller), each client (the token's
//! client id) or each client IP.
//!
//! Exact, because a usage plan is a promise to a fragile backend: over any window W it lets
//! through at most `burst + requests_per_sec × W` requests. `pingora-limits`' `Rate` is a
//! windowed estimator with no burst and can let through up to twice the rate across a window
//! boundary (see the test below), so it is not used for usage plans.
//!
//! Per-key state is a timestamp (the bucket's theoretical arrival time); keys whose bucket is
//! full again are dropped by [`UsagePlan::forget_idle`], which a background task runs, so the
//! memory follows the callers active within one refill period.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::clock::Clock;
use crate::config::{RateLimitConfig, RateLimitKey};

/// Whose budget a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// Every caller of the route together.
    Route,
    Client(Box<str>),
    Ip(IpAddr),
}

type Limiter = RateLimiter<Caller, HashMapStateStore<Caller>, Clock, NoOpMiddleware<Nanos>>;

/// A route's usage plan.
pub struct UsagePlan {
    pub key: RateLimitKey,
    limiter: Limiter,
    clock: Clock,
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers-09), built once.
    policy: String,
}

/// A refused request: when to come back, and the RateLimit header values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a token is free, rounded up (never early).
    pub retry_after_secs: u64,
    pub policy: String,
    pub state: String,
}

impl UsagePlan {
    pub fn new(config: &RateLimitConfig, clock: Clock) -> UsagePlan {
        let period = Duration::from_secs_f64(1.0 / config.requests_per_sec);
        let burst = NonZeroU32::new(config.burst.max(1)).expect("max(1) is non-zero");
        let quota = Quota::with_period(period).expect("validated: a positive rate").allow_burst(burst);
        let limiter: Limiter = RateLimiter::new(quota, HashMapStateStore::default(), clock.clone());
        let (quota_units, window) = policy_window(config.requests_per_sec);
        let policy = format!("\"{}\";q={quota_units};w={window}", config.key.label());
        UsagePlan { key: config.key, limiter, clock, policy }
    }

    /// Takes one token from `caller`'s bucket, or says when one will be free.
    pub fn check(&self, caller: &Caller) -> Result<(), Limited> {
        match self.limiter.check_key(caller) {
            Ok(_) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                let retry_after_secs = wait.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
                Err(Limited {
                    retry_after_secs,
                    policy: self.policy.clone(),
                    state: format!("\"{}\";r=0;t={retry_after_secs}", self.key.label()),
                })
            }
        }
    }

    /// Drops the state of callers whose bucket is full again; returns how many remain.
    pub fn forget_idle(&self) -> usize {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        self.limiter.len()
    }
}

/// `q` and `w` of `RateLimit-Policy`: per second when the rate is a whole number, else over the
/// shortest window of whole seconds holding at least one request (0.5 requests/s is `q=1;w=2`,
/// 0.125 is `q=1;w=8`). `q` is rounded down: the policy never promises more than the plan.
fn policy_window(requests_per_sec: f64) -> (u64, u64) {
    if requests_per_sec >= 1.0 && requests_per_sec.fract() == 0.0 {
        (requests_per_sec as u64, 1)
    } else if requests_per_sec >= 1.0 {
        ((requests_per_sec * 60.0).floor() as u64, 60)
    } else {
        let window = (1.0 / requests_per_sec).ceil();
        ((requests_per_sec * window).floor().max(1.0) as u64, window as u64)
    }
}

/// How often idle callers' state is dropped ([`UsagePlan::forget_idle`]).
pub const FORGET_EVERY: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rps: f64, burst: u32, key: RateLimitKey) -> (UsagePlan, Clock) {
        let clock = Clock::default();
        (UsagePlan::new(&RateLimitConfig { requests_per_sec: rps, burst, key }, clock.clone()), clock)
    }

    #[test]
    fn lets_through_exactly_burst_plus_rate_times_window() {
        let (plan, clock) = plan(50.0, 10, RateLimitKey::Route);
        let mut passed = 0;
        // 5× the rate for 20 s of clock time, in 1 ms steps of 0.25 requests.
        for ms in 0..20_000u64 {
            if ms % 4 == 0 && plan.check(&Caller::Route).is_ok() {
                passed += 1;
            }
            clock.advance(Duration::from_millis(1));
        }
        assert!((1000..=1010).contains(&passed), "{passed} passed: limit is 10 + 50 × 20");
    }

    #[test]
    fn a_refusal_says_when_a_token_is_free_and_names_the_policy() {
        let (plan, clock) = plan(0.5, 1, RateLimitKey::Client);
        let caller = Caller::Client("genesys".into());
        assert!(plan.check(&caller).is_ok());
        let limited = plan.check(&caller).unwrap_err();
        assert_eq!(limited.retry_after_secs, 2);
        assert_eq!(limited.policy, "\"client\";q=1;w=2");
        assert_eq!(policy_window(0.125), (1, 8));
        assert_eq!(policy_window(2.5), (150, 60));
        assert_eq!(limited.state, "\"client\";r=0;t=2");
        // Another client has its own bucket.
        assert!(plan.check(&Caller::Client("other".into())).is_ok());
        clock.advance(Duration::from_millis(1500));
        assert_eq!(plan.check(&caller).unwrap_err().retry_after_secs, 1, "rounded up, never early");
        clock.advance(Duration::from_millis(500));
        assert!(plan.check(&caller).is_ok());
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let (plan, clock) = plan(10.0, 5, RateLimitKey::Ip);
        for i in 0..100u8 {
            let _ = plan.check(&Caller::Ip(IpAddr::from([10, 0, 0, i])));
        }
        assert_eq!(plan.forget_idle(), 100);
        clock.advance(Duration::from_secs(1));
        assert_eq!(plan.forget_idle(), 0);
    }

    #[test]
    fn pingora_limits_rate_cannot_hold_a_usage_plan() {
        // What a windowed estimator allows: the whole limit at the end of one window and again
        // at the start of the next, twice the rate within one second. `Rate` reads the real
        // clock (nothing to inject), hence the one real pause in these tests.
        let rate = pingora_limits::rate::Rate::new(Duration::from_secs(1));
        let limit = 50;
        let mut passed = 0;
        for _ in 0..200 {
            if rate.observe(&"route", 1) <= limit {
                passed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1010));
        for _ in 0..200 {
            if rate.observe(&"route", 1) <= limit {
                passed += 1;
            }
        }
        assert_eq!(passed, 2 * limit, "two windows back to back let through 2× the limit");
    }
}
