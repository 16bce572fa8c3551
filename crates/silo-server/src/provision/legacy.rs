//! The Go implementation's certificate endpoints: a server-generated key
//! pair handed out as a zip (`POST/GET /agents/{id}/certificate`), and
//! `DELETE /agents/{id}/certificate`, which revokes everything the agent
//! holds.
//!
//! Server-generated keys are stored 0600 in
//! `<agent_cert_dir>/<id>/<id>-cert.pem` and `<id>-key.pem`, the layout of
//! the original, so the bundle can be downloaded again.

use super::audit::{self, Event};
use super::issue::record_certificate;
use super::zip::{self, Entry};
use super::{Ctx, ProvisionError, check_agent_id, check_case_conflict, signing_time};
use crate::api::rfc3339;
use serde::Serialize;
use std::io::ErrorKind;
use std::path::PathBuf;
use time::OffsetDateTime;

pub const SOURCE_LEGACY: &str = "legacy-zip";

/// A certificate bundle to send as `application/zip`.
#[derive(Debug)]
pub struct Bundle {
    /// `{id}-certs.zip`.
    pub file_name: String,
    pub zip: Vec<u8>,
}

/// The two files of an agent's server-generated certificate.
fn agent_files(ctx: &Ctx<'_>, agent_id: &str) -> (PathBuf, PathBuf, PathBuf) {
    // Only called with a validated id, so it is one safe path component.
    let dir = ctx.settings.agent_cert_dir.join(agent_id);
    let cert = dir.join(format!("{agent_id}-cert.pem"));
    let key = dir.join(format!("{agent_id}-key.pem"));
    (dir, cert, key)
}

fn bundle(
    agent_id: &str,
    cert_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
    now: OffsetDateTime,
) -> Bundle {
    let cert_name = format!("{agent_id}-cert.pem");
    let key_name = format!("{agent_id}-key.pem");
    let entries = [
        Entry {
            name: &cert_name,
            data: cert_pem,
            mode: 0o644,
        },
        Entry {
            name: &key_name,
            data: key_pem,
            mode: 0o600,
        },
        Entry {
            name: "ca-cert.pem",
            data: ca_pem,
            mode: 0o644,
        },
    ];
    Bundle {
        file_name: format!("{agent_id}-certs.zip"),
        zip: zip::build(&entries, now),
    }
}

/// `POST /agents/{id}/certificate`: generates a key pair and certificate
/// for the agent (409 when it already has an active one).
pub async fn create_bundle(
    ctx: Ctx<'_>,
    agent_id: &str,
    actor: &str,
    remote_addr: Option<String>,
    now: OffsetDateTime,
) -> Result<Bundle, ProvisionError> {
    check_agent_id(agent_id)?;
    let signer = ctx.signer()?;
    check_case_conflict(ctx.store, agent_id).await?;
    if ctx
        .store
        .latest_active_certificate(agent_id, now)
        .await?
        .is_some()
    {
        return Err(ProvisionError::Conflict(format!(
            "Certificate already exists for agent {agent_id}; revoke it first with DELETE /agents/{agent_id}/certificate"
        )));
    }
    let at = signing_time(ctx.store, agent_id, now).await?;
    let issued = silo_pki::issue_with_generated_key(
        signer,
        agent_id,
        ctx.settings.key_type,
        ctx.settings.cert_validity,
        at,
    )?;
    let (_, cert_path, key_path) = agent_files(&ctx, agent_id);
    // Key first: a certificate file without its key would be useless.
    silo_pki::write_private_file(&key_path, issued.key_pem.as_bytes())?;
    silo_pki::write_private_file(&cert_path, issued.cert.pem.as_bytes())?;
    record_certificate(ctx, &issued.cert, SOURCE_LEGACY, now).await?;
    tracing::info!(%agent_id, serial = %issued.cert.serial_hex, %actor, "server-generated agent certificate issued");
    audit::record(
        ctx.store,
        now,
        Event {
            action: audit::CERT_ISSUED,
            actor,
            agent_id: Some(agent_id),
            remote_addr,
            detail: serde_json::json!({
                "serial": issued.cert.serial_hex,
                "source": SOURCE_LEGACY,
                "not_after": rfc3339(issued.cert.not_after),
            }),
        },
    )
    .await;
    Ok(bundle(
        agent_id,
        issued.cert.pem.as_bytes(),
        issued.key_pem.as_bytes(),
        signer.ca_cert_pem().as_bytes(),
        now,
    ))
}

