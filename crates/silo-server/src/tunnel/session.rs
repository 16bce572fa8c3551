//! One native agent session: the control stream's state and the agent's
//! standby exchange streams.

use crate::agent::{
    AgentConnection, AgentInfo, BoxFuture, CloseReason, ProxyBody, ProxyError, ProxyRequest,
};
use crate::inflight::InFlight;
use crate::liveness::SessionLiveness;
use http::Response;
use silo_proto::v1::{AgentFrame, ServerFrame};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tonic::Streaming;

pub(crate) type FrameTx = super::outbound::Outbound<ServerFrame>;

/// An Exchange stream the agent opened in advance; the server claims it by
/// sending the request head as its first frame.
pub(crate) struct Standby {
    pub tx: FrameTx,
    pub inbound: Streaming<AgentFrame>,
}

/// Optional protocol behaviour the agent announced in its hello; the
/// server uses each only when the agent listed it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AgentCaps {
    pub stream_reuse: bool,
    pub inline_body: bool,
}

impl AgentCaps {
    pub(crate) fn from_hello(list: &[String]) -> Self {
        use silo_proto::capabilities::{INLINE_BODY, STREAM_REUSE, has};
        Self {
            stream_reuse: has(list, STREAM_REUSE),
            inline_body: has(list, INLINE_BODY),
        }
    }
}

/// Capabilities the server lists in its welcome.
pub(crate) fn server_capabilities() -> Vec<String> {
    use silo_proto::capabilities::{INLINE_BODY, STREAM_REUSE};
    vec![STREAM_REUSE.to_owned(), INLINE_BODY.to_owned()]
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
    pub(crate) caps: AgentCaps,
    pub(crate) settings: Arc<ExchangeSettings>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) server_in_flight: Arc<InFlight>,
    pub(crate) liveness: SessionLiveness,
    standby: Mutex<VecDeque<Standby>>,
    standby_ready: Notify,
    exchanges_started: AtomicU64,
}

impl NativeSession {
    pub(crate) fn new(
        info: AgentInfo,
        settings: Arc<ExchangeSettings>,
        server_in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            peer_cert: None,
            caps: AgentCaps::default(),
            liveness: SessionLiveness::default(),
            info,
            settings,
            in_flight: Arc::default(),
            server_in_flight,
            standby: Mutex::new(VecDeque::new()),
            standby_ready: Notify::new(),
            exchanges_started: AtomicU64::new(0),
        }
    }

    /// A short id for the agent's logs, unique within the session (the
    /// session id names the session); no random bytes on the hot path.
    pub(crate) fn next_exchange_id(&self) -> String {
        let n = self.exchanges_started.fetch_add(1, Ordering::Relaxed) + 1;
        exchange_id(&self.info.session_id[..8], n)
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
                _ = self.liveness.cancel.cancelled() => return None,
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
        self.liveness.last_seen()
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
        self.liveness.close(reason);
    }
}

/// `{prefix}-{n}` without `format!`, which cost ≈ 850 instructions per
/// exchange in callgrind, on every proxied request.
fn exchange_id(prefix: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let n = digits.format(n);
    let mut id = String::with_capacity(prefix.len() + 1 + n.len());
    id.push_str(prefix);
    id.push('-');
    id.push_str(n);
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn exchange_ids_match_format() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(super::exchange_id("0a1b2c3d", n), format!("0a1b2c3d-{n}"));
        }
    }
}
