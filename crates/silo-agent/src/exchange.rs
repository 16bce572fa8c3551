//! The agent half of one exchange: replay the request on the local service
//! and stream the answer (or, after a `101`, raw bytes) back.

use crate::local::{LocalBody, LocalService};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper_util::rt::TokioIo;
use silo_proto::headers;
use silo_proto::limits::{FRAME_QUEUE, MAX_CHUNK_BYTES};
use silo_proto::v1::{
    AgentFrame, End, ExchangeError, RequestStart, ResponseStart, ServerFrame, agent_frame,
    exchange_error, server_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
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
/// bytes go to `data_tx` until `End`; a `Cancel`, or the stream ending before
/// the exchange did, cancels it.
async fn dispatch_inbound(
    mut inbound: Streaming<ServerFrame>,
    data_tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
) {
    let mut data_tx = Some(data_tx);
    loop {
        let next = tokio::select! {
            m = inbound.message() => m,
            _ = cancel.cancelled() => return,
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
            })) => data_tx = None,
            Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Cancel(c)),
            })) => {
                debug!(reason = %c.reason, "exchange cancelled by the server");
                cancel.cancel();
                return;
            }
            Ok(Some(_)) => {}
            other => {
                debug!(?other, "server side of the exchange ended");
                cancel.cancel();
                return;
            }
        }
    }
}

/// How long the agent keeps an exchange stream open after its own last
/// frame, waiting for the server to close its side.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one exchange to its end. `tx` feeds the agent's side of the stream.
pub async fn run(
    local: &LocalService,
    start: RequestStart,
    inbound: Streaming<ServerFrame>,
    tx: FrameTx,
) {
    let cancel = CancellationToken::new();
    let (data_tx, data_rx) = mpsc::channel::<Bytes>(FRAME_QUEUE);
    let dispatcher = tokio::spawn(dispatch_inbound(inbound, data_tx, cancel.clone()));
    serve(local, start, data_rx, tx, &cancel).await;
    // Dropping the server's half (the response stream) now would reset the
    // HTTP/2 stream and discard the frames still queued on ours, so wait
    // for the server to close it first.
    let _ = tokio::time::timeout(LINGER, dispatcher).await;
    cancel.cancel();
}

async fn serve(
    local: &LocalService,
    start: RequestStart,
    data_rx: mpsc::Receiver<Bytes>,
    tx: FrameTx,
    cancel: &CancellationToken,
) {
    let upgrade = start.upgrade;
    let (body, mut upgraded_input): (LocalBody, _) = if start.has_body && !upgrade {
        let stream = ReceiverStream::new(data_rx);
        let body = StreamBody::new(tokio_stream::StreamExt::map(stream, |b| {
            Ok::<_, crate::local::BoxError>(http_body::Frame::data(b))
        }));
        (body.boxed_unsync(), None)
    } else {
        (
            Empty::new().map_err(|never| match never {}).boxed_unsync(),
            Some(data_rx),
        )
    };
    let req = match local.build_request(&start, body) {
        Ok(r) => r,
        Err(e) => {
            let _ = tx
                .send(error_frame(exchange_error::Kind::BadRequest, e))
                .await;
            return;
        }
    };
    let response = tokio::select! {
        r = local.send(req) => r,
        _ = cancel.cancelled() => { debug!("cancelled before the local response"); return },
    };
    let mut response = match response {
        Ok(r) => r,
        Err(message) => {
            debug!(%message, "local request failed");
            let _ = tx
                .send(error_frame(exchange_error::Kind::Upstream, message))
                .await;
            return;
        }
    };
    let status = response.status();
    let switching = upgrade && status == http::StatusCode::SWITCHING_PROTOCOLS;
    let on_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
    let (mut parts, mut body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    let head = ResponseStart {
        status: u32::from(status.as_u16()),
        headers: headers::to_wire(&parts.headers),
    };
    if tx
        .send(frame(agent_frame::Frame::Start(head)))
        .await
        .is_err()
    {
        return;
    }

    if let (Some(on_upgrade), Some(input)) = (on_upgrade, upgraded_input.take()) {
        pump_upgraded(on_upgrade, input, &tx, cancel).await;
        return;
    }
    loop {
        let next = tokio::select! {
            f = body.frame() => f,
            _ = cancel.cancelled() => return,
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
                        _ = cancel.cancelled() => false,
                    };
                    if !sent {
                        return;
                    }
                }
            }
            Some(Err(e)) => {
                let message = format!(
                    "local service failed mid-response: {}",
                    crate::local::error_chain(&e)
                );
                let _ = tx
                    .send(error_frame(exchange_error::Kind::Upstream, message))
                    .await;
                return;
            }
            None => {
                let _ = tx.send(frame(agent_frame::Frame::End(End {}))).await;
                return;
            }
        }
    }
}

/// Raw bytes both ways after `101 Switching Protocols`.
async fn pump_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut input: mpsc::Receiver<Bytes>,
    tx: &FrameTx,
    cancel: &CancellationToken,
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
            _ = cancel.cancelled() => return,
        }
    }
}
