//! State shared by every listener of one running server.

use crate::agent::AgentConnection;
use crate::config::ServerConfig;
use crate::http::proxy::{self, Route};
use crate::http::serve::{HttpOptions, serve};
use crate::inflight::InFlight;
use crate::known_agents::AttachError;
use crate::ports::PortPool;
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
    /// The CA, rustls configurations and per-agent connection kill
    /// switches; `None` when `grpc.tls.enabled` is false.
    pub tls: Option<Arc<crate::tls::TlsSetup>>,
    /// Revoked certificates, checked at every tunnel handshake.
    pub revocations: Arc<crate::tls::revocation::RevocationCache>,
    /// Durable state: accounts, keys, certificates, audit, known agents.
    pub store: silo_store::Store,
    pub tokens: crate::accounts::Tokens,
    pub passwords: crate::accounts::Passwords,
    /// Failed `POST /auth/login` attempts per client address.
    pub login_limiter: crate::ratelimit::FailureLimiter,
    /// Failed `POST /api/v1/provision` attempts per client address.
    pub provision_limiter: crate::ratelimit::FailureLimiter,
    /// Peers whose `X-Forwarded-For` is believed (`http.trusted_proxies`).
    pub trusted_proxies: crate::client_addr::TrustedProxies,
}

impl ServerState {
    pub fn new(
        config: ServerConfig,
        shutdown: CancellationToken,
        admin_api_key: Option<String>,
        persistence: crate::store_setup::Persistence,
    ) -> Self {
        let bind_ip = config
            .bind_addr()
            .expect("configuration validated before start");
        let ports = config.http.agent_ports.then(|| {
            let mut pool = PortPool::new(config.http.agent_port_range);
            // Agents get their ports back after a server restart.
            pool.seed_sticky(persistence.sticky_ports);
            pool
        });
        let trusted_proxies =
            crate::client_addr::TrustedProxies::parse(&config.http.trusted_proxies)
                .expect("configuration validated before start");
        let login_limiter =
            crate::ratelimit::FailureLimiter::per_minute(config.auth.login_max_failures_per_minute);
        let provision_limiter =
            crate::ratelimit::FailureLimiter::per_minute(config.provision.max_failures_per_minute);
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
                tls: None,
            },
            config: Arc::new(config),
            shutdown,
            admin_api_key,
            tls: None,
            revocations: Arc::default(),
            store: persistence.store,
            tokens: persistence.tokens,
            passwords: crate::accounts::Passwords::default(),
            login_limiter,
            provision_limiter,
            trusted_proxies,
        }
    }

    /// Adds the TLS setup (it shares this state's revocation set).
    pub fn with_tls(mut self, tls: crate::tls::TlsSetup) -> Self {
        self.revocations = tls.revocations.clone();
        self.tls = Some(Arc::new(tls));
        self
    }

    /// Reloads the in-memory revocation set from the store.
    pub async fn refresh_revocations(&self) -> Result<(), silo_store::StoreError> {
        let revocations = self.store.load_revocations().await?;
        self.revocations.replace(revocations);
        Ok(())
    }

    /// After certificates of `agent_id` were revoked in the store: makes the
    /// next handshake see it and cuts the live connection now.
    pub async fn apply_revocation(&self, agent_id: &str) {
        if let Err(e) = self.refresh_revocations().await {
            // The live connection is still cut; a reconnect is refused once
            // the store answers again (it is re-read on every revocation).
            tracing::error!(%agent_id, "cannot reload revocations: {e}");
        }
        self.cut_agent(agent_id);
    }

    /// Appends an audit event; failures are logged (the event happened).
    pub async fn audit(
        &self,
        action: &'static str,
        actor: &str,
        agent_id: Option<&str>,
        remote_addr: Option<String>,
        detail: serde_json::Value,
    ) {
        let event = crate::provision::audit::Event {
            action,
            actor,
            agent_id,
            remote_addr,
            detail,
        };
        crate::provision::audit::record(&self.store, time::OffsetDateTime::now_utc(), event).await;
    }

    /// Cuts an agent off at once after its certificate was revoked: ends
    /// its session and drops its tunnel connections (exchanges included).
    /// Refresh [`Self::revocations`] first so a reconnect is refused.
    pub fn cut_agent(&self, agent_id: &str) {
        if let Some(registered) = self.registry.get(agent_id) {
            registered.conn.close(crate::agent::CloseReason::Revoked);
        }
        if let Some(tls) = &self.tls {
            let cut = tls.conns.kill(agent_id);
            tracing::info!(%agent_id, connections = cut, "agent cut off after revocation");
        }
    }

    /// Registers an agent connection and, for a first connection, starts
    /// its dedicated listener. Returns the agent's port.
    pub async fn attach(
        self: &Arc<Self>,
        conn: Arc<dyn AgentConnection>,
    ) -> Result<Option<u16>, AttachError> {
        let agent_id = conn.info().agent_id.clone();
        let info = conn.info().clone();
        let known = self.remember_agent(conn.info()).await?;
        let attached = self.registry.attach(conn).await?;
        self.record_port(&agent_id, known.as_ref(), attached.port)
            .await;
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
        self.audit_connection("agent.connected", &info, attached.port)
            .await;
        Ok(attached.port)
    }

    /// Logs and audits (`agent.rejected`) a connection whose claimed id its
    /// certificate does not back.
    pub async fn audit_rejection(
        &self,
        claimed: &str,
        peer: Option<&crate::tls::identity::PeerIdentity>,
        remote: Option<std::net::SocketAddr>,
        status: &tonic::Status,
    ) {
        tracing::warn!(%claimed, ?remote, "agent rejected: {}", status.message());
        let detail = serde_json::json!({
            "claimed": claimed,
            "certificate_agent": peer.map(|p| &p.agent_id),
            "certificate_serial": peer.map(|p| &p.serial_hex),
            "reason": status.message(),
        });
        let actor = format!("agent:{}", peer.map_or(claimed, |p| p.agent_id.as_str()));
        self.audit(
            "agent.rejected",
            &actor,
            Some(claimed),
            remote.map(|a| a.to_string()),
            detail,
        )
        .await;
    }

    /// `agent.connected` / `agent.disconnected` audit rows, for every protocol.
    pub async fn audit_connection(
        &self,
        action: &'static str,
        info: &crate::agent::AgentInfo,
        port: Option<u16>,
    ) {
        let detail = serde_json::json!({
            "protocol": info.protocol,
            "port": port,
            "cert_serial": info.cert_serial,
            "session": info.session_id,
        });
        let actor = format!("agent:{}", info.agent_id);
        let remote = info.remote_addr.map(|a| a.to_string());
        self.audit(action, &actor, Some(&info.agent_id), remote, detail)
            .await;
    }
}
