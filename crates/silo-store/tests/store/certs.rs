//! Certificate registry and revocation rules.

use silo_store::{NewCertificate, Store, StoreError};
use time::OffsetDateTime;

use crate::harness::{T0, TestDb, secs, store_tests};

fn cert(serial: &str, agent: &str, not_before: OffsetDateTime) -> NewCertificate {
    NewCertificate {
        serial: serial.into(),
        agent_id: agent.into(),
        not_before,
        not_after: not_before + secs(90 * 86_400),
        sha256: format!("{serial:0>64}"),
        source: "provision".into(),
        pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
        created_at: not_before + secs(300),
    }
}

async fn insert(store: &Store, serial: &str, agent: &str, not_before: OffsetDateTime) {
    store
        .insert_certificate(&cert(serial, agent, not_before))
        .await
        .unwrap();
}

async fn registry_insert_get_list(db: TestDb) {
    let store = db.open().await;
    let stored = store
        .insert_certificate(&cert("0AF1", "edge-1", T0))
        .await
        .unwrap();
    // Serials are normalised to lowercase hex.
    assert_eq!(stored.serial, "0af1");
    assert_eq!((stored.not_before, stored.revoked_at), (T0, None));
    assert_eq!(
        store.get_certificate("0af1").await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(store.get_certificate("0AF1").await.unwrap(), Some(stored));
    assert_eq!(store.get_certificate("ff").await.unwrap(), None);

    let err = store
        .insert_certificate(&cert("0af1", "edge-2", T0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    insert(&store, "02", "edge-1", T0 + secs(60)).await;
    insert(&store, "03", "edge-2", T0 + secs(30)).await;
    let serials = |certs: Vec<silo_store::CertificateRecord>| -> Vec<String> {
        certs.into_iter().map(|c| c.serial).collect()
    };
    assert_eq!(
        serials(store.list_certificates(None).await.unwrap()),
        ["02", "03", "0af1"]
    );
    let edge1 = store.list_certificates(Some("edge-1")).await.unwrap();
    assert_eq!(serials(edge1), ["02", "0af1"]);
    assert!(
        store
            .list_certificates(Some("nobody"))
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

async fn latest_active_and_revoke_all_of_agent(db: TestDb) {
    let store = db.open().await;
    insert(&store, "01", "edge-1", T0).await;
    insert(&store, "02", "edge-1", T0 + secs(60)).await;
    insert(&store, "03", "edge-1", T0 + secs(120)).await;
    insert(&store, "99", "edge-2", T0).await;
    let now = T0 + secs(3600);
    let latest = store
        .latest_active_certificate("edge-1", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.serial, "03");

    // Provisioning keeps the new certificate and revokes the older ones.
    let revoked = store
        .revoke_agent_certificates("edge-1", now, Some("03"))
        .await
        .unwrap();
    assert_eq!(revoked, ["01", "02"]);
    assert_eq!(
        store
            .get_certificate("01")
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(now)
    );
    let latest = store
        .latest_active_certificate("edge-1", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.serial, "03");
    // Already revoked ones are not reported twice.
    let revoked = store
        .revoke_agent_certificates("edge-1", now + secs(1), None)
        .await
        .unwrap();
    assert_eq!(revoked, ["03"]);
    assert_eq!(
        store
            .latest_active_certificate("edge-1", now)
            .await
            .unwrap(),
        None
    );
    // Other agents are untouched.
    assert!(
        store
            .get_certificate("99")
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_none()
    );

    // Expired certificates are not active.
    let after_expiry = T0 + secs(91 * 86_400);
    assert_eq!(
        store
            .latest_active_certificate("edge-2", after_expiry)
            .await
            .unwrap(),
        None
    );
    store.close().await;
}

async fn revoke_by_serial(db: TestDb) {
    let store = db.open().await;
    insert(&store, "aa", "edge-1", T0).await;
    assert!(!store.is_revoked("edge-1", "aa", T0).await.unwrap());
    assert!(store.revoke_certificate("AA", T0 + secs(5)).await.unwrap());
    assert!(!store.revoke_certificate("aa", T0 + secs(6)).await.unwrap());
    assert!(matches!(
        store.revoke_certificate("bb", T0).await,
        Err(StoreError::NotFound)
    ));
    let record = store.get_certificate("aa").await.unwrap().unwrap();
    assert_eq!(record.revoked_at, Some(T0 + secs(5)));
    assert!(store.is_revoked("edge-1", "aa", T0).await.unwrap());
    assert!(store.is_revoked("edge-1", "AA", T0).await.unwrap());
    store.close().await;
}

async fn cutoff_revokes_unregistered_certificates(db: TestDb) {
    let store = db.open().await;
    let cutoff = T0 + secs(1000);
    assert_eq!(store.agent_revoked_before("edge-1").await.unwrap(), None);
    assert_eq!(
        store
            .set_agent_revoked_before("edge-1", cutoff)
            .await
            .unwrap(),
        cutoff
    );
    // An earlier cut-off arriving later never lowers the rule.
    assert_eq!(
        store.set_agent_revoked_before("edge-1", T0).await.unwrap(),
        cutoff
    );
    assert_eq!(
        store.agent_revoked_before("edge-1").await.unwrap(),
        Some(cutoff)
    );

    // A serial the registry never saw (issued by an earlier server).
    assert!(
        store
            .is_revoked("edge-1", "legacy01", cutoff - secs(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .is_revoked("edge-1", "legacy02", cutoff)
            .await
            .unwrap()
    );
    assert!(!store.is_revoked("edge-2", "legacy01", T0).await.unwrap());

    let later = cutoff + secs(500);
    assert_eq!(
        store
            .set_agent_revoked_before("edge-1", later)
            .await
            .unwrap(),
        later
    );
    assert!(
        store
            .is_revoked("edge-1", "legacy02", cutoff)
            .await
            .unwrap()
    );
    store.close().await;
}

async fn revoke_agent_is_one_step_and_snapshot_agrees(db: TestDb) {
    let store = db.open().await;
    insert(&store, "01", "edge-1", T0).await;
    insert(&store, "02", "edge-1", T0 + secs(10)).await;
    insert(&store, "03", "edge-2", T0).await;
    store.revoke_certificate("03", T0 + secs(20)).await.unwrap();

    let now = T0 + secs(100);
    let revoked = store.revoke_agent("edge-1", now, now).await.unwrap();
    assert_eq!(revoked, ["01", "02"]);
    assert_eq!(
        store.agent_revoked_before("edge-1").await.unwrap(),
        Some(now)
    );
    assert_eq!(
        store
            .latest_active_certificate("edge-1", now)
            .await
            .unwrap(),
        None
    );

    let snapshot = store.load_revocations().await.unwrap();
    let mut serials: Vec<_> = snapshot.revoked_serials.iter().cloned().collect();
    serials.sort();
    assert_eq!(serials, ["01", "02", "03"]);
    assert_eq!(snapshot.agent_cutoffs.get("edge-1"), Some(&now));
    assert_eq!(snapshot.agent_cutoffs.len(), 1);
    for (agent, serial, not_before) in [
        ("edge-1", "01", T0),
        ("edge-1", "unregistered", now - secs(1)),
        ("edge-1", "fresh", now),
        ("edge-2", "03", T0),
        ("edge-2", "04", T0),
    ] {
        let in_db = store.is_revoked(agent, serial, not_before).await.unwrap();
        assert_eq!(
            snapshot.is_revoked(agent, serial, not_before),
            in_db,
            "{agent}/{serial}"
        );
    }
    assert!(!snapshot.is_revoked("edge-1", "fresh", now));
    assert!(snapshot.is_revoked("edge-1", "unregistered", now - secs(1)));

    // A certificate issued after the cut-off is active again.
    insert(&store, "05", "edge-1", now + secs(1)).await;
    let latest = store
        .latest_active_certificate("edge-1", now + secs(2))
        .await
        .unwrap();
    assert_eq!(latest.map(|c| c.serial).as_deref(), Some("05"));
    store.close().await;
}

store_tests!(
    registry_insert_get_list,
    latest_active_and_revoke_all_of_agent,
    revoke_by_serial,
    cutoff_revokes_unregistered_certificates,
    revoke_agent_is_one_step_and_snapshot_agrees,
);
