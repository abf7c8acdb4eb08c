//! Alarms, their history and the outbox of staff notifications: the rows behind `crate::alarms`, which
//! owns the life cycle (dedupe, acknowledge, escalate) and calls these in its transactions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, json_list, parse_json_list, to_ms};
use crate::names::names;

names! {
    /// How bad an alarm is (the same names as the rules' `Severity`).
    pub enum AlarmSeverity { Critical = "critical", Major = "major", Minor = "minor", Warning = "warning" }
}

names! {
    /// Where an alarm is in its life cycle. Shelving and inhibition are marks, not states.
    pub enum AlarmState { Active = "active", Acknowledged = "acknowledged", Cleared = "cleared" }
}

names! {
    /// `?state=` of the alarm list: `active` leaves out shelved alarms, `open` is every alarm not cleared.
    pub enum StateFilter {
        Active = "active", Acknowledged = "acknowledged", Cleared = "cleared", Open = "open",
        Shelved = "shelved",
    }
}

impl From<rules::Severity> for AlarmSeverity {
    fn from(s: rules::Severity) -> Self {
        match s {
            rules::Severity::Critical => AlarmSeverity::Critical,
            rules::Severity::Major => AlarmSeverity::Major,
            rules::Severity::Minor => AlarmSeverity::Minor,
            rules::Severity::Warning => AlarmSeverity::Warning,
        }
    }
}

/// An alarm as the API and the UI show it, with the external ids of what it refers to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Alarm {
    pub id: i64,
    /// Dedupe key: while an alarm with this key is not cleared, raising it again repeats it.
    pub key: String,
    pub tenant_id: Option<i64>,
    /// External id of the tenant.
    pub tenant: Option<String>,
    pub severity: AlarmSeverity,
    pub message: String,
    /// Who raised it: `rule:NAME`, a user name, `api`.
    pub source: String,
    pub sensor_id: Option<i64>,
    pub sensor: Option<String>,
    pub site_id: Option<i64>,
    pub site: Option<String>,
    pub supply_point_id: Option<i64>,
    pub supply_point: Option<String>,
    pub state: AlarmState,
    /// Times raised while not cleared.
    pub count: i64,
    pub raised_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub ack_comment: Option<String>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub cleared_by: Option<String>,
    pub clear_reason: Option<String>,
    /// Hidden from the active list and not escalated until then.
    pub shelved_until: Option<DateTime<Utc>>,
    /// The alarm upstream in the supply network that explains this one; not escalated while set.
    pub inhibited_by: Option<i64>,
    /// A planned outage covers what the alarm is about: shown, but not escalated.
    pub in_maintenance: bool,
    /// Notifications sent so far by the escalation policy.
    pub escalation_step: i64,
    /// When the next escalation is due; null when none is (acknowledged, cleared, paused).
    pub next_escalation_at: Option<DateTime<Utc>>,
    /// The supply point and site of the alarm's sensor, for inhibition and maintenance.
    #[serde(skip)]
    pub sensor_point_id: Option<i64>,
    #[serde(skip)]
    pub sensor_site_id: Option<i64>,
}

impl Alarm {
    pub fn is_shelved(&self, now: DateTime<Utc>) -> bool {
        self.shelved_until.is_some_and(|u| u > now)
    }

