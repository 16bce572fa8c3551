//! Provision keys: exactly-once consumption and lifecycle.

use std::sync::Arc;
use std::time::Duration;

use silo_store::{ConsumeOutcome, KeyStatus, NewProvisionKey, Store};
use tokio::sync::Barrier;

use crate::harness::{T0, TestDb, secs, store_tests};

fn hash(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn pubkey(n: usize) -> String {
    format!("{n:064x}")
}

async fn insert_key(store: &Store, n: u8, agent: &str, ttl_secs: i64) -> NewProvisionKey {
    let key = NewProvisionKey {
        id: format!("{n:012x}"),
        agent_id: agent.into(),
        key_hash: hash(n),
        created_at: T0 + secs(i64::from(n)),
        expires_at: T0 + secs(ttl_secs),
        created_by: "admin-key".into(),
    };
    let stored = store.insert_provision_key(&key).await.unwrap();
    assert_eq!(stored.status(T0), KeyStatus::Active);
    assert_eq!(stored.used_at, None);
    key
}

async fn concurrent_consumers_exactly_one_wins(db: TestDb) {
    const RACERS: usize = 20;
    let store = db.open().await;
    insert_key(&store, 1, "edge-1", 3600).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let (key_hash, pk) = (hash(1), pubkey(i));
                let outcome = store
                    .consume_provision_key(&key_hash, T0 + secs(10), &pk)
                    .await;
                (i, outcome.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    let mut losers = 0;
    for task in tasks {
        match task.await.unwrap() {
            (i, ConsumeOutcome::Consumed(key)) => {
                assert_eq!(
                    key.consumed_by_pubkey_sha256.as_deref(),
                    Some(pubkey(i).as_str())
                );
                assert_eq!(key.used_at, Some(T0 + secs(10)));
                winners.push(i);
            }
            (_, ConsumeOutcome::AlreadyUsed { .. }) => losers += 1,
            (_, other) => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one consumer must win: {winners:?}"
    );
    assert_eq!(losers, RACERS - 1);
    let key = store.get_provision_key(&hash(1)).await.unwrap().unwrap();
    assert_eq!(key.consumed_by_pubkey_sha256, Some(pubkey(winners[0])));
    store.close().await;
}

async fn refusals_are_classified(db: TestDb) {
    let store = db.open().await;
    insert_key(&store, 1, "edge-1", 60).await;
    insert_key(&store, 2, "edge-2", 3600).await;
    insert_key(&store, 3, "edge-3", 3600).await;

    let outcome = store
        .consume_provision_key(&hash(9), T0, &pubkey(1))
        .await
        .unwrap();
    assert_eq!(outcome, ConsumeOutcome::NotFound);

    // Expiry is exclusive: at expires_at the key is already expired.
    let outcome = store
        .consume_provision_key(&hash(1), T0 + secs(60), &pubkey(1))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, ConsumeOutcome::Expired(key) if key.id == "000000000001"),
        "{outcome:?}"
    );

    assert_eq!(
        store
            .revoke_provision_keys("edge-2", T0 + secs(5))
            .await
            .unwrap(),
        1
    );
    let outcome = store
        .consume_provision_key(&hash(2), T0 + secs(6), &pubkey(1))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, ConsumeOutcome::Revoked(key) if key.revoked_at == Some(T0 + secs(5)))
    );

    let won = store
        .consume_provision_key(&hash(3), T0 + secs(7), &pubkey(1))
        .await
        .unwrap();
    assert!(matches!(won, ConsumeOutcome::Consumed(_)));
    assert!(
        store
            .record_provision_cert(&hash(3), "ABCDEF01")
            .await
            .unwrap()
    );
    // Used wins over expired: a retry after expiry still learns who won.
    for (at, who) in [(T0 + secs(8), pubkey(2)), (T0 + secs(7200), pubkey(1))] {
        match store
            .consume_provision_key(&hash(3), at, &who)
            .await
            .unwrap()
        {
            ConsumeOutcome::AlreadyUsed {
                key,
                used_at,
                pubkey_sha256,
                issued_cert_serial,
            } => {
                assert_eq!(used_at, T0 + secs(7));
                assert_eq!(pubkey_sha256, Some(pubkey(1)));
                assert_eq!(issued_cert_serial.as_deref(), Some("abcdef01"));
                assert_eq!(key.agent_id, "edge-3");
            }
            other => panic!("expected AlreadyUsed, got {other:?}"),
        }
    }
    // The key hash never shows in Debug output (only the public id).
    assert!(!format!("{won:?}").contains(&hash(3)));
    store.close().await;
}

