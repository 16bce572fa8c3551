//! Admin authentication: `X-API-Key`, compared in constant time.
//! (JWT logins for accounts with roles join here with the store.)

use super::error::ApiError;
use crate::state::ServerState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub async fn require_admin(
    State(state): State<Arc<ServerState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(expected) = state.admin_api_key.as_deref() else {
        return Err(ApiError::Unavailable("Admin API is not configured"));
    };
    let Some(given) = req.headers().get("x-api-key") else {
        return Err(ApiError::Unauthorized("Missing API key"));
    };
    if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(ApiError::Unauthorized("Invalid API key"));
    }
    Ok(next.run(req).await)
}
