//! Provisioning logic against a real store and CA, without HTTP: keys,
//! CSR signing, atomic consumption, the same-key retry, revocation of
//! older certificates, a failed signing.

mod logic_support;

use logic_support::*;
use silo_pki::CertSigner;
use silo_server::provision::{Ctx, ProvisionError, issue, keys, legacy};
use silo_store::NewProvisionKey;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

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
