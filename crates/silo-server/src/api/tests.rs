//! Router tests that need a hand on the server state: a store that stops
//! answering after the start must give 503s, never a panic.

use super::router;
use crate::config::{Secret, ServerConfig};
use crate::state::ServerState;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("x-api-key", "key")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn an_unreachable_store_is_503_on_ready_and_on_endpoints_that_need_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig {
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.http.admin_api_key = Secret("key".into());
    let persistence = crate::store_setup::prepare(&config).await.unwrap();
    let state = Arc::new(ServerState::new(
        config,
        CancellationToken::new(),
        Some("key".into()),
        persistence,
    ));
    let app = router(state.clone());
    let (status, body) = call(&app, get("/ready")).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"status": "ready"}))
    );

    state.store.close().await;
    let unavailable = serde_json::json!({"error": "database unavailable"});
    for path in ["/ready", "/agents?all=true", "/users"] {
        let (status, body) = call(&app, get(path)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(body, unavailable, "{path}");
    }
    let login = Request::post("/auth/login")
        .body(Body::from(r#"{"username":"root","password":"whatever1"}"#))
        .unwrap();
    let (status, body) = call(&app, login).await;
    assert_eq!(
        (status, body),
        (StatusCode::SERVICE_UNAVAILABLE, unavailable)
    );
    // Connected agents are still listed: that needs no database.
    assert_eq!(call(&app, get("/agents")).await.0, StatusCode::OK);
}
