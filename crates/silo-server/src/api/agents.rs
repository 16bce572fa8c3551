//! `GET /agents` (compat shape) and `DELETE /agents/{id}`.

use super::auth::Admin;
use super::error::ApiError;
use super::extract::{ClientAddr, Query};
use super::rfc3339;
use crate::agent::AgentConnection;
use crate::known_agents::protocol_name;
use crate::registry::Registered;
use crate::state::ServerState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use silo_store::{AgentRecord, NewAuditEvent};
use std::collections::HashSet;
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::{info, warn};

#[derive(Serialize)]
pub struct AgentView {
    agent_id: String,
    /// `online` or `offline`.
    status: &'static str,
    port: Option<u16>,
    last_seen: String,
    connected_since: Option<String>,
    remote_addr: Option<String>,
    protocol: String,
    cert_serial: Option<String>,
    cert_not_after: Option<String>,
    in_flight: usize,
}

impl AgentView {
    fn online(r: &Registered) -> Self {
        let conn: &dyn AgentConnection = r.conn.as_ref();
        let info = conn.info();
        Self {
            agent_id: info.agent_id.clone(),
            status: "online",
            port: r.port,
            last_seen: rfc3339(conn.last_seen()),
            connected_since: Some(rfc3339(info.connected_since)),
            remote_addr: info.remote_addr.map(|a| a.to_string()),
            protocol: protocol_name(info.protocol).to_owned(),
            cert_serial: info.cert_serial.clone(),
            cert_not_after: info.cert_not_after.map(rfc3339),
            in_flight: conn.in_flight(),
        }
    }

    /// A known agent that is not connected: what the store remembers.
    fn offline(record: AgentRecord) -> Self {
        Self {
            agent_id: record.agent_id,
            status: "offline",
            port: record.port,
            last_seen: rfc3339(record.last_seen),
            connected_since: None,
            remote_addr: record.last_remote_addr,
            protocol: record.protocol,
            cert_serial: None,
            cert_not_after: None,
            in_flight: 0,
        }
    }
}

#[derive(Serialize)]
pub struct AgentList {
    agents: Vec<AgentView>,
    count: usize,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

pub async fn list(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<AgentList>, ApiError> {
    let online = state.registry.list();
    let mut agents: Vec<AgentView> = online.iter().map(AgentView::online).collect();
    if q.all {
        let connected: HashSet<String> = online
            .iter()
            .map(|r| silo_core::id::normalize_agent_id(&r.conn.info().agent_id))
            .collect();
        let known = state.store.list_agents().await?;
        agents.extend(
            known
                .into_iter()
                .filter(|k| !connected.contains(&silo_core::id::normalize_agent_id(&k.agent_id)))
                .map(AgentView::offline),
        );
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    }
    let count = agents.len();
    Ok(Json(AgentList { agents, count }))
}

/// Forgets a known agent (record and sticky port), disconnecting it if it
/// is online: 204, 404 when neither known nor connected, 400 for an id
/// that cannot exist.
pub async fn forget(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    ClientAddr(addr): ClientAddr,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    silo_core::id::validate_agent_id(&agent_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if !state.forget_agent(&agent_id).await? {
        return Err(ApiError::NotFound(format!("unknown agent {agent_id:?}")));
    }
    info!(%agent_id, actor = %admin.actor(), "agent forgotten");
    let event = NewAuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: admin.actor(),
        action: "agent.forgotten".into(),
        agent_id: Some(agent_id),
        remote_addr: Some(addr.to_string()),
        detail: "record and sticky port removed".into(),
    };
    if let Err(e) = state.store.append_audit_event(&event).await {
        warn!("cannot audit a forgotten agent: {e}");
    }
    Ok(StatusCode::NO_CONTENT)
}
