//! The response side of one native exchange: the body as the agent streams
//! it, the cancel sent when the user goes away, and the hand-back of a
//! stream whose exchange ended cleanly (capability "stream-reuse").

use super::exchange::frame;
use super::session::{FrameTx, NativeSession, Standby};
use crate::agent::BoxError;
use crate::inflight::InFlightGuard;
use bytes::Bytes;
use futures_util::Stream;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use silo_proto::v1::{AgentFrame, Cancel, agent_frame, server_frame};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Streaming;

/// How long a body whose declared length was delivered may wait for the
/// agent's `End` before its stream is given up instead of reused.
const END_AFTER_LENGTH: Duration = Duration::from_secs(5);

/// Tells the agent to abort unless the exchange finished first. Held by
/// whatever part of the exchange lives longest (the response body, the
/// upgrade pump), so a user who goes away cancels the agent's request.
pub(crate) struct CancelOnDrop {
    tx: FrameTx,
    finished: bool,
}

impl CancelOnDrop {
    pub(crate) fn new(tx: FrameTx) -> Self {
        Self {
            tx,
            finished: false,
        }
    }

    pub(crate) fn finish(&mut self) {
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

/// What it takes to hand a claimed stream back to the session's standby
/// pool once its exchange ended cleanly.
pub(crate) struct Reuse {
    pub session: Arc<NativeSession>,
    pub tx: FrameTx,
    /// Set once the request's last frame is queued (at once without a
    /// streamed body).
    pub request_sent: Arc<AtomicBool>,
}

impl Reuse {
    /// Called when the agent's last frame of the exchange arrived. The
    /// stream goes back only when the request side also ended cleanly, so
    /// both ends agree it sits between exchanges; otherwise it is dropped.
    pub(crate) fn release(self, inbound: Streaming<AgentFrame>) {
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

/// The `Content-Length` of a response, when it declares a valid one.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The response body as the agent streams it.
pub(crate) struct AgentBody {
    /// Bytes still to come when the response declared its length: hyper
    /// stops polling once they are written, before the agent's `End`.
    remaining: Option<u64>,
    /// Taken when the body ends cleanly, to go back to the standby pool.
    inbound: Option<Streaming<AgentFrame>>,
    reuse: Option<Reuse>,
    guard: CancelOnDrop,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    done: bool,
    _in_flight: InFlightGuard,
}

impl AgentBody {
    pub(crate) fn new(
        inbound: Streaming<AgentFrame>,
        reuse: Reuse,
        guard: CancelOnDrop,
        headers: &HeaderMap,
        idle: Duration,
        in_flight: InFlightGuard,
    ) -> Self {
        Self {
            remaining: content_length(headers),
            inbound: Some(inbound),
            reuse: Some(reuse),
            guard,
            idle,
            idle_timer: Box::pin(tokio::time::sleep(idle)),
            done: false,
            _in_flight: in_flight,
        }
    }
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
                    if let Some(left) = &mut this.remaining {
                        *left = left.saturating_sub(data.len() as u64);
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

impl Drop for AgentBody {
    /// hyper drops a body as soon as its declared length is written, so the
    /// agent's `End` is usually still unread here: wait for it off the
    /// user's connection and reuse the stream then. Anything else (the
    /// user went away mid-body) cancels the exchange through the guard.
    fn drop(&mut self) {
        if self.done || self.remaining != Some(0) {
            return;
        }
        let (Some(inbound), Some(reuse)) = (self.inbound.take(), self.reuse.take()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.guard.finish();
        runtime.spawn(release_after_end(inbound, reuse));
    }
}

async fn release_after_end(mut inbound: Streaming<AgentFrame>, reuse: Reuse) {
    let next = tokio::time::timeout(END_AFTER_LENGTH, inbound.message()).await;
    if let Ok(Ok(Some(AgentFrame {
        frame: Some(agent_frame::Frame::End(_)),
    }))) = next
    {
        reuse.release(inbound);
    }
    // Otherwise dropping both halves ends the stream; the agent aborts.
}
