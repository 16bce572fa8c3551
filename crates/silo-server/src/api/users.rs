//! `/users/me` (any logged-in user) and the admin's `/users` endpoints.

use super::accounts::{UserCreated, UserView, create_user};
use super::auth::{Admin, AuthUser};
use super::error::ApiError;
use super::extract::{Json, Query};
use crate::accounts::parse_role;
use crate::state::ServerState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json as JsonReply};
use serde::{Deserialize, Serialize};
use silo_store::{Role, User};
use std::sync::Arc;
use tracing::info;

pub const DEFAULT_PAGE_SIZE: i64 = 20;
pub const MAX_PAGE_SIZE: i64 = 100;

pub async fn me(AuthUser(user): AuthUser) -> JsonReply<UserView> {
    JsonReply(user.into())
}

pub async fn delete_me(
    State(state): State<Arc<ServerState>>,
    AuthUser(user): AuthUser,
) -> Result<StatusCode, ApiError> {
    delete(&state, &user, &format!("user:{}", user.username)).await
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<i64>,
    page_size: Option<i64>,
}

#[derive(Serialize)]
pub struct UserPage {
    users: Vec<UserView>,
    total: u64,
    page: u32,
    page_size: u32,
}

pub async fn list(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<PageQuery>,
) -> Result<JsonReply<UserPage>, ApiError> {
    let page = q.page.unwrap_or(1);
    let page = u32::try_from(page)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| ApiError::BadRequest("page must be at least 1".into()))?;
    let page_size = q.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
        return Err(ApiError::BadRequest(format!(
            "page_size must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    let page_size = page_size as u32;
    let (users, total) = state.store.list_users(page, page_size).await?;
    Ok(JsonReply(UserPage {
        users: users.into_iter().map(UserView::from).collect(),
        total,
        page,
        page_size,
    }))
}

#[derive(Deserialize)]
pub struct NewUserRequest {
    username: String,
    password: String,
    /// `Admin` or `User` (the default).
    role: Option<String>,
}

pub async fn create(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    Json(body): Json<NewUserRequest>,
) -> Result<(StatusCode, JsonReply<UserCreated>), ApiError> {
    let role = match body.role.as_deref() {
        None => Role::User,
        Some(r) => parse_role(r).map_err(ApiError::BadRequest)?,
    };
    let created = create_user(&state, body.username, body.password, role).await?;
    info!(actor = %admin.actor(), "account created by an administrator");
    Ok(created)
}

pub async fn remove(
    State(state): State<Arc<ServerState>>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("invalid user id {id:?}")))?;
    let not_found = || ApiError::NotFound("user not found".into());
    let user = state.store.get_user(id).await?.ok_or_else(not_found)?;
    delete(&state, &user, &admin.actor()).await
}

/// Deletes an account, refusing the last Admin: without it (and without
/// an admin key) nobody could ever administer the server again.
async fn delete(state: &ServerState, user: &User, actor: &str) -> Result<StatusCode, ApiError> {
    if user.role == Role::Admin && state.store.count_admins().await? <= 1 {
        return Err(ApiError::Conflict("cannot delete the last admin".into()));
    }
    if !state.store.delete_user(user.id).await? {
        return Err(ApiError::NotFound("user not found".into()));
    }
    info!(user_id = user.id, username = %user.username, %actor, "account deleted");
    Ok(StatusCode::NO_CONTENT)
}
