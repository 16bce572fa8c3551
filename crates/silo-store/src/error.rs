//! Typed store errors.
//!
//! Display strings are meant for operators and API error bodies: they name
//! what failed but never carry SQL text or database internals, which stay
//! reachable through `source()` for logs.

use sqlx::error::ErrorKind;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A uniqueness rule was violated (duplicate username, agent id that
    /// differs only in case, duplicate serial, ...). The message is safe to
    /// show to users.
    #[error("{0}")]
    Conflict(String),

    /// The record addressed by the operation does not exist.
    #[error("not found")]
    NotFound,

    /// The store URL or schema name is not usable.
    #[error("invalid database configuration: {0}")]
    Config(String),

    /// The database could not be reached when opening it. `url` has its
    /// password masked.
    #[error("cannot connect to database {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },

    /// Creating the directory of a SQLite file failed.
    #[error("cannot create database directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The database stopped answering (connection lost, pool timed out).
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),

    /// Applying the embedded migrations failed.
    #[error("database migration failed")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// The database was migrated by a newer silo-proxy; writing to it with
    /// this binary could corrupt it.
    #[error(
        "database schema version {found} is newer than this binary supports ({supported}); upgrade silo-proxy"
    )]
    SchemaTooNew { found: i64, supported: i64 },

    /// Any other database failure (constraint, decoding, ...).
    #[error("database operation failed")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// True when retrying later may help (the database is unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Connect { .. })
    }
}

/// Classifies a driver error: lost connectivity becomes `Unavailable` so
/// readiness and HTTP 503 mapping can tell it from a logic error.
pub(crate) fn db_err(err: sqlx::Error) -> StoreError {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
        other => StoreError::Database(other),
    }
}

/// Like [`db_err`], but a unique-constraint violation becomes
/// `Conflict(message)`.
pub(crate) fn conflict_or(err: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    if is_unique_violation(&err) {
        StoreError::Conflict(message())
    } else {
        db_err(err)
    }
}

pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.kind() == ErrorKind::UniqueViolation)
}

/// A stored value that the API type cannot represent (e.g. an unknown role
/// written by hand).
pub(crate) fn decode_err(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Decode(message.into()))
}
