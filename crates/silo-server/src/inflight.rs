//! Counting exchanges under way, per agent and server-wide, so shutdown can
//! wait for them to drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

impl InFlight {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once nothing is in flight.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one exchange in every counter it holds until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    counters: [Arc<InFlight>; 2],
}

impl InFlightGuard {
    pub fn new(agent: Arc<InFlight>, server: Arc<InFlight>) -> Self {
        for c in [&agent, &server] {
            c.count.fetch_add(1, Ordering::AcqRel);
        }
        Self {
            counters: [agent, server],
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        for c in &self.counters {
            if c.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                c.idle.notify_waiters();
            }
        }
    }
}
