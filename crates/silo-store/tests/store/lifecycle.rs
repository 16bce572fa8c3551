//! Opening, migrations, schema-version guard, durability across reopen.

use silo_store::{
    NewAuditEvent, NewCertificate, NewProvisionKey, NewUser, Role, Store, StoreError,
};

use crate::harness::{Kind, T0, TestDb, secs, store_tests};

async fn migrations_are_idempotent_on_reopen(db: TestDb) {
    let store = db.open().await;
    assert_eq!(
        store.backend_name(),
        if db.kind == Kind::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    store.ping().await.unwrap();
    store.close().await;
    for _ in 0..3 {
        let store = db.open().await;
        store.ping().await.unwrap();
        assert!(store.list_agents().await.unwrap().is_empty());
        store.close().await;
    }
}

async fn schema_newer_than_binary_is_refused(db: TestDb) {
    db.open().await.close().await;
    let fake = match db.kind {
        Kind::Sqlite => {
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (20991231000000, 'from the future', 1, X'00', 0)"
        }
        Kind::Postgres => {
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (20991231000000, 'from the future', true, '\\x00'::bytea, 0)"
        }
    };
    db.exec_raw(fake).await;
    let err = db
        .try_open()
        .await
        .expect_err("newer schema must be refused");
    assert!(
        matches!(
            err,
            StoreError::SchemaTooNew {
                found: 20991231000000,
                supported: 1
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "database schema version 20991231000000 is newer than this binary supports (1); upgrade silo-proxy"
    );
}

async fn data_survives_close_and_reopen(db: TestDb) {
    let store = db.open().await;
    let user = store
        .create_user(&NewUser {
            username: "root".into(),
            password_hash: "$argon2id$v=19$x".into(),
            role: Role::Admin,
            created_at: T0,
        })
        .await
        .unwrap();
    store
        .insert_provision_key(&NewProvisionKey {
            id: "0123456789ab".into(),
            agent_id: "edge-1".into(),
            key_hash: "aa".repeat(32),
            created_at: T0,
            expires_at: T0 + secs(3600),
            created_by: "admin-key".into(),
        })
        .await
        .unwrap();
    store
        .insert_certificate(&NewCertificate {
            serial: "0a0b".into(),
            agent_id: "edge-1".into(),
            not_before: T0,
            not_after: T0 + secs(86_400),
            sha256: "bb".repeat(32),
            source: "provision".into(),
            pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            created_at: T0,
        })
        .await
        .unwrap();
    store.set_agent_revoked_before("edge-0", T0).await.unwrap();
    store
        .upsert_agent("edge-1", "native", Some("10.0.0.1:5000"), T0)
        .await
        .unwrap();
    store.set_agent_port("edge-1", Some(8101)).await.unwrap();
    let event = NewAuditEvent {
        at: T0,
        actor: "system".into(),
        action: "agent.connected".into(),
        agent_id: Some("edge-1".into()),
        remote_addr: None,
        detail: "{}".into(),
    };
    store.append_audit_event(&event).await.unwrap();
    store.close().await;

    let store = db.open().await;
    assert_eq!(
        store.get_user_by_username("root").await.unwrap(),
        Some(user)
    );
    let key = store
        .get_provision_key(&"aa".repeat(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (key.id.as_str(), key.expires_at),
        ("0123456789ab", T0 + secs(3600))
    );
    assert_eq!(
        store
            .get_certificate("0A0B")
            .await
            .unwrap()
            .unwrap()
            .agent_id,
        "edge-1"
    );
    assert_eq!(
        store.agent_revoked_before("edge-0").await.unwrap(),
        Some(T0)
    );
    assert_eq!(
        store.agent_ports().await.unwrap().get("edge-1"),
        Some(&8101)
    );
    let events = store.list_audit_events(None, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "agent.connected");
    store.close().await;
}

async fn clones_share_one_database(db: TestDb) {
    let store = db.open().await;
    let clone = store.clone();
    let handle = tokio::spawn(async move {
        clone
            .upsert_agent("from-task", "native", None, T0)
            .await
            .unwrap();
    });
    handle.await.unwrap();
    assert!(store.get_agent("from-task").await.unwrap().is_some());
    store.close().await;
}

store_tests!(
    migrations_are_idempotent_on_reopen,
    schema_newer_than_binary_is_refused,
    data_survives_close_and_reopen,
    clones_share_one_database,
);

// Backend-independent checks of URL handling; none needs a live server.

#[tokio::test]
async fn unreachable_postgres_names_url_with_password_masked() {
    let err = Store::open("postgres://silo:hunter2@127.0.0.1:1/silo", "public")
        .await
        .expect_err("nothing listens on port 1");
    let message = err.to_string();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        message.contains("postgres://silo:***@127.0.0.1:1/silo"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_config_errors() {
    for url in [
        "mysql://db/x",
        "sqlite::memory:",
        "",
        "sqlite://file?mode=memory",
    ] {
        let err = Store::open(url, "").await.expect_err(url);
        assert!(matches!(err, StoreError::Config(_)), "{url}: {err:?}");
    }
    let err = Store::open("postgres://u:pw@127.0.0.1:1/x", "bad-name; DROP")
        .await
        .expect_err("schema name must be validated");
    assert!(matches!(err, StoreError::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("pw@"), "{err}");
}

#[tokio::test]
async fn sqlite_file_is_created_with_its_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a").join("b").join("silo.db");
    let store = Store::open_sqlite_file(&path).await.unwrap();
    assert!(path.exists());
    assert_eq!(store.backend_name(), "sqlite");
    store.close().await;
    // Reopening through the URL form finds the same, already migrated file.
    let store = Store::open(&format!("sqlite://{}", path.display()), "ignored")
        .await
        .unwrap();
    store.ping().await.unwrap();
    store.close().await;
}
