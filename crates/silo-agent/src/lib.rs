//! The silo-proxy agent: dials out to the server, keeps one long-lived gRPC
//! connection, and replays the server's HTTP exchanges on a local service.
//!
//! # Layout
//! - [`config`]: configuration keys and validation.
//! - [`run`]: the entry point; takes an optional bound health listener and a
//!   shutdown token.
//! - [`session`]: connect, hello, heartbeats, reconnect ([`backoff`]).
//! - [`standby`]: the pool of pre-opened exchange streams.
//! - [`exchange`]: one exchange against the local service ([`local`]), on
//!   the stream's own connection to it ([`backend`]); its two halves run
//!   under [`joined`].
//! - [`health`]: the agent's own `GET /health`.
//! - [`provision`]: the `provision` command (key + CSR → certificate).
//! - [`renew`]: automatic certificate renewal over the tunnel.
//! - [`legacy`]: client mode for servers of the Go implementation.

pub mod backend;
pub mod backoff;
pub mod config;
pub mod exchange;
pub mod health;
pub mod joined;
pub mod legacy;
pub mod local;
pub mod provision;
pub mod renew;
pub mod session;
pub mod standby;

use config::AgentConfig;
use session::AgentStatus;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] silo_core::config::ConfigError),
}

/// Runs the agent until `shutdown` fires; exchanges under way then get
/// `shutdown_grace_seconds` to finish. `status` lets the caller watch it.
pub async fn run(
    config: AgentConfig,
    health: Option<TcpListener>,
    status: Arc<AgentStatus>,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    config.validate()?;
    let local = Arc::new(local::LocalService::new(config.service_uri()?));
    if !config.grpc.tls.enabled {
        tracing::warn!(
            "TLS is OFF: the tunnel is unencrypted and unauthenticated; development only"
        );
    }
    if let Some(listener) = health {
        tokio::spawn(health::serve(
            listener,
            status.clone(),
            config.grpc.agent_id.clone(),
            shutdown.clone(),
        ));
    }
    if config.grpc.protocol == "legacy" {
        legacy::run(Arc::new(config), local, status, shutdown).await;
    } else {
        session::run(Arc::new(config), local, status, shutdown).await;
    }
    Ok(())
}
