//! One-time provision keys.
//!
//! Only the SHA-256 of a key is stored. Consumption is a single conditional
//! `UPDATE … RETURNING`: the database decides the one winner among racing
//! callers, and losers are classified afterwards by reading the row.

use time::OffsetDateTime;

use crate::error::{conflict_or, db_err};
use crate::open::with_pool;
use crate::ts::{from_ms, ms_before, opt_from_ms, to_ms};
use crate::{Result, Store, StoreError};

/// Input of [`Store::insert_provision_key`].
#[derive(Debug, Clone)]
pub struct NewProvisionKey {
    /// Short public id shown in listings, logs and audit (e.g. 12 hex chars).
    pub id: String,
    pub agent_id: String,
    /// Lowercase hex SHA-256 of the secret key; never the key itself.
    pub key_hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// Actor that created the key (`admin-key`, `user:root`, ...).
    pub created_by: String,
}

/// A stored provision key.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvisionKey {
    pub id: String,
    pub agent_id: String,
    /// Hash of the secret; elided from `Debug` so logs show only `id`.
    pub key_hash: String,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
    pub revoked_at: Option<OffsetDateTime>,
    /// Hex SHA-256 of the public key that consumed the key.
    pub consumed_by_pubkey_sha256: Option<String>,
    /// Serial of the certificate issued with the key, once recorded.
    pub issued_cert_serial: Option<String>,
    pub created_by: String,
}

impl std::fmt::Debug for ProvisionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionKey")
            .field("id", &self.id)
            .field("agent_id", &self.agent_id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("used_at", &self.used_at)
            .field("revoked_at", &self.revoked_at)
            .field("consumed_by_pubkey_sha256", &self.consumed_by_pubkey_sha256)
            .field("issued_cert_serial", &self.issued_cert_serial)
            .field("created_by", &self.created_by)
            .finish_non_exhaustive()
    }
}

/// Lifecycle state of a key at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyStatus {
    Active,
    Used,
    Expired,
    Revoked,
}

impl KeyStatus {
    /// The API spelling: `active`, `used`, `expired`, `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Used => "used",
            KeyStatus::Expired => "expired",
            KeyStatus::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for KeyStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ProvisionKey {
    /// Status at `now`. Revoked and used win over expired so a key used
    /// just before it expired still reports (and retries as) `used`.
    pub fn status(&self, now: OffsetDateTime) -> KeyStatus {
        if self.revoked_at.is_some() {
            KeyStatus::Revoked
        } else if self.used_at.is_some() {
            KeyStatus::Used
        } else if to_ms(self.expires_at) <= to_ms(now) {
            KeyStatus::Expired
        } else {
            KeyStatus::Active
        }
    }
}

/// Result of [`Store::consume_provision_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeOutcome {
    /// This call won: the key is now marked used by the given public key.
    Consumed(ProvisionKey),
    /// No key has this hash (never existed or cleaned up).
    NotFound,
    Expired(ProvisionKey),
    Revoked(ProvisionKey),
    /// Someone consumed it first. When `pubkey_sha256` equals the caller's
    /// and `issued_cert_serial` is set, the caller may hand back that
    /// certificate (a lost response must not cost the device its key).
    AlreadyUsed {
        key: ProvisionKey,
        used_at: OffsetDateTime,
        pubkey_sha256: Option<String>,
        issued_cert_serial: Option<String>,
    },
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    agent_id: String,
    key_hash: String,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
    consumed_by_pubkey_sha256: Option<String>,
    issued_cert_serial: Option<String>,
    created_by: String,
}

impl TryFrom<KeyRow> for ProvisionKey {
    type Error = StoreError;

    fn try_from(row: KeyRow) -> Result<Self> {
        Ok(ProvisionKey {
            id: row.id,
            agent_id: row.agent_id,
            key_hash: row.key_hash,
            created_at: from_ms(row.created_at)?,
            expires_at: from_ms(row.expires_at)?,
            used_at: opt_from_ms(row.used_at)?,
            revoked_at: opt_from_ms(row.revoked_at)?,
            consumed_by_pubkey_sha256: row.consumed_by_pubkey_sha256,
            issued_cert_serial: row.issued_cert_serial,
            created_by: row.created_by,
        })
    }
}

macro_rules! key_columns {
    () => {
        "id, agent_id, key_hash, created_at, expires_at, used_at, revoked_at, \
         consumed_by_pubkey_sha256, issued_cert_serial, created_by"
    };
}

