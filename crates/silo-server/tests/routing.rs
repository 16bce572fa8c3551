//! End-to-end routing through real server, agent and backend on loopback:
//! per-agent ports, `/proxy/{id}/`, host routing, default agent, and the
//! errors a user sees.

use silo_test_support::client::{get, get_with};
use silo_test_support::{Backend, TestAgent, TestServer};
use std::net::SocketAddr;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_agent_port_path_prefix_and_host_routing_reach_the_backend() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.http.base_domain = "tunnel.test".into()).await;
    let agent = TestAgent::spawn(server.grpc, "dev-1", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("dev-1").await;
    assert_eq!(agent.port(), port, "the welcome carries the assigned port");

    let r = get(at(port), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));

    let r = get(server.proxy, "/proxy/dev-1/headers?x=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["uri"],
        "/headers?x=1",
        "prefix stripped, query kept"
    );

    let r = get_with(
        server.proxy,
        "/headers",
        &[("host", "DEV-1.tunnel.test:8000")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["uri"], "/headers");

    // Ids are case-insensitive on the path too.
    assert_eq!(get(server.proxy, "/proxy/DEV-1/hello").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_disconnected_agents_get_json_errors() {
    let server = TestServer::spawn().await;
    let r = get(server.proxy, "/nothing-here").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());

    let r = get(server.proxy, "/proxy/ghost/x").await;
    assert_eq!(r.status, 502);
    assert!(
        r.json()["error"].as_str().unwrap().contains("ghost"),
        "{}",
        r.text()
    );

    let r = get(server.proxy, "/proxy/bad.id/x").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("invalid agent id")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_agent_takes_unmatched_paths() {
    silo_test_support::init_logs();
    let backend = Backend::spawn().await;
    let server = TestServer::spawn_with(|c| c.http.default_agent = "fallback".into()).await;
    let agent = TestAgent::spawn(server.grpc, "fallback", &backend.url()).await;
    agent.wait_connected().await;
    let r = get(server.proxy, "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_service_down_is_a_502_naming_it() {
    // A port nothing listens on: bind, note, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "lonely", &format!("http://{dead}")).await;
    agent.wait_connected().await;
    let r = get(server.proxy, "/proxy/lonely/x").await;
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.json()["error"].as_str().unwrap().to_owned();
    assert!(msg.contains(&dead.to_string()), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_listing_needs_the_admin_key() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "listed", &backend.url()).await;
    agent.wait_connected().await;

    let r = get(server.api, "/agents").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "Missing API key");
    let r = get_with(server.api, "/agents", &[("x-api-key", "wrong")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "Invalid API key");

    let list = server.agents().await;
    assert_eq!(list["count"], 1);
    let a = &list["agents"][0];
    assert_eq!(a["agent_id"], "listed");
    assert_eq!(a["status"], "online");
    assert_eq!(a["protocol"], "native");
    assert!(a["port"].as_u64().is_some());
    assert!(a["connected_since"].as_str().unwrap().ends_with('Z'));
    assert_eq!(get(server.api, "/health").await.json()["status"], "ok");
}
