//! Agent certificates: CSR policy, signing, inspection.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{openssl, paths, pem_file_der, spec, webpki_client_verify};
use silo_pki::{
    BACKDATE, CertSigner, CsrError, KeyType, Pki, PkiError, PublicKeyKind, SubjectPublicKey,
    agent_id_from_cert, generate_key, issue_with_generated_key, load_key_pair_pem, parse_cert_info,
    parse_csr, verify_issued_by,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

const NINETY_DAYS: Duration = Duration::from_secs(90 * 24 * 3600);

fn pki(dir: &Path) -> Pki {
    Pki::load_or_init(&paths(dir), &spec(&["localhost"], &["127.0.0.1"]))
        .unwrap()
        .0
}

/// `openssl req -new` with a fresh key; `None` when openssl is missing.
fn openssl_csr(dir: &Path, newkey: &[&str], extra: &[&str]) -> Option<String> {
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend_from_slice(&["-nodes", "-keyout", "csr-key.pem", "-out", "req.pem"]);
    args.extend_from_slice(extra);
    openssl(dir, &args)?;
    Some(std::fs::read_to_string(dir.join("req.pem")).unwrap())
}

const EC_P256: &[&str] = &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"];

#[test]
fn openssl_csr_is_signed_with_server_chosen_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let Some(csr_pem) = openssl_csr(
        tmp.path(),
        EC_P256,
        &[
            "-subj",
            "/CN=whatever/O=Evil Corp",
            "-addext",
            "subjectAltName=DNS:evil.example,URI:silo://agent/admin",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ],
    ) else {
        return;
    };
    let csr = parse_csr(&csr_pem).unwrap();
    assert_eq!(csr.key_kind(), PublicKeyKind::EcdsaP256);

    let now = OffsetDateTime::now_utc();
    let signer = pki.signer();
    let issued = signer
        .sign_agent("agent-7", csr.public_key(), NINETY_DAYS, now)
        .unwrap();
    let again = signer
        .sign_agent("agent-7", csr.public_key(), NINETY_DAYS, now)
        .unwrap();
    assert_ne!(issued.serial_hex, again.serial_hex);

    // Validity: backdated 5 minutes, whole seconds.
    let now_s = now.replace_nanosecond(0).unwrap();
    assert_eq!(issued.not_before, now_s - BACKDATE);
    assert_eq!(issued.not_after, now_s + time::Duration::days(90));
    assert_eq!(issued.agent_id, "agent-7");

    // Identity comes from the server, not from the CSR.
    let info = parse_cert_info(issued.pem.as_bytes()).unwrap();
    assert_eq!(info.cn.as_deref(), Some("agent-7"));
    assert_eq!(info.uri_sans, ["silo://agent/agent-7"]);
    assert!(info.dns_sans.is_empty() && info.ip_sans.is_empty());
    assert!(!info.is_ca);
    assert_eq!(info.sha256_hex, issued.sha256_hex);
    assert_eq!(info.serial_hex, issued.serial_hex);
    assert_eq!(info.public_key_sha256_hex, csr.public_key_sha256_hex());
    let (_, x509) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
    assert_eq!(x509.subject().iter().count(), 1, "subject is the CN only");
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.key_encipherment());
    assert!(!x509.basic_constraints().unwrap().unwrap().value.ca);
    let san = x509.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        [GeneralName::URI("silo://agent/agent-7")]
    );

    // Serial: 128 random bits, positive.
    let raw = x509.raw_serial();
    assert!(raw.len() <= 16 && raw[0] & 0x80 == 0, "{raw:02x?}");
    assert!(issued.serial_hex.len() <= 32 && issued.serial_hex.len() >= 16);

    // Trusted the way the server and openssl will trust it.
    assert_eq!(agent_id_from_cert(&issued.der).as_deref(), Some("agent-7"));
    assert!(verify_issued_by(&issued.der, pki.ca_cert_der()));
    webpki_client_verify(pki.ca_cert_der(), &issued.der).unwrap();
    std::fs::write(tmp.path().join("agent.pem"), &issued.pem).unwrap();
    std::fs::write(tmp.path().join("ca.pem"), signer.ca_cert_pem()).unwrap();
    let out = openssl(
        tmp.path(),
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslclient",
            "agent.pem",
        ],
    )
    .unwrap();
    assert_eq!(out.trim(), "agent.pem: OK");

    // Another CA did not sign it.
    let other = tempfile::tempdir().unwrap();
    let other = pki_other(other.path());
    assert!(!verify_issued_by(&issued.der, other.ca_cert_der()));
    assert!(webpki_client_verify(other.ca_cert_der(), &issued.der).is_err());
}

