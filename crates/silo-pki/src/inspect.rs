//! Reading certificates: identity, fingerprints, issuer checks, CA pins.
//!
//! Used by the server's TLS verifier (who is this agent?) and by the agent
//! after provisioning (did the server's CA really sign what it returned?).

use std::net::IpAddr;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::{PkiError, is_valid_agent_id};

/// URI SAN prefix that names an agent in certificates we issue.
pub const AGENT_URI_PREFIX: &str = "silo://agent/";

/// What the rest of the system needs to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// Serial number: lowercase hex of its magnitude, no leading zero bytes.
    pub serial_hex: String,
    /// First subject commonName, if any.
    pub cn: Option<String>,
    /// URI subjectAltNames.
    pub uri_sans: Vec<String>,
    /// DNS subjectAltNames.
    pub dns_sans: Vec<String>,
    /// IP address subjectAltNames.
    pub ip_sans: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub sha256_hex: String,
    /// SHA-256 of the SubjectPublicKeyInfo DER, lowercase hex.
    pub public_key_sha256_hex: String,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
}

/// Parses a certificate given as DER or as PEM (the first `CERTIFICATE`
/// block is used).
pub fn parse_cert_info(cert: &[u8]) -> Result<CertInfo, PkiError> {
    let der = cert_der_from_pem_or_der(cert)?;
    let x509 = parse_der(&der)?;
    let mut info = CertInfo {
        serial_hex: serial_hex(&x509),
        cn: common_names(&x509).into_iter().next(),
        uri_sans: Vec::new(),
        dns_sans: Vec::new(),
        ip_sans: Vec::new(),
        not_before: x509.validity().not_before.to_datetime(),
        not_after: x509.validity().not_after.to_datetime(),
        sha256_hex: sha256_fingerprint_hex(&der),
        public_key_sha256_hex: hex::encode(Sha256::digest(x509.public_key().raw)),
        is_ca: x509.is_ca(),
    };
    let san = x509
        .subject_alternative_name()
        .map_err(|e| invalid(e.to_string()))?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        match name {
            GeneralName::URI(u) => info.uri_sans.push((*u).to_owned()),
            GeneralName::DNSName(d) => info.dns_sans.push((*d).to_owned()),
            GeneralName::IPAddress(bytes) => {
                if let Some(ip) = ip_from_bytes(bytes) {
                    info.ip_sans.push(ip);
                }
            }
            _ => {}
        }
    }
    Ok(info)
}

/// The agent a client certificate names, or `None` if it names none
/// unambiguously.
///
/// Certificates we issue carry a URI SAN `silo://agent/<id>`; certificates
/// of the Go implementation carry the id in the CN only and are valid too.
/// When both are present they must agree, and the id must be a valid agent
/// id (so it is safe in paths and logs).
pub fn agent_id_from_cert(der: &[u8]) -> Option<String> {
    let x509 = parse_der(der).ok()?;
    let mut uri_ids = Vec::new();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name
                && let Some(id) = u.strip_prefix(AGENT_URI_PREFIX)
            {
                uri_ids.push(id.to_owned());
            }
        }
    }
    let cns = common_names(&x509);
    if cns.len() > 1 {
        return None;
    }
    uri_ids.dedup();
    let id = match (uri_ids.as_slice(), cns.first()) {
        ([uri], Some(cn)) if uri != cn => return None,
        ([uri], _) => uri.clone(),
        ([], Some(cn)) => cn.clone(),
        _ => return None,
    };
    is_valid_agent_id(&id).then_some(id)
}

/// Whether `cert_der` was signed by the key of `ca_der` and names it as its
/// issuer. No validity or usage checks: this answers "did this CA make it?".
pub fn verify_issued_by(cert_der: &[u8], ca_der: &[u8]) -> bool {
    let (Ok(cert), Ok(ca)) = (parse_der(cert_der), parse_der(ca_der)) else {
        return false;
    };
    cert.issuer().as_raw() == ca.subject().as_raw()
        && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// SHA-256 of some DER (a certificate), lowercase hex without separators.
pub fn sha256_fingerprint_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Parses a CA pin (`--ca-sha256`): 64 hex digits, any case, optionally
/// written as 32 colon-separated pairs and/or prefixed with `sha256:`.
pub fn parse_ca_pin(s: &str) -> Result<[u8; 32], PkiError> {
    let s = s.trim();
    let s = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("sha256:") => &s[7..],
        _ => s,
    };
    let digits: String = if s.contains(':') {
        let pairs: Vec<&str> = s.split(':').collect();
        if pairs.len() != 32 || pairs.iter().any(|p| p.len() != 2) {
            return Err(PkiError::InvalidPin(
                "colon-separated form must be 32 pairs of hex digits",
            ));
        }
        pairs.concat()
    } else {
        s.to_owned()
    };
    if digits.len() != 64 {
        return Err(PkiError::InvalidPin("expected 64 hex digits (SHA-256)"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).map_err(|_| PkiError::InvalidPin("not hexadecimal"))?;
    Ok(out)
}

pub(crate) fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(invalid("trailing data after the certificate".into())),
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// The DER of the first `CERTIFICATE` block, or the input if it is not PEM.
pub(crate) fn cert_der_from_pem_or_der(input: &[u8]) -> Result<Vec<u8>, PkiError> {
    if !input.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let blocks = pem::parse_many(input).map_err(|e| invalid(format!("bad PEM: {e}")))?;
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .ok_or_else(|| invalid("no PEM CERTIFICATE block".into()))
}

/// PEM with LF line endings, as rcgen writes it.
pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der), config)
}

fn serial_hex(x509: &X509Certificate<'_>) -> String {
    let raw = x509.raw_serial();
    let start = raw.iter().position(|&b| b != 0).unwrap_or(raw.len());
    if start == raw.len() {
        return "00".into();
    }
    hex::encode(&raw[start..])
}

fn common_names(x509: &X509Certificate<'_>) -> Vec<String> {
    x509.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn invalid(reason: String) -> PkiError {
    PkiError::InvalidCertificate {
        context: "parse".into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn ca_pin_forms() {
        let want = parse_ca_pin(PIN).unwrap();
        assert_eq!(want[0], 0x01);
        assert_eq!(parse_ca_pin(&PIN.to_uppercase()).unwrap(), want);
        assert_eq!(parse_ca_pin(&format!("sha256:{PIN}")).unwrap(), want);
        assert_eq!(parse_ca_pin(&format!(" SHA256:{PIN}\n")).unwrap(), want);
        let colons: Vec<String> = PIN
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
            .collect();
        assert_eq!(parse_ca_pin(&colons.join(":")).unwrap(), want);
        assert_eq!(
            parse_ca_pin(&format!("sha256:{}", colons.join(":"))).unwrap(),
            want
        );
    }

    #[test]
    fn ca_pin_rejects_bad_input() {
        for bad in [
            "",
            "sha256:",
            &PIN[..62],
            &format!("{PIN}00"),
            &PIN.replace('a', "g"),
            "sha1:0123",
            "01:23",
            &format!("{}:{}", &PIN[..32], &PIN[32..]),
        ] {
            assert!(parse_ca_pin(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fingerprint_is_lowercase_sha256() {
        assert_eq!(
            sha256_fingerprint_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn garbage_is_not_a_cert() {
        assert!(parse_cert_info(b"garbage").is_err());
        assert!(
            parse_cert_info(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err()
        );
        assert_eq!(agent_id_from_cert(b"\x30\x00"), None);
        assert!(!verify_issued_by(b"x", b"y"));
    }
}
