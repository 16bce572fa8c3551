//! Known agents: first/last seen, protocol, and the sticky per-agent port.
//!
//! Agent ids are kept as given, but uniqueness is on their lowercase form
//! (`agent_key`): host routing is case-insensitive, so `Foo` and `foo`
//! must never be two different agents.

use std::collections::HashMap;

use time::OffsetDateTime;

use crate::error::{conflict_or, db_err, decode_err};
use crate::open::with_pool;
use crate::ts::{from_ms, to_ms};
use crate::{Result, Store, StoreError};

/// A known agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    pub agent_id: String,
    /// Sticky port of its dedicated listener, if one was assigned.
    pub port: Option<u16>,
    pub first_seen: OffsetDateTime,
    pub last_seen: OffsetDateTime,
    /// Wire protocol of the last connection (`native`, `legacy`).
    pub protocol: String,
    pub last_remote_addr: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    agent_id: String,
    port: Option<i32>,
    first_seen: i64,
    last_seen: i64,
    protocol: String,
    last_remote_addr: Option<String>,
}

fn port_from_db(port: i32) -> Result<u16> {
    u16::try_from(port).map_err(|_| decode_err(format!("stored port {port} is out of range")))
}

impl TryFrom<AgentRow> for AgentRecord {
    type Error = StoreError;

    fn try_from(row: AgentRow) -> Result<Self> {
        Ok(AgentRecord {
            agent_id: row.agent_id,
            port: row.port.map(port_from_db).transpose()?,
            first_seen: from_ms(row.first_seen)?,
            last_seen: from_ms(row.last_seen)?,
            protocol: row.protocol,
            last_remote_addr: row.last_remote_addr,
        })
    }
}

/// The case-folded form that uniqueness is enforced on. Computed here, not
/// with SQL `lower()`, so both backends fold identically.
fn agent_key(agent_id: &str) -> String {
    agent_id.to_lowercase()
}

macro_rules! agent_columns {
    () => {
        "agent_id, port, first_seen, last_seen, protocol, last_remote_addr"
    };
}

