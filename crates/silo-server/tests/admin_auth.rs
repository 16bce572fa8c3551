//! The admin middleware's statuses and messages (api.md "Auth"), the login
//! failure limit per client address, and malformed or oversized requests:
//! every error a JSON `{"error": ...}`.

use serde_json::json;
use silo_server::config::Secret;
use silo_test_support::TestServer;
use silo_test_support::accounts::{json_request, read_secret, request};
use silo_test_support::client::Reply;
use silo_test_support::harness::ADMIN_KEY;

#[track_caller]
fn assert_error(r: &Reply, status: u16, message: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text());
    assert_eq!(r.json()["error"], message, "{}", r.text());
}

/// A correctly signed token whose `exp` has passed.
fn expired_token(server: &TestServer, user_id: i64) -> String {
    let secret = read_secret(&server.config.data_dir, "jwt-secret");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"user_id": user_id, "username": "root", "role": "Admin",
                        "iat": now - 7200, "exp": now - 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_api_md_statuses() {
    let server = TestServer::spawn().await;
    let root = server.root_token().await;
    let api = server.api;
    for path in ["/agents", "/users"] {
        let r = request(api, "GET", path, &[], "").await;
        assert_error(&r, 401, "Missing API key");
        let r = request(api, "GET", path, &[("x-api-key", "wrong")], "").await;
        assert_error(&r, 401, "Invalid API key");
        let r = request(api, "GET", path, &[("authorization", "Basic cm9vdDpy")], "").await;
        assert_error(&r, 401, "missing or invalid authorization header");
        let r = request(api, "GET", path, &[("authorization", "Bearer")], "").await;
        assert_error(&r, 401, "missing or invalid authorization header");
        let r = request(
            api,
            "GET",
            path,
            &[("authorization", "Bearer not.a.jwt")],
            "",
        )
        .await;
        assert_error(&r, 401, "invalid token");
        let user_id = silo_test_support::accounts::jwt_claims(&root)["user_id"]
            .as_i64()
            .unwrap();
        let r = server
            .with_token("GET", path, &expired_token(&server, user_id), None)
            .await;
        assert_error(&r, 401, "invalid token");
        let r = request(api, "GET", path, &[("x-api-key", ADMIN_KEY)], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            server.with_token("GET", path, &root, None).await.status,
            200
        );
    }
    // Nothing was changed by refused requests.
    let body = json!({"username": "mallory", "password": "mallory-pass"});
    let r = json_request(api, "POST", "/users", &[("x-api-key", "wrong")], &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        server.try_login("mallory", "mallory-pass").await.status,
        401
    );

    // `/users/me` wants a token; the admin key is not a user.
    let r = request(api, "GET", "/users/me", &[("x-api-key", ADMIN_KEY)], "").await;
    assert_error(&r, 401, "missing or invalid authorization header");
    let r = request(api, "DELETE", "/users/me", &[], "").await;
    assert_error(&r, 401, "missing or invalid authorization header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_the_admin_api_is_503_but_admin_tokens_work() {
    let server = TestServer::spawn_with(|c| {
        c.http.admin_api_key = Secret::default();
        c.http.generate_admin_api_key = false;
    })
    .await;
    let root = server.root_token().await;
    let api = server.api;
    let r = request(api, "GET", "/agents", &[], "").await;
    assert_error(&r, 503, "Admin API is not configured");
    let r = request(api, "GET", "/agents", &[("x-api-key", "anything")], "").await;
    assert_error(&r, 503, "Admin API is not configured");
    assert!(!server.config.data_dir.join("admin-api-key").exists());
    assert_eq!(
        server
            .with_token("GET", "/agents", &root, None)
            .await
            .status,
        200
    );
    let r = request(api, "GET", "/agents", &[("authorization", "Bearer x")], "").await;
    assert_error(&r, 401, "invalid token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_limited_per_client_address() {
    let server = TestServer::spawn_with(|c| c.auth.login_max_failures_per_minute = 3).await;
    let password = {
        server.wait_ready().await;
        server.root_password()
    };
    for _ in 0..3 {
        assert_eq!(server.try_login("root", "wrong-password").await.status, 401);
    }
    let r = server.try_login("root", "wrong-password").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // The right password is refused too: no hashing while blocked.
    assert_eq!(server.try_login("root", &password).await.status, 429);
    // X-Forwarded-For from an untrusted peer changes nothing.
    let body = json!({"username": "root", "password": password});
    let xff = [("x-forwarded-for", "198.51.100.7")];
    let r = json_request(server.api, "POST", "/auth/login", &xff, &body).await;
    assert_eq!(r.status, 429);
    // Successes do not count.
    let fresh = TestServer::spawn_with(|c| c.auth.login_max_failures_per_minute = 2).await;
    fresh.wait_ready().await;
    let fresh_password = fresh.root_password();
    for _ in 0..5 {
        fresh.login("root", &fresh_password).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_give_each_forwarded_client_its_own_budget() {
    let server = TestServer::spawn_with(|c| {
        c.auth.login_max_failures_per_minute = 2;
        c.http.trusted_proxies = vec!["127.0.0.0/8".into()];
    })
    .await;
    server.wait_ready().await;
    let wrong = json!({"username": "root", "password": "wrong-password"});
    let login = |client: &'static str| {
        let wrong = wrong.clone();
        let api = server.api;
        async move {
            let xff = [("x-forwarded-for", client)];
            json_request(api, "POST", "/auth/login", &xff, &wrong)
                .await
                .status
                .as_u16()
        }
    };
    assert_eq!(login("203.0.113.1").await, 401);
    assert_eq!(login("203.0.113.1").await, 401);
    assert_eq!(login("203.0.113.1").await, 429);
    // A client forging a first hop is still identified by what the proxy saw.
    assert_eq!(login("203.0.113.9, 203.0.113.1").await, 429);
    assert_eq!(login("203.0.113.2").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_json_errors() {
    let server = TestServer::spawn_with(|c| c.http.max_json_bytes = 1024).await;
    server.wait_ready().await;
    let api = server.api;
    let ct = [("content-type", "application/json")];
    for body in [
        "{not json",
        "",
        "[]",
        "\"text\"",
        "{\"username\": \"root\"} trailing",
    ] {
        let r = request(api, "POST", "/auth/login", &ct, body).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
        assert!(r.json()["error"].is_string(), "{}", r.text());
    }
    let r = request(api, "POST", "/auth/login", &ct, r#"{"username": "root"}"#).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("password"),
        "{}",
        r.text()
    );
    let r = request(
        api,
        "POST",
        "/auth/login",
        &ct,
        r#"{"username": "root", "password": 12345678}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("password"),
        "{}",
        r.text()
    );
    // Unknown fields are ignored; no Content-Type is fine too.
    let r = request(
        api,
        "POST",
        "/auth/login",
        &[],
        r#"{"username": "root", "password": "wrong-pass", "x": 1}"#,
    )
    .await;
    assert_error(&r, 401, "invalid credentials");

    let big = format!(
        r#"{{"username": "root", "password": "{}"}}"#,
        "x".repeat(2000)
    );
    let r = request(api, "POST", "/auth/login", &ct, big.clone()).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let key = [
        ("x-api-key", ADMIN_KEY),
        ("content-type", "application/json"),
    ];
    let r = request(api, "POST", "/users", &key, big).await;
    assert_eq!(r.status, 413, "{}", r.text());

    let r = request(api, "PUT", "/users/me", &[], "").await;
    assert_eq!(r.status, 405);
    assert!(r.json()["error"].is_string());
    let r = request(api, "GET", "/no/such/path", &[], "").await;
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
}
