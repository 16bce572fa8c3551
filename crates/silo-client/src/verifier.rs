//! Server certificate verifiers: CA pinning and (development only) none.

use crate::trust::{hex_lower, roots_verifier};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;

/// Accepts a server only when its chain carries a CA certificate whose DER
/// SHA-256 is the pin, and the server certificate verifies with that CA as
/// the only root: signature, validity and the name the client dialled.
///
/// The CA is taken from the chain the server sends (our servers send leaf +
/// CA); a server that omits it cannot be verified by pin and is refused.
#[derive(Debug)]
pub(crate) struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

/// The pinned CA was not in the server's chain.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's CA does not match --ca-sha256 {expected} ({presented}); \
     check the pin printed by the server or the key creation"
)]
struct PinMismatch {
    expected: String,
    presented: String,
}

impl PinnedCaVerifier {
    pub(crate) fn new(pin: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }

    fn mismatch(&self, intermediates: &[CertificateDer<'_>]) -> rustls::Error {
        let presented = if intermediates.is_empty() {
            "the server sent no CA certificate in its chain".to_owned()
        } else {
            let hashes: Vec<String> = intermediates
                .iter()
                .map(|c| silo_pki::sha256_fingerprint_hex(c))
                .collect();
            format!("the server's chain has {}", hashes.join(", "))
        };
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            PinMismatch {
                expected: hex_lower(&self.pin),
                presented,
            },
        ))))
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = hex_lower(&self.pin);
        let Some(ca) = intermediates
            .iter()
            .find(|c| silo_pki::sha256_fingerprint_hex(c) == pinned)
        else {
            return Err(self.mismatch(intermediates));
        };
        // The pinned CA becomes the only root: webpki then checks the
        // leaf's signature, validity, usage and name for real.
        let verifier = roots_verifier(std::slice::from_ref(ca), self.provider.clone())
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `--insecure`: any certificate is accepted. The handshake signatures are
/// still checked against whatever key the server presented, which proves
/// nothing about who it is.
#[derive(Debug)]
pub(crate) struct InsecureVerifier {
    provider: Arc<CryptoProvider>,
}

impl InsecureVerifier {
    pub(crate) fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for InsecureVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
