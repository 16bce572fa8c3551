//! The server half of one native exchange: request head and body out on a
//! claimed standby stream, then the response head; the response body is in
//! [`super::response`], the upgraded byte stream in [`super::upgrade`].

use super::response::{AgentBody, CancelOnDrop, Reuse};
use super::session::{FrameTx, NativeSession, Standby};
use crate::agent::{ProxyBody, ProxyError, ProxyRequest};
use crate::inflight::InFlightGuard;
use crate::metrics::AgentMeters;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use silo_proto::headers;
use silo_proto::limits::{MAX_CHUNK_BYTES, MAX_INLINE_BODY_BYTES};
use silo_proto::v1::{
    AgentFrame, Cancel, End, RequestStart, ServerFrame, agent_frame, exchange_error, server_frame,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::time::{Instant, timeout_at};
use tracing::debug;

pub(crate) fn frame(f: server_frame::Frame) -> Box<ServerFrame> {
    Box::new(ServerFrame { frame: Some(f) })
}

pub(crate) async fn forward(
    session: Arc<NativeSession>,
    req: ProxyRequest,
) -> Result<Response<ProxyBody>, ProxyError> {
    let agent = session.info.agent_id.clone();
    let settings = session.settings.clone();
    let in_flight = InFlightGuard::new(session.in_flight.clone(), session.server_in_flight.clone());
    let max_body = settings.max_request_body_bytes;
    if max_body > 0 && req.body.size_hint().lower() > max_body {
        return Err(ProxyError::BodyTooLarge(max_body));
    }
    let ProxyRequest {
        mut parts,
        body,
        client_addr,
        scheme,
        host,
        on_upgrade,
    } = req;
    let mut body = Some(body);
    let upgrade = on_upgrade.is_some();
    headers::strip_hop_by_hop(&mut parts.headers, upgrade);
    let mut has_body = !upgrade && !body.as_ref().is_some_and(Body::is_end_stream);
    // A small body of known length rides inside the request head: one
    // message instead of three, and the stream is free again sooner.
    let mut inline_body = Bytes::new();
    if has_body
        && session.caps.inline_body
        && let Some(small) = body.take_if(|b| {
            b.size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_INLINE_BODY_BYTES)
        })
    {
        inline_body = read_small_body(small, settings.idle_timeout).await?;
        session.info.meters.bytes_in(inline_body.len() as u64);
        has_body = false;
    }
    let mut start = Some(RequestStart {
        exchange_id: session.next_exchange_id(),
        method: parts.method.as_str().to_owned(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: headers::to_wire(&parts.headers),
        client_addr: crate::client_addr::ip_text(client_addr.ip()),
        scheme: scheme.to_owned(),
        host,
        upgrade,
        has_body,
        body: inline_body,
    });
    let deadline = Instant::now() + settings.request_timeout;

    // Claim a standby stream; one that died under us is skipped.
    let Standby { tx, mut inbound } = loop {
        let standby = timeout_at(deadline, session.claim())
            .await
            .map_err(|_| ProxyError::Timeout(agent.clone()))?
            .ok_or_else(|| ProxyError::AgentUnavailable {
                agent: agent.clone(),
                reason: "its session closed".into(),
            })?;
        let head = start.take().expect("request head is put back on failure");
        match standby
            .tx
            .send(frame(server_frame::Frame::Start(head)))
            .await
        {
            Ok(()) => break standby,
            Err(mpsc_err) => {
                if let ServerFrame {
                    frame: Some(server_frame::Frame::Start(head)),
                } = *mpsc_err.0
                {
                    start = Some(head);
                }
            }
        }
    };
    let mut guard = CancelOnDrop::new(tx.clone());
    // After an upgrade request the agent waits for our `End` even when the
    // local service declines the upgrade: such a stream is never reused.
    let request_sent = Arc::new(AtomicBool::new(!has_body && !upgrade));
    if let Some(body) = body.filter(|_| has_body) {
        tokio::spawn(pump_request_body(
            body,
            tx.clone(),
            settings.idle_timeout,
            max_body,
            session.info.meters.clone(),
            request_sent.clone(),
        ));
    }
    let reuse = Reuse {
        session: session.clone(),
        tx: tx.clone(),
        request_sent,
    };

    let first = timeout_at(deadline, inbound.message())
        .await
        .map_err(|_| ProxyError::Timeout(agent.clone()))?;
    let head = match first {
        Ok(Some(AgentFrame {
            frame: Some(agent_frame::Frame::Start(head)),
        })) => head,
        Ok(Some(AgentFrame {
            frame: Some(agent_frame::Frame::Error(e)),
        })) => {
            guard.finish();
            reuse.release(inbound);
            if e.kind() == exchange_error::Kind::Timeout {
                return Err(ProxyError::Timeout(agent));
            }
            return Err(ProxyError::Upstream(e.message));
        }
        Ok(other) => {
            return Err(ProxyError::AgentUnavailable {
                agent,
                reason: match other {
                    None => "it closed the exchange before answering".into(),
                    Some(_) => "it answered with an unexpected frame".into(),
                },
            });
        }
        Err(status) => {
            return Err(ProxyError::AgentUnavailable {
                agent,
                reason: format!("the exchange stream failed: {}", status.message()),
            });
        }
    };
    let status = u16::try_from(head.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| {
            ProxyError::Upstream(format!("agent sent invalid status {}", head.status))
        })?;
    let mut resp_headers = headers::from_wire(head.headers);
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(&mut resp_headers, switching && upgrade);

    let body = match (switching, on_upgrade) {
        (true, Some(on_upgrade)) => {
            tokio::spawn(super::upgrade::pump_upgraded(
                on_upgrade,
                inbound,
                tx,
                guard,
                settings.idle_timeout,
                in_flight,
            ));
            crate::agent::full(Bytes::new())
        }
        _ if head.complete => {
            guard.finish();
            reuse.release(inbound);
            crate::agent::full(head.body)
        }
        _ => AgentBody::new(
            inbound,
            reuse,
            guard,
            &resp_headers,
            settings.idle_timeout,
            in_flight,
        )
        .boxed_unsync(),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = resp_headers;
    Ok(resp)
}

/// Reads a request body of known, small length whole, within the idle
/// timeout.
async fn read_small_body(body: hyper::body::Incoming, idle: Duration) -> Result<Bytes, ProxyError> {
    match tokio::time::timeout(idle, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(ProxyError::BadRequest(format!(
            "reading the request body failed: {e}"
        ))),
        Err(_) => Err(ProxyError::BadRequest(
            "request body idle for proxy.idle_timeout_seconds".into(),
        )),
    }
}

/// Streams the user's request body to the agent, in bounded chunks.
async fn pump_request_body(
    mut body: hyper::body::Incoming,
    tx: FrameTx,
    idle: Duration,
    max: u64,
    meters: Arc<AgentMeters>,
    request_sent: Arc<AtomicBool>,
) {
    let mut sent = SentBytes { meters, bytes: 0 };
    if pump_body_frames(&mut body, &tx, idle, max, &mut sent.bytes).await {
        request_sent.store(true, Ordering::Release);
    }
}

/// Records the request bytes of one exchange however the pump ends.
struct SentBytes {
    meters: Arc<AgentMeters>,
    bytes: u64,
}

impl Drop for SentBytes {
    fn drop(&mut self) {
        self.meters.bytes_in(self.bytes);
    }
}

/// True when the whole body and its `End` were queued.
async fn pump_body_frames(
    body: &mut hyper::body::Incoming,
    tx: &FrameTx,
    idle: Duration,
    max: u64,
    sent: &mut u64,
) -> bool {
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(idle, body.frame()) => r,
            _ = tx.closed() => return false,
        };
        let reason = match next {
            Ok(Some(Ok(f))) => {
                let Ok(mut data) = f.into_data() else {
                    continue;
                };
                *sent += data.len() as u64;
                if max > 0 && *sent > max {
                    format!("request body larger than {max} bytes")
                } else {
                    while !data.is_empty() {
                        let chunk = data.split_to(data.len().min(MAX_CHUNK_BYTES));
                        if tx
                            .send(frame(server_frame::Frame::Data(chunk)))
                            .await
                            .is_err()
                        {
                            return false;
                        }
                    }
                    continue;
                }
            }
            Ok(None) => {
                return tx
                    .send(frame(server_frame::Frame::End(End {})))
                    .await
                    .is_ok();
            }
            Ok(Some(Err(e))) => format!("reading the request body failed: {e}"),
            Err(_) => "request body idle for proxy.idle_timeout_seconds".to_owned(),
        };
        debug!(%reason, "aborting exchange");
        let _ = tx
            .send(frame(server_frame::Frame::Cancel(Cancel { reason })))
            .await;
        return false;
    }
}
