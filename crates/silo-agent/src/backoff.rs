//! Reconnect delays: exponential from 1 s to 30 s with jitter, reset after a
//! healthy session, so a fleet that lost its server does not return in
//! lock-step.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The un-jittered delay before the next attempt.
    pub fn current(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay to wait now (current ± up to 20 %), advancing the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current();
        self.attempt = self.attempt.saturating_add(1).min(16);
        let jitter = rand::rng().random_range(0.8..=1.2);
        d.mul_f64(jitter).min(self.max.mul_f64(1.2))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::default();
        let expected = [1, 2, 4, 8, 16, 30, 30, 30];
        for secs in expected {
            let base = Duration::from_secs(secs);
            assert_eq!(b.current(), base);
            let d = b.next_delay();
            assert!(
                d >= base.mul_f64(0.8) && d <= base.mul_f64(1.2),
                "{d:?} vs {base:?}"
            );
        }
        b.reset();
        assert_eq!(b.current(), Duration::from_secs(1));
    }

    #[test]
    fn jitter_spreads_delays() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let mut b = Backoff::default();
            seen.insert(b.next_delay().as_millis());
        }
        assert!(seen.len() > 5, "delays should differ: {seen:?}");
    }
}
