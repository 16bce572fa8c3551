//! `Pki::load_or_init`: the start-up behaviour of config.md "Certificate files".

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{openssl, paths, pem_file_der, spec};
use silo_pki::{
    CA_COMMON_NAME, CaOutcome, CaPaths, CertSigner, Pki, PkiError, ReissueReason,
    ServerCertOutcome, parse_cert_info, sha256_fingerprint_hex, verify_issued_by,
};
use time::{Duration, OffsetDateTime};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn snapshot(p: &CaPaths) -> Vec<Vec<u8>> {
    [&p.ca_cert, &p.ca_key, &p.server_cert, &p.server_key]
        .iter()
        .map(|f| fs::read(f).unwrap())
        .collect()
}

#[test]
fn first_start_generates_then_second_start_loads_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    let spec = spec(&["localhost", "tunnel.example.com"], &["127.0.0.1", "::1"]);

    let (pki, report) = Pki::load_or_init(&p, &spec).unwrap();
    assert_eq!(report.ca, CaOutcome::Generated);
    assert_eq!(report.server_cert, ServerCertOutcome::Generated);
    assert_eq!(
        report.to_string(),
        "CA generated; server certificate generated"
    );

    // Secrets 0600, their directories 0700, certificates 0644.
    assert_eq!(mode(&p.ca_key), 0o600);
    assert_eq!(mode(&p.server_key), 0o600);
    assert_eq!(mode(&p.ca_cert), 0o644);
    assert_eq!(mode(&p.server_cert), 0o644);
    for dir in ["certs", "certs/ca", "certs/server"] {
        assert_eq!(mode(&tmp.path().join(dir)), 0o700, "{dir}");
    }

    // The CA.
    let ca_der = pem_file_der(&p.ca_cert);
    assert_eq!(pki.ca_cert_der().as_ref(), ca_der.as_slice());
    assert_eq!(pki.ca_sha256_hex(), sha256_fingerprint_hex(&ca_der));
    assert_eq!(pki.signer().ca_cert_pem(), pki.ca_cert_pem());
    let ca = parse_cert_info(pki.ca_cert_pem().as_bytes()).unwrap();
    assert!(ca.is_ca);
    assert_eq!(ca.cn.as_deref(), Some(CA_COMMON_NAME));
    assert!(ca.serial_hex.len() <= 32, "{}", ca.serial_hex);
    let years = (ca.not_after - OffsetDateTime::now_utc()).whole_days();
    assert!((3640..=3650).contains(&years), "{years}");
    assert_eq!(pki.ca_not_after(), ca.not_after);
    let (_, x509) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let bc = x509.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = x509.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());

    // The server certificate.
    let leaf_der = pem_file_der(&p.server_cert);
    let leaf = parse_cert_info(&leaf_der).unwrap();
    assert_eq!(leaf.cn.as_deref(), Some("localhost"));
    assert_eq!(leaf.dns_sans, ["localhost", "tunnel.example.com"]);
    assert_eq!(leaf.ip_sans, spec.ip_addresses);
    assert!(!leaf.is_ca);
    let days = (leaf.not_after - OffsetDateTime::now_utc()).whole_days();
    assert!((363..=365).contains(&days), "{days}");
    assert_eq!(pki.server_not_after(), leaf.not_after);
    assert!(verify_issued_by(&leaf_der, &ca_der));
    let (_, x509) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
    let eku = x509.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);

    // The chain is leaf + CA, and rustls accepts chain and key.
    let chain = pem::parse_many(pki.server_cert_chain_pem()).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].contents(), leaf_der.as_slice());
    assert_eq!(chain[1].contents(), ca_der.as_slice());
    assert_rustls_accepts(&pki);

    // Second start: everything loaded, not a byte changed.
    let before = snapshot(&p);
    let (pki2, report) = Pki::load_or_init(&p, &spec).unwrap();
    assert_eq!(report.ca, CaOutcome::Loaded);
    assert_eq!(report.server_cert, ServerCertOutcome::Loaded);
    assert_eq!(snapshot(&p), before);
    assert_eq!(pki2.ca_sha256_hex(), pki.ca_sha256_hex());
    assert_eq!(pki2.server_cert_chain_pem(), pki.server_cert_chain_pem());
    assert_eq!(pki2.server_key_pem(), pki.server_key_pem());
}

fn assert_rustls_accepts(pki: &Pki) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert_chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem().as_bytes()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
}

