//! In-process servers and agents on ephemeral loopback ports.

use silo_agent::config::AgentConfig;
use silo_agent::session::AgentStatus;
use silo_server::config::{PortRange, Secret, ServerConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ADMIN_KEY: &str = "test-admin-key-0123456789abcdef";

/// `n` consecutive loopback ports that are free now, below the ephemeral
/// range so outgoing connections don't take them. Parallel tests may still
/// race for one; the server then skips to the next free port.
pub fn free_port_range(n: u16) -> PortRange {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = (std::process::id() as u16).wrapping_mul(131);
    for _ in 0..200 {
        let step = NEXT.fetch_add(n + 1, Ordering::Relaxed);
        let start = 12000 + (seed.wrapping_add(step) % 18000);
        let all_free =
            (start..start + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return PortRange {
                start,
                end: start + n - 1,
            };
        }
    }
    panic!("no free port range of {n}");
}

pub struct TestServer {
    pub api: SocketAddr,
    pub proxy: SocketAddr,
    pub grpc: SocketAddr,
    pub config: ServerConfig,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<Result<(), silo_server::ServerError>>>,
    pub data_dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A server on loopback with a temp `data_dir`, a 10-port agent range
    /// and a fixed admin key; `configure` adjusts the rest.
    pub async fn spawn_with(configure: impl FnOnce(&mut ServerConfig)) -> Self {
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = ServerConfig {
            bind: "127.0.0.1".into(),
            data_dir: data_dir.path().to_path_buf(),
            shutdown_grace_seconds: 5,
            ..Default::default()
        };
        config.http.admin_api_key = Secret(ADMIN_KEY.into());
        // Plain by default; TLS tests turn it on.
        config.grpc.tls.enabled = false;
        config.http.agent_port_range = free_port_range(10);
        configure(&mut config);
        Self::start(config, data_dir, None).await
    }

    /// Starts a server on `config`, on the given gRPC port when rebinding one
    /// (server restart tests), else on ephemeral ports.
    pub async fn start(
        config: ServerConfig,
        data_dir: Arc<tempfile::TempDir>,
        grpc_port: Option<u16>,
    ) -> Self {
        let bind = |port: u16| async move { TcpListener::bind(("127.0.0.1", port)).await.unwrap() };
        let listeners = silo_server::Listeners {
            api: bind(0).await,
            proxy: Some(bind(0).await),
            grpc: bind(grpc_port.unwrap_or(0)).await,
        };
        let api = listeners.api.local_addr().unwrap();
        let proxy = listeners.proxy.as_ref().unwrap().local_addr().unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(silo_server::run(
            config.clone(),
            listeners,
            shutdown.clone(),
        ));
        Self {
            api,
            proxy,
            grpc,
            config,
            shutdown,
            task: Some(task),
            data_dir,
        }
    }

    /// Stops the server and waits for it to finish draining.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }

    /// Whether the API listener speaks HTTPS (with the server's own CA).
    pub fn api_is_https(&self) -> bool {
        self.config
            .http
            .tls
            .enabled
            .unwrap_or(self.config.grpc.tls.enabled)
    }

    /// GET on the API listener, over HTTPS when the server uses TLS.
    pub async fn api_get(&self, path: &str, headers: &[(&str, &str)]) -> crate::client::Reply {
        if self.api_is_https() {
            let configured = &self.config.grpc.tls.ca_file;
            let ca_file = if configured.is_empty() {
                silo_pki::CaPaths::under_data_dir(&self.config.data_dir).ca_cert
            } else {
                configured.into()
            };
            let ca = std::fs::read_to_string(ca_file).expect("the server's CA certificate");
            crate::tls::https_get_with(self.api, "localhost", &ca, path, headers).await
        } else {
            crate::client::get_with(self.api, path, headers).await
        }
    }

    /// `GET /agents` with the admin key.
    pub async fn agents(&self) -> serde_json::Value {
        let r = self.api_get("/agents", &[("x-api-key", ADMIN_KEY)]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    }

    /// The dedicated port of a connected agent, once it shows up.
    pub async fn agent_port(&self, agent_id: &str) -> u16 {
        crate::eventually(
            Duration::from_secs(10),
            &format!("agent {agent_id} listed"),
            || async {
                let list = self.agents().await;
                list["agents"]
                    .as_array()?
                    .iter()
                    .find(|a| a["agent_id"] == agent_id)
                    .and_then(|a| a["port"].as_u64())
                    .map(|p| p as u16)
            },
        )
        .await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub struct TestAgent {
    pub status: Arc<AgentStatus>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
}

impl TestAgent {
    pub async fn spawn(server_grpc: SocketAddr, agent_id: &str, service_url: &str) -> Self {
        Self::spawn_with(server_grpc, agent_id, service_url, |_| {}).await
    }

    pub async fn spawn_with(
        server_grpc: SocketAddr,
        agent_id: &str,
        service_url: &str,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let mut config = AgentConfig::default();
        config.grpc.server_address = server_grpc.to_string();
        config.grpc.agent_id = agent_id.into();
        config.local.service_url = service_url.into();
        config.shutdown_grace_seconds = 5;
        // Plain by default; TLS tests provision certificates and turn it on.
        config.grpc.tls.enabled = false;
        configure(&mut config);
        let status = Arc::new(AgentStatus::default());
        let shutdown = CancellationToken::new();
        let (s, t) = (status.clone(), shutdown.clone());
        let task = tokio::spawn(async move {
            silo_agent::run(config, None, s, t)
                .await
                .expect("agent config valid");
        });
        Self {
            status,
            shutdown,
            task: Some(task),
        }
    }

    pub fn connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    /// Waits until the agent holds a session.
    pub async fn wait_connected(&self) -> &Self {
        crate::eventually(Duration::from_secs(10), "agent connected", || async {
            self.connected().then_some(())
        })
        .await;
        self
    }

    pub fn port(&self) -> u16 {
        self.status.assigned_port.load(Ordering::Relaxed) as u16
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.expect("agent task");
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
