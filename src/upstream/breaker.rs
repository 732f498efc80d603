//! Circuit breaker per upstream: when at least `min_requests` calls ended in the last
//! `window_secs` and the share of failures (errors and timeouts) reaches `failure_ratio`, the
//! circuit opens and calls are refused at once (503 `circuit_open`) for `open_secs`. Then it is
//! half-open: up to `probes` calls go through; if they all succeed it closes, one failure opens it
//! again. Time is the gateway's [`Clock`].

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;

use super::window::SecondsWindow;
use crate::clock::Clock;
use crate::config::CircuitBreakerConfig;

/// Whether a call may go to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// `probe`: the half-open round this call is a trial of (its outcome decides the state);
    /// `None` for an ordinary call.
    Allowed {
        probe: Option<u64>,
    },
    Refused {
        retry_after_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { until: Duration },
    HalfOpen { in_flight: u32, succeeded: u32 },
}

impl Phase {
    /// The `seawall_circuit_state` value: 0 closed, 1 open, 2 half-open.
    fn gauge(self) -> i64 {
        match self {
            Phase::Closed => 0,
            Phase::Open { .. } => 1,
            Phase::HalfOpen { .. } => 2,
        }
    }
}

struct State {
    phase: Phase,
    /// Bumped each time the circuit opens, so a probe of an earlier half-open round that ends
    /// late is not taken for one of the current round.
    round: u64,
    /// Calls that ended while closed: [ok, failed].
    window: SecondsWindow,
}

const OK: usize = 0;
const FAILED: usize = 1;

pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    clock: Clock,
    state: Mutex<State>,
    gauge: IntGauge,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig, clock: Clock, gauge: IntGauge) -> CircuitBreaker {
        gauge.set(0);
        let window = SecondsWindow::new(config.window_secs);
        CircuitBreaker { config, clock, state: Mutex::new(State { phase: Phase::Closed, round: 0, window }), gauge }
    }

    pub fn admit(&self) -> Admission {
        let now = self.clock.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Phase::Open { until } = state.phase {
            if now < until {
                return Admission::Refused { retry_after_secs: (until - now).as_secs_f64().ceil().max(1.0) as u64 };
            }
            self.set(&mut state, Phase::HalfOpen { in_flight: 0, succeeded: 0 });
        }
        match state.phase {
            Phase::HalfOpen { in_flight, succeeded } if in_flight + succeeded < self.config.probes => {
                state.phase = Phase::HalfOpen { in_flight: in_flight + 1, succeeded };
                Admission::Allowed { probe: Some(state.round) }
            }
            Phase::HalfOpen { .. } => Admission::Refused { retry_after_secs: 1 },
            _ => Admission::Allowed { probe: None },
        }
    }

    /// How an admitted call ended: `Some(true)` ok, `Some(false)` error or timeout, `None` when
    /// it says nothing about the upstream (the caller went away, or never got that far).
    pub fn record(&self, probe: Option<u64>, ok: Option<bool>) {
        let now = self.clock.elapsed();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let current_probe = probe.is_some_and(|round| round == state.round);
        match (state.phase, current_probe) {
            (Phase::HalfOpen { in_flight, succeeded }, true) => match ok {
                Some(false) => self.trip(&mut state, now),
                Some(true) if succeeded + 1 >= self.config.probes => {
                    state.window.clear();
                    self.set(&mut state, Phase::Closed);
                }
                Some(true) => {
                    state.phase = Phase::HalfOpen { in_flight: in_flight.saturating_sub(1), succeeded: succeeded + 1 }
                }
                None => state.phase = Phase::HalfOpen { in_flight: in_flight.saturating_sub(1), succeeded },
            },
            (Phase::Closed, false) if probe.is_none() => {
                let Some(ok) = ok else { return };
                let second = now.as_secs();
                state.window.add(second, if ok { OK } else { FAILED });
                let [succeeded, failed] = state.window.sum(second);
                let total = succeeded + failed;
                if total >= self.config.min_requests
                    && f64::from(failed) >= self.config.failure_ratio * f64::from(total)
                {
                    self.trip(&mut state, now);
                }
            }
            // Calls admitted before the circuit opened, or non-probes while half-open.
            _ => {}
        }
    }

    fn trip(&self, state: &mut State, now: Duration) {
        state.window.clear();
        state.round += 1;
        self.set(state, Phase::Open { until: now + self.config.open });
    }

    fn set(&self, state: &mut State, phase: Phase) {
        if state.phase.gauge() != phase.gauge() {
            tracing::warn!(
                circuit = phase.gauge(),
                "upstream circuit {}",
                match phase {
                    Phase::Closed => "closed",
                    Phase::Open { .. } => "opened",
                    Phase::HalfOpen { .. } => "half-open: probing",
                }
            );
        }
        state.phase = phase;
        self.gauge.set(phase.gauge());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (CircuitBreaker, Clock, IntGauge) {
        let clock = Clock::default();
        let gauge = IntGauge::new("g", "g").unwrap();
        let config = CircuitBreakerConfig {
            failure_ratio: 0.5,
            min_requests: 10,
            window_secs: 10,
            open: Duration::from_secs(30),
            probes: 2,
        };
        (CircuitBreaker::new(config, clock.clone(), gauge.clone()), clock, gauge)
    }

    fn call(b: &CircuitBreaker, ok: bool) -> Admission {
        let admission = b.admit();
        if let Admission::Allowed { probe } = admission {
            b.record(probe, Some(ok));
        }
        admission
    }

    #[test]
    fn opens_on_the_failure_ratio_then_probes_and_closes() {
        let (b, clock, gauge) = breaker();
        // Below min_requests nothing happens, however bad.
        for _ in 0..9 {
            call(&b, false);
        }
        assert_eq!(gauge.get(), 0);
        call(&b, false);
        assert_eq!(gauge.get(), 1, "10 calls, all failed: open");
        assert_eq!(b.admit(), Admission::Refused { retry_after_secs: 30 });
        clock.advance(Duration::from_secs(29));
        assert_eq!(b.admit(), Admission::Refused { retry_after_secs: 1 });
        clock.advance(Duration::from_secs(1));
        // Half-open: two probes at a time, the third waits.
        let first = b.admit();
        assert_eq!(first, Admission::Allowed { probe: Some(1) });
        assert_eq!(gauge.get(), 2);
        assert_eq!(b.admit(), Admission::Allowed { probe: Some(1) });
        assert!(matches!(b.admit(), Admission::Refused { .. }));
        b.record(Some(1), Some(true));
        b.record(Some(1), Some(true));
        assert_eq!(gauge.get(), 0, "both probes succeeded: closed");
        assert_eq!(b.admit(), Admission::Allowed { probe: None });
    }

    #[test]
    fn a_failed_probe_opens_again_and_old_failures_age_out() {
        let (b, clock, gauge) = breaker();
        for _ in 0..9 {
            call(&b, false);
        }
        // Those 9 failures leave the window; 4 of the next 10 fail: 40%, under the ratio (with
        // the old ones it would be 13 of 19).
        clock.advance(Duration::from_secs(11));
        for i in 0..10 {
            call(&b, i % 5 < 3);
        }
        assert_eq!(gauge.get(), 0, "failures out of the window still counted");
        for _ in 0..10 {
            call(&b, false);
        }
        assert_eq!(gauge.get(), 1);
        clock.advance(Duration::from_secs(30));
        assert_eq!(call(&b, false), Admission::Allowed { probe: Some(1) });
        assert_eq!(gauge.get(), 1, "the probe failed: open again");
        assert!(matches!(b.admit(), Admission::Refused { .. }));
    }

    #[test]
    fn a_late_probe_of_an_earlier_round_decides_nothing() {
        let (b, clock, gauge) = breaker();
        for _ in 0..10 {
            call(&b, false);
        }
        clock.advance(Duration::from_secs(30));
        let (Admission::Allowed { probe: first }, Admission::Allowed { probe: late }) = (b.admit(), b.admit()) else {
            panic!("two probes expected");
        };
        b.record(first, Some(false));
        assert_eq!(gauge.get(), 1, "open again");
        clock.advance(Duration::from_secs(30));
        let Admission::Allowed { probe: current } = b.admit() else { panic!("a probe expected") };
        // The earlier round's second probe ends now: it neither closes nor unbalances the round.
        b.record(late, Some(true));
        assert_eq!(gauge.get(), 2);
        b.record(current, Some(true));
        assert_eq!(gauge.get(), 2, "one of two probes succeeded: still half-open");
        assert!(matches!(b.admit(), Admission::Allowed { probe: Some(_) }));
    }
}