#[test]
fn san_change_reissues_server_cert_but_keeps_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    let (first, _) = Pki::load_or_init(&p, &spec(&["localhost"], &["127.0.0.1"])).unwrap();
    let ca_before = (fs::read(&p.ca_cert).unwrap(), fs::read(&p.ca_key).unwrap());
    let key_before = fs::read(&p.server_key).unwrap();

    let wanted = spec(&["localhost", "tunnel.example.com"], &["127.0.0.1"]);
    let (pki, report) = Pki::load_or_init(&p, &wanted).unwrap();
    assert_eq!(report.ca, CaOutcome::Loaded);
    match &report.server_cert {
        ServerCertOutcome::Reissued(ReissueReason::SanMismatch { had, want }) => {
            assert_eq!(had, &["DNS:localhost", "IP:127.0.0.1"]);
            assert_eq!(
                want,
                &["DNS:localhost", "DNS:tunnel.example.com", "IP:127.0.0.1"]
            );
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert!(report.to_string().contains("re-issued"), "{report}");
    assert_eq!(
        (fs::read(&p.ca_cert).unwrap(), fs::read(&p.ca_key).unwrap()),
        ca_before
    );
    assert_eq!(pki.ca_sha256_hex(), first.ca_sha256_hex());
    assert_ne!(fs::read(&p.server_key).unwrap(), key_before);
    assert_eq!(mode(&p.server_key), 0o600);
    let leaf = parse_cert_info(&fs::read(&p.server_cert).unwrap()).unwrap();
    assert_eq!(leaf.dns_sans, ["localhost", "tunnel.example.com"]);

    // Same SANs in another order and case, plus blanks: nothing to do.
    let same = spec(&[" TUNNEL.example.com", "localhost", ""], &["127.0.0.1"]);
    let (_, report) = Pki::load_or_init(&p, &same).unwrap();
    assert_eq!(report.server_cert, ServerCertOutcome::Loaded);
}

#[test]
fn server_cert_near_expiry_is_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    let spec = spec(&["localhost"], &[]);
    let now = OffsetDateTime::now_utc();
    // Issued 340 days ago: 25 days left.
    Pki::load_or_init_at(&p, &spec, now - Duration::days(340)).unwrap();
    let ca_before = fs::read(&p.ca_cert).unwrap();

    // 40 days before that expiry nothing happens...
    let (_, report) = Pki::load_or_init_at(&p, &spec, now - Duration::days(15)).unwrap();
    assert_eq!(report.server_cert, ServerCertOutcome::Loaded);
    // ...within 30 days it is re-issued.
    let (pki, report) = Pki::load_or_init(&p, &spec).unwrap();
    assert!(
        matches!(
            report.server_cert,
            ServerCertOutcome::Reissued(ReissueReason::NearExpiry { .. })
        ),
        "{report:?}"
    );
    assert_eq!(fs::read(&p.ca_cert).unwrap(), ca_before);
    assert!((pki.server_not_after() - now).whole_days() >= 364);
}

