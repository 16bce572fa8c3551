//! Append-only audit trail of provisioning, certificate and agent events.

use time::OffsetDateTime;

use crate::error::db_err;
use crate::open::with_pool;
use crate::ts::{from_ms, to_ms};
use crate::{Result, Store, StoreError};

/// Upper bound of [`Store::list_audit_events`]'s `limit`.
pub const MAX_AUDIT_LIMIT: u32 = 1000;

/// Input of [`Store::append_audit_event`].
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub at: OffsetDateTime,
    /// Who did it: `admin-key`, `user:<name>`, `agent:<id>`, `system`.
    pub actor: String,
    /// Dotted action name, e.g. `provision.succeeded`.
    pub action: String,
    pub agent_id: Option<String>,
    pub remote_addr: Option<String>,
    /// Free text or JSON; must never contain secrets (keys, passwords).
    pub detail: String,
}

/// A stored audit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: i64,
    pub at: OffsetDateTime,
    pub actor: String,
    pub action: String,
    pub agent_id: Option<String>,
    pub remote_addr: Option<String>,
    pub detail: String,
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    agent_id: Option<String>,
    remote_addr: Option<String>,
    detail: String,
}

impl TryFrom<AuditRow> for AuditEvent {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self> {
        Ok(AuditEvent {
            id: row.id,
            at: from_ms(row.at)?,
            actor: row.actor,
            action: row.action,
            agent_id: row.agent_id,
            remote_addr: row.remote_addr,
            detail: row.detail,
        })
    }
}

macro_rules! audit_columns {
    () => {
        "id, at, actor, action, agent_id, remote_addr, detail"
    };
}

impl Store {
    /// Appends an event and returns its id (ids increase with insertion).
    pub async fn append_audit_event(&self, event: &NewAuditEvent) -> Result<i64> {
        const SQL: &str = "INSERT INTO audit_events \
             (at, actor, action, agent_id, remote_addr, detail) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";
        with_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(to_ms(event.at))
            .bind(&event.actor)
            .bind(&event.action)
            .bind(event.agent_id.as_deref())
            .bind(event.remote_addr.as_deref())
            .bind(&event.detail)
            .fetch_one(p)
            .await)
        .map_err(db_err)
    }

    /// Newest first (by insertion order, which stays correct even when two
    /// events share a millisecond), optionally for one agent. `limit` is
    /// clamped to `1..=MAX_AUDIT_LIMIT`.
    pub async fn list_audit_events(
        &self,
        agent_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>> {
        const ALL: &str = concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events ORDER BY id DESC LIMIT $1"
        );
        const BY_AGENT: &str = concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_events WHERE agent_id = $2 ORDER BY id DESC LIMIT $1"
        );
        let limit = i64::from(limit.clamp(1, MAX_AUDIT_LIMIT));
        let rows: Vec<AuditRow> = match agent_id {
            Some(agent) => with_pool!(self, p => sqlx::query_as(BY_AGENT)
                .bind(limit)
                .bind(agent)
                .fetch_all(p)
                .await),
            None => with_pool!(self, p => sqlx::query_as(ALL).bind(limit).fetch_all(p).await),
        }
        .map_err(db_err)?;
        rows.into_iter().map(AuditEvent::try_from).collect()
    }
}
