//! Idle agents: lightweight clients of the real native protocol, each with
//! its own mTLS certificate (one certificate per agent id: the server keys
//! sessions by the certificate's identity), doing what an idle real agent
//! does — hello, hold the Session stream, keep the standby Exchange streams
//! the welcome asks for, heartbeat — and nothing else.

use crate::procs::{Ca, Server};
use anyhow::{Context, bail};
use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{
    AgentMessage, Heartbeat, Hello, ServerMessage, agent_message, server_message,
};
use silo_proto::{PROTOCOL_VERSION, SESSION_ID_METADATA};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Handshakes in flight at once: enough to keep both cores busy, few
/// enough that none times out waiting for the CPU.
const CONNECT_CONCURRENCY: usize = 64;

/// Held sessions; dropping the fleet disconnects them all.
#[derive(Default)]
pub struct Fleet {
    held: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &self.held {
            h.abort();
        }
    }
}

/// Signs `count` certificates (ids `idle-<from>`…) on every core.
pub async fn issue_certs(
    ca: Arc<Ca>,
    from: usize,
    count: usize,
) -> anyhow::Result<Vec<(String, Identity)>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = count.div_ceil(threads).max(1);
    let mut jobs = Vec::new();
    for first in (from..from + count).step_by(per) {
        let last = (first + per).min(from + count);
        let ca = ca.clone();
        jobs.push(tokio::task::spawn_blocking(move || {
            (first..last)
                .map(|i| {
                    let id = format!("idle-{i}");
                    let c = ca.issue(&id)?;
                    Ok((id, Identity::from_pem(c.cert_pem, c.key_pem)))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        }));
    }
    let mut out = Vec::with_capacity(count);
    for j in jobs {
        out.extend(j.await??);
    }
    Ok(out)
}

/// Connects every agent of `certs` (three tries each) and adds them to
/// `fleet`; returns the seconds it took.
pub async fn connect_all(
    fleet: &mut Fleet,
    server: &Server,
    ca_pem: &str,
    certs: Vec<(String, Identity)>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let ca = Certificate::from_pem(ca_pem);
    let mut pending = Vec::with_capacity(certs.len());
    for (id, identity) in certs {
        let (gate, ca, grpc) = (gate.clone(), ca.clone(), server.grpc);
        pending.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore open");
            let mut last = None;
            for _ in 0..3 {
                match connect_one(grpc, &id, identity.clone(), ca.clone()).await {
                    Ok(held) => return Ok(held),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(last.expect("tried").context(id))
        }));
    }
    let mut failures = Vec::new();
    for p in pending {
        match p.await? {
            Ok(held) => fleet.held.push(held),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} agents failed to connect; first: {}",
            failures.len(),
            failures[0]
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Dials, says hello, waits for the welcome and opens the standbys; the
/// returned task then holds the session until aborted.
async fn connect_one(
    grpc: SocketAddr,
    agent_id: &str,
    identity: Identity,
    ca: Certificate,
) -> anyhow::Result<JoinHandle<()>> {
    // The server certificate names "localhost"; dialling the IP skips a
    // resolver call per agent.
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{grpc}"))?
        .connect_timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .tls_config(tls)?
        .connect()
        .await?;
    let client = TunnelClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_id: agent_id.to_owned(),
            agent_version: "silo-bench".into(),
            capabilities: vec![],
        })),
    })
    .await?;
    let mut inbound = client
        .clone()
        .session(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let welcome = match tokio::time::timeout(Duration::from_secs(30), inbound.message()).await {
        Ok(Ok(Some(ServerMessage {
            msg: Some(server_message::Msg::Welcome(w)),
        }))) => w,
        other => bail!("no welcome: {other:?}"),
    };
    let limits = welcome.limits.unwrap_or_default();
    let mut standbys = Vec::new();
    for _ in 0..limits.min_standby_streams {
        let (stx, srx) = mpsc::channel::<silo_proto::v1::AgentFrame>(1);
        let mut req = tonic::Request::new(ReceiverStream::new(srx));
        req.metadata_mut()
            .insert(SESSION_ID_METADATA, welcome.session_id.parse()?);
        let resp = client.clone().exchange(req).await?.into_inner();
        standbys.push((stx, resp));
    }
    let keepalive = Duration::from_secs(u64::from(limits.keepalive_seconds.max(1)));
    Ok(tokio::spawn(async move {
        let _standbys = standbys;
        let mut beat = tokio::time::interval(keepalive);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat { sent_unix_ms: 0 })) };
                    if tx.send(hb).await.is_err() { return; }
                }
                m = inbound.message() => if !matches!(m, Ok(Some(_))) { return },
            }
        }
    }))
}

/// One step of the idle-agent measurement.
#[derive(Debug)]
pub struct Step {
    pub agents: usize,
    pub connect_secs: f64,
    pub rss_kib: u64,
}

/// Connects agents up to each count of `steps` (cumulatively) to a fresh
/// server, measuring its RSS after each; returns the baseline RSS too.
pub async fn run(dir: &std::path::Path, steps: &[usize]) -> anyhow::Result<(u64, Vec<Step>)> {
    let server = tokio::task::block_in_place(|| Server::start(dir, false))?;
    let ca = Arc::new(server.ca()?);
    // Let start-up allocations settle before the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = server.proc.mem()?.rss_kib;
    let mut fleet = Fleet::default();
    let mut out = Vec::new();
    let mut connect_secs = 0.0;
    for &target in steps {
        let have = fleet.held.len();
        if target <= have {
            continue;
        }
        eprintln!("  idle agents: signing {} certificates", target - have);
        let certs = issue_certs(ca.clone(), have, target - have).await?;
        eprintln!("  idle agents: connecting {} → {target}", have);
        connect_secs += connect_all(&mut fleet, &server, &ca.ca_pem, certs)
            .await
            .with_context(|| format!("connecting idle agents up to {target}"))?;
        // Heartbeats and lazily grown buffers settle within a second or two.
        tokio::time::sleep(Duration::from_secs(3)).await;
        out.push(Step {
            agents: target,
            connect_secs,
            rss_kib: server.proc.mem()?.rss_kib,
        });
    }
    drop(fleet);
    Ok((baseline, out))
}
