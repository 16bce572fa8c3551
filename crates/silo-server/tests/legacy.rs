//! The legacy protocol (`/proxy.ProxyService/Stream`) end to end: a legacy
//! agent written in the tests from the protocol.md facts, our agent in
//! legacy client mode, and both next to native agents.

mod legacy_agent;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use legacy_agent::{LegacyAgent, hello, message};
use silo_proto::legacy::MessageType;
use silo_test_support::client::{get, post, send};
use silo_test_support::tls::{issue_agent_cert, server_pki};
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The listing entry of `agent_id`, if connected.
async fn listed(server: &TestServer, agent_id: &str) -> Option<serde_json::Value> {
    let list = server.agents().await;
    list["agents"]
        .as_array()?
        .iter()
        .find(|a| a["agent_id"] == agent_id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ping_gets_a_pong_and_the_agent_is_listed_as_legacy() {
    let server = TestServer::spawn().await;
    let mut agent = LegacyAgent::open(server.grpc, hello("leg-1"))
        .await
        .unwrap();
    let pong = agent.recv().await;
    assert_eq!(pong.r#type, MessageType::Pong as i32);
    assert!(!pong.id.is_empty() && pong.id != "hello-ping", "a new id");
    assert!(pong.metadata.is_empty() && pong.payload.is_empty());
    agent.ping().await;
    let second = agent.recv().await;
    assert_eq!(second.r#type, MessageType::Pong as i32);
    assert_ne!(second.id, pong.id);

    let port = server.agent_port("leg-1").await;
    let entry = listed(&server, "leg-1").await.unwrap();
    assert_eq!(entry["protocol"], "legacy");
    assert_eq!(entry["status"], "online");
    assert_eq!(entry["port"], port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_opened_by_a_ping_with_a_valid_agent_id_is_refused() {
    let server = TestServer::spawn().await;
    let request = message(
        "r",
        MessageType::Request,
        &[("agent_id", "x")],
        Bytes::new(),
    );
    let no_id = message("p", MessageType::Ping, &[], Bytes::new());
    for first in [request, no_id, hello("bad.id"), hello("")] {
        let refused = LegacyAgent::open(server.grpc, first).await.err();
        assert_eq!(
            refused.map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
    }
    assert_eq!(server.agents().await["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_documented_metadata_and_answers_reach_the_user() {
    let server = TestServer::spawn().await;
    let mut agent = LegacyAgent::connect(server.grpc, "meta-1").await;
    let req = Request::post("/proxy/meta-1/api/items?x=1&y=two")
        .header("content-type", "application/json")
        .header("x-custom", "first")
        .header("x-custom", "second")
        .body(Full::new(Bytes::from_static(br#"{"a":1}"#)))
        .unwrap();
    let proxy = server.proxy;
    let user = tokio::spawn(async move { send(proxy, req).await });

    let m = agent.next_request().await;
    assert!(uuid::Uuid::parse_str(&m.id).is_ok(), "id {:?}", m.id);
    assert_eq!(m.payload, br#"{"a":1}"#.as_slice());
    let md = &m.metadata;
    assert_eq!(md["method"], "POST");
    assert_eq!(md["path"], "/api/items", "prefix stripped");
    assert_eq!(md["query"], "x=1&y=two");
    assert_eq!(md["content_type"], "application/json");
    assert_eq!(md["header_Content-Type"], "application/json");
    assert_eq!(md["header_X-Custom"], "first", "first value");
    assert_eq!(md["header_X-Forwarded-For"], "127.0.0.1");
    agent
        .respond(
            &m.id,
            "201",
            &[("X-Reply", "yes"), ("Content-Type", "text/plain")],
            b"created",
        )
        .await;
    let r = user.await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["x-reply"], "yes");
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(r.text(), "created");

    // The dedicated port forwards verbatim.
    let port = server.agent_port("meta-1").await;
    let user = tokio::spawn(async move { get(at(port), "/plain/path").await });
    let m = agent.next_request().await;
    assert_eq!(
        (
            m.metadata["method"].as_str(),
            m.metadata["path"].as_str(),
            m.metadata["query"].as_str(),
            m.metadata["content_type"].as_str()
        ),
        ("GET", "/plain/path", "", "")
    );
    assert!(m.payload.is_empty());
    agent.respond(&m.id, "404", &[], b"nope").await;
    let r = user.await.unwrap();
    assert_eq!((r.status.as_u16(), r.text().as_str()), (404, "nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_error_form_is_a_502_json_error() {
    let server = TestServer::spawn().await;
    let mut agent = LegacyAgent::connect(server.grpc, "err-1").await;
    let proxy = server.proxy;
    let user = tokio::spawn(async move { get(proxy, "/proxy/err-1/x").await });
    let m = agent.next_request().await;
    let text = "failed to execute request: dial tcp 127.0.0.1:3000: connection refused";
    let mut answer = message(&m.id, MessageType::Response, &[], text.as_bytes().to_vec());
    answer.metadata.insert("status_code".into(), "502".into());
    answer.metadata.insert("error".into(), text.into());
    agent.send(answer).await;
    let r = user.await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_eq!(r.json()["error"], text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_legacy_caps_are_413_and_502_and_the_session_survives() {
    let server = TestServer::spawn_with(|c| {
        c.grpc.legacy.max_request_body_bytes = 1024;
        c.grpc.legacy.max_response_body_bytes = 2048;
    })
    .await;
    let mut agent = LegacyAgent::connect(server.grpc, "capped").await;
    let r = post(server.proxy, "/proxy/capped/up", vec![b'x'; 1025]).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("1024"));

    let proxy = server.proxy;
    let user = tokio::spawn(async move { post(proxy, "/proxy/capped/up", vec![b'y'; 1024]).await });
    let m = agent.next_request().await;
    assert_eq!(
        m.payload.len(),
        1024,
        "the refused body never reached the agent"
    );
    agent.respond(&m.id, "200", &[], &[b'z'; 2049]).await;
    let r = user.await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains("max_response_body_bytes"), "{error}");

    let user = tokio::spawn(async move { get(proxy, "/proxy/capped/small").await });
    let m = agent.next_request().await;
    agent.respond(&m.id, "200", &[], &[b'z'; 2048]).await;
    let r = user.await.unwrap();
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 2048));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_within_the_request_timeout_is_504() {
    let server = TestServer::spawn_with(|c| c.proxy.request_timeout_seconds = 1).await;
    let mut agent = LegacyAgent::connect(server.grpc, "slow").await;
    let proxy = server.proxy;
    let user = tokio::spawn(async move { get(proxy, "/proxy/slow/x").await });
    let late = agent.next_request().await;
    let r = user.await.unwrap();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["error"].is_string());

    // A late answer is dropped; the session carries on.
    agent.respond(&late.id, "200", &[], b"late").await;
    let user = tokio::spawn(async move { get(proxy, "/proxy/slow/y").await });
    let m = agent.next_request().await;
    agent.respond(&m.id, "200", &[], b"on time").await;
    assert_eq!(user.await.unwrap().text(), "on time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_fail_with_502_at_once_when_the_agent_disconnects() {
    let server = TestServer::spawn_with(|c| c.proxy.request_timeout_seconds = 60).await;
    let mut agent = LegacyAgent::connect(server.grpc, "gone").await;
    let proxy = server.proxy;
    let user = tokio::spawn(async move { get(proxy, "/proxy/gone/x").await });
    agent.next_request().await;
    let cut = Instant::now();
    drop(agent);
    let r = user.await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("gone"));
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "failed after {:?}, not at once",
        cut.elapsed()
    );
    eventually(Duration::from_secs(5), "agent unlisted", || async {
        listed(&server, "gone").await.is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_with_the_same_id_replaces_the_first() {
    let server = TestServer::spawn().await;
    let mut first = LegacyAgent::connect(server.grpc, "dup").await;
    let port = server.agent_port("dup").await;
    let mut second = LegacyAgent::connect(server.grpc, "dup").await;
    let why = first.ended().await;
    assert!(why.contains("replaced"), "{why:?}");
    let list = server.agents().await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["agents"][0]["port"], port, "the port is kept");

    let user = tokio::spawn(async move { get(at(port), "/who").await });
    let m = second.next_request().await;
    second.respond(&m.id, "200", &[], b"second").await;
    assert_eq!(user.await.unwrap().text(), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_evicted_after_stale_after_seconds() {
    let server = TestServer::spawn_with(|c| {
        c.grpc.keepalive_seconds = 1;
        c.grpc.stale_after_seconds = 2;
    })
    .await;
    let mut silent = LegacyAgent::connect(server.grpc, "silent").await;
    let chatty = LegacyAgent::connect(server.grpc, "chatty").await;
    // Pings well inside the stale window, and reads the PONGs.
    let pinger = tokio::spawn(async move {
        let mut chatty = chatty;
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                _ = tick.tick() => chatty.ping().await,
                m = chatty.inbound.message() => if !matches!(m, Ok(Some(_))) { return },
            }
        }
    });
    let why = silent.ended().await;
    assert!(why.contains("stale_after"), "{why:?}");
    eventually(Duration::from_secs(5), "silent agent unlisted", || async {
        listed(&server, "silent").await.is_none().then_some(())
    })
    .await;
    assert!(
        listed(&server, "chatty").await.is_some(),
        "pinging agent kept"
    );
    assert!(!pinger.is_finished());
    pinger.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_native_agents_serve_side_by_side_on_their_own_ports() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let native = TestAgent::spawn(server.grpc, "native-1", &backend.url()).await;
    native.wait_connected().await;
    let _legacy = LegacyAgent::connect(server.grpc, "legacy-1")
        .await
        .serve("legacy:");
    let native_port = server.agent_port("native-1").await;
    let legacy_port = server.agent_port("legacy-1").await;
    assert_ne!(native_port, legacy_port);

    let r = get(at(native_port), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    let r = get(at(legacy_port), "/anything").await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "legacy:/anything")
    );
    let r = get(server.proxy, "/proxy/legacy-1/via-path").await;
    assert_eq!(r.text(), "legacy:/via-path");
    let r = get(server.proxy, "/proxy/native-1/hello").await;
    assert_eq!(r.text(), "hello");

    let protocols: Vec<(String, String)> = server.agents().await["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["agent_id"].as_str().unwrap().into(),
                a["protocol"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        protocols,
        [
            ("legacy-1".into(), "legacy".into()),
            ("native-1".into(), "native".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agent_in_legacy_mode_serves_through_the_legacy_service() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let legacy = |c: &mut silo_agent::config::AgentConfig| c.grpc.protocol = "legacy".into();
    let agent = TestAgent::spawn_with(server.grpc, "ours", &backend.url(), legacy).await;
    agent.wait_connected().await;
    let port = server.agent_port("ours").await;
    assert_eq!(listed(&server, "ours").await.unwrap()["protocol"], "legacy");

    let r = get(at(port), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    let r = post(at(port), "/echo", "round trip").await;
    assert_eq!(r.text(), "round trip");
    let r = get(server.proxy, "/proxy/ours/headers?x=1").await;
    let seen = r.json();
    assert_eq!(seen["uri"], "/headers?x=1");
    let forwarded = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "x-forwarded-for" && h[1] == "127.0.0.1");
    assert!(forwarded, "{seen}");
    assert_eq!(get(at(port), "/status/418").await.status, 418);
    let r = get(at(port), "/cookies").await;
    assert_eq!(r.headers["set-cookie"], "a=1; Path=/", "first value only");

    // A local service that is down gives the 502 error form.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down =
        TestAgent::spawn_with(server.grpc, "ours-down", &format!("http://{dead}"), legacy).await;
    down.wait_connected().await;
    let r = get(server.proxy, "/proxy/ours-down/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let error = r.json()["error"].as_str().unwrap().to_owned();
    assert!(error.contains(&dead.to_string()), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_certificate_decides_the_legacy_agents_id() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.grpc.tls.enabled = true).await;
    let pki = server_pki(&server);
    let dir = tempfile::tempdir().unwrap();
    let day = Duration::from_secs(86400);
    let now = time::OffsetDateTime::now_utc();
    let a = issue_agent_cert(&pki, "agent-a", dir.path(), now, day);
    let ca = pki.ca_cert_pem();

    let refused = LegacyAgent::open_tls(server.grpc, ca, &a, hello("agent-b")).await;
    let status = refused.err().expect("claiming another id is refused");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(server.agents().await["count"], 0);

    let mut agent = LegacyAgent::open_tls(server.grpc, ca, &a, hello("agent-a"))
        .await
        .unwrap();
    assert_eq!(agent.recv().await.r#type, MessageType::Pong as i32);
    let _serving = agent.serve("tls:");
    let port = server.agent_port("agent-a").await;
    let entry = listed(&server, "agent-a").await.unwrap();
    assert_eq!(entry["protocol"], "legacy");
    assert_eq!(entry["cert_serial"], a.serial_hex.as_str());
    assert_eq!(get(at(port), "/x").await.text(), "tls:/x");

    // Our agent in legacy client mode over mutual TLS.
    let b = issue_agent_cert(&pki, "agent-b", dir.path(), now, day);
    let grpc_port = server.grpc.port();
    let ours = TestAgent::spawn_with(server.grpc, "agent-b", &backend.url(), move |c| {
        c.grpc.protocol = "legacy".into();
        c.grpc.tls.enabled = true;
        c.grpc.tls.cert_file = b.cert_file.display().to_string();
        c.grpc.tls.key_file = b.key_file.display().to_string();
        c.grpc.tls.ca_file = b.ca_file.display().to_string();
        c.grpc.server_address = format!("localhost:{grpc_port}");
    })
    .await;
    ours.wait_connected().await;
    let port = server.agent_port("agent-b").await;
    assert_eq!(get(at(port), "/hello").await.text(), "hello");
}
