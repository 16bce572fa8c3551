//! Known agents in the store: recorded when they connect, `last_seen`
//! refreshed when they leave, sticky ports remembered across restarts,
//! and forgotten on an administrator's request.
//!
//! The store is consulted on the way in only to refuse an id that collides
//! (by letter case) with a known agent. When the database is unreachable
//! agents are still let in: carrying traffic matters more than bookkeeping,
//! and the registry already treats ids case-insensitively.

use crate::agent::{AgentInfo, Protocol};
use crate::ports::PortsExhausted;
use crate::state::ServerState;
use silo_store::{AgentRecord, StoreError};
use time::OffsetDateTime;
use tracing::{debug, warn};

/// Why an agent connection was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    #[error(transparent)]
    PortsExhausted(#[from] PortsExhausted),
    /// A known agent's id differs from this one only in letter case.
    #[error("{0}")]
    IdConflict(String),
}

impl AttachError {
    /// The gRPC status the agent is refused with.
    pub fn to_status(&self) -> tonic::Status {
        match self {
            Self::PortsExhausted(e) => tonic::Status::resource_exhausted(e.to_string()),
            Self::IdConflict(m) => tonic::Status::already_exists(m.clone()),
        }
    }
}

pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Native => "native",
        Protocol::Legacy => "legacy",
    }
}

impl ServerState {
    /// Records a connecting agent. `Ok(None)` when the store is unavailable
    /// (logged; the agent is let in regardless).
    pub(crate) async fn remember_agent(
        &self,
        info: &AgentInfo,
    ) -> Result<Option<AgentRecord>, AttachError> {
        let remote = info.remote_addr.map(|a| a.to_string());
        let result = self
            .store
            .upsert_agent(
                &info.agent_id,
                protocol_name(info.protocol),
                remote.as_deref(),
                OffsetDateTime::now_utc(),
            )
            .await;
        match result {
            Ok(record) => Ok(Some(record)),
            Err(StoreError::Conflict(message)) => Err(AttachError::IdConflict(message)),
            Err(e) => {
                warn!(agent_id = %info.agent_id, "cannot record the agent in the store: {e}");
                Ok(None)
            }
        }
    }

    /// Persists the agent's port when it changed, so it gets it back after
    /// a restart.
    pub(crate) async fn record_port(
        &self,
        agent_id: &str,
        known: Option<&AgentRecord>,
        port: Option<u16>,
    ) {
        let Some(known) = known else { return };
        if port.is_none() || known.port == port {
            return;
        }
        match self.store.set_agent_port(agent_id, port).await {
            Ok(Some(previous)) => {
                debug!(%agent_id, ?port, %previous, "port taken over from an agent that held it before");
            }
            Ok(None) => {}
            // Forgotten concurrently: nothing to remember it for.
            Err(StoreError::NotFound) => {}
            Err(e) => warn!(%agent_id, ?port, "cannot record the agent's port: {e}"),
        }
    }

    /// Removes a session that ended and, if it was the agent's current
    /// one, records when the agent was last seen. Returns whether the
    /// agent was removed (false when a newer connection replaced it).
    pub async fn detach(&self, info: &AgentInfo) -> bool {
        let removed = self.registry.detach(&info.agent_id, &info.session_id).await;
        self.audit_connection("agent.disconnected", info, None)
            .await;
        if removed {
            let now = OffsetDateTime::now_utc();
            if let Err(e) = self.store.touch_agent(&info.agent_id, now).await {
                warn!(agent_id = %info.agent_id, "cannot record when the agent was last seen: {e}");
            }
        }
        removed
    }

    /// Forgets an agent: its store record, its sticky port, and its session
    /// if it is connected. Returns false when it was neither known nor
    /// connected. `agent_id` may differ in letter case from the record.
    pub async fn forget_agent(&self, agent_id: &str) -> Result<bool, StoreError> {
        let record = self.store.find_agent_ignore_case(agent_id).await?;
        let deleted = match &record {
            Some(r) => self.store.delete_agent(&r.agent_id).await?,
            None => false,
        };
        let was_connected = self.registry.forget(agent_id).await;
        Ok(deleted || was_connected)
    }
}
