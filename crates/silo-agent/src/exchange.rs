//! The agent half of one exchange: replay the request on the local service
//! and stream the answer (or, after a `101`, raw bytes) back.

use crate::backend::Requester;
use crate::joined::{self, Flag};
use crate::local::{LocalBody, LocalService};
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper_util::rt::TokioIo;
use silo_proto::headers;
use silo_proto::limits::{FRAME_QUEUE, MAX_CHUNK_BYTES, MAX_INLINE_BODY_BYTES};
use silo_proto::v1::{
    AgentFrame, End, ExchangeError, RequestStart, ResponseStart, ServerFrame, agent_frame,
    exchange_error, server_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing::debug;

pub type FrameTx = mpsc::Sender<AgentFrame>;

fn frame(f: agent_frame::Frame) -> AgentFrame {
    AgentFrame { frame: Some(f) }
}

fn error_frame(kind: exchange_error::Kind, message: String) -> AgentFrame {
    frame(agent_frame::Frame::Error(ExchangeError {
        kind: kind as i32,
        message,
    }))
}

/// Reads the server's frames after the request head: body (or upgraded)
/// bytes go to `data_tx` until `End`; a `Cancel`, or the stream ending
/// before the exchange did, cancels it. Returns true when the exchange
/// ended cleanly on both sides (`served` fired after the request's `End`),
/// leaving the stream between exchanges; it reads nothing past that point.
async fn dispatch_inbound(
    inbound: &mut Streaming<ServerFrame>,
    data_tx: mpsc::Sender<Bytes>,
    mut request_ended: bool,
    cancel: &Flag,
    served: &Flag,
) -> bool {
    let mut data_tx = Some(data_tx);
    loop {
        let next = tokio::select! {
            biased;
            _ = cancel.raised() => return false,
            _ = served.raised(), if request_ended => return true,
            m = inbound.message() => m,
        };
        match next {
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Data(data)),
            })) => {
                if let Some(tx) = &data_tx
                    && tx.send(data).await.is_err()
                {
                    data_tx = None;
                }
            }
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::End(_)),
            })) => {
                data_tx = None;
                request_ended = true;
            }
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Cancel(c)),
            })) => {
                debug!(reason = %c.reason, "exchange cancelled by the server");
                cancel.raise();
                return false;
            }
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Start(_)),
            })) => {
                debug!("the server started an exchange on a busy stream");
                cancel.raise();
                return false;
            }
            Ok(Some(_)) => {}
            other => {
                debug!(?other, "server side of the exchange ended");
                cancel.raise();
                return false;
            }
        }
    }
}

/// Runs one exchange to its end on `inbound`/`tx`. Returns true when it
/// ended cleanly on both sides, so the stream may carry the next one.
/// `inline_body`: the server accepts a small response body inside the head.
pub async fn run(
    local: &LocalService,
    backend: Requester<'_>,
    start: RequestStart,
    inbound: &mut Streaming<ServerFrame>,
    tx: &FrameTx,
    inline_body: bool,
) -> bool {
    let (cancel, served) = (Flag::default(), Flag::default());
    let upgrade = start.upgrade;
    let request_ended = !start.has_body && !upgrade;
    let (data_tx, data_rx) = mpsc::channel::<Bytes>(FRAME_QUEUE);
    // Serving and reading the server's frames run in this one task: no
    // task per exchange, and the stream is back in our hands at the end.
    // The flags between them need no lock (see `joined`).
    let serving = async {
        if serve(local, backend, start, data_rx, tx, &cancel, inline_body).await {
            served.raise();
        } else {
            cancel.raise();
        }
    };
    let dispatch = dispatch_inbound(inbound, data_tx, request_ended, &cancel, &served);
    let ((), clean) = joined::join(serving, dispatch, &[&cancel, &served]).await;
    clean && !upgrade
}

