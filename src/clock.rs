//! The gateway's monotonic clock for policy time (rate limits, circuit breakers, cache ages):
//! real time, plus an offset that tests move forward instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::nanos::Nanos;

/// Cheap to clone; clones share the offset.
#[derive(Clone, Debug)]
pub struct Clock {
    origin: Instant,
    offset_nanos: Arc<AtomicU64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { origin: Instant::now(), offset_nanos: Arc::new(AtomicU64::new(0)) }
    }
}

impl Clock {
    /// Time since the clock was made, offset included.
    pub fn elapsed(&self) -> Duration {
        self.origin.elapsed() + Duration::from_nanos(self.offset_nanos.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward: for tests, in place of sleeping.
    pub fn advance(&self, by: Duration) {
        self.offset_nanos.fetch_add(by.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = other.elapsed();
        clock.advance(Duration::from_secs(3600));
        assert!(other.elapsed() >= before + Duration::from_secs(3600));
    }
}
