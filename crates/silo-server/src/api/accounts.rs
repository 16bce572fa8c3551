//! `POST /auth/register` and `POST /auth/login` (compat), and account
//! creation shared with `POST /users`.

use super::error::ApiError;
use super::extract::{ClientAddr, Json};
use crate::accounts::{validate_password, validate_username};
use crate::state::ServerState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use silo_store::{NewAuditEvent, NewUser, Role, User};
use std::net::IpAddr;
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::{debug, info, warn};

/// Usernames are cut to this many characters in logs and audit records:
/// a failed login may carry any string.
const LOGGED_NAME_CHARS: usize = 255;

#[derive(Deserialize)]
pub struct Credentials {
    username: String,
    password: String,
}

/// The answer to register and `POST /users`.
#[derive(Serialize)]
pub struct UserCreated {
    id: i64,
    username: String,
    role: &'static str,
}

#[derive(Serialize)]
pub struct TokenReply {
    token: String,
}

pub async fn register(
    State(state): State<Arc<ServerState>>,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, axum::Json<UserCreated>), ApiError> {
    if !state.config.auth.allow_registration {
        return Err(ApiError::Refused("registration is disabled".into()));
    }
    create_user(&state, body.username, body.password, Role::User).await
}

/// Validates, hashes and stores a new account: 201, 400 or 409.
pub async fn create_user(
    state: &ServerState,
    username: String,
    password: String,
    role: Role,
) -> Result<(StatusCode, axum::Json<UserCreated>), ApiError> {
    validate_username(&username).map_err(ApiError::BadRequest)?;
    validate_password(&password).map_err(ApiError::BadRequest)?;
    let password_hash = state
        .passwords
        .hash(password)
        .await
        .map_err(ApiError::Internal)?;
    let user = state
        .store
        .create_user(&NewUser {
            username,
            password_hash,
            role,
            created_at: OffsetDateTime::now_utc(),
        })
        .await?;
    info!(user_id = user.id, username = %user.username, role = %user.role, "account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(UserCreated {
            id: user.id,
            username: user.username,
            role: user.role.as_str(),
        }),
    ))
}

pub async fn login(
    State(state): State<Arc<ServerState>>,
    ClientAddr(addr): ClientAddr,
    Json(body): Json<Credentials>,
) -> Result<axum::Json<TokenReply>, ApiError> {
    // Checked before any hashing: the limit exists to keep Argon2 from
    // being a denial of service.
    let attempt = state.login_limiter.begin(addr).map_err(|retry| {
        debug!(%addr, "login refused: too many failures from this address");
        ApiError::from(retry)
    })?;
    let user = state.store.get_user_by_username(&body.username).await?;
    let valid = match &user {
        Some(u) => {
            let hash = u.password_hash.clone();
            state.passwords.verify(body.password, hash).await
        }
        None => state.passwords.verify_unknown_user(body.password).await,
    }
    .map_err(ApiError::Internal)?;
    match user {
        Some(user) if valid => {
            attempt.succeeded();
            let token = state.tokens.issue(&user).map_err(ApiError::Internal)?;
            debug!(user_id = user.id, "login");
            Ok(axum::Json(TokenReply { token }))
        }
        _ => {
            // `attempt` is dropped here, which counts the failure.
            login_failed(&state, addr, &body.username).await;
            Err(ApiError::Unauthorized("invalid credentials"))
        }
    }
}

/// Logs and audits a failed login (best effort: the answer is 401 either
/// way). Bounded by the failure limit, so the audit trail cannot be
/// flooded through here.
async fn login_failed(state: &ServerState, addr: IpAddr, username: &str) {
    let name: String = username.chars().take(LOGGED_NAME_CHARS).collect();
    info!(%addr, username = ?name, "failed login");
    let event = NewAuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: format!("user:{name}"),
        action: "auth.login_failed".into(),
        agent_id: None,
        remote_addr: Some(addr.to_string()),
        detail: "invalid credentials".into(),
    };
    if let Err(e) = state.store.append_audit_event(&event).await {
        warn!("cannot audit a failed login: {e}");
    }
}

/// `{id, username, role, created_at}`.
#[derive(Serialize)]
pub struct UserView {
    id: i64,
    username: String,
    role: &'static str,
    created_at: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            role: u.role.as_str(),
            created_at: super::rfc3339(u.created_at),
        }
    }
}
