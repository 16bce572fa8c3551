//! Per-address failure limits for endpoints where a wrong guess is cheap
//! for the caller and expensive for us (password hashing on login, key
//! lookups on provisioning).
//!
//! Only failures count, in a sliding one-minute window. An attempt counts
//! as a failure from the moment it starts until it reports success, so a
//! burst of concurrent guesses is limited as well as a sequence of them:
//! otherwise a hundred parallel requests would all pass the check before
//! the first one had failed.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Addresses kept before idle ones are swept out of memory.
const SWEEP_AT: usize = 1024;

/// Limits failed attempts per client address. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct FailureLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// 0 = no limit.
    max: u32,
    window: Duration,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Start times of failed or still running attempts, oldest first.
    by_addr: HashMap<IpAddr, VecDeque<Instant>>,
    sweep_at: usize,
}

/// The address is over its limit; retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header (at least 1).
    pub fn secs(&self) -> u64 {
        (self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)).max(1)
    }
}

/// One attempt under way. Dropping it without [`Attempt::succeeded`]
/// records a failure.
#[derive(Debug)]
#[must_use = "dropping the attempt records a failure at once"]
pub struct Attempt {
    inner: Arc<Inner>,
    addr: IpAddr,
    started: Option<Instant>,
}

impl Attempt {
    /// The attempt succeeded: it does not count against the address.
    pub fn succeeded(mut self) {
        if let Some(started) = self.started.take() {
            let mut state = self.inner.state.lock().expect("limiter lock");
            if let Some(times) = state.by_addr.get_mut(&self.addr)
                && let Some(i) = times.iter().rposition(|t| *t == started)
            {
                times.remove(i);
            }
        }
    }
}

impl FailureLimiter {
    /// At most `max_per_minute` failures per address in any minute; 0
    /// disables the limit.
    pub fn per_minute(max_per_minute: u32) -> Self {
        Self::new(max_per_minute, Duration::from_secs(60))
    }

    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                max,
                window,
                state: Mutex::new(Window {
                    by_addr: HashMap::new(),
                    sweep_at: SWEEP_AT,
                }),
            }),
        }
    }

    /// Starts an attempt from `addr`, or refuses it when the address has
    /// used up its failures.
    pub fn begin(&self, addr: IpAddr) -> Result<Attempt, RetryAfter> {
        self.begin_at(addr, Instant::now())
    }

    fn begin_at(&self, addr: IpAddr, now: Instant) -> Result<Attempt, RetryAfter> {
        let inner = &self.inner;
        if inner.max == 0 {
            return Ok(Attempt {
                inner: inner.clone(),
                addr,
                started: None,
            });
        }
        let mut state = inner.state.lock().expect("limiter lock");
        if state.by_addr.len() >= state.sweep_at {
            let window = inner.window;
            state.by_addr.retain(|_, times| {
                prune(times, now, window);
                !times.is_empty()
            });
            state.sweep_at = (state.by_addr.len() * 2).max(SWEEP_AT);
        }
        let times = state.by_addr.entry(addr).or_default();
        prune(times, now, inner.window);
        if times.len() >= inner.max as usize {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = (oldest + inner.window).saturating_duration_since(now);
            return Err(RetryAfter(wait));
        }
        times.push_back(now);
        Ok(Attempt {
            inner: inner.clone(),
            addr,
            started: Some(now),
        })
    }
}

fn prune(times: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while times
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn failures_are_limited_per_address_and_expire() {
        let limiter = FailureLimiter::per_minute(2);
        let t0 = Instant::now();
        drop(limiter.begin_at(A, t0).unwrap());
        drop(limiter.begin_at(A, t0 + Duration::from_secs(10)).unwrap());
        let refused = limiter
            .begin_at(A, t0 + Duration::from_secs(20))
            .unwrap_err();
        assert_eq!(refused, RetryAfter(Duration::from_secs(40)));
        assert_eq!(refused.secs(), 40);
        // Another address is unaffected.
        drop(limiter.begin_at(B, t0).unwrap());
        // The first failure leaves the window after a minute.
        assert!(limiter.begin_at(A, t0 + Duration::from_secs(60)).is_ok());
    }

    #[test]
    fn successes_do_not_count_but_running_attempts_do() {
        let limiter = FailureLimiter::per_minute(2);
        let t0 = Instant::now();
        for _ in 0..10 {
            limiter.begin_at(A, t0).unwrap().succeeded();
        }
        let first = limiter.begin_at(A, t0).unwrap();
        let second = limiter.begin_at(A, t0).unwrap();
        assert!(limiter.begin_at(A, t0).is_err(), "two attempts in flight");
        first.succeeded();
        assert!(limiter.begin_at(A, t0).is_ok());
        drop(second);
    }

    #[test]
    fn zero_disables_and_idle_addresses_are_swept() {
        let off = FailureLimiter::per_minute(0);
        for _ in 0..100 {
            drop(off.begin(A).unwrap());
        }
        let limiter = FailureLimiter::per_minute(1);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(i));
            drop(limiter.begin_at(addr, t0).unwrap());
        }
        drop(limiter.begin_at(A, t0 + Duration::from_secs(61)).unwrap());
        let kept = limiter.inner.state.lock().unwrap().by_addr.len();
        assert_eq!(kept, 1, "expired addresses were swept");
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
    }
}
