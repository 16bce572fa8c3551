//! Start-up of everything durable: the store, the JWT secret, the first
//! admin account, and the sticky ports remembered from earlier runs.

use crate::ServerError;
use crate::accounts::{Passwords, Tokens};
use crate::config::ServerConfig;
use crate::secrets;
use rand::Rng;
use silo_store::{NewUser, Role, Store, StoreError};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{info, warn};

/// Written 0600 on first start; holds the password of `root`.
pub const ROOT_PASSWORD_FILE: &str = "initial-root-password";
/// Generated HS256 secret when `jwt.secret` is empty.
pub const JWT_SECRET_FILE: &str = "jwt-secret";
/// The SQLite file when `db.url` is empty.
pub const SQLITE_FILE: &str = "silo.db";
/// Name of the account created on first start.
pub const ROOT_USERNAME: &str = "root";

/// What `run` hands to [`crate::state::ServerState::new`].
pub struct Persistence {
    pub store: Store,
    pub tokens: Tokens,
    /// Sticky agent ports by normalised agent id, to seed the port pool.
    pub sticky_ports: HashMap<String, u16>,
}

/// Opens the store and prepares accounts; any failure stops the start.
pub async fn prepare(config: &ServerConfig) -> Result<Persistence, ServerError> {
    let store = open_store(config).await?;
    let tokens = tokens(config)?;
    ensure_root(&store, &config.data_dir).await?;
    let sticky_ports = store
        .agent_ports()
        .await?
        .into_iter()
        .map(|(id, port)| (silo_core::id::normalize_agent_id(&id), port))
        .collect();
    Ok(Persistence {
        store,
        tokens,
        sticky_ports,
    })
}

/// `db.url` empty = SQLite in `data_dir`; else the URL (`db.schema` for
/// PostgreSQL). Errors name the URL with its password masked.
pub async fn open_store(config: &ServerConfig) -> Result<Store, ServerError> {
    let store = if config.db.url.is_empty() {
        let path = config.data_dir.join(SQLITE_FILE);
        create_private_file(&path).map_err(|source| ServerError::DataDir {
            path: path.clone(),
            source,
        })?;
        Store::open_sqlite_file(path).await?
    } else {
        Store::open(&config.db.url, &config.db.schema).await?
    };
    info!(
        backend = store.backend_name(),
        url = store.display_url(),
        "database ready"
    );
    Ok(store)
}

/// The database holds password hashes: create it (and so its `-wal` and
/// `-shm` companions, which SQLite gives the same mode) 0600 in a 0700
/// `data_dir`. SQLite takes an empty file as a new database.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        secrets::create_private_dir(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn tokens(config: &ServerConfig) -> Result<Tokens, ServerError> {
    let secret = if config.jwt.secret.0.is_empty() {
        let path = config.data_dir.join(JWT_SECRET_FILE);
        let (secret, created) =
            secrets::load_or_create(&path, 32).map_err(|source| ServerError::DataDir {
                path: path.clone(),
                source,
            })?;
        if created {
            info!(file = %path.display(), "generated the JWT signing secret");
        }
        secret
    } else {
        let secret = config.jwt.secret.0.clone();
        if secret.len() < 32 {
            warn!("jwt.secret is shorter than 32 bytes: tokens are easier to forge");
        }
        secret
    };
    let ttl = Duration::from_secs(config.jwt.expiration_minutes.saturating_mul(60));
    Tokens::new(secret.as_bytes(), ttl).map_err(ServerError::Accounts)
}

/// On a store without accounts, creates `root` (Admin) with a random
/// password written 0600 to `data_dir`. The file is written before the
/// account exists, so a crash in between never leaves an admin whose
/// password nobody knows; the next start simply writes a new one.
async fn ensure_root(store: &Store, data_dir: &Path) -> Result<(), ServerError> {
    let (_, total) = store.list_users(1, 1).await?;
    if total > 0 {
        return Ok(());
    }
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let path = data_dir.join(ROOT_PASSWORD_FILE);
    secrets::write_private(&path, password.as_bytes()).map_err(|source| ServerError::DataDir {
        path: path.clone(),
        source,
    })?;
    let password_hash = Passwords::default()
        .hash(password.clone())
        .await
        .map_err(ServerError::Accounts)?;
    let root = NewUser {
        username: ROOT_USERNAME.into(),
        password_hash,
        role: Role::Admin,
        created_at: OffsetDateTime::now_utc(),
    };
    match store.create_user(&root).await {
        Ok(_) => {
            info!(
                file = %path.display(),
                "created the admin account \"root\"; its initial password is in this file"
            );
            // The secret goes to a person at a terminal only, never to a
            // log collector.
            if std::io::stderr().is_terminal() {
                eprintln!("initial password of \"root\": {password}");
            }
            Ok(())
        }
        Err(StoreError::Conflict(_)) => {
            // Another server on the same database created it first; our
            // password is not root's, so do not leave it lying around.
            let _ = std::fs::remove_file(&path);
            info!("the account \"root\" was created by another server");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
