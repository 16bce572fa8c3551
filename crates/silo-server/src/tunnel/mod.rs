//! The native tunnel service (`silo.tunnel.v1.Tunnel`).
//!
//! # Layout
//! - this file: the gRPC handlers — hello/welcome, heartbeats, stale
//!   eviction and session teardown; standby stream registration.
//! - [`session`]: per-session state and the standby pool.
//! - [`exchange`]: forwarding one HTTP exchange over a standby stream;
//!   [`response`]: its response body and stream reuse; [`upgrade`]: the
//!   byte stream after a `101`.
//! - [`renew`]: certificate renewal authorised by the connection.

mod exchange;
mod outbound;
mod renew;
mod response;
pub mod session;
mod upgrade;

use crate::agent::{AgentConnection, AgentInfo, CloseReason, Protocol};
use crate::state::ServerState;
use crate::tls::identity;
use outbound::{Outbound, OutboundStream};
use session::{AgentCaps, NativeSession, Standby};
use silo_proto::limits::{
    FRAME_QUEUE, HELLO_TIMEOUT, MAX_CHUNK_BYTES, MAX_CONCURRENT_EXCHANGES, MIN_STANDBY_STREAMS,
};
use silo_proto::v1::tunnel_server::Tunnel;
use silo_proto::v1::{
    AgentFrame, AgentMessage, GoAway, Heartbeat, Hello, Limits, RenewRequest, RenewResponse,
    ServerFrame, ServerMessage, Welcome, agent_message, server_message,
};
use silo_proto::{PROTOCOL_VERSION, SESSION_ID_METADATA};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use time::OffsetDateTime;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, info, info_span, warn};

pub struct TunnelService {
    state: Arc<ServerState>,
    sessions: Arc<RwLock<HashMap<String, Arc<NativeSession>>>>,
}

impl TunnelService {
    pub fn new(state: Arc<ServerState>) -> Self {
        Self {
            state,
            sessions: Arc::default(),
        }
    }

    /// Only `client_auth: require` proves who an agent is; the other modes
    /// accept an agent without a certificate on its claim.
    fn certificate_required(&self) -> bool {
        let tls = &self.state.config.grpc.tls;
        tls.enabled && tls.client_auth == "require"
    }

    fn limits(&self) -> Limits {
        let grpc = &self.state.config.grpc;
        Limits {
            max_chunk_bytes: MAX_CHUNK_BYTES as u32,
            keepalive_seconds: grpc.keepalive_seconds as u32,
            stale_after_seconds: grpc.stale_after_seconds as u32,
            min_standby_streams: MIN_STANDBY_STREAMS,
            max_concurrent_exchanges: MAX_CONCURRENT_EXCHANGES,
        }
    }
}

async fn read_hello(inbound: &mut Streaming<AgentMessage>) -> Result<Hello, Status> {
    let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 10 seconds"))??;
    match first {
        Some(AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        }) => Ok(hello),
        Some(_) => Err(Status::invalid_argument(
            "the first message must be a hello",
        )),
        None => Err(Status::cancelled("stream closed before the hello")),
    }
}

