//! Automatic certificate renewal over the tunnel: when two thirds of the
//! certificate's lifetime have passed (jittered, so a fleet provisioned
//! together does not renew together), the agent makes a fresh key, sends a
//! CSR on its authenticated connection, checks the answer and replaces its
//! files atomically. The live connection carries on; the next one uses the
//! new certificate. The old certificate stays valid until it expires.

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use rand::Rng;
use silo_proto::v1::RenewRequest;
use silo_proto::v1::tunnel_client::TunnelClient;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{info, warn};

/// Renews whenever due until `stop` fires (the session ended).
pub async fn run(config: AgentConfig, mut client: TunnelClient<Channel>, stop: CancellationToken) {
    loop {
        let wait = match due_in(&config) {
            Ok(d) => d,
            Err(e) => {
                warn!("certificate renewal disabled for this session: {e}");
                return;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let mut backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(600));
        loop {
            match renew_once(&config, &mut client).await {
                Ok(serial) => {
                    info!(%serial, "certificate renewed; the next connection uses it");
                    break;
                }
                Err(e) => warn!("certificate renewal failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Time until 2/3 of the current certificate's lifetime, ± 1/30 of it.
fn due_in(config: &AgentConfig) -> Result<Duration, String> {
    let pem = std::fs::read(&config.grpc.tls.cert_file)
        .map_err(|e| format!("cannot read {}: {e}", config.grpc.tls.cert_file))?;
    let info = silo_pki::parse_cert_info(&pem).map_err(|e| e.to_string())?;
    let due = renewal_time(
        info.not_before,
        info.not_after,
        rand::rng().random_range(-1.0..=1.0),
    );
    let wait = due - OffsetDateTime::now_utc();
    Ok(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// `not_before` + 2/3 of the lifetime, shifted by `jitter` (-1..=1) times a
/// thirtieth of the lifetime.
pub fn renewal_time(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    jitter: f64,
) -> OffsetDateTime {
    let lifetime = not_after - not_before;
    not_before + lifetime * (2.0 / 3.0) + lifetime * (jitter.clamp(-1.0, 1.0) / 30.0)
}

async fn renew_once(
    config: &AgentConfig,
    client: &mut TunnelClient<Channel>,
) -> Result<String, String> {
    let agent_id = &config.grpc.agent_id;
    let key = silo_pki::generate_key(silo_pki::KeyType::EcdsaP256).map_err(|e| e.to_string())?;
    let csr_pem = silo_pki::generate_csr(agent_id, &key).map_err(|e| e.to_string())?;
    let resp = client
        .renew(RenewRequest { csr_pem })
        .await
        .map_err(|s| format!("server refused: {}", s.message()))?
        .into_inner();

    // Trust nothing in the answer that the certificate itself does not say.
    let ca = std::fs::read(&config.grpc.tls.ca_file)
        .map_err(|e| format!("cannot read the CA file: {e}"))?;
    let cert_der = pem_to_der(&resp.cert_pem)?;
    let ca_der = pem_to_der(&String::from_utf8_lossy(&ca))?;
    if !silo_pki::verify_issued_by(&cert_der, &ca_der) {
        return Err("the renewed certificate is not signed by our CA".into());
    }
    match silo_pki::agent_id_from_cert(&cert_der) {
        Some(id) if id.eq_ignore_ascii_case(agent_id) => {}
        other => {
            return Err(format!(
                "the renewed certificate names {other:?}, not {agent_id:?}"
            ));
        }
    }
    let ours = silo_pki::SubjectPublicKey::from_key_pair(&key).map_err(|e| e.to_string())?;
    let info = silo_pki::parse_cert_info(&cert_der).map_err(|e| e.to_string())?;
    if info.public_key_sha256_hex != ours.sha256_hex() {
        return Err("the renewed certificate does not carry our new key".into());
    }
    // Key first: a crash between the two leaves a key without its
    // certificate for one restart at most, never a certificate whose key is
    // lost.
    silo_pki::write_private_file(
        config.grpc.tls.key_file.as_ref(),
        key.serialize_pem().as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    silo_pki::write_public_file(config.grpc.tls.cert_file.as_ref(), resp.cert_pem.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(info.serial_hex)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime_within_the_jitter() {
        let nb = OffsetDateTime::UNIX_EPOCH;
        let na = nb + time::Duration::days(90);
        assert_eq!(renewal_time(nb, na, 0.0), nb + time::Duration::days(60));
        assert_eq!(renewal_time(nb, na, 1.0), nb + time::Duration::days(63));
        assert_eq!(renewal_time(nb, na, -1.0), nb + time::Duration::days(57));
        assert_eq!(renewal_time(nb, na, 7.0), nb + time::Duration::days(63));
    }
}
