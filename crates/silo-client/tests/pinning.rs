//! The trust flags against a real TLS server whose certificates come from
//! silo-pki: the pin and the CA file are really enforced (chain, name),
//! and a refused server never sees a request byte.

use silo_client::{ApiClient, ClientError, Method, Trust};
use silo_pki::{CaPaths, KeyType, Pki, ServerCertSpec};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Server {
    url: String,
    pki: Pki,
    /// Request bytes received over TLS (after the handshake).
    received: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

/// A one-answer-per-connection HTTPS server (`200 {"ok":true}`), its
/// certificate valid for `names` only.
async fn server(names: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let spec = ServerCertSpec {
        domain_names: names.iter().map(|s| s.to_string()).collect(),
        ip_addresses: vec![],
        key_type: KeyType::EcdsaP256,
    };
    let (pki, _) = Pki::load_or_init(&CaPaths::under_data_dir(dir.path()), &spec).unwrap();
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<_> =
        rustls::pki_types::CertificateDer::pem_slice_iter(pki.server_cert_chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(pki.server_key_pem().as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            counter.fetch_add(n, Ordering::SeqCst);
                            got.extend_from_slice(&buf[..n]);
                        }
                    }
                }
                let body = br#"{"ok":true}"#;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        url: format!("https://localhost:{port}"),
        pki,
        received,
        _dir: dir,
    }
}

async fn get(url: &str, trust: &Trust) -> Result<serde_json::Value, ClientError> {
    let client = ApiClient::new(url, trust, Duration::from_secs(5))?.with_api_key("secret-api-key");
    client.call(Method::GET, "/x", None).await
}

#[tokio::test]
async fn the_right_pin_is_accepted_and_a_wrong_one_refused_before_any_byte() {
    let s = server(&["localhost"]).await;
    let ok = get(&s.url, &Trust::pin(s.pki.ca_sha256_hex()).unwrap())
        .await
        .unwrap();
    assert_eq!(ok["ok"], true);
    let sent = s.received.load(Ordering::SeqCst);
    assert!(sent > 0);

    let e = get(&s.url, &Trust::pin(&"ab".repeat(32)).unwrap())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    assert!(msg.contains("does not match --ca-sha256"), "{msg}");
    assert!(
        msg.contains(s.pki.ca_sha256_hex()),
        "names what was presented: {msg}"
    );
    assert_eq!(
        s.received.load(Ordering::SeqCst),
        sent,
        "no request byte reached the server"
    );
}

#[tokio::test]
async fn the_pin_still_checks_the_host_name() {
    let s = server(&["silo.test"]).await;
    let e = get(&s.url, &Trust::pin(s.pki.ca_sha256_hex()).unwrap())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not valid for the host name"), "{e}");
    assert_eq!(s.received.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn ca_files_system_roots_and_insecure() {
    let s = server(&["localhost"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, s.pki.ca_cert_pem()).unwrap();
    get(&s.url, &Trust::ca_file(&ca).unwrap()).await.unwrap();

    let other = server(&["localhost"]).await;
    let e = get(&other.url, &Trust::ca_file(&ca).unwrap())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("does not chain to a trusted CA"),
        "{e}"
    );
    let e = get(&s.url, &Trust::System).await.unwrap_err();
    assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    get(&s.url, &Trust::Insecure).await.unwrap();
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_one_line() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let client = ApiClient::new(
        &format!("https://localhost:{port}"),
        &Trust::Insecure,
        Duration::from_millis(300),
    )
    .unwrap();
    let e = client.call(Method::GET, "/", None).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let client = ApiClient::new(
        &format!("https://127.0.0.1:{port}"),
        &Trust::Insecure,
        Duration::from_secs(5),
    )
    .unwrap();
    let e = client.call(Method::GET, "/", None).await.unwrap_err();
    assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
    assert!(!e.to_string().contains('\n'));
}