fn msg(m: server_message::Msg) -> Box<ServerMessage> {
    Box::new(ServerMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl Tunnel for TunnelService {
    type SessionStream = OutboundStream<ServerMessage>;
    type ExchangeStream = OutboundStream<ServerFrame>;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let remote_addr = request.remote_addr();
        let peer = identity::peer_identity(&request)?;
        let peer_cert = request
            .peer_certs()
            .and_then(|c| c.first().map(|leaf| leaf.to_vec()));
        let mut inbound = request.into_inner();
        let hello = read_hello(&mut inbound).await?;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} is not supported (server speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            )));
        }
        silo_core::id::validate_agent_id(&hello.agent_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let agent_id = match identity::resolve_agent_id(
            &hello.agent_id,
            peer.as_ref(),
            self.certificate_required(),
        ) {
            Ok(id) => id,
            Err(status) => {
                self.state
                    .audit_rejection(&hello.agent_id, peer.as_ref(), remote_addr, &status)
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
            protocol: Protocol::Native,
            connected_since: OffsetDateTime::now_utc(),
            remote_addr,
            agent_version: hello.agent_version.clone(),
            cert_serial: peer.as_ref().map(|p| p.serial_hex.clone()),
            cert_not_after: peer.as_ref().map(|p| p.not_after),
            meters: Arc::new(crate::metrics::AgentMeters::new(&agent_id)),
        };
        let mut session = NativeSession::new(
            info,
            self.state.exchange_settings.clone(),
            self.state.in_flight.clone(),
        );
        session.peer_cert = peer_cert;
        session.caps = AgentCaps::from_hello(&hello.capabilities);
        let session = Arc::new(session);
        let span =
            info_span!("session", agent_id = %agent_id, session = %&session.info.session_id[..8]);
        let attached = match self.state.attach(session.clone()).await {
            Ok(a) => a,
            Err(e) => {
                warn!(parent: &span, remote = ?remote_addr, "agent refused: {e}");
                return Err(e.to_status());
            }
        };
        self.sessions
            .write()
            .expect("sessions lock")
            .insert(session.info.session_id.clone(), session.clone());
        info!(parent: &span, remote = ?remote_addr, port = ?attached, version = %hello.agent_version, "agent connected");

        let (tx, rx) = outbound::channel(8);
        let welcome = Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id: session.info.session_id.clone(),
            agent_id: session.info.agent_id.clone(),
            assigned_port: attached.map_or(0, u32::from),
            limits: Some(self.limits()),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: session::server_capabilities(),
        };
        tx.send(msg(server_message::Msg::Welcome(welcome)))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let stale_after = Duration::from_secs(self.state.config.grpc.stale_after_seconds);
        let (state, sessions) = (self.state.clone(), self.sessions.clone());
        tokio::spawn(
            async move {
                run_session(&session, inbound, &tx, stale_after).await;
                let reason = session.liveness.close_reason();
                session.close(reason.unwrap_or(CloseReason::Shutdown));
                session.drop_standby();
                sessions
                    .write()
                    .expect("sessions lock")
                    .remove(&session.info.session_id);
                // Also records last_seen in the store.
                state.detach(&session.info).await;
                info!(
                    reason = reason.map_or("agent disconnected", |r| r.as_str()),
                    "session ended"
                );
            }
            .instrument(span),
        );
        Ok(Response::new(rx))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        renew::renew(&self.state, request).await
    }

    async fn exchange(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::ExchangeStream>, Status> {
        let session_id = request
            .metadata()
            .get(SESSION_ID_METADATA)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("missing silo-session-id"))?;
        let session = self
            .sessions
            .read()
            .expect("sessions lock")
            .get(session_id)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("unknown or closed session"))?;
        // A session id is a bearer token only without TLS; with it, the
        // stream must come from the same agent's certificate. The usual case
        // (the session's own certificate) is a byte comparison; anything
        // else gets the full parse.
        let same_cert = match (request.peer_certs(), &session.peer_cert) {
            (Some(certs), Some(known)) => certs
                .first()
                .is_some_and(|leaf| leaf.as_ref() == known.as_slice()),
            _ => false,
        };
        if !same_cert
            && let Some(peer) = identity::peer_identity(&request)?
            && !peer.agent_id.eq_ignore_ascii_case(&session.info.agent_id)
        {
            return Err(Status::permission_denied(
                "the session belongs to another agent",
            ));
        }
        let (tx, rx) = outbound::channel(FRAME_QUEUE);
        tracing::debug!(agent_id = %session.info.agent_id, "standby stream registered");
        session.add_standby(Standby {
            tx,
            inbound: request.into_inner(),
        });
        Ok(Response::new(rx))
    }
}

/// Serves the control stream until the agent leaves, goes stale or the
/// session is closed.
async fn run_session(
    session: &NativeSession,
    mut inbound: Streaming<AgentMessage>,
    tx: &Outbound<ServerMessage>,
    stale_after: Duration,
) {
    let mut check = tokio::time::interval(stale_after / 4);
    loop {
        tokio::select! {
            _ = session.liveness.cancel.cancelled() => {
                let reason = session.liveness.close_reason().unwrap_or(CloseReason::Shutdown);
                let go_away = GoAway {
                    reason: reason.as_str().to_owned(),
                    retry_after_ms: 1000,
                    permanent: matches!(reason, CloseReason::Forgotten | CloseReason::Revoked),
                };
                let _ = tx.send(msg(server_message::Msg::GoAway(go_away))).await;
                return;
            }
            m = inbound.message() => match m {
                Ok(Some(AgentMessage { msg: Some(agent_message::Msg::Heartbeat(hb)) })) => {
                    session.liveness.touch();
                    let ack = Heartbeat { sent_unix_ms: hb.sent_unix_ms };
                    if tx.send(msg(server_message::Msg::HeartbeatAck(ack))).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => session.liveness.touch(),
                Ok(None) | Err(_) => return,
            },
            _ = check.tick() => {
                if session.liveness.idle_for() > stale_after {
                    warn!("no heartbeat for {stale_after:?}; evicting the agent");
                    session.close(CloseReason::Stale);
                }
            }
        }
    }
}