/// Replays the request and sends the response; true once the exchange's
/// last frame (`End`, a complete head or an error) is queued.
async fn serve(
    local: &LocalService,
    mut backend: Requester<'_>,
    mut start: RequestStart,
    data_rx: mpsc::Receiver<Bytes>,
    tx: &FrameTx,
    cancel: &Flag,
    inline_body: bool,
) -> bool {
    let upgrade = start.upgrade;
    let (body, mut upgraded_input): (LocalBody, _) = if start.has_body && !upgrade {
        let stream = ReceiverStream::new(data_rx);
        let body = StreamBody::new(tokio_stream::StreamExt::map(stream, |b| {
            Ok::<_, crate::local::BoxError>(http_body::Frame::data(b))
        }));
        (body.boxed_unsync(), None)
    } else if !start.body.is_empty() {
        (
            Full::new(std::mem::take(&mut start.body))
                .map_err(|never| match never {})
                .boxed_unsync(),
            None,
        )
    } else {
        (
            Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Some(data_rx),
        )
    };
    let req = match local.build_request(start, body) {
        Ok(r) => r,
        Err(e) => {
            return tx
                .send(error_frame(exchange_error::Kind::BadRequest, e))
                .await
                .is_ok();
        }
    };
    let response = tokio::select! {
        r = backend.send(local, req) => r,
        _ = cancel.raised() => { debug!("cancelled before the local response"); return false },
    };
    let mut response = match response {
        Ok(r) => r,
        Err(message) => {
            debug!(%message, "local request failed");
            return tx
                .send(error_frame(exchange_error::Kind::Upstream, message))
                .await
                .is_ok();
        }
    };
    let status = response.status();
    let switching = upgrade && status == http::StatusCode::SWITCHING_PROTOCOLS;
    let on_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, mut body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    let mut head = ResponseStart {
        status: u32::from(status.as_u16()),
        headers: headers::to_wire(&parts.headers),
        ..Default::default()
    };
    // A small body of known length goes inside the head: one message.
    if inline_body
        && !switching
        && body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_INLINE_BODY_BYTES)
    {
        let collected = tokio::select! {
            c = body.collect() => c,
            _ = cancel.raised() => return false,
        };
        let frame = match collected {
            Ok(c) => {
                head.body = c.to_bytes();
                head.complete = true;
                frame(agent_frame::Frame::Start(head))
            }
            Err(e) => error_frame(
                exchange_error::Kind::Upstream,
                format!(
                    "local service failed mid-response: {}",
                    crate::local::error_chain(&e)
                ),
            ),
        };
        return tx.send(frame).await.is_ok();
    }
    if tx
        .send(frame(agent_frame::Frame::Start(head)))
        .await
        .is_err()
    {
        return false;
    }

    if let (Some(on_upgrade), Some(input)) = (on_upgrade, upgraded_input.take()) {
        pump_upgraded(on_upgrade, input, tx, cancel).await;
        return false;
    }
    loop {
        let next = tokio::select! {
            f = body.frame() => f,
            _ = cancel.raised() => return false,
        };
        match next {
            Some(Ok(f)) => {
                let Ok(mut data) = f.into_data() else {
                    continue;
                };
                while !data.is_empty() {
                    let chunk = data.split_to(data.len().min(MAX_CHUNK_BYTES));
                    let sent = tokio::select! {
                        r = tx.send(frame(agent_frame::Frame::Data(chunk))) => r.is_ok(),
                        _ = cancel.raised() => false,
                    };
                    if !sent {
                        return false;
                    }
                }
            }
            Some(Err(e)) => {
                let message = format!(
                    "local service failed mid-response: {}",
                    crate::local::error_chain(&e)
                );
                return tx
                    .send(error_frame(exchange_error::Kind::Upstream, message))
                    .await
                    .is_ok();
            }
            None => {
                return tx
                    .send(frame(agent_frame::Frame::End(End {})))
                    .await
                    .is_ok();
            }
        }
    }
}

/// Raw bytes both ways after `101 Switching Protocols`.
async fn pump_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut input: mpsc::Receiver<Bytes>,
    tx: &FrameTx,
    cancel: &Flag,
) {
    let Ok(upgraded) = on_upgrade.await else {
        let _ = tx
            .send(error_frame(
                exchange_error::Kind::Upstream,
                "local upgrade failed".into(),
            ))
            .await;
        return;
    };
    let mut io = TokioIo::new(upgraded);
    let mut buf = BytesMut::with_capacity(MAX_CHUNK_BYTES);
    let (mut local_open, mut user_open) = (true, true);
    while local_open || user_open {
        tokio::select! {
            read = io.read_buf(&mut buf), if local_open => match read {
                Ok(0) | Err(_) => {
                    local_open = false;
                    if tx.send(frame(agent_frame::Frame::End(End {}))).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {
                    if tx.send(frame(agent_frame::Frame::Data(buf.split().freeze()))).await.is_err() {
                        return;
                    }
                    buf.reserve(MAX_CHUNK_BYTES);
                }
            },
            data = input.recv(), if user_open => match data {
                Some(data) => {
                    if io.write_all(&data).await.is_err() {
                        return;
                    }
                }
                None => {
                    user_open = false;
                    let _ = io.shutdown().await;
                }
            },
            _ = cancel.raised() => return,
        }
    }
}
