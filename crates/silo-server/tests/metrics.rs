//! `GET /metrics` after real traffic: Prometheus text with per-agent
//! counters and label-free histograms.

use silo_test_support::client::{get, post};
use silo_test_support::{Backend, TestAgent, TestServer, eventually};
use std::net::SocketAddr;
use std::time::Duration;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exchanges_bytes_and_agents() {
    let backend = Backend::spawn().await;
    let server = TestServer::spawn().await;
    let agent = TestAgent::spawn(server.grpc, "metered", &backend.url()).await;
    agent.wait_connected().await;
    let port = server.agent_port("metered").await;
    let at = SocketAddr::from(([127, 0, 0, 1], port));
    assert_eq!(get(at, "/hello").await.status, 200);
    assert_eq!(get(at, "/status/404").await.status, 404);
    assert_eq!(post(at, "/count", vec![7u8; 1000]).await.status, 200);

    let text = eventually(Duration::from_secs(5), "byte counters recorded", || async {
        let text = get(server.api, "/metrics").await.text();
        value(&text, r#"silo_bytes_total{agent="metered",direction="in"}"#)
            .is_some()
            .then_some(text)
    })
    .await;
    assert_eq!(
        value(
            &text,
            r#"silo_exchanges_total{agent="metered",status="2xx"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"silo_exchanges_total{agent="metered",status="4xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"silo_bytes_total{agent="metered",direction="in"}"#),
        Some(1000.0)
    );
    assert!(
        value(
            &text,
            r#"silo_bytes_total{agent="metered",direction="out"}"#
        )
        .unwrap()
            >= 5.0
    );
    assert!(value(&text, "silo_agents_connected").unwrap() >= 1.0);
    assert!(value(&text, "silo_exchange_duration_seconds_count").unwrap() >= 3.0);
    assert!(
        text.lines()
            .filter(|l| l.starts_with("silo_exchange_duration_seconds"))
            .all(|l| !l.contains("agent=")),
        "histograms carry no agent label"
    );
    assert!(!text.contains("/status/404"), "paths never become labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_admin_key_or_be_off() {
    let server = TestServer::spawn_with(|c| c.metrics.require_admin = true).await;
    assert_eq!(get(server.api, "/metrics").await.status, 401);
    let ok = server
        .api_get(
            "/metrics",
            &[("x-api-key", silo_test_support::harness::ADMIN_KEY)],
        )
        .await;
    assert_eq!(ok.status, 200);

    let off = TestServer::spawn_with(|c| c.metrics.enabled = false).await;
    assert_eq!(get(off.api, "/metrics").await.status, 404);
}