fn pki_other(dir: &Path) -> Pki {
    pki(dir)
}

#[test]
fn openssl_rsa_csr_gets_key_encipherment() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let Some(csr_pem) = openssl_csr(tmp.path(), &["-newkey", "rsa:2048"], &["-subj", "/CN=x"])
    else {
        return;
    };
    let csr = parse_csr(&csr_pem).unwrap();
    assert_eq!(csr.key_kind(), PublicKeyKind::Rsa { bits: 2048 });
    let issued = pki
        .signer()
        .sign_agent(
            "rsa-agent",
            csr.public_key(),
            NINETY_DAYS,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    webpki_client_verify(pki.ca_cert_der(), &issued.der).unwrap();
    let info = parse_cert_info(&issued.der).unwrap();
    assert_eq!(info.public_key_sha256_hex, csr.public_key_sha256_hex());
}

#[test]
fn p384_csr_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(csr_pem) = openssl_csr(
        tmp.path(),
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &["-subj", "/CN=x"],
    ) else {
        return;
    };
    assert_eq!(
        parse_csr(&csr_pem).unwrap().key_kind(),
        PublicKeyKind::EcdsaP384
    );
}

#[test]
fn weak_or_unsupported_keys_are_rejected_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["-newkey", "rsa:1024"],
            "unsupported key type: RSA 1024 bits (need >= 2048)",
        ),
        (
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"],
            "unsupported key type: EC curve 1.3.132.0.35 (need P-256 or P-384)",
        ),
        (&["-newkey", "ed25519"], "unsupported key type: Ed25519"),
    ];
    for (newkey, want) in cases {
        let Some(csr_pem) = openssl_csr(tmp.path(), newkey, &["-subj", "/CN=x"]) else {
            return;
        };
        let err = parse_csr(&csr_pem).unwrap_err();
        assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err:?}");
        assert_eq!(err.to_string(), *want);
    }
}

#[test]
fn tampered_csr_fails_proof_of_possession() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(_) = openssl_csr(tmp.path(), EC_P256, &["-subj", "/CN=tamper-me"]) else {
        return;
    };
    let mut der = pem_file_der(&tmp.path().join("req.pem"));
    let at = der.windows(9).position(|w| w == b"tamper-me").unwrap();
    der[at] = b'T';
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = parse_csr(&tampered).unwrap_err();
    assert_eq!(err, CsrError::BadSignature);
    assert_eq!(err.to_string(), "signature does not verify");
}

#[test]
fn garbage_and_oversized_csrs_are_rejected() {
    assert_eq!(
        parse_csr("hello").unwrap_err().to_string(),
        "not a PEM CERTIFICATE REQUEST"
    );
    let mut big = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    while big.len() <= silo_pki::MAX_CSR_PEM_BYTES {
        big.push_str(&"A".repeat(64));
        big.push('\n');
    }
    big.push_str("-----END CERTIFICATE REQUEST-----\n");
    assert_eq!(
        parse_csr(&big).unwrap_err().to_string(),
        "CSR larger than 16384 bytes"
    );
}

#[test]
fn openssl_cn_only_agent_cert_is_recognised() {
    // As issued by the Go implementation: CN only, no URI SAN.
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let ca = paths(tmp.path());
    let dir = tmp.path();
    let sign = |cn: &str, ext: &str| -> Option<Vec<u8>> {
        openssl_csr(dir, EC_P256, &["-subj", &format!("/CN={cn}")])?;
        std::fs::write(dir.join("ext.cnf"), ext).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "req.pem",
                "-CA",
                ca.ca_cert.to_str().unwrap(),
                "-CAkey",
                ca.ca_key.to_str().unwrap(),
                "-set_serial",
                "0x1234",
                "-days",
                "30",
                "-extfile",
                "ext.cnf",
                "-out",
                "agent.pem",
            ],
        )?;
        Some(pem_file_der(&dir.join("agent.pem")))
    };
    let Some(der) = sign("legacy-agent", "extendedKeyUsage=clientAuth\n") else {
        return;
    };
    assert_eq!(agent_id_from_cert(&der).as_deref(), Some("legacy-agent"));
    assert!(verify_issued_by(&der, pki.ca_cert_der()));
    webpki_client_verify(pki.ca_cert_der(), &der).unwrap();
    let info = parse_cert_info(&der).unwrap();
    assert_eq!(info.serial_hex, "1234");
    assert!(info.uri_sans.is_empty());

    // An id that is not a valid agent id is no identity at all.
    let der = sign("a.b", "extendedKeyUsage=clientAuth\n").unwrap();
    assert_eq!(agent_id_from_cert(&der), None);
    // URI SAN and CN must agree.
    let der = sign("agent-a", "subjectAltName=URI:silo://agent/agent-b\n").unwrap();
    assert_eq!(agent_id_from_cert(&der), None);
    let der = sign("agent-a", "subjectAltName=URI:silo://agent/agent-a\n").unwrap();
    assert_eq!(agent_id_from_cert(&der).as_deref(), Some("agent-a"));
}

