//! Legacy certificate bundles, revocation by agent, cleanup, TLS off and
//! invalid ids, and a CSR from the openssl command line — against a real
//! store and CA, without HTTP.

mod logic_support;

use logic_support::*;
use silo_server::provision::{self, Ctx, ProvisionError, issue, keys, legacy};
use time::OffsetDateTime;

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
    unzip_accepts(&b.zip);
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

/// The archive is read by the standard `unzip` tool (CRCs, directory).
fn unzip_accepts(zip: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.zip");
    std::fs::write(&path, zip).unwrap();
    match std::process::Command::new("unzip")
        .arg("-t")
        .arg(&path)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "unzip -t: {}",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(_) => eprintln!("SKIPPED: `unzip` is not on PATH"),
    }
}
