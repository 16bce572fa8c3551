//! Mutual TLS on the tunnel: the agent's identity is its certificate.

use silo_proto::v1::tunnel_client::TunnelClient;
use silo_proto::v1::{AgentMessage, Hello, agent_message};
use silo_test_support::client::get;
use silo_test_support::tls::{AgentCert, https_get, issue_agent_cert, server_pki};
use silo_test_support::{Backend, TestAgent, TestServer};
use std::net::SocketAddr;
use std::time::Duration;
use time::OffsetDateTime;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const DAY: Duration = Duration::from_secs(86400);

async fn tls_server() -> TestServer {
    TestServer::spawn_with(|c| c.grpc.tls.enabled = true).await
}

async fn tls_agent(
    server: &TestServer,
    id: &str,
    cert: &AgentCert,
    backend: &Backend,
) -> TestAgent {
    let cert = cert.clone();
    TestAgent::spawn_with(server.grpc, id, &backend.url(), move |c| {
        c.grpc.tls.enabled = true;
        c.grpc.tls.cert_file = cert.cert_file.display().to_string();
        c.grpc.tls.key_file = cert.key_file.display().to_string();
        c.grpc.tls.ca_file = cert.ca_file.display().to_string();
        c.grpc.server_address = format!("localhost:{}", server.grpc.port());
    })
    .await
}

