//! TLS for the server: the built-in CA and server certificate, mutual TLS on
//! the tunnel (identity = the client certificate, revocations enforced at
//! the handshake), and HTTPS on the API and proxy listeners.
//!
//! # Layout
//! - this file: building the rustls configurations from the config keys.
//! - [`verifier`]: client certificate check incl. revocation.
//! - [`revocation`]: the in-memory revocation set.
//! - [`conn`]: the TLS accept loop and per-agent kill switches.
//! - [`identity`]: the agent id a connection may use.

pub mod conn;
pub mod identity;
pub mod revocation;
pub mod verifier;

use crate::config::ServerConfig;
use conn::ConnRegistry;
use revocation::RevocationCache;
use rustls::ServerConfig as RustlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use silo_pki::{CaPaths, KeyType, Pki, ServerCertSpec};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] silo_pki::PkiError),
    #[error("{key}: cannot use {path}: {reason}")]
    Files {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Everything TLS of a running server.
pub struct TlsSetup {
    pub pki: Arc<Pki>,
    pub ca_paths: CaPaths,
    pub grpc: Arc<RustlsConfig>,
    /// HTTPS on the API listener (`http.tls.enabled`).
    pub api: Option<Arc<RustlsConfig>>,
    pub revocations: Arc<RevocationCache>,
    pub conns: Arc<ConnRegistry>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn or_default(value: &str, default: PathBuf) -> PathBuf {
    if value.is_empty() {
        default
    } else {
        PathBuf::from(value)
    }
}

/// The certificate file locations: configured, else under `data_dir`.
pub fn ca_paths(config: &ServerConfig) -> CaPaths {
    let d = CaPaths::under_data_dir(&config.data_dir);
    let t = &config.grpc.tls;
    CaPaths {
        ca_cert: or_default(&t.ca_file, d.ca_cert),
        ca_key: or_default(&t.ca_key_file, d.ca_key),
        server_cert: or_default(&t.cert_file, d.server_cert),
        server_key: or_default(&t.key_file, d.server_key),
        agent_cert_dir: or_default(&t.agent_cert_dir, d.agent_cert_dir),
    }
}

fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

/// Loads or creates the CA and server certificate and builds the rustls
/// configurations. Only called with `grpc.tls.enabled`.
pub fn init(
    config: &ServerConfig,
    revocations: Arc<RevocationCache>,
) -> Result<TlsSetup, TlsError> {
    let tls = &config.grpc.tls;
    let paths = ca_paths(config);
    let spec = ServerCertSpec {
        domain_names: split_list(&tls.domain_names).map(str::to_owned).collect(),
        ip_addresses: split_list(&tls.ip_addresses)
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .collect(),
        key_type: tls.key_type.parse::<KeyType>().unwrap_or_default(),
    };
    let (pki, report) = Pki::load_or_init(&paths, &spec)?;
    info!(ca_sha256 = %pki.ca_sha256_hex(), ca = %paths.ca_cert.display(), "{report}");
    let pki = Arc::new(pki);

    let chain = parse_certs(
        "grpc.tls.cert_file",
        &paths.server_cert,
        pki.server_cert_chain_pem().as_bytes(),
    )?;
    let key = parse_key(
        "grpc.tls.key_file",
        &paths.server_key,
        pki.server_key_pem().as_bytes(),
    )?;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_cert_der().clone())?;
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let base = match tls.client_auth.as_str() {
        "require" => Some(builder.build()),
        "request" => Some(builder.allow_unauthenticated().build()),
        _ => None,
    };
    if tls.client_auth != "require" {
        warn!(client_auth = %tls.client_auth, "agents without a certificate are identified by the id they claim; development only");
    }
    let config_builder =
        RustlsConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut grpc = match base {
        Some(inner) => {
            let inner = inner.map_err(|e| rustls::Error::General(e.to_string()))?;
            let verifier = verifier::RevocationAwareVerifier {
                inner,
                revocations: revocations.clone(),
            };
            config_builder.with_client_cert_verifier(Arc::new(verifier))
        }
        None => config_builder.with_no_client_auth(),
    }
    .with_single_cert(chain.clone(), key.clone_key())?;
    grpc.alpn_protocols = vec![b"h2".to_vec()];

    let api = if config.http.tls.enabled.unwrap_or(tls.enabled) {
        let (chain, key) = if config.http.tls.cert_file.is_empty() {
            (chain, key)
        } else {
            load_pair(
                ("http.tls.cert_file", Path::new(&config.http.tls.cert_file)),
                ("http.tls.key_file", Path::new(&config.http.tls.key_file)),
            )?
        };
        Some(https_config(chain, key)?)
    } else {
        None
    };
    Ok(TlsSetup {
        pki,
        ca_paths: paths,
        grpc: Arc::new(grpc),
        api,
        revocations,
        conns: Arc::default(),
    })
}

/// A plain HTTPS configuration (no client certificates), HTTP/2 and 1.1.
pub fn https_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<RustlsConfig>, TlsError> {
    let mut c = RustlsConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// HTTPS on the API listener from `http.tls.cert_file`/`key_file` when the
/// tunnel runs without TLS (and so without a server certificate of ours).
pub fn standalone_api_config(config: &ServerConfig) -> Result<Option<Arc<RustlsConfig>>, TlsError> {
    let t = &config.http.tls;
    if config.grpc.tls.enabled || t.enabled != Some(true) {
        return Ok(None);
    }
    let (chain, key) = load_pair(
        ("http.tls.cert_file", Path::new(&t.cert_file)),
        ("http.tls.key_file", Path::new(&t.key_file)),
    )?;
    https_config(chain, key).map(Some)
}

/// HTTPS for the public proxy listener, when `proxy.tls` names a pair.
pub fn proxy_config(config: &ServerConfig) -> Result<Option<Arc<RustlsConfig>>, TlsError> {
    let t = &config.proxy.tls;
    if t.cert_file.is_empty() {
        return Ok(None);
    }
    let (chain, key) = load_pair(
        ("proxy.tls.cert_file", Path::new(&t.cert_file)),
        ("proxy.tls.key_file", Path::new(&t.key_file)),
    )?;
    https_config(chain, key).map(Some)
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Files {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

fn load_pair(
    cert: (&'static str, &Path),
    key: (&'static str, &Path),
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = parse_certs(cert.0, cert.1, &read(cert.0, cert.1)?)?;
    let k = parse_key(key.0, key.1, &read(key.0, key.1)?)?;
    Ok((chain, k))
}

fn parse_certs(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Files {
            key,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Files {
            key,
            path: path.to_owned(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn parse_key(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Files {
        key,
        path: path.to_owned(),
        reason: e.to_string(),
    })
}
