//! Certificate endpoints over HTTPS: the legacy zip, revocation (which
//! cuts a live session), and the answers of a server without TLS.

mod api_support;

use api_support::*;
use reqwest::Method;
use serde_json::{Value, json};
use silo_client::{ApiClient, Trust};
use silo_test_support::harness::ADMIN_KEY;
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_zip_endpoints() {
    let server = tls_server(30).await;
    let trust = pin(&server).await;
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(trust.rustls_config().unwrap().unwrap())
        .build()
        .unwrap();
    let u = |p: &str| format!("{}{p}", url(&server));
    let r = http
        .post(u("/agents/zip-1/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/zip");
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"zip-1-certs.zip\""
    );
    let zip = r.bytes().await.unwrap();
    let entries = silo_server::provision::zip::read_stored(&zip).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["zip-1-cert.pem", "zip-1-key.pem", "ca-cert.pem"]);
    let r = http
        .post(u("/agents/zip-1/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = http
        .get(u("/agents/zip-1/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        silo_server::provision::zip::read_stored(&r.bytes().await.unwrap()).unwrap(),
        entries
    );
    for bad in ["/agents/..%2Fx/certificate", "/agents/-a/certificate"] {
        let r = http
            .post(u(bad))
            .header("x-api-key", ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = http
        .post(u("/agents/zip-2/certificate"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let r = http
        .delete(u("/agents/zip-1/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["deleted_paths"],
        json!(["zip-1/zip-1-cert.pem", "zip-1/zip-1-key.pem"])
    );
    assert_eq!(body["revoked_serials"].as_array().unwrap().len(), 1);
    let r = http
        .get(u("/agents/zip-1/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .delete(u("/agents/nobody/certificate"))
        .header("x-api-key", ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tls_provisioning_says_so() {
    let server = TestServer::spawn().await;
    let base = format!("http://127.0.0.1:{}", server.api.port());
    let api = ApiClient::new(&base, &Trust::System, Duration::from_secs(5))
        .unwrap()
        .with_api_key(ADMIN_KEY);
    for (path, body) in [
        ("/api/v1/provision-keys", json!({"agent_id": "a"})),
        ("/api/v1/provision", json!({"key": "sk_x", "csr": "y"})),
    ] {
        let r = api.send(Method::POST, path, Some(&body)).await.unwrap();
        assert_eq!(
            (r.status, r.error_message().as_str()),
            (400, "TLS is not enabled on this server"),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_cuts_the_live_session_at_once() {
    let backend = Backend::spawn().await;
    let server = tls_server(30).await;
    let api = admin(&server).await;
    let key = create_key(&api, "live-1").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (pair, pem) = csr("live-1");
    let (status, body) = provision(&anonymous(&server).await, &key, &pem).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, s: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p.display().to_string()
    };
    let cert_file = write("cert.pem", body["cert_pem"].as_str().unwrap());
    let key_file = write("key.pem", &pair.serialize_pem());
    let ca_file = write("ca.pem", body["ca_cert_pem"].as_str().unwrap());
    let grpc = server.grpc;
    let agent = TestAgent::spawn_with(grpc, "live-1", &backend.url(), move |c| {
        c.grpc.tls.enabled = true;
        c.grpc.tls.cert_file = cert_file;
        c.grpc.tls.key_file = key_file;
        c.grpc.tls.ca_file = ca_file;
        c.grpc.server_address = format!("localhost:{}", grpc.port());
    })
    .await;
    agent.wait_connected().await;
    server.agent_port("live-1").await;

    let r = api
        .send(Method::DELETE, "/agents/live-1/certificate", None)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually(Duration::from_secs(2), "the session cut", || async {
        let list = server.agents().await;
        (list["count"] == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(2), "the agent to notice", || async {
        (!agent.connected()).then_some(())
    })
    .await;
    let certs = api
        .call(Method::GET, "/api/v1/certificates?agent_id=live-1", None)
        .await
        .unwrap();
    assert!(certs["certificates"][0]["revoked_at"].is_string());

    // The next handshake with the revoked certificate is refused.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            body["ca_cert_pem"].as_str().unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            body["cert_pem"].as_str().unwrap(),
            pair.serialize_pem(),
        ))
        .domain_name("localhost");
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
    let refused = match channel {
        Err(_) => true,
        Ok(channel) => {
            let hello = silo_proto::v1::AgentMessage {
                msg: Some(silo_proto::v1::agent_message::Msg::Hello(
                    silo_proto::v1::Hello {
                        protocol_version: silo_proto::PROTOCOL_VERSION,
                        agent_id: "live-1".into(),
                        agent_version: "test".into(),
                        capabilities: vec![],
                    },
                )),
            };
            silo_proto::v1::tunnel_client::TunnelClient::new(channel)
                .session(tokio_stream::iter(vec![hello]))
                .await
                .is_err()
        }
    };
    assert!(refused, "a revoked certificate must not open a session");
    assert_eq!(server.agents().await["count"], 0);
}
