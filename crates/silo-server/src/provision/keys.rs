//! Provision keys: `sk_` + 64 hex characters from a CSPRNG, stored only as
//! their SHA-256, shown once at creation, bound to one agent id.

use super::audit::{self, Event};
use super::{Ctx, ProvisionError, check_agent_id, check_case_conflict};
use crate::api::rfc3339;
use rand::RngCore;
use serde::Serialize;
use silo_store::{NewProvisionKey, StoreError};
use std::time::Duration;
use time::OffsetDateTime;

pub const KEY_PREFIX: &str = "sk_";
/// Hex characters after the prefix (256 bits).
pub const KEY_HEX_LEN: usize = 64;
pub const MIN_TTL_HOURS: i64 = 1;
pub const MAX_TTL_HOURS: i64 = 720;
pub const MIN_TTL_SECONDS: i64 = 60;
pub const MAX_TTL_SECONDS: i64 = 2_592_000;

/// A freshly generated key: the secret (shown once), its hash and public id.
pub struct GeneratedKey {
    pub secret: String,
    pub hash: String,
    pub id: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes for the secret and 6 more for the public id; the id is
/// independent of the secret so it reveals nothing about it.
pub fn generate_key() -> GeneratedKey {
    let mut rng = rand::rng();
    let mut secret = [0u8; KEY_HEX_LEN / 2];
    rng.fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rng.fill_bytes(&mut id);
    let secret = format!("{KEY_PREFIX}{}", hex(&secret));
    GeneratedKey {
        hash: hash_key(&secret),
        secret,
        id: hex(&id),
    }
}

/// What the store keeps and lookups compare: SHA-256 of the key, hex.
pub fn hash_key(secret: &str) -> String {
    silo_pki::sha256_fingerprint_hex(secret.trim().as_bytes())
}

/// Whether `s` has the shape of a key (no lookup needed otherwise).
pub fn looks_like_key(s: &str) -> bool {
    let s = s.trim();
    s.len() == KEY_PREFIX.len() + KEY_HEX_LEN
        && s.starts_with(KEY_PREFIX)
        && s[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key lifetime from `ttl_hours` (1..720) or `ttl_seconds`
/// (60..2592000), or the configured default when neither is given.
pub fn resolve_ttl(
    ttl_hours: Option<i64>,
    ttl_seconds: Option<i64>,
    default: Duration,
) -> Result<Duration, ProvisionError> {
    let bad = |m: String| Err(ProvisionError::BadRequest(m));
    match (ttl_hours, ttl_seconds) {
        (Some(_), Some(_)) => bad("give ttl_hours or ttl_seconds, not both".into()),
        (Some(h), None) if (MIN_TTL_HOURS..=MAX_TTL_HOURS).contains(&h) => {
            Ok(Duration::from_secs(h.unsigned_abs() * 3600))
        }
        (Some(h), None) => bad(format!(
            "ttl_hours must be between {MIN_TTL_HOURS} and {MAX_TTL_HOURS}, got {h}"
        )),
        (None, Some(s)) if (MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&s) => {
            Ok(Duration::from_secs(s.unsigned_abs()))
        }
        (None, Some(s)) => bad(format!(
            "ttl_seconds must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS}, got {s}"
        )),
        (None, None) => Ok(default),
    }
}

/// The 201 answer of `POST /api/v1/provision-keys`.
#[derive(Debug, Serialize)]
pub struct CreatedKey {
    pub key: String,
    pub id: String,
    pub agent_id: String,
    pub expires_at: String,
    pub ca_sha256: String,
    pub server_url: String,
    pub grpc_address: String,
    pub command: String,
}

/// Creates a key for `agent_id` valid for `ttl`, audited as `actor`.
pub async fn create_key(
    ctx: Ctx<'_>,
    agent_id: &str,
    ttl: Duration,
    actor: &str,
    remote_addr: Option<String>,
    now: OffsetDateTime,
) -> Result<CreatedKey, ProvisionError> {
    check_agent_id(agent_id)?;
    let signer = ctx.signer()?;
    check_case_conflict(ctx.store, agent_id).await?;
    let expires_at = now + ttl;
    // A collision of 48 random bits (id) is unlikely but cheap to retry.
    let mut attempts = 0;
    let (generated, stored) = loop {
        let generated = generate_key();
        let new = NewProvisionKey {
            id: generated.id.clone(),
            agent_id: agent_id.to_owned(),
            key_hash: generated.hash.clone(),
            created_at: now,
            expires_at,
            created_by: actor.to_owned(),
        };
        match ctx.store.insert_provision_key(&new).await {
            Ok(stored) => break (generated, stored),
            Err(StoreError::Conflict(_)) if attempts < 3 => attempts += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let ca_sha256 = silo_pki::sha256_fingerprint_hex(signer.ca_cert_der());
    let settings = ctx.settings;
    let command = agent_command(
        &settings.server_url,
        &generated.secret,
        &ca_sha256,
        &settings.grpc_address,
    );
    tracing::info!(key_id = %stored.id, %agent_id, %actor, "provision key created");
    audit::record(
        ctx.store,
        now,
        Event {
            action: audit::KEY_CREATED,
            actor,
            agent_id: Some(agent_id),
            remote_addr,
            detail: serde_json::json!({
                "key_id": stored.id,
                "expires_at": rfc3339(stored.expires_at),
            }),
        },
    )
    .await;
    Ok(CreatedKey {
        key: generated.secret,
        id: stored.id,
        agent_id: agent_id.to_owned(),
        expires_at: rfc3339(stored.expires_at),
        ca_sha256,
        server_url: settings.server_url.clone(),
        grpc_address: settings.grpc_address.clone(),
        command,
    })
}

/// The ready-to-paste agent command. `--grpc-address` is added only when
/// the tunnel address is not what the agent derives by itself
/// (`<host of --server>:9090`).
pub fn agent_command(server_url: &str, key: &str, ca_sha256: &str, grpc_address: &str) -> String {
    let mut cmd = format!(
        "silo-proxy-agent provision --server {} --key {} --ca-sha256 {}",
        shell_word(server_url),
        shell_word(key),
        shell_word(ca_sha256)
    );
    let derived = server_url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(|h| format!("{h}:9090")));
    if derived.as_deref() != Some(grpc_address) {
        cmd.push_str(" --grpc-address ");
        cmd.push_str(&shell_word(grpc_address));
    }
    cmd
}

/// Quotes a word for POSIX shells unless it is plainly safe.
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":/._-@%+=,".contains(&b));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// One row of `GET /api/v1/provision-keys`: never the key or its hash.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub agent_id: String,
    pub created_at: String,
    pub expires_at: String,
    pub status: &'static str,
    pub used_at: Option<String>,
}

/// Active keys, or (`all`) also the used, expired and revoked ones kept
/// for `provision.history_days`; newest first.
pub async fn list_keys(
    ctx: Ctx<'_>,
    all: bool,
    now: OffsetDateTime,
) -> Result<Vec<KeyView>, ProvisionError> {
    let keys = ctx.store.list_provision_keys(now, all).await?;
    Ok(keys
        .into_iter()
        .map(|(k, status)| KeyView {
            id: k.id,
            agent_id: k.agent_id,
            created_at: rfc3339(k.created_at),
            expires_at: rfc3339(k.expires_at),
            status: status.as_str(),
            used_at: k.used_at.map(rfc3339),
        })
        .collect())
}

/// Revokes every active key of `agent_id`; 404 when it has none.
pub async fn revoke_keys(
    ctx: Ctx<'_>,
    agent_id: &str,
    actor: &str,
    remote_addr: Option<String>,
    now: OffsetDateTime,
) -> Result<u64, ProvisionError> {
    check_agent_id(agent_id)?;
    let revoked = ctx.store.revoke_provision_keys(agent_id, now).await?;
    if revoked == 0 {
        return Err(ProvisionError::NotFound(
            "No provision keys found for this agent".into(),
        ));
    }
    tracing::info!(%agent_id, revoked, %actor, "provision keys revoked");
    audit::record(
        ctx.store,
        now,
        Event {
            action: audit::KEY_REVOKED,
            actor,
            agent_id: Some(agent_id),
            remote_addr,
            detail: serde_json::json!({ "revoked": revoked }),
        },
    )
    .await;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_hex_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert!(looks_like_key(&a.secret), "{}", a.secret);
        assert_eq!(a.secret.len(), 67);
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 12);
        assert_eq!(a.hash, hash_key(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!a.hash.contains(&a.secret[3..]));
        assert!(!format!("{a:?}").contains(&a.secret));
        for bad in [
            "",
            "sk_",
            "sk_xyz",
            &a.secret.to_uppercase(),
            &a.secret[..66],
        ] {
            assert!(!looks_like_key(bad), "{bad}");
        }
    }

    #[test]
    fn ttls_are_bounded() {
        let d = Duration::from_secs(24 * 3600);
        assert_eq!(resolve_ttl(None, None, d).unwrap(), d);
        assert_eq!(resolve_ttl(Some(1), None, d).unwrap().as_secs(), 3600);
        assert_eq!(
            resolve_ttl(Some(720), None, d).unwrap().as_secs(),
            720 * 3600
        );
        assert_eq!(resolve_ttl(None, Some(60), d).unwrap().as_secs(), 60);
        assert_eq!(
            resolve_ttl(None, Some(2_592_000), d).unwrap().as_secs(),
            2_592_000
        );
        for (h, s) in [
            (Some(0), None),
            (Some(-1), None),
            (Some(721), None),
            (None, Some(59)),
            (None, Some(0)),
            (None, Some(2_592_001)),
            (Some(1), Some(60)),
        ] {
            let e = resolve_ttl(h, s, d).unwrap_err();
            assert!(matches!(e, ProvisionError::BadRequest(_)), "{h:?} {s:?}");
        }
    }

    #[test]
    fn commands_are_pasteable() {
        let c = agent_command(
            "https://t.example.com:8080",
            "sk_ab",
            "cafe",
            "t.example.com:9090",
        );
        assert_eq!(
            c,
            "silo-proxy-agent provision --server https://t.example.com:8080 --key sk_ab --ca-sha256 cafe"
        );
        let c = agent_command(
            "https://[::1]:8080",
            "sk_ab",
            "cafe",
            "grpc.example.com:443",
        );
        assert!(c.contains("--server 'https://[::1]:8080'"), "{c}");
        assert!(c.ends_with("--grpc-address grpc.example.com:443"), "{c}");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }
}
