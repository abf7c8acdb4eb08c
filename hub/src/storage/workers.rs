//! Field staff (electricians, plumbers, repair crews): contacts, weekly working hours and the days
//! that differ from them. `crate::tickets` books their visits and tells them by the notification outbox.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{StorageError, from_ms, parse_json_list, to_ms};

/// A worker as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Worker {
    pub id: i64,
    pub tenant_id: i64,
    /// External id of the tenant.
    pub tenant: String,
    pub external_id: String,
    pub name: String,
    /// `electrician`, `plumber`, `fitter`, `repair_crew`, ...
    pub trade: String,
    /// Ticket categories and other skills (`heating`, `water`, `meter`, ...).
    pub skills: Vec<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub telegram: Option<String>,
    /// IANA time zone of the working hours.
    pub time_zone: String,
    /// Weekly hours: `{"mon": ["09:00-13:00", "14:00-18:00"], ...}`, local times.
    #[schema(value_type = Object)]
    pub hours: BTreeMap<String, Vec<String>>,
    /// The hub user the worker logs in as to report completion.
    pub user_id: Option<i64>,
    pub username: Option<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    tenant: String,
    external_id: String,
    name: String,
    trade: String,
    skills: String,
    phone: Option<String>,
    email: Option<String>,
    telegram: Option<String>,
    time_zone: String,
    hours: String,
    user_id: Option<i64>,
    username: Option<String>,
    active: i64,
    created_at: i64,
}

impl From<Row> for Worker {
    fn from(r: Row) -> Self {
        Worker {
            id: r.id,
            tenant_id: r.tenant_id,
            tenant: r.tenant,
            external_id: r.external_id,
            name: r.name,
            trade: r.trade,
            skills: parse_json_list(&r.skills),
            phone: r.phone,
            email: r.email,
            telegram: r.telegram,
            time_zone: r.time_zone,
            hours: serde_json::from_str(&r.hours).unwrap_or_default(),
            user_id: r.user_id,
            username: r.username,
            active: r.active != 0,
            created_at: from_ms(r.created_at),
        }
    }
}

const SELECT: &str = "SELECT w.id, w.tenant_id, t.external_id AS tenant, w.external_id, w.name, w.trade,
       w.skills, w.phone, w.email, w.telegram, w.time_zone, w.hours, w.user_id, u.username, w.active,
       w.created_at
  FROM workers w JOIN tenants t ON t.id = w.tenant_id LEFT JOIN users u ON u.id = w.user_id";

/// The fields of a worker, validated and resolved by `crate::tickets`.
#[derive(Debug, Clone)]
pub struct WorkerRow<'a> {
    pub tenant_id: i64,
    pub external_id: &'a str,
    pub name: &'a str,
    pub trade: &'a str,
    pub skills: &'a [String],
    pub phone: Option<&'a str>,
    pub email: Option<&'a str>,
    pub telegram: Option<&'a str>,
    pub time_zone: &'a str,
    pub hours: &'a BTreeMap<String, Vec<String>>,
    pub user_id: Option<i64>,
    pub active: bool,
}

/// Creates or updates (by tenant and external id) a worker.
pub async fn upsert(
    conn: &mut AnyConnection,
    w: &WorkerRow<'_>,
    now: DateTime<Utc>,
) -> Result<Worker, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO workers (tenant_id, external_id, name, trade, skills, phone, email, telegram,
           time_zone, hours, user_id, active, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (tenant_id, external_id) DO UPDATE SET name = excluded.name,
           trade = excluded.trade, skills = excluded.skills, phone = excluded.phone,
           email = excluded.email, telegram = excluded.telegram, time_zone = excluded.time_zone,
           hours = excluded.hours, user_id = excluded.user_id, active = excluded.active
         RETURNING id",
    )
    .bind(w.tenant_id)
    .bind(w.external_id)
    .bind(w.name)
    .bind(w.trade)
    .bind(super::json_list(w.skills))
    .bind(w.phone)
    .bind(w.email)
    .bind(w.telegram)
    .bind(w.time_zone)
    .bind(serde_json::to_string(w.hours).unwrap_or_else(|_| "{}".into()))
    .bind(w.user_id)
    .bind(i64::from(w.active))
    .bind(to_ms(now))
    .fetch_one(&mut *conn)
    .await?;
    get(conn, id).await
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Worker, StorageError> {
    let sql = format!("{SELECT} WHERE w.id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Worker::from)
        .ok_or_else(|| StorageError::not_found(format!("worker {id}")))
}

/// The worker `external_id` of the tenant; unknown is a `field` error.
pub async fn by_external(
    conn: &mut AnyConnection,
    field: &str,
    tenant_id: i64,
    external_id: &str,
) -> Result<Worker, StorageError> {
    let sql = format!("{SELECT} WHERE w.tenant_id = $1 AND w.external_id = $2");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(external_id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Worker::from)
        .ok_or_else(|| StorageError::invalid(field, format!("no worker `{external_id}`")))
}

/// The worker a hub user is, if any.
pub async fn by_user(
    conn: &mut AnyConnection,
    user_id: i64,
) -> Result<Option<Worker>, StorageError> {
    let sql = format!("{SELECT} WHERE w.user_id = $1 ORDER BY w.id LIMIT 1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(user_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(Worker::from))
}

pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    trade: Option<&str>,
    skill: Option<&str>,
) -> Result<Vec<Worker>, StorageError> {
    let sql = format!(
        "{SELECT} WHERE ($1 IS NULL OR w.tenant_id = $1) AND ($2 IS NULL OR w.trade = $2)
         ORDER BY w.id LIMIT 1000"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(trade)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(Worker::from)
        .filter(|w| skill.is_none_or(|s| w.skills.iter().any(|k| k == s)))
        .collect())
}

/// A day that differs from the weekly hours.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerDay {
    pub day: NaiveDate,
    /// Hours of that day (`["10:00-14:00"]`); empty: a day off.
    pub hours: Vec<String>,
    pub note: String,
}

pub async fn set_day(
    conn: &mut AnyConnection,
    worker_id: i64,
    day: NaiveDate,
    hours: &[String],
    note: &str,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO worker_days (worker_id, day, hours, note) VALUES ($1, $2, $3, $4)
         ON CONFLICT (worker_id, day) DO UPDATE SET hours = excluded.hours, note = excluded.note",
    )
    .bind(worker_id)
    .bind(day.to_string())
    .bind(super::json_list(hours))
    .bind(note)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Removes a day's exception: the weekly hours apply again. False when there was none.
pub async fn clear_day(
    conn: &mut AnyConnection,
    worker_id: i64,
    day: NaiveDate,
) -> Result<bool, StorageError> {
    let done = sqlx::query("DELETE FROM worker_days WHERE worker_id = $1 AND day = $2")
        .bind(worker_id)
        .bind(day.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn days(
    conn: &mut AnyConnection,
    worker_id: i64,
) -> Result<Vec<WorkerDay>, StorageError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT day, hours, note FROM worker_days WHERE worker_id = $1 ORDER BY day",
    )
    .bind(worker_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(day, hours, note)| {
            Some(WorkerDay {
                day: day.parse().ok()?,
                hours: parse_json_list(&hours),
                note,
            })
        })
        .collect())
}
