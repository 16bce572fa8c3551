//! The agent's standby Exchange streams.
//!
//! The agent keeps at least `min_idle` streams open in advance; the server
//! claims one by sending a request head on it, which saves the round trip of
//! opening a stream on demand. A claim that leaves fewer than `min_idle`
//! idle opens replacements (one more when it took the last idle one), so the
//! pool grows to the concurrency the server asks for (bounded by
//! `max_total`). With "stream-reuse" a stream whose exchange ended cleanly
//! waits for the next request head; without it each stream carries one
//! exchange and every claim opens a replacement.

use crate::backend::{self, Backend};
use crate::exchange;
use crate::local::LocalService;
use silo_proto::SESSION_ID_METADATA;
use silo_proto::capabilities;
use silo_proto::limits::FRAME_QUEUE;
use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{Limits, ServerFrame, server_frame};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tracing::{Instrument, debug, debug_span};

/// How long a stream that carried its last exchange stays open for the
/// server to close its side.
const LINGER: std::time::Duration = std::time::Duration::from_secs(30);

pub struct StandbyPool {
    client: TunnelClient<Channel>,
    session_id: MetadataValue<tonic::metadata::Ascii>,
    local: Arc<LocalService>,
    idle: AtomicU32,
    active: AtomicU32,
    min_idle: u32,
    max_total: u32,
    /// The server reuses streams whose exchange ended cleanly.
    reuse: bool,
    /// The server accepts small response bodies inside the head.
    inline_body: bool,
    /// Stops idle standbys (not exchanges under way) when the session ends.
    stop: CancellationToken,
    /// Exchanges under way, for a draining shutdown.
    pub exchanges: TaskTracker,
}

impl StandbyPool {
    pub fn new(
        client: TunnelClient<Channel>,
        session_id: &str,
        local: Arc<LocalService>,
        limits: &Limits,
        server_capabilities: &[String],
    ) -> Result<Arc<Self>, String> {
        let session_id = session_id
            .parse()
            .map_err(|_| "server sent an invalid session id".to_owned())?;
        Ok(Arc::new(Self {
            client,
            session_id,
            local,
            idle: AtomicU32::new(0),
            active: AtomicU32::new(0),
            min_idle: limits.min_standby_streams.max(1),
            max_total: limits.max_concurrent_exchanges.max(1),
            reuse: capabilities::has(server_capabilities, capabilities::STREAM_REUSE),
            inline_body: capabilities::has(server_capabilities, capabilities::INLINE_BODY),
            stop: CancellationToken::new(),
            exchanges: TaskTracker::new(),
        }))
    }

    pub fn in_flight(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Opens standbys until `min_idle` are idle.
    pub fn fill(self: &Arc<Self>) {
        let idle = self.idle.load(Ordering::Relaxed);
        self.open(self.min_idle.saturating_sub(idle));
    }

    /// Stops handing out new exchanges; those under way continue.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    fn open(self: &Arc<Self>, count: u32) {
        for _ in 0..count {
            let total = self.idle.load(Ordering::Relaxed) + self.active.load(Ordering::Relaxed);
            if total >= self.max_total || self.stop.is_cancelled() {
                return;
            }
            self.idle.fetch_add(1, Ordering::Relaxed);
            let pool = self.clone();
            self.exchanges.spawn(async move { pool.standby().await });
        }
    }

    async fn standby(self: Arc<Self>) {
        let (tx, rx) = mpsc::channel(FRAME_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert(SESSION_ID_METADATA, self.session_id.clone());
        let mut client = self.client.clone();
        let opened = tokio::select! {
            r = client.exchange(request) => r,
            _ = self.stop.cancelled() => Err(tonic::Status::cancelled("session ended")),
        };
        let mut inbound = match opened {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                debug!(code = ?status.code(), "standby stream not opened: {}", status.message());
                self.idle.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        };
        debug!("standby stream open");
        let mut local_conn = Backend::default();
        loop {
            let first = local_conn
                .idle(async {
                    tokio::select! {
                        m = inbound.message() => m,
                        _ = self.stop.cancelled() => Ok(None),
                    }
                })
                .await;
            let idle_left = self.idle.fetch_sub(1, Ordering::Relaxed) - 1;
            let Ok(Some(ServerFrame {
                frame: Some(server_frame::Frame::Start(start)),
            })) = first
            else {
                // The server closed or cancelled a stream it was not using
                // (say, after an exchange it chose not to reuse): keep
                // `min_idle` others ready, or its next request would wait.
                if !self.stop.is_cancelled() {
                    self.fill();
                }
                return;
            };
            self.active.fetch_add(1, Ordering::Relaxed);
            let short = self.min_idle.saturating_sub(idle_left) + u32::from(idle_left == 0);
            // Without reuse the claimed stream is gone for good.
            self.open(if self.reuse { short } else { short.max(1) });
            let span = debug_span!("exchange", id = %start.exchange_id, method = %start.method);
            let (slot, requester) = local_conn.split();
            let exchange = exchange::run(
                &self.local,
                requester,
                start,
                &mut inbound,
                &tx,
                self.inline_body,
            );
            let clean = backend::drive(slot, exchange).instrument(span).await;
            self.active.fetch_sub(1, Ordering::Relaxed);
            if !(clean && self.reuse) || self.stop.is_cancelled() {
                // A connection left mid-exchange cannot carry another one;
                // dropping it aborts what the local service is doing.
                drop(local_conn);
                if clean {
                    // Dropping our half now would reset the HTTP/2 stream
                    // and discard frames still queued on it: wait for the
                    // server to close its side first.
                    let drain = async { while let Ok(Some(_)) = inbound.message().await {} };
                    let _ = tokio::time::timeout(LINGER, drain).await;
                }
                return;
            }
            self.idle.fetch_add(1, Ordering::Relaxed);
        }
    }
}
