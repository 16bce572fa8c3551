//! Exchange and agent lifecycles as a user and an operator see them:
//! cancellation, timeouts, the port pool, reconnects and restarts,
//! replacement, stale eviction and hello refusals (shutdown and slow
//! clients: `shutdown.rs`).

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{
    AgentMessage, Heartbeat, Hello, ServerMessage, Welcome, agent_message, server_message,
};
use silo_test_support::backend::is_pattern;
use silo_test_support::client::{self, get};
use silo_test_support::{Backend, TestAgent, TestServer, eventually, free_port_range};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;
use tonic::{Code, Status, Streaming};

const MIB: u64 = 1024 * 1024;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn hello(agent_id: &str) -> Hello {
    Hello {
        protocol_version: silo_proto::PROTOCOL_VERSION,
        agent_id: agent_id.into(),
        agent_version: "test".into(),
        capabilities: vec![],
    }
}

/// A hand-driven native session: the sender keeps the agent's side open.
struct RawSession {
    _tx: mpsc::Sender<AgentMessage>,
    inbound: Streaming<ServerMessage>,
}

async fn raw_session(grpc: SocketAddr, first: AgentMessage) -> Result<RawSession, Status> {
    let mut client = TunnelClient::connect(format!("http://{grpc}"))
        .await
        .expect("gRPC connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.unwrap();
    let inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    Ok(RawSession { _tx: tx, inbound })
}

async fn raw_hello(grpc: SocketAddr, h: Hello) -> Result<RawSession, Status> {
    raw_session(
        grpc,
        AgentMessage {
            msg: Some(agent_message::Msg::Hello(h)),
        },
    )
    .await
}

impl RawSession {
    async fn welcome(&mut self) -> Welcome {
        match self.inbound.message().await {
            Ok(Some(ServerMessage {
                msg: Some(server_message::Msg::Welcome(w)),
            })) => w,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// The GoAway reason the server ends the session with, after which the
    /// stream must end.
    async fn go_away(&mut self, within: Duration) -> String {
        let reason = tokio::time::timeout(within, async {
            loop {
                match self.inbound.message().await {
                    Ok(Some(ServerMessage {
                        msg: Some(server_message::Msg::GoAway(g)),
                    })) => return g.reason,
                    Ok(Some(_)) => continue,
                    other => panic!("session ended without a GoAway: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no GoAway within {within:?}"));
        let end = tokio::time::timeout(Duration::from_secs(5), self.inbound.message()).await;
        assert!(
            matches!(end, Ok(Ok(None))),
            "stream did not end after GoAway: {end:?}"
        );
        reason
    }
}

fn listed_ids(list: &serde_json::Value) -> Vec<String> {
    list["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["agent_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_listed(server: &TestServer, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(
        Duration::from_secs(10),
        &format!("agents {want:?} listed"),
        || async { (listed_ids(&server.agents().await) == want).then_some(()) },
    )
    .await;
}

// ---------------------------------------------------------------- exchanges

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_goes_away_aborts_the_agents_local_request() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "cancel", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("cancel").await;
    let obs = backend.observed.clone();

    // Before any response header: the request hangs in the backend.
    let mut user = TcpStream::connect(at(port)).await.unwrap();
    user.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the request at the backend", || {
        let obs = obs.clone();
        async move { (obs.requests.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    drop(user);
    eventually(
        Duration::from_secs(5),
        "the backend to see its caller leave",
        || {
            let obs = obs.clone();
            async move { (obs.abandoned.load(Ordering::SeqCst) == 1).then_some(()) }
        },
    )
    .await;

    // Mid-body: a download the user abandons stops at the backend too.
    let total = 256 * MIB;
    let resp = client::open(
        server.proxy,
        Request::get(format!("/proxy/cancel/bytes?n={total}"))
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(is_pattern(&first, 0));
    drop(body);
    eventually(
        Duration::from_secs(5),
        "the backend's download to be dropped",
        || {
            let obs = obs.clone();
            async move { (obs.bytes_abandoned.load(Ordering::SeqCst) == 1).then_some(()) }
        },
    )
    .await;
    assert!(obs.produced.load(Ordering::SeqCst) < total / 2);
    // The agent is still fine.
    assert_eq!(get(at(port), "/hello").await.text(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_head_within_the_request_timeout_is_a_504() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.proxy.request_timeout_seconds = 1).await;
    let agent = TestAgent::spawn(server.grpc, "slow", &backend.url()).await;
    agent.wait_connected().await;
    let started = Instant::now();
    let r = get(server.proxy, "/proxy/slow/hang").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("proxy.request_timeout_seconds"),
        "{}",
        r.text()
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The agent was told to give up, so the backend sees its caller leave.
    let obs = backend.observed.clone();
    eventually(Duration::from_secs(5), "the local request aborted", || {
        let obs = obs.clone();
        async move { (obs.abandoned.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_websockets_are_cut_only_when_idle() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.proxy.idle_timeout_seconds = 1).await;
    let agent = TestAgent::spawn(server.grpc, "idle", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("idle").await;

    // 8 lines 300 ms apart: 2.1 s in total, never 1 s without a byte.
    let r = get(at(port), "/drip?n=8&ms=300").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text().lines().count(), 8, "{}", r.text());

    // One line, then nothing: cut after the idle timeout.
    let resp = client::open(
        at(port),
        Request::get("/drip?n=1&hang=1")
            .body(Full::<Bytes>::default())
            .unwrap(),
    )
    .await;
    let started = Instant::now();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"tick 0\n");
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the idle body is cut");
    assert!(
        !matches!(end, None | Some(Ok(_))),
        "the cut body must not look complete: {end:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    let obs = backend.observed.clone();
    eventually(Duration::from_secs(5), "the local body dropped", || {
        let obs = obs.clone();
        async move { (obs.abandoned.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;

    // A WebSocket that talks every 300 ms for 2.1 s stays open ...
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"))
        .await
        .unwrap();
    for i in 0..8 {
        if i > 0 {
            // Pacing the talk, not waiting for a state.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("m{i}"))
        );
    }
    // ... and one that stays silent is closed.
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the idle WebSocket is closed");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

// -------------------------------------------------------------------- ports

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_range_of_two_refuses_the_third_agent_until_one_leaves() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let range = free_port_range(2);
    let server = TestServer::spawn_with(|c| c.http.agent_port_range = range).await;
    let mut first = TestAgent::spawn(server.grpc, "one", &backend.url()).await;
    first.wait_connected().await;
    let second = TestAgent::spawn(server.grpc, "two", &backend.url()).await;
    second.wait_connected().await;
    let freed = first.port();
    let mut ports = [first.port(), second.port()];
    ports.sort();
    assert_eq!(ports, [range.start, range.end]);

    let third = TestAgent::spawn(server.grpc, "three", &backend.url()).await;
    // The refusal a third agent gets, with a status that says why.
    let refused = raw_hello(server.grpc, hello("three-raw"))
        .await
        .err()
        .expect("third agent refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("http.agent_port_range"),
        "{}",
        refused.message()
    );
    assert!(!third.connected());
    assert_eq!(third.status.sessions.load(Ordering::Relaxed), 0);
    assert_eq!(listed_ids(&server.agents().await), ["one", "two"]);

    // One leaves; the third (retrying with backoff) takes the freed port.
    first.stop().await;
    third.wait_connected().await;
    assert_eq!(third.port(), freed);
    assert_eq!(server.agent_port("three").await, freed);
    assert_eq!(get(at(freed), "/hello").await.text(), "hello");
    assert_eq!(listed_ids(&server.agents().await), ["three", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_gets_its_port_back() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let mut a = TestAgent::spawn(server.grpc, "sticky-a", &backend.url()).await;
    a.wait_connected().await;
    let mut b = TestAgent::spawn(server.grpc, "sticky-b", &backend.url()).await;
    b.wait_connected().await;
    let (port_a, port_b) = (a.port(), b.port());
    assert_ne!(port_a, port_b);
    a.stop().await;
    b.stop().await;
    wait_listed(&server, &[]).await;

    // Back in the other order: each finds its own port, not the lowest.
    let b = TestAgent::spawn(server.grpc, "sticky-b", &backend.url()).await;
    b.wait_connected().await;
    let a = TestAgent::spawn(server.grpc, "sticky-a", &backend.url()).await;
    a.wait_connected().await;
    assert_eq!((a.port(), b.port()), (port_a, port_b));
    assert_eq!(get(at(port_b), "/hello").await.text(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_ports_off_means_no_port_but_the_proxy_path_works() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.http.agent_ports = false).await;
    let agent = TestAgent::spawn(server.grpc, "portless", &backend.url()).await;
    agent.wait_connected().await;
    assert_eq!(agent.port(), 0, "the welcome says no port");
    let list = server.agents().await;
    assert_eq!(listed_ids(&list), ["portless"]);
    assert!(list["agents"][0]["port"].is_null(), "{list}");
    let r = get(server.proxy, "/proxy/portless/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
}

// ---------------------------------------------------------------- sessions

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_gets_the_agent_back_on_its_port() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let mut server = TestServer::spawn().await;
    let mut first = TestAgent::spawn(server.grpc, "first", &backend.url()).await;
    first.wait_connected().await;
    let agent = TestAgent::spawn(server.grpc, "comeback", &backend.url()).await;
    agent.wait_connected().await;
    let (first_port, port) = (first.port(), agent.port());
    assert!(first_port < port, "ports are handed out lowest first");
    // Only "comeback" returns after the restart: without remembered ports
    // it would get the lowest free one, "first"'s.
    first.stop().await;
    wait_listed(&server, &["comeback"]).await;

    server.stop().await;
    eventually(Duration::from_secs(5), "the agent to notice", || async {
        (!agent.connected()).then_some(())
    })
    .await;
    assert!(TcpStream::connect(at(port)).await.is_err(), "port released");

    let restarted_at = Instant::now();
    let server = TestServer::start(
        server.config.clone(),
        server.data_dir.clone(),
        Some(server.grpc.port()),
    )
    .await;
    // Reconnect backoff starts at 1 s (+-20 %); a missed first try adds 2 s.
    eventually(Duration::from_secs(5), "the agent back", || async {
        agent.connected().then_some(())
    })
    .await;
    eprintln!("agent back {:?} after the restart", restarted_at.elapsed());
    assert_eq!(agent.status.sessions.load(Ordering::Relaxed), 2);
    assert_eq!(server.agent_port("comeback").await, port);
    assert_eq!(get(at(port), "/hello").await.text(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_id_replaces_the_first() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let mut old = raw_hello(server.grpc, hello("twin")).await.unwrap();
    let welcome = old.welcome().await;
    assert_eq!(welcome.agent_id, "twin");
    let port = welcome.assigned_port as u16;
    assert_eq!(server.agent_port("twin").await, port);

    let new = TestAgent::spawn(server.grpc, "twin", &backend.url()).await;
    new.wait_connected().await;
    assert_eq!(new.port(), port, "the new connection inherits the port");
    // The old session is told why and ends.
    let reason = old.go_away(Duration::from_secs(5)).await;
    assert!(reason.contains("replaced"), "{reason}");
    // Its departure leaves the new one in place and serving.
    let list = server.agents().await;
    assert_eq!(listed_ids(&list), ["twin"]);
    assert_eq!(list["agents"][0]["port"], port);
    assert_eq!(get(at(port), "/hello").await.text(), "hello");
    assert_eq!(get(server.proxy, "/proxy/twin/hello").await.text(), "hello");
    assert!(new.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_evicted_after_stale_after_seconds() {
    let server = TestServer::spawn_with(|c| {
        c.grpc.keepalive_seconds = 1;
        c.grpc.stale_after_seconds = 2;
    })
    .await;
    let mut silent = raw_hello(server.grpc, hello("silent")).await.unwrap();
    silent.welcome().await;
    let since = Instant::now();
    wait_listed(&server, &["silent"]).await;

    // A talking agent on the same server is not evicted.
    let backend = Backend::spawn().await;
    let talker = TestAgent::spawn(server.grpc, "talker", &backend.url()).await;
    talker.wait_connected().await;

    let reason = silent.go_away(Duration::from_secs(6)).await;
    assert!(reason.contains("stale_after_seconds"), "{reason}");
    assert!(
        since.elapsed() >= Duration::from_secs(2),
        "{:?}",
        since.elapsed()
    );
    wait_listed(&server, &["talker"]).await;
    assert!(talker.connected());
    assert_eq!(talker.status.sessions.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_get_a_clear_status() {
    let server = TestServer::spawn().await;
    let e = raw_hello(server.grpc, hello("../etc")).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("agent id"), "{}", e.message());

    let mut old = hello("future");
    old.protocol_version = 99;
    let e = raw_hello(server.grpc, old).await.err().unwrap();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("protocol version 99"),
        "{}",
        e.message()
    );

    let heartbeat = AgentMessage {
        msg: Some(agent_message::Msg::Heartbeat(Heartbeat::default())),
    };
    let e = raw_session(server.grpc, heartbeat).await.err().unwrap();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("hello"), "{}", e.message());

    assert!(listed_ids(&server.agents().await).is_empty());
}