/// Says hello as `claimed` over a connection presenting `cert` (or none) and
/// returns the gRPC status the server answers with.
async fn hello_as(
    grpc: SocketAddr,
    ca_pem: &str,
    cert: Option<&AgentCert>,
    claimed: &str,
) -> Result<(), tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(c) = cert {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&c.cert_file).unwrap(),
            std::fs::read(&c.key_file).unwrap(),
        ));
    }
    let endpoint = Endpoint::from_shared(format!("https://localhost:{}", grpc.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    let hello = AgentMessage {
        msg: Some(agent_message::Msg::Hello(Hello {
            protocol_version: silo_proto::PROTOCOL_VERSION,
            agent_id: claimed.into(),
            agent_version: "test".into(),
            capabilities: vec![],
        })),
    };
    let mut stream = TunnelClient::new(channel)
        .session(tokio_stream::iter(vec![hello]))
        .await?
        .into_inner();
    stream.message().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_its_certificate_connects_and_serves() {
    let backend = Backend::spawn().await;
    let server = tls_server().await;
    let dir = tempfile::tempdir().unwrap();
    let cert = issue_agent_cert(
        &server_pki(&server),
        "secure-1",
        dir.path(),
        OffsetDateTime::now_utc(),
        DAY,
    );
    let agent = tls_agent(&server, "secure-1", &cert, &backend).await;
    agent.wait_connected().await;
    let port = server.agent_port("secure-1").await;
    let r = get(SocketAddr::from(([127, 0, 0, 1], port)), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));

    let list = server.agents().await;
    let a = &list["agents"][0];
    assert_eq!(a["cert_serial"], cert.serial_hex.as_str());
    assert!(a["cert_not_after"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_listener_speaks_https_with_the_server_certificate() {
    let server = tls_server().await;
    let pki = server_pki(&server);
    let r = https_get(server.api, "localhost", pki.ca_cert_pem(), "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_cannot_claim_another_agent() {
    let server = tls_server().await;
    let pki = server_pki(&server);
    let dir = tempfile::tempdir().unwrap();
    let a = issue_agent_cert(&pki, "agent-a", dir.path(), OffsetDateTime::now_utc(), DAY);
    let status = hello_as(server.grpc, pki.ca_cert_pem(), Some(&a), "agent-b")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("agent-a"), "{}", status.message());
    assert_eq!(server.agents().await["count"], 0);
    // The same certificate claiming its own id is fine.
    hello_as(server.grpc, pki.ca_cert_pem(), Some(&a), "agent-a")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_foreign_or_expired_certificate_gets_through() {
    let server = tls_server().await;
    let pki = server_pki(&server);
    let dir = tempfile::tempdir().unwrap();

    // No certificate at all.
    assert!(
        hello_as(server.grpc, pki.ca_cert_pem(), None, "anon")
            .await
            .is_err()
    );

    // Signed by another CA.
    let other_dir = tempfile::tempdir().unwrap();
    let other_paths = silo_pki::CaPaths::under_data_dir(other_dir.path());
    let (other, _) = silo_pki::Pki::load_or_init(&other_paths, &Default::default()).unwrap();
    let foreign = issue_agent_cert(
        &other,
        "foreign",
        dir.path(),
        OffsetDateTime::now_utc(),
        DAY,
    );
    assert!(
        hello_as(server.grpc, pki.ca_cert_pem(), Some(&foreign), "foreign")
            .await
            .is_err()
    );

    // Expired yesterday.
    let expired = issue_agent_cert(
        &pki,
        "expired",
        dir.path(),
        OffsetDateTime::now_utc() - 2 * DAY,
        DAY,
    );
    assert!(
        hello_as(server.grpc, pki.ca_cert_pem(), Some(&expired), "expired")
            .await
            .is_err()
    );

    assert_eq!(server.agents().await["count"], 0);
    // A valid certificate of the same CA still works, so the refusals above
    // were about the certificates (a welcome came back).
    let good = issue_agent_cert(&pki, "good", dir.path(), OffsetDateTime::now_utc(), DAY);
    hello_as(server.grpc, pki.ca_cert_pem(), Some(&good), "good")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_renews_its_certificate_over_the_tunnel_without_dropping_traffic() {
    let backend = Backend::spawn().await;
    let server = tls_server().await;
    let pki = server_pki(&server);
    let dir = tempfile::tempdir().unwrap();
    // Issued 7 minutes ago for 10 minutes (plus the 5-minute backdating):
    // two thirds of its life are over, so renewal is due at once.
    let issued_at = OffsetDateTime::now_utc() - Duration::from_secs(7 * 60);
    let cert = issue_agent_cert(
        &pki,
        "renewer",
        dir.path(),
        issued_at,
        Duration::from_secs(600),
    );
    let old_pem = std::fs::read_to_string(&cert.cert_file).unwrap();
    let agent = tls_agent(&server, "renewer", &cert, &backend).await;
    agent.wait_connected().await;
    let port = server.agent_port("renewer").await;
    let at = SocketAddr::from(([127, 0, 0, 1], port));

    let new_pem = silo_test_support::eventually(
        Duration::from_secs(20),
        "renewed certificate file",
        || async {
            let pem = std::fs::read_to_string(&cert.cert_file).ok()?;
            (pem != old_pem).then_some(pem)
        },
    )
    .await;
    let old = silo_pki::parse_cert_info(old_pem.as_bytes()).unwrap();
    let new = silo_pki::parse_cert_info(new_pem.as_bytes()).unwrap();
    assert_ne!(new.serial_hex, old.serial_hex);
    assert!(new.not_after > old.not_after);
    assert_eq!(
        silo_pki::agent_id_from_cert(&pem_der(&new_pem)).as_deref(),
        Some("renewer")
    );
    assert!(silo_pki::verify_issued_by(
        &pem_der(&new_pem),
        pki.ca_cert_der()
    ));
    let key_pem = std::fs::read_to_string(&cert.key_file).unwrap();
    let key = silo_pki::load_key_pair_pem(&key_pem, "renewed key").unwrap();
    let ours = silo_pki::SubjectPublicKey::from_key_pair(&key).unwrap();
    assert_eq!(
        new.public_key_sha256_hex,
        ours.sha256_hex(),
        "the key file matches the new certificate"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cert.key_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // The live session carried on through the renewal.
    assert!(agent.connected());
    let r = get(at, "/hello").await;
    assert_eq!(r.status, 200);

    // The next connection presents the new certificate.
    let mut agent = agent;
    agent.stop().await;
    let again = tls_agent(&server, "renewer", &cert, &backend).await;
    again.wait_connected().await;
    silo_test_support::eventually(Duration::from_secs(10), "new serial listed", || async {
        let list = server.agents().await;
        (list["agents"][0]["cert_serial"] == new.serial_hex.as_str()).then_some(())
    })
    .await;
    assert_eq!(
        get(at, "/hello").await.status,
        200,
        "same port after the reconnect"
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Runs `openssl` with `args` in `dir`; `None` when openssl is missing.
fn openssl(dir: &std::path::Path, args: &[&str]) -> Option<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_and_cn_only_agent_certificate_made_with_openssl_are_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A CA and a CN-only client certificate as an operator (or the Go
    // implementation) would have made them.
    let ca = openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Old Fleet CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    if ca.is_none() {
        println!("SKIPPED: openssl is not installed");
        return;
    }
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        d,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "old-agent-key.pem",
            "-out",
            "old-agent.csr",
            "-subj",
            "/CN=old-agent",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "old-agent.csr",
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "old-agent-cert.pem",
            "-days",
            "30",
            "-extfile",
            "client.ext",
        ],
    );
    let ca_before = std::fs::read(d.join("ca-cert.pem")).unwrap();

    let backend = Backend::spawn().await;
    let (ca_file, ca_key) = (d.join("ca-cert.pem"), d.join("ca-key.pem"));
    let server = TestServer::spawn_with(move |c| {
        c.grpc.tls.enabled = true;
        c.grpc.tls.ca_file = ca_file.display().to_string();
        c.grpc.tls.ca_key_file = ca_key.display().to_string();
    })
    .await;
    let cert = AgentCert {
        cert_file: d.join("old-agent-cert.pem"),
        key_file: d.join("old-agent-key.pem"),
        ca_file: d.join("ca-cert.pem"),
        serial_hex: String::new(),
    };
    let agent = tls_agent(&server, "old-agent", &cert, &backend).await;
    agent.wait_connected().await;
    let port = server.agent_port("old-agent").await;
    let r = get(SocketAddr::from(([127, 0, 0, 1], port)), "/hello").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "hello"));
    assert_eq!(
        std::fs::read(d.join("ca-cert.pem")).unwrap(),
        ca_before,
        "the adopted CA is never rewritten"
    );
}
