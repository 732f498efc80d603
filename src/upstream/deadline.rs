//! The route's whole-request deadline: connect + send + full response, retries included.
//!
//! Pingora's timeouts are per operation (a read timeout restarts with every read), so each
//! upstream attempt gets timeouts capped at what is left of this deadline, and the response
//! phases check it again.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(start: Instant, timeout: Duration) -> Deadline {
        Deadline { at: start + timeout }
    }

    /// Time left, zero once passed.
    pub fn remaining(&self, now: Instant) -> Duration {
        self.at.saturating_duration_since(now)
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_counts_down_to_zero() {
        let start = Instant::now();
        let d = Deadline::after(start, Duration::from_millis(100));
        assert_eq!(d.remaining(start), Duration::from_millis(100));
        assert_eq!(d.remaining(start + Duration::from_millis(40)), Duration::from_millis(60));
        assert!(!d.expired(start + Duration::from_millis(99)));
        assert!(d.expired(start + Duration::from_millis(100)));
        assert_eq!(d.remaining(start + Duration::from_secs(1)), Duration::ZERO);
    }
}
