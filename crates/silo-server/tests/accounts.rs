//! Accounts as api.md specifies them: the generated root account, login
//! and tokens, `/users`, validation, deleted and demoted users — one
//! scenario run against SQLite always and against PostgreSQL when
//! `SILO_TEST_POSTGRES_URL` is set.

use serde_json::{Value, json};
use silo_store::Role;
use silo_test_support::accounts::{json_request, jwt_claims, request};
use silo_test_support::client::get;
use silo_test_support::pg::PgSchema;
use silo_test_support::{TestServer, harness::ADMIN_KEY};
use std::os::unix::fs::PermissionsExt;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fn error_of(r: &silo_test_support::client::Reply) -> String {
    r.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not a JSON error: {}", r.text()))
        .to_owned()
}

/// Asserts status and exact error message.
#[track_caller]
fn assert_error(r: &silo_test_support::client::Reply, status: u16, message: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(error_of(r), message);
}

async fn accounts_scenario(server: &TestServer) {
    server.wait_ready().await;
    let r = get(server.api, "/ready").await;
    assert_eq!(r.json(), json!({"status": "ready"}));

    // First start: root with a random password in a 0600 file.
    let file = server.config.data_dir.join("initial-root-password");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "initial-root-password mode");
    let password = server.root_password();
    assert!(password.len() >= 16, "a strong generated password");
    let root = server.login("root", &password).await;
    let claims = jwt_claims(&root);
    assert_eq!(claims["username"], "root");
    assert_eq!(claims["role"], "Admin");
    assert!(claims["user_id"].is_i64(), "{claims}");
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 1440 * 60, "jwt.expiration_minutes default");
    let header = jwt_claims(&format!("x.{}", root.split('.').next().unwrap()));
    assert_eq!(header["alg"], "HS256");

    for (user, pass) in [("root", "wrong-password"), ("nobody", "whatever-1")] {
        let r = server.try_login(user, pass).await;
        assert_error(&r, 401, "invalid credentials");
    }

    let r = server.with_token("GET", "/users/me", &root, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let me = r.json();
    assert_eq!(
        (me["username"].as_str(), me["role"].as_str()),
        (Some("root"), Some("Admin"))
    );
    assert_eq!(me["id"], claims["user_id"]);
    let created = OffsetDateTime::parse(me["created_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert!(created <= OffsetDateTime::now_utc());

    // An Admin's token creates accounts; duplicates and bad input are refused.
    let alice_body = json!({"username": "alice", "password": "alice-password", "role": "User"});
    let r = server
        .with_token("POST", "/users", &root, Some(&alice_body))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let alice_id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        r.json(),
        json!({"id": alice_id, "username": "alice", "role": "User"})
    );
    let r = server
        .with_token("POST", "/users", &root, Some(&alice_body))
        .await;
    assert_error(&r, 409, "username already exists");
    let bad = [
        json!({"username": "al", "password": "long-enough"}),
        json!({"username": &"x".repeat(256), "password": "long-enough"}),
        json!({"username": "carol", "password": "short"}),
        json!({"username": "carol", "password": "long-enough", "role": "Superuser"}),
        json!({"username": "carol", "password": "long-enough", "role": "admin"}),
    ];
    for body in &bad {
        let r = server.with_token("POST", "/users", &root, Some(body)).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(!error_of(&r).is_empty());
    }
    let r = server
        .with_token("POST", "/users", &root, Some(&json!({"username": "carol"})))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("password"),
        "names the missing field: {}",
        r.text()
    );
    let body = json!({"username": 5, "password": "long-enough"});
    let r = server
        .with_token("POST", "/users", &root, Some(&body))
        .await;
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r).contains("username"),
        "names the field: {}",
        r.text()
    );

    // A User logs in and sees itself, but nothing of the admin's.
    let alice = server.login("alice", "alice-password").await;
    let r = server.with_token("GET", "/users/me", &alice, None).await;
    assert_eq!(r.json()["role"], "User");
    for (method, path) in [
        ("GET", "/users"),
        ("GET", "/agents"),
        ("DELETE", "/users/1"),
    ] {
        let r = server.with_token(method, path, &alice, None).await;
        assert_error(&r, 403, "forbidden");
    }
    let r = server
        .with_token("POST", "/users", &alice, Some(&alice_body))
        .await;
    assert_error(&r, 403, "forbidden");

    // Pagination (compat shape) and its bounds.
    let r = server
        .with_token("GET", "/users?page=1&page_size=1", &root, None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(
        (
            page["total"].as_u64(),
            page["page"].as_u64(),
            page["page_size"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    let r = server
        .with_token("GET", "/users?page=2&page_size=1", &root, None)
        .await;
    assert_eq!(r.json()["users"][0]["username"], "alice");
    let r = server.with_token("GET", "/users", &root, None).await;
    let page = r.json();
    assert_eq!(
        (page["page"].as_u64(), page["page_size"].as_u64()),
        (Some(1), Some(20))
    );
    let users = page["users"].as_array().unwrap();
    assert!(
        users
            .iter()
            .all(|u| u["created_at"].is_string() && u.get("password_hash").is_none())
    );
    for q in [
        "page_size=0",
        "page_size=101",
        "page_size=-1",
        "page=0",
        "page_size=abc",
        "page=x",
    ] {
        let r = server
            .with_token("GET", &format!("/users?{q}"), &root, None)
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.text());
        assert!(!error_of(&r).is_empty());
    }
    let r = server
        .with_token("GET", "/users?page_size=100", &root, None)
        .await;
    assert_eq!(r.status, 200);

    // A demoted admin's token is refused at once.
    let bob_id = server.create_user("bob", "bob-password", "Admin").await;
    let bob = server.login("bob", "bob-password").await;
    assert_eq!(
        server.with_token("GET", "/agents", &bob, None).await.status,
        200
    );
    let store = silo_server::store_setup::open_store(&server.config)
        .await
        .unwrap();
    assert!(store.set_user_role(bob_id, Role::User).await.unwrap());
    let r = server.with_token("GET", "/agents", &bob, None).await;
    assert_error(&r, 403, "forbidden");

    // A deleted user's token dies at once.
    let r = server
        .with_token("DELETE", &format!("/users/{alice_id}"), &root, None)
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    let r = server.with_token("GET", "/users/me", &alice, None).await;
    assert_error(&r, 401, "invalid token");
    let r = server
        .with_token("DELETE", &format!("/users/{alice_id}"), &root, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = server
        .with_token("DELETE", "/users/not-a-number", &root, None)
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        server.try_login("alice", "alice-password").await.status,
        401
    );

    // Deleting oneself; the last admin cannot (nobody could administer).
    let r = server.with_token("DELETE", "/users/me", &bob, None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = server.with_token("GET", "/users/me", &bob, None).await;
    assert_error(&r, 401, "invalid token");
    let r = server.with_token("DELETE", "/users/me", &root, None).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(
        server
            .with_token("GET", "/users/me", &root, None)
            .await
            .status,
        200
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_scenario_on_sqlite() {
    let mut server = TestServer::spawn().await;
    accounts_scenario(&server).await;
    // The database holds password hashes: private like the secrets.
    for file in ["silo.db", "silo.db-wal"] {
        let meta = std::fs::metadata(server.config.data_dir.join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_scenario_on_postgres() {
    let Some(pg) = PgSchema::create("accounts_scenario_on_postgres").await else {
        return;
    };
    let mut server = TestServer::spawn_with(|c| {
        c.db.url = pg.url.clone();
        c.db.schema = pg.schema.clone();
    })
    .await;
    accounts_scenario(&server).await;
    assert!(
        !server.config.data_dir.join("silo.db").exists(),
        "no SQLite file"
    );
    server.stop().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_only_when_allowed() {
    let body = json!({"username": "dave", "password": "dave-password"});
    let closed = TestServer::spawn().await;
    let r = json_request(closed.api, "POST", "/auth/register", &[], &body).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(error_of(&r).contains("registration"));

    let open = TestServer::spawn_with(|c| c.auth.allow_registration = true).await;
    let r = json_request(open.api, "POST", "/auth/register", &[], &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_i64().unwrap();
    assert_eq!(
        r.json(),
        json!({"id": id, "username": "dave", "role": "User"})
    );
    let r = json_request(open.api, "POST", "/auth/register", &[], &body).await;
    assert_error(&r, 409, "username already exists");
    // Registration cannot pick a role: the field is ignored.
    let sneaky = json!({"username": "erin", "password": "erin-password", "role": "Admin"});
    let r = json_request(open.api, "POST", "/auth/register", &[], &sneaky).await;
    assert_eq!(r.json()["role"], "User");
    for bad in [
        json!({"username": "ab", "password": "long-enough"}),
        json!({"username": "frank", "password": "short"}),
        json!({"username": "frank"}),
    ] {
        let r = json_request(open.api, "POST", "/auth/register", &[], &bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let token = open.login("dave", "dave-password").await;
    assert_eq!(jwt_claims(&token)["role"], "User");
    assert_eq!(
        open.with_token("GET", "/users/me", &token, None)
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_stops_the_start_naming_the_masked_url() {
    let mut server = TestServer::spawn_with(|c| {
        c.db.url = "postgres://silo:hunter2@127.0.0.1:1/silo".into();
    })
    .await;
    let outcome = server.task.take().unwrap().await.unwrap();
    let err = outcome.expect_err("the start must fail");
    let mut chain = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(
        chain.contains("postgres://silo:***@127.0.0.1:1/silo"),
        "{chain}"
    );
    assert!(!chain.contains("hunter2"), "{chain}");
    assert!(
        !server
            .config
            .data_dir
            .join("initial-root-password")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_key_and_tokens_are_both_admin_credentials() {
    let server = TestServer::spawn().await;
    let root = server.root_token().await;
    let key = [("x-api-key", ADMIN_KEY)];
    let r = request(server.api, "GET", "/users", &key, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = server.with_token("GET", "/users", &root, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let list: Value = r.json();
    assert_eq!(list["users"][0]["username"], "root");
}
