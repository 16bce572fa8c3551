//! Accounts.

use silo_store::{NewUser, Role, StoreError};

use crate::harness::{T0, TestDb, secs, store_tests};

fn new_user(name: &str, role: Role) -> NewUser {
    NewUser {
        username: name.into(),
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${name}"),
        role,
        created_at: T0,
    }
}

async fn user_crud_and_roles(db: TestDb) {
    let store = db.open().await;
    let root = store
        .create_user(&new_user("root", Role::Admin))
        .await
        .unwrap();
    let alice = store
        .create_user(&new_user("alice", Role::User))
        .await
        .unwrap();
    assert!(alice.id > root.id);
    assert_eq!(root.role, Role::Admin);
    assert_eq!(root.created_at, T0);

    assert_eq!(store.get_user(alice.id).await.unwrap(), Some(alice.clone()));
    assert_eq!(
        store.get_user_by_username("alice").await.unwrap(),
        Some(alice.clone())
    );
    // Usernames are case-sensitive as given.
    assert_eq!(store.get_user_by_username("Alice").await.unwrap(), None);
    assert_eq!(store.get_user(9_999_999).await.unwrap(), None);

    assert_eq!(store.count_admins().await.unwrap(), 1);
    assert!(store.set_user_role(alice.id, Role::Admin).await.unwrap());
    assert_eq!(store.count_admins().await.unwrap(), 2);
    assert_eq!(
        store.get_user(alice.id).await.unwrap().unwrap().role,
        Role::Admin
    );
    assert!(!store.set_user_role(9_999_999, Role::User).await.unwrap());

    assert!(
        store
            .set_user_password_hash(alice.id, "$argon2id$new")
            .await
            .unwrap()
    );
    let alice = store.get_user(alice.id).await.unwrap().unwrap();
    assert_eq!(alice.password_hash, "$argon2id$new");

    assert!(store.delete_user(alice.id).await.unwrap());
    assert!(!store.delete_user(alice.id).await.unwrap());
    assert_eq!(store.get_user(alice.id).await.unwrap(), None);
    assert_eq!(store.count_admins().await.unwrap(), 1);
    store.close().await;
}

async fn duplicate_username_is_a_conflict(db: TestDb) {
    let store = db.open().await;
    store
        .create_user(&new_user("bob", Role::User))
        .await
        .unwrap();
    let err = store
        .create_user(&new_user("bob", Role::Admin))
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict(message) => assert_eq!(message, "username already exists"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    // A different letter case is a different account.
    store
        .create_user(&new_user("Bob", Role::User))
        .await
        .unwrap();
    let (_, total) = store.list_users(1, 10).await.unwrap();
    assert_eq!(total, 2);
    store.close().await;
}

async fn pagination_reports_totals(db: TestDb) {
    let store = db.open().await;
    for i in 0..7 {
        let mut user = new_user(&format!("user{i}"), Role::User);
        user.created_at = T0 + secs(i);
        store.create_user(&user).await.unwrap();
    }
    let (page1, total) = store.list_users(1, 3).await.unwrap();
    assert_eq!(total, 7);
    let names = |users: &[silo_store::User]| -> Vec<String> {
        users.iter().map(|u| u.username.clone()).collect()
    };
    assert_eq!(names(&page1), ["user0", "user1", "user2"]);
    let (page3, total) = store.list_users(3, 3).await.unwrap();
    assert_eq!((names(&page3), total), (vec!["user6".to_string()], 7));
    let (page4, total) = store.list_users(4, 3).await.unwrap();
    assert!(page4.is_empty());
    assert_eq!(total, 7);
    // Page 0 is treated as the first page rather than failing.
    let (page0, _) = store.list_users(0, 2).await.unwrap();
    assert_eq!(names(&page0), ["user0", "user1"]);
    store.close().await;
}

async fn password_hash_never_in_debug(db: TestDb) {
    let store = db.open().await;
    let user = store
        .create_user(&new_user("carol", Role::User))
        .await
        .unwrap();
    let debug = format!("{user:?} {:?}", new_user("carol", Role::User));
    assert!(!debug.contains("argon2"), "{debug}");
    assert!(debug.contains("carol"));
    store.close().await;
}

store_tests!(
    user_crud_and_roles,
    duplicate_username_is_a_conflict,
    pagination_reports_totals,
    password_hash_never_in_debug,
);
