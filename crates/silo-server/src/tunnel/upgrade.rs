//! After `101 Switching Protocols`: the upgraded byte stream both ways.

use super::exchange::frame;
use super::response::CancelOnDrop;
use super::session::FrameTx;
use crate::inflight::InFlightGuard;
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use silo_proto::limits::MAX_CHUNK_BYTES;
use silo_proto::v1::{AgentFrame, End, agent_frame, server_frame};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};
use tonic::Streaming;
use tracing::debug;

/// After `101 Switching Protocols`: raw bytes both ways until either side
/// ends or nothing moves for the idle timeout.
pub(crate) async fn pump_upgraded(
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
