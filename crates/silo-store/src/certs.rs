//! Registry of issued certificates and the revocation rules.
//!
//! Revocation exists in two forms: by serial (certificates in the registry)
//! and as a per-agent cut-off "everything issued before T", which also
//! covers certificates the registry never saw (issued by an earlier server
//! from the same CA). Serials are stored as lowercase hex; inputs are
//! lowercased so callers need not agree on case.

use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;

use crate::error::{conflict_or, db_err};
use crate::open::with_pool;
use crate::ts::{from_ms, opt_from_ms, to_ms};
use crate::{Result, Store, StoreError};

/// Input of [`Store::insert_certificate`].
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub serial: String,
    pub agent_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Hex SHA-256 fingerprint of the DER certificate.
    pub sha256: String,
    /// How it was issued: `provision`, `renewal`, `legacy-zip`, `server-generated`, ...
    pub source: String,
    pub pem: String,
    pub created_at: OffsetDateTime,
}

/// A registered certificate (public data only; no private keys are stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRecord {
    pub serial: String,
    pub agent_id: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub sha256: String,
    pub source: String,
    pub pem: String,
    pub revoked_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

/// Every revocation rule, for an in-memory cache consulted on handshakes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    /// Lowercase hex serials revoked individually.
    pub revoked_serials: HashSet<String>,
    /// Per agent: certificates with `not_before` earlier than this are revoked.
    pub agent_cutoffs: HashMap<String, OffsetDateTime>,
}

impl Revocations {
    /// Same rule as [`Store::is_revoked`], evaluated on the snapshot.
    pub fn is_revoked(&self, agent_id: &str, serial: &str, not_before: OffsetDateTime) -> bool {
        self.revoked_serials.contains(&serial.to_ascii_lowercase())
            || self
                .agent_cutoffs
                .get(agent_id)
                .is_some_and(|cutoff| to_ms(not_before) < to_ms(*cutoff))
    }
}

#[derive(sqlx::FromRow)]
struct CertRow {
    serial: String,
    agent_id: String,
    not_before: i64,
    not_after: i64,
    sha256: String,
    source: String,
    pem: String,
    revoked_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<CertRow> for CertificateRecord {
    type Error = StoreError;

    fn try_from(row: CertRow) -> Result<Self> {
        Ok(CertificateRecord {
            serial: row.serial,
            agent_id: row.agent_id,
            not_before: from_ms(row.not_before)?,
            not_after: from_ms(row.not_after)?,
            sha256: row.sha256,
            source: row.source,
            pem: row.pem,
            revoked_at: opt_from_ms(row.revoked_at)?,
            created_at: from_ms(row.created_at)?,
        })
    }
}

fn rows_to_records(rows: Vec<CertRow>) -> Result<Vec<CertificateRecord>> {
    rows.into_iter().map(CertificateRecord::try_from).collect()
}

macro_rules! cert_columns {
    () => {
        "serial, agent_id, not_before, not_after, sha256, source, pem, revoked_at, created_at"
    };
}

/// Raises the agent's cut-off, never lowers it: an older revocation request
/// arriving late must not un-revoke certificates.
const UPSERT_CUTOFF: &str = "INSERT INTO agent_revocations (agent_id, revoked_before) \
     VALUES ($1, $2) ON CONFLICT (agent_id) DO UPDATE SET revoked_before = \
     CASE WHEN excluded.revoked_before > agent_revocations.revoked_before \
     THEN excluded.revoked_before ELSE agent_revocations.revoked_before END \
     RETURNING revoked_before";

const REVOKE_AGENT_SERIALS: &str = "UPDATE certificates SET revoked_at = $2 \
     WHERE agent_id = $1 AND revoked_at IS NULL AND ($3 IS NULL OR serial <> $3) \
     RETURNING serial";

impl Store {
    /// Registers an issued certificate; a known serial is a `Conflict`.
    pub async fn insert_certificate(&self, cert: &NewCertificate) -> Result<CertificateRecord> {
        const SQL: &str = concat!(
            "INSERT INTO certificates (serial, agent_id, not_before, not_after, sha256, ",
            "source, pem, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            cert_columns!()
        );
        let serial = cert.serial.to_ascii_lowercase();
        let row: CertRow = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(&serial)
            .bind(&cert.agent_id)
            .bind(to_ms(cert.not_before))
            .bind(to_ms(cert.not_after))
            .bind(&cert.sha256)
            .bind(&cert.source)
            .bind(&cert.pem)
            .bind(to_ms(cert.created_at))
            .fetch_one(p)
            .await)
        .map_err(|e| conflict_or(e, || format!("certificate serial {serial} already exists")))?;
        row.try_into()
    }

