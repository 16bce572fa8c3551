//! The legacy tunnel service (`/proxy.ProxyService/Stream`), so deployed
//! agents of the Go implementation keep working against this server.
//!
//! A legacy connection is one bidirectional stream of `ProxyMessage`s. It
//! becomes an [`AgentConnection`] like a native session, so routing, ports,
//! listing and shutdown treat both protocols alike; only the exchange is
//! different (whole bodies in one message, see [`exchange`]).
//!
//! # Layout
//! - this file: accepting a stream (first `PING`, identity), `PONG`s,
//!   stale eviction and teardown.
//! - [`session`]: per-connection state and the requests awaiting answers.
//! - [`exchange`]: HTTP request → `REQUEST`, `RESPONSE` → HTTP response.

mod exchange;
pub mod session;

use crate::agent::{AgentConnection, AgentInfo, CloseReason, Protocol};
use crate::state::ServerState;
use crate::tls::identity;
use futures_util::{Stream, StreamExt, future, stream};
use session::{LegacySession, LegacySettings};
use silo_proto::legacy::proxy_service_server::{ProxyService, ProxyServiceServer};
use silo_proto::legacy::{MessageType, ProxyMessage};
use silo_proto::legacy_meta as meta;
use silo_proto::limits::HELLO_TIMEOUT;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

/// Messages queued for one agent; a `REQUEST` waits for room, so a slow
/// agent holds its own users back, never the server.
const OUTBOUND_QUEUE: usize = 64;

/// Room for the metadata (method, path, headers) around a body at its cap
/// in one gRPC message.
const METADATA_ALLOWANCE: usize = 1024 * 1024;

pub struct LegacyService {
    state: Arc<ServerState>,
    settings: Arc<LegacySettings>,
}

impl LegacyService {
    pub fn new(state: Arc<ServerState>) -> Self {
        let config = &state.config;
        // `proxy.max_request_body_bytes` applies to every agent; the legacy
        // cap bounds what is buffered for the legacy ones.
        let mut max_request = config.grpc.legacy.max_request_body_bytes;
        if config.proxy.max_request_body_bytes > 0 {
            max_request = max_request.min(config.proxy.max_request_body_bytes);
        }
        let settings = Arc::new(LegacySettings {
            request_timeout: config.request_timeout(),
            idle_timeout: config.idle_timeout(),
            max_request_body_bytes: max_request,
            max_response_body_bytes: config.grpc.legacy.max_response_body_bytes,
        });
        Self { state, settings }
    }

    /// With TLS and `client_auth: require` every agent must present a
    /// certificate (same rule as the native protocol).
    fn certificate_required(&self) -> bool {
        let tls = &self.state.config.grpc.tls;
        tls.enabled && tls.client_auth == "require"
    }

    /// The gRPC service, its message limits raised to the body caps: a
    /// `REQUEST` carries a whole request body, a `RESPONSE` a whole
    /// response body. A response over its cap but within the message limit
    /// fails only its own exchange (502); a bigger message ends the stream.
    pub fn server(state: Arc<ServerState>) -> ProxyServiceServer<Self> {
        let service = Self::new(state);
        let limit = |cap: u64| {
            usize::try_from(cap)
                .unwrap_or(usize::MAX)
                .saturating_add(METADATA_ALLOWANCE)
        };
        let (decode, encode) = (
            limit(service.settings.max_response_body_bytes),
            limit(service.settings.max_request_body_bytes),
        );
        ProxyServiceServer::new(service)
            .max_decoding_message_size(decode)
            .max_encoding_message_size(encode)
    }
}

/// The agent id of the first message, which must be a `PING` carrying it.
async fn read_first_ping(inbound: &mut Streaming<ProxyMessage>) -> Result<String, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no PING within 10 seconds"))??
        .ok_or_else(|| Status::cancelled("stream closed before the first PING"))?;
    if first.r#type != MessageType::Ping as i32 {
        return Err(Status::invalid_argument(
            "the first message must be a PING with metadata agent_id",
        ));
    }
    let agent_id = first
        .metadata
        .get(meta::AGENT_ID)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| Status::invalid_argument("the first PING has no metadata agent_id"))?;
    silo_core::id::validate_agent_id(agent_id)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(agent_id.clone())
}

