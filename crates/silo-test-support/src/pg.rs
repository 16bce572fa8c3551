//! A throw-away PostgreSQL schema for one test, when
//! `SILO_TEST_POSTGRES_URL` is set.
//!
//! Unset: the test prints a `SKIPPED:` line and returns (a fresh machine
//! still passes `cargo test`). Set but unreachable: the test fails — CI
//! must not pass silently without the database it was told to use.

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

pub const PG_ENV: &str = "SILO_TEST_POSTGRES_URL";

/// A schema name unique to this test; dropped (with everything in it)
/// when this value is dropped, also when the test panics.
#[derive(Debug)]
pub struct PgSchema {
    pub url: String,
    pub schema: String,
}

impl PgSchema {
    /// `None` (after printing why) when `SILO_TEST_POSTGRES_URL` is unset.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(url) = std::env::var(PG_ENV) else {
            // The real stderr, not `eprintln!`: the harness captures the
            // latter for passing tests and the skip would go unseen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} on PostgreSQL (set {PG_ENV} to run it)"
            );
            return None;
        };
        let conn = PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV} is set but PostgreSQL is unreachable: {e}"));
        let _ = conn.close().await;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "t_{}_{}_{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Some(Self { url, schema })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside a runtime (no blocking there) or during a
        // panic: a thread with its own small runtime works in both cases.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&url).await?;
                let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                conn.execute(AssertSqlSafe(sql)).await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(
                std::io::stderr(),
                "warning: could not drop test schema {}: {dropped:?}",
                self.schema
            );
        }
    }
}
