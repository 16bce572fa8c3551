//! What every agent session tracks, whatever its protocol: when the agent
//! was last heard from, why and whether the session was closed.

use crate::agent::CloseReason;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub struct SessionLiveness {
    last_seen_ms: AtomicI64,
    close_reason: Mutex<Option<CloseReason>>,
    /// Fires when the session ends, for whatever reason.
    pub cancel: CancellationToken,
}

impl Default for SessionLiveness {
    fn default() -> Self {
        Self {
            last_seen_ms: AtomicI64::new(now_ms()),
            close_reason: Mutex::new(None),
            cancel: CancellationToken::new(),
        }
    }
}

impl SessionLiveness {
    /// The agent was heard from now.
    pub fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub fn idle_for(&self) -> Duration {
        let ms = now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        Duration::from_millis(ms.max(0) as u64)
    }

    pub fn last_seen(&self) -> OffsetDateTime {
        let ms = self.last_seen_ms.load(Ordering::Relaxed);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().expect("close reason lock")
    }

    /// Ends the session; the first reason given is the one reported.
    pub fn close(&self, reason: CloseReason) {
        self.close_reason
            .lock()
            .expect("close reason lock")
            .get_or_insert(reason);
        self.cancel.cancel();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_close_reason_wins_and_cancels() {
        let l = SessionLiveness::default();
        assert!(l.close_reason().is_none());
        l.close(CloseReason::Replaced);
        l.close(CloseReason::Shutdown);
        assert_eq!(l.close_reason(), Some(CloseReason::Replaced));
        assert!(l.cancel.is_cancelled());
        assert!(l.idle_for() < Duration::from_secs(5));
    }
}
