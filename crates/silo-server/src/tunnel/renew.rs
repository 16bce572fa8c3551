//! Certificate renewal over the tunnel. The caller is authenticated by the
//! very certificate it renews (the connection's), so the new certificate
//! can only ever name the same agent; the old one is not revoked and simply
//! expires, so traffic never drops.

use crate::provision::audit;
use crate::state::ServerState;
use crate::tls::identity;
use silo_pki::CertSigner;
use silo_proto::v1::{RenewRequest, RenewResponse};
use silo_store::NewCertificate;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Request, Response, Status};
use tracing::{error, info};

pub(super) async fn renew(
    state: &ServerState,
    request: Request<RenewRequest>,
) -> Result<Response<RenewResponse>, Status> {
    let tls = state
        .tls
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("TLS is not enabled on this server"))?;
    let peer = identity::peer_identity(&request)?.ok_or_else(|| {
        Status::unauthenticated("renewal needs the connection's client certificate")
    })?;
    let remote_addr = request.remote_addr().map(|a| a.to_string());
    let csr = silo_pki::parse_csr(&request.get_ref().csr_pem)
        .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
    let validity = crate::provision::Settings::from_config(&state.config).cert_validity;
    let now = OffsetDateTime::now_utc();
    // Never backdate before the agent's revocation cut-off, or the new
    // certificate would be born revoked.
    let at = crate::provision::signing_time(&state.store, &peer.agent_id, now)
        .await
        .map_err(|e| {
            error!(agent_id = %peer.agent_id, "cannot read the revocation cut-off: {e}");
            Status::unavailable("the certificate registry is unavailable; retry later")
        })?;
    let issued = tls
        .pki
        .signer()
        .sign_agent(&peer.agent_id, csr.public_key(), validity, at)
        .map_err(|e| {
            error!(agent_id = %peer.agent_id, "renewal signing failed: {e}");
            Status::internal("signing failed")
        })?;
    let record = NewCertificate {
        serial: issued.serial_hex.clone(),
        agent_id: peer.agent_id.clone(),
        not_before: issued.not_before,
        not_after: issued.not_after,
        sha256: issued.sha256_hex.clone(),
        source: "renewal".into(),
        pem: issued.pem.clone(),
        created_at: now,
    };
    state.store.insert_certificate(&record).await.map_err(|e| {
        error!(agent_id = %peer.agent_id, "cannot record a renewed certificate: {e}");
        Status::unavailable("the certificate registry is unavailable; retry later")
    })?;
    let actor = format!("agent:{}", peer.agent_id);
    let detail = serde_json::json!({
        "serial": issued.serial_hex,
        "previous_serial": peer.serial_hex,
        "not_after": issued.not_after.format(&Rfc3339).unwrap_or_default(),
    });
    let event = audit::Event {
        action: "certificate.renewed",
        actor: &actor,
        agent_id: Some(&peer.agent_id),
        remote_addr,
        detail,
    };
    audit::record(&state.store, now, event).await;
    info!(agent_id = %peer.agent_id, serial = %issued.serial_hex, "certificate renewed");
    Ok(Response::new(RenewResponse {
        cert_pem: issued.pem,
        ca_cert_pem: tls.pki.ca_cert_pem().to_owned(),
        serial: issued.serial_hex,
        not_after: issued.not_after.format(&Rfc3339).unwrap_or_default(),
    }))
}
