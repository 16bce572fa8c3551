//! Persistent state of silo-proxy behind one async [`Store`].
//!
//! The server keeps users, provision keys, the registry of issued
//! certificates, revocation rules, the audit trail and known agents (with
//! their sticky ports) here. Embedded SQLite is the zero-setup default;
//! PostgreSQL is selected by URL. Callers see a single `Clone + Send + Sync`
//! type whichever backend is behind it, and both backends behave
//! identically: the same behaviour suite runs against each.
//!
//! Design choices that callers may rely on:
//! - Timestamps cross the API as UTC [`time::OffsetDateTime`] and are stored
//!   as unix milliseconds on both backends, so values read back are
//!   truncated to the millisecond.
//! - A provision key is consumed by one conditional `UPDATE … RETURNING`,
//!   never by a check-then-mark pair, so concurrent callers cannot both win.
//! - Migrations are embedded in the binary and applied at [`Store::open`];
//!   a database migrated by a newer binary is refused instead of being
//!   written with an older idea of the schema.
//! - SQLite runs in WAL mode with `synchronous=FULL`: an acknowledged write
//!   survives a power loss, at the cost of one fsync per commit.
//!
//! # Layout
//! - `error` — [`StoreError`] and the mapping from driver errors.
//! - `open` — [`Store`]: opening by URL, migrations, readiness, URL masking.
//! - `users` — accounts and roles.
//! - `provision` — one-time provision keys and their atomic consumption.
//! - `certs` — the issued-certificate registry and revocation rules.
//! - `audit` — the append-only audit trail.
//! - `agents` — known agents, case-insensitive id uniqueness, sticky ports.
//! - `ts` — conversions between `OffsetDateTime` and stored milliseconds.
//! - `migrations/{sqlite,postgres}` (crate root) — versioned schema per backend.

mod agents;
mod audit;
mod certs;
mod error;
mod open;
mod provision;
mod ts;
mod users;

pub use agents::AgentRecord;
pub use audit::{AuditEvent, MAX_AUDIT_LIMIT, NewAuditEvent};
pub use certs::{CertificateRecord, NewCertificate, Revocations};
pub use error::StoreError;
pub use open::{Store, mask_url};
pub use provision::{ConsumeOutcome, KeyStatus, NewProvisionKey, ProvisionKey};
pub use users::{NewUser, Role, User};

/// Result alias used by every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
