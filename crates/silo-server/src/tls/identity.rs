//! Who a tunnel connection speaks for. With TLS the agent IS its verified
//! client certificate; an id claimed in a message only has to agree with
//! it. Without a certificate (TLS off, or the development `client_auth`
//! modes) the claim is all there is.

use time::OffsetDateTime;
use tonic::Status;

/// The identity proven by a verified client certificate.
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    pub agent_id: String,
    pub serial_hex: String,
    pub not_after: OffsetDateTime,
}

/// The client certificate of the request's connection, if any. The TLS
/// layer has verified it (chain, validity, revocation) already.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<Option<PeerIdentity>, Status> {
    let Some(certs) = request.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = certs.first() else {
        return Ok(None);
    };
    let info = silo_pki::parse_cert_info(leaf)
        .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
    let agent_id = silo_pki::agent_id_from_cert(leaf)
        .ok_or_else(|| Status::unauthenticated("the client certificate names no valid agent id"))?;
    Ok(Some(PeerIdentity {
        agent_id,
        serial_hex: info.serial_hex,
        not_after: info.not_after,
    }))
}

/// The agent id a connection may use: the certificate's, when there is
/// one, and then the claim must match it (letter case aside).
pub fn resolve_agent_id(
    claimed: &str,
    peer: Option<&PeerIdentity>,
    certificate_required: bool,
) -> Result<String, Status> {
    match peer {
        Some(p) if p.agent_id.eq_ignore_ascii_case(claimed) => Ok(p.agent_id.clone()),
        Some(p) => Err(Status::permission_denied(format!(
            "the client certificate is for agent {:?} but the connection claims {claimed:?}",
            p.agent_id
        ))),
        None if certificate_required => {
            Err(Status::unauthenticated("a client certificate is required"))
        }
        None => Ok(claimed.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str) -> PeerIdentity {
        PeerIdentity {
            agent_id: id.into(),
            serial_hex: "01".into(),
            not_after: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_certificate_decides() {
        assert_eq!(
            resolve_agent_id("dev-1", Some(&peer("dev-1")), true).unwrap(),
            "dev-1"
        );
        assert_eq!(
            resolve_agent_id("DEV-1", Some(&peer("dev-1")), true).unwrap(),
            "dev-1"
        );
        let e = resolve_agent_id("other", Some(&peer("dev-1")), true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("dev-1") && e.message().contains("other"));
    }

    #[test]
    fn without_a_certificate_only_development_modes_accept_the_claim() {
        assert_eq!(resolve_agent_id("x", None, false).unwrap(), "x");
        assert_eq!(
            resolve_agent_id("x", None, true).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
