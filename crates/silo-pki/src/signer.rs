//! Certificate signing behind a trait, so the CA key can later live in an
//! HSM or KMS; [`LocalCaSigner`] holds it in memory.

use std::fmt;
use std::time::Duration;

use rand::RngCore;
use rcgen::string::Ia5String;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{OffsetDateTime, UtcOffset};

use crate::inspect::{self, AGENT_URI_PREFIX};
use crate::{KeyType, PkiError, SubjectPublicKey, generate_key, is_valid_agent_id};

/// How far `notBefore` is backdated, for devices with skewed clocks.
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A certificate issued to an agent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct IssuedCert {
    pub agent_id: String,
    /// Lowercase hex, as [`CertInfo::serial_hex`](crate::CertInfo).
    pub serial_hex: String,
    pub pem: String,
    pub der: Vec<u8>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of `der`, lowercase hex.
    pub sha256_hex: String,
}

impl IssuedCert {
    /// Describes an issued certificate from its DER, so the recorded values
    /// are exactly those in the certificate.
    pub fn from_der(agent_id: &str, der: Vec<u8>) -> Result<Self, PkiError> {
        let info = inspect::parse_cert_info(&der)?;
        Ok(IssuedCert {
            agent_id: agent_id.to_owned(),
            serial_hex: info.serial_hex,
            pem: inspect::pem_encode("CERTIFICATE", &der),
            der,
            not_before: info.not_before,
            not_after: info.not_after,
            sha256_hex: info.sha256_hex,
        })
    }
}

/// A certificate plus the private key the server generated for it (legacy
/// path only: the recommended path never sees the agent's key).
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedWithKey {
    pub cert: IssuedCert,
    /// PKCS#8 PEM.
    pub key_pem: String,
}

impl fmt::Debug for IssuedWithKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedWithKey")
            .field("cert", &self.cert)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Signs agent certificates with the CA key.
pub trait CertSigner: Send + Sync {
    /// Issues a client certificate for `agent_id` over `public_key`:
    /// CN = agent id, URI SAN `silo://agent/<id>`, clientAuth, random 128-bit
    /// serial, valid from `now - 5 min` to `now + validity` (capped at the
    /// CA's own expiry).
    fn sign_agent(
        &self,
        agent_id: &str,
        public_key: &SubjectPublicKey,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError>;

    /// The CA certificate agents must trust.
    fn ca_cert_pem(&self) -> &str;

    /// The CA certificate in DER (its SHA-256 is the CA pin).
    fn ca_cert_der(&self) -> &[u8];
}

/// A [`CertSigner`] whose CA key is in memory.
pub struct LocalCaSigner {
    issuer: Issuer<'static, KeyPair>,
    ca_cert_der: CertificateDer<'static>,
    ca_cert_pem: String,
    ca_not_after: OffsetDateTime,
}

impl LocalCaSigner {
    /// Builds a signer from a CA certificate and its key, checking that the
    /// key belongs to the certificate and that the certificate is a CA.
    pub fn new(ca_cert_der: Vec<u8>, ca_key: KeyPair) -> Result<Self, PkiError> {
        let bad = |reason: &str| PkiError::InvalidCertificate {
            context: "CA".into(),
            reason: reason.into(),
        };
        let x509 = inspect::parse_der(&ca_cert_der)?;
        if x509.public_key().subject_public_key.data.as_ref() != ca_key.der_bytes() {
            return Err(bad("the CA key does not belong to the CA certificate"));
        }
        if !x509.is_ca() {
            return Err(bad(
                "not a CA certificate (basicConstraints CA:TRUE missing)",
            ));
        }
        let ca_not_after = x509.validity().not_after.to_datetime();
        let ca_cert_der = CertificateDer::from(ca_cert_der);
        // The issuer DN is copied from the parsed certificate, so issued
        // certificates name it exactly as openssl/Go wrote it.
        let issuer = Issuer::from_ca_cert_der(&ca_cert_der, ca_key)
            .map_err(|e| bad(&format!("unusable as issuer: {e}")))?;
        Ok(LocalCaSigner {
            issuer,
            ca_cert_pem: inspect::pem_encode("CERTIFICATE", &ca_cert_der),
            ca_cert_der,
            ca_not_after,
        })
    }

