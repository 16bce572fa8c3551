//! The public key policy: which subject keys we certify.

use std::fmt;

use rcgen::{
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED448, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::CsrError;

/// Smallest RSA modulus we certify.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus we certify (also ring's verification limit).
pub const MAX_RSA_BITS: usize = 8192;

/// The algorithm and size of an accepted public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublicKeyKind {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA with a modulus of this many bits.
    Rsa { bits: usize },
}

impl PublicKeyKind {
    /// Whether the key is RSA (its certificate also gets keyEncipherment).
    pub fn is_rsa(self) -> bool {
        matches!(self, PublicKeyKind::Rsa { .. })
    }
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            PublicKeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            PublicKeyKind::Rsa { bits } => write!(f, "RSA {bits} bits"),
        }
    }
}

/// A subject public key that passed the key policy (ECDSA P-256/P-384, RSA
/// 2048..=8192 bits), ready to be put into a certificate.
///
/// Kept as plain bytes rather than an rcgen type so that another signer
/// backend (HSM, KMS) can use [`spki_der`](Self::spki_der) directly.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectPublicKey {
    kind: PublicKeyKind,
    alg: &'static SignatureAlgorithm,
    /// Contents of the SubjectPublicKeyInfo BIT STRING.
    raw: Vec<u8>,
}

impl SubjectPublicKey {
    /// Parses a DER SubjectPublicKeyInfo and applies the key policy.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, CsrError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(der).map_err(|_| CsrError::Malformed)?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed);
        }
        Self::from_spki(&spki)
    }

    pub(crate) fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, CsrError> {
        let oid = &spki.algorithm.algorithm;
        let raw = spki.subject_public_key.data.to_vec();
        let (kind, alg) = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
            let (kind, alg, coord_len) = if curve == OID_EC_P256 {
                (PublicKeyKind::EcdsaP256, &PKCS_ECDSA_P256_SHA256, 32)
            } else if curve == OID_NIST_EC_P384 {
                (PublicKeyKind::EcdsaP384, &PKCS_ECDSA_P384_SHA384, 48)
            } else {
                return Err(CsrError::UnsupportedKey(format!(
                    "EC curve {curve} (need P-256 or P-384)"
                )));
            };
            // ring (and most TLS stacks) handle uncompressed points only.
            if raw.len() != 1 + 2 * coord_len || raw[0] != 0x04 {
                return Err(CsrError::UnsupportedKey(format!(
                    "{kind} key not in uncompressed form"
                )));
            }
            (kind, alg)
        } else if *oid == OID_PKCS1_RSAENCRYPTION {
            let (rest, rsa) = RSAPublicKey::from_der(&raw).map_err(|_| CsrError::Malformed)?;
            if !rest.is_empty() {
                return Err(CsrError::Malformed);
            }
            let bits = unsigned_bit_len(rsa.modulus);
            if bits < MIN_RSA_BITS {
                return Err(CsrError::UnsupportedKey(format!(
                    "RSA {bits} bits (need >= {MIN_RSA_BITS})"
                )));
            }
            if bits > MAX_RSA_BITS {
                return Err(CsrError::UnsupportedKey(format!(
                    "RSA {bits} bits (need <= {MAX_RSA_BITS})"
                )));
            }
            (PublicKeyKind::Rsa { bits }, &PKCS_RSA_SHA256)
        } else if *oid == OID_SIG_ED25519 {
            return Err(CsrError::UnsupportedKey("Ed25519".into()));
        } else if *oid == OID_SIG_ED448 {
            return Err(CsrError::UnsupportedKey("Ed448".into()));
        } else {
            return Err(CsrError::UnsupportedKey(format!("algorithm {oid}")));
        };
        Ok(SubjectPublicKey { kind, alg, raw })
    }

    /// The public key of a key pair we hold (legacy path, tests).
    pub fn from_key_pair(key: &rcgen::KeyPair) -> Result<Self, CsrError> {
        Self::from_spki_der(&key.subject_public_key_info())
    }

    /// Algorithm and size of the key.
    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The SubjectPublicKeyInfo DER, exactly as it appears in certificates
    /// we issue for this key.
    pub fn spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }

    /// SHA-256 of [`spki_der`](Self::spki_der), lowercase hex: recognises a
    /// retry with the same key, and equals
    /// [`CertInfo::public_key_sha256_hex`](crate::CertInfo) of the issued cert.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.spki_der()))
    }
}

impl PublicKeyData for SubjectPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

impl fmt::Debug for SubjectPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectPublicKey")
            .field("kind", &self.kind)
            .field("sha256", &self.sha256_hex())
            .finish()
    }
}

/// Bit length of a big-endian unsigned integer (DER INTEGER contents).
fn unsigned_bit_len(bytes: &[u8]) -> usize {
    let trimmed = match bytes.iter().position(|&b| b != 0) {
        Some(i) => &bytes[i..],
        None => return 0,
    };
    trimmed.len() * 8 - trimmed[0].leading_zeros() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_length() {
        assert_eq!(unsigned_bit_len(&[]), 0);
        assert_eq!(unsigned_bit_len(&[0, 0]), 0);
        assert_eq!(unsigned_bit_len(&[0, 0x80, 0]), 16);
        assert_eq!(unsigned_bit_len(&[0x01, 0xff]), 9);
    }

    #[test]
    fn key_pair_key_is_accepted_and_hash_is_stable() {
        let kp = crate::generate_key(crate::KeyType::EcdsaP256).unwrap();
        let pk = SubjectPublicKey::from_key_pair(&kp).unwrap();
        assert_eq!(pk.kind(), PublicKeyKind::EcdsaP256);
        assert_eq!(pk.spki_der(), kp.subject_public_key_info());
        assert_eq!(pk.sha256_hex().len(), 64);
        assert!(format!("{pk:?}").contains("EcdsaP256"));
    }

    #[test]
    fn garbage_spki_is_malformed() {
        assert_eq!(
            SubjectPublicKey::from_spki_der(b"\x30\x03\x02\x01\x00"),
            Err(CsrError::Malformed)
        );
    }
}
