//! State shared by every listener of one running server.

use crate::agent::AgentConnection;
use crate::config::ServerConfig;
use crate::http::proxy::{self, Route};
use crate::http::serve::{HttpOptions, serve};
use crate::inflight::InFlight;
use crate::ports::{PortPool, PortsExhausted};
use crate::registry::Registry;
use crate::tunnel::session::ExchangeSettings;
use hyper::service::service_fn;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

pub struct ServerState {
    pub config: Arc<ServerConfig>,
    pub registry: Registry,
    pub exchange_settings: Arc<ExchangeSettings>,
    /// Exchanges under way on every agent; shutdown waits for it to drain.
    pub in_flight: Arc<InFlight>,
    pub http_options: HttpOptions,
    /// Fires when the server begins to shut down.
    pub shutdown: CancellationToken,
    pub admin_api_key: Option<String>,
}

impl ServerState {
    pub fn new(
        config: ServerConfig,
        shutdown: CancellationToken,
        admin_api_key: Option<String>,
    ) -> Self {
        let bind_ip = config
            .bind_addr()
            .expect("configuration validated before start");
        let ports = config
            .http
            .agent_ports
            .then(|| PortPool::new(config.http.agent_port_range));
        Self {
            registry: Registry::new(ports, bind_ip),
            exchange_settings: Arc::new(ExchangeSettings {
                request_timeout: config.request_timeout(),
                idle_timeout: config.idle_timeout(),
                max_request_body_bytes: config.proxy.max_request_body_bytes,
            }),
            in_flight: Arc::default(),
            http_options: HttpOptions {
                header_read_timeout: Duration::from_secs(config.http.header_read_timeout_seconds),
                grace: Duration::from_secs(config.shutdown_grace_seconds),
            },
            config: Arc::new(config),
            shutdown,
            admin_api_key,
        }
    }

    /// Registers an agent connection and, for a first connection, starts
    /// its dedicated listener. Returns the agent's port.
    pub async fn attach(
        self: &Arc<Self>,
        conn: Arc<dyn AgentConnection>,
    ) -> Result<Option<u16>, PortsExhausted> {
        let agent_id = conn.info().agent_id.clone();
        let attached = self.registry.attach(conn).await?;
        if let Some((lease, stop)) = attached.new_listener {
            let state = self.clone();
            let shutdown = self.shutdown.clone();
            let both = CancellationToken::new();
            let span = info_span!("agent_listener", agent_id = %agent_id, port = lease.port);
            tokio::spawn({
                let both = both.clone();
                async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = shutdown.cancelled() => {}
                    }
                    both.cancel();
                }
            });
            let opts = self.http_options.clone();
            tokio::spawn(
                async move {
                    let make = |peer| {
                        let (state, route) = (state.clone(), Route::Agent(agent_id.clone()));
                        service_fn(move |req| {
                            proxy::handle(state.clone(), route.clone(), peer, req)
                        })
                    };
                    serve(lease.listener, make, opts, both).await;
                }
                .instrument(span),
            );
        }
        Ok(attached.port)
    }
}