impl Store {
    /// Stores a new key. A duplicate id or hash is a `Conflict` (the caller
    /// generated a colliding random value and should retry).
    pub async fn insert_provision_key(&self, key: &NewProvisionKey) -> Result<ProvisionKey> {
        const SQL: &str = concat!(
            "INSERT INTO provision_keys (id, agent_id, key_hash, created_at, expires_at, created_by) ",
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
            key_columns!()
        );
        let row: KeyRow = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(&key.id)
            .bind(&key.agent_id)
            .bind(&key.key_hash)
            .bind(to_ms(key.created_at))
            .bind(to_ms(key.expires_at))
            .bind(&key.created_by)
            .fetch_one(p)
            .await)
        .map_err(|e| conflict_or(e, || "provision key id or hash already exists".into()))?;
        row.try_into()
    }

    /// Looks a key up by the hash of its secret.
    pub async fn get_provision_key(&self, key_hash: &str) -> Result<Option<ProvisionKey>> {
        const SQL: &str = concat!(
            "SELECT ",
            key_columns!(),
            " FROM provision_keys WHERE key_hash = $1"
        );
        let row: Option<KeyRow> =
            with_pool!(self, p => sqlx::query_as(SQL).bind(key_hash).fetch_optional(p).await)
                .map_err(db_err)?;
        row.map(ProvisionKey::try_from).transpose()
    }

    /// Marks the key used by `pubkey_sha256` if, at `now`, it is unused,
    /// unrevoked and unexpired — in one statement, so exactly one of any
    /// number of concurrent callers gets `Consumed`.
    pub async fn consume_provision_key(
        &self,
        key_hash: &str,
        now: OffsetDateTime,
        pubkey_sha256: &str,
    ) -> Result<ConsumeOutcome> {
        const SQL: &str = concat!(
            "UPDATE provision_keys SET used_at = $2, consumed_by_pubkey_sha256 = $3 ",
            "WHERE key_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 ",
            "RETURNING ",
            key_columns!()
        );
        // A row read as `Active` after a failed update was released by a
        // concurrent signing failure in between; trying again is correct
        // because the decision is still made by the conditional update.
        for _ in 0..3 {
            let won: Option<KeyRow> = with_pool!(self, p => sqlx::query_as(SQL)
                .bind(key_hash)
                .bind(to_ms(now))
                .bind(pubkey_sha256)
                .fetch_optional(p)
                .await)
            .map_err(db_err)?;
            if let Some(row) = won {
                return Ok(ConsumeOutcome::Consumed(row.try_into()?));
            }
            // The row is read only to explain the refusal, never to decide.
            let Some(key) = self.get_provision_key(key_hash).await? else {
                return Ok(ConsumeOutcome::NotFound);
            };
            match key.status(now) {
                KeyStatus::Active => continue,
                KeyStatus::Revoked => return Ok(ConsumeOutcome::Revoked(key)),
                KeyStatus::Expired => return Ok(ConsumeOutcome::Expired(key)),
                KeyStatus::Used => {
                    return Ok(ConsumeOutcome::AlreadyUsed {
                        used_at: key.used_at.unwrap_or(now),
                        pubkey_sha256: key.consumed_by_pubkey_sha256.clone(),
                        issued_cert_serial: key.issued_cert_serial.clone(),
                        key,
                    });
                }
            }
        }
        // Persistent flapping between consume and release: report it as
        // contention rather than pretending the key is invalid.
        Err(StoreError::Conflict(
            "provision key is being consumed concurrently".into(),
        ))
    }

    /// Undoes a consumption after signing failed, so the key stays usable.
    /// Only un-consumes when the key is still held by `pubkey_sha256` and no
    /// certificate was recorded; returns whether it did.
    pub async fn release_provision_key(&self, key_hash: &str, pubkey_sha256: &str) -> Result<bool> {
        const SQL: &str = "UPDATE provision_keys \
             SET used_at = NULL, consumed_by_pubkey_sha256 = NULL \
             WHERE key_hash = $1 AND used_at IS NOT NULL AND revoked_at IS NULL \
             AND consumed_by_pubkey_sha256 = $2 AND issued_cert_serial IS NULL";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(key_hash)
            .bind(pubkey_sha256)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Links the certificate issued with a consumed key (enables returning
    /// the same certificate to a retry). False when the key is unknown or
    /// not consumed.
    pub async fn record_provision_cert(&self, key_hash: &str, serial: &str) -> Result<bool> {
        const SQL: &str = "UPDATE provision_keys SET issued_cert_serial = $2 \
             WHERE key_hash = $1 AND used_at IS NOT NULL";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(key_hash)
            .bind(serial.to_ascii_lowercase())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Keys newest first with their status at `now`: only active ones, or
    /// (`include_inactive`) also used, expired and revoked ones still kept.
    pub async fn list_provision_keys(
        &self,
        now: OffsetDateTime,
        include_inactive: bool,
    ) -> Result<Vec<(ProvisionKey, KeyStatus)>> {
        const ACTIVE: &str = concat!(
            "SELECT ",
            key_columns!(),
            " FROM provision_keys WHERE used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
            " ORDER BY created_at DESC, id"
        );
        const ALL: &str = concat!(
            "SELECT ",
            key_columns!(),
            " FROM provision_keys ORDER BY created_at DESC, id"
        );
        let rows: Vec<KeyRow> = if include_inactive {
            with_pool!(self, p => sqlx::query_as(ALL).fetch_all(p).await)
        } else {
            with_pool!(self, p => sqlx::query_as(ACTIVE).bind(to_ms(now)).fetch_all(p).await)
        }
        .map_err(db_err)?;
        rows.into_iter()
            .map(|row| {
                let key = ProvisionKey::try_from(row)?;
                let status = key.status(now);
                Ok((key, status))
            })
            .collect()
    }

    /// Revokes every active key of `agent_id`; returns how many.
    pub async fn revoke_provision_keys(&self, agent_id: &str, now: OffsetDateTime) -> Result<u64> {
        const SQL: &str = "UPDATE provision_keys SET revoked_at = $2 \
             WHERE agent_id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(agent_id)
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done)
    }

    /// Deletes keys that have been used, revoked or expired for longer than
    /// `history`; returns how many. Active keys are never touched.
    pub async fn cleanup_provision_keys(
        &self,
        now: OffsetDateTime,
        history: std::time::Duration,
    ) -> Result<u64> {
        const SQL: &str = "DELETE FROM provision_keys WHERE used_at < $1 OR revoked_at < $1 \
             OR (expires_at < $1 AND used_at IS NULL AND revoked_at IS NULL)";
        let cutoff = ms_before(now, history);
        let done = with_pool!(self, p => sqlx::query(SQL).bind(cutoff).execute(p).await.map(|r| r.rows_affected()))
            .map_err(db_err)?;
        Ok(done)
    }
}
