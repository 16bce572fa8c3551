//! Account primitives with no HTTP in them: Argon2id password hashes, HS256
//! tokens, and the validation rules of usernames, passwords and roles.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use silo_store::{Role, User};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::{OnceCell, Semaphore};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Usernames are 3..=255 characters; passwords at least 8.
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=255;
pub const MIN_PASSWORD_CHARS: usize = 8;

pub fn validate_username(username: &str) -> Result<(), String> {
    let n = username.chars().count();
    if !USERNAME_CHARS.contains(&n) {
        return Err("username must be 3 to 255 characters".into());
    }
    if username.chars().any(char::is_control) {
        return Err("username must not contain control characters".into());
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    Ok(())
}

/// `Admin` or `User`, spelled exactly so.
pub fn parse_role(role: &str) -> Result<Role, String> {
    role.parse()
        .map_err(|_| format!("role must be \"Admin\" or \"User\", not {role:?}"))
}

/// Argon2id hashing off the async runtime, with a bound on how many run at
/// once: each takes ~19 MiB and a CPU for tens of milliseconds, so an
/// unbounded burst would exhaust memory long before the rate limits bite.
pub struct Passwords {
    permits: Semaphore,
    /// Hash compared against when a username does not exist, so a login
    /// for an unknown name costs the same time as a wrong password.
    dummy: OnceCell<String>,
}

impl Default for Passwords {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            permits: Semaphore::new(cpus * 2),
            dummy: OnceCell::new(),
        }
    }
}

impl Passwords {
    /// A PHC string (`$argon2id$v=19$...`) with a random salt.
    pub async fn hash(&self, password: String) -> Result<String, BoxError> {
        self.blocking(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| format!("hashing a password: {e}").into())
        })
        .await
    }

    /// Whether `password` matches the stored PHC string.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, BoxError> {
        self.blocking(move || {
            let parsed = PasswordHash::new(&hash)
                .map_err(|e| format!("stored password hash is unreadable: {e}"))?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    /// Spends the time of a verification and always fails.
    pub async fn verify_unknown_user(&self, password: String) -> Result<bool, BoxError> {
        let dummy = self
            .dummy
            .get_or_try_init(|| self.hash("no such user: timing filler".into()))
            .await?
            .clone();
        self.verify(password, dummy).await.map(|_| false)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, BoxError> + Send + 'static,
    ) -> Result<T, BoxError> {
        let _permit = self.permits.acquire().await?;
        tokio::task::spawn_blocking(work).await?
    }
}

/// The claims of an API token (compat with the original implementation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub user_id: i64,
    pub username: String,
    pub role: String,
    pub iat: i64,
    pub exp: i64,
}

/// Issues and checks HS256 tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Self, BoxError> {
        let mut validation = Validation::new(Algorithm::HS256);
        // One server issues and checks its own tokens: no clock skew to
        // allow for beyond a few seconds between replicas.
        validation.leeway = 5;
        validation.validate_aud = false;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret)?,
            decoding: DecodingKey::from_secret(secret)?,
            validation,
            ttl,
        })
    }

    pub fn issue(&self, user: &User) -> Result<String, BoxError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            user_id: user.id,
            username: user.username.clone(),
            role: user.role.as_str().to_owned(),
            iat: now,
            exp: now.saturating_add(ttl),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The claims of a well-formed, correctly signed, unexpired token.
    /// Whether its user still exists is the caller's check.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

/// Whether the token's claims still describe `user`: same account (a
/// token older than the account belongs to an earlier holder of the id) and
/// same name.
pub fn claims_match(claims: &Claims, user: &User) -> bool {
    claims.username == user.username && claims.iat >= user.created_at.unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> User {
        User {
            id: 7,
            username: "alice".into(),
            password_hash: String::new(),
            role,
            created_at: OffsetDateTime::now_utc() - time::Duration::minutes(1),
        }
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let tokens = Tokens::new(&[7; 32], Duration::from_secs(60)).unwrap();
        let t = tokens.issue(&user(Role::Admin)).unwrap();
        let c = tokens.verify(&t).unwrap();
        assert_eq!(
            (c.user_id, c.username.as_str(), c.role.as_str()),
            (7, "alice", "Admin")
        );
        assert_eq!(c.exp - c.iat, 60);
        assert!(claims_match(&c, &user(Role::User)));
        let other = Tokens::new(&[8; 32], Duration::from_secs(60)).unwrap();
        assert!(other.verify(&t).is_none(), "wrong secret");
        assert!(tokens.verify("garbage").is_none());
        let mut later = user(Role::User);
        later.created_at = OffsetDateTime::now_utc() + time::Duration::minutes(1);
        assert!(!claims_match(&c, &later), "account newer than the token");
    }

    #[test]
    fn validation_rules() {
        assert!(validate_username("ab").is_err());
        assert!(validate_username("abc").is_ok());
        assert!(validate_username(&"x".repeat(255)).is_ok());
        assert!(validate_username(&"x".repeat(256)).is_err());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert_eq!(parse_role("Admin").unwrap(), Role::Admin);
        assert!(parse_role("admin").is_err());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let p = Passwords::default();
        let h = p.hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(p.verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!p.verify("wrong horse".into(), h).await.unwrap());
        assert!(!p.verify_unknown_user("x".into()).await.unwrap());
    }
}
