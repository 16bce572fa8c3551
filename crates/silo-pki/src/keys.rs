//! Key types, key generation and loading of keys written by other tools.

use std::fmt;
use std::str::FromStr;

use pkcs8::der::asn1::{AnyRef, OctetStringRef};
use pkcs8::{AlgorithmIdentifierRef, ObjectIdentifier, PrivateKeyInfoRef, SecretDocument};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};
use rsa::pkcs8::EncodePrivateKey;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::PkiError;

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// The kind of key the server generates (`grpc.tls.key_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on P-256: the default, fast and small.
    #[default]
    EcdsaP256,
    /// RSA 2048 bits, for peers that cannot do ECDSA.
    Rsa2048,
    /// RSA 4096 bits (slow to generate: about a second in release builds).
    Rsa4096,
}

impl KeyType {
    /// The configuration spelling: `ecdsa-p256`, `rsa-2048` or `rsa-4096`.
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ecdsa-p256",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// Whether keys of this type are RSA (they also get keyEncipherment).
    pub const fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa4096)
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key type name that is not one of `ecdsa-p256`, `rsa-2048`, `rsa-4096`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key type {0:?} (expected ecdsa-p256, rsa-2048 or rsa-4096)")]
pub struct ParseKeyTypeError(pub String);

impl FromStr for KeyType {
    type Err = ParseKeyTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "ecdsa-p256" => Ok(KeyType::EcdsaP256),
            "rsa-2048" => Ok(KeyType::Rsa2048),
            "rsa-4096" => Ok(KeyType::Rsa4096),
            _ => Err(ParseKeyTypeError(s.to_owned())),
        }
    }
}

/// Generates a fresh key pair from the OS CSPRNG.
///
/// RSA keys come from the `rsa` crate (rcgen generates RSA only with
/// aws-lc-rs, which this workspace does not build) and are handed to rcgen
/// as PKCS#8.
pub fn generate_key(key_type: KeyType) -> Result<KeyPair, PkiError> {
    let bits = match key_type {
        KeyType::EcdsaP256 => {
            return KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| PkiError::KeyGeneration(e.to_string()));
        }
        KeyType::Rsa2048 => 2048,
        KeyType::Rsa4096 => 4096,
    };
    let key = rsa::PrivateKey::new(&mut getrandom::SysRng, bits)
        .map_err(|e| PkiError::KeyGeneration(format!("RSA-{bits}: {e}")))?;
    let pkcs8 = key
        .to_pkcs8_der()
        .map_err(|e| PkiError::KeyGeneration(format!("RSA-{bits} PKCS#8 encoding: {e}")))?;
    KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
        &PKCS_RSA_SHA256,
    )
    .map_err(|e| PkiError::KeyGeneration(format!("RSA-{bits}: {e}")))
}

/// Loads a PEM private key as written by rcgen, `openssl` or the Go
/// implementation: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
/// (`RSA PRIVATE KEY`).
///
/// rcgen with ring reads PKCS#8 only, so the other two are wrapped into
/// PKCS#8 in memory; the file itself is never rewritten.
pub fn load_key_pair_pem(pem_text: &str, context: &str) -> Result<KeyPair, PkiError> {
    let bad = |reason: String| PkiError::InvalidKey {
        context: context.to_owned(),
        reason,
    };
    let blocks = pem::parse_many(pem_text).map_err(|e| bad(format!("bad PEM: {e}")))?;
    let block = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| bad("no PEM PRIVATE KEY block".into()))?;
    let der = block.contents();
    match block.tag() {
        "PRIVATE KEY" => KeyPair::try_from(&PrivatePkcs8KeyDer::from(der))
            .map_err(|e| bad(format!("unsupported PKCS#8 key: {e}"))),
        "EC PRIVATE KEY" => {
            // SEC1 does not need to name its curve, so try the two we support;
            // ring rejects a curve mismatch.
            for (curve, alg) in [
                (OID_P256, &PKCS_ECDSA_P256_SHA256),
                (OID_P384, &PKCS_ECDSA_P384_SHA384),
            ] {
                let pkcs8 = wrap_pkcs8(OID_EC_PUBLIC_KEY, Some(AnyRef::from(&curve)), der)
                    .map_err(|e| bad(format!("bad SEC1 key: {e}")))?;
                let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes());
                if let Ok(kp) = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, alg) {
                    return Ok(kp);
                }
            }
            Err(bad("EC key is not a valid P-256 or P-384 key".into()))
        }
        "RSA PRIVATE KEY" => {
            let pkcs8 = wrap_pkcs8(OID_RSA_ENCRYPTION, Some(AnyRef::NULL), der)
                .map_err(|e| bad(format!("bad PKCS#1 key: {e}")))?;
            KeyPair::from_pkcs8_der_and_sign_algo(
                &PrivatePkcs8KeyDer::from(pkcs8.as_bytes()),
                &PKCS_RSA_SHA256,
            )
            .map_err(|e| bad(format!("unsupported RSA key: {e}")))
        }
        "ENCRYPTED PRIVATE KEY" => Err(bad("encrypted keys are not supported".into())),
        other => Err(bad(format!("unsupported PEM block {other:?}"))),
    }
}

fn wrap_pkcs8(
    oid: ObjectIdentifier,
    parameters: Option<AnyRef<'_>>,
    key: &[u8],
) -> Result<SecretDocument, pkcs8::Error> {
    let info = PrivateKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        private_key: OctetStringRef::new(key)?,
        public_key: None,
    };
    SecretDocument::try_from(&info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn key_type_round_trips() {
        for t in [KeyType::EcdsaP256, KeyType::Rsa2048, KeyType::Rsa4096] {
            assert_eq!(t.to_string().parse::<KeyType>().unwrap(), t);
        }
        assert_eq!("RSA-2048".parse::<KeyType>().unwrap(), KeyType::Rsa2048);
        let err = "ed25519".parse::<KeyType>().unwrap_err();
        assert!(err.to_string().contains("ecdsa-p256"), "{err}");
        assert_eq!(KeyType::default(), KeyType::EcdsaP256);
    }

    #[test]
    fn ecdsa_key_round_trips_through_pem() {
        let kp = generate_key(KeyType::EcdsaP256).unwrap();
        let back = load_key_pair_pem(&kp.serialize_pem(), "test").unwrap();
        assert_eq!(back.subject_public_key_info(), kp.subject_public_key_info());
        assert!(back.is_compatible(&PKCS_ECDSA_P256_SHA256));
    }

    #[test]
    fn garbage_key_is_rejected() {
        let err = load_key_pair_pem("hello", "ctx").unwrap_err();
        assert!(err.to_string().contains("ctx"), "{err}");
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(load_key_pair_pem(cert_only, "ctx").is_err());
    }
}