    pub fn is_open(&self) -> bool {
        self.state != AlarmState::Cleared
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    key: String,
    tenant_id: Option<i64>,
    tenant: Option<String>,
    severity: String,
    message: String,
    source: String,
    sensor_id: Option<i64>,
    sensor: Option<String>,
    sensor_point_id: Option<i64>,
    sensor_site_id: Option<i64>,
    site_id: Option<i64>,
    site: Option<String>,
    supply_point_id: Option<i64>,
    supply_point: Option<String>,
    state: String,
    count: i64,
    raised_at: i64,
    last_at: i64,
    acknowledged_at: Option<i64>,
    acknowledged_by: Option<String>,
    ack_comment: Option<String>,
    cleared_at: Option<i64>,
    cleared_by: Option<String>,
    clear_reason: Option<String>,
    shelved_until: Option<i64>,
    inhibited_by: Option<i64>,
    in_maintenance: i64,
    escalation_step: i64,
    next_escalation_at: Option<i64>,
}

impl Row {
    fn into_alarm(self) -> Result<Alarm, StorageError> {
        Ok(Alarm {
            id: self.id,
            key: self.key,
            tenant_id: self.tenant_id,
            tenant: self.tenant,
            severity: super::parse_name("severity", &self.severity)?,
            message: self.message,
            source: self.source,
            sensor_id: self.sensor_id,
            sensor: self.sensor,
            site_id: self.site_id,
            site: self.site,
            supply_point_id: self.supply_point_id,
            supply_point: self.supply_point,
            state: super::parse_name("state", &self.state)?,
            count: self.count,
            raised_at: from_ms(self.raised_at),
            last_at: from_ms(self.last_at),
            acknowledged_at: self.acknowledged_at.map(from_ms),
            acknowledged_by: self.acknowledged_by,
            ack_comment: self.ack_comment,
            cleared_at: self.cleared_at.map(from_ms),
            cleared_by: self.cleared_by,
            clear_reason: self.clear_reason,
            shelved_until: self.shelved_until.map(from_ms),
            inhibited_by: self.inhibited_by,
            in_maintenance: self.in_maintenance != 0,
            escalation_step: self.escalation_step,
            next_escalation_at: self.next_escalation_at.map(from_ms),
            sensor_point_id: self.sensor_point_id,
            sensor_site_id: self.sensor_site_id,
        })
    }
}

const SELECT: &str = "SELECT a.id, a.key, a.tenant_id, t.external_id AS tenant, a.severity, a.message, a.source,
       a.sensor_id, se.external_id AS sensor, se.supply_point_id AS sensor_point_id, se.site_id AS sensor_site_id,
       a.site_id, si.external_id AS site, a.supply_point_id, sp.external_id AS supply_point,
       a.state, a.count, a.raised_at, a.last_at, a.acknowledged_at, a.acknowledged_by, a.ack_comment,
       a.cleared_at, a.cleared_by, a.clear_reason, a.shelved_until, a.inhibited_by, a.in_maintenance,
       a.escalation_step, a.next_escalation_at
  FROM alarms a
  LEFT JOIN tenants t ON t.id = a.tenant_id
  LEFT JOIN sensors se ON se.id = a.sensor_id
  LEFT JOIN sites si ON si.id = a.site_id
  LEFT JOIN supply_points sp ON sp.id = a.supply_point_id";

async fn fetch(
    conn: &mut AnyConnection,
    where_: &str,
    binds: &[Option<i64>],
) -> Result<Vec<Alarm>, StorageError> {
    let sql = format!("{SELECT} {where_}");
    let mut q = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(Row::into_alarm)
        .collect()
}

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Alarm, StorageError> {
    fetch(conn, "WHERE a.id = $1", &[Some(id)])
        .await?
        .pop()
        .ok_or_else(|| StorageError::not_found(format!("alarm {id}")))
}

/// The alarm with this key that is not cleared, if any.
pub async fn open_by_key(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Option<Alarm>, StorageError> {
    let sql = format!("{SELECT} WHERE a.key = $1 AND a.state <> 'cleared'");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(Row::into_alarm).transpose()
}

/// Every alarm not cleared (inhibition and maintenance are worked out over all of them).
pub async fn open_all(conn: &mut AnyConnection) -> Result<Vec<Alarm>, StorageError> {
    fetch(conn, "WHERE a.state <> 'cleared' ORDER BY a.id", &[]).await
}

/// Unacknowledged alarms whose next escalation is due at `now`.
pub async fn due(conn: &mut AnyConnection, now: DateTime<Utc>) -> Result<Vec<Alarm>, StorageError> {
    fetch(
        conn,
        "WHERE a.state = 'active' AND a.next_escalation_at IS NOT NULL AND a.next_escalation_at <= $1 ORDER BY a.id",
        &[Some(to_ms(now))],
    )
    .await
}

/// A new alarm's row.
pub struct NewAlarm<'a> {
    pub key: &'a str,
    pub tenant_id: Option<i64>,
    pub severity: AlarmSeverity,
    pub message: &'a str,
    pub source: &'a str,
    pub sensor_id: Option<i64>,
    pub site_id: Option<i64>,
    pub supply_point_id: Option<i64>,
    pub next_escalation_at: Option<DateTime<Utc>>,
}

pub async fn insert(
    conn: &mut AnyConnection,
    a: &NewAlarm<'_>,
    now: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO alarms (key, tenant_id, severity, message, source, sensor_id, site_id, supply_point_id,
           state, count, raised_at, last_at, next_escalation_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', 1, $9, $9, $10) RETURNING id",
    )
    .bind(a.key)
    .bind(a.tenant_id)
    .bind(a.severity.as_str())
    .bind(a.message)
    .bind(a.source)
    .bind(a.sensor_id)
    .bind(a.site_id)
    .bind(a.supply_point_id)
    .bind(to_ms(now))
    .bind(a.next_escalation_at.map(to_ms))
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

/// A repeat of an alarm that is not cleared: one more, with the latest message and severity.
pub async fn repeat(
    conn: &mut AnyConnection,
    id: i64,
    severity: AlarmSeverity,
    message: &str,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE alarms SET count = count + 1, severity = $1, message = $2, last_at = $3 WHERE id = $4")
        .bind(severity.as_str())
        .bind(message)
        .bind(to_ms(now))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Acknowledges an active alarm (and stops its escalation); false if it was not active.
pub async fn acknowledge(
    conn: &mut AnyConnection,
    id: i64,
    by: &str,
    comment: &str,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE alarms SET state = 'acknowledged', acknowledged_at = $1, acknowledged_by = $2, ack_comment = $3,
           next_escalation_at = NULL WHERE id = $4 AND state = 'active'",
    )
    .bind(to_ms(now))
    .bind(by)
    .bind(comment)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Clears an alarm that is not cleared yet; false if it already was.
pub async fn clear(
    conn: &mut AnyConnection,
    id: i64,
    by: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE alarms SET state = 'cleared', cleared_at = $1, cleared_by = $2, clear_reason = $3,
           next_escalation_at = NULL, inhibited_by = NULL, shelved_until = NULL
         WHERE id = $4 AND state <> 'cleared'",
    )
    .bind(to_ms(now))
    .bind(by)
    .bind(reason)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn shelve(
    conn: &mut AnyConnection,
    id: i64,
    until: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE alarms SET shelved_until = $1 WHERE id = $2")
        .bind(to_ms(until))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn set_inhibited(
    conn: &mut AnyConnection,
    id: i64,
    by: Option<i64>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE alarms SET inhibited_by = $1 WHERE id = $2")
        .bind(by)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub async fn set_maintenance(
    conn: &mut AnyConnection,
    id: i64,
    on: bool,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE alarms SET in_maintenance = $1 WHERE id = $2")
        .bind(i64::from(on))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Stores the escalation state, so that a restarted hub carries on where it was.
pub async fn set_escalation(
    conn: &mut AnyConnection,
    id: i64,
    step: i64,
    next: Option<DateTime<Utc>>,
) -> Result<(), StorageError> {
    sqlx::query("UPDATE alarms SET escalation_step = $1, next_escalation_at = $2 WHERE id = $3")
        .bind(step)
        .bind(next.map(to_ms))
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Filters of the alarm list.
#[derive(Debug, Clone, Default)]
pub struct AlarmFilter {
    pub state: Option<StateFilter>,
    pub severity: Option<AlarmSeverity>,
    pub tenant_id: Option<i64>,
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &AlarmFilter,
    page: PageRequest,
    now: DateTime<Utc>,
) -> Result<Vec<Alarm>, StorageError> {
    let state = match f.state {
        None => "",
        Some(StateFilter::Active) => {
            "AND a.state = 'active' AND (a.shelved_until IS NULL OR a.shelved_until <= $4)"
        }
        Some(StateFilter::Acknowledged) => "AND a.state = 'acknowledged'",
        Some(StateFilter::Cleared) => "AND a.state = 'cleared'",
        Some(StateFilter::Open) => "AND a.state <> 'cleared'",
        Some(StateFilter::Shelved) => "AND a.state <> 'cleared' AND a.shelved_until > $4",
    };
    let sql = format!(
        "{SELECT} WHERE a.id > $1 AND ($2 IS NULL OR a.tenant_id = $2) AND ($3 IS NULL OR a.severity = $3)
           AND $4 = $4 {state}
         ORDER BY a.id LIMIT $5"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.severity.map(|s| s.as_str()))
        .bind(to_ms(now))
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(Row::into_alarm).collect()
}

/// Alarms open at some time in `[from, to)`, oldest first, for the incident log.
pub async fn between(
    conn: &mut AnyConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant_id: Option<i64>,
) -> Result<Vec<Alarm>, StorageError> {
    fetch(
        conn,
        "WHERE a.raised_at < $1 AND (a.cleared_at IS NULL OR a.cleared_at >= $2)
           AND ($3 IS NULL OR a.tenant_id = $3) ORDER BY a.raised_at, a.id",
        &[Some(to_ms(to)), Some(to_ms(from)), tenant_id],
    )
    .await
}

/// One change of an alarm: who did what, when.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    /// `raised`, `acknowledged`, `shelved`, `cleared`, `escalated`, `inhibited`, `released`,
    /// `maintenance`, `maintenance_over`.
    pub action: String,
    pub details: String,
}

pub async fn add_history(
    conn: &mut AnyConnection,
    alarm_id: i64,
    actor: &str,
    action: &str,
    details: &str,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO alarm_history (alarm_id, at, actor, action, details) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(alarm_id)
    .bind(to_ms(now))
    .bind(actor)
    .bind(action)
    .bind(details)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn history(
    conn: &mut AnyConnection,
    alarm_id: i64,
) -> Result<Vec<HistoryEntry>, StorageError> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT at, actor, action, details FROM alarm_history WHERE alarm_id = $1 ORDER BY id",
    )
    .bind(alarm_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(at, actor, action, details)| HistoryEntry {
            at: from_ms(at),
            actor,
            action,
            details,
        })
        .collect())
}

/// A row of the outbox: a message to a group of staff, waiting for the channels to deliver it.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Notification {
    pub id: i64,
    pub tenant_id: Option<i64>,
    pub alarm_id: Option<i64>,
    /// An on-duty group or role: `on_duty_engineer`, `chief_engineer`, ...
    pub recipient: String,
    /// Channels to try, in order (`sms`, `voice`, `email`, `telegram`).
    pub channels: Vec<String>,
    pub message: String,
    /// The escalation step that sent it (none for `notify_staff`).
    pub step: Option<i64>,
    /// `pending`, `sending`, `delivered` or `failed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed (a bad address, the gateway's answer, a timeout).
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The channel that delivered it (`sms`, `email`, `messenger`).
    pub delivered_via: Option<String>,
}

/// A notification to queue.
pub struct NewNotification<'a> {
    pub tenant_id: Option<i64>,
    pub alarm_id: Option<i64>,
    pub recipient: &'a str,
    pub channels: &'a [String],
    pub message: &'a str,
    pub step: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: i64,
    tenant_id: Option<i64>,
    alarm_id: Option<i64>,
    recipient: String,
    channels: String,
    message: String,
    step: Option<i64>,
    status: String,
    created_at: i64,
    attempts: i64,
    last_error: Option<String>,
    delivered_at: Option<i64>,
    delivered_via: Option<String>,
}

fn notification(r: NotificationRow) -> Notification {
    let NotificationRow {
        id,
        tenant_id,
        alarm_id,
        recipient,
        channels,
        message,
        step,
        status,
        created_at,
        attempts,
        last_error,
        delivered_at,
        delivered_via,
    } = r;
    Notification {
        id,
        tenant_id,
        alarm_id,
        recipient,
        channels: parse_json_list(&channels),
        message,
        step,
        status,
        created_at: from_ms(created_at),
        attempts,
        last_error,
        delivered_at: delivered_at.map(from_ms),
        delivered_via,
    }
}

const NOTIFICATION_COLUMNS: &str = "id, tenant_id, alarm_id, recipient, channels, message, step, status, created_at, \
     attempts, last_error, delivered_at, delivered_via";

pub async fn queue_notification(
    conn: &mut AnyConnection,
    n: &NewNotification<'_>,
    now: DateTime<Utc>,
) -> Result<Notification, StorageError> {
    let sql = format!(
        "INSERT INTO notifications (tenant_id, alarm_id, recipient, channels, message, step, status, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) RETURNING {NOTIFICATION_COLUMNS}"
    );
    let row: NotificationRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(n.tenant_id)
        .bind(n.alarm_id)
        .bind(n.recipient)
        .bind(json_list(n.channels))
        .bind(n.message)
        .bind(n.step)
        .bind(to_ms(now))
        .fetch_one(&mut *conn)
        .await?;
    Ok(notification(row))
}

/// The outbox, oldest first; `alarm` narrows it to one alarm's notifications.
pub async fn notifications(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    alarm_id: Option<i64>,
    page: PageRequest,
) -> Result<Vec<Notification>, StorageError> {
    let sql = format!(
        "SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE id > $1 AND ($2 IS NULL OR tenant_id = $2)
           AND ($3 IS NULL OR alarm_id = $3) ORDER BY id LIMIT $4"
    );
    let rows: Vec<NotificationRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(tenant_id)
        .bind(alarm_id)
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(notification).collect())
}

/// A journal entry of something the bus has no event kind for (a queued notification).
pub async fn journal(
    conn: &mut AnyConnection,
    at: DateTime<Utc>,
    source: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO events (at, source, kind, payload) VALUES ($1, $2, $3, $4)")
        .bind(to_ms(at))
        .bind(source)
        .bind(kind)
        .bind(payload.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}