#[test]
fn signing_checks_its_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let pk = SubjectPublicKey::from_key_pair(&key).unwrap();
    let now = OffsetDateTime::now_utc();
    let signer = pki.signer();
    for bad in ["", "../x", "a/b", &"x".repeat(65)] {
        let err = signer.sign_agent(bad, &pk, NINETY_DAYS, now).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidAgentId(_)),
            "{bad:?}: {err:?}"
        );
    }
    let err = signer
        .sign_agent("a", &pk, Duration::ZERO, now)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity(_)), "{err:?}");
    // Never valid beyond the CA.
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    let issued = signer.sign_agent("a", &pk, century, now).unwrap();
    assert_eq!(issued.not_after, pki.ca_not_after());

    // A CA made 11 years ago has expired: nothing is signed with it.
    let old = tempfile::tempdir().unwrap();
    let (old, _) = Pki::load_or_init_at(
        &paths(old.path()),
        &spec(&["localhost"], &[]),
        now - time::Duration::days(11 * 365),
    )
    .unwrap();
    let err = old
        .signer()
        .sign_agent("a", &pk, NINETY_DAYS, now)
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn agent_side_csr_is_accepted_by_the_server_side() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let csr = parse_csr(&silo_pki::generate_csr("agent-9", &key).unwrap()).unwrap();
    let issued = pki
        .signer()
        .sign_agent(
            "agent-9",
            csr.public_key(),
            NINETY_DAYS,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    // The agent checks the answer before trusting it.
    assert!(verify_issued_by(&issued.der, pki.ca_cert_der()));
    let info = parse_cert_info(&issued.der).unwrap();
    assert_eq!(
        info.public_key_sha256_hex,
        SubjectPublicKey::from_key_pair(&key).unwrap().sha256_hex()
    );
}

#[test]
fn legacy_path_generates_key_and_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = pki(tmp.path());
    let signer = pki.signer();
    let now = OffsetDateTime::now_utc();
    let ec = issue_with_generated_key(
        signer.as_ref(),
        "legacy-1",
        KeyType::EcdsaP256,
        NINETY_DAYS,
        now,
    )
    .unwrap();
    assert!(
        !format!("{ec:?}").contains("PRIVATE KEY"),
        "Debug must redact the key"
    );
    let key = load_key_pair_pem(&ec.key_pem, "test").unwrap();
    let info = parse_cert_info(&ec.cert.der).unwrap();
    assert_eq!(
        info.public_key_sha256_hex,
        SubjectPublicKey::from_key_pair(&key).unwrap().sha256_hex()
    );

    // The one RSA key generated in these tests (RSA-2048; never 4096 in debug).
    let rsa = issue_with_generated_key(
        signer.as_ref(),
        "legacy-2",
        KeyType::Rsa2048,
        NINETY_DAYS,
        now,
    )
    .unwrap();
    let key = load_key_pair_pem(&rsa.key_pem, "test").unwrap();
    let pk = SubjectPublicKey::from_key_pair(&key).unwrap();
    assert_eq!(pk.kind(), PublicKeyKind::Rsa { bits: 2048 });
    webpki_client_verify(pki.ca_cert_der(), &rsa.cert.der).unwrap();
    let (_, x509) = x509_parser::parse_x509_certificate(&rsa.cert.der).unwrap();
    assert!(x509.key_usage().unwrap().unwrap().value.key_encipherment());
}
