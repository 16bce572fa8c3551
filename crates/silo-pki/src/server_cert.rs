//! The server's own TLS certificate: generated, kept, re-issued or left
//! alone (when an operator supplied it).

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;

use rcgen::string::Ia5String;
use rcgen::{DnType, ExtendedKeyUsagePurpose, PublicKeyData, SanType};
use time::OffsetDateTime;

use crate::files::{io_err, write_private_file, write_public_file};
use crate::inspect::{self, cert_der_from_pem_or_der, pem_encode};
use crate::signer::{base_params, leaf_key_usages, window_start};
use crate::{
    CaPaths, LocalCaSigner, PkiError, ReissueReason, ServerCertOutcome, ServerCertSpec,
    generate_key, load_key_pair_pem,
};

/// Validity of a server certificate we issue.
pub const SERVER_CERT_VALIDITY: time::Duration = time::Duration::days(365);
/// A server certificate of ours this close to expiry is re-issued at start.
pub const SERVER_RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// The server certificate material handed to rustls.
pub(crate) struct ServerMaterial {
    pub chain_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

pub(crate) fn ensure(
    paths: &CaPaths,
    spec: &ServerCertSpec,
    signer: &LocalCaSigner,
    now: OffsetDateTime,
) -> Result<(ServerMaterial, ServerCertOutcome), PkiError> {
    let cert_path = &paths.server_cert;
    let key_path = &paths.server_key;
    if !cert_path.exists() {
        // A key without certificate is what an interrupted issuance leaves
        // (the key is written first); it is replaced.
        return Ok((
            issue(paths, spec, signer, now)?,
            ServerCertOutcome::Generated,
        ));
    }
    if !key_path.exists() {
        return Err(PkiError::IncompletePair {
            present: cert_path.clone(),
            missing: key_path.clone(),
        });
    }
    let cert_text = fs::read_to_string(cert_path).map_err(|e| io_err("read", cert_path, e))?;
    let key_pem = fs::read_to_string(key_path).map_err(|e| io_err("read", key_path, e))?;
    let leaf = cert_der_from_pem_or_der(cert_text.as_bytes())?;
    let info = inspect::parse_cert_info(&leaf).map_err(|e| match e {
        PkiError::InvalidCertificate { reason, .. } => PkiError::InvalidCertificate {
            context: cert_path.display().to_string(),
            reason,
        },
        other => other,
    })?;

    if !inspect::verify_issued_by(&leaf, signer.ca_der()) {
        // Not ours: the operator's certificate, used exactly as given.
        let material = ServerMaterial {
            chain_pem: cert_text,
            key_pem,
            not_after: info.not_after,
        };
        return Ok((material, ServerCertOutcome::OperatorSupplied));
    }

    let reason = if key_mismatch(&leaf, &key_pem) {
        Some(ReissueReason::KeyMismatch)
    } else if info.not_after - now < SERVER_RENEW_BEFORE {
        Some(ReissueReason::NearExpiry {
            not_after: info.not_after,
        })
    } else {
        let had = san_set(&info.dns_sans, &info.ip_sans);
        let want = san_set(&spec.domain_names, &spec.ip_addresses);
        (had != want).then(|| ReissueReason::SanMismatch {
            had: had.into_iter().collect(),
            want: want.into_iter().collect(),
        })
    };
    match reason {
        Some(reason) => {
            tracing::info!(cert = %cert_path.display(), ?reason, "re-issuing the server certificate");
            let material = issue(paths, spec, signer, now)?;
            Ok((material, ServerCertOutcome::Reissued(reason)))
        }
        None => {
            let material = ServerMaterial {
                chain_pem: chain(&leaf, signer),
                key_pem,
                not_after: info.not_after,
            };
            Ok((material, ServerCertOutcome::Loaded))
        }
    }
}

/// Generates a key and a certificate from our CA and writes both.
fn issue(
    paths: &CaPaths,
    spec: &ServerCertSpec,
    signer: &LocalCaSigner,
    now: OffsetDateTime,
) -> Result<ServerMaterial, PkiError> {
    let key = generate_key(spec.key_type)?;
    let (not_before, now) = window_start(now);
    let not_after = (now + SERVER_CERT_VALIDITY).min(signer.ca_not_after());
    let mut params = base_params(not_before, not_after);
    let cn = spec
        .domain_names
        .first()
        .cloned()
        .or_else(|| spec.ip_addresses.first().map(IpAddr::to_string))
        .unwrap_or_else(|| "silo-proxy server".to_owned());
    params.distinguished_name.push(DnType::CommonName, cn);
    for name in &spec.domain_names {
        let dns = Ia5String::try_from(name.as_str()).map_err(|_| PkiError::InvalidCertificate {
            context: "server certificate".into(),
            reason: format!("domain name {name:?} is not ASCII"),
        })?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    for ip in &spec.ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.key_usages = leaf_key_usages(spec.key_type.is_rsa());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let der = signer.sign_params(&params, &key)?;

    let key_pem = key.serialize_pem();
    write_private_file(&paths.server_key, key_pem.as_bytes())?;
    write_public_file(
        &paths.server_cert,
        pem_encode("CERTIFICATE", &der).as_bytes(),
    )?;
    Ok(ServerMaterial {
        chain_pem: chain(&der, signer),
        key_pem,
        not_after,
    })
}

/// Leaf then CA, so clients that only pinned the CA can build the chain.
fn chain(leaf_der: &[u8], signer: &LocalCaSigner) -> String {
    pem_encode("CERTIFICATE", leaf_der) + &pem_encode("CERTIFICATE", signer.ca_der())
}

/// True only when the key is readable by us and provably not the
/// certificate's: a key we cannot parse is left for rustls to judge.
fn key_mismatch(leaf_der: &[u8], key_pem: &str) -> bool {
    let Ok(key) = load_key_pair_pem(key_pem, "server key") else {
        return false;
    };
    match inspect::parse_der(leaf_der) {
        Ok(x509) => x509.public_key().subject_public_key.data.as_ref() != key.der_bytes(),
        Err(_) => false,
    }
}

/// SANs as comparable strings; DNS names are case-insensitive.
fn san_set(dns: &[String], ips: &[IpAddr]) -> BTreeSet<String> {
    dns.iter()
        .map(|d| format!("DNS:{}", d.to_ascii_lowercase()))
        .chain(ips.iter().map(|ip| format!("IP:{ip}")))
        .collect()
}
