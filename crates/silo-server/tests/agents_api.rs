//! Known agents: `GET /agents?all=true` lists offline ones from the store,
//! `DELETE /agents/{id}` forgets one (disconnecting it if online), and an
//! id differing from a known one only in letter case is refused.

use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{AgentMessage, Hello, agent_message};
use silo_test_support::accounts::request;
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::sync::atomic::Ordering;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_stream::StreamExt;

const WAIT: Duration = Duration::from_secs(10);

async fn admin(server: &TestServer, method: &str, path: &str) -> silo_test_support::client::Reply {
    request(server.api, method, path, &[("x-api-key", ADMIN_KEY)], "").await
}

async fn list(server: &TestServer, path: &str) -> Vec<serde_json::Value> {
    let r = admin(server, "GET", path).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let agents = body["agents"].as_array().unwrap().clone();
    assert_eq!(body["count"].as_u64(), Some(agents.len() as u64));
    agents
}

fn time_of(v: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().expect("a timestamp"), &Rfc3339).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_agents_are_listed_with_all_and_can_be_forgotten() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let mut agent = TestAgent::spawn(server.grpc, "dev-1", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("dev-1").await;
    let online = list(&server, "/agents?all=true").await;
    assert_eq!(online.len(), 1, "an online agent is listed once");
    assert_eq!(online[0]["status"], "online");
    let connected_since = time_of(&online[0]["connected_since"]);

    agent.stop().await;
    eventually(WAIT, "agent gone from /agents", || async {
        list(&server, "/agents").await.is_empty().then_some(())
    })
    .await;
    // last_seen is written just after the agent leaves the registry.
    let known = eventually(WAIT, "last_seen recorded on disconnect", || async {
        let all = list(&server, "/agents?all=true").await;
        assert_eq!(all.len(), 1, "{all:?}");
        let known = all.into_iter().next()?;
        (time_of(&known["last_seen"]) >= connected_since).then_some(known)
    })
    .await;
    assert_eq!(known["agent_id"], "dev-1");
    assert_eq!(known["status"], "offline");
    assert_eq!(
        known["port"].as_u64(),
        Some(u64::from(port)),
        "the sticky port"
    );
    assert_eq!(known["protocol"], "native");
    assert!(known["connected_since"].is_null());

    let r = admin(&server, "GET", "/agents?all=maybe").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].is_string());

    // Forgetting needs admin credentials and a valid id.
    let r = request(server.api, "DELETE", "/agents/dev-1", &[], "").await;
    assert_eq!(r.status, 401);
    for bad in ["bad.id", "-x", &"a".repeat(65)] {
        let r = admin(&server, "DELETE", &format!("/agents/{bad}")).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(
            r.json()["error"]
                .as_str()
                .unwrap()
                .contains("invalid agent id")
        );
    }
    let r = admin(&server, "DELETE", "/agents/ghost").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.json()["error"].is_string());

    let r = admin(&server, "DELETE", "/agents/dev-1").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(list(&server, "/agents?all=true").await.is_empty());
    let r = admin(&server, "DELETE", "/agents/dev-1").await;
    assert_eq!(r.status, 404, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_an_online_agent_disconnects_it() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "live-1", &backend.url()).await;
    agent.wait_connected().await;
    assert_eq!(agent.status.sessions.load(Ordering::Relaxed), 1);
    // Any letter case addresses the agent.
    let r = admin(&server, "DELETE", "/agents/LIVE-1").await;
    assert_eq!(r.status, 204, "{}", r.text());
    // Its session was ended: the agent comes back with a new one.
    eventually(
        WAIT,
        "the agent's session ended and a new one began",
        || async { (agent.status.sessions.load(Ordering::Relaxed) >= 2).then_some(()) },
    )
    .await;
}

/// Sends a hello for `agent_id` and returns the server's refusal.
async fn refused_hello(server: &TestServer, agent_id: &str) -> tonic::Status {
    let mut client = TunnelClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            protocol_version: silo_proto::PROTOCOL_VERSION,
            agent_id: agent_id.into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    };
    // Keep the stream open after the hello, as a real agent does.
    let outbound = tokio_stream::iter([hello]).chain(tokio_stream::pending());
    match client.session(outbound).await {
        Ok(_) => panic!("{agent_id} was accepted"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_differing_only_in_case_from_a_known_agent_is_refused() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let mut agent = TestAgent::spawn(server.grpc, "Edge-1", &backend.url()).await;
    agent.wait_connected().await;
    agent.stop().await;
    eventually(WAIT, "Edge-1 offline", || async {
        list(&server, "/agents").await.is_empty().then_some(())
    })
    .await;

    let status = refused_hello(&server, "edge-1").await;
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("Edge-1"), "{}", status.message());
    let all = list(&server, "/agents?all=true").await;
    let ids: Vec<&str> = all.iter().filter_map(|a| a["agent_id"].as_str()).collect();
    assert_eq!(ids, ["Edge-1"]);

    // Once forgotten, the other spelling may connect.
    assert_eq!(admin(&server, "DELETE", "/agents/edge-1").await.status, 204);
    let other = TestAgent::spawn(server.grpc, "edge-1", &backend.url()).await;
    other.wait_connected().await;
}
