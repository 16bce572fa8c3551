//! Agent certificates and the audit trail (api.md "Agents and
//! certificates", "Audit"): the legacy zip endpoints, revocation, the
//! certificate registry and audit listings. All admin-only.

use super::auth::Admin;
use super::error::ApiError;
use super::extract::{ClientAddr, Query};
use super::provision::Provisioning;
use super::rfc3339;
use crate::provision::check_agent_id;
use crate::provision::legacy::{self, Bundle, RevokedAgent};
use crate::state::ServerState;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;

/// Admin-only routes; the caller adds the admin middleware.
pub fn admin_routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route(
            "/agents/{id}/certificate",
            post(create_bundle).get(get_bundle).delete(revoke),
        )
        .route("/api/v1/certificates", get(list_certificates))
        .route("/api/v1/audit", get(list_audit))
}

fn zip_response(status: StatusCode, bundle: Bundle) -> Response {
    let disposition = format!("attachment; filename=\"{}\"", bundle.file_name);
    (
        status,
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        bundle.zip,
    )
        .into_response()
}

async fn create_bundle(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    ClientAddr(addr): ClientAddr,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let p = Provisioning::of(&state);
    let now = OffsetDateTime::now_utc();
    let bundle = legacy::create_bundle(
        p.ctx(&state),
        &agent_id,
        &admin.actor(),
        Some(addr.to_string()),
        now,
    )
    .await?;
    Ok(zip_response(StatusCode::CREATED, bundle))
}

async fn get_bundle(
    State(state): State<Arc<ServerState>>,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let p = Provisioning::of(&state);
    let bundle = legacy::read_bundle(p.ctx(&state), &agent_id, OffsetDateTime::now_utc()).await?;
    Ok(zip_response(StatusCode::OK, bundle))
}

async fn revoke(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    ClientAddr(addr): ClientAddr,
    Path(agent_id): Path<String>,
) -> Result<Json<RevokedAgent>, ApiError> {
    check_agent_id(&agent_id)?;
    let p = Provisioning::of(&state);
    let connected = state.registry.get(&agent_id).is_some();
    let out = legacy::revoke_agent(
        p.ctx(&state),
        &agent_id,
        connected,
        &admin.actor(),
        Some(addr.to_string()),
        OffsetDateTime::now_utc(),
    )
    .await?;
    // Refuse the next handshake and cut the live session now.
    state.apply_revocation(&agent_id).await;
    Ok(Json(out))
}

#[derive(Deserialize)]
pub struct AgentFilter {
    agent_id: Option<String>,
    limit: Option<u32>,
}

impl AgentFilter {
    fn agent(&self) -> Result<Option<&str>, ApiError> {
        match self.agent_id.as_deref() {
            None | Some("") => Ok(None),
            Some(id) => {
                check_agent_id(id)?;
                Ok(Some(id))
            }
        }
    }
}

#[derive(Serialize)]
pub struct CertificateView {
    serial: String,
    agent_id: String,
    not_before: String,
    not_after: String,
    sha256: String,
    source: String,
    revoked_at: Option<String>,
}

#[derive(Serialize)]
pub struct CertificateList {
    certificates: Vec<CertificateView>,
    count: usize,
}

async fn list_certificates(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<AgentFilter>,
) -> Result<Json<CertificateList>, ApiError> {
    let records = state.store.list_certificates(q.agent()?).await?;
    let certificates: Vec<CertificateView> = records
        .into_iter()
        .map(|c| CertificateView {
            serial: c.serial,
            agent_id: c.agent_id,
            not_before: rfc3339(c.not_before),
            not_after: rfc3339(c.not_after),
            sha256: c.sha256,
            source: c.source,
            revoked_at: c.revoked_at.map(rfc3339),
        })
        .collect();
    let count = certificates.len();
    Ok(Json(CertificateList {
        certificates,
        count,
    }))
}

#[derive(Serialize)]
pub struct AuditView {
    id: i64,
    at: String,
    actor: String,
    action: String,
    agent_id: Option<String>,
    remote_addr: Option<String>,
    detail: String,
}

#[derive(Serialize)]
pub struct AuditList {
    events: Vec<AuditView>,
    count: usize,
}

async fn list_audit(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<AgentFilter>,
) -> Result<Json<AuditList>, ApiError> {
    let max = silo_store::MAX_AUDIT_LIMIT;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {max}"
        )));
    }
    let rows = state.store.list_audit_events(q.agent()?, limit).await?;
    let events: Vec<AuditView> = rows
        .into_iter()
        .map(|e| AuditView {
            id: e.id,
            at: rfc3339(e.at),
            actor: e.actor,
            action: e.action,
            agent_id: e.agent_id,
            remote_addr: e.remote_addr,
            detail: e.detail,
        })
        .collect();
    let count = events.len();
    Ok(Json(AuditList { events, count }))
}
