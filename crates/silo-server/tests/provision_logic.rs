//! Provisioning logic against a real store (temp SQLite) and a real CA
//! (temp dir), without HTTP: keys, CSR signing, atomic consumption, the
//! same-key retry, revocation of older certificates, the legacy bundle.

use silo_pki::{CaPaths, CertSigner, KeyType, Pki, ServerCertSpec};
use silo_server::config::ServerConfig;
use silo_server::provision::{self, Ctx, ProvisionError, Settings, issue, keys, legacy};
use silo_store::{NewProvisionKey, Store};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

struct Env {
    _dir: tempfile::TempDir,
    store: Store,
    pki: Arc<Pki>,
    signer: Arc<silo_pki::LocalCaSigner>,
    settings: Settings,
}

impl Env {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(dir.path().join("silo.db"))
            .await
            .unwrap();
        let spec = ServerCertSpec {
            domain_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            key_type: KeyType::EcdsaP256,
        };
        let (pki, _) = Pki::load_or_init(&CaPaths::under_data_dir(dir.path()), &spec).unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let settings = Settings::from_config(&config);
        let signer = pki.signer();
        Self {
            _dir: dir,
            store,
            pki: Arc::new(pki),
            signer,
            settings,
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            store: &self.store,
            signer: Some(self.signer.as_ref()),
            settings: &self.settings,
        }
    }

    async fn key(&self, agent: &str) -> keys::CreatedKey {
        let now = OffsetDateTime::now_utc();
        keys::create_key(self.ctx(), agent, self.settings.key_ttl, "test", None, now)
            .await
            .unwrap()
    }

    async fn provision(
        &self,
        key: &str,
        csr: Option<&str>,
    ) -> Result<issue::Provisioned, ProvisionError> {
        issue::provision(self.ctx(), key, csr, CLIENT, OffsetDateTime::now_utc()).await
    }

    async fn key_status(&self, id: &str) -> String {
        let all = keys::list_keys(self.ctx(), true, OffsetDateTime::now_utc())
            .await
            .unwrap();
        all.into_iter()
            .find(|k| k.id == id)
            .map(|k| k.status.to_owned())
            .unwrap()
    }

    async fn actions(&self) -> Vec<String> {
        let events = self.store.list_audit_events(None, 1000).await.unwrap();
        events.into_iter().map(|e| e.action).collect()
    }
}

fn csr(agent: &str) -> (silo_pki::KeyPair, String) {
    let key = silo_pki::generate_key(KeyType::EcdsaP256).unwrap();
    let pem = silo_pki::generate_csr(agent, &key).unwrap();
    (key, pem)
}

fn unauthorized(r: Result<issue::Provisioned, ProvisionError>) -> &'static str {
    match r {
        Err(ProvisionError::Unauthorized(m)) => m,
        other => panic!("expected 401, got {other:?}"),
    }
}

#[tokio::test]
async fn csr_provisioning_issues_a_certificate_for_the_bound_agent() {
    let env = Env::new().await;
    let created = env.key("edge-1").await;
    assert!(created.key.starts_with("sk_") && created.key.len() == 67);
    assert_eq!(created.ca_sha256, env.pki.ca_sha256_hex());
    assert!(created.command.contains(&created.key) && created.command.contains(&created.ca_sha256));
    assert_eq!(env.key_status(&created.id).await, "active");

    // The subject of the CSR claims another agent: it is ignored.
    let (pair, pem) = csr("someone-else");
    let p = env.provision(&created.key, Some(&pem)).await.unwrap();
    assert_eq!(p.agent_id, "edge-1");
    assert!(p.key_pem.is_none());
    let der = silo_pki::parse_cert_info(p.cert_pem.as_bytes()).unwrap();
    assert_eq!(der.cn.as_deref(), Some("edge-1"));
    assert_eq!(der.uri_sans, vec!["silo://agent/edge-1".to_owned()]);
    let ours = silo_pki::SubjectPublicKey::from_key_pair(&pair)
        .unwrap()
        .sha256_hex();
    assert_eq!(der.public_key_sha256_hex, ours);
    let cert_der = pem_der(&p.cert_pem);
    assert!(silo_pki::verify_issued_by(&cert_der, env.pki.ca_cert_der()));
    assert_eq!(p.ca_cert_pem, env.pki.ca_cert_pem());

    assert_eq!(env.key_status(&created.id).await, "used");
    let certs = env.store.list_certificates(Some("edge-1")).await.unwrap();
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].source, "provision");
    let actions = env.actions().await;
    for a in [
        "provision_key.created",
        "certificate.issued",
        "provision.succeeded",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    // No secret in the audit trail.
    let events = env.store.list_audit_events(None, 100).await.unwrap();
    assert!(events.iter().all(|e| !e.detail.contains(&created.key[3..])));
}

