//! Certificate provisioning: one-time provision keys, CSR signing, the
//! legacy server-generated certificate zip, and revocation of an agent's
//! certificates (api.md "Provisioning", "Agents and certificates";
//! security.md "Provision keys").
//!
//! Plain async functions over a [`Ctx`] (store, signer, settings), so they
//! are tested against a real store and CA without HTTP; the handlers in
//! `api::provision` and `api::certs` are thin wrappers.
//!
//! # Layout
//! - this file: [`Settings`], [`Ctx`], [`ProvisionError`].
//! - [`keys`]: key generation and hashing, TTLs, create / list / revoke.
//! - [`issue`]: `POST /api/v1/provision` — CSR, atomic consumption, signing.
//! - [`legacy`]: server-generated keys (the zip endpoints) and revoking
//!   everything an agent holds.
//! - [`zip`]: a minimal writer of stored (uncompressed) zip archives.
//! - [`cleanup`]: the periodic removal of old keys.
//! - `audit`: the audit rows written here.

pub(crate) mod audit;
pub mod cleanup;
pub mod issue;
pub mod keys;
pub mod legacy;
pub mod zip;

use crate::config::ServerConfig;
use silo_pki::{CertSigner, KeyType};
use silo_store::{Store, StoreError};
use std::path::PathBuf;
use std::time::Duration;
use time::OffsetDateTime;

/// The configuration values provisioning needs, resolved once.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default TTL of a new key (`provision.key_ttl_hours`).
    pub key_ttl: Duration,
    /// Validity of issued agent certificates (`provision.cert_validity`,
    /// or the `cert_validity_days` alias).
    pub cert_validity: Duration,
    /// How long used, expired and revoked keys stay listed.
    pub history: Duration,
    /// Key type the legacy paths generate (`grpc.tls.key_type`).
    pub key_type: KeyType,
    /// How agents reach the API (`server.public_url` or derived).
    pub server_url: String,
    /// How agents reach the tunnel (`server.public_grpc_address` or derived).
    pub grpc_address: String,
    /// Where the legacy path stores server-generated keys.
    pub agent_cert_dir: PathBuf,
    /// `provision.enabled`, defaulting to `grpc.tls.enabled`.
    pub enabled: bool,
}

impl Settings {
    pub fn from_config(config: &ServerConfig) -> Self {
        let p = &config.provision;
        let cert_validity = match p.cert_validity_days {
            Some(days) => Duration::from_secs(days.saturating_mul(86_400)),
            None => p.cert_validity,
        };
        let host = first_host(config);
        let api_tls = config.http.tls.enabled.unwrap_or(config.grpc.tls.enabled);
        let server_url = if config.server.public_url.trim().is_empty() {
            let scheme = if api_tls { "https" } else { "http" };
            format!("{scheme}://{}:{}", url_host(&host), config.http.port)
        } else {
            config
                .server
                .public_url
                .trim()
                .trim_end_matches('/')
                .to_owned()
        };
        let grpc_address = if config.server.public_grpc_address.trim().is_empty() {
            format!("{}:{}", url_host(&host), config.grpc.port)
        } else {
            config.server.public_grpc_address.trim().to_owned()
        };
        Self {
            key_ttl: Duration::from_secs(p.key_ttl_hours.saturating_mul(3600)),
            cert_validity,
            history: Duration::from_secs(p.history_days.saturating_mul(86_400)),
            key_type: config.grpc.tls.key_type.parse().unwrap_or_default(),
            server_url,
            grpc_address,
            agent_cert_dir: crate::tls::ca_paths(config).agent_cert_dir,
            enabled: p.enabled.unwrap_or(config.grpc.tls.enabled),
        }
    }
}

/// The first `grpc.tls.domain_names` entry, else the first IP address,
/// else `localhost`: the name the server certificate is valid for.
fn first_host(config: &ServerConfig) -> String {
    let tls = &config.grpc.tls;
    let first = |s: &str| {
        s.split(',')
            .map(str::trim)
            .find(|x| !x.is_empty())
            .map(str::to_owned)
    };
    first(&tls.domain_names)
        .or_else(|| first(&tls.ip_addresses))
        .unwrap_or_else(|| "localhost".into())
}