fn pong() -> Result<ProxyMessage, Status> {
    Ok(ProxyMessage {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: MessageType::Pong as i32,
        ..Default::default()
    })
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<ProxyMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl ProxyService for LegacyService {
    type StreamStream = MessageStream;

    async fn stream(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let remote_addr = request.remote_addr();
        // The verified client certificate, when TLS is on: the agent is
        // its certificate, the id in the first PING only has to agree.
        let peer = identity::peer_identity(&request)?;
        let mut inbound = request.into_inner();
        let claimed = read_first_ping(&mut inbound).await?;
        let agent_id = match identity::resolve_agent_id(
            &claimed,
            peer.as_ref(),
            self.certificate_required(),
        ) {
            Ok(id) => id,
            Err(status) => {
                self.state
                    .audit_rejection(&claimed, peer.as_ref(), remote_addr, &status)
                    .await;
                return Err(status);
            }
        };
        if self.state.shutdown.is_cancelled() {
            return Err(Status::unavailable("server shutting down"));
        }
        let info = AgentInfo {
            agent_id: agent_id.clone(),
            session_id: uuid::Uuid::new_v4().to_string(),
            protocol: Protocol::Legacy,
            connected_since: OffsetDateTime::now_utc(),
            remote_addr,
            // The legacy protocol does not say which version an agent runs.
            agent_version: String::new(),
            cert_serial: peer.as_ref().map(|p| p.serial_hex.clone()),
            cert_not_after: peer.as_ref().map(|p| p.not_after),
            meters: Arc::new(crate::metrics::AgentMeters::new(&agent_id)),
        };
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let session = Arc::new(LegacySession::new(
            info,
            self.settings.clone(),
            tx.clone(),
            self.state.in_flight.clone(),
        ));
        let span = info_span!("legacy_session", agent_id = %agent_id, session = %&session.info.session_id[..8]);
        let port = match self.state.attach(session.clone()).await {
            Ok(port) => port,
            Err(e) => {
                warn!(parent: &span, remote = ?remote_addr, "legacy agent refused: {e}");
                return Err(e.to_status());
            }
        };
        info!(parent: &span, remote = ?remote_addr, ?port, "legacy agent connected");
        // The first PING is answered like every other one. The queue is
        // fresh, so this does not wait.
        let _ = tx.try_send(pong());

        let stale_after = Duration::from_secs(self.state.config.grpc.stale_after_seconds);
        let state = self.state.clone();
        let ended = tokio_util::sync::CancellationToken::new();
        let task_session = session.clone();
        let task_ended = ended.clone();
        tokio::spawn(
            async move {
                let session = task_session;
                run_session(&session, inbound, stale_after).await;
                let reason = session.liveness.close_reason();
                session.end();
                // The agent's stream ends now, not after the store writes.
                task_ended.cancel();
                // Also audits and records last_seen in the store.
                state.detach(&session.info).await;
                info!(
                    reason = reason.map_or("agent disconnected", |r| r.as_str()),
                    "legacy session ended"
                );
            }
            .instrument(span),
        );

        // The session keeps a sender for its requests, so the queue alone
        // never ends: the stream ends when the session does, with a status
        // saying why when the server ended it.
        let last = stream::once(async move { session.liveness.close_reason() })
            .filter_map(|reason| future::ready(reason.map(|r| Err(end_status(r)))));
        let messages = ReceiverStream::new(rx)
            .take_until(ended.cancelled_owned())
            .chain(last);
        Ok(Response::new(Box::pin(messages)))
    }
}

fn end_status(reason: CloseReason) -> Status {
    Status::unavailable(reason.as_str())
}

/// Reads the agent's messages until it leaves, goes silent for
/// `stale_after`, or the session is closed.
async fn run_session(
    session: &LegacySession,
    mut inbound: Streaming<ProxyMessage>,
    stale_after: Duration,
) {
    let mut check = tokio::time::interval(stale_after / 4);
    loop {
        tokio::select! {
            _ = session.liveness.cancel.cancelled() => return,
            m = inbound.message() => match m {
                Ok(Some(msg)) => {
                    session.liveness.touch();
                    match MessageType::try_from(msg.r#type) {
                        Ok(MessageType::Ping) => {
                            let sent = tokio::select! {
                                r = session.outbound.send(pong()) => r.is_ok(),
                                _ = session.liveness.cancel.cancelled() => false,
                            };
                            if !sent {
                                return;
                            }
                        }
                        Ok(MessageType::Response) => {
                            if !session.complete(msg) {
                                debug!("RESPONSE for an unknown or abandoned request");
                            }
                        }
                        other => debug!(?other, "ignoring an unexpected message"),
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    debug!("stream failed: {}", status.message());
                    return;
                }
            },
            _ = check.tick() => {
                if session.liveness.idle_for() > stale_after {
                    warn!("silent for {stale_after:?}; evicting the agent");
                    session.close(CloseReason::Stale);
                }
            }
        }
    }
}
