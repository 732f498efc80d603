//! Two counters over a sliding window of whole seconds (one bucket per second, reused as the
//! window moves), for the circuit breaker (ok / failed) and the retry budget (calls / retries).

#[derive(Debug, Clone)]
pub struct SecondsWindow {
    /// Ring indexed by the second: (that second, counts); `u64::MAX` marks an unused bucket.
    buckets: Vec<(u64, [u32; 2])>,
}

impl SecondsWindow {
    pub fn new(seconds: u64) -> SecondsWindow {
        SecondsWindow { buckets: vec![(u64::MAX, [0, 0]); seconds.max(1) as usize] }
    }

    /// Adds one to counter `which` (0 or 1) at second `now`.
    pub fn add(&mut self, now: u64, which: usize) {
        let slot = (now % self.buckets.len() as u64) as usize;
        let bucket = &mut self.buckets[slot];
        if bucket.0 != now {
            *bucket = (now, [0, 0]);
        }
        bucket.1[which] += 1;
    }

    /// Both counters summed over the window ending at second `now`.
    pub fn sum(&self, now: u64) -> [u32; 2] {
        let window = self.buckets.len() as u64;
        self.buckets
            .iter()
            .filter(|(second, _)| *second != u64::MAX && now.saturating_sub(*second) < window)
            .fold([0, 0], |acc, (_, c)| [acc[0] + c[0], acc[1] + c[1]])
    }

    pub fn clear(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = (u64::MAX, [0, 0]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_of_the_window() {
        let mut w = SecondsWindow::new(3);
        w.add(10, 0);
        w.add(11, 1);
        w.add(12, 0);
        assert_eq!(w.sum(12), [2, 1]);
        assert_eq!(w.sum(13), [1, 1]);
        w.add(13, 0); // reuses second 10's bucket
        assert_eq!(w.sum(13), [2, 1]);
        assert_eq!(w.sum(20), [0, 0]);
    }
}
