//! The silo-proxy server: accepts agent tunnels over gRPC and carries user
//! HTTP traffic to them.
//!
//! # Layout
//! - [`config`]: configuration keys, defaults and validation.
//! - [`run`] / [`Listeners`]: the entry point; takes bound listeners and a
//!   shutdown token, so tests run servers on ephemeral ports in parallel.
//! - [`tunnel`]: the native gRPC tunnel service.
//! - [`legacy`]: the Go implementation's `proxy.ProxyService`, same registry.
//! - [`registry`], [`ports`]: connected agents and their dedicated ports.
//! - [`agent`]: the protocol-independent view of a connected agent.
//! - [`http`]: HTTP accept loop and proxy routing; [`api`]: the admin API.
//! - [`store_setup`]: the store, JWT secret, first `root` account and
//!   remembered sticky ports, prepared before anything serves.
//! - [`accounts`]: Argon2id hashing and HS256 tokens; [`known_agents`]:
//!   agents in the store (case conflicts, ports, last seen, forgetting).
//! - [`client_addr`], [`ratelimit`]: client address behind trusted proxies
//!   and per-address failure limits (login, provisioning).

pub mod accounts;
pub mod admin_cli;
pub mod agent;
pub mod api;
pub mod client_addr;
pub mod config;
pub mod http;
pub mod inflight;
pub mod known_agents;
pub mod legacy;
pub mod liveness;
pub mod metrics;
pub mod ports;
pub mod provision;
pub mod ratelimit;
pub mod registry;
pub mod secrets;
pub mod state;
pub mod store_setup;
pub mod tls;
pub mod tunnel;

use config::ServerConfig;
use hyper::service::service_fn;
use silo_proto::limits::{
    CONNECTION_WINDOW_BYTES, MAX_CONCURRENT_EXCHANGES, MAX_MESSAGE_BYTES, STREAM_WINDOW_BYTES,
};
use state::ServerState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tracing::{info, warn};

/// The server's sockets, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    pub api: TcpListener,
    /// The public proxy listener; `None` when `proxy.port` is 0.
    pub proxy: Option<TcpListener>,
    pub grpc: TcpListener,
}

