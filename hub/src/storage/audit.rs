//! The audit log: who did what, written in the same transaction as the change it records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// User name, or `cli`, `system`, `rule:NAME`.
    pub actor: String,
    /// `create`, `update`, `delete`, `import`, `login`, ...
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub details: serde_json::Value,
}

pub async fn record(
    conn: &mut AnyConnection,
    actor: &str,
    action: &str,
    object_type: &str,
    object_id: &str,
    details: serde_json::Value,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO audit_log (at, actor, action, object_type, object_id, details) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(now_ms())
        .bind(actor)
        .bind(action)
        .bind(object_type)
        .bind(object_id)
        .bind(details.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Newest first: `after` is taken as "older than this id" when non-zero.
pub async fn list(
    conn: &mut AnyConnection,
    actor: Option<&str>,
    object_type: Option<&str>,
    page: PageRequest,
) -> Result<Vec<AuditEntry>, StorageError> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let rows: Vec<(i64, i64, String, String, String, String, String)> = sqlx::query_as(
        "SELECT id, at, actor, action, object_type, object_id, details FROM audit_log
         WHERE id < $1 AND ($2 IS NULL OR actor = $2) AND ($3 IS NULL OR object_type = $3)
         ORDER BY id DESC LIMIT $4",
    )
    .bind(before)
    .bind(actor)
    .bind(object_type)
    .bind(page.limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, at, actor, action, object_type, object_id, details)| AuditEntry {
                id,
                at: from_ms(at),
                actor,
                action,
                object_type,
                object_id,
                details: serde_json::from_str(&details).unwrap_or_default(),
            },
        )
        .collect())
}
