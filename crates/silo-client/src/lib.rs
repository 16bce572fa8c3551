//! silo-client: how silo-proxy's command-line tools reach a server's API.
//!
//! `silo-proxy-agent provision` and the server's admin commands
//! (`silo-proxy-server keys …`) both talk HTTPS to a server the machine
//! may not trust yet, so they share one trust model (security.md, "Trust
//! bootstrap on the agent") and one client with a request timeout:
//! - `--ca-sha256 HEX`: the server's chain must contain a CA certificate
//!   whose DER hashes to the pin, and the server certificate must verify
//!   against that CA as the only root (signature, validity, and a SAN that
//!   matches the host of the URL). A wrong pin fails in the TLS handshake,
//!   before any request byte (a provision key, an API key) is sent.
//! - `--ca-file PEM`: the certificates in that file are the only roots.
//! - neither: the operating system's roots (a public server certificate).
//! - `--insecure`: no verification at all; callers must warn loudly.
//!
//! # Layout
//! - [`trust`]: [`Trust`] (the flags) and its rustls configuration.
//! - `verifier`: the CA-pinning and the accept-anything verifiers.
//! - [`api`]: [`ApiClient`], JSON requests that turn transport failures and
//!   `{"error": …}` bodies into one-line [`ClientError`]s.

pub mod api;
pub mod trust;
mod verifier;

pub use api::{ApiClient, ApiResponse};
/// The HTTP method type of [`ApiClient::send`], re-exported so callers
/// need no direct reqwest dependency.
pub use reqwest::{Method, Url};
pub use trust::{CaCheck, Trust};

use std::path::PathBuf;

/// Installs ring as the process-wide rustls provider (reqwest is built
/// without one). Idempotent; every constructor here calls it.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a client operation failed. `Display` is one line meant for a
/// terminal; it never contains a key or a request body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Conflicting or malformed command-line flags.
    #[error("{0}")]
    Usage(String),
    /// `--ca-sha256` is not a SHA-256 fingerprint.
    #[error("--ca-sha256: {0}")]
    Pin(#[source] silo_pki::PkiError),
    /// `--ca-file` is unreadable or holds no certificate.
    #[error("--ca-file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// The server URL is not an http(s) URL with a host.
    #[error("invalid server URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    /// The TLS handshake refused the server (wrong pin, unknown CA, name
    /// mismatch, expired certificate).
    #[error("TLS verification of {url} failed: {reason}")]
    Tls { url: String, reason: String },
    /// The request timed out.
    #[error("no answer from {url} within {seconds} s")]
    Timeout { url: String, seconds: u64 },
    /// Connecting or talking to the server failed otherwise.
    #[error("cannot reach {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered with an error status.
    #[error("server answered {status}: {message}")]
    Api { status: u16, message: String },
    /// The server answered success with a body we cannot use.
    #[error("unexpected answer from the server: {0}")]
    BadResponse(String),
}
