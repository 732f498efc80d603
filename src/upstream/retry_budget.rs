//! Retry budget per upstream, so a sick backend is not hit twice as hard: over the last 10 s,
//! retries may add at most 20% to the calls, plus 10 retries a second whatever the traffic (the
//! defaults of Finagle and linkerd). A retry the budget refuses ends the request with the failure
//! it met.

use std::sync::Mutex;

use super::window::SecondsWindow;
use crate::clock::Clock;

const WINDOW_SECS: u64 = 10;
const RATIO: f64 = 0.2;
const MIN_PER_SEC: u32 = 10;

const CALLS: usize = 0;
const RETRIES: usize = 1;

pub struct RetryBudget {
    clock: Clock,
    window: Mutex<SecondsWindow>,
}

impl RetryBudget {
    pub fn new(clock: Clock) -> RetryBudget {
        RetryBudget { clock, window: Mutex::new(SecondsWindow::new(WINDOW_SECS)) }
    }

    /// Counts a first attempt.
    pub fn deposit(&self) {
        let now = self.clock.elapsed().as_secs();
        self.window.lock().unwrap_or_else(|e| e.into_inner()).add(now, CALLS);
    }

    /// Takes one retry from the budget, if any is left.
    pub fn withdraw(&self) -> bool {
        let now = self.clock.elapsed().as_secs();
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let [calls, retries] = window.sum(now);
        let allowed = f64::from(MIN_PER_SEC) * WINDOW_SECS as f64 + RATIO * f64::from(calls);
        if f64::from(retries) < allowed {
            window.add(now, RETRIES);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_add_at_most_a_fifth_above_the_floor() {
        let clock = Clock::default();
        let budget = RetryBudget::new(clock.clone());
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 100 + 200, "floor of 10/s over 10 s, plus 20% of 1000 calls");
        clock.advance(Duration::from_secs(10));
        assert!(budget.withdraw(), "the window moved on");
    }
}