/// `GET /agents/{id}/certificate`: the stored bundle again; 404 when no
/// server-generated key is stored (agents provisioned by CSR have none).
pub async fn read_bundle(
    ctx: Ctx<'_>,
    agent_id: &str,
    now: OffsetDateTime,
) -> Result<Bundle, ProvisionError> {
    check_agent_id(agent_id)?;
    let signer = ctx.signer()?;
    let (_, cert_path, key_path) = agent_files(&ctx, agent_id);
    let read = |path: PathBuf| match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(ProvisionError::NotFound(format!(
            "no server-generated certificate is stored for agent {agent_id}"
        ))),
        Err(source) => Err(ProvisionError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    };
    let key = read(key_path)?;
    let cert = read(cert_path)?;
    Ok(bundle(
        agent_id,
        &cert,
        &key,
        signer.ca_cert_pem().as_bytes(),
        now,
    ))
}

/// The answer of `DELETE /agents/{id}/certificate`.
#[derive(Debug, Serialize)]
pub struct RevokedAgent {
    pub message: String,
    /// Relative to `agent_cert_dir`.
    pub deleted_paths: Vec<String>,
    pub revoked_serials: Vec<String>,
}

/// Revokes every certificate the agent holds — registered ones by serial,
/// and all issued before `now` by the agent's cut-off (so certificates the
/// registry never saw are covered) — and removes its stored files. The
/// caller refreshes the revocation set and cuts the live session.
///
/// `connected` says whether the agent is online right now (an agent that
/// is connected is known even if the store has no trace of it).
pub async fn revoke_agent(
    ctx: Ctx<'_>,
    agent_id: &str,
    connected: bool,
    actor: &str,
    remote_addr: Option<String>,
    now: OffsetDateTime,
) -> Result<RevokedAgent, ProvisionError> {
    check_agent_id(agent_id)?;
    let (dir, cert_path, key_path) = agent_files(&ctx, agent_id);
    let known = connected
        || cert_path.exists()
        || key_path.exists()
        || ctx.store.get_agent(agent_id).await?.is_some()
        || !ctx
            .store
            .list_certificates(Some(agent_id))
            .await?
            .is_empty();
    if !known {
        return Err(ProvisionError::NotFound(format!(
            "agent {agent_id} not found"
        )));
    }
    // Whole seconds, like certificate times: a certificate issued right
    // after this (notBefore = the cut-off, see `signing_time`) is then
    // valid at once instead of up to a second in the future. Anything
    // issued before now has notBefore at or before this second.
    let cutoff = now.replace_nanosecond(0).unwrap_or(now);
    let revoked_serials = ctx.store.revoke_agent(agent_id, cutoff, now).await?;
    let mut deleted_paths = Vec::new();
    for path in [&cert_path, &key_path] {
        match std::fs::remove_file(path) {
            Ok(()) => {
                if let Ok(rel) = path.strip_prefix(&ctx.settings.agent_cert_dir) {
                    deleted_paths.push(rel.display().to_string());
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProvisionError::Io {
                    what: format!("removing {}", path.display()),
                    source,
                });
            }
        }
    }
    // Only if now empty; anything else in it is the operator's.
    let _ = std::fs::remove_dir(&dir);
    tracing::info!(%agent_id, revoked = revoked_serials.len(), %actor, "agent certificates revoked");
    audit::record(
        ctx.store,
        now,
        Event {
            action: audit::CERT_REVOKED,
            actor,
            agent_id: Some(agent_id),
            remote_addr,
            detail: serde_json::json!({
                "serials": revoked_serials,
                "revoked_before": rfc3339(cutoff),
                "deleted_paths": deleted_paths,
            }),
        },
    )
    .await;
    Ok(RevokedAgent {
        message: format!("Certificates of agent {agent_id} revoked"),
        deleted_paths,
        revoked_serials,
    })
}
