//! silo-pki: the certificate authority behind silo-proxy's agent
//! provisioning. A library only: no HTTP, no database.
//!
//! It creates or adopts the CA, keeps the server certificate current,
//! validates agents' CSRs, signs agent certificates, and answers questions
//! about certificates (which agent is this? did our CA sign it?).
//!
//! # Layout
//! - [`keys`]: [`KeyType`], key generation (RSA via the `rsa` crate) and
//!   loading PKCS#8 / SEC1 / PKCS#1 keys written by other tools.
//! - [`files`]: atomic writes with 0600 keys and 0700 directories.
//! - `pki`, `ca`, `server_cert`: [`Pki::load_or_init`], the start-up logic
//!   of config.md "Certificate files".
//! - `signer`: the [`CertSigner`] trait (room for an HSM/KMS backend) and
//!   [`LocalCaSigner`].
//! - `pubkey`, `csr`: the key policy and [`parse_csr`].
//! - `inspect`: [`parse_cert_info`], [`agent_id_from_cert`],
//!   [`verify_issued_by`], fingerprints and CA pins.
//! - `error`: [`PkiError`], and [`CsrError`] whose text goes to API clients.

mod ca;
mod csr;
mod error;
pub mod files;
mod inspect;
pub mod keys;
mod pki;
mod pubkey;
mod server_cert;
mod signer;

pub use ca::{CA_COMMON_NAME, CA_VALIDITY};
pub use csr::{MAX_CSR_PEM_BYTES, ValidatedCsr, generate_csr, parse_csr};
pub use error::{CsrError, PkiError};
pub use files::{write_private_file, write_public_file};
pub use inspect::{
    AGENT_URI_PREFIX, CertInfo, agent_id_from_cert, parse_ca_pin, parse_cert_info,
    sha256_fingerprint_hex, verify_issued_by,
};
pub use keys::{KeyType, ParseKeyTypeError, generate_key, load_key_pair_pem};
pub use pki::{
    CaOutcome, CaPaths, InitReport, Pki, ReissueReason, ServerCertOutcome, ServerCertSpec,
};
pub use pubkey::{MAX_RSA_BITS, MIN_RSA_BITS, PublicKeyKind, SubjectPublicKey};
pub use server_cert::{SERVER_CERT_VALIDITY, SERVER_RENEW_BEFORE};
pub use signer::{
    BACKDATE, CertSigner, IssuedCert, IssuedWithKey, LocalCaSigner, issue_with_generated_key,
};

/// Re-exported so callers can hold keys without depending on rcgen directly.
pub use rcgen::KeyPair;

/// Whether `id` is a valid agent id: `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
///
/// Checked before an id reaches a certificate or a file path (ids end up
/// in both), so `../x`, `a/b` and the empty string never get that far.
pub fn is_valid_agent_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    let Some((first, rest)) = bytes.split_first() else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && rest.len() <= 63
        && rest
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::is_valid_agent_id;

    #[test]
    fn agent_ids() {
        for ok in ["a", "agent-1", "A_b-C", "0", &"x".repeat(64)] {
            assert!(is_valid_agent_id(ok), "{ok:?}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            "-a",
            "_a",
            "a b",
            "é",
            "a.b",
            &"x".repeat(65),
        ] {
            assert!(!is_valid_agent_id(bad), "{bad:?}");
        }
    }
}
