//! Error types: [`PkiError`] for everything but CSR validation, which has its
//! own [`CsrError`] because its `Display` is sent back to clients.

use std::io;
use std::path::PathBuf;

/// Why a PKI operation failed. Messages are meant for operators' logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file-system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Only one of a certificate/key pair of files exists.
    #[error(
        "{} exists but {} does not; restore the missing file (or remove both to start over)",
        present.display(),
        missing.display()
    )]
    IncompletePair { present: PathBuf, missing: PathBuf },
    /// The CA is missing but agents already hold certificates from one.
    #[error(
        "refusing to generate a new CA: {} already holds agent certificates (e.g. {}), \
         and a new CA would lock every one of those agents out; restore the CA files \
         (grpc.tls.ca_file / ca_key_file) or move the agent certificates away",
        dir.display(),
        example.display()
    )]
    AgentCertsWithoutCa { dir: PathBuf, example: PathBuf },
    /// A certificate could not be parsed or is unusable.
    #[error("invalid certificate ({context}): {reason}")]
    InvalidCertificate { context: String, reason: String },
    /// A private key could not be parsed or is unusable.
    #[error("invalid private key ({context}): {reason}")]
    InvalidKey { context: String, reason: String },
    /// The agent id does not match `^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`.
    #[error("invalid agent id {0:?}: must match ^[A-Za-z0-9][A-Za-z0-9_-]{{0,63}}$")]
    InvalidAgentId(String),
    /// A requested certificate validity is zero or out of range.
    #[error("invalid certificate validity: {0}")]
    InvalidValidity(String),
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    KeyGeneration(String),
    /// Building or signing a certificate or CSR failed.
    #[error("signing failed: {0}")]
    Signing(#[source] rcgen::Error),
    /// A CA pin is not a SHA-256 fingerprint.
    #[error("invalid CA pin: {0}")]
    InvalidPin(&'static str),
}

/// Why a CSR was rejected. `Display` is a short reason suitable for the API
/// answer `400 invalid CSR: <reason>`; it never echoes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The PEM text exceeds the size cap.
    #[error("CSR larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// No `CERTIFICATE REQUEST` PEM block was found.
    #[error("not a PEM CERTIFICATE REQUEST")]
    NotPem,
    /// The PEM block does not hold a well-formed PKCS#10 request.
    #[error("malformed PKCS#10 request")]
    Malformed,
    /// The key algorithm, curve or size is not allowed.
    #[error("unsupported key type: {0}")]
    UnsupportedKey(String),
    /// The signature algorithm is unknown or does not fit the key.
    #[error("unsupported signature algorithm")]
    UnsupportedSignature,
    /// The self-signature is wrong: no proof of possession of the key.
    #[error("signature does not verify")]
    BadSignature,
}
