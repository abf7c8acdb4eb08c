//! The journal of bus events that must not be lost (outages, alarms...): written before the event is
//! published, so a restart can tell what happened.

use sqlx::AnyConnection;

use super::{StorageError, to_ms};

pub async fn append(conn: &mut AnyConnection, event: &rules::Event) -> Result<(), StorageError> {
    let payload = serde_json::to_string(&event.kind).unwrap_or_else(|_| "{}".into());
    sqlx::query("INSERT INTO events (at, source, kind, payload) VALUES ($1, $2, $3, $4)")
        .bind(to_ms(event.at))
        .bind(&event.source)
        .bind(event.kind.name())
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The newest `limit` journal entries as (kind, payload), newest first.
pub async fn recent(
    conn: &mut AnyConnection,
    limit: i64,
) -> Result<Vec<(String, serde_json::Value)>, StorageError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, payload FROM events ORDER BY id DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(k, p)| (k, serde_json::from_str(&p).unwrap_or_default()))
        .collect())
}
