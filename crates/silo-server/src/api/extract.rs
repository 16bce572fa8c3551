//! Extractors whose failures are `ApiError`s, so a client gets the same
//! `{"error": ...}` body from a malformed request as from any other error.
//!
//! - [`Json`]: a body capped at `http.max_json_bytes` (413), parsed without
//!   insisting on a `Content-Type` (the original clients do not always
//!   send one); syntax and type errors are 400 naming the field.
//! - [`Query`]: a query string, 400 naming the parameter.
//! - [`ClientAddr`]: the client address per `http.trusted_proxies`.

use super::error::ApiError;
use crate::state::ServerState;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// A JSON request body.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<ServerState>> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<ServerState>) -> Result<Self, ApiError> {
        let limit = usize::try_from(state.config.http.max_json_bytes).unwrap_or(usize::MAX);
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let body = Limited::new(req.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<LengthLimitError>().is_some() {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::BadRequest("cannot read the request body".into())
                }
            })?
            .to_bytes();
        parse(&body).map(Json)
    }
}

/// Parses a JSON body; errors name the offending field when there is one.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object".into(),
        ));
    }
    axum::Json::<T>::from_bytes(body)
        .map(|axum::Json(v)| v)
        .map_err(|rejection| {
            let why = match &rejection {
                JsonRejection::JsonDataError(e) => cause(e),
                JsonRejection::JsonSyntaxError(e) => cause(e),
                other => other.body_text(),
            };
            ApiError::BadRequest(format!("invalid JSON body: {why}"))
        })
}

/// The serde message beneath axum's generic rejection text, e.g.
/// `password: invalid type: integer `5`, expected a string at line 1 column 14`.
fn cause(e: &dyn std::error::Error) -> String {
    e.source()
        .map_or_else(|| e.to_string(), ToString::to_string)
}

/// A query string.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|rejection| {
                let why = match &rejection {
                    QueryRejection::FailedToDeserializeQueryString(e) => cause(e),
                    other => other.body_text(),
                };
                ApiError::BadRequest(format!("invalid query string: {why}"))
            })
    }
}

/// The client's address: the TCP peer, or what a trusted proxy says.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<Arc<ServerState>> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ServerState>,
    ) -> Result<Self, ApiError> {
        // Absent only when the router is driven without a socket (tests
        // calling it directly); such requests all share one address.
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
        Ok(ClientAddr(
            state.trusted_proxies.client_addr(peer, &parts.headers),
        ))
    }
}
