//! TLS for tests: agent certificates signed by a test server's own CA (the
//! one it generated in its data_dir), and an HTTPS client that trusts it.

use crate::harness::TestServer;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// An agent's certificate files, as `provision` would leave them.
#[derive(Debug, Clone)]
pub struct AgentCert {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    pub serial_hex: String,
}

/// Loads the CA a TLS test server created under its data_dir.
pub fn server_pki(server: &TestServer) -> silo_pki::Pki {
    let paths = silo_pki::CaPaths::under_data_dir(&server.config.data_dir);
    let spec = silo_pki::ServerCertSpec {
        domain_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
        key_type: silo_pki::KeyType::EcdsaP256,
    };
    silo_pki::Pki::load_or_init(&paths, &spec)
        .expect("server PKI")
        .0
}

/// Signs a certificate for `agent_id` with `pki`'s CA, valid from `now`
/// for `validity`, and writes it with a fresh key into `dir`.
pub fn issue_agent_cert(
    pki: &silo_pki::Pki,
    agent_id: &str,
    dir: &Path,
    now: OffsetDateTime,
    validity: Duration,
) -> AgentCert {
    use silo_pki::CertSigner;
    let key = silo_pki::generate_key(silo_pki::KeyType::EcdsaP256).unwrap();
    let public = silo_pki::SubjectPublicKey::from_key_pair(&key).unwrap();
    let issued = pki
        .signer()
        .sign_agent(agent_id, &public, validity, now)
        .expect("sign");
    let cert_file = dir.join(format!("{agent_id}-{}-cert.pem", issued.serial_hex));
    let key_file = dir.join(format!("{agent_id}-{}-key.pem", issued.serial_hex));
    let ca_file = dir.join("ca-cert.pem");
    silo_pki::write_public_file(&cert_file, issued.pem.as_bytes()).unwrap();
    silo_pki::write_private_file(&key_file, key.serialize_pem().as_bytes()).unwrap();
    silo_pki::write_public_file(&ca_file, pki.ca_cert_pem().as_bytes()).unwrap();
    AgentCert {
        cert_file,
        key_file,
        ca_file,
        serial_hex: issued.serial_hex,
    }
}

/// GET over HTTPS, trusting only `ca_pem`, with SNI `server_name`.
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
) -> crate::client::Reply {
    https_get_with(addr, server_name, ca_pem, path, &[]).await
}

/// [`https_get`] with extra request headers.
pub async fn https_get_with(
    addr: SocketAddr,
    server_name: &str,
    ca_pem: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> crate::client::Reply {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(path).header("host", server_name);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::<Bytes>::default()).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    crate::client::Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
