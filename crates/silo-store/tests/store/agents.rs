//! Known agents and sticky ports.

use silo_store::StoreError;

use crate::harness::{T0, TestDb, secs, store_tests};

async fn upsert_creates_then_refreshes(db: TestDb) {
    let store = db.open().await;
    let first = store
        .upsert_agent("Edge-1", "native", Some("10.0.0.1:4000"), T0)
        .await
        .unwrap();
    assert_eq!(first.agent_id, "Edge-1");
    assert_eq!(
        (first.first_seen, first.last_seen, first.port),
        (T0, T0, None)
    );
    store.set_agent_port("Edge-1", Some(8100)).await.unwrap();

    let later = T0 + secs(60);
    let again = store
        .upsert_agent("Edge-1", "legacy", Some("10.0.0.2:4001"), later)
        .await
        .unwrap();
    assert_eq!((again.first_seen, again.last_seen), (T0, later));
    assert_eq!(again.protocol, "legacy");
    assert_eq!(again.last_remote_addr.as_deref(), Some("10.0.0.2:4001"));
    // Reconnecting keeps the sticky port.
    assert_eq!(again.port, Some(8100));

    assert!(store.touch_agent("Edge-1", later + secs(5)).await.unwrap());
    assert!(!store.touch_agent("ghost", later).await.unwrap());
    let got = store.get_agent("Edge-1").await.unwrap().unwrap();
    assert_eq!(got.last_seen, later + secs(5));
    assert_eq!(store.get_agent("edge-1").await.unwrap(), None);
    let found = store
        .find_agent_ignore_case("EDGE-1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.agent_id, "Edge-1");
    store.close().await;
}

async fn ids_differing_only_in_case_conflict(db: TestDb) {
    let store = db.open().await;
    store
        .upsert_agent("edge-1", "native", None, T0)
        .await
        .unwrap();
    let err = store
        .upsert_agent("EDGE-1", "native", None, T0 + secs(1))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(message) => assert!(message.contains("edge-1"), "{message}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // The existing record is untouched by the refused upsert.
    let agents = store.list_agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (agents[0].agent_id.as_str(), agents[0].last_seen),
        ("edge-1", T0)
    );
    store.close().await;
}

async fn sticky_port_moves_between_agents(db: TestDb) {
    let store = db.open().await;
    for id in ["a", "b", "c"] {
        store.upsert_agent(id, "native", None, T0).await.unwrap();
    }
    assert_eq!(store.set_agent_port("a", Some(8100)).await.unwrap(), None);
    assert_eq!(store.set_agent_port("b", Some(8101)).await.unwrap(), None);
    // Re-assigning the same port to its holder is a no-op, not a move.
    assert_eq!(store.set_agent_port("a", Some(8100)).await.unwrap(), None);
    // Taking a held port clears it at the previous holder atomically.
    assert_eq!(
        store.set_agent_port("c", Some(8100)).await.unwrap(),
        Some("a".into())
    );
    assert_eq!(store.get_agent("a").await.unwrap().unwrap().port, None);
    assert_eq!(
        store.get_agent("c").await.unwrap().unwrap().port,
        Some(8100)
    );

    let ports = store.agent_ports().await.unwrap();
    assert_eq!(ports.len(), 2);
    assert_eq!((ports.get("b"), ports.get("c")), (Some(&8101), Some(&8100)));

    assert_eq!(store.set_agent_port("b", None).await.unwrap(), None);
    assert_eq!(store.get_agent("b").await.unwrap().unwrap().port, None);
    assert!(matches!(
        store.set_agent_port("ghost", Some(8100)).await,
        Err(StoreError::NotFound)
    ));
    // The failed assignment rolled back: c still holds its port.
    assert_eq!(
        store.get_agent("c").await.unwrap().unwrap().port,
        Some(8100)
    );
    store.close().await;
}

async fn delete_forgets_agent_and_port(db: TestDb) {
    let store = db.open().await;
    store
        .upsert_agent("gone", "native", None, T0)
        .await
        .unwrap();
    store.set_agent_port("gone", Some(8150)).await.unwrap();
    assert!(store.delete_agent("gone").await.unwrap());
    assert!(!store.delete_agent("gone").await.unwrap());
    assert_eq!(store.get_agent("gone").await.unwrap(), None);
    assert!(store.agent_ports().await.unwrap().is_empty());
    // The id (in any case) is free again and the port can be reused.
    store
        .upsert_agent("GONE", "native", None, T0)
        .await
        .unwrap();
    store
        .upsert_agent("other", "native", None, T0)
        .await
        .unwrap();
    assert_eq!(
        store.set_agent_port("other", Some(8150)).await.unwrap(),
        None
    );
    let ids: Vec<_> = store
        .list_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.agent_id)
        .collect();
    assert_eq!(ids, ["GONE", "other"]);
    store.close().await;
}

store_tests!(
    upsert_creates_then_refreshes,
    ids_differing_only_in_case_conflict,
    sticky_port_moves_between_agents,
    delete_forgets_agent_and_port,
);
