//! The server half of one native exchange: request head and body out on a
//! claimed standby stream, response head and body back, and the upgraded
//! byte stream after a `101`.

use super::session::{FrameTx, NativeSession, Standby};
use crate::agent::{BoxError, ProxyBody, ProxyError, ProxyRequest};
use crate::inflight::InFlightGuard;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use silo_proto::headers;
use silo_proto::limits::{MAX_CHUNK_BYTES, MAX_INLINE_BODY_BYTES};
use silo_proto::v1::{
    AgentFrame, Cancel, End, RequestStart, ServerFrame, agent_frame, exchange_error, server_frame,
};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep, sleep_until, timeout_at};
use tonic::{Status, Streaming};
use tracing::debug;

pub(crate) fn frame(f: server_frame::Frame) -> Result<ServerFrame, Status> {
    Ok(ServerFrame { frame: Some(f) })
}

/// Tells the agent to abort unless the exchange finished first. Held by
/// whatever part of the exchange lives longest (the response body, the
/// upgrade pump), so a user who goes away cancels the agent's request.
struct CancelOnDrop {
    tx: FrameTx,
    finished: bool,
}

impl CancelOnDrop {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            let cancel = Cancel {
                reason: "the user went away".into(),
            };
            // Best effort: if the queue is full, dropping the last sender
            // ends the stream, which the agent also takes as a cancel.
            let _ = self.tx.try_send(frame(server_frame::Frame::Cancel(cancel)));
        }
    }
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
        crate::metrics::exchange_bytes(&agent, "in", inline_body.len() as u64);
        has_body = false;
    }
    let mut start = Some(RequestStart {
        exchange_id: uuid::Uuid::new_v4().to_string(),
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers: headers::to_wire(&parts.headers),
        client_addr: client_addr.ip().to_string(),
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
                if let Ok(ServerFrame {
                    frame: Some(server_frame::Frame::Start(head)),
                }) = mpsc_err.0
                {
                    start = Some(head);
                }
            }
        }
    };
    let mut guard = CancelOnDrop {
        tx: tx.clone(),
        finished: false,
    };
    let request_sent = Arc::new(AtomicBool::new(!has_body));
    if let Some(body) = body.filter(|_| has_body) {
        tokio::spawn(pump_request_body(
            body,
            tx.clone(),
            settings.idle_timeout,
            max_body,
            agent.clone(),
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
            tokio::spawn(pump_upgraded(
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
        _ => AgentBody {
            inbound: Some(inbound),
            reuse: Some(reuse),
            guard,
            idle: settings.idle_timeout,
            idle_timer: Box::pin(tokio::time::sleep(settings.idle_timeout)),
            done: false,
            _in_flight: in_flight,
        }
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

/// What it takes to hand a claimed stream back to the session's standby
/// pool once its exchange ended cleanly (capability "stream-reuse").
struct Reuse {
    session: Arc<NativeSession>,
    tx: FrameTx,
    /// Set once the request's last frame is queued (at once without a
    /// streamed body).
    request_sent: Arc<AtomicBool>,
}

impl Reuse {
    /// Called when the agent's last frame of the exchange arrived. The
    /// stream goes back only when the request side also ended cleanly, so
    /// both ends agree it sits between exchanges; otherwise it is dropped.
    fn release(self, inbound: Streaming<AgentFrame>) {
        let session = &self.session;
        if session.caps.stream_reuse
            && self.request_sent.load(Ordering::Acquire)
            && !self.tx.is_closed()
            && !session.liveness.cancel.is_cancelled()
        {
            session.add_standby(Standby {
                tx: self.tx,
                inbound,
            });
        }
    }
}

/// Streams the user's request body to the agent, in bounded chunks.
async fn pump_request_body(
    mut body: hyper::body::Incoming,
    tx: FrameTx,
    idle: Duration,
    max: u64,
    agent: String,
    request_sent: Arc<AtomicBool>,
) {
    let mut sent = SentBytes { agent, bytes: 0 };
    if pump_body_frames(&mut body, &tx, idle, max, &mut sent.bytes).await {
        request_sent.store(true, Ordering::Release);
    }
}

/// Records the request bytes of one exchange however the pump ends.
struct SentBytes {
    agent: String,
    bytes: u64,
}

impl Drop for SentBytes {
    fn drop(&mut self) {
        crate::metrics::exchange_bytes(&self.agent, "in", self.bytes);
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

/// The response body as the agent streams it.
struct AgentBody {
    /// Taken when the body ends cleanly, to go back to the standby pool.
    inbound: Option<Streaming<AgentFrame>>,
    reuse: Option<Reuse>,
    guard: CancelOnDrop,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    done: bool,
    _in_flight: InFlightGuard,
}

impl Body for AgentBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(inbound) = this.inbound.as_mut().filter(|_| !this.done) else {
                return Poll::Ready(None);
            };
            let next = match Pin::new(inbound).poll_next(cx) {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    ready!(this.idle_timer.as_mut().poll(cx));
                    this.done = true;
                    return Poll::Ready(Some(Err(
                        "response body idle for proxy.idle_timeout_seconds".into(),
                    )));
                }
            };
            let idle = this.idle;
            this.idle_timer.as_mut().reset(Instant::now() + idle);
            let result = match next {
                Some(Ok(AgentFrame {
                    frame: Some(agent_frame::Frame::Data(data)),
                })) => {
                    if data.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Ok(AgentFrame {
                    frame: Some(agent_frame::Frame::End(_)),
                })) => {
                    this.done = true;
                    this.guard.finish();
                    if let (Some(inbound), Some(reuse)) = (this.inbound.take(), this.reuse.take()) {
                        reuse.release(inbound);
                    }
                    return Poll::Ready(None);
                }
                Some(Ok(AgentFrame {
                    frame: Some(agent_frame::Frame::Error(e)),
                })) => Some(Err(format!(
                    "local service failed mid-response: {}",
                    e.message
                )
                .into())),
                Some(Ok(_)) => Some(Err("agent sent an unexpected frame".into())),
                Some(Err(status)) => {
                    Some(Err(
                        format!("tunnel stream failed: {}", status.message()).into()
                    ))
                }
                None => Some(Err("agent closed the exchange mid-response".into())),
            };
            this.done = true;
            this.guard.finish();
            return Poll::Ready(result);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

use std::future::Future;

/// After `101 Switching Protocols`: raw bytes both ways until either side
/// ends or nothing moves for the idle timeout.
async fn pump_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut inbound: Streaming<AgentFrame>,
    tx: FrameTx,
    mut guard: CancelOnDrop,
    idle: Duration,
    _in_flight: InFlightGuard,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let mut buf = BytesMut::with_capacity(MAX_CHUNK_BYTES);
    let (mut user_open, mut agent_open) = (true, true);
    let mut deadline = Instant::now() + idle;
    while user_open || agent_open {
        tokio::select! {
            read = io.read_buf(&mut buf), if user_open => match read {
                Ok(0) | Err(_) => {
                    user_open = false;
                    let _ = tx.send(frame(server_frame::Frame::End(End {}))).await;
                }
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if tx.send(frame(server_frame::Frame::Data(chunk))).await.is_err() {
                        break;
                    }
                    buf.reserve(MAX_CHUNK_BYTES);
                }
            },
            msg = inbound.message(), if agent_open => match msg {
                Ok(Some(AgentFrame { frame: Some(agent_frame::Frame::Data(data)) })) => {
                    if io.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Ok(Some(AgentFrame { frame: Some(agent_frame::Frame::End(_)) })) => {
                    agent_open = false;
                    let _ = io.shutdown().await;
                }
                _ => break,
            },
            _ = sleep_until(deadline) => {
                debug!("upgraded stream idle for proxy.idle_timeout_seconds; closing");
                break;
            }
        }
        deadline = Instant::now() + idle;
    }
    if !user_open && !agent_open {
        guard.finish();
    }
}