    pub async fn get_certificate(&self, serial: &str) -> Result<Option<CertificateRecord>> {
        const SQL: &str = concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates WHERE serial = $1"
        );
        let row: Option<CertRow> = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(serial.to_ascii_lowercase())
            .fetch_optional(p)
            .await)
        .map_err(db_err)?;
        row.map(CertificateRecord::try_from).transpose()
    }

    /// Registered certificates, newest `not_before` first, optionally of one agent.
    pub async fn list_certificates(
        &self,
        agent_id: Option<&str>,
    ) -> Result<Vec<CertificateRecord>> {
        const ALL: &str = concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates ORDER BY not_before DESC, serial"
        );
        const BY_AGENT: &str = concat!(
            "SELECT ",
            cert_columns!(),
            " FROM certificates WHERE agent_id = $1 ORDER BY not_before DESC, serial"
        );
        let rows: Vec<CertRow> = match agent_id {
            Some(agent) => {
                with_pool!(self, p => sqlx::query_as(BY_AGENT).bind(agent).fetch_all(p).await)
            }
            None => with_pool!(self, p => sqlx::query_as(ALL).fetch_all(p).await),
        }
        .map_err(db_err)?;
        rows_to_records(rows)
    }

    /// The agent's newest certificate that is, at `now`, unexpired and not
    /// revoked by serial or by the agent's cut-off.
    pub async fn latest_active_certificate(
        &self,
        agent_id: &str,
        now: OffsetDateTime,
    ) -> Result<Option<CertificateRecord>> {
        const SQL: &str = concat!(
            "SELECT c.serial, c.agent_id, c.not_before, c.not_after, c.sha256, c.source, c.pem,",
            " c.revoked_at, c.created_at",
            " FROM certificates c LEFT JOIN agent_revocations r ON r.agent_id = c.agent_id",
            " WHERE c.agent_id = $1 AND c.revoked_at IS NULL AND c.not_after > $2",
            " AND (r.revoked_before IS NULL OR c.not_before >= r.revoked_before)",
            " ORDER BY c.not_before DESC, c.created_at DESC, c.serial LIMIT 1"
        );
        let row: Option<CertRow> = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(agent_id)
            .bind(to_ms(now))
            .fetch_optional(p)
            .await)
        .map_err(db_err)?;
        row.map(CertificateRecord::try_from).transpose()
    }

    /// Marks every unrevoked registered certificate of the agent revoked,
    /// except `keep_serial` (the one just issued when provisioning replaces
    /// older certificates). Returns the newly revoked serials, sorted.
    pub async fn revoke_agent_certificates(
        &self,
        agent_id: &str,
        now: OffsetDateTime,
        keep_serial: Option<&str>,
    ) -> Result<Vec<String>> {
        let keep = keep_serial.map(str::to_ascii_lowercase);
        let mut serials: Vec<String> =
            with_pool!(self, p => sqlx::query_scalar(REVOKE_AGENT_SERIALS)
            .bind(agent_id)
            .bind(to_ms(now))
            .bind(keep.as_deref())
            .fetch_all(p)
            .await)
            .map_err(db_err)?;
        serials.sort();
        Ok(serials)
    }

    /// Revokes everything the agent holds, registered or not, in one
    /// transaction: raises its cut-off to `revoked_before` and marks its
    /// registered certificates revoked at `now`. Returns the newly revoked
    /// serials, sorted.
    pub async fn revoke_agent(
        &self,
        agent_id: &str,
        revoked_before: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Vec<String>> {
        // The upsert is the first statement so a SQLite transaction takes
        // the write lock up front (a deferred read-then-write could fail
        // with SQLITE_BUSY instead of waiting).
        let mut serials: Vec<String> = with_pool!(self, p => async {
            let mut tx = p.begin().await?;
            sqlx::query(UPSERT_CUTOFF)
                .bind(agent_id)
                .bind(to_ms(revoked_before))
                .execute(&mut *tx)
                .await?;
            let serials: Vec<String> = sqlx::query_scalar(REVOKE_AGENT_SERIALS)
                .bind(agent_id)
                .bind(to_ms(now))
                .bind(None::<&str>)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(serials)
        }
        .await)
        .map_err(db_err)?;
        serials.sort();
        Ok(serials)
    }

    /// Revokes one certificate. `Ok(false)` when it was already revoked,
    /// `NotFound` when the serial is not registered.
    pub async fn revoke_certificate(&self, serial: &str, now: OffsetDateTime) -> Result<bool> {
        const SQL: &str =
            "UPDATE certificates SET revoked_at = $2 WHERE serial = $1 AND revoked_at IS NULL";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(serial.to_ascii_lowercase())
            .bind(to_ms(now))
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        if done > 0 {
            return Ok(true);
        }
        match self.get_certificate(serial).await? {
            Some(_) => Ok(false),
            None => Err(StoreError::NotFound),
        }
    }

    /// Records "every certificate of `agent_id` with notBefore earlier than
    /// `revoked_before` is revoked", keeping the latest cut-off if one
    /// exists. Returns the effective cut-off.
    pub async fn set_agent_revoked_before(
        &self,
        agent_id: &str,
        revoked_before: OffsetDateTime,
    ) -> Result<OffsetDateTime> {
        let ms: i64 = with_pool!(self, p => sqlx::query_scalar(UPSERT_CUTOFF)
            .bind(agent_id)
            .bind(to_ms(revoked_before))
            .fetch_one(p)
            .await)
        .map_err(db_err)?;
        from_ms(ms)
    }

    pub async fn agent_revoked_before(&self, agent_id: &str) -> Result<Option<OffsetDateTime>> {
        const SQL: &str = "SELECT revoked_before FROM agent_revocations WHERE agent_id = $1";
        let ms: Option<i64> =
            with_pool!(self, p => sqlx::query_scalar(SQL).bind(agent_id).fetch_optional(p).await)
                .map_err(db_err)?;
        ms.map(from_ms).transpose()
    }

    /// Whether a certificate is revoked: its serial is marked revoked, or
    /// its `not_before` precedes the agent's cut-off.
    pub async fn is_revoked(
        &self,
        agent_id: &str,
        serial: &str,
        not_before: OffsetDateTime,
    ) -> Result<bool> {
        // COUNT(*) is BIGINT on PostgreSQL and INTEGER on SQLite: both decode
        // as i64, unlike a boolean expression.
        const SQL: &str = "SELECT \
             (SELECT COUNT(*) FROM certificates WHERE serial = $1 AND revoked_at IS NOT NULL) + \
             (SELECT COUNT(*) FROM agent_revocations WHERE agent_id = $2 AND revoked_before > $3)";
        let hits: i64 = with_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(serial.to_ascii_lowercase())
            .bind(agent_id)
            .bind(to_ms(not_before))
            .fetch_one(p)
            .await)
        .map_err(db_err)?;
        Ok(hits > 0)
    }

    /// Every revocation rule, to (re)build an in-memory cache.
    pub async fn load_revocations(&self) -> Result<Revocations> {
        const SERIALS: &str = "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL";
        const CUTOFFS: &str = "SELECT agent_id, revoked_before FROM agent_revocations";
        let serials: Vec<String> =
            with_pool!(self, p => sqlx::query_scalar(SERIALS).fetch_all(p).await)
                .map_err(db_err)?;
        let cutoffs: Vec<(String, i64)> =
            with_pool!(self, p => sqlx::query_as(CUTOFFS).fetch_all(p).await).map_err(db_err)?;
        Ok(Revocations {
            revoked_serials: serials.into_iter().collect(),
            agent_cutoffs: cutoffs
                .into_iter()
                .map(|(agent, ms)| Ok((agent, from_ms(ms)?)))
                .collect::<Result<_>>()?,
        })
    }
}
