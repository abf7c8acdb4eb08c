//! Tenants: suppliers and management companies. Every other record belongs to one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, now_ms};
use crate::names::TenantKind;
use crate::types::{ExternalId, TimeZone};

/// Opening hours per weekday (`mon`..`sun`) as `HH:MM-HH:MM`, or null when closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(
    try_from = "BTreeMap<String, Option<String>>",
    into = "BTreeMap<String, Option<String>>"
)]
#[schema(value_type = Object, example = json!({"mon": "08:00-17:00", "sat": null}))]
pub struct BusinessHours(BTreeMap<String, Option<String>>);

pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Default for BusinessHours {
    fn default() -> Self {
        let mut m = BTreeMap::new();
        for (i, d) in WEEKDAYS.iter().enumerate() {
            m.insert((*d).to_owned(), (i < 5).then(|| "08:00-17:00".to_owned()));
        }
        BusinessHours(m)
    }
}

impl TryFrom<BTreeMap<String, Option<String>>> for BusinessHours {
    type Error = String;
    fn try_from(map: BTreeMap<String, Option<String>>) -> Result<Self, String> {
        let mut out = BusinessHours::default().0;
        for (day, hours) in map {
            if !WEEKDAYS.contains(&day.as_str()) {
                return Err(format!(
                    "`{day}` is not a weekday: use mon, tue, wed, thu, fri, sat, sun"
                ));
            }
            if let Some(h) = &hours {
                parse_span(h).ok_or_else(|| format!("{day}: `{h}` is not HH:MM-HH:MM"))?;
            }
            out.insert(day, hours);
        }
        Ok(BusinessHours(out))
    }
}

impl From<BusinessHours> for BTreeMap<String, Option<String>> {
    fn from(b: BusinessHours) -> Self {
        b.0
    }
}

impl BusinessHours {
    /// Opening and closing minute of the day for a weekday (0 = Monday), if open.
    pub fn span(&self, weekday: usize) -> Option<(u32, u32)> {
        let day = WEEKDAYS.get(weekday)?;
        self.0.get(*day)?.as_deref().and_then(parse_span)
    }
}

fn parse_span(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let minute = |t: &str| {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let (a, b) = (minute(a)?, minute(b)?);
    (a < b).then_some((a, b))
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Tenant {
    pub id: i64,
    pub external_id: String,
    pub name: String,
    pub kind: TenantKind,
    pub time_zone: String,
    pub business_hours: BusinessHours,
    pub created_at: DateTime<Utc>,
}

/// A tenant to create or update (upsert by `external_id`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub external_id: ExternalId,
    pub name: String,
    pub kind: TenantKind,
    /// IANA time zone; Europe/Moscow when omitted.
    #[serde(default)]
    pub time_zone: TimeZone,
    /// Weekdays 08:00-17:00 when omitted.
    #[serde(default)]
    pub business_hours: BusinessHours,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    external_id: String,
    name: String,
    kind: String,
    time_zone: String,
    business_hours: String,
    created_at: i64,
}

impl TryFrom<Row> for Tenant {
    type Error = StorageError;
    fn try_from(r: Row) -> Result<Self, StorageError> {
        Ok(Tenant {
            id: r.id,
            kind: super::parse_name("kind", &r.kind)?,
            business_hours: serde_json::from_str(&r.business_hours).unwrap_or_default(),
            external_id: r.external_id,
            name: r.name,
            time_zone: r.time_zone,
            created_at: from_ms(r.created_at),
        })
    }
}

const COLUMNS: &str = "id, external_id, name, kind, time_zone, business_hours, created_at";

pub async fn upsert(conn: &mut AnyConnection, t: &NewTenant) -> Result<Tenant, StorageError> {
    if t.name.trim().is_empty() {
        return Err(StorageError::invalid("name", "must not be empty"));
    }
    let hours = serde_json::to_string(&t.business_hours).unwrap_or_else(|_| "{}".into());
    let sql = format!(
        "INSERT INTO tenants (external_id, name, kind, time_zone, business_hours, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (external_id) DO UPDATE SET name = excluded.name, kind = excluded.kind,
           time_zone = excluded.time_zone, business_hours = excluded.business_hours
         RETURNING {COLUMNS}"
    );
    let row: Row = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(t.external_id.as_str())
        .bind(&t.name)
        .bind(t.kind.as_str())
        .bind(t.time_zone.as_str())
        .bind(hours)
        .bind(now_ms())
        .fetch_one(&mut *conn)
        .await?;
    row.try_into()
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Tenant, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::not_found(format!("tenant {id}")))?
        .try_into()
}

pub async fn by_external(
    conn: &mut AnyConnection,
    external_id: &str,
) -> Result<Tenant, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE external_id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(external_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::invalid("tenant", format!("no tenant `{external_id}`")))?
        .try_into()
}

pub async fn list(
    conn: &mut AnyConnection,
    page: PageRequest,
) -> Result<Vec<Tenant>, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id > $1 ORDER BY id LIMIT $2");
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(TryInto::try_into).collect()
}

pub async fn delete(conn: &mut AnyConnection, id: i64) -> Result<(), StorageError> {
    let done = sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StorageError::not_found(format!("tenant {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_db;

    pub fn sample(ext: &str) -> NewTenant {
        serde_json::from_value(
            serde_json::json!({"external_id": ext, "name": "Teplo", "kind": "supplier"}),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn upsert_is_idempotent_by_external_id() {
        let (db, _d) = test_db::fresh().await;
        let mut c = db.conn().await.unwrap();
        let a = upsert(&mut c, &sample("t1")).await.unwrap();
        let mut again = sample("t1");
        again.name = "Teplo 2".into();
        let b = upsert(&mut c, &again).await.unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(get(&mut c, a.id).await.unwrap().name, "Teplo 2");
        assert_eq!(b.time_zone, "Europe/Moscow");
        assert_eq!(b.business_hours.span(0), Some((480, 1020)));
        assert_eq!(b.business_hours.span(6), None);
        assert_eq!(list(&mut c, PageRequest::default()).await.unwrap().len(), 1);
    }

    #[test]
    fn business_hours_are_checked() {
        let bad: Result<BusinessHours, _> =
            serde_json::from_value(serde_json::json!({"mon": "18:00-08:00"}));
        assert!(bad.is_err());
        let bad: Result<BusinessHours, _> =
            serde_json::from_value(serde_json::json!({"monday": null}));
        assert!(bad.is_err());
    }
}
