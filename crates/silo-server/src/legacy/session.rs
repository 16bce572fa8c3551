//! One legacy agent connection: its outbound message queue, the requests
//! waiting for their `RESPONSE`, and what the registry sees of it.

use crate::agent::{
    AgentConnection, AgentInfo, BoxFuture, CloseReason, ProxyBody, ProxyError, ProxyRequest,
};
use crate::inflight::InFlight;
use crate::liveness::SessionLiveness;
use http::Response;
use silo_proto::legacy::ProxyMessage;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Messages to the agent, in the order they go on its stream.
pub(crate) type Outbound = mpsc::Sender<Result<ProxyMessage, Status>>;

/// Limits of the buffered legacy exchanges.
#[derive(Clone, Debug)]
pub struct LegacySettings {
    /// Until the agent's `RESPONSE` arrives (`proxy.request_timeout_seconds`).
    pub request_timeout: Duration,
    /// A user's request body that moves no byte this long is abandoned.
    pub idle_timeout: Duration,
    /// Request bodies beyond this are refused with 413.
    pub max_request_body_bytes: u64,
    /// `RESPONSE` payloads beyond this become a 502.
    pub max_response_body_bytes: u64,
}

type Waiting = HashMap<String, oneshot::Sender<ProxyMessage>>;

pub struct LegacySession {
    pub(crate) info: AgentInfo,
    pub(crate) settings: Arc<LegacySettings>,
    pub(crate) outbound: Outbound,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) server_in_flight: Arc<InFlight>,
    pub(crate) liveness: SessionLiveness,
    /// Requests sent and not yet answered, by message id. `None` once the
    /// session ended, so a request cannot start waiting on a dead stream.
    waiting: Mutex<Option<Waiting>>,
}

impl LegacySession {
    pub(crate) fn new(
        info: AgentInfo,
        settings: Arc<LegacySettings>,
        outbound: Outbound,
        server_in_flight: Arc<InFlight>,
    ) -> Self {
        Self {
            info,
            settings,
            outbound,
            in_flight: Arc::default(),
            server_in_flight,
            liveness: SessionLiveness::default(),
            waiting: Mutex::new(Some(HashMap::new())),
        }
    }

    /// Registers a request about to be sent; `None` when the session has
    /// already ended.
    pub(crate) fn expect(&self, id: &str) -> Option<oneshot::Receiver<ProxyMessage>> {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let (tx, rx) = oneshot::channel();
        waiting.as_mut()?.insert(id.to_owned(), tx);
        Some(rx)
    }

    /// Stops waiting for `id` (answered, timed out, or the user went away).
    pub(crate) fn forget(&self, id: &str) {
        if let Some(waiting) = self.waiting.lock().expect("waiting lock").as_mut() {
            waiting.remove(id);
        }
    }

    /// Hands a `RESPONSE` to its request; false when nobody waits for it.
    pub(crate) fn complete(&self, response: ProxyMessage) -> bool {
        let tx = self
            .waiting
            .lock()
            .expect("waiting lock")
            .as_mut()
            .and_then(|w| w.remove(&response.id));
        tx.is_some_and(|tx| tx.send(response).is_ok())
    }

    /// Ends the session: every request still waiting fails at once (its
    /// sender is dropped) instead of running into the request timeout.
    pub(crate) fn end(&self) {
        self.waiting.lock().expect("waiting lock").take();
        self.liveness.cancel.cancel();
    }
}

impl AgentConnection for LegacySession {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Protocol;

    fn session() -> LegacySession {
        let info = AgentInfo {
            agent_id: "a".into(),
            session_id: "s".into(),
            protocol: Protocol::Legacy,
            connected_since: OffsetDateTime::now_utc(),
            remote_addr: None,
            agent_version: String::new(),
            cert_serial: None,
            cert_not_after: None,
            meters: Arc::new(crate::metrics::AgentMeters::new("a")),
        };
        let settings = Arc::new(LegacySettings {
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_request_body_bytes: 1,
            max_response_body_bytes: 1,
        });
        let (tx, _rx) = mpsc::channel(1);
        LegacySession::new(info, settings, tx, Arc::default())
    }

    fn response(id: &str) -> ProxyMessage {
        ProxyMessage {
            id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn responses_reach_their_request_once() {
        let s = session();
        let rx = s.expect("r1").unwrap();
        assert!(!s.complete(response("other")));
        assert!(s.complete(response("r1")));
        assert!(!s.complete(response("r1")), "a second answer has no taker");
        assert_eq!(rx.await.unwrap().id, "r1");
    }

    #[tokio::test]
    async fn ending_the_session_fails_waiting_requests_and_refuses_new_ones() {
        let s = session();
        let rx = s.expect("r1").unwrap();
        s.end();
        assert!(rx.await.is_err(), "the waiting request learns at once");
        assert!(s.expect("r2").is_none());
        assert!(s.liveness.cancel.is_cancelled());
    }
}