async fn release_after_failed_signing_makes_key_consumable(db: TestDb) {
    let store = db.open().await;
    insert_key(&store, 1, "edge-1", 3600).await;
    let won = store
        .consume_provision_key(&hash(1), T0, &pubkey(1))
        .await
        .unwrap();
    assert!(matches!(won, ConsumeOutcome::Consumed(_)));
    // Only the consumer's own public key may release it.
    assert!(
        !store
            .release_provision_key(&hash(1), &pubkey(2))
            .await
            .unwrap()
    );
    assert!(
        store
            .release_provision_key(&hash(1), &pubkey(1))
            .await
            .unwrap()
    );
    assert!(
        !store
            .release_provision_key(&hash(1), &pubkey(1))
            .await
            .unwrap()
    );
    let key = store.get_provision_key(&hash(1)).await.unwrap().unwrap();
    assert_eq!(
        (key.used_at, key.consumed_by_pubkey_sha256.as_deref()),
        (None, None)
    );
    assert_eq!(key.status(T0), KeyStatus::Active);

    let won = store
        .consume_provision_key(&hash(1), T0 + secs(1), &pubkey(2))
        .await
        .unwrap();
    assert!(matches!(won, ConsumeOutcome::Consumed(_)));
    // Once a certificate is recorded the consumption is final.
    assert!(store.record_provision_cert(&hash(1), "01").await.unwrap());
    assert!(
        !store
            .release_provision_key(&hash(1), &pubkey(2))
            .await
            .unwrap()
    );
    let outcome = store
        .consume_provision_key(&hash(1), T0 + secs(2), &pubkey(2))
        .await
        .unwrap();
    assert!(matches!(outcome, ConsumeOutcome::AlreadyUsed { .. }));
    // Recording a certificate needs a consumed key.
    insert_key(&store, 2, "edge-2", 3600).await;
    assert!(!store.record_provision_cert(&hash(2), "02").await.unwrap());
    assert!(!store.record_provision_cert(&hash(9), "03").await.unwrap());
    store.close().await;
}

async fn listing_reports_statuses(db: TestDb) {
    let store = db.open().await;
    insert_key(&store, 1, "a", 3600).await; // stays active
    insert_key(&store, 2, "b", 3600).await; // used
    insert_key(&store, 3, "c", 100).await; // expires
    insert_key(&store, 4, "d", 3600).await; // revoked
    let now = T0 + secs(200);
    store
        .consume_provision_key(&hash(2), now, &pubkey(1))
        .await
        .unwrap();
    assert_eq!(store.revoke_provision_keys("d", now).await.unwrap(), 1);
    // Revoking again finds nothing active.
    assert_eq!(store.revoke_provision_keys("d", now).await.unwrap(), 0);

    let active = store.list_provision_keys(now, false).await.unwrap();
    let ids: Vec<_> = active
        .iter()
        .map(|(k, s)| (k.agent_id.as_str(), *s))
        .collect();
    assert_eq!(ids, [("a", KeyStatus::Active)]);

    let all = store.list_provision_keys(now, true).await.unwrap();
    // Newest first (created_at = T0 + n).
    let all: Vec<_> = all
        .iter()
        .map(|(k, s)| (k.agent_id.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        all,
        [
            ("d", "revoked"),
            ("c", "expired"),
            ("b", "used"),
            ("a", "active")
        ]
    );
    store.close().await;
}

async fn cleanup_removes_only_old_inactive_keys(db: TestDb) {
    let store = db.open().await;
    let day = 86_400;
    insert_key(&store, 1, "active", 40 * day).await;
    insert_key(&store, 2, "used-old", 40 * day).await;
    insert_key(&store, 3, "used-recent", 40 * day).await;
    insert_key(&store, 4, "expired-old", day).await;
    insert_key(&store, 5, "expired-recent", 30 * day).await;
    insert_key(&store, 6, "revoked-old", 40 * day).await;
    store
        .consume_provision_key(&hash(2), T0 + secs(day), &pubkey(1))
        .await
        .unwrap();
    store
        .consume_provision_key(&hash(3), T0 + secs(35 * day), &pubkey(1))
        .await
        .unwrap();
    store
        .revoke_provision_keys("revoked-old", T0 + secs(2 * day))
        .await
        .unwrap();

    let now = T0 + secs(36 * day);
    let history = Duration::from_secs(10 * 86_400);
    assert_eq!(store.cleanup_provision_keys(now, history).await.unwrap(), 3);
    let mut left: Vec<_> = store
        .list_provision_keys(now, true)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.agent_id)
        .collect();
    left.sort();
    assert_eq!(left, ["active", "expired-recent", "used-recent"]);
    assert_eq!(store.cleanup_provision_keys(now, history).await.unwrap(), 0);
    store.close().await;
}

async fn duplicate_key_id_or_hash_is_a_conflict(db: TestDb) {
    let store = db.open().await;
    let key = insert_key(&store, 1, "edge", 60).await;
    let same_hash = NewProvisionKey {
        id: "other".into(),
        ..key.clone()
    };
    let same_id = NewProvisionKey {
        key_hash: hash(7),
        ..key
    };
    for dup in [same_hash, same_id] {
        let err = store.insert_provision_key(&dup).await.unwrap_err();
        assert!(
            matches!(err, silo_store::StoreError::Conflict(_)),
            "{err:?}"
        );
    }
    store.close().await;
}

store_tests!(
    concurrent_consumers_exactly_one_wins,
    refusals_are_classified,
    release_after_failed_signing_makes_key_consumable,
    listing_reports_statuses,
    cleanup_removes_only_old_inactive_keys,
    duplicate_key_id_or_hash_is_a_conflict,
);
