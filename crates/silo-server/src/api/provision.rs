//! Provision keys (admin) and `POST /api/v1/provision` (the key itself
//! authenticates): api.md "Provisioning". The logic is in
//! [`crate::provision`]; this file maps HTTP onto it.

use super::auth::Admin;
use super::error::ApiError;
use super::extract::{ClientAddr, Json, Query};
use crate::provision::issue::{self, Provisioned};
use crate::provision::keys::{self, CreatedKey, KeyView};
use crate::provision::{Ctx, ProvisionError, Settings};
use crate::state::ServerState;
use axum::extract::{FromRequest, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Extension, Router};
use serde::{Deserialize, Serialize};
use silo_pki::LocalCaSigner;
use std::sync::Arc;
use time::OffsetDateTime;

/// Admin-only routes; the caller adds the admin middleware.
pub fn admin_routes() -> Router<Arc<ServerState>> {
    Router::new()
        .route("/api/v1/provision-keys", post(create_key).get(list_keys))
        .route("/api/v1/provision-keys/{agent_id}", delete(revoke_keys))
}

/// Routes without admin authentication.
pub fn public_routes() -> Router<Arc<ServerState>> {
    Router::new().route("/api/v1/provision", post(provision))
}

/// What one request needs from the state: the settings and the CA signer
/// (absent when TLS is off).
pub(super) struct Provisioning {
    pub settings: Settings,
    signer: Option<Arc<LocalCaSigner>>,
}

impl Provisioning {
    pub(super) fn of(state: &ServerState) -> Self {
        Self {
            settings: Settings::from_config(&state.config),
            signer: state.tls.as_ref().map(|t| t.pki.signer()),
        }
    }

    pub(super) fn ctx<'a>(&'a self, state: &'a ServerState) -> Ctx<'a> {
        Ctx {
            store: &state.store,
            signer: self
                .signer
                .as_deref()
                .map(|s| s as &dyn silo_pki::CertSigner),
            settings: &self.settings,
        }
    }

    /// Key creation and provisioning answer 404 when `provision.enabled`
    /// is false (the original registered no routes then); without TLS the
    /// compat 400 comes first.
    fn require_enabled(&self) -> Result<(), ApiError> {
        if self.signer.is_some() && !self.settings.enabled {
            return Err(ApiError::NotFound(
                "provisioning is disabled on this server".into(),
            ));
        }
        Ok(())
    }
}

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        match e {
            ProvisionError::BadRequest(m) => ApiError::BadRequest(m),
            ProvisionError::Unauthorized(m) => ApiError::Unauthorized(m),
            ProvisionError::NotFound(m) => ApiError::NotFound(m),
            ProvisionError::Conflict(m) => ApiError::Conflict(m),
            ProvisionError::Store(e) => e.into(),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

#[derive(Deserialize)]
pub struct CreateKeyBody {
    agent_id: String,
    ttl_hours: Option<i64>,
    ttl_seconds: Option<i64>,
}

async fn create_key(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<CreateKeyBody>,
) -> Result<(StatusCode, axum::Json<CreatedKey>), ApiError> {
    let p = Provisioning::of(&state);
    p.require_enabled()?;
    let ttl = keys::resolve_ttl(body.ttl_hours, body.ttl_seconds, p.settings.key_ttl)?;
    let created = keys::create_key(
        p.ctx(&state),
        &body.agent_id,
        ttl,
        &admin.actor(),
        Some(addr.to_string()),
        OffsetDateTime::now_utc(),
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    all: bool,
}

#[derive(Serialize)]
pub struct KeyList {
    keys: Vec<KeyView>,
    count: usize,
}

async fn list_keys(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<ListQuery>,
) -> Result<axum::Json<KeyList>, ApiError> {
    let p = Provisioning::of(&state);
    let keys = keys::list_keys(p.ctx(&state), q.all, OffsetDateTime::now_utc()).await?;
    let count = keys.len();
    Ok(axum::Json(KeyList { keys, count }))
}

async fn revoke_keys(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    ClientAddr(addr): ClientAddr,
    Path(agent_id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let p = Provisioning::of(&state);
    let revoked = keys::revoke_keys(
        p.ctx(&state),
        &agent_id,
        &admin.actor(),
        Some(addr.to_string()),
        OffsetDateTime::now_utc(),
    )
    .await?;
    Ok(axum::Json(serde_json::json!({
        "message": "Provision keys revoked",
        "revoked": revoked,
    })))
}

#[derive(Deserialize)]
pub struct ProvisionBody {
    key: String,
    csr: Option<String>,
}

/// Failed attempts are counted per client address from the moment they
/// start (a parallel burst is limited too); a success is not counted.
async fn provision(
    state: State<Arc<ServerState>>,
    addr: ClientAddr,
    req: axum::extract::Request,
) -> Result<axum::Json<Provisioned>, ApiError> {
    let result = provision_inner(state, addr, req).await;
    crate::metrics::provision_outcome(match &result {
        Ok(p) if p.replayed => "replayed",
        Ok(_) => "succeeded",
        Err(e) => match e.status().as_u16() {
            400 | 413 => "invalid_request",
            401 => "rejected_key",
            429 => "rate_limited",
            503 => "unavailable",
            _ => "error",
        },
    });
    result
}

async fn provision_inner(
    State(state): State<Arc<ServerState>>,
    ClientAddr(addr): ClientAddr,
    req: axum::extract::Request,
) -> Result<axum::Json<Provisioned>, ApiError> {
    let attempt = state.provision_limiter.begin(addr).inspect_err(|retry| {
        tracing::warn!(client = %addr, retry_after = retry.secs(), "provisioning rate limited");
    })?;
    // Parsed after the limiter so malformed bodies count as failures too.
    let Json(body) = Json::<ProvisionBody>::from_request(req, &state).await?;
    let p = Provisioning::of(&state);
    p.require_enabled()?;
    let now = OffsetDateTime::now_utc();
    let provisioned =
        issue::provision(p.ctx(&state), &body.key, body.csr.as_deref(), addr, now).await?;
    attempt.succeeded();
    if !provisioned.replayed {
        // Older certificates were revoked: refuse them at the next
        // handshake and drop a session that still uses one.
        state.apply_revocation(&provisioned.agent_id).await;
    }
    Ok(axum::Json(provisioned))
}
