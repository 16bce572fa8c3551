//! Per-test databases for both backends.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Once;

use silo_store::Store;
use sqlx::{AssertSqlSafe, Connection, Executor};
use time::OffsetDateTime;
use time::macros::datetime;

pub const PG_ENV: &str = "SILO_TEST_POSTGRES_URL";

/// A fixed, whole-second instant: stored timestamps are milliseconds, so
/// values built from it compare equal after a round trip.
pub const T0: OffsetDateTime = datetime!(2030-01-01 12:00:00 UTC);

pub fn secs(n: i64) -> time::Duration {
    time::Duration::seconds(n)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// Where one test's database lives; `open` may be called repeatedly to
/// test reopening.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub kind: Kind,
    /// `sqlite://…` or the PostgreSQL URL.
    pub url: String,
    /// PostgreSQL schema (unused for SQLite).
    pub schema: String,
    /// SQLite file path (unused for PostgreSQL).
    pub path: PathBuf,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        self.try_open().await.expect("open store")
    }

    pub async fn try_open(&self) -> Result<Store, silo_store::StoreError> {
        Store::open(&self.url, &self.schema).await
    }

    /// Runs raw SQL outside the store (to fake states the API cannot make).
    pub async fn exec_raw(&self, sql: &'static str) {
        match self.kind {
            Kind::Sqlite => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&self.path);
                let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
            Kind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                let set = format!("SET search_path TO \"{}\"", self.schema);
                conn.execute(AssertSqlSafe(set)).await.unwrap();
                conn.execute(sql).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

fn report_pg_skip() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Written to the real stderr (not `eprintln!`) so the line shows up
        // even though the test harness captures output of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: PostgreSQL store tests (set {PG_ENV} to run them)"
        );
    });
}

/// Runs `test` against a fresh database of `kind` and removes it afterwards.
pub async fn run<F, Fut>(kind: Kind, test: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            // A nested path proves that missing parent directories are created.
            let path = dir.path().join("nested").join("data").join("silo.db");
            let db = TestDb {
                kind,
                url: format!("sqlite://{}", path.display()),
                schema: String::new(),
                path,
            };
            finish(tokio::spawn(test(db)).await);
        }
        Kind::Postgres => {
            let Ok(url) = std::env::var(PG_ENV) else {
                report_pg_skip();
                return;
            };
            let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
            let db = TestDb {
                kind,
                url: url.clone(),
                schema: schema.clone(),
                path: PathBuf::new(),
            };
            let outcome = tokio::spawn(test(db)).await;
            drop_schema(&url, &schema).await;
            finish(outcome);
        }
    }
}

fn finish(outcome: Result<(), tokio::task::JoinError>) {
    if let Err(err) = outcome {
        match err.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(err) => panic!("test task failed: {err}"),
        }
    }
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{PG_ENV} is set but PostgreSQL is unreachable: {e}"));
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    conn.execute(AssertSqlSafe(sql))
        .await
        .expect("drop test schema");
    let _ = conn.close().await;
}

/// Instantiates each listed `async fn(TestDb)` of the calling module once
/// per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::harness::run($crate::harness::Kind::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    $crate::harness::run($crate::harness::Kind::Postgres, super::$name).await;
                }
            )*
        }
    };
}
pub(crate) use store_tests;
