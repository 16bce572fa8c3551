//! Legacy client mode (`grpc.protocol: legacy`): this agent speaks the Go
//! implementation's `proxy.ProxyService/Stream`, so it can run against a
//! server of the Go implementation during a migration.
//!
//! That protocol is one stream of whole messages: the first `PING` names
//! the agent, a `PING` goes every 30 s, each `REQUEST` carries a whole
//! request body and is answered by one `RESPONSE` with the whole response
//! body (first header values only). There is no streaming, no upgrade, no
//! cancellation and no assigned port; use the native protocol whenever the
//! server speaks it.

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::local::LocalService;
use crate::session::{AgentStatus, SessionError, describe_status};
use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Full, Limited};
use silo_proto::headers::{strip_hop_by_hop, to_wire};
use silo_proto::legacy::proxy_service_client::ProxyServiceClient;
use silo_proto::legacy::{MessageType, ProxyMessage};
use silo_proto::legacy_meta as meta;
use silo_proto::v1::RequestStart;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, debug_span, info, warn};

/// The Go agent's ping interval; the server drops a connection silent for
/// two minutes.
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// A server that has not answered a single `PING` for this long is gone.
const SERVER_SILENCE: Duration = Duration::from_secs(120);
/// The Go server gives up on a request after 30 s; working on it longer
/// serves nobody.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body sent back (our server's default
/// `grpc.legacy.max_response_body_bytes`; a Go server takes at most 4 MiB
/// per message). Beyond it the agent answers with the 502 error form.
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;
/// gRPC message limit both ways: a body at the cap plus its metadata.
const MAX_MESSAGE_BYTES: usize = MAX_RESPONSE_BODY + 1024 * 1024;
/// A session that lasted this long counts as healthy: the next reconnect
/// starts again from the shortest delay.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Keeps a legacy connection up until `shutdown` fires, reconnecting with
/// the same backoff as the native mode.
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
            Ok(()) => return,
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

fn ping(metadata: HashMap<String, String>) -> ProxyMessage {
    ProxyMessage {
        id: uuid::Uuid::new_v4().to_string(),
        r#type: MessageType::Ping as i32,
        payload: Bytes::new(),
        metadata,
    }
}

/// Ok once `shutdown` fired and exchanges under way were given their grace.
async fn run_session(
    config: &AgentConfig,
    local: &Arc<LocalService>,
    status: &AgentStatus,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = tokio::select! {
        c = crate::session::connect(config) => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let mut client = ProxyServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel(64);
    let hello = HashMap::from([(meta::AGENT_ID.to_owned(), config.grpc.agent_id.clone())]);
    tx.send(ping(hello)).await.expect("receiver alive");
    let mut inbound = client
        .stream(ReceiverStream::new(rx))
        .await
        .map_err(|s| SessionError::Refused(describe_status(&s)))?
        .into_inner();
    // The server answers the first PING; a refusal comes as an error status.
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(m))) if m.r#type == MessageType::Pong as i32 => {}
        Ok(Err(s)) => return Err(SessionError::Refused(describe_status(&s))),
        _ => return Err(SessionError::Lost("no PONG from the server".into())),
    }
    status.connected.store(true, Ordering::Relaxed);
    status.sessions.fetch_add(1, Ordering::Relaxed);
    info!(agent_id = %config.grpc.agent_id, "connected to {} (legacy protocol)", config.grpc.server_address);

    let exchanges = TaskTracker::new();
    let mut pinger = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                exchanges.close();
                let grace = Duration::from_secs(config.shutdown_grace_seconds);
                info!(in_flight = exchanges.len(), "shutting down: draining exchanges for up to {grace:?}");
                let _ = tokio::time::timeout(grace, exchanges.wait()).await;
                return Ok(());
            }
            _ = pinger.tick() => {
                if last_heard.elapsed() > SERVER_SILENCE {
                    return Err(SessionError::Lost(format!("server silent for {SERVER_SILENCE:?}")));
                }
                if tx.send(ping(HashMap::new())).await.is_err() {
                    return Err(SessionError::Lost("stream closed".into()));
                }
            }
            m = inbound.message() => match m {
                Ok(Some(msg)) => {
                    last_heard = Instant::now();
                    if msg.r#type == MessageType::Request as i32 {
                        let (local, tx) = (local.clone(), tx.clone());
                        let span = debug_span!("exchange", id = %msg.id);
                        exchanges.spawn(async move {
                            let _ = tx.send(exchange(&local, msg).await).await;
                        }.instrument(span));
                    }
                }
                Ok(None) => return Err(SessionError::Lost("server closed the stream".into())),
                Err(s) => return Err(SessionError::Lost(format!("stream lost: {}", describe_status(&s)))),
            },
        }
    }
}

