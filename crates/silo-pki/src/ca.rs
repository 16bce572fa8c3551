//! Loading or creating the CA.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
use time::OffsetDateTime;

use crate::files::{io_err, write_private_file, write_public_file};
use crate::inspect::{cert_der_from_pem_or_der, pem_encode};
use crate::signer::{base_params, window_start};
use crate::{
    CaOutcome, CaPaths, KeyType, LocalCaSigner, PkiError, generate_key, load_key_pair_pem,
};

/// Subject CN of a CA we generate.
pub const CA_COMMON_NAME: &str = "silo-proxy CA";
/// Validity of a CA we generate.
pub const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// Loads the CA from its files, or creates it when both are missing.
///
/// Existing files are never rewritten, whatever tool made them.
pub(crate) fn load_or_create(
    paths: &CaPaths,
    key_type: KeyType,
    now: OffsetDateTime,
) -> Result<(LocalCaSigner, CaOutcome), PkiError> {
    match (paths.ca_cert.exists(), paths.ca_key.exists()) {
        (true, true) => Ok((load(&paths.ca_cert, &paths.ca_key)?, CaOutcome::Loaded)),
        (true, false) => Err(PkiError::IncompletePair {
            present: paths.ca_cert.clone(),
            missing: paths.ca_key.clone(),
        }),
        (false, true) => Err(PkiError::IncompletePair {
            present: paths.ca_key.clone(),
            missing: paths.ca_cert.clone(),
        }),
        (false, false) => {
            if let Some(example) = find_agent_cert(&paths.agent_cert_dir)? {
                return Err(PkiError::AgentCertsWithoutCa {
                    dir: paths.agent_cert_dir.clone(),
                    example,
                });
            }
            Ok((create(paths, key_type, now)?, CaOutcome::Generated))
        }
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<LocalCaSigner, PkiError> {
    let cert_bytes = fs::read(cert_path).map_err(|e| io_err("read", cert_path, e))?;
    let der = cert_der_from_pem_or_der(&cert_bytes).map_err(|e| with_context(e, cert_path))?;
    let key_text = fs::read_to_string(key_path).map_err(|e| io_err("read", key_path, e))?;
    let key = load_key_pair_pem(&key_text, &key_path.display().to_string())?;
    LocalCaSigner::new(der, key).map_err(|e| with_context(e, cert_path))
}

fn create(
    paths: &CaPaths,
    key_type: KeyType,
    now: OffsetDateTime,
) -> Result<LocalCaSigner, PkiError> {
    let key = generate_key(key_type)?;
    let (not_before, now) = window_start(now);
    let mut params = base_params(not_before, now + CA_VALIDITY);
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A self-signed certificate has no authority key identifier to point at.
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key).map_err(PkiError::Signing)?;
    let der = cert.der().to_vec();

    // Key first: a crash in between leaves a key without certificate, which
    // the next start reports instead of silently making another CA.
    write_private_file(&paths.ca_key, key.serialize_pem().as_bytes())?;
    write_public_file(&paths.ca_cert, pem_encode("CERTIFICATE", &der).as_bytes())?;
    tracing::info!(cert = %paths.ca_cert.display(), key = %paths.ca_key.display(), "generated a new CA");
    LocalCaSigner::new(der, key)
}

/// The first agent certificate (`*.pem` / `*.crt`) under `dir`, searched
/// recursively without following directory symlinks.
fn find_agent_cert(dir: &Path) -> Result<Option<PathBuf>, PkiError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read directory", dir, e)),
    };
    let mut subdirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read directory", dir, e))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(|e| io_err("stat", &path, e))?;
        if file_type.is_dir() {
            subdirs.push(path);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("pem") || e.eq_ignore_ascii_case("crt"))
        {
            return Ok(Some(path));
        }
    }
    for sub in subdirs {
        if let Some(found) = find_agent_cert(&sub)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

fn with_context(e: PkiError, path: &Path) -> PkiError {
    match e {
        PkiError::InvalidCertificate { reason, .. } => PkiError::InvalidCertificate {
            context: path.display().to_string(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_agent_certs_recursively() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("agents");
        assert_eq!(find_agent_cert(&dir).unwrap(), None);
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/README"), "x").unwrap();
        assert_eq!(find_agent_cert(&dir).unwrap(), None);
        fs::write(dir.join("a/b/agent-1.CRT"), "x").unwrap();
        assert_eq!(
            find_agent_cert(&dir).unwrap(),
            Some(dir.join("a/b/agent-1.CRT"))
        );
    }
}
