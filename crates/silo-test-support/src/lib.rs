//! Builders shared by the integration tests: a server, agents and a local
//! backend on ephemeral loopback ports, an HTTP client, and `eventually`.
//!
//! # Layout
//! - [`backend`]: the local service the agents front.
//! - [`harness`]: `TestServer`, `TestAgent`.
//! - [`client`]: a small HTTP client for assertions.
//! - [`accounts`]: JSON requests, logins, tokens, the root password.
//! - [`pg`]: a throw-away PostgreSQL schema when `SILO_TEST_POSTGRES_URL` is set.

pub mod accounts;
pub mod backend;
pub mod client;
pub mod harness;
pub mod pg;
pub mod tls;

pub use backend::Backend;
pub use harness::{TestAgent, TestServer, free_port_range};

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some` or `within` passes (then panics
/// with `what`). Waiting on a condition, never a fixed sleep.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends the code's tracing output to the test's captured output (shown for
/// failing tests); `RUST_LOG` picks the level.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