#[test]
fn refuses_to_create_a_ca_when_agent_certs_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    fs::create_dir_all(p.agent_cert_dir.join("agent-1")).unwrap();
    fs::write(p.agent_cert_dir.join("agent-1/agent-1-cert.pem"), "x").unwrap();

    let err = Pki::load_or_init(&p, &spec(&["localhost"], &[])).unwrap_err();
    assert!(
        matches!(err, PkiError::AgentCertsWithoutCa { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("lock") && msg.contains("agent-1-cert.pem"),
        "{msg}"
    );
    assert!(!p.ca_cert.exists() && !p.ca_key.exists());
}

#[test]
fn only_one_ca_file_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    Pki::load_or_init(&p, &spec(&["localhost"], &[])).unwrap();
    fs::remove_file(&p.ca_key).unwrap();
    let err = Pki::load_or_init(&p, &spec(&["localhost"], &[])).unwrap_err();
    assert!(matches!(err, PkiError::IncompletePair { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-key.pem"), "{err}");
}

#[test]
fn ca_key_of_another_ca_is_refused() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (pa, pb) = (paths(a.path()), paths(b.path()));
    Pki::load_or_init(&pa, &spec(&["localhost"], &[])).unwrap();
    Pki::load_or_init(&pb, &spec(&["localhost"], &[])).unwrap();
    fs::copy(&pb.ca_key, &pa.ca_key).unwrap();
    let err = Pki::load_or_init(&pa, &spec(&["localhost"], &[])).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn operator_supplied_server_cert_is_never_touched() {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    let dir = p.server_cert.parent().unwrap().to_path_buf();
    fs::create_dir_all(&dir).unwrap();
    let Some(_) = openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server-key.pem",
            "-out",
            "server-cert.pem",
            "-days",
            "10",
            "-subj",
            "/CN=public.example.org",
        ],
    ) else {
        return;
    };
    let cert_before = fs::read_to_string(&p.server_cert).unwrap();
    let key_before = fs::read_to_string(&p.server_key).unwrap();

    // Expiring in 10 days with other SANs: still not ours, so left alone.
    let (pki, report) = Pki::load_or_init(&p, &spec(&["localhost"], &[])).unwrap();
    assert_eq!(report.ca, CaOutcome::Generated);
    assert_eq!(report.server_cert, ServerCertOutcome::OperatorSupplied);
    assert_eq!(fs::read_to_string(&p.server_cert).unwrap(), cert_before);
    assert_eq!(fs::read_to_string(&p.server_key).unwrap(), key_before);
    assert_eq!(pki.server_cert_chain_pem(), cert_before);
    assert_eq!(pki.server_key_pem(), key_before);
}

/// A CA made by `openssl` (as an operator or the Go implementation would)
/// is adopted untouched, and what we sign with it verifies.
fn adopt_openssl_ca(keygen: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let p = paths(tmp.path());
    let ca_dir = p.ca_cert.parent().unwrap().to_path_buf();
    fs::create_dir_all(&ca_dir).unwrap();
    if openssl(&ca_dir, keygen).is_none() {
        return;
    }
    openssl(
        &ca_dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-out",
            "ca-cert.pem",
            "-days",
            "3650",
            "-subj",
            "/C=US/O=Go Corp/CN=Legacy CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE,pathlen:0",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    let ca_files = (fs::read(&p.ca_cert).unwrap(), fs::read(&p.ca_key).unwrap());
    let ca_der = pem_file_der(&p.ca_cert);

    let (pki, report) = Pki::load_or_init(&p, &spec(&["localhost"], &["127.0.0.1"])).unwrap();
    assert_eq!(report.ca, CaOutcome::Loaded);
    assert_eq!(report.server_cert, ServerCertOutcome::Generated);
    assert_eq!(
        (fs::read(&p.ca_cert).unwrap(), fs::read(&p.ca_key).unwrap()),
        ca_files
    );
    assert_eq!(pki.ca_sha256_hex(), sha256_fingerprint_hex(&ca_der));

    let leaf_der = pem_file_der(&p.server_cert);
    assert!(verify_issued_by(&leaf_der, &ca_der));
    let verify = openssl(
        tmp.path(),
        &[
            "verify",
            "-CAfile",
            p.ca_cert.to_str().unwrap(),
            "-purpose",
            "sslserver",
            p.server_cert.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(verify.trim_end().ends_with(": OK"), "{verify}");

    // An agent certificate from the adopted CA passes webpki, which compares
    // issuer and subject names byte for byte.
    let key = silo_pki::generate_key(silo_pki::KeyType::EcdsaP256).unwrap();
    let public_key = silo_pki::SubjectPublicKey::from_key_pair(&key).unwrap();
    let issued = pki
        .signer()
        .sign_agent(
            "agent-1",
            &public_key,
            std::time::Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    common::webpki_client_verify(&ca_der, &issued.der).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());

    // Second start: still untouched, server certificate loaded.
    let (_, report) = Pki::load_or_init(&p, &spec(&["localhost"], &["127.0.0.1"])).unwrap();
    assert_eq!(report.server_cert, ServerCertOutcome::Loaded);
}

#[test]
fn adopts_openssl_ca_with_sec1_ec_key() {
    adopt_openssl_ca(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca-key.pem",
    ]);
}

#[test]
fn adopts_openssl_ca_with_p384_sec1_key() {
    adopt_openssl_ca(&[
        "ecparam",
        "-name",
        "secp384r1",
        "-genkey",
        "-noout",
        "-out",
        "ca-key.pem",
    ]);
}

#[test]
fn adopts_openssl_ca_with_pkcs1_rsa_key() {
    adopt_openssl_ca(&["genrsa", "-traditional", "-out", "ca-key.pem", "2048"]);
}

#[test]
fn adopts_openssl_ca_with_pkcs8_key() {
    adopt_openssl_ca(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        "ca-key.pem",
    ]);
}
