//! Helpers of the API tests: a TLS test server and the pinning client.
#![allow(dead_code)]

use reqwest::Method;
use serde_json::{Value, json};
use silo_client::{ApiClient, Trust};
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{TestServer, eventually};
use std::time::Duration;

pub async fn tls_server(max_failures: u32) -> TestServer {
    TestServer::spawn_with(|c| {
        c.grpc.tls.enabled = true;
        c.provision.max_failures_per_minute = max_failures;
    })
    .await
}

/// The server's CA, once it has written it.
pub async fn ca_pem(server: &TestServer) -> String {
    let path = silo_pki::CaPaths::under_data_dir(&server.config.data_dir).ca_cert;
    eventually(Duration::from_secs(10), "the server's CA", || async {
        std::fs::read_to_string(&path).ok()
    })
    .await
}

pub async fn pin(server: &TestServer) -> Trust {
    let pem = ca_pem(server).await;
    let der = silo_pki::parse_cert_info(pem.as_bytes())
        .unwrap()
        .sha256_hex;
    Trust::pin(&der).unwrap()
}

pub fn url(server: &TestServer) -> String {
    format!("https://localhost:{}", server.api.port())
}

pub async fn admin(server: &TestServer) -> ApiClient {
    ApiClient::new(&url(server), &pin(server).await, Duration::from_secs(10))
        .unwrap()
        .with_api_key(ADMIN_KEY)
}

pub async fn anonymous(server: &TestServer) -> ApiClient {
    ApiClient::new(&url(server), &pin(server).await, Duration::from_secs(10)).unwrap()
}

pub fn csr(agent: &str) -> (silo_pki::KeyPair, String) {
    let key = silo_pki::generate_key(silo_pki::KeyType::EcdsaP256).unwrap();
    let pem = silo_pki::generate_csr(agent, &key).unwrap();
    (key, pem)
}

pub async fn create_key(api: &ApiClient, agent: &str) -> Value {
    let r = api
        .send(
            Method::POST,
            "/api/v1/provision-keys",
            Some(&json!({"agent_id": agent})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.body
}

pub async fn provision(api: &ApiClient, key: &str, csr: &str) -> (u16, Value) {
    let r = api
        .send(
            Method::POST,
            "/api/v1/provision",
            Some(&json!({"key": key, "csr": csr})),
        )
        .await
        .unwrap();
    (r.status, r.body)
}
