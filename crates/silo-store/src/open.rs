//! Opening a [`Store`] by URL, applying migrations, readiness.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};

use crate::Result;
use crate::error::{StoreError, db_err, is_unique_violation};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite writer waits for another writer before failing. Writes
/// are short single statements, so this only matters under heavy bursts.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation waits for a pooled connection before the store is
/// reported unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `$body` with `$pool` bound to the concrete pool of the backend.
///
/// The body is written once and compiled twice (once per pool type), which
/// keeps the SQL shared while avoiding `sqlx::Any` and its decoding gaps.
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::open::Backend::Sqlite($pool) => $body,
            $crate::open::Backend::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_pool;

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle to the database; cheap to clone (pools are reference counted).
#[derive(Clone)]
pub struct Store {
    pub(crate) backend: Backend,
    /// The URL with its password masked, for messages and logs.
    url: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend_name())
            .field("url", &self.url)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies the
    /// embedded migrations.
    ///
    /// `sqlite://PATH` creates the file and its parent directories;
    /// `postgres://…`/`postgresql://…` creates `pg_schema` if missing and
    /// confines every pooled connection to it through `search_path`
    /// (`pg_schema` is ignored for SQLite; empty means `public`).
    pub async fn open(url: &str, pg_schema: &str) -> Result<Store> {
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("sqlite:") {
            Self::open_sqlite(url).await
        } else if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Self::open_postgres(url, pg_schema).await
        } else {
            Err(StoreError::Config(format!(
                "unsupported database URL {}: expected sqlite://PATH or postgres://…",
                mask_url(url)
            )))
        }
    }

    /// Opens the SQLite database file at `path` (the default `<data_dir>/silo.db`).
    pub async fn open_sqlite_file(path: impl AsRef<std::path::Path>) -> Result<Store> {
        let path = path.as_ref();
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_sqlite_with(options, path.display().to_string()).await
    }

    async fn open_sqlite(url: &str) -> Result<Store> {
        let rest = url
            .split_once(':')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        if rest.contains(":memory:") || rest.contains("mode=memory") {
            // An in-memory database vanishes with its connection; the store
            // promises durability, so refuse instead of silently losing data.
            return Err(StoreError::Config(
                "in-memory SQLite is not supported; use sqlite://PATH".into(),
            ));
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|e| {
            StoreError::Config(format!("invalid SQLite URL {}: {e}", mask_url(url)))
        })?;
        Self::open_sqlite_with(options, mask_url(url)).await
    }

    async fn open_sqlite_with(options: SqliteConnectOptions, label: String) -> Result<Store> {
        let file = options.get_filename().to_path_buf();
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: dir.display().to_string(),
                    source,
                })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL (not NORMAL) even with WAL: a commit is acknowledged only
            // after its fsync, so a power loss cannot undo a consumed key or
            // an issued certificate the caller already acted on.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: label.clone(),
                source,
            })?;
        let store = Store {
            backend: Backend::Sqlite(pool),
            url: label.into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn open_postgres(url: &str, schema: &str) -> Result<Store> {
        let masked = mask_url(url);
        let schema = if schema.is_empty() { "public" } else { schema };
        validate_schema_name(schema)?;
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("invalid PostgreSQL URL {masked}: {e}")))?;
        let connect_err = |source| StoreError::Connect {
            url: masked.clone(),
            source,
        };

        // Create the schema on a throw-away connection: pooled connections
        // pin search_path to it, and it must exist before migrations run.
        let mut conn = options.connect().await.map_err(connect_err)?;
        // Look before creating: CREATE SCHEMA checks the CREATE privilege on
        // the database even with IF NOT EXISTS, and a least-privilege role
        // given a pre-made schema must still be able to open it.
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut conn)
                .await
                .map_err(db_err)?;
        if !exists {
            let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            if let Err(err) = conn.execute(AssertSqlSafe(create)).await {
                // Two processes creating the schema at once can collide on
                // the catalog's unique index; the schema exists either way.
                if !is_unique_violation(&err) {
                    return Err(db_err(err));
                }
            }
        }
        // Closing is best effort; the connection is dropped regardless.
        let _ = conn.close().await;

        let set_path: Arc<str> = format!("SET search_path TO \"{schema}\"").into();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                let set_path = set_path.clone();
                Box::pin(async move {
                    conn.execute(AssertSqlSafe(set_path.to_string())).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(connect_err)?;
        let store = Store {
            backend: Backend::Postgres(pool),
            url: masked.into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations; refuses a schema written by a newer binary.
    async fn migrate(&self) -> Result<()> {
        let (migrator, result) = match &self.backend {
            Backend::Sqlite(pool) => (&SQLITE_MIGRATIONS, SQLITE_MIGRATIONS.run(pool).await),
            Backend::Postgres(pool) => (&POSTGRES_MIGRATIONS, POSTGRES_MIGRATIONS.run(pool).await),
        };
        let supported = migrator.iter().map(|m| m.version).max().unwrap_or(0);
        match result {
            Ok(()) => {
                tracing::debug!(
                    backend = self.backend_name(),
                    version = supported,
                    "database schema up to date"
                );
                Ok(())
            }
            Err(MigrateError::VersionMissing(version)) if version > supported => {
                let found = self.applied_schema_version().await?.max(version);
                Err(StoreError::SchemaTooNew { found, supported })
            }
            Err(MigrateError::Execute(err)) => match db_err(err) {
                unavailable @ StoreError::Unavailable(_) => Err(unavailable),
                StoreError::Database(err) => Err(StoreError::Migration(MigrateError::Execute(err))),
                other => Err(other),
            },
            Err(err) => Err(StoreError::Migration(err)),
        }
    }

    /// Highest migration version recorded in the database.
    async fn applied_schema_version(&self) -> Result<i64> {
        const SQL: &str = "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations";
        with_pool!(self, p => sqlx::query_scalar::<_, i64>(SQL).fetch_one(p).await).map_err(db_err)
    }

    /// Checks that the database answers; for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        with_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))
            .map_err(StoreError::Unavailable)
    }

    /// `"sqlite"` or `"postgres"`, for logs and the start-up summary.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// The URL (or file path) the store was opened with, password masked.
    pub fn display_url(&self) -> &str {
        &self.url
    }

    /// Closes every pooled connection, waiting for in-flight operations.
    /// Clones of this store stop working too.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await);
    }
}

