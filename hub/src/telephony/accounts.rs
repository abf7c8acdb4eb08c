//! The registrar's data: SIP accounts of operators' phones (`sip_accounts`: the user name, the realm and
//! HA1 = MD5(user:realm:password), never the password, linked to a hub user) and their registrations
//! (`sip_registrations`: where each phone can be reached until when). The core keeps both in memory and
//! never awaits the database: accounts are loaded at start and pushed to it on every change, the
//! bindings it accepts are written by the `persist` task in the order it reports them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::storage::{Db, StorageError, from_ms, now_ms};

/// Binding writes the persist task's channel holds; beyond that the core drops and counts them.
pub const PERSIST_CHANNEL: usize = 256;

/// A SIP account as the core checks REGISTER against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub realm: String,
    pub ha1: String,
    pub user_id: i64,
}

/// A SIP account as the API shows it (no HA1).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccountInfo {
    pub username: String,
    pub realm: String,
    /// The hub user (an operator) the phone belongs to.
    pub user: String,
    pub created_at: DateTime<Utc>,
}

/// Where a registered phone can be reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Registration {
    pub username: String,
    /// The Contact URI the phone registered.
    pub contact: String,
    /// The address its REGISTER came from (requests to it go there: NAT).
    pub source: String,
    /// `udp` or `tcp`.
    pub transport: String,
    pub user_agent: Option<String>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut AnyConnection, a: &Account) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO sip_accounts (username, realm, ha1, user_id, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&a.username)
    .bind(&a.realm)
    .bind(&a.ha1)
    .bind(a.user_id)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Deletes an account (its registrations go with it); false when there was none.
pub async fn delete(conn: &mut AnyConnection, username: &str) -> Result<bool, StorageError> {
    sqlx::query("DELETE FROM sip_registrations WHERE username = $1")
        .bind(username)
        .execute(&mut *conn)
        .await?;
    let done = sqlx::query("DELETE FROM sip_accounts WHERE username = $1")
        .bind(username)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn load(conn: &mut AnyConnection) -> Result<Vec<Account>, StorageError> {
    let rows: Vec<(String, String, String, i64)> =
        sqlx::query_as("SELECT username, realm, ha1, user_id FROM sip_accounts ORDER BY username")
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(username, realm, ha1, user_id)| Account {
            username,
            realm,
            ha1,
            user_id,
        })
        .collect())
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<AccountInfo>, StorageError> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT a.username, a.realm, u.username, a.created_at FROM sip_accounts a
         JOIN users u ON u.id = a.user_id ORDER BY a.username",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(username, realm, user, at)| AccountInfo {
            username,
            realm,
            user,
            created_at: from_ms(at),
        })
        .collect())
}

/// Registrations not expired at `now_ms`.
pub async fn live_registrations(
    conn: &mut AnyConnection,
    now: i64,
) -> Result<Vec<Registration>, StorageError> {
    let rows: Vec<(String, String, String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT username, contact, source, transport, user_agent, expires_at FROM sip_registrations
         WHERE expires_at > $1 ORDER BY username, contact",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Registration {
            username: r.0,
            contact: r.1,
            source: r.2,
            transport: r.3,
            user_agent: r.4,
            expires_at: from_ms(r.5),
        })
        .collect())
}

/// A change of bindings the core reports.
#[derive(Debug)]
pub enum BindingOp {
    Upsert(Registration),
    Remove { username: String, contact: String },
}

async fn write(db: &Db, op: BindingOp) -> Result<(), StorageError> {
    let mut conn = db.conn().await?;
    match op {
        BindingOp::Upsert(r) => {
            sqlx::query(
                "INSERT INTO sip_registrations (username, contact, source, transport, user_agent, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (username, contact) DO UPDATE SET source = excluded.source,
                   transport = excluded.transport, user_agent = excluded.user_agent,
                   expires_at = excluded.expires_at",
            )
            .bind(&r.username)
            .bind(&r.contact)
            .bind(&r.source)
            .bind(&r.transport)
            .bind(&r.user_agent)
            .bind(r.expires_at.timestamp_millis())
            .execute(&mut *conn)
            .await?;
        }
        BindingOp::Remove { username, contact } => {
            sqlx::query("DELETE FROM sip_registrations WHERE username = $1 AND contact = $2")
                .bind(&username)
                .bind(&contact)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Writes the core's binding changes in order; expired rows are deleted at start.
pub async fn persist(db: Db, mut ops: mpsc::Receiver<BindingOp>, shutdown: CancellationToken) {
    if let Ok(mut conn) = db.conn().await
        && let Err(e) = sqlx::query("DELETE FROM sip_registrations WHERE expires_at <= $1")
            .bind(now_ms())
            .execute(&mut *conn)
            .await
    {
        tracing::warn!(error = %e, "expired registrations not deleted");
    }
    loop {
        let op = tokio::select! {
            op = ops.recv() => op,
            _ = shutdown.cancelled() => {
                ops.close();
                ops.recv().await
            }
        };
        let Some(op) = op else { return };
        if let Err(e) = write(&db, op).await {
            tracing::warn!(error = %e, "sip registration not saved");
        }
    }
}