#[tokio::test]
async fn garbage_csr_is_refused_and_the_key_survives() {
    let env = Env::new().await;
    let created = env.key("edge-2").await;
    for bad in [
        "garbage",
        "-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        match env.provision(&created.key, Some(bad)).await {
            Err(ProvisionError::BadRequest(m)) => assert!(m.starts_with("invalid CSR: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(env.key_status(&created.id).await, "active");
    let (_, pem) = csr("edge-2");
    env.provision(&created.key, Some(&pem)).await.unwrap();
}

#[tokio::test]
async fn reuse_gets_401_but_the_same_public_key_gets_the_same_certificate() {
    let env = Env::new().await;
    let created = env.key("edge-3").await;
    let (_, first) = csr("edge-3");
    let p1 = env.provision(&created.key, Some(&first)).await.unwrap();
    let (_, other) = csr("edge-3");
    assert_eq!(
        unauthorized(env.provision(&created.key, Some(&other)).await),
        "provision key already used"
    );
    let again = env.provision(&created.key, Some(&first)).await.unwrap();
    assert_eq!(again.cert_pem, p1.cert_pem);
    assert!(again.replayed);
    // Legacy (no CSR) always brings a new key: already used.
    assert_eq!(
        unauthorized(env.provision(&created.key, None).await),
        "provision key already used"
    );
    assert_eq!(
        env.store
            .list_certificates(Some("edge-3"))
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn expired_revoked_and_mistyped_keys_get_their_messages() {
    let env = Env::new().await;
    let now = OffsetDateTime::now_utc();
    let expired = keys::generate_key();
    env.store
        .insert_provision_key(&NewProvisionKey {
            id: expired.id.clone(),
            agent_id: "edge-4".into(),
            key_hash: expired.hash.clone(),
            created_at: now - time::Duration::hours(2),
            expires_at: now - time::Duration::hours(1),
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let (_, pem) = csr("edge-4");
    assert_eq!(
        unauthorized(env.provision(&expired.secret, Some(&pem)).await),
        "provision key expired"
    );

    let revoked = env.key("edge-4").await;
    let n = keys::revoke_keys(env.ctx(), "edge-4", "test", None, now)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        unauthorized(env.provision(&revoked.key, Some(&pem)).await),
        "provision key revoked"
    );
    let again = keys::revoke_keys(env.ctx(), "edge-4", "test", None, now).await;
    assert!(
        matches!(again, Err(ProvisionError::NotFound(_))),
        "{again:?}"
    );

    let mut typo = env.key("edge-4").await.key;
    typo.replace_range(10..11, if &typo[10..11] == "a" { "b" } else { "a" });
    assert_eq!(
        unauthorized(env.provision(&typo, Some(&pem)).await),
        "invalid provision key"
    );
    assert_eq!(
        unauthorized(env.provision("not-a-key", Some(&pem)).await),
        "invalid provision key"
    );

    let failures = env
        .store
        .list_audit_events(Some("edge-4"), 100)
        .await
        .unwrap();
    let failed: Vec<_> = failures
        .iter()
        .filter(|e| e.action == "provision.failed")
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "expired + revoked name the agent: {failures:?}"
    );
    assert!(
        failed
            .iter()
            .all(|e| e.remote_addr.as_deref() == Some("192.0.2.7"))
    );
    assert!(failed.iter().any(|e| e.detail.contains(&expired.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_racing_csrs_yield_exactly_one_certificate() {
    let env = Arc::new(Env::new().await);
    let created = env.key("edge-5").await;
    let csrs: Vec<String> = (0..20).map(|_| csr("edge-5").1).collect();
    let mut tasks = Vec::new();
    for pem in csrs.clone() {
        let (env, key) = (env.clone(), created.key.clone());
        tasks.push(tokio::spawn(async move {
            env.provision(&key, Some(&pem)).await
        }));
    }
    let mut winners = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(p) => winners.push((i, p)),
            Err(ProvisionError::Unauthorized("provision key already used")) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(
        env.store
            .list_certificates(Some("edge-5"))
            .await
            .unwrap()
            .len(),
        1
    );
    let (i, p) = &winners[0];
    let again = env.provision(&created.key, Some(&csrs[*i])).await.unwrap();
    assert_eq!(again.cert_pem, p.cert_pem);
}

#[tokio::test]
async fn provisioning_revokes_older_certificates_and_revoke_then_provision_works() {
    let env = Env::new().await;
    let (_, pem) = csr("edge-6");
    let first = env
        .provision(&env.key("edge-6").await.key, Some(&pem))
        .await
        .unwrap();
    let second = env
        .provision(&env.key("edge-6").await.key, Some(&pem))
        .await
        .unwrap();
    let info1 = silo_pki::parse_cert_info(first.cert_pem.as_bytes()).unwrap();
    let info2 = silo_pki::parse_cert_info(second.cert_pem.as_bytes()).unwrap();
    assert_eq!(second.revoked_serials, vec![info1.serial_hex.clone()]);
    let rev = env.store.load_revocations().await.unwrap();
    assert!(rev.is_revoked("edge-6", &info1.serial_hex, info1.not_before));
    assert!(!rev.is_revoked("edge-6", &info2.serial_hex, info2.not_before));

    // Revoke everything, then provision again at once: the new certificate
    // must not be born revoked (its notBefore is backdated 5 minutes).
    let now = OffsetDateTime::now_utc();
    let out = legacy::revoke_agent(env.ctx(), "edge-6", false, "test", None, now)
        .await
        .unwrap();
    assert_eq!(out.revoked_serials, vec![info2.serial_hex.clone()]);
    let third = env
        .provision(&env.key("edge-6").await.key, Some(&pem))
        .await
        .unwrap();
    let info3 = silo_pki::parse_cert_info(third.cert_pem.as_bytes()).unwrap();
    let rev = env.store.load_revocations().await.unwrap();
    assert!(rev.is_revoked("edge-6", &info2.serial_hex, info2.not_before));
    assert!(!rev.is_revoked("edge-6", &info3.serial_hex, info3.not_before));
    assert!(info3.not_before <= OffsetDateTime::now_utc());
}

/// A signer that always fails, to show the key survives a failed signing.
struct BrokenSigner(Arc<silo_pki::LocalCaSigner>);
impl CertSigner for BrokenSigner {
    fn sign_agent(
        &self,
        _: &str,
        _: &silo_pki::SubjectPublicKey,
        _: Duration,
        _: OffsetDateTime,
    ) -> Result<silo_pki::IssuedCert, silo_pki::PkiError> {
        Err(silo_pki::PkiError::KeyGeneration("HSM unplugged".into()))
    }
    fn ca_cert_pem(&self) -> &str {
        self.0.ca_cert_pem()
    }
    fn ca_cert_der(&self) -> &[u8] {
        self.0.ca_cert_der()
    }
}

#[tokio::test]
async fn a_failed_signing_leaves_the_key_usable() {
    let env = Env::new().await;
    let created = env.key("edge-7").await;
    let broken = BrokenSigner(env.pki.signer());
    let ctx = Ctx {
        store: &env.store,
        signer: Some(&broken),
        settings: &env.settings,
    };
    let (_, pem) = csr("edge-7");
    let r = issue::provision(
        ctx,
        &created.key,
        Some(&pem),
        CLIENT,
        OffsetDateTime::now_utc(),
    )
    .await;
    assert!(matches!(r, Err(ProvisionError::Pki(_))), "{r:?}");
    assert_eq!(env.key_status(&created.id).await, "active");
    env.provision(&created.key, Some(&pem)).await.unwrap();
}

#[tokio::test]
async fn tls_off_and_invalid_ids_are_400() {
    let env = Env::new().await;
    let off = Ctx {
        store: &env.store,
        signer: None,
        settings: &env.settings,
    };
    let now = OffsetDateTime::now_utc();
    let e = keys::create_key(off, "edge-8", env.settings.key_ttl, "t", None, now)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "TLS is not enabled on this server");
    let e = issue::provision(off, "sk_x", None, CLIENT, now)
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "TLS is not enabled on this server");
    for bad in ["../x", "a/b", "", &"x".repeat(65), "-a"] {
        let r = keys::create_key(env.ctx(), bad, env.settings.key_ttl, "t", None, now).await;
        assert!(matches!(r, Err(ProvisionError::BadRequest(_))), "{bad}");
        let r = keys::revoke_keys(env.ctx(), bad, "t", None, now).await;
        assert!(matches!(r, Err(ProvisionError::BadRequest(_))), "{bad}");
        let r = legacy::create_bundle(env.ctx(), bad, "t", None, now).await;
        assert!(matches!(r, Err(ProvisionError::BadRequest(_))), "{bad}");
        let r = legacy::read_bundle(env.ctx(), bad, now).await;
        assert!(matches!(r, Err(ProvisionError::BadRequest(_))), "{bad}");
        let r = legacy::revoke_agent(env.ctx(), bad, false, "t", None, now).await;
        assert!(matches!(r, Err(ProvisionError::BadRequest(_))), "{bad}");
    }
}

#[tokio::test]
async fn legacy_bundles_are_stored_0600_and_removed_on_revocation() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new().await;
    let now = OffsetDateTime::now_utc();
    let b = legacy::create_bundle(env.ctx(), "old-1", "t", None, now)
        .await
        .unwrap();
    assert_eq!(b.file_name, "old-1-certs.zip");
    let entries = provision::zip::read_stored(&b.zip).unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["old-1-cert.pem", "old-1-key.pem", "ca-cert.pem"]);
    let key_path = env.settings.agent_cert_dir.join("old-1/old-1-key.pem");
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = legacy::create_bundle(env.ctx(), "old-1", "t", None, now).await;
    assert!(
        matches!(again, Err(ProvisionError::Conflict(_))),
        "{again:?}"
    );
    let read = legacy::read_bundle(env.ctx(), "old-1", now).await.unwrap();
    assert_eq!(provision::zip::read_stored(&read.zip).unwrap(), entries);

    let out = legacy::revoke_agent(env.ctx(), "old-1", false, "t", None, now)
        .await
        .unwrap();
    assert_eq!(
        out.deleted_paths,
        ["old-1/old-1-cert.pem", "old-1/old-1-key.pem"]
    );
    assert_eq!(out.revoked_serials.len(), 1);
    assert!(!key_path.exists());
    let gone = legacy::read_bundle(env.ctx(), "old-1", now).await;
    assert!(matches!(gone, Err(ProvisionError::NotFound(_))));
    let unknown = legacy::revoke_agent(env.ctx(), "never-seen", false, "t", None, now).await;
    assert!(matches!(unknown, Err(ProvisionError::NotFound(_))));
    // After revocation a new bundle may be issued.
    legacy::create_bundle(env.ctx(), "old-1", "t", None, OffsetDateTime::now_utc())
        .await
        .unwrap();
}

#[tokio::test]
async fn cleanup_keeps_history_then_forgets_it() {
    let env = Env::new().await;
    let created = env.key("edge-9").await;
    let (_, pem) = csr("edge-9");
    env.provision(&created.key, Some(&pem)).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let kept = provision::cleanup::cleanup_once(&env.store, env.settings.history, now)
        .await
        .unwrap();
    assert_eq!(kept, 0);
    assert_eq!(
        keys::list_keys(env.ctx(), true, now).await.unwrap().len(),
        1
    );
    assert!(
        keys::list_keys(env.ctx(), false, now)
            .await
            .unwrap()
            .is_empty()
    );
    let later = now + time::Duration::days(31);
    let gone = provision::cleanup::cleanup_once(&env.store, env.settings.history, later)
        .await
        .unwrap();
    assert_eq!(gone, 1);
    // The audit trail outlives the key.
    assert!(
        env.actions()
            .await
            .iter()
            .any(|a| a == "provision.succeeded")
    );
}

#[tokio::test]
async fn a_csr_from_the_openssl_command_line_is_accepted() {
    let env = Env::new().await;
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-keyout", "k.pem", "-out", "r.csr", "-subj", "/CN=whatever"])
        .current_dir(dir.path())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("openssl req failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(_) => {
            eprintln!("SKIPPED: `openssl` is not on PATH");
            return;
        }
    }
    let pem = std::fs::read_to_string(dir.path().join("r.csr")).unwrap();
    let created = env.key("edge-10").await;
    let p = env.provision(&created.key, Some(&pem)).await.unwrap();
    assert_eq!(p.agent_id, "edge-10");
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