/// IPv6 literals need brackets in URLs and `host:port`.
fn url_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// What the provisioning functions work with.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub store: &'a Store,
    /// `None` when TLS is off: there is no CA to sign with.
    pub signer: Option<&'a dyn CertSigner>,
    pub settings: &'a Settings,
}

impl<'a> Ctx<'a> {
    /// The signer, or the compat error of a server without TLS.
    fn signer(&self) -> Result<&'a dyn CertSigner, ProvisionError> {
        self.signer.ok_or(ProvisionError::BadRequest(
            "TLS is not enabled on this server".into(),
        ))
    }
}

/// Why a provisioning operation failed; `api` maps it to a status. The
/// messages of the client-facing variants are the api.md texts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// 400 with this message.
    #[error("{0}")]
    BadRequest(String),
    /// 401: `invalid provision key`, `provision key expired`, ...
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 404 with this message.
    #[error("{0}")]
    NotFound(String),
    /// 409 with this message.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] silo_pki::PkiError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks an agent id taken from a request (400 otherwise), before it
/// reaches the store, a certificate or a file path.
pub fn check_agent_id(id: &str) -> Result<(), ProvisionError> {
    silo_core::id::validate_agent_id(id).map_err(|e| ProvisionError::BadRequest(e.to_string()))
}

/// Refuses an id that differs only in letter case from a known agent's
/// (api.md: such ids cannot both exist).
pub(crate) async fn check_case_conflict(store: &Store, id: &str) -> Result<(), ProvisionError> {
    match store.find_agent_ignore_case(id).await? {
        Some(known) if known.agent_id != id => Err(ProvisionError::BadRequest(format!(
            "agent id {id:?} differs only in letter case from the existing agent {:?}",
            known.agent_id
        ))),
        _ => Ok(()),
    }
}

/// The instant to sign at so the new certificate's `notBefore` (backdated
/// by [`silo_pki::BACKDATE`]) is not earlier than the agent's revocation
/// cut-off: otherwise a certificate issued within five minutes of a
/// revocation would be born revoked. Renewal should sign at this time too.
pub async fn signing_time(
    store: &Store,
    agent_id: &str,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, StoreError> {
    let Some(cutoff) = store.agent_revoked_before(agent_id).await? else {
        return Ok(now);
    };
    // notBefore is whole seconds: round the cut-off up to the next second.
    let whole = cutoff.replace_nanosecond(0).unwrap_or(cutoff);
    let cutoff = if whole < cutoff {
        whole + time::Duration::SECOND
    } else {
        whole
    };
    Ok(now.max(cutoff + silo_pki::BACKDATE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_urls_follow_the_certificate_names() {
        let mut c = ServerConfig::default();
        c.grpc.tls.domain_names = " tunnel.example.com , other".into();
        let s = Settings::from_config(&c);
        assert_eq!(s.server_url, "https://tunnel.example.com:8080");
        assert_eq!(s.grpc_address, "tunnel.example.com:9090");
        c.grpc.tls.domain_names = String::new();
        c.grpc.tls.ip_addresses = "::1".into();
        c.grpc.tls.enabled = false;
        let s = Settings::from_config(&c);
        assert_eq!(s.server_url, "http://[::1]:8080");
        assert!(!s.enabled);
        c.server.public_url = "https://api.example.com/".into();
        c.server.public_grpc_address = "grpc.example.com:443".into();
        c.provision.cert_validity_days = Some(2);
        let s = Settings::from_config(&c);
        assert_eq!(s.server_url, "https://api.example.com");
        assert_eq!(s.grpc_address, "grpc.example.com:443");
        assert_eq!(s.cert_validity, Duration::from_secs(2 * 86_400));
    }
}
