//! Audit trail.

use silo_store::{MAX_AUDIT_LIMIT, NewAuditEvent};

use crate::harness::{T0, TestDb, store_tests};

fn event(action: &str, agent: Option<&str>) -> NewAuditEvent {
    NewAuditEvent {
        // Same instant for all: ordering must come from insertion order.
        at: T0,
        actor: "admin-key".into(),
        action: action.into(),
        agent_id: agent.map(Into::into),
        remote_addr: Some("192.0.2.7".into()),
        detail: r#"{"key_id":"0123456789ab"}"#.into(),
    }
}

async fn newest_first_with_filter_and_limit(db: TestDb) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for (action, agent) in [
        ("provision_key.created", Some("edge-1")),
        ("provision.failed", None),
        ("provision.succeeded", Some("edge-1")),
        ("agent.connected", Some("edge-2")),
        ("certificate.revoked", Some("edge-1")),
    ] {
        ids.push(
            store
                .append_audit_event(&event(action, agent))
                .await
                .unwrap(),
        );
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let all = store.list_audit_events(None, 100).await.unwrap();
    let actions: Vec<_> = all.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "certificate.revoked",
            "agent.connected",
            "provision.succeeded",
            "provision.failed",
            "provision_key.created"
        ]
    );
    let first = &all[4];
    assert_eq!(first.id, ids[0]);
    assert_eq!((first.at, first.actor.as_str()), (T0, "admin-key"));
    assert_eq!(first.remote_addr.as_deref(), Some("192.0.2.7"));
    assert_eq!(first.detail, r#"{"key_id":"0123456789ab"}"#);
    assert_eq!(all[3].agent_id, None);

    let edge1 = store.list_audit_events(Some("edge-1"), 100).await.unwrap();
    let actions: Vec<_> = edge1.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "certificate.revoked",
            "provision.succeeded",
            "provision_key.created"
        ]
    );

    let limited = store.list_audit_events(Some("edge-1"), 2).await.unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].action, "certificate.revoked");
    // Out-of-range limits are clamped, not errors.
    assert_eq!(store.list_audit_events(None, 0).await.unwrap().len(), 1);
    assert_eq!(
        store
            .list_audit_events(None, MAX_AUDIT_LIMIT + 5)
            .await
            .unwrap()
            .len(),
        5
    );
    assert!(
        store
            .list_audit_events(Some("nobody"), 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
}

store_tests!(newest_first_with_filter_and_limit);
