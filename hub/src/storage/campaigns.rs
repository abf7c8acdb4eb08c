//! Campaigns and their contacts: one row per consumer to be told, in the order operators and the
//! dialer take them (life support and social objects first).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms};

/// Contacts per multi-row INSERT.
const CONTACTS_PER_STATEMENT: usize = 2000;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Campaign {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub template: String,
    pub channels: Vec<String>,
    #[schema(value_type = Object)]
    pub audience: serde_json::Value,
    /// `created` (delivery comes with the channels).
    pub status: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub contacts: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    name: String,
    template: String,
    channels: String,
    audience: String,
    status: String,
    created_by: String,
    created_at: i64,
    contacts: i64,
}

impl From<Row> for Campaign {
    fn from(r: Row) -> Self {
        Campaign {
            id: r.id,
            tenant_id: r.tenant_id,
            name: r.name,
            template: r.template,
            channels: serde_json::from_str(&r.channels).unwrap_or_default(),
            audience: serde_json::from_str(&r.audience).unwrap_or_default(),
            status: r.status,
            created_by: r.created_by,
            created_at: from_ms(r.created_at),
            contacts: r.contacts,
        }
    }
}

const COLUMNS: &str =
    "id, tenant_id, name, template, channels, audience, status, created_by, created_at, contacts";

/// One contact to insert: consumer id and priority (0 first).
pub type NewContact = (i64, i64);

#[allow(clippy::too_many_arguments)]
pub async fn create(
    conn: &mut AnyConnection,
    tenant_id: i64,
    name: &str,
    template: &str,
    channels: &[String],
    audience: &serde_json::Value,
    created_by: &str,
    contacts: &[NewContact],
) -> Result<Campaign, StorageError> {
    let sql = format!(
        "INSERT INTO campaigns (tenant_id, name, template, channels, audience, status, created_by, created_at, contacts)
         VALUES ($1, $2, $3, $4, $5, 'created', $6, $7, $8) RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(name)
        .bind(template)
        .bind(serde_json::to_string(channels).unwrap_or_default())
        .bind(audience.to_string())
        .bind(created_by)
        .bind(now_ms())
        .bind(i64::try_from(contacts.len()).unwrap_or(i64::MAX))
        .fetch_one(&mut *conn)
        .await?;
    let now = now_ms();
    for chunk in contacts.chunks(CONTACTS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO campaign_contacts (campaign_id, consumer_id, priority, status, updated_at) VALUES {}",
            super::placeholders(conn, chunk.len(), 5)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (consumer, priority) in chunk {
            q = q
                .bind(row.id)
                .bind(*consumer)
                .bind(*priority)
                .bind("queued")
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(row.into())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Campaign, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM campaigns WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row
        .ok_or_else(|| StorageError::not_found(format!("campaign {id}")))?
        .into())
}

pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    page: PageRequest,
) -> Result<Vec<Campaign>, StorageError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM campaigns WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2) ORDER BY id LIMIT $3"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(tenant_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// A contact as the operators' list and the API show it.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Contact {
    pub id: i64,
    pub consumer_id: i64,
    pub external_id: String,
    pub name: String,
    /// 0: life support or a social object (a human operator calls first); 1: everyone else.
    pub priority: i64,
    pub status: String,
}

/// Contacts in calling order (they are inserted in that order).
pub async fn contacts(
    conn: &mut AnyConnection,
    campaign_id: i64,
    page: PageRequest,
) -> Result<Vec<Contact>, StorageError> {
    let rows: Vec<Contact> = sqlx::query_as(
        "SELECT cc.id, cc.consumer_id, c.external_id, c.name, cc.priority, cc.status
         FROM campaign_contacts cc JOIN consumers c ON c.id = cc.consumer_id
         WHERE cc.campaign_id = $1 AND cc.id > $2 ORDER BY cc.id LIMIT $3",
    )
    .bind(campaign_id)
    .bind(page.after)
    .bind(page.limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}
