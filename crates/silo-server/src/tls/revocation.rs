//! The revocations every handshake is checked against, held in memory so
//! the check costs no database round trip; refreshed from the store
//! whenever something is revoked.

use silo_store::Revocations;
use std::sync::RwLock;
use time::OffsetDateTime;

#[derive(Debug, Default)]
pub struct RevocationCache {
    inner: RwLock<Revocations>,
}

impl RevocationCache {
    pub fn replace(&self, revocations: Revocations) {
        *self.inner.write().expect("revocation lock") = revocations;
    }

    /// Revoked by serial, or issued before the agent's revocation cut-off
    /// (which also covers certificates the registry never saw).
    pub fn is_revoked(&self, agent_id: &str, serial_hex: &str, not_before: OffsetDateTime) -> bool {
        self.inner.read().expect("revocation lock").is_revoked(
            agent_id,
            &serial_hex.to_ascii_lowercase(),
            not_before,
        )
    }
}
