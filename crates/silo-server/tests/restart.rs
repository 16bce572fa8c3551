//! A server restarted on the same `data_dir` keeps its accounts, its
//! generated secrets (admin key, JWT secret, root password) and the agents'
//! sticky ports.

use serde_json::json;
use silo_server::config::Secret;
use silo_test_support::accounts::{json_request, read_secret, request};
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

fn mode(server: &TestServer, file: &str) -> u32 {
    let meta = std::fs::metadata(server.config.data_dir.join(file)).unwrap();
    meta.permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_secrets_and_sticky_ports_survive_a_restart() {
    let backend = Backend::spawn().await;
    // No configured key: the server generates one into data_dir.
    let mut first = TestServer::spawn_with(|c| c.http.admin_api_key = Secret::default()).await;
    first.wait_ready().await;
    for file in ["admin-api-key", "jwt-secret", "initial-root-password"] {
        assert_eq!(mode(&first, file), 0o600, "{file}");
    }
    let key = read_secret(&first.config.data_dir, "admin-api-key");
    assert!(key.len() >= 32);
    let root_password = first.root_password();
    let body = json!({"username": "alice", "password": "alice-password", "role": "User"});
    let r = json_request(first.api, "POST", "/users", &[("x-api-key", &key)], &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice_token = first.login("alice", "alice-password").await;

    // Two agents in order a, b; after the restart b connects first and
    // still gets its own port back, not the first free one.
    let a = TestAgent::spawn(first.grpc, "agent-a", &backend.url()).await;
    a.wait_connected().await;
    let b = TestAgent::spawn(first.grpc, "agent-b", &backend.url()).await;
    b.wait_connected().await;
    let (port_a, port_b) = (a.port(), b.port());
    assert_ne!(port_a, port_b);
    drop((a, b));
    first.stop().await;

    // The dedicated listeners close as the old server winds down.
    eventually(WAIT, "the old agent ports to be free", || async {
        let free = [port_a, port_b]
            .iter()
            .all(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok());
        free.then_some(())
    })
    .await;
    let mut second = TestServer::start(first.config.clone(), first.data_dir.clone(), None).await;
    second.wait_ready().await;

    assert_eq!(read_secret(&second.config.data_dir, "admin-api-key"), key);
    assert_eq!(
        second.root_password(),
        root_password,
        "root is not re-created"
    );
    let r = request(second.api, "GET", "/users", &[("x-api-key", &key)], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total"], 2);
    second.login("root", &root_password).await;
    second.login("alice", "alice-password").await;
    // The JWT secret persisted: tokens from before the restart still work.
    let r = second
        .with_token("GET", "/users/me", &alice_token, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = request(
        second.api,
        "GET",
        "/agents?all=true",
        &[("x-api-key", &key)],
        "",
    )
    .await;
    let known = r.json()["agents"].as_array().unwrap().clone();
    let ports: Vec<(String, u64)> = known
        .iter()
        .map(|k| {
            (
                k["agent_id"].as_str().unwrap().to_owned(),
                k["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("agent-a".into(), u64::from(port_a)),
            ("agent-b".into(), u64::from(port_b))
        ]
    );
    assert!(known.iter().all(|k| k["status"] == "offline"));

    let b = TestAgent::spawn(second.grpc, "agent-b", &backend.url()).await;
    b.wait_connected().await;
    assert_eq!(b.port(), port_b, "agent-b got its port back");
    let a = TestAgent::spawn(second.grpc, "agent-a", &backend.url()).await;
    a.wait_connected().await;
    assert_eq!(a.port(), port_a, "agent-a got its port back");
    drop((a, b));
    second.stop().await;
}
