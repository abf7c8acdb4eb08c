//! Telephony's tables: `calls` (written by the recorder task in the order the core reports, read by
//! `GET /api/v1/calls`) and `ivr_overrides` (written by `set_ivr_mode`, read when a call comes in).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::storage::{PageRequest, StorageError, from_ms, now_ms};

/// How the IVR greets callers of a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IvrMode {
    /// Business hours: the full menu.
    Day,
    /// Outside business hours: the night menu (dispatcher only).
    Night,
    /// An incident: the announcement, then the menu.
    Emergency,
}

impl IvrMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IvrMode::Day => "day",
            IvrMode::Night => "night",
            IvrMode::Emergency => "emergency",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(IvrMode::Day),
            "night" => Some(IvrMode::Night),
            "emergency" => Some(IvrMode::Emergency),
            _ => None,
        }
    }
}

/// A site's override of the mode chosen by business hours.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct IvrOverride {
    pub site_id: i64,
    pub mode: IvrMode,
    pub announcement: Option<String>,
    pub set_by: String,
    pub set_at: DateTime<Utc>,
}

/// Sets (or with `None` clears) the override of a site.
pub async fn set_override(
    conn: &mut AnyConnection,
    site_id: i64,
    mode: Option<IvrMode>,
    announcement: Option<&str>,
    actor: &str,
) -> Result<(), StorageError> {
    match mode {
        None => {
            sqlx::query("DELETE FROM ivr_overrides WHERE site_id = $1")
                .bind(site_id)
                .execute(&mut *conn)
                .await?;
        }
        Some(mode) => {
            sqlx::query(
                "INSERT INTO ivr_overrides (site_id, mode, announcement, set_by, set_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (site_id) DO UPDATE SET mode = excluded.mode, announcement = excluded.announcement,
                   set_by = excluded.set_by, set_at = excluded.set_at",
            )
            .bind(site_id)
            .bind(mode.as_str())
            .bind(announcement)
            .bind(actor)
            .bind(now_ms())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// The override of the nearest of `sites` (given nearest first) that has one.
pub async fn nearest_override(
    conn: &mut AnyConnection,
    sites: &[i64],
) -> Result<Option<IvrOverride>, StorageError> {
    for site in sites {
        let row: Option<(i64, String, Option<String>, String, i64)> = sqlx::query_as(
            "SELECT site_id, mode, announcement, set_by, set_at FROM ivr_overrides WHERE site_id = $1",
        )
        .bind(*site)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((site_id, mode, announcement, set_by, set_at)) = row
            && let Some(mode) = IvrMode::parse(&mode)
        {
            return Ok(Some(IvrOverride {
                site_id,
                mode,
                announcement,
                set_by,
                set_at: from_ms(set_at),
            }));
        }
    }
    Ok(None)
}

/// One call as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CallRecord {
    pub id: i64,
    /// The SIP Call-ID.
    pub sip_call_id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub from: String,
    pub to: String,
    pub tenant_id: Option<i64>,
    /// The consumer recognized by the calling number.
    pub consumer_id: Option<i64>,
    /// The consumer's complex (top-level site).
    pub site_id: Option<i64>,
    /// IVR mode the call was greeted in.
    pub mode: Option<String>,
    pub started_at: DateTime<Utc>,
    pub answered_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Inbound: `ringing`, `answered` (in progress or ended by the caller), `completed` (ended by the
    /// hub), `transferred`, `cancelled`, `failed`. Outbound: `dialing`, `ringing`, `answered`,
    /// `confirmed`, `answering_machine`, `busy`, `no_answer`, `rejected`, `failed`.
    pub outcome: String,
    /// DTMF digits the caller pressed, in order.
    pub digits: String,
    /// Queue the caller chose (the menu branch), if any.
    pub queue: Option<String>,
    /// Outbound: why the call was made (`campaign`, `escalation`, `callback`, ...).
    pub purpose: Option<String>,
    /// Outbound: the confirming digit (`digit 1`), the SIP code of a refusal (`sip 404`) or why it failed.
    pub detail: Option<String>,
}

/// A `calls` row (more columns than sqlx reads into a tuple).
#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    sip_call_id: String,
    direction: String,
    from_number: String,
    to_number: String,
    tenant_id: Option<i64>,
    consumer_id: Option<i64>,
    site_id: Option<i64>,
    mode: Option<String>,
    started_at: i64,
    answered_at: Option<i64>,
    ended_at: Option<i64>,
    outcome: String,
    digits: String,
    queue: Option<String>,
    purpose: Option<String>,
    detail: Option<String>,
}

const COLUMNS: &str = "id, sip_call_id, direction, from_number, to_number, tenant_id, consumer_id, site_id, mode, \
                       started_at, answered_at, ended_at, outcome, digits, queue, purpose, detail";

fn record(r: Row) -> CallRecord {
    CallRecord {
        id: r.id,
        sip_call_id: r.sip_call_id,
        direction: r.direction,
        from: r.from_number,
        to: r.to_number,
        tenant_id: r.tenant_id,
        consumer_id: r.consumer_id,
        site_id: r.site_id,
        mode: r.mode,
        started_at: from_ms(r.started_at),
        answered_at: r.answered_at.map(from_ms),
        ended_at: r.ended_at.map(from_ms),
        outcome: r.outcome,
        digits: r.digits,
        queue: r.queue,
        purpose: r.purpose,
        detail: r.detail,
    }
}

pub async fn insert(
    conn: &mut AnyConnection,
    sip_call_id: &str,
    from: &str,
    to: &str,
    started_at: i64,
) -> Result<i64, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO calls (sip_call_id, direction, from_number, to_number, started_at, outcome)
         VALUES ($1, 'inbound', $2, $3, $4, 'ringing') RETURNING id",
    )
    .bind(sip_call_id)
    .bind(from)
    .bind(to)
    .bind(started_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

pub async fn set_caller(
    conn: &mut AnyConnection,
    id: i64,
    tenant_id: Option<i64>,
    consumer_id: Option<i64>,
    site_id: Option<i64>,
    mode: IvrMode,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE calls SET tenant_id = $1, consumer_id = $2, site_id = $3, mode = $4 WHERE id = $5",
    )
    .bind(tenant_id)
    .bind(consumer_id)
    .bind(site_id)
    .bind(mode.as_str())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn answered(conn: &mut AnyConnection, id: i64, at: i64) -> Result<(), StorageError> {
    sqlx::query("UPDATE calls SET answered_at = $1, outcome = 'answered' WHERE id = $2")
        .bind(at)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn ended(
    conn: &mut AnyConnection,
    id: i64,
    at: i64,
    outcome: &str,
    digits: &str,
    queue: Option<&str>,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE calls SET ended_at = $1, outcome = $2, digits = $3, queue = $4 WHERE id = $5",
    )
    .bind(at)
    .bind(outcome)
    .bind(digits)
    .bind(queue)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Newest first; `after` is "older than this id" when non-zero, like the audit log.
pub async fn list(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    page: PageRequest,
) -> Result<Vec<CallRecord>, StorageError> {
    let before = if page.after == 0 {
        i64::MAX
    } else {
        page.after
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM calls WHERE id < $1 AND ($2 IS NULL OR tenant_id = $2) ORDER BY id DESC LIMIT $3"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(before)
        .bind(tenant_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(record).collect())
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<CallRecord, StorageError> {
    let sql = format!("SELECT {COLUMNS} FROM calls WHERE id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(record)
        .ok_or_else(|| StorageError::not_found(format!("call {id}")))
}

/// An override with its site's names, as the API lists them.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct IvrOverrideRow {
    pub site_id: i64,
    pub site: String,
    pub tenant: String,
    pub mode: String,
    pub announcement: Option<String>,
    pub set_by: String,
    #[serde(skip)]
    pub set_at_ms: i64,
}

/// Every override, of one tenant or all.
pub async fn list_overrides(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
) -> Result<Vec<IvrOverrideRow>, StorageError> {
    let rows: Vec<IvrOverrideRow> = sqlx::query_as(
        "SELECT o.site_id, s.external_id AS site, t.external_id AS tenant, o.mode, o.announcement,
                o.set_by, o.set_at AS set_at_ms
         FROM ivr_overrides o JOIN sites s ON s.id = o.site_id JOIN tenants t ON t.id = s.tenant_id
         WHERE ($1 IS NULL OR s.tenant_id = $1) ORDER BY o.site_id",
    )
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// The row of an outbound call, written by `Telephony::place` before the call is dialled.
pub async fn insert_outbound(
    conn: &mut AnyConnection,
    sip_call_id: &str,
    from: &str,
    to: &str,
    purpose: &str,
    tenant_id: Option<i64>,
    started_at: i64,
) -> Result<i64, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO calls (sip_call_id, direction, from_number, to_number, tenant_id, purpose, started_at, outcome)
         VALUES ($1, 'outbound', $2, $3, $4, $5, $6, 'dialing') RETURNING id",
    )
    .bind(sip_call_id)
    .bind(from)
    .bind(to)
    .bind(tenant_id)
    .bind(purpose)
    .bind(started_at)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

pub async fn set_detail(
    conn: &mut AnyConnection,
    id: i64,
    detail: &str,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE calls SET detail = $1 WHERE id = $2")
        .bind(detail)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
