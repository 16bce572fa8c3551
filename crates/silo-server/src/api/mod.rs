//! The API / admin listener.
//!
//! # Layout
//! - [`error`]: `ApiError`, the one place statuses and messages are decided.
//! - [`auth`]: the admin middleware and the logged-in user extractor.
//! - [`extract`]: JSON body, query and client address extractors that
//!   fail with `ApiError`s.
//! - [`accounts`]: register and login; [`users`]: `/users`.
//! - [`agents`]: `GET /agents`, `DELETE /agents/{id}`.
//! - [`provision`]: provision keys and `POST /api/v1/provision`;
//!   [`certs`]: certificate zip/revocation, certificate and audit lists.
//! - this file: the router, health and readiness.

pub mod accounts;
pub mod agents;
pub mod auth;
pub mod certs;
pub mod error;
pub mod extract;
pub mod provision;
pub mod users;

#[cfg(test)]
mod tests;

use crate::state::ServerState;
use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router, middleware};
use std::sync::Arc;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `GET /metrics`: open, admin-only (`metrics.require_admin`) or absent
/// (`metrics.enabled: false`).
fn metrics_route(state: Arc<ServerState>) -> Router<Arc<ServerState>> {
    let cfg = &state.config.metrics;
    if !cfg.enabled {
        return Router::new();
    }
    let route = Router::new().route(
        "/metrics",
        get(|State(state): State<Arc<ServerState>>| async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                crate::metrics::render(&state),
            )
        }),
    );
    if cfg.require_admin {
        route.route_layer(middleware::from_fn_with_state(state, auth::require_admin))
    } else {
        route
    }
}

pub fn router(state: Arc<ServerState>) -> Router {
    let admin = Router::new()
        .route("/agents", get(agents::list))
        .route("/agents/{id}", delete(agents::forget))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{id}", delete(users::remove))
        .merge(provision::admin_routes())
        .merge(certs::admin_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_admin,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(metrics_route(state.clone()))
        .route("/auth/register", post(accounts::register))
        .route("/auth/login", post(accounts::login))
        .route("/users/me", get(users::me).delete(users::delete_me))
        .merge(provision::public_routes())
        .merge(admin)
        .fallback(|| async { error::ApiError::NotFound("not found".into()) })
        .method_not_allowed_fallback(|| async { error::ApiError::MethodNotAllowed })
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// 200 while the store answers; 503 otherwise (load balancers stop
/// sending traffic that would need it).
async fn ready(
    State(state): State<Arc<ServerState>>,
) -> Result<Json<serde_json::Value>, error::ApiError> {
    state.store.ping().await?;
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}