/// Restricts schema names to plain identifiers so they can be quoted into
/// `CREATE SCHEMA` and `SET search_path` without any escaping concerns.
fn validate_schema_name(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(StoreError::Config(format!(
            "invalid PostgreSQL schema name {schema:?}: use letters, digits and _ (at most 63)"
        )))
    }
}

/// Masks the password of a database URL (`postgres://user:***@host/db`),
/// including a `password=` query parameter, for logs and error messages.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handlers and background tasks share one store across threads.
    #[test]
    fn store_is_clone_send_sync() {
        fn assert_shareable<T: Clone + Send + Sync + 'static>() {}
        assert_shareable::<Store>();
    }

    #[test]
    fn masks_password_in_userinfo_and_query() {
        assert_eq!(
            mask_url("postgres://u:s3cret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(mask_url("postgres://u:p@ss@db/x"), "postgres://u:***@db/x");
        assert_eq!(mask_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(
            mask_url("postgresql://db/x?user=u&password=p&sslmode=require"),
            "postgresql://db/x?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            mask_url("sqlite://./data/silo.db"),
            "sqlite://./data/silo.db"
        );
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema_name("public").is_ok());
        assert!(validate_schema_name("t_0af3").is_ok());
        for bad in ["", "1abc", "a-b", "a\"b", "a b", &"x".repeat(64)] {
            assert!(validate_schema_name(bad).is_err(), "{bad:?}");
        }
    }
}
