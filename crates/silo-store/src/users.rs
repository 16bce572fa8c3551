//! Accounts: username, Argon2 password hash (computed by the caller), role.

use time::OffsetDateTime;

use crate::error::{conflict_or, db_err, decode_err};
use crate::open::with_pool;
use crate::ts::{from_ms, to_ms};
use crate::{Result, Store, StoreError};

/// Account role; stored as the strings `Admin` / `User` (the original API's
/// spelling, which also appears in JWTs and JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "Admin",
            Role::User => "User",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    /// Exact spelling only: roles are compared as written in tokens.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Admin" => Ok(Role::Admin),
            "User" => Ok(Role::User),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

/// A stored account.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    /// Argon2 PHC string. Redacted from `Debug`.
    pub password_hash: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Input of [`Store::create_user`].
#[derive(Clone)]
pub struct NewUser {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("password_hash", &"<redacted>")
            .field("role", &self.role)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    username: String,
    password_hash: String,
    role: String,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(row: UserRow) -> Result<Self> {
        Ok(User {
            id: row.id,
            role: row.role.parse().map_err(decode_err)?,
            username: row.username,
            password_hash: row.password_hash,
            created_at: from_ms(row.created_at)?,
        })
    }
}

/// Column list shared by every query returning a [`UserRow`]; a macro so
/// `concat!` can build `&'static str` SQL from it.
macro_rules! user_columns {
    () => {
        "id, username, password_hash, role, created_at"
    };
}

impl Store {
    /// Creates an account. A taken username (exact, case-sensitive match)
    /// is `StoreError::Conflict("username already exists")`.
    pub async fn create_user(&self, user: &NewUser) -> Result<User> {
        const SQL: &str = concat!(
            "INSERT INTO users (username, password_hash, role, created_at) ",
            "VALUES ($1, $2, $3, $4) RETURNING ",
            user_columns!()
        );
        let row: UserRow = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(&user.username)
            .bind(&user.password_hash)
            .bind(user.role.as_str())
            .bind(to_ms(user.created_at))
            .fetch_one(p)
            .await)
        .map_err(|e| conflict_or(e, || "username already exists".into()))?;
        row.try_into()
    }

    pub async fn get_user(&self, id: i64) -> Result<Option<User>> {
        const SQL: &str = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
        let row: Option<UserRow> =
            with_pool!(self, p => sqlx::query_as(SQL).bind(id).fetch_optional(p).await)
                .map_err(db_err)?;
        row.map(User::try_from).transpose()
    }

    pub async fn get_user_by_username(&self, username: &str) -> Result<Option<User>> {
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE username = $1"
        );
        let row: Option<UserRow> =
            with_pool!(self, p => sqlx::query_as(SQL).bind(username).fetch_optional(p).await)
                .map_err(db_err)?;
        row.map(User::try_from).transpose()
    }

    /// One page of accounts in id order plus the total number of accounts.
    /// `page` is 1-based; 0 is treated as 1 and `page_size` at least 1.
    pub async fn list_users(&self, page: u32, page_size: u32) -> Result<(Vec<User>, u64)> {
        const SQL: &str = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY id LIMIT $1 OFFSET $2"
        );
        const COUNT: &str = "SELECT COUNT(*) FROM users";
        let limit = i64::from(page_size.max(1));
        let offset = i64::from(page.max(1) - 1) * limit;
        let rows: Vec<UserRow> = with_pool!(self, p => sqlx::query_as(SQL)
            .bind(limit)
            .bind(offset)
            .fetch_all(p)
            .await)
        .map_err(db_err)?;
        let total: i64 =
            with_pool!(self, p => sqlx::query_scalar(COUNT).fetch_one(p).await).map_err(db_err)?;
        let users = rows
            .into_iter()
            .map(User::try_from)
            .collect::<Result<_>>()?;
        Ok((users, u64::try_from(total).unwrap_or(0)))
    }

    /// Deletes an account; false when it did not exist.
    pub async fn delete_user(&self, id: i64) -> Result<bool> {
        const SQL: &str = "DELETE FROM users WHERE id = $1";
        let done = with_pool!(self, p => sqlx::query(SQL).bind(id).execute(p).await.map(|r| r.rows_affected()))
            .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Changes an account's role; false when it did not exist.
    pub async fn set_user_role(&self, id: i64, role: Role) -> Result<bool> {
        const SQL: &str = "UPDATE users SET role = $2 WHERE id = $1";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(role.as_str())
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Replaces an account's password hash; false when it did not exist.
    pub async fn set_user_password_hash(&self, id: i64, password_hash: &str) -> Result<bool> {
        const SQL: &str = "UPDATE users SET password_hash = $2 WHERE id = $1";
        let done = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(password_hash)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_err)?;
        Ok(done > 0)
    }

    /// Number of accounts with role Admin (to refuse removing the last one).
    pub async fn count_admins(&self) -> Result<u64> {
        const SQL: &str = "SELECT COUNT(*) FROM users WHERE role = 'Admin'";
        let n: i64 =
            with_pool!(self, p => sqlx::query_scalar(SQL).fetch_one(p).await).map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
