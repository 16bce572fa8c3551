//! Connected agents by id, and their dedicated ports.
//!
//! Lookups (every proxied request) take a read lock on a map for a
//! pointer clone; registrations, which also bind ports, are serialised by
//! one async lock so two connections of the same agent cannot interleave.
//! A multi-replica registry (agents held by other servers) will sit behind
//! the same `get`/`attach`/`detach` calls.

use crate::agent::{AgentConnection, CloseReason};
use crate::ports::{PortLease, PortPool, PortsExhausted};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// A connected agent and what the registry holds for it.
#[derive(Clone)]
pub struct Registered {
    pub conn: Arc<dyn AgentConnection>,
    pub port: Option<u16>,
    /// Stops the agent's dedicated listener.
    listener_stop: Option<CancellationToken>,
}

/// The outcome of attaching a connection.
pub struct Attached {
    pub port: Option<u16>,
    /// A listener to serve for the agent (a first connection; a replacing
    /// one inherits the running listener) and the token that stops it.
    pub new_listener: Option<(PortLease, CancellationToken)>,
}

pub struct Registry {
    agents: RwLock<HashMap<String, Registered>>,
    attach_lock: tokio::sync::Mutex<()>,
    ports: Option<Mutex<PortPool>>,
    bind_ip: IpAddr,
}

impl Registry {
    /// `ports: None` turns dedicated ports off (`http.agent_ports: false`).
    pub fn new(ports: Option<PortPool>, bind_ip: IpAddr) -> Self {
        Self {
            agents: RwLock::new(HashMap::new()),
            attach_lock: tokio::sync::Mutex::new(()),
            ports: ports.map(Mutex::new),
            bind_ip,
        }
    }

    /// The connected agent with this id (any letter case).
    pub fn get(&self, agent_id: &str) -> Option<Registered> {
        let key = silo_core::id::normalize_agent_id(agent_id);
        self.agents
            .read()
            .expect("registry lock")
            .get(&key)
            .cloned()
    }

    pub fn list(&self) -> Vec<Registered> {
        let mut all: Vec<Registered> = self
            .agents
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.conn.info().agent_id.cmp(&b.conn.info().agent_id));
        all
    }

    pub fn len(&self) -> usize {
        self.agents.read().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `conn` the agent's connection. An older connection of the same
    /// agent is closed and hands over its port; a first connection gets a
    /// port from the pool, or is refused when the pool is exhausted.
    pub async fn attach(&self, conn: Arc<dyn AgentConnection>) -> Result<Attached, PortsExhausted> {
        let key = silo_core::id::normalize_agent_id(&conn.info().agent_id);
        let _serial = self.attach_lock.lock().await;
        let previous = self
            .agents
            .read()
            .expect("registry lock")
            .get(&key)
            .cloned();
        let (entry, attached) = match previous {
            Some(old) => {
                old.conn.close(CloseReason::Replaced);
                let entry = Registered {
                    conn,
                    port: old.port,
                    listener_stop: old.listener_stop.clone(),
                };
                (
                    entry,
                    Attached {
                        port: old.port,
                        new_listener: None,
                    },
                )
            }
            None => match &self.ports {
                Some(pool) => {
                    let lease = pool
                        .lock()
                        .expect("port pool lock")
                        .lease(&key, self.bind_ip)?;
                    let stop = CancellationToken::new();
                    let port = lease.port;
                    let entry = Registered {
                        conn,
                        port: Some(port),
                        listener_stop: Some(stop.clone()),
                    };
                    (
                        entry,
                        Attached {
                            port: Some(port),
                            new_listener: Some((lease, stop)),
                        },
                    )
                }
                None => (
                    Registered {
                        conn,
                        port: None,
                        listener_stop: None,
                    },
                    Attached {
                        port: None,
                        new_listener: None,
                    },
                ),
            },
        };
        self.agents
            .write()
            .expect("registry lock")
            .insert(key, entry);
        Ok(attached)
    }

    /// Removes the agent if `session_id` is still its current connection
    /// (a replaced connection leaving must not remove its successor), stops
    /// its listener and frees its port. Returns whether it was removed.
    pub async fn detach(&self, agent_id: &str, session_id: &str) -> bool {
        let key = silo_core::id::normalize_agent_id(agent_id);
        let _serial = self.attach_lock.lock().await;
        let mut agents = self.agents.write().expect("registry lock");
        let current = agents
            .get(&key)
            .is_some_and(|r| r.conn.info().session_id == session_id);
        if !current {
            return false;
        }
        let removed = agents.remove(&key).expect("checked above");
        drop(agents);
        self.release(&removed);
        true
    }

    fn release(&self, removed: &Registered) {
        if let Some(stop) = &removed.listener_stop {
            stop.cancel();
        }
        if let (Some(pool), Some(port)) = (&self.ports, removed.port) {
            pool.lock().expect("port pool lock").release(port);
        }
    }

    /// Forgets an agent: drops its remembered port and ends its session if
    /// it is connected (its port is freed when the session ends). Returns
    /// whether it was connected.
    pub async fn forget(&self, agent_id: &str) -> bool {
        let key = silo_core::id::normalize_agent_id(agent_id);
        // Serialised with attach so a connection being registered right now
        // cannot bring the remembered port back after it was dropped.
        let _serial = self.attach_lock.lock().await;
        if let Some(pool) = &self.ports {
            pool.lock().expect("port pool lock").forget(&key);
        }
        let current = self
            .agents
            .read()
            .expect("registry lock")
            .get(&key)
            .cloned();
        match current {
            Some(r) => {
                r.conn.close(CloseReason::Forgotten);
                true
            }
            None => false,
        }
    }

    /// Closes every session (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for r in self.list() {
            r.conn.close(reason);
        }
    }
}
