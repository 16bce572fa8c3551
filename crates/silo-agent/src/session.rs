//! The agent's connection to the server: dial, hello, heartbeats, and
//! reconnecting with backoff for as long as the agent runs.

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::local::LocalService;
use crate::standby::StandbyPool;
use silo_proto::limits::{CONNECTION_WINDOW_BYTES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES};
use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{
    AgentMessage, Heartbeat, Hello, ServerMessage, agent_message, server_message,
};
use silo_proto::{PROTOCOL_VERSION, capabilities};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

/// A session that lasted this long counts as healthy: the next reconnect
/// starts again from the shortest delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// What the agent's health endpoint and tests can see.
#[derive(Debug, Default)]
pub struct AgentStatus {
    pub connected: AtomicBool,
    pub assigned_port: AtomicU32,
    pub sessions: AtomicU32,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("server refused the agent: {0}")]
    Refused(String),
    #[error("{0}")]
    Lost(String),
}

enum SessionEnd {
    Shutdown,
    GoAway(String),
}

/// Keeps the agent connected until `shutdown` fires.
pub async fn run(
    config: Arc<AgentConfig>,
    local: Arc<LocalService>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let outcome = run_session(&config, &local, &status, &shutdown).await;
        status.connected.store(false, Ordering::Relaxed);
        match outcome {
            Ok(SessionEnd::Shutdown) => return,
            Ok(SessionEnd::GoAway(reason)) => warn!(%reason, "server ended the session"),
            Err(e) => warn!("{e}"),
        }
        if started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        info!("reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Dials the server (also used by the legacy client mode).
pub(crate) async fn connect(config: &AgentConfig) -> Result<Channel, SessionError> {
    let uri = config.server_uri().map_err(|e| SessionError::Connect {
        addr: config.grpc.server_address.clone(),
        reason: e.to_string(),
    })?;
    let tls = if config.grpc.tls.enabled {
        Some(client_tls(config, &uri)?)
    } else {
        None
    };
    let mut endpoint = Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| SessionError::Connect {
                addr: config.grpc.server_address.clone(),
                reason: crate::local::error_chain(&e),
            })?;
    }
    endpoint.connect().await.map_err(|e| SessionError::Connect {
        addr: config.grpc.server_address.clone(),
        reason: crate::local::error_chain(&e),
    })
}

/// The agent's certificate, key and CA, read at every connect so a renewed
/// certificate is picked up by the next connection.
fn client_tls(config: &AgentConfig, uri: &http::Uri) -> Result<ClientTlsConfig, SessionError> {
    let tls = &config.grpc.tls;
    let read = |key: &str, path: &str| {
        std::fs::read(path).map_err(|e| SessionError::Connect {
            addr: config.grpc.server_address.clone(),
            reason: format!("cannot read {key} {path}: {e}"),
        })
    };
    let cert = read("grpc.tls.cert_file", &tls.cert_file)?;
    let key = read("grpc.tls.key_file", &tls.key_file)?;
    let ca = read("grpc.tls.ca_file", &tls.ca_file)?;
    let domain = if tls.server_name_override.is_empty() {
        uri.host()
            .unwrap_or("localhost")
            .trim_matches(['[', ']'])
            .to_owned()
    } else {
        tls.server_name_override.clone()
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key))
        .domain_name(domain))
}

fn hello(config: &AgentConfig) -> AgentMessage {
    AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_id: config.grpc.agent_id.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            capabilities: [
                capabilities::UPGRADE,
                capabilities::STREAM_REUSE,
                capabilities::INLINE_BODY,
            ]
            .map(str::to_owned)
            .to_vec(),
        })),
    }
}

async fn run_session(
    config: &AgentConfig,
    local: &Arc<LocalService>,
    status: &AgentStatus,
    shutdown: &CancellationToken,
) -> Result<SessionEnd, SessionError> {
    let channel = tokio::select! {
        c = connect(config) => c?,
        _ = shutdown.cancelled() => return Ok(SessionEnd::Shutdown),
    };
    let client = TunnelClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(8);
    tx.send(hello(config)).await.expect("receiver alive");
    let mut inbound = client
        .clone()
        .session(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Refused(describe_status(&s)))?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(ServerMessage {
            msg: Some(server_message::Msg::Welcome(w)),
        }))) => w,
        Ok(Err(s)) => return Err(SessionError::Refused(describe_status(&s))),
        _ => return Err(SessionError::Lost("no welcome from the server".into())),
    };
    let limits = welcome.limits.unwrap_or_default();
    let renew_client = client.clone();
    let pool = StandbyPool::new(
        client,
        &welcome.session_id,
        local.clone(),
        &limits,
        &welcome.capabilities,
    )
    .map_err(SessionError::Lost)?;
    let _stop_standbys = StopOnDrop(pool.clone());
    pool.fill();
    let session_stop = CancellationToken::new();
    let _stop_session_tasks = session_stop.clone().drop_guard();
    if config.grpc.tls.enabled && config.renew.enabled {
        tokio::spawn(crate::renew::run(
            config.clone(),
            renew_client,
            session_stop.clone(),
        ));
    }
    status.connected.store(true, Ordering::Relaxed);
    status
        .assigned_port
        .store(welcome.assigned_port, Ordering::Relaxed);
    status.sessions.fetch_add(1, Ordering::Relaxed);
    info!(
        agent_id = %welcome.agent_id,
        port = welcome.assigned_port,
        server_version = %welcome.server_version,
        "connected to {}", config.grpc.server_address
    );

    let keepalive = Duration::from_secs(u64::from(limits.keepalive_seconds.max(1)));
    let stale_after = Duration::from_secs(u64::from(limits.stale_after_seconds.max(2)));
    let mut heartbeat = tokio::time::interval(keepalive);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                pool.stop();
                pool.exchanges.close();
                // Ending the control stream makes the server drop this
                // session now, so new requests fail fast instead of waiting
                // for standby streams that will not come; exchanges under
                // way run on their own streams and finish.
                drop(tx);
                let grace = Duration::from_secs(config.shutdown_grace_seconds);
                info!(in_flight = pool.in_flight(), "shutting down: draining exchanges for up to {grace:?}");
                let _ = tokio::time::timeout(grace, pool.exchanges.wait()).await;
                return Ok(SessionEnd::Shutdown);
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > stale_after {
                    return Err(SessionError::Lost(format!("server silent for {stale_after:?}")));
                }
                let sent_unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let hb = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat { sent_unix_ms })) };
                if tx.send(hb).await.is_err() {
                    return Err(SessionError::Lost("session stream closed".into()));
                }
            }
            m = inbound.message() => match m {
                Ok(Some(ServerMessage { msg: Some(server_message::Msg::GoAway(g)) })) => {
                    return Ok(SessionEnd::GoAway(g.reason));
                }
                Ok(Some(_)) => last_heard = Instant::now(),
                Ok(None) => return Err(SessionError::Lost("server closed the session".into())),
                Err(s) => return Err(SessionError::Lost(format!("session lost: {}", describe_status(&s)))),
            },
        }
    }
}

/// A status as an operator needs it: a bare "transport error" says
/// nothing, the TLS alert underneath ("certificate revoked") does.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let message = status.message();
    match std::error::Error::source(status) {
        Some(source) => format!("{message}: {}", crate::local::error_chain(source)),
        None => message.to_owned(),
    }
}

struct StopOnDrop(Arc<StandbyPool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}
