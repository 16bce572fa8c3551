//! Audit rows written by provisioning. Details are small JSON objects; they
//! name keys by their public id and never contain a secret.

use silo_store::{NewAuditEvent, Store};
use time::OffsetDateTime;

pub(crate) const KEY_CREATED: &str = "provision_key.created";
pub(crate) const KEY_REVOKED: &str = "provision_key.revoked";
pub(crate) const PROVISION_OK: &str = "provision.succeeded";
pub(crate) const PROVISION_FAILED: &str = "provision.failed";
pub(crate) const CERT_ISSUED: &str = "certificate.issued";
pub(crate) const CERT_REVOKED: &str = "certificate.revoked";

/// One event to record.
pub(crate) struct Event<'a> {
    pub action: &'static str,
    pub actor: &'a str,
    pub agent_id: Option<&'a str>,
    pub remote_addr: Option<String>,
    pub detail: serde_json::Value,
}

/// Appends the event. A failure to audit is logged, not returned: the
/// operation it describes has already happened (or been refused).
pub(crate) async fn record(store: &Store, now: OffsetDateTime, event: Event<'_>) {
    let row = NewAuditEvent {
        at: now,
        actor: event.actor.to_owned(),
        action: event.action.to_owned(),
        agent_id: event.agent_id.map(str::to_owned),
        remote_addr: event.remote_addr,
        detail: event.detail.to_string(),
    };
    if let Err(e) = store.append_audit_event(&row).await {
        tracing::error!(action = event.action, error = %e, "cannot write an audit event");
    }
}
