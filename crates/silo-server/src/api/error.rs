//! The one error type of the HTTP API: a status, a safe message for the
//! client, and the real cause for the log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("forbidden")]
    Forbidden,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    Unavailable(&'static str),
    /// 403 with a message of its own (the bare `forbidden` is compat).
    #[error("{0}")]
    Refused(String),
    /// 429 with `Retry-After`: a per-address failure limit was reached.
    #[error("too many failed attempts from this address; retry later")]
    TooManyRequests { retry_after_secs: u64 },
    /// Anything unexpected: logged in full, answered as a bare 500.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Refused(_) => StatusCode::FORBIDDEN,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            // `?cause` too: store errors keep the driver's message in the
            // source, not in their safe Display.
            tracing::error!(error = %cause, detail = ?cause, "internal error answering an API request");
        }
        let body = Json(serde_json::json!({ "error": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        if let Self::TooManyRequests { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, retry_after_secs.into());
        }
        response
    }
}

impl From<crate::ratelimit::RetryAfter> for ApiError {
    fn from(retry: crate::ratelimit::RetryAfter) -> Self {
        Self::TooManyRequests {
            retry_after_secs: retry.secs(),
        }
    }
}

/// Store failures: conflicts and missing records are the client's answer;
/// an unreachable database is 503 (retry later); anything else is a bug
/// or corruption, logged in full and answered 500.
impl From<silo_store::StoreError> for ApiError {
    fn from(e: silo_store::StoreError) -> Self {
        use silo_store::StoreError;
        match e {
            StoreError::Conflict(message) => Self::Conflict(message),
            StoreError::NotFound => Self::NotFound("not found".into()),
            e if e.is_unavailable() => {
                crate::metrics::store_error();
                tracing::warn!(error = %e, cause = ?std::error::Error::source(&e), "store unavailable");
                Self::Unavailable("database unavailable")
            }
            e => {
                crate::metrics::store_error();
                Self::Internal(Box::new(e))
            }
        }
    }
}
