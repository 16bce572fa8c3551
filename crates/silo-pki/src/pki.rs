//! [`Pki`]: the CA and server certificate the server runs with.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::{CertSigner, KeyType, LocalCaSigner, PkiError, ca, inspect, server_cert};

/// Where the certificate files live (`grpc.tls.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Agent certificates stored by the legacy path; also the evidence that
    /// a CA existed before.
    pub agent_cert_dir: PathBuf,
}

impl CaPaths {
    /// The default layout under `data_dir` (config.md).
    pub fn under_data_dir(data_dir: &Path) -> Self {
        let certs = data_dir.join("certs");
        CaPaths {
            ca_cert: certs.join("ca/ca-cert.pem"),
            ca_key: certs.join("ca/ca-key.pem"),
            server_cert: certs.join("server/server-cert.pem"),
            server_key: certs.join("server/server-key.pem"),
            agent_cert_dir: certs.join("agents"),
        }
    }
}

/// What the server certificate must say (`grpc.tls.domain_names`,
/// `ip_addresses`, `key_type`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerCertSpec {
    /// DNS SANs; the first is also the CN.
    pub domain_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    /// Type of keys generated for the CA and the server certificate.
    pub key_type: KeyType,
}

/// What [`Pki::load_or_init`] did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InitReport {
    pub ca: CaOutcome,
    pub server_cert: ServerCertOutcome,
}

/// What happened to the CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaOutcome {
    /// Both files were missing: a new CA was written.
    Generated,
    /// Existing files were used untouched (ours, openssl's or the Go
    /// implementation's).
    Loaded,
}

/// What happened to the server certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerCertOutcome {
    /// It was missing and was generated.
    Generated,
    /// Ours and still fine: used as it is.
    Loaded,
    /// Ours but outdated: replaced.
    Reissued(ReissueReason),
    /// Not signed by our CA: the operator's, used untouched.
    OperatorSupplied,
}

/// Why a server certificate of ours was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReissueReason {
    /// It expires within 30 days.
    NearExpiry { not_after: OffsetDateTime },
    /// Its DNS/IP SANs differ from the configuration (`DNS:x` / `IP:y`).
    SanMismatch { had: Vec<String>, want: Vec<String> },
    /// The key file does not belong to the certificate.
    KeyMismatch,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ca = match self.ca {
            CaOutcome::Generated => "CA generated",
            CaOutcome::Loaded => "CA loaded",
        };
        write!(f, "{ca}; server certificate ")?;
        match &self.server_cert {
            ServerCertOutcome::Generated => f.write_str("generated"),
            ServerCertOutcome::Loaded => f.write_str("loaded"),
            ServerCertOutcome::OperatorSupplied => {
                f.write_str("supplied by the operator (not signed by our CA), used as is")
            }
            ServerCertOutcome::Reissued(ReissueReason::NearExpiry { not_after }) => {
                write!(f, "re-issued (expired or expiring at {not_after})")
            }
            ServerCertOutcome::Reissued(ReissueReason::SanMismatch { had, want }) => write!(
                f,
                "re-issued (SANs were [{}], configuration wants [{}])",
                had.join(", "),
                want.join(", ")
            ),
            ServerCertOutcome::Reissued(ReissueReason::KeyMismatch) => {
                f.write_str("re-issued (key file did not match it)")
            }
        }
    }
}

/// The CA and server certificate, loaded or created at start.
pub struct Pki {
    signer: Arc<LocalCaSigner>,
    ca_cert_der: CertificateDer<'static>,
    ca_sha256_hex: String,
    server: server_cert::ServerMaterial,
}

impl Pki {
    /// Loads the CA and server certificate, creating or renewing what is
    /// missing or outdated (config.md, "Certificate files").
    pub fn load_or_init(
        paths: &CaPaths,
        spec: &ServerCertSpec,
    ) -> Result<(Pki, InitReport), PkiError> {
        Self::load_or_init_at(paths, spec, OffsetDateTime::now_utc())
    }

    /// [`load_or_init`](Self::load_or_init) with the clock passed in
    /// (tests produce near-expiry certificates this way).
    pub fn load_or_init_at(
        paths: &CaPaths,
        spec: &ServerCertSpec,
        now: OffsetDateTime,
    ) -> Result<(Pki, InitReport), PkiError> {
        let spec = normalized(spec);
        let (signer, ca) = ca::load_or_create(paths, spec.key_type, now)?;
        let (server, server_cert) = server_cert::ensure(paths, &spec, &signer, now)?;
        let ca_cert_der = signer.ca_der().clone();
        let pki = Pki {
            ca_sha256_hex: inspect::sha256_fingerprint_hex(&ca_cert_der),
            ca_cert_der,
            signer: Arc::new(signer),
            server,
        };
        Ok((pki, InitReport { ca, server_cert }))
    }

    /// The signer for agent certificates.
    pub fn signer(&self) -> Arc<LocalCaSigner> {
        Arc::clone(&self.signer)
    }

    /// The CA certificate as PEM, re-encoded from its DER (the file on disk
    /// may hold comments or more than one block).
    pub fn ca_cert_pem(&self) -> &str {
        self.signer.ca_cert_pem()
    }

    /// The CA certificate DER, e.g. for a rustls `RootCertStore`.
    pub fn ca_cert_der(&self) -> &CertificateDer<'static> {
        &self.ca_cert_der
    }

    /// SHA-256 of the CA certificate DER, lowercase hex: the `--ca-sha256` pin.
    pub fn ca_sha256_hex(&self) -> &str {
        &self.ca_sha256_hex
    }

    /// PEM chain for rustls: our leaf then the CA, or the operator's file
    /// verbatim.
    pub fn server_cert_chain_pem(&self) -> &str {
        &self.server.chain_pem
    }

    /// PEM private key of the server certificate, for rustls.
    pub fn server_key_pem(&self) -> &str {
        &self.server.key_pem
    }

    /// Expiry of the CA (for the certificate-expiry metric).
    pub fn ca_not_after(&self) -> OffsetDateTime {
        self.signer.ca_not_after()
    }

    /// Expiry of the server certificate (for the certificate-expiry metric).
    pub fn server_not_after(&self) -> OffsetDateTime {
        self.server.not_after
    }
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki")
            .field("ca_sha256", &self.ca_sha256_hex)
            .field("ca_not_after", &self.ca_not_after())
            .field("server_not_after", &self.server.not_after)
            .finish_non_exhaustive()
    }
}

/// Trimmed, without empty or duplicate entries (the config is a comma list).
fn normalized(spec: &ServerCertSpec) -> ServerCertSpec {
    let mut domain_names: Vec<String> = Vec::new();
    for name in spec.domain_names.iter().map(|d| d.trim()) {
        if !name.is_empty() && !domain_names.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            domain_names.push(name.to_owned());
        }
    }
    let mut ip_addresses = Vec::new();
    for ip in &spec.ip_addresses {
        if !ip_addresses.contains(ip) {
            ip_addresses.push(*ip);
        }
    }
    ServerCertSpec {
        domain_names,
        ip_addresses,
        key_type: spec.key_type,
    }
}
