//! [`Trust`]: which server certificates the tools accept.

use crate::ClientError;
use crate::verifier::{InsecureVerifier, PinnedCaVerifier};
use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the server is authenticated (`--ca-sha256` | `--ca-file` |
/// system roots | `--insecure`).
#[derive(Clone)]
#[non_exhaustive]
pub enum Trust {
    /// SHA-256 of the CA certificate's DER.
    CaSha256([u8; 32]),
    /// The certificates of a PEM file, as the only roots.
    CaFile {
        path: PathBuf,
        certs: Vec<CertificateDer<'static>>,
    },
    /// The operating system's roots.
    System,
    /// No verification (development only).
    Insecure,
}

/// Whether the CA certificate a server returned (provisioning) agrees with
/// the trust the tool was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaCheck {
    /// It is the pinned CA / one of the `--ca-file` certificates.
    Matches,
    /// It is not: the answer must not be trusted.
    Mismatch,
    /// Nothing to compare with (system roots, `--insecure`).
    Unchecked,
}

impl Trust {
    /// Builds the trust from the three mutually exclusive flags.
    pub fn from_flags(
        ca_sha256: Option<&str>,
        ca_file: Option<&Path>,
        insecure: bool,
    ) -> Result<Self, ClientError> {
        let given = usize::from(ca_sha256.is_some()) + usize::from(ca_file.is_some());
        if given + usize::from(insecure) > 1 {
            return Err(ClientError::Usage(
                "--ca-sha256, --ca-file and --insecure are mutually exclusive".into(),
            ));
        }
        if let Some(pin) = ca_sha256 {
            return Self::pin(pin);
        }
        if let Some(path) = ca_file {
            return Self::ca_file(path);
        }
        Ok(if insecure {
            Trust::Insecure
        } else {
            Trust::System
        })
    }

    /// `--ca-sha256`: 64 hex digits, any case, colons and `sha256:` allowed.
    pub fn pin(hex: &str) -> Result<Self, ClientError> {
        silo_pki::parse_ca_pin(hex)
            .map(Trust::CaSha256)
            .map_err(ClientError::Pin)
    }

    /// `--ca-file`: every `CERTIFICATE` block of the file becomes a root.
    pub fn ca_file(path: &Path) -> Result<Self, ClientError> {
        let err = |reason: String| ClientError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("bad PEM: {e}")))?;
        if certs.is_empty() {
            return Err(err("no PEM CERTIFICATE block".into()));
        }
        Ok(Trust::CaFile {
            path: path.to_owned(),
            certs,
        })
    }

    /// Compares a CA certificate (DER) returned by the server with the pin
    /// or the CA file.
    pub fn check_returned_ca(&self, ca_der: &[u8]) -> CaCheck {
        let matches = match self {
            Trust::CaSha256(pin) => silo_pki::sha256_fingerprint_hex(ca_der) == hex_lower(pin),
            Trust::CaFile { certs, .. } => certs.iter().any(|c| c.as_ref() == ca_der),
            Trust::System | Trust::Insecure => return CaCheck::Unchecked,
        };
        if matches {
            CaCheck::Matches
        } else {
            CaCheck::Mismatch
        }
    }

    /// The rustls configuration, or `None` for the system roots (reqwest's
    /// platform verifier then does the work).
    pub fn rustls_config(&self) -> Result<Option<ClientConfig>, ClientError> {
        crate::install_crypto_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Usage(format!("TLS configuration: {e}")))?;
        let config = match self {
            Trust::System => return Ok(None),
            Trust::CaSha256(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(*pin, provider)))
                .with_no_client_auth(),
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(InsecureVerifier::new(provider)))
                .with_no_client_auth(),
            Trust::CaFile { path, certs } => {
                let verifier =
                    roots_verifier(certs, provider).map_err(|reason| ClientError::CaFile {
                        path: path.clone(),
                        reason,
                    })?;
                builder.with_webpki_verifier(verifier).with_no_client_auth()
            }
        };
        let mut config = config;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Some(config))
    }
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trust::CaSha256(pin) => write!(f, "CaSha256({})", hex_lower(pin)),
            Trust::CaFile { path, certs } => {
                write!(
                    f,
                    "CaFile({}, {} certificates)",
                    path.display(),
                    certs.len()
                )
            }
            Trust::System => f.write_str("System"),
            Trust::Insecure => f.write_str("Insecure"),
        }
    }
}

/// A webpki verifier whose only roots are `certs`.
pub(crate) fn roots_verifier(
    certs: &[CertificateDer<'_>],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert.clone().into_owned())
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_exclusive() {
        let pin = "ab".repeat(32);
        assert!(matches!(
            Trust::from_flags(Some(&pin), None, true),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            Trust::from_flags(Some(&pin), Some(Path::new("x")), false),
            Err(ClientError::Usage(_))
        ));
        assert!(matches!(
            Trust::from_flags(None, None, false),
            Ok(Trust::System)
        ));
        assert!(matches!(
            Trust::from_flags(None, None, true),
            Ok(Trust::Insecure)
        ));
        assert!(matches!(
            Trust::from_flags(Some("nope"), None, false),
            Err(ClientError::Pin(_))
        ));
    }

    #[test]
    fn returned_ca_is_compared_with_the_pin() {
        let der = b"not really a certificate";
        let pin = silo_pki::sha256_fingerprint_hex(der);
        let trust = Trust::pin(&pin.to_uppercase()).unwrap();
        assert_eq!(trust.check_returned_ca(der), CaCheck::Matches);
        assert_eq!(trust.check_returned_ca(b"other"), CaCheck::Mismatch);
        assert_eq!(Trust::System.check_returned_ca(der), CaCheck::Unchecked);
    }

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "no pem here").unwrap();
        let e = Trust::ca_file(&path).unwrap_err().to_string();
        assert!(e.contains("ca.pem") && e.contains("no PEM"), "{e}");
        let e = Trust::ca_file(&dir.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
