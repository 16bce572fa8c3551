//! Provisioning throughput: what the server does per `POST /provision`
//! minus the database — validate the CSR (PEM, DER, key policy, self
//! signature), then sign the agent certificate with the CA — in process,
//! on one thread, with a fresh P-256 CA (the server's default).

use silo_pki::{CaPaths, CertSigner, KeyType, Pki, ServerCertSpec};
use std::time::{Duration, Instant};

/// Signings per second for P-256 and RSA-2048 CSRs.
#[derive(Debug)]
pub struct Rates {
    pub p256: f64,
    pub rsa2048: f64,
}

/// `per_kind`: measuring time for each key type. RSA key generation takes
/// a second or more, so a few RSA CSRs are made up front and re-signed.
pub fn run(per_kind: Duration, rsa_keys: usize) -> anyhow::Result<Rates> {
    let dir = tempfile::tempdir()?;
    let spec = ServerCertSpec {
        domain_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".parse()?],
        key_type: KeyType::EcdsaP256,
    };
    let (pki, _) = Pki::load_or_init(&CaPaths::under_data_dir(dir.path()), &spec)?;
    let signer = pki.signer();
    let csrs = |kind: KeyType, n: usize| -> anyhow::Result<Vec<String>> {
        (0..n)
            .map(|i| {
                let key = silo_pki::generate_key(kind)?;
                Ok(silo_pki::generate_csr(&format!("csr-{i}"), &key)?)
            })
            .collect()
    };
    let p256 = csrs(KeyType::EcdsaP256, 16)?;
    let rsa = csrs(KeyType::Rsa2048, rsa_keys.max(1))?;
    let rate = |pems: &[String]| -> anyhow::Result<f64> {
        let validity = Duration::from_secs(90 * 86400);
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < per_kind {
            let csr = silo_pki::parse_csr(&pems[n % pems.len()])?;
            let now = time::OffsetDateTime::now_utc();
            signer.sign_agent(&format!("agent-{n}"), csr.public_key(), validity, now)?;
            n += 1;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    };
    Ok(Rates {
        p256: rate(&p256)?,
        rsa2048: rate(&rsa)?,
    })
}
