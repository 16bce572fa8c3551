//! `POST /api/v1/provision`: a provision key and a CSR in, a certificate out.
//!
//! Order matters: the CSR is validated before the key is touched (garbage
//! never costs a key); the key is consumed by one conditional store update
//! (never check-then-mark); a signing failure gives the key back; the new
//! certificate is recorded before the agent's older ones are revoked.

use super::audit::{self, Event};
use super::keys::{hash_key, looks_like_key};
use super::{Ctx, ProvisionError, signing_time};
use crate::api::rfc3339;
use serde::Serialize;
use silo_pki::{IssuedCert, SubjectPublicKey, ValidatedCsr};
use silo_store::{ConsumeOutcome, NewCertificate, ProvisionKey};
use std::net::IpAddr;
use time::OffsetDateTime;

/// How long after a success a retry with the same public key gets the same
/// certificate back (a lost response is not a lost device).
pub const RETRY_WINDOW: time::Duration = time::Duration::minutes(10);

pub const SOURCE_PROVISION: &str = "provision";

/// The 200 answer. `key_pem` only on the legacy path without a CSR.
#[derive(Debug, Serialize)]
pub struct Provisioned {
    pub agent_id: String,
    pub cert_pem: String,
    pub ca_cert_pem: String,
    pub expires_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// Serials of the agent's older certificates revoked by this call; the
    /// caller must refresh the revocation set and cut the agent's session.
    #[serde(skip)]
    pub revoked_serials: Vec<String>,
    /// True when a retry got the earlier certificate back.
    #[serde(skip)]
    pub replayed: bool,
}

/// The public key to certify: from the CSR, or generated here (legacy).
enum Subject {
    Csr(ValidatedCsr),
    /// Boxed: a key pair is large and this path is rare.
    Generated(Box<(silo_pki::KeyPair, SubjectPublicKey)>),
}

impl Subject {
    fn public_key(&self) -> &SubjectPublicKey {
        match self {
            Subject::Csr(csr) => csr.public_key(),
            Subject::Generated(generated) => &generated.1,
        }
    }
}

/// Provisions the agent a key is bound to. Every outcome is audited with
/// the key's public id and `client_addr`.
pub async fn provision(
    ctx: Ctx<'_>,
    key: &str,
    csr: Option<&str>,
    client_addr: IpAddr,
    now: OffsetDateTime,
) -> Result<Provisioned, ProvisionError> {
    let result = provision_inner(ctx, key, csr, now).await;
    let addr = client_addr.to_string();
    match &result {
        Ok((p, key_id)) => {
            tracing::info!(agent_id = %p.agent_id, %key_id, client = %addr, replayed = p.replayed, "agent provisioned");
            let detail = serde_json::json!({ "key_id": key_id, "replayed": p.replayed });
            let event = Event {
                action: audit::PROVISION_OK,
                actor: "provision-key",
                agent_id: Some(&p.agent_id),
                remote_addr: Some(addr),
                detail,
            };
            audit::record(ctx.store, now, event).await;
        }
        Err(Failure { error, key }) => {
            let key_id = key.as_ref().map(|k| k.id.as_str());
            let agent_id = key.as_ref().map(|k| k.agent_id.as_str());
            tracing::warn!(key_id = ?key_id, agent_id = ?agent_id, client = %addr, error = %error, "provisioning refused");
            let event = Event {
                action: audit::PROVISION_FAILED,
                actor: "provision-key",
                agent_id,
                remote_addr: Some(addr),
                detail: serde_json::json!({ "key_id": key_id, "reason": error.to_string() }),
            };
            audit::record(ctx.store, now, event).await;
        }
    }
    result.map(|(p, _)| p).map_err(|f| f.error)
}

/// An error plus the key it concerned, when known (for the audit row).
struct Failure {
    error: ProvisionError,
    key: Option<ProvisionKey>,
}

macro_rules! failure_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure { error: e.into(), key: None }
            }
        }
    )*};
}
failure_from!(ProvisionError, silo_store::StoreError, silo_pki::PkiError);

fn unauthorized(message: &'static str, key: Option<ProvisionKey>) -> Failure {
    Failure {
        error: ProvisionError::Unauthorized(message),
        key,
    }
}