impl Listeners {
    /// Binds the ports the configuration names.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        let ip = config.bind_addr().map_err(ServerError::Config)?;
        let bind = |key: &'static str, port: u16| async move {
            TcpListener::bind(SocketAddr::new(ip, port))
                .await
                .map_err(|source| ServerError::Bind {
                    key,
                    addr: SocketAddr::new(ip, port),
                    source,
                })
        };
        Ok(Self {
            api: bind("http.port", config.http.port).await?,
            proxy: match config.proxy.port {
                0 => None,
                p => Some(bind("proxy.port", p).await?),
            },
            grpc: bind("grpc.port", config.grpc.port).await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] silo_core::config::ConfigError),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Opening the store failed; names the URL with its password masked.
    #[error(transparent)]
    Store(#[from] silo_store::StoreError),
    #[error("cannot prepare accounts")]
    Accounts(#[source] accounts::BoxError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[source] tonic::transport::Error),
}

/// The admin API key: configured, or generated once into `data_dir`.
fn admin_api_key(config: &ServerConfig) -> Result<Option<String>, ServerError> {
    if !config.http.admin_api_key.0.is_empty() {
        return Ok(Some(config.http.admin_api_key.0.clone()));
    }
    if !config.http.generate_admin_api_key {
        warn!("no admin API key configured: the admin API answers 503");
        return Ok(None);
    }
    let path = config.data_dir.join("admin-api-key");
    let (key, created) =
        secrets::load_or_create(&path, 32).map_err(|source| ServerError::DataDir {
            path: path.clone(),
            source,
        })?;
    if created {
        info!(file = %path.display(), "generated the admin API key");
    }
    Ok(Some(key))
}

/// Runs the server until `shutdown` fires, then drains: listeners stop
/// accepting, exchanges under way get `shutdown_grace_seconds` to finish,
/// and agents are told to go away.
pub async fn run(
    config: ServerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    config.validate()?;
    if !config.grpc.tls.enabled {
        warn!(
            "TLS is OFF: agents are identified by the id they claim and traffic is unencrypted; development only"
        );
    }
    let admin_key = admin_api_key(&config)?;
    if config.metrics.enabled {
        // Installs the recorder before the first exchange: counters taken
        // before it exists are no-ops, and sessions keep their handles.
        crate::metrics::handle();
    }
    let persistence = store_setup::prepare(&config).await?;
    let tls = if config.grpc.tls.enabled {
        Some(tls::init(&config, Arc::default())?)
    } else {
        None
    };
    let proxy_tls = tls::proxy_config(&config)?;
    let standalone_api_tls = tls::standalone_api_config(&config)?;
    let mut state = ServerState::new(config, shutdown.clone(), admin_key, persistence);
    if let Some(tls) = tls {
        state = state.with_tls(tls);
    }
    let state = Arc::new(state);
    // Handshakes check revocations in memory; start from what the store holds.
    state.refresh_revocations().await?;
    provision::cleanup::spawn(
        state.store.clone(),
        Duration::from_secs(state.config.provision.cleanup_interval_minutes * 60),
        provision::Settings::from_config(&state.config).history,
        shutdown.clone(),
    );
    let opts = state.http_options.clone();
    let api_opts = http::serve::HttpOptions {
        tls: state
            .tls
            .as_ref()
            .and_then(|t| t.api.clone())
            .or(standalone_api_tls),
        ..opts.clone()
    };
    let proxy_opts = http::serve::HttpOptions {
        tls: proxy_tls,
        ..opts.clone()
    };
    info!(
        api = ?listeners.api.local_addr().ok(),
        proxy = ?listeners.proxy.as_ref().and_then(|l| l.local_addr().ok()),
        grpc = ?listeners.grpc.local_addr().ok(),
        "silo-proxy server listening"
    );

    let mut http_tasks = tokio::task::JoinSet::new();
    let router = api::router(state.clone());
    http_tasks.spawn(http::serve::serve(
        listeners.api,
        move |peer: SocketAddr| {
            let router = router.clone();
            service_fn(move |mut req: ::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                router.clone().oneshot(req)
            })
        },
        api_opts,
        shutdown.clone(),
    ));
    if let Some(proxy) = listeners.proxy {
        let state = state.clone();
        http_tasks.spawn(http::serve::serve(
            proxy,
            move |peer| {
                let state = state.clone();
                service_fn(move |req| {
                    http::proxy::handle(state.clone(), http::proxy::Route::Public, peer, req)
                })
            },
            proxy_opts,
            shutdown.clone(),
        ));
    }

    let grpc_stop = CancellationToken::new();
    let keepalive = Duration::from_secs(state.config.grpc.keepalive_seconds);
    let service =
        silo_proto::v1::tunnel_server::TunnelServer::new(tunnel::TunnelService::new(state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_concurrent_streams(MAX_CONCURRENT_EXCHANGES + 64)
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive.min(Duration::from_secs(20))))
        .add_service(service)
        .add_service(legacy::LegacyService::server(state.clone()));
    let stopped = grpc_stop.clone().cancelled_owned();
    let mut grpc_task = match &state.tls {
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.grpc.clone());
            let incoming = tls::conn::tls_incoming(
                listeners.grpc,
                acceptor,
                tls.conns.clone(),
                grpc_stop.clone(),
            );
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
        None => {
            let incoming = TcpListenerStream::new(listeners.grpc).map(|conn| {
                conn.inspect(|s| {
                    let _ = s.set_nodelay(true);
                })
            });
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, stopped))
        }
    };

    tokio::select! {
        _ = shutdown.cancelled() => {}
        r = &mut grpc_task => {
            shutdown.cancel();
            return match r {
                Ok(Err(e)) => Err(ServerError::Grpc(e)),
                _ => Ok(()),
            };
        }
    }
    let grace = opts.grace;
    let deadline = tokio::time::Instant::now() + grace;
    info!(
        in_flight = state.in_flight.get(),
        "shutting down: draining exchanges for up to {grace:?}"
    );
    let _ = tokio::time::timeout_at(deadline, async {
        while http_tasks.join_next().await.is_some() {}
        state.in_flight.drained().await;
    })
    .await;
    state.registry.close_all(agent::CloseReason::Shutdown);
    grpc_stop.cancel();
    if tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut grpc_task)
        .await
        .is_err()
    {
        grpc_task.abort();
    }
    info!("server stopped");
    Ok(())
}
