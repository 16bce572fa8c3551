//! Periodic removal of provision keys that were used, revoked or expired
//! longer ago than `provision.history_days`. Their audit events stay.

use silo_store::Store;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs one cleanup pass; returns how many keys were deleted.
pub async fn cleanup_once(
    store: &Store,
    history: Duration,
    now: OffsetDateTime,
) -> Result<u64, silo_store::StoreError> {
    let deleted = store.cleanup_provision_keys(now, history).await?;
    if deleted > 0 {
        tracing::info!(deleted, "old provision keys cleaned up");
    }
    Ok(deleted)
}

/// Cleans up at start and then every `interval` (validated positive by the
/// configuration) until `shutdown` fires.
pub fn spawn(
    store: Store,
    interval: Duration,
    history: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_secs(1));
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = cleanup_once(&store, history, OffsetDateTime::now_utc()).await {
                tracing::warn!(error = %e, "provision key cleanup failed; retrying at the next interval");
            }
        }
    })
}
