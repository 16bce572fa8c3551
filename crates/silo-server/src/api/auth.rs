//! Who is calling.
//!
//! - [`require_admin`]: the middleware of every admin endpoint: the
//!   `X-API-Key` (compared in constant time) or the bearer token of a user
//!   whose role is Admin *now* — tokens are checked against the store on
//!   every request, so deleting or demoting a user takes effect at once.
//! - [`AuthUser`]: the extractor of endpoints any logged-in user may call.
//!
//! Statuses and messages are the original implementation's (api.md).

use super::error::ApiError;
use crate::accounts::claims_match;
use crate::state::ServerState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use silo_store::{Role, User};
use std::sync::Arc;
use subtle::ConstantTimeEq;

const BAD_HEADER: ApiError = ApiError::Unauthorized("missing or invalid authorization header");
const BAD_TOKEN: ApiError = ApiError::Unauthorized("invalid token");

/// Who passed the admin check; handlers find it in the request extensions
/// (`Extension<Admin>`), e.g. to name the actor in audit events.
#[derive(Clone, Debug)]
pub enum Admin {
    ApiKey,
    User(User),
}

impl Admin {
    /// `admin-key` or `user:<name>`, for audit records and logs.
    pub fn actor(&self) -> String {
        match self {
            Self::ApiKey => "admin-key".into(),
            Self::User(u) => format!("user:{}", u.username),
        }
    }
}

pub async fn require_admin(
    State(state): State<Arc<ServerState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let admin = authenticate_admin(&state, req.headers()).await?;
    req.extensions_mut().insert(admin);
    Ok(next.run(req).await)
}

/// The admin check itself, for callers outside the middleware.
pub async fn authenticate_admin(
    state: &ServerState,
    headers: &HeaderMap,
) -> Result<Admin, ApiError> {
    let configured = state.admin_api_key.as_deref();
    if let (Some(given), Some(expected)) = (headers.get("x-api-key"), configured) {
        return if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            Ok(Admin::ApiKey)
        } else {
            Err(ApiError::Unauthorized("Invalid API key"))
        };
    }
    if headers.contains_key(http::header::AUTHORIZATION) {
        let user = bearer_user(state, headers).await?;
        return if user.role == Role::Admin {
            Ok(Admin::User(user))
        } else {
            Err(ApiError::Forbidden)
        };
    }
    if configured.is_none() {
        return Err(ApiError::Unavailable("Admin API is not configured"));
    }
    Err(ApiError::Unauthorized("Missing API key"))
}

/// A logged-in user (any role), from `Authorization: Bearer <token>`.
#[derive(Clone, Debug)]
pub struct AuthUser(pub User);

impl FromRequestParts<Arc<ServerState>> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        bearer_user(state, &parts.headers).await.map(AuthUser)
    }
}

/// The current account behind the request's bearer token.
async fn bearer_user(state: &ServerState, headers: &HeaderMap) -> Result<User, ApiError> {
    let token = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            let token = token.trim();
            (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
        })
        .ok_or(BAD_HEADER)?;
    let claims = state.tokens.verify(token).ok_or(BAD_TOKEN)?;
    match state.store.get_user(claims.user_id).await? {
        Some(user) if claims_match(&claims, &user) => Ok(user),
        _ => Err(BAD_TOKEN),
    }
}
