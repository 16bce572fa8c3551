//! What the rest of the server sees of a connected agent, whatever protocol
//! it speaks: something that can carry HTTP exchanges.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use time::OffsetDateTime;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of a proxied response: streamed from the agent.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Native,
    Legacy,
}

/// Facts about one agent connection, fixed when it is accepted.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub agent_id: String,
    pub session_id: String,
    pub protocol: Protocol,
    pub connected_since: OffsetDateTime,
    pub remote_addr: Option<SocketAddr>,
    pub agent_version: String,
    pub cert_serial: Option<String>,
    pub cert_not_after: Option<OffsetDateTime>,
    /// The agent's labelled metrics, shared by its exchanges.
    pub meters: std::sync::Arc<crate::metrics::AgentMeters>,
}

/// Why the server ends an agent's session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    Replaced,
    Shutdown,
    Stale,
    Forgotten,
    Revoked,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "replaced by a newer connection of the same agent",
            Self::Shutdown => "server shutting down",
            Self::Stale => "no heartbeat within grpc.stale_after_seconds",
            Self::Forgotten => "agent removed by an administrator",
            Self::Revoked => "agent certificate revoked",
        }
    }
}

/// One user request on its way to an agent.
#[derive(Debug)]
pub struct ProxyRequest {
    /// Method, URI (prefix already stripped), headers as the user sent them.
    pub parts: http::request::Parts,
    pub body: hyper::body::Incoming,
    pub client_addr: SocketAddr,
    pub scheme: &'static str,
    pub host: String,
    /// Set when the user asked for a protocol upgrade (WebSocket).
    pub on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// A connected agent. Implemented by the native and the legacy protocol.
pub trait AgentConnection: Send + Sync + 'static {
    fn info(&self) -> &AgentInfo;
    fn last_seen(&self) -> OffsetDateTime;
    fn in_flight(&self) -> usize;
    /// Carries one exchange to the agent and resolves with the response
    /// head; the body streams afterwards.
    fn forward(
        self: Arc<Self>,
        req: ProxyRequest,
    ) -> BoxFuture<Result<Response<ProxyBody>, ProxyError>>;
    /// Ends the session; exchanges already under way finish on their own.
    fn close(&self, reason: CloseReason);
}

/// Failures of a proxied exchange, each a status and a JSON error for the
/// user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("agent {0:?} is not connected")]
    NotConnected(String),
    #[error("agent {agent:?} did not take the request: {reason}")]
    AgentUnavailable { agent: String, reason: String },
    #[error("{0}")]
    Upstream(String),
    #[error("agent {0:?} sent no response within proxy.request_timeout_seconds")]
    Timeout(String),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    #[error("{0}")]
    BadRequest(String),
    #[error("no agent for this host or path")]
    NoRoute,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotConnected(_) | Self::AgentUnavailable { .. } | Self::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        json_error(self.status(), &self.to_string())
    }
}

/// `{"error": "..."}` with the given status.
pub fn json_error(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": message }).to_string();
    let mut resp = Response::new(full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
