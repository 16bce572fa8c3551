//! CSR policy: what an agent may send us, and the agent's side of it.
//!
//! A CSR only proves possession of a key. Its subject and requested
//! extensions are ignored: the server decides CN, SANs, usages and validity.

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::prelude::FromDer;

use crate::inspect::AGENT_URI_PREFIX;
use crate::{CsrError, PkiError, PublicKeyKind, SubjectPublicKey, is_valid_agent_id};

/// Largest CSR PEM we look at; an RSA-8192 CSR is about 3 KiB.
pub const MAX_CSR_PEM_BYTES: usize = 16 * 1024;

/// A CSR whose self-signature verified and whose key passed the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    public_key: SubjectPublicKey,
}

impl ValidatedCsr {
    /// The key to certify.
    pub fn public_key(&self) -> &SubjectPublicKey {
        &self.public_key
    }

    /// Algorithm and size of the key.
    pub fn key_kind(&self) -> PublicKeyKind {
        self.public_key.kind()
    }

    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex: recognises a
    /// retry with the same key after a lost response.
    pub fn public_key_sha256_hex(&self) -> String {
        self.public_key.sha256_hex()
    }
}

/// Validates a PEM PKCS#10 request: size cap, PEM, DER, key policy, then the
/// self-signature (proof of possession).
///
/// The key policy runs before the signature check so that a too-small RSA
/// key is reported as such (ring refuses to verify RSA < 2048 at all).
pub fn parse_csr(pem_text: &str) -> Result<ValidatedCsr, CsrError> {
    if pem_text.len() > MAX_CSR_PEM_BYTES {
        return Err(CsrError::TooLarge {
            limit: MAX_CSR_PEM_BYTES,
        });
    }
    let blocks = pem::parse_many(pem_text).map_err(|_| CsrError::NotPem)?;
    let block = blocks
        .iter()
        .find(|b| matches!(b.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"))
        .ok_or(CsrError::NotPem)?;
    let csr = match X509CertificationRequest::from_der(block.contents()) {
        Ok(([], csr)) => csr,
        _ => return Err(CsrError::Malformed),
    };
    let public_key = SubjectPublicKey::from_spki(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => CsrError::UnsupportedSignature,
        _ => CsrError::BadSignature,
    })?;
    Ok(ValidatedCsr { public_key })
}

/// Builds the agent's CSR (PEM). The subject says who the agent thinks it
/// is, for humans reading the CSR; the server ignores it.
pub fn generate_csr(agent_id: &str, key: &KeyPair) -> Result<String, PkiError> {
    if !is_valid_agent_id(agent_id) {
        return Err(PkiError::InvalidAgentId(agent_id.to_owned()));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, agent_id);
    let uri =
        Ia5String::try_from(format!("{AGENT_URI_PREFIX}{agent_id}")).map_err(PkiError::Signing)?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(PkiError::Signing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyType, generate_key};

    #[test]
    fn own_csr_round_trips() {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        let pem = generate_csr("agent-1", &key).unwrap();
        let csr = parse_csr(&pem).unwrap();
        assert_eq!(csr.key_kind(), PublicKeyKind::EcdsaP256);
        assert_eq!(
            csr.public_key_sha256_hex(),
            SubjectPublicKey::from_key_pair(&key).unwrap().sha256_hex()
        );
    }

    #[test]
    fn csr_for_invalid_agent_id_is_refused() {
        let key = generate_key(KeyType::EcdsaP256).unwrap();
        assert!(matches!(
            generate_csr("../x", &key),
            Err(PkiError::InvalidAgentId(_))
        ));
    }

    #[test]
    fn cheap_rejections() {
        assert_eq!(parse_csr(""), Err(CsrError::NotPem));
        assert_eq!(parse_csr("garbage"), Err(CsrError::NotPem));
        let cert = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        assert_eq!(parse_csr(cert), Err(CsrError::NotPem));
        let junk = "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n";
        assert_eq!(parse_csr(junk), Err(CsrError::Malformed));
        let big = "A".repeat(MAX_CSR_PEM_BYTES + 1);
        let err = parse_csr(&big).unwrap_err();
        assert_eq!(err.to_string(), "CSR larger than 16384 bytes");
    }
}