impl Store {
    /// Records a connection: creates the agent or refreshes `last_seen`,
    /// `protocol` and `last_remote_addr` (keeping `first_seen` and the
    /// port). An existing agent whose id differs only in letter case is a
    /// `Conflict`.
    pub async fn upsert_agent(
        &self,
        agent_id: &str,
        protocol: &str,
        remote_addr: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<AgentRecord> {
        // The conditional DO UPDATE makes "same spelling → update, other
        // spelling → no row" one statement, so there is no race between a
        // lookup and the insert.
        const SQL: &str = concat!(
            "INSERT INTO agents (agent_id, agent_key, first_seen, last_seen, protocol, last_remote_addr) ",
            "VALUES ($1, $2, $3, $3, $4, $5) ON CONFLICT (agent_key) DO UPDATE SET ",
            "last_seen = excluded.last_seen, protocol = excluded.protocol, ",
            "last_remote_addr = excluded.last_remote_addr ",
            "WHERE agents.agent_id = excluded.agent_id RETURNING ",
            agent_columns!()
        );
        let key = agent_key(agent_id);
        // Two rounds: if the clashing agent is deleted between the upsert
        // and the lookup, the second upsert simply creates the record.
        for _ in 0..2 {
            let row: Option<AgentRow> = with_pool!(self, p => sqlx::query_as(SQL)
                .bind(agent_id)
                .bind(&key)
                .bind(to_ms(now))
                .bind(protocol)
                .bind(remote_addr)
                .fetch_optional(p)
                .await)
            .map_err(db_err)?;
            if let Some(row) = row {
                return row.try_into();
            }
            if let Some(existing) = self.find_agent_ignore_case(agent_id).await? {
                return Err(StoreError::Conflict(format!(
                    "agent id {agent_id:?} conflicts with existing agent {:?} \
                     (ids differ only in letter case)",
                    existing.agent_id
                )));
            }
        }
        Err(StoreError::Conflict(format!(
            "agent id {agent_id:?} is being created and deleted concurrently"
        )))
    }

    /// Refreshes `last_seen`; false when the agent is unknown.
    pub async fn touch_agent(&self, agent_id: &str, now: OffsetDateTime) -> Result<bool> {
        const SQL: &str = "UPDATE agents SET last_seen = $2 WHERE agent_id = $1";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(agent_id)
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Assigns (or with `None` clears) the agent's sticky port. A port held
    /// by another agent is taken from it in the same transaction; that
    /// agent's id is returned. `NotFound` when `agent_id` is unknown.
    pub async fn set_agent_port(
        &self,
        agent_id: &str,
        port: Option<u16>,
    ) -> Result<Option<String>> {
        // Clearing first also makes the first statement a write, so SQLite
        // takes its write lock up front instead of failing a lock upgrade.
        const TAKE: &str = "UPDATE agents SET port = NULL \
             WHERE port = $1 AND agent_id <> $2 RETURNING agent_id";
        const SET: &str = "UPDATE agents SET port = $1 WHERE agent_id = $2";
        let port = port.map(i32::from);
        let outcome = with_pool!(self, p => async {
            let mut tx = p.begin().await?;
            let previous: Option<String> = match port {
                Some(port) => {
                    sqlx::query_scalar(TAKE)
                        .bind(port)
                        .bind(agent_id)
                        .fetch_optional(&mut *tx)
                        .await?
                }
                None => None,
            };
            let done = sqlx::query(SET).bind(port).bind(agent_id).execute(&mut *tx).await?;
            if done.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(Some(previous))
        }
        .await)
        .map_err(|e| conflict_or(e, || "port is being assigned concurrently".into()))?;
        outcome.ok_or(StoreError::NotFound)
    }

    pub async fn get_agent(&self, agent_id: &str) -> Result<Option<AgentRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            agent_columns!(),
            " FROM agents WHERE agent_id = $1"
        );
        let row: Option<AgentRow> =
            with_pool!(self, p => sqlx::query_as(SQL).bind(agent_id).fetch_optional(p).await)
                .map_err(db_err)?;
        row.map(AgentRecord::try_from).transpose()
    }

    /// The agent whose id equals `agent_id` ignoring letter case, to
    /// refuse a new id that would collide with a known one.
    pub async fn find_agent_ignore_case(&self, agent_id: &str) -> Result<Option<AgentRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            agent_columns!(),
            " FROM agents WHERE agent_key = $1"
        );
        let row: Option<AgentRow> = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(agent_key(agent_id))
            .fetch_optional(p)
            .await)
        .map_err(db_err)?;
        row.map(AgentRecord::try_from).transpose()
    }

    /// All known agents in id order.
    pub async fn list_agents(&self) -> Result<Vec<AgentRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            agent_columns!(),
            " FROM agents ORDER BY agent_id"
        );
        let rows: Vec<AgentRow> =
            with_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await).map_err(db_err)?;
        rows.into_iter().map(AgentRecord::try_from).collect()
    }

    /// Forgets an agent and its sticky port; false when it was unknown.
    pub async fn delete_agent(&self, agent_id: &str) -> Result<bool> {
        const SQL: &str = "DELETE FROM agents WHERE agent_id = $1";
        let done = with_pool!(self, p => sqlx::query(SQL).bind(agent_id).execute(p).await.map(|r| r.rows_affected()))
            .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Sticky ports of all agents that have one, to seed the port allocator
    /// at start-up.
    pub async fn agent_ports(&self) -> Result<HashMap<String, u16>> {
        const SQL: &str = "SELECT agent_id, port FROM agents WHERE port IS NOT NULL";
        let rows: Vec<(String, i32)> =
            with_pool!(self, p => sqlx::query_as(SQL).fetch_all(p).await).map_err(db_err)?;
        rows.into_iter()
            .map(|(agent, port)| Ok((agent, port_from_db(port)?)))
            .collect()
    }
}