    /// Expiry of the CA certificate.
    pub fn ca_not_after(&self) -> OffsetDateTime {
        self.ca_not_after
    }

    /// Signs arbitrary parameters (the server certificate).
    pub(crate) fn sign_params(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<Vec<u8>, PkiError> {
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(PkiError::Signing)?;
        Ok(cert.der().to_vec())
    }

    pub(crate) fn ca_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }
}

impl fmt::Debug for LocalCaSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCaSigner")
            .field(
                "ca_sha256",
                &inspect::sha256_fingerprint_hex(&self.ca_cert_der),
            )
            .finish_non_exhaustive()
    }
}

impl CertSigner for LocalCaSigner {
    fn sign_agent(
        &self,
        agent_id: &str,
        public_key: &SubjectPublicKey,
        validity: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        if !is_valid_agent_id(agent_id) {
            return Err(PkiError::InvalidAgentId(agent_id.to_owned()));
        }
        let validity = time::Duration::try_from(validity)
            .ok()
            .filter(|v| v.is_positive())
            .ok_or_else(|| PkiError::InvalidValidity(format!("{validity:?}")))?;
        let (not_before, now) = window_start(now);
        if self.ca_not_after <= now {
            // Capping at the CA's expiry would give an already-expired cert.
            return Err(PkiError::InvalidCertificate {
                context: "CA".into(),
                reason: format!("expired at {}", self.ca_not_after),
            });
        }
        let not_after = now
            .checked_add(validity)
            .ok_or_else(|| PkiError::InvalidValidity("too long".into()))?
            .min(self.ca_not_after);

        let mut params = base_params(not_before, not_after);
        params.distinguished_name.push(DnType::CommonName, agent_id);
        let uri = Ia5String::try_from(format!("{AGENT_URI_PREFIX}{agent_id}"))
            .map_err(PkiError::Signing)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = leaf_key_usages(public_key.kind().is_rsa());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        let der = self.sign_params(&params, public_key)?;
        IssuedCert::from_der(agent_id, der)
    }

    fn ca_cert_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    fn ca_cert_der(&self) -> &[u8] {
        &self.ca_cert_der
    }
}

/// Legacy path (`POST /agents/{id}/certificate`, provisioning without CSR):
/// the server generates the agent's key pair and signs it.
pub fn issue_with_generated_key(
    signer: &dyn CertSigner,
    agent_id: &str,
    key_type: KeyType,
    validity: Duration,
    now: OffsetDateTime,
) -> Result<IssuedWithKey, PkiError> {
    if !is_valid_agent_id(agent_id) {
        return Err(PkiError::InvalidAgentId(agent_id.to_owned()));
    }
    let key = generate_key(key_type)?;
    let public_key = SubjectPublicKey::from_key_pair(&key)
        .map_err(|e| PkiError::KeyGeneration(e.to_string()))?;
    let cert = signer.sign_agent(agent_id, &public_key, validity, now)?;
    Ok(IssuedWithKey {
        cert,
        key_pem: key.serialize_pem(),
    })
}

/// Parameters shared by every certificate we make: an empty subject (rcgen's
/// default has a placeholder CN), a random serial, the validity window and
/// an authority key identifier (it helps clients build the chain).
pub(crate) fn base_params(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    params.use_authority_key_identifier_extension = true;
    params
}

/// `(now - BACKDATE, now)` in UTC, truncated to whole seconds as X.509 times are.
pub(crate) fn window_start(now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let now = now.to_offset(UtcOffset::UTC);
    let now = now.replace_nanosecond(0).unwrap_or(now);
    (now - BACKDATE, now)
}

/// keyEncipherment only makes sense for RSA (TLS 1.2 RSA key exchange).
pub(crate) fn leaf_key_usages(rsa: bool) -> Vec<KeyUsagePurpose> {
    let mut usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    usages
}

/// 128 bits from a CSPRNG with the top bit cleared, so the DER INTEGER is
/// positive without a padding byte (RFC 5280 allows at most 20 octets).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
