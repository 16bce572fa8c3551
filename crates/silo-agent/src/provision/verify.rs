//! What the agent checks before it believes the server's answer: the
//! certificate chains to the returned CA, that CA is the one it was told to
//! trust, the certificate certifies *our* key, and it names a valid agent
//! id — taken from the certificate, the response's `agent_id` field only
//! has to agree with it.

use anyhow::{Context, anyhow, bail, ensure};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;
use silo_client::{CaCheck, Trust};
use silo_pki::{KeyPair, SubjectPublicKey};

/// A verified answer.
#[derive(Debug, Clone)]
pub struct Checked {
    pub agent_id: String,
    pub cert_pem: String,
    pub ca_pem: String,
    /// RFC 3339, for the summary.
    pub not_after: String,
}

/// The CSR the device sends. Its subject is informational (the server sets
/// the certificate's names itself); the device does not know its agent id
/// before the answer, so it claims none.
pub fn csr_pem(pair: &KeyPair) -> anyhow::Result<String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "silo-proxy-agent");
    Ok(params.serialize_request(pair)?.pem()?)
}

fn field<'a>(answer: &'a Value, name: &str) -> anyhow::Result<&'a str> {
    answer
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("the server's answer has no {name:?}"))
}

/// Exactly one certificate in `pem`, as DER.
fn single_cert(pem: &str, what: &str) -> anyhow::Result<CertificateDer<'static>> {
    let mut certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("the server's {what} is not valid PEM: {e}"))?;
    ensure!(
        certs.len() == 1,
        "the server's {what} holds {} certificates, expected one",
        certs.len()
    );
    Ok(certs.remove(0))
}

/// Checks the answer of `POST /api/v1/provision` against our key pair and
/// the trust we were given.
pub fn answer(answer: &Value, pair: &KeyPair, trust: &Trust) -> anyhow::Result<Checked> {
    let cert_pem = field(answer, "cert_pem")?;
    let ca_pem = field(answer, "ca_cert_pem")?;
    let claimed = field(answer, "agent_id")?;
    let cert = single_cert(cert_pem, "certificate")?;
    let ca = single_cert(ca_pem, "CA certificate")?;

    match trust.check_returned_ca(&ca) {
        CaCheck::Matches | CaCheck::Unchecked => {}
        CaCheck::Mismatch => bail!(
            "the server returned a CA certificate (sha256 {}) that is not the one given by {}; \
             not writing anything",
            silo_pki::sha256_fingerprint_hex(&ca),
            match trust {
                Trust::CaFile { .. } => "--ca-file",
                _ => "--ca-sha256",
            }
        ),
    }
    ensure!(
        silo_pki::verify_issued_by(&cert, &ca),
        "the returned certificate was not issued by the returned CA"
    );
    let info = silo_pki::parse_cert_info(&cert).context("reading the returned certificate")?;
    let ours = SubjectPublicKey::from_key_pair(pair)
        .map_err(|e| anyhow!("reading our own public key: {e}"))?
        .sha256_hex();
    ensure!(
        info.public_key_sha256_hex == ours,
        "the returned certificate is for another public key, not the one generated here"
    );
    ensure!(!info.is_ca, "the returned certificate is a CA certificate");
    let Some(agent_id) = silo_pki::agent_id_from_cert(&cert) else {
        bail!("the returned certificate names no valid agent id");
    };
    ensure!(
        claimed == agent_id,
        "the server says agent {claimed:?} but the certificate is for {agent_id:?}"
    );
    let now = time::OffsetDateTime::now_utc();
    ensure!(
        info.not_after > now,
        "the returned certificate has already expired"
    );
    let not_after = info
        .not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Ok(Checked {
        agent_id,
        cert_pem: cert_pem.to_owned(),
        ca_pem: ca_pem.to_owned(),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use silo_pki::{CaPaths, CertSigner, KeyType, Pki, ServerCertSpec};

    fn pki(dir: &std::path::Path) -> Pki {
        let spec = ServerCertSpec {
            domain_names: vec!["localhost".into()],
            ..Default::default()
        };
        Pki::load_or_init(&CaPaths::under_data_dir(dir), &spec)
            .unwrap()
            .0
    }

    fn issue(pki: &Pki, agent: &str, pair: &KeyPair) -> Value {
        let pk = SubjectPublicKey::from_key_pair(pair).unwrap();
        let cert = pki
            .signer()
            .sign_agent(
                agent,
                &pk,
                std::time::Duration::from_secs(3600),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        serde_json::json!({
            "agent_id": agent,
            "cert_pem": cert.pem,
            "ca_cert_pem": pki.ca_cert_pem(),
            "expires_at": "x",
        })
    }

    #[test]
    fn a_good_answer_passes_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki(dir.path());
        let pair = silo_pki::generate_key(KeyType::EcdsaP256).unwrap();
        let pin = Trust::pin(pki.ca_sha256_hex()).unwrap();
        let good = issue(&pki, "edge-1", &pair);
        let checked = answer(&good, &pair, &pin).unwrap();
        assert_eq!(checked.agent_id, "edge-1");
        assert!(csr_pem(&pair).unwrap().contains("CERTIFICATE REQUEST"));

        // The response's agent_id disagrees with the certificate.
        let mut lying = good.clone();
        lying["agent_id"] = "../../etc".into();
        let e = answer(&lying, &pair, &pin).unwrap_err().to_string();
        assert!(e.contains("certificate is for \"edge-1\""), "{e}");

        // A certificate for somebody else's key.
        let other = silo_pki::generate_key(KeyType::EcdsaP256).unwrap();
        let e = answer(&issue(&pki, "edge-1", &other), &pair, &pin)
            .unwrap_err()
            .to_string();
        assert!(e.contains("another public key"), "{e}");

        // Another CA than the pinned one, even if self-consistent.
        let dir2 = tempfile::tempdir().unwrap();
        let foreign = issue(&pki_at(dir2.path()), "edge-1", &pair);
        let e = answer(&foreign, &pair, &pin).unwrap_err().to_string();
        assert!(e.contains("not the one given by --ca-sha256"), "{e}");
        // With system roots there is nothing to compare the CA with, but
        // the chain must still hold together.
        answer(&foreign, &pair, &Trust::System).unwrap();
        let mut mixed = foreign.clone();
        mixed["ca_cert_pem"] = good["ca_cert_pem"].clone();
        let e = answer(&mixed, &pair, &Trust::System)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not issued by the returned CA"), "{e}");

        let e = answer(&serde_json::json!({}), &pair, &pin)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert_pem"), "{e}");
    }

    fn pki_at(dir: &std::path::Path) -> Pki {
        pki(dir)
    }
}