async fn provision_inner(
    ctx: Ctx<'_>,
    key: &str,
    csr: Option<&str>,
    now: OffsetDateTime,
) -> Result<(Provisioned, String), Failure> {
    let signer = ctx.signer()?;
    if !looks_like_key(key) {
        return Err(unauthorized("invalid provision key", None));
    }
    let key_hash = hash_key(key);
    // Garbage is refused before the key is touched. The lookup only names
    // the key in the audit row; it decides nothing.
    let subject = match csr {
        Some(pem) => match silo_pki::parse_csr(pem) {
            Ok(csr) => Subject::Csr(csr),
            Err(e) => {
                return Err(Failure {
                    error: ProvisionError::BadRequest(format!("invalid CSR: {e}")),
                    key: ctx.store.get_provision_key(&key_hash).await.ok().flatten(),
                });
            }
        },
        None => {
            let pair = silo_pki::generate_key(ctx.settings.key_type)?;
            let pk = SubjectPublicKey::from_key_pair(&pair)
                .map_err(|e| silo_pki::PkiError::KeyGeneration(e.to_string()))?;
            Subject::Generated(Box::new((pair, pk)))
        }
    };
    let pubkey_sha256 = subject.public_key().sha256_hex();

    let key = match ctx
        .store
        .consume_provision_key(&key_hash, now, &pubkey_sha256)
        .await?
    {
        ConsumeOutcome::Consumed(key) => key,
        ConsumeOutcome::NotFound => return Err(unauthorized("invalid provision key", None)),
        ConsumeOutcome::Expired(k) => return Err(unauthorized("provision key expired", Some(k))),
        ConsumeOutcome::Revoked(k) => return Err(unauthorized("provision key revoked", Some(k))),
        ConsumeOutcome::AlreadyUsed {
            key,
            used_at,
            pubkey_sha256: winner,
            issued_cert_serial,
        } => {
            let same_key = winner.as_deref() == Some(pubkey_sha256.as_str());
            if same_key
                && now - used_at <= RETRY_WINDOW
                && let Some(serial) = issued_cert_serial
                && let Some(cert) = ctx.store.get_certificate(&serial).await?
                && cert.revoked_at.is_none()
            {
                let id = key.id.clone();
                let p = Provisioned {
                    agent_id: key.agent_id,
                    cert_pem: cert.pem,
                    ca_cert_pem: signer.ca_cert_pem().to_owned(),
                    expires_at: rfc3339(cert.not_after),
                    key_pem: None,
                    revoked_serials: Vec::new(),
                    replayed: true,
                };
                return Ok((p, id));
            }
            return Err(unauthorized("provision key already used", Some(key)));
        }
        _ => return Err(unauthorized("invalid provision key", None)),
    };

    // The key is ours now. Anything failing before the certificate is
    // recorded hands it back, so the device can simply retry.
    let issued = match sign_and_record(ctx, &key, subject.public_key(), now).await {
        Ok(issued) => issued,
        Err(error) => {
            if let Err(e) = ctx
                .store
                .release_provision_key(&key_hash, &pubkey_sha256)
                .await
            {
                tracing::error!(key_id = %key.id, error = %e, "cannot release a provision key after a failed signing");
            }
            return Err(Failure {
                error,
                key: Some(key),
            });
        }
    };
    if let Err(e) = ctx
        .store
        .record_provision_cert(&key_hash, &issued.serial_hex)
        .await
    {
        // Only costs the retry-with-the-same-key convenience.
        tracing::error!(key_id = %key.id, error = %e, "cannot link the certificate to its provision key");
    }
    let revoked_serials = supersede_older(ctx, &key.agent_id, &issued, now).await?;
    let key_pem = match subject {
        Subject::Generated(generated) => Some(generated.0.serialize_pem()),
        Subject::Csr(_) => None,
    };
    let p = Provisioned {
        agent_id: key.agent_id.clone(),
        cert_pem: issued.pem,
        ca_cert_pem: signer.ca_cert_pem().to_owned(),
        expires_at: rfc3339(issued.not_after),
        key_pem,
        revoked_serials,
        replayed: false,
    };
    Ok((p, key.id))
}

async fn sign_and_record(
    ctx: Ctx<'_>,
    key: &ProvisionKey,
    public_key: &SubjectPublicKey,
    now: OffsetDateTime,
) -> Result<IssuedCert, ProvisionError> {
    let signer = ctx.signer()?;
    let at = signing_time(ctx.store, &key.agent_id, now).await?;
    let issued = signer.sign_agent(&key.agent_id, public_key, ctx.settings.cert_validity, at)?;
    record_certificate(ctx, &issued, SOURCE_PROVISION, now).await?;
    audit::record(
        ctx.store,
        now,
        Event {
            action: audit::CERT_ISSUED,
            actor: "provision-key",
            agent_id: Some(&key.agent_id),
            remote_addr: None,
            detail: serde_json::json!({
                "serial": issued.serial_hex,
                "source": SOURCE_PROVISION,
                "key_id": key.id,
                "not_after": rfc3339(issued.not_after),
            }),
        },
    )
    .await;
    Ok(issued)
}

/// Registers an issued certificate.
pub(crate) async fn record_certificate(
    ctx: Ctx<'_>,
    issued: &IssuedCert,
    source: &str,
    now: OffsetDateTime,
) -> Result<(), ProvisionError> {
    ctx.store
        .insert_certificate(&NewCertificate {
            serial: issued.serial_hex.clone(),
            agent_id: issued.agent_id.clone(),
            not_before: issued.not_before,
            not_after: issued.not_after,
            sha256: issued.sha256_hex.clone(),
            source: source.to_owned(),
            pem: issued.pem.clone(),
            created_at: now,
        })
        .await?;
    Ok(())
}

/// Revokes every older certificate of the agent, registered (by serial) or
/// not (the cut-off is the new certificate's `notBefore`, which the new
/// one itself still passes).
async fn supersede_older(
    ctx: Ctx<'_>,
    agent_id: &str,
    issued: &IssuedCert,
    now: OffsetDateTime,
) -> Result<Vec<String>, ProvisionError> {
    ctx.store
        .set_agent_revoked_before(agent_id, issued.not_before)
        .await?;
    let revoked = ctx
        .store
        .revoke_agent_certificates(agent_id, now, Some(&issued.serial_hex))
        .await?;
    if !revoked.is_empty() {
        audit::record(
            ctx.store,
            now,
            Event {
                action: audit::CERT_REVOKED,
                actor: "provision-key",
                agent_id: Some(agent_id),
                remote_addr: None,
                detail: serde_json::json!({
                    "serials": revoked,
                    "reason": "superseded by provisioning",
                    "revoked_before": rfc3339(issued.not_before),
                }),
            },
        )
        .await;
    }
    Ok(revoked)
}
