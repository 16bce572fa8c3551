//! The API / admin listener.
//!
//! # Layout
//! - [`error`]: `ApiError`, the one place statuses and messages are decided.
//! - [`auth`]: the admin middleware.
//! - this file: the router and the handlers.

pub mod auth;
pub mod error;

use crate::agent::AgentConnection;
use crate::state::ServerState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router, middleware};
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub fn router(state: Arc<ServerState>) -> Router {
    let admin = Router::new()
        .route("/agents", get(list_agents))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(admin)
        .fallback(|| async { error::ApiError::NotFound("not found".into()) })
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[derive(Serialize)]
struct AgentView {
    agent_id: String,
    status: &'static str,
    port: Option<u16>,
    last_seen: String,
    connected_since: String,
    remote_addr: Option<String>,
    protocol: crate::agent::Protocol,
    cert_serial: Option<String>,
    cert_not_after: Option<String>,
    in_flight: usize,
}

#[derive(Serialize)]
struct AgentList {
    agents: Vec<AgentView>,
    count: usize,
}

async fn list_agents(State(state): State<Arc<ServerState>>) -> Json<AgentList> {
    let agents: Vec<AgentView> = state
        .registry
        .list()
        .into_iter()
        .map(|r| {
            let conn: &dyn AgentConnection = r.conn.as_ref();
            let info = conn.info();
            AgentView {
                agent_id: info.agent_id.clone(),
                status: "online",
                port: r.port,
                last_seen: rfc3339(conn.last_seen()),
                connected_since: rfc3339(info.connected_since),
                remote_addr: info.remote_addr.map(|a| a.to_string()),
                protocol: info.protocol,
                cert_serial: info.cert_serial.clone(),
                cert_not_after: info.cert_not_after.map(rfc3339),
                in_flight: conn.in_flight(),
            }
        })
        .collect();
    let count = agents.len();
    Json(AgentList { agents, count })
}
