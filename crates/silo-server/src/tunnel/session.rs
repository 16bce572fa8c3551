//! One native agent session: the control stream's state and the agent's
//! standby exchange streams.

use crate::agent::{
    AgentConnection, AgentInfo, BoxFuture, CloseReason, ProxyBody, ProxyError, ProxyRequest,
};
use crate::inflight::InFlight;
use http::Response;
use silo_proto::v1::{AgentFrame, ServerFrame};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

pub(crate) type FrameTx = mpsc::Sender<Result<ServerFrame, Status>>;

/// An Exchange stream the agent opened in advance; the server claims it by
/// sending the request head as its first frame.
pub(crate) struct Standby {
    pub tx: FrameTx,
    pub inbound: Streaming<AgentFrame>,
}

/// Limits applied to every exchange.
#[derive(Clone, Debug)]
pub struct ExchangeSettings {
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0 = unlimited.
    pub max_request_body_bytes: u64,
}

pub struct NativeSession {
    pub(crate) info: AgentInfo,
    /// DER of the client certificate the session was opened with: exchange
    /// streams presenting the same bytes need no second parse.
    pub(crate) peer_cert: Option<Vec<u8>>,
    pub(crate) settings: Arc<ExchangeSettings>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) server_in_flight: Arc<InFlight>,
    last_seen_ms: AtomicI64,
    standby: Mutex<VecDeque<Standby>>,
    standby_ready: Notify,
    pub(crate) cancel: CancellationToken,
    close_reason: Mutex<Option<CloseReason>>,
}

impl NativeSession {
    pub(crate) fn new(
        info: AgentInfo,
        settings: Arc<ExchangeSettings>,
        server_in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            peer_cert: None,
            last_seen_ms: AtomicI64::new(now_ms()),
            info,
            settings,
            in_flight: Arc::default(),
            server_in_flight,
            standby: Mutex::new(VecDeque::new()),
            standby_ready: Notify::new(),
            cancel: CancellationToken::new(),
            close_reason: Mutex::new(None),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_seen_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn idle_for(&self) -> Duration {
        let ms = now_ms().saturating_sub(self.last_seen_ms.load(Ordering::Relaxed));
        Duration::from_millis(ms.max(0) as u64)
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        *self.close_reason.lock().expect("close reason lock")
    }

    pub(crate) fn add_standby(&self, standby: Standby) {
        self.standby
            .lock()
            .expect("standby lock")
            .push_back(standby);
        self.standby_ready.notify_one();
    }

    /// Takes a live standby stream, waiting for the agent to open one when
    /// none is idle. `None` once the session is closed.
    pub(crate) async fn claim(&self) -> Option<Standby> {
        loop {
            let ready = self.standby_ready.notified();
            {
                let mut pool = self.standby.lock().expect("standby lock");
                while let Some(s) = pool.pop_front() {
                    if !s.tx.is_closed() {
                        return Some(s);
                    }
                }
            }
            tokio::select! {
                _ = ready => {}
                _ = self.cancel.cancelled() => return None,
            }
        }
    }

    pub(crate) fn drop_standby(&self) {
        self.standby.lock().expect("standby lock").clear();
    }
}

impl AgentConnection for NativeSession {
    fn info(&self) -> &AgentInfo {
        &self.info
    }

    fn last_seen(&self) -> OffsetDateTime {
        let ms = self.last_seen_ms.load(Ordering::Relaxed);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.get()
    }

    fn forward(
        self: Arc<Self>,
        req: ProxyRequest,
    ) -> BoxFuture<Result<Response<ProxyBody>, ProxyError>> {
        Box::pin(super::exchange::forward(self, req))
    }

    fn close(&self, reason: CloseReason) {
        self.close_reason
            .lock()
            .expect("close reason lock")
            .get_or_insert(reason);
        self.cancel.cancel();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
