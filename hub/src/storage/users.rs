//! Users, their roles and sessions. Passwords are argon2 hashes; session and API tokens are stored as
//! SHA-256 digests only.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{StorageError, from_ms, now_ms};
use crate::names::Role;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub role: Role,
    /// The only tenant the user sees; all tenants (a contact centre) when null.
    pub tenant_id: Option<i64>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    username: String,
    role: String,
    tenant_id: Option<i64>,
    disabled: i64,
    created_at: i64,
}

impl TryFrom<Row> for User {
    type Error = StorageError;
    fn try_from(r: Row) -> Result<Self, StorageError> {
        Ok(User {
            id: r.id,
            role: super::parse_name("role", &r.role)?,
            username: r.username,
            tenant_id: r.tenant_id,
            disabled: r.disabled != 0,
            created_at: from_ms(r.created_at),
        })
    }
}

const COLUMNS: &str = "id, username, role, tenant_id, disabled, created_at";

/// Checks a user name: 1-64 characters of letters, digits, `.`, `_`, `-`, `@`.
pub fn check_username(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "._-@".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid(
            "username",
            "1-64 letters, digits, '.', '_', '-', '@'",
        ))
    }
}

pub async fn create(
    conn: &mut AnyConnection,
    username: &str,
    password_hash: &str,
    role: Role,
    tenant_id: Option<i64>,
) -> Result<User, StorageError> {
    check_username(username)?;
    let sql = format!(
        "INSERT INTO users (username, password_hash, role, tenant_id, created_at) VALUES ($1, $2, $3, $4, $5)
         RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .bind(password_hash)
        .bind(role.as_str())
        .bind(tenant_id)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| match StorageError::from(e) {
            StorageError::Conflict { .. } => StorageError::Conflict {
                what: format!("user `{username}`"),
            },
            other => other,
        })?;
    row.try_into()
}

pub async fn count(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
        .fetch_one(&mut *conn)
        .await?;
    Ok(n)
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<User>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users ORDER BY id");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<User, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::not_found(format!("user {id}")))?
        .try_into()
}

type CredentialsRow = (i64, String, String, Option<i64>, i64, i64, String);

/// The user and password hash for a login.
pub async fn credentials(
    conn: &mut AnyConnection,
    username: &str,
) -> Result<Option<(User, String)>, StorageError> {
    let sql = format!("SELECT {COLUMNS}, password_hash FROM users WHERE username = $1");
    let row: Option<CredentialsRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(username)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some((id, username, role, tenant_id, disabled, created_at, hash)) => {
            let user = Row {
                id,
                username,
                role,
                tenant_id,
                disabled,
                created_at,
            }
            .try_into()?;
            Ok(Some((user, hash)))
        }
        None => Ok(None),
    }
}

pub async fn update(
    conn: &mut AnyConnection,
    id: i64,
    role: Option<Role>,
    disabled: Option<bool>,
    password_hash: Option<&str>,
) -> Result<User, StorageError> {
    let done = sqlx::query(
        "UPDATE users SET role = COALESCE($1, role), disabled = COALESCE($2, disabled),
           password_hash = COALESCE($3, password_hash) WHERE id = $4",
    )
    .bind(role.map(|r| r.as_str()))
    .bind(disabled.map(i64::from))
    .bind(password_hash)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("user {id}")));
    }
    if disabled == Some(true) || password_hash.is_some() {
        sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    get(conn, id).await
}

pub async fn create_session(
    conn: &mut AnyConnection,
    token_hash: &str,
    user_id: i64,
    kind: &str,
    expires_at: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO sessions (token_hash, user_id, kind, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(token_hash)
        .bind(user_id)
        .bind(kind)
        .bind(now_ms())
        .bind(expires_at.timestamp_millis())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The enabled user owning an unexpired session.
pub async fn by_session(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<User>, StorageError> {
    let sql = "SELECT u.id, u.username, u.role, u.tenant_id, u.disabled, u.created_at FROM sessions s
         JOIN users u ON u.id = s.user_id WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled = 0".to_string();
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token_hash)
        .bind(now_ms())
        .fetch_optional(&mut *conn)
        .await?;
    row.map(TryInto::try_into).transpose()
}

pub async fn delete_session(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<(), StorageError> {
    sqlx::query("DELETE FROM sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
