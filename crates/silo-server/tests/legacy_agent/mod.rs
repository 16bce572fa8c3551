//! A legacy agent written from the protocol.md facts alone, on the
//! generated `proxy` client: it shares no code with the server's or the
//! agent's legacy implementation, so the tests check the wire, not our own
//! helpers against themselves.

use bytes::Bytes;
use silo_proto::legacy::proxy_service_client::ProxyServiceClient;
use silo_proto::legacy::{MessageType, ProxyMessage};
use silo_test_support::tls::AgentCert;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

pub fn message(
    id: &str,
    kind: MessageType,
    metadata: &[(&str, &str)],
    payload: impl Into<Bytes>,
) -> ProxyMessage {
    ProxyMessage {
        id: id.into(),
        r#type: kind as i32,
        payload: payload.into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    }
}

/// The first message a Go agent sends.
pub fn hello(agent_id: &str) -> ProxyMessage {
    message(
        "hello-ping",
        MessageType::Ping,
        &[("agent_id", agent_id)],
        Bytes::new(),
    )
}

pub struct LegacyAgent {
    pub tx: mpsc::Sender<ProxyMessage>,
    pub inbound: Streaming<ProxyMessage>,
}

impl LegacyAgent {
    /// Opens `/proxy.ProxyService/Stream` with `first` as the first
    /// message; the server's refusal is the error.
    pub async fn open(grpc: SocketAddr, first: ProxyMessage) -> Result<Self, Status> {
        let endpoint = Endpoint::from_shared(format!("http://{grpc}")).unwrap();
        Self::open_on(endpoint, first).await
    }

    /// [`Self::open`] over mutual TLS, presenting `cert` (a Go agent's
    /// certificate from the same CA).
    pub async fn open_tls(
        grpc: SocketAddr,
        ca_pem: &str,
        cert: &AgentCert,
        first: ProxyMessage,
    ) -> Result<Self, Status> {
        let identity = Identity::from_pem(
            std::fs::read(&cert.cert_file).unwrap(),
            std::fs::read(&cert.key_file).unwrap(),
        );
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost")
            .identity(identity);
        let endpoint = Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap();
        Self::open_on(endpoint, first).await
    }

    async fn open_on(endpoint: Endpoint, first: ProxyMessage) -> Result<Self, Status> {
        let channel = endpoint.connect().await.expect("dial the gRPC port");
        let mut client = ProxyServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.unwrap();
        let inbound = client.stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx, inbound })
    }

    /// Connects as `agent_id` and waits for the PONG to the first PING.
    pub async fn connect(grpc: SocketAddr, agent_id: &str) -> Self {
        let mut agent = Self::open(grpc, hello(agent_id))
            .await
            .expect("legacy stream accepted");
        let pong = agent.recv().await;
        assert_eq!(pong.r#type, MessageType::Pong as i32, "{pong:?}");
        agent
    }

    /// The next message from the server.
    pub async fn recv(&mut self) -> ProxyMessage {
        tokio::time::timeout(WAIT, self.inbound.message())
            .await
            .expect("a message from the server in time")
            .expect("stream healthy")
            .expect("stream open")
    }

    /// The next `REQUEST`, skipping `PONG`s.
    pub async fn next_request(&mut self) -> ProxyMessage {
        loop {
            let m = self.recv().await;
            if m.r#type == MessageType::Request as i32 {
                return m;
            }
            assert_eq!(m.r#type, MessageType::Pong as i32, "unexpected {m:?}");
        }
    }

    pub async fn send(&self, m: ProxyMessage) {
        self.tx.send(m).await.expect("stream open");
    }

    pub async fn ping(&self) {
        self.send(message("p", MessageType::Ping, &[], Bytes::new()))
            .await;
    }

    /// Answers request `id` with `status_code`, `header_*` and `body`.
    pub async fn respond(&self, id: &str, status: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut meta = vec![("status_code".to_owned(), status.to_owned())];
        meta.extend(
            headers
                .iter()
                .map(|(k, v)| (format!("header_{k}"), (*v).to_owned())),
        );
        let mut m = message(id, MessageType::Response, &[], Bytes::copy_from_slice(body));
        m.metadata = meta.into_iter().collect();
        self.send(m).await;
    }

    /// Waits until the server ends the stream; returns the final status
    /// message (empty for a clean end).
    pub async fn ended(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("the server ends the stream in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) => return String::new(),
                Err(status) => return status.message().to_owned(),
            }
        }
    }

    /// Answers every request with `200` and body `{prefix}{path}` until the
    /// stream ends.
    pub fn serve(mut self, prefix: &'static str) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok(Some(m)) = self.inbound.message().await {
                if m.r#type == MessageType::Request as i32 {
                    let body = format!("{prefix}{}", m.metadata["path"]);
                    self.respond(&m.id, "200", &[], body.as_bytes()).await;
                }
            }
        })
    }
}
