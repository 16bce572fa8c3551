//! Shared test helpers: temp PKI layouts and the `openssl` CLI.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, UnixTime};
use silo_pki::{CaPaths, KeyType, ServerCertSpec};

pub fn spec(domains: &[&str], ips: &[&str]) -> ServerCertSpec {
    ServerCertSpec {
        domain_names: domains.iter().map(|s| s.to_string()).collect(),
        ip_addresses: ips.iter().map(|s| s.parse().unwrap()).collect(),
        key_type: KeyType::EcdsaP256,
    }
}

pub fn paths(dir: &Path) -> CaPaths {
    CaPaths::under_data_dir(dir)
}

/// Runs `openssl` in `dir`, or returns `None` (after saying so) when the
/// CLI is not installed, so the caller can skip.
pub fn openssl(dir: &Path, args: &[&str]) -> Option<String> {
    let out = match Command::new("openssl").args(args).current_dir(dir).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: `openssl` is not on PATH (openssl {args:?})");
            return None;
        }
        Err(e) => panic!("running openssl: {e}"),
    };
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// DER of the first PEM block of a file.
pub fn pem_file_der(path: &Path) -> Vec<u8> {
    let text = std::fs::read(path).unwrap();
    pem::parse(text).unwrap().into_contents()
}

pub fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Verifies `cert_der` as a TLS client certificate the way the server will
/// (rustls/webpki with `ca_der` as the only root).
pub fn webpki_client_verify(ca_der: &[u8], cert_der: &[u8]) -> Result<(), rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca_der.to_vec())).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_client_cert(
            &CertificateDer::from(cert_der.to_vec()),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}