/// Replays one `REQUEST` on the local service; always yields the answer,
/// the 502 error form when the local service could not be used.
async fn exchange(local: &LocalService, msg: ProxyMessage) -> ProxyMessage {
    let id = msg.id.clone();
    let outcome = tokio::time::timeout(LOCAL_TIMEOUT, replay(local, msg))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "local service {} did not answer within {LOCAL_TIMEOUT:?}",
                local.url()
            ))
        });
    outcome.unwrap_or_else(|error| {
        debug!(%error, "local request failed");
        error_message(id, error)
    })
}

async fn replay(local: &LocalService, msg: ProxyMessage) -> Result<ProxyMessage, String> {
    let start = request_start(&msg);
    let body = Full::new(msg.payload)
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = local.build_request(start, body)?;
    let resp = local.send(req).await?;
    let (mut parts, body) = resp.into_parts();
    let body = Limited::new(body, MAX_RESPONSE_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the local response failed: {e}"))?
        .to_bytes();
    strip_hop_by_hop(&mut parts.headers, false);
    let mut metadata = HashMap::from([(
        meta::STATUS_CODE.to_owned(),
        parts.status.as_u16().to_string(),
    )]);
    meta::put_headers(&parts.headers, &mut metadata);
    Ok(ProxyMessage {
        id: msg.id,
        r#type: MessageType::Response as i32,
        payload: body,
        metadata,
    })
}

/// The request head for [`LocalService::build_request`], from the
/// metadata. `content_type` wins over `header_Content-Type`, as with the Go
/// agent.
fn request_start(msg: &ProxyMessage) -> RequestStart {
    let md = &msg.metadata;
    let get = |key: &str| md.get(key).map(String::as_str).unwrap_or_default();
    let method = match get(meta::METHOD) {
        "" => "GET",
        m => m,
    };
    let path = get(meta::PATH);
    let mut path_and_query = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    if !get(meta::QUERY).is_empty() {
        path_and_query = format!("{path_and_query}?{}", get(meta::QUERY));
    }
    let mut headers = meta::headers_from(md);
    if let Ok(ct) = http::HeaderValue::from_str(get(meta::CONTENT_TYPE))
        && !ct.is_empty()
    {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    RequestStart {
        exchange_id: msg.id.clone(),
        method: method.to_owned(),
        path_and_query,
        headers: to_wire(&headers),
        has_body: !msg.payload.is_empty(),
        // The client address and public host arrive as X-Forwarded-*
        // headers from the server, if at all.
        ..Default::default()
    }
}

/// The Go agent's answer when the local service could not be used.
fn error_message(id: String, error: String) -> ProxyMessage {
    ProxyMessage {
        id,
        r#type: MessageType::Response as i32,
        payload: Bytes::from(error.clone()),
        metadata: HashMap::from([
            (meta::STATUS_CODE.to_owned(), "502".to_owned()),
            (meta::ERROR.to_owned(), error),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_metadata_becomes_the_local_request_head() {
        let msg = ProxyMessage {
            id: "r1".into(),
            r#type: MessageType::Request as i32,
            payload: Bytes::from_static(b"{}"),
            metadata: [
                ("method", "POST"),
                ("path", "/api/items"),
                ("query", "x=1&y=2"),
                ("content_type", "application/json"),
                ("header_Content-Type", "text/plain"),
                ("header_X-Custom", "a"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        };
        let start = request_start(&msg);
        assert_eq!(start.method, "POST");
        assert_eq!(start.path_and_query, "/api/items?x=1&y=2");
        assert!(start.has_body);
        let headers = silo_proto::headers::from_wire(start.headers);
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-custom"], "a");

        let bare = ProxyMessage::default();
        let start = request_start(&bare);
        assert_eq!(
            (start.method.as_str(), start.path_and_query.as_str()),
            ("GET", "/")
        );
    }

    #[test]
    fn errors_use_the_go_agents_form() {
        let m = error_message("r1".into(), "connection refused".into());
        assert_eq!(m.r#type, MessageType::Response as i32);
        assert_eq!(m.metadata["status_code"], "502");
        assert_eq!(m.metadata["error"], "connection refused");
        assert_eq!(m.payload, "connection refused");
    }
}
