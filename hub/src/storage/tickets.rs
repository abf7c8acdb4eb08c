//! Tickets (work orders), their history, comments, linked calls and call-back reminders: the rows
//! behind `crate::tickets`, which owns the life cycle and calls these inside its transactions.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::{PageRequest, StorageError, from_ms, to_ms};
use crate::names::names;

names! {
    /// Where a ticket is in its life cycle: `new -> assigned -> in_progress -> done -> closed`, or
    /// `cancelled`.
    pub enum TicketStatus {
        New = "new", Assigned = "assigned", InProgress = "in_progress", Done = "done",
        Closed = "closed", Cancelled = "cancelled",
    }
}

names! {
    /// How urgent a ticket is; sets its default due time.
    pub enum Priority { Low = "low", Normal = "normal", High = "high", Urgent = "urgent" }
}

impl TicketStatus {
    /// Work is still owed: the ticket can become overdue.
    pub fn is_open(self) -> bool {
        !matches!(
            self,
            TicketStatus::Done | TicketStatus::Closed | TicketStatus::Cancelled
        )
    }
}

/// The statuses in which a ticket's booked slot still holds the worker's time.
pub const HOLDS_SLOT: &str = "('new', 'assigned', 'in_progress', 'done', 'closed')";

/// A ticket as the API shows it, with the external ids and names of what it refers to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Ticket {
    pub id: i64,
    pub tenant_id: i64,
    /// External id of the tenant.
    pub tenant: String,
    pub site_id: Option<i64>,
    /// External id of the site.
    pub site: Option<String>,
    pub site_name: Option<String>,
    pub site_address: Option<String>,
    /// `heating`, `water`, `power`, `callback`, `meter`, `other` or another lowercase word.
    pub category: String,
    pub description: String,
    pub consumer_id: Option<i64>,
    /// External id of the consumer.
    pub consumer: Option<String>,
    pub contact_phone: Option<String>,
    pub status: TicketStatus,
    pub priority: Priority,
    pub assignee_id: Option<i64>,
    /// User name of the assignee.
    pub assignee: Option<String>,
    pub worker_id: Option<i64>,
    /// External id of the field worker.
    pub worker: Option<String>,
    pub worker_name: Option<String>,
    /// The visit booked with the worker.
    pub slot_start: Option<DateTime<Utc>>,
    pub slot_end: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
    /// Due time passed and the work is not done (nor closed, nor cancelled).
    pub overdue: bool,
    /// When the hub raised `ticket_overdue` for the current due time.
    pub overdue_at: Option<DateTime<Utc>>,
    /// `api`, `rules`, `call`, `campaign`, ...
    pub source: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What the worker reported on completion.
    pub completion_note: Option<String>,
}

impl Ticket {
    pub fn is_overdue(&self, now: DateTime<Utc>) -> bool {
        self.status.is_open() && self.due_at <= now
    }

    /// Who works it, as rules see it: the user name, else `worker:EXTERNAL_ID`.
    pub fn assignee_label(&self) -> Option<String> {
        self.assignee
            .clone()
            .or_else(|| self.worker.as_ref().map(|w| format!("worker:{w}")))
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    tenant_id: i64,
    tenant: String,
    site_id: Option<i64>,
    site: Option<String>,
    site_name: Option<String>,
    site_address: Option<String>,
    category: String,
    description: String,
    consumer_id: Option<i64>,
    consumer: Option<String>,
    contact_phone: Option<String>,
    status: String,
    priority: String,
    assignee_id: Option<i64>,
    assignee: Option<String>,
    worker_id: Option<i64>,
    worker: Option<String>,
    worker_name: Option<String>,
    slot_start: Option<i64>,
    slot_end: Option<i64>,
    due_at: i64,
    overdue_at: Option<i64>,
    source: String,
    created_by: String,
    created_at: i64,
    updated_at: i64,
    completion_note: Option<String>,
}

impl Row {
    fn into_ticket(self, now: DateTime<Utc>) -> Result<Ticket, StorageError> {
        let status: TicketStatus = super::parse_name("status", &self.status)?;
        let due_at = from_ms(self.due_at);
        Ok(Ticket {
            id: self.id,
            tenant_id: self.tenant_id,
            tenant: self.tenant,
            site_id: self.site_id,
            site: self.site,
            site_name: self.site_name,
            site_address: self.site_address,
            category: self.category,
            description: self.description,
            consumer_id: self.consumer_id,
            consumer: self.consumer,
            contact_phone: self.contact_phone,
            status,
            priority: super::parse_name("priority", &self.priority)?,
            assignee_id: self.assignee_id,
            assignee: self.assignee,
            worker_id: self.worker_id,
            worker: self.worker,
            worker_name: self.worker_name,
            slot_start: self.slot_start.map(from_ms),
            slot_end: self.slot_end.map(from_ms),
            due_at,
            overdue: status.is_open() && due_at <= now,
            overdue_at: self.overdue_at.map(from_ms),
            source: self.source,
            created_by: self.created_by,
            created_at: from_ms(self.created_at),
            updated_at: from_ms(self.updated_at),
            completion_note: self.completion_note,
        })
    }
}

const SELECT: &str =
    "SELECT k.id, k.tenant_id, t.external_id AS tenant, k.site_id, s.external_id AS site,
       s.name AS site_name, s.address AS site_address, k.category, k.description, k.consumer_id,
       c.external_id AS consumer, k.contact_phone, k.status, k.priority, k.assignee_id,
       u.username AS assignee, k.worker_id, w.external_id AS worker, w.name AS worker_name,
       k.slot_start, k.slot_end, k.due_at, k.overdue_at, k.source, k.created_by, k.created_at,
       k.updated_at, k.completion_note
  FROM tickets k
  JOIN tenants t ON t.id = k.tenant_id
  LEFT JOIN sites s ON s.id = k.site_id
  LEFT JOIN consumers c ON c.id = k.consumer_id
  LEFT JOIN users u ON u.id = k.assignee_id
  LEFT JOIN workers w ON w.id = k.worker_id";

pub async fn get(conn: &mut AnyConnection, id: i64) -> Result<Ticket, StorageError> {
    let sql = format!("{SELECT} WHERE k.id = $1");
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StorageError::not_found(format!("ticket {id}")))?
        .into_ticket(Utc::now())
}

/// The fields of a new row, resolved to ids.
#[derive(Debug, Clone)]
pub struct NewRow<'a> {
    pub tenant_id: i64,
    pub site_id: Option<i64>,
    pub category: &'a str,
    pub description: &'a str,
    pub consumer_id: Option<i64>,
    pub contact_phone: Option<&'a str>,
    pub status: TicketStatus,
    pub priority: Priority,
    pub assignee_id: Option<i64>,
    pub worker_id: Option<i64>,
    pub due_at: DateTime<Utc>,
    pub source: &'a str,
    pub created_by: &'a str,
}

pub async fn insert(
    conn: &mut AnyConnection,
    n: &NewRow<'_>,
    now: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO tickets (tenant_id, site_id, category, description, consumer_id, contact_phone,
           status, priority, assignee_id, worker_id, due_at, source, created_by, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) RETURNING id",
    )
    .bind(n.tenant_id)
    .bind(n.site_id)
    .bind(n.category)
    .bind(n.description)
    .bind(n.consumer_id)
    .bind(n.contact_phone)
    .bind(n.status.as_str())
    .bind(n.priority.as_str())
    .bind(n.assignee_id)
    .bind(n.worker_id)
    .bind(to_ms(n.due_at))
    .bind(n.source)
    .bind(n.created_by)
    .bind(to_ms(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

/// Writes every field of `t` that a change may touch (the caller compared and logged them).
pub async fn save(
    conn: &mut AnyConnection,
    t: &Ticket,
    now: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query(
        "UPDATE tickets SET site_id = $1, category = $2, description = $3, consumer_id = $4,
           contact_phone = $5, status = $6, priority = $7, assignee_id = $8, worker_id = $9,
           slot_start = $10, slot_end = $11, due_at = $12, overdue_at = $13, completion_note = $14,
           updated_at = $15
         WHERE id = $16",
    )
    .bind(t.site_id)
    .bind(&t.category)
    .bind(&t.description)
    .bind(t.consumer_id)
    .bind(t.contact_phone.as_deref())
    .bind(t.status.as_str())
    .bind(t.priority.as_str())
    .bind(t.assignee_id)
    .bind(t.worker_id)
    .bind(t.slot_start.map(to_ms))
    .bind(t.slot_end.map(to_ms))
    .bind(to_ms(t.due_at))
    .bind(t.overdue_at.map(to_ms))
    .bind(t.completion_note.as_deref())
    .bind(to_ms(now))
    .bind(t.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Filters of the ticket list.
#[derive(Debug, Default, Clone)]
pub struct TicketFilter {
    pub tenant_id: Option<i64>,
    /// The site and its descendants (ids resolved by the caller).
    pub site_ids: Option<Vec<i64>>,
    pub status: Option<TicketStatus>,
    pub category: Option<String>,
    /// User name of the assignee.
    pub assignee: Option<String>,
    pub worker_id: Option<i64>,
    /// Only tickets past their due time and still open (true), or only the others (false).
    pub overdue: Option<bool>,
    /// Created in `[from, to)`.
    pub created_from: Option<DateTime<Utc>>,
    pub created_to: Option<DateTime<Utc>>,
}

pub async fn list(
    conn: &mut AnyConnection,
    f: &TicketFilter,
    page: PageRequest,
    now: DateTime<Utc>,
) -> Result<Vec<Ticket>, StorageError> {
    let sites = match &f.site_ids {
        // Ids from the database, so the list is numbers only.
        Some(ids) if ids.is_empty() => return Ok(Vec::new()),
        Some(ids) => format!(
            "AND k.site_id IN ({})",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        ),
        None => String::new(),
    };
    let overdue = match f.overdue {
        Some(true) => "AND k.due_at <= $8 AND k.status NOT IN ('done', 'closed', 'cancelled')",
        Some(false) => "AND (k.due_at > $8 OR k.status IN ('done', 'closed', 'cancelled'))",
        None => "AND $8 = $8",
    };
    let sql = format!(
        "{SELECT} WHERE k.id > $1 AND ($2 IS NULL OR k.tenant_id = $2) AND ($3 IS NULL OR k.status = $3)
           AND ($4 IS NULL OR k.category = $4) AND ($5 IS NULL OR u.username = $5)
           AND ($6 IS NULL OR k.worker_id = $6) AND ($7 IS NULL OR k.created_at >= $7)
           AND ($9 IS NULL OR k.created_at < $9) {overdue} {sites}
         ORDER BY k.id LIMIT $10"
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(page.after)
        .bind(f.tenant_id)
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.category.as_deref())
        .bind(f.assignee.as_deref())
        .bind(f.worker_id)
        .bind(f.created_from.map(to_ms))
        .bind(to_ms(now))
        .bind(f.created_to.map(to_ms))
        .bind(page.limit)
        .fetch_all(&mut *conn)
        .await?;
    rows.into_iter().map(|r| r.into_ticket(now)).collect()
}

/// A site and every site under it.
pub async fn site_and_descendants(
    conn: &mut AnyConnection,
    site_id: i64,
) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "WITH RECURSIVE down(id, depth) AS (
           SELECT id, 0 FROM sites WHERE id = $1
           UNION ALL SELECT s.id, down.depth + 1 FROM sites s JOIN down ON s.parent_id = down.id
             WHERE down.depth < 64)
         SELECT id FROM down",
    )
    .bind(site_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// One change of one field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HistoryEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// User name, `rule:NAME`, `system`, `worker:ID`.
    pub actor: String,
    /// `status`, `assignee`, `worker`, `priority`, `due_at`, `slot`, `comment`, `overdue`, ...
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

pub async fn add_history(
    conn: &mut AnyConnection,
    ticket_id: i64,
    actor: &str,
    field: &str,
    old: Option<&str>,
    new: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO ticket_history (ticket_id, at, actor, field, old_value, new_value)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(ticket_id)
    .bind(to_ms(at))
    .bind(actor)
    .bind(field)
    .bind(old)
    .bind(new)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

type HistoryRow = (i64, i64, String, String, Option<String>, Option<String>);

fn history_entry((id, at, actor, field, old, new): HistoryRow) -> HistoryEntry {
    HistoryEntry {
        id,
        at: from_ms(at),
        actor,
        field,
        old,
        new,
    }
}

pub async fn history(
    conn: &mut AnyConnection,
    ticket_id: i64,
) -> Result<Vec<HistoryEntry>, StorageError> {
    let rows: Vec<HistoryRow> = sqlx::query_as(
        "SELECT id, at, actor, field, old_value, new_value FROM ticket_history
          WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(ticket_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(history_entry).collect())
}

/// When each ticket of `ids` first reached each status: `(ticket, status, at)`.
pub async fn status_times(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(i64, String, DateTime<Utc>)>, StorageError> {
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT h.ticket_id, h.new_value, MIN(h.at) FROM ticket_history h
           JOIN tickets k ON k.id = h.ticket_id
          WHERE h.field = 'status' AND h.new_value IS NOT NULL AND k.created_at >= $1
            AND k.created_at < $2 AND ($3 IS NULL OR k.tenant_id = $3)
          GROUP BY h.ticket_id, h.new_value",
    )
    .bind(to_ms(from))
    .bind(to_ms(to))
    .bind(tenant_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, s, at)| (id, s, from_ms(at)))
        .collect())
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Comment {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub author: String,
    pub text: String,
}

pub async fn add_comment(
    conn: &mut AnyConnection,
    ticket_id: i64,
    author: &str,
    text: &str,
    at: DateTime<Utc>,
) -> Result<Comment, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO ticket_comments (ticket_id, at, author, text) VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(ticket_id)
    .bind(to_ms(at))
    .bind(author)
    .bind(text)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Comment {
        id,
        at: from_ms(to_ms(at)),
        author: author.to_owned(),
        text: text.to_owned(),
    })
}

pub async fn comments(
    conn: &mut AnyConnection,
    ticket_id: i64,
) -> Result<Vec<Comment>, StorageError> {
    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT id, at, author, text FROM ticket_comments WHERE ticket_id = $1 ORDER BY id",
    )
    .bind(ticket_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, at, author, text)| Comment {
            id,
            at: from_ms(at),
            author,
            text,
        })
        .collect())
}

/// A call linked to a ticket.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LinkedCall {
    pub id: i64,
    pub direction: String,
    pub from: String,
    pub to: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: String,
    /// Where to fetch the call's recording, when it was recorded.
    pub recording: Option<String>,
}

/// Links a call; the call must exist and be of the ticket's tenant (or of none). Linking twice is
/// not an error. Returns whether a link was added.
pub async fn link_call(
    conn: &mut AnyConnection,
    ticket_id: i64,
    tenant_id: i64,
    call_id: i64,
) -> Result<bool, StorageError> {
    let call: Option<(Option<i64>,)> = sqlx::query_as("SELECT tenant_id FROM calls WHERE id = $1")
        .bind(call_id)
        .fetch_optional(&mut *conn)
        .await?;
    match call {
        None => {
            return Err(StorageError::invalid("calls", format!("no call {call_id}")));
        }
        Some((Some(t),)) if t != tenant_id => {
            return Err(StorageError::invalid(
                "calls",
                format!("call {call_id} belongs to another tenant"),
            ));
        }
        Some(_) => {}
    }
    let done = sqlx::query(
        "INSERT INTO ticket_calls (ticket_id, call_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(ticket_id)
    .bind(call_id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// id, direction, from, to, started_at, ended_at, outcome, recorded
type CallRow = (i64, String, String, String, i64, Option<i64>, String, i64);

pub async fn calls(
    conn: &mut AnyConnection,
    ticket_id: i64,
) -> Result<Vec<LinkedCall>, StorageError> {
    let rows: Vec<CallRow> = sqlx::query_as(
        "SELECT c.id, c.direction, c.from_number, c.to_number, c.started_at, c.ended_at, c.outcome,
                CASE WHEN c.recording IS NULL THEN 0 ELSE 1 END
           FROM ticket_calls l JOIN calls c ON c.id = l.call_id WHERE l.ticket_id = $1 ORDER BY c.id",
    )
    .bind(ticket_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, direction, from, to, started_at, ended_at, outcome, recorded)| LinkedCall {
                id,
                direction,
                from,
                to,
                started_at: from_ms(started_at),
                ended_at: ended_at.map(from_ms),
                outcome,
                recording: (recorded != 0).then(|| format!("/api/v1/calls/{id}/recording")),
            },
        )
        .collect())
}

/// A reminder to call the resident back.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reminder {
    pub id: i64,
    pub ticket_id: i64,
    pub tenant_id: i64,
    pub remind_at: DateTime<Utc>,
    pub note: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When the hub raised `ticket_overdue` for it.
    pub fired_at: Option<DateTime<Utc>>,
    pub done_at: Option<DateTime<Utc>>,
    pub done_by: Option<String>,
    /// The ticket's contact phone, to call back.
    pub contact_phone: Option<String>,
}

type ReminderRow = (
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

fn reminder(r: ReminderRow) -> Reminder {
    let (
        id,
        ticket_id,
        tenant_id,
        remind_at,
        note,
        created_by,
        created_at,
        fired_at,
        done_at,
        done_by,
        contact_phone,
    ) = r;
    Reminder {
        id,
        ticket_id,
        tenant_id,
        remind_at: from_ms(remind_at),
        note,
        created_by,
        created_at: from_ms(created_at),
        fired_at: fired_at.map(from_ms),
        done_at: done_at.map(from_ms),
        done_by,
        contact_phone,
    }
}

const REMINDER_SELECT: &str = "SELECT r.id, r.ticket_id, k.tenant_id, r.remind_at, r.note,
       r.created_by, r.created_at, r.fired_at, r.done_at, r.done_by, k.contact_phone
  FROM ticket_reminders r JOIN tickets k ON k.id = r.ticket_id";

pub async fn add_reminder(
    conn: &mut AnyConnection,
    ticket_id: i64,
    remind_at: DateTime<Utc>,
    note: &str,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Reminder, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO ticket_reminders (ticket_id, remind_at, note, created_by, created_at)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(ticket_id)
    .bind(to_ms(remind_at))
    .bind(note)
    .bind(by)
    .bind(to_ms(now))
    .fetch_one(&mut *conn)
    .await?;
    get_reminder(conn, id).await
}

pub async fn get_reminder(conn: &mut AnyConnection, id: i64) -> Result<Reminder, StorageError> {
    let sql = format!("{REMINDER_SELECT} WHERE r.id = $1");
    let row: Option<ReminderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(reminder)
        .ok_or_else(|| StorageError::not_found(format!("reminder {id}")))
}

/// Reminders not done, by time; `due_by` keeps those due by then; `ticket` those of one ticket.
pub async fn reminders(
    conn: &mut AnyConnection,
    tenant_id: Option<i64>,
    ticket_id: Option<i64>,
    due_by: Option<DateTime<Utc>>,
    include_done: bool,
) -> Result<Vec<Reminder>, StorageError> {
    let sql = format!(
        "{REMINDER_SELECT} WHERE ($1 IS NULL OR k.tenant_id = $1) AND ($2 IS NULL OR r.ticket_id = $2)
           AND ($3 IS NULL OR r.remind_at <= $3) AND ($4 = 1 OR r.done_at IS NULL)
         ORDER BY r.remind_at, r.id LIMIT 1000"
    );
    let rows: Vec<ReminderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(ticket_id)
        .bind(due_by.map(to_ms))
        .bind(i64::from(include_done))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows.into_iter().map(reminder).collect())
}

/// Marks a reminder done; false when it was done already.
pub async fn finish_reminder(
    conn: &mut AnyConnection,
    id: i64,
    by: &str,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let done = sqlx::query(
        "UPDATE ticket_reminders SET done_at = $1, done_by = $2 WHERE id = $3 AND done_at IS NULL",
    )
    .bind(to_ms(now))
    .bind(by)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Tickets past due, still open, whose overdue event is not raised yet.
pub async fn newly_overdue(
    conn: &mut AnyConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<i64>, StorageError> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM tickets WHERE overdue_at IS NULL AND due_at <= $1
            AND status NOT IN ('done', 'closed', 'cancelled') ORDER BY due_at, id LIMIT $2",
    )
    .bind(to_ms(now))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// Claims the overdue event of a ticket: true for the one caller that marks it.
pub async fn mark_overdue(
    conn: &mut AnyConnection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let done =
        sqlx::query("UPDATE tickets SET overdue_at = $1 WHERE id = $2 AND overdue_at IS NULL")
            .bind(to_ms(now))
            .bind(id)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// Reminders due and not raised yet: `(reminder, ticket)`.
pub async fn due_reminders(
    conn: &mut AnyConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(i64, i64)>, StorageError> {
    Ok(sqlx::query_as(
        "SELECT id, ticket_id FROM ticket_reminders WHERE fired_at IS NULL AND done_at IS NULL
            AND remind_at <= $1 ORDER BY remind_at, id LIMIT $2",
    )
    .bind(to_ms(now))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

pub async fn mark_reminder_fired(
    conn: &mut AnyConnection,
    id: i64,
    now: DateTime<Utc>,
) -> Result<bool, StorageError> {
    let done =
        sqlx::query("UPDATE ticket_reminders SET fired_at = $1 WHERE id = $2 AND fired_at IS NULL")
            .bind(to_ms(now))
            .bind(id)
            .execute(&mut *conn)
            .await?;
    Ok(done.rows_affected() > 0)
}

/// Another ticket holding the worker's time in `[start, end)`.
pub async fn slot_taken_by(
    conn: &mut AnyConnection,
    worker_id: i64,
    except: i64,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Option<i64>, StorageError> {
    let sql = format!(
        "SELECT id FROM tickets WHERE worker_id = $1 AND id <> $2 AND status IN {HOLDS_SLOT}
            AND slot_start < $3 AND slot_end > $4 ORDER BY id LIMIT 1"
    );
    let row: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(worker_id)
        .bind(except)
        .bind(to_ms(end))
        .bind(to_ms(start))
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|(id,)| id))
}

/// The worker's booked visits overlapping `[from, to)`.
pub async fn booked(
    conn: &mut AnyConnection,
    worker_id: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>)>, StorageError> {
    let sql = format!(
        "SELECT slot_start, slot_end FROM tickets WHERE worker_id = $1 AND status IN {HOLDS_SLOT}
            AND slot_start < $2 AND slot_end > $3 ORDER BY slot_start"
    );
    let rows: Vec<(i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(worker_id)
        .bind(to_ms(to))
        .bind(to_ms(from))
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(a, b)| (from_ms(a), from_ms(b)))
        .collect())
}

/// A staff notification to one person (a field worker) at their own addresses.
pub struct PersonalNotification<'a> {
    pub tenant_id: i64,
    pub ticket_id: i64,
    /// `worker:EXTERNAL_ID`
    pub recipient: &'a str,
    pub channels: &'a [String],
    /// `{"phones": [...], "emails": [...], "telegram": [...]}`
    pub addresses: &'a serde_json::Value,
    pub message: &'a str,
}

/// Queues a personal notification in the outbox; returns its id.
pub async fn queue_personal_notification(
    conn: &mut AnyConnection,
    n: &PersonalNotification<'_>,
    now: DateTime<Utc>,
) -> Result<i64, StorageError> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO notifications (tenant_id, recipient, channels, message, status, created_at,
           addresses, ticket_id)
         VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7) RETURNING id",
    )
    .bind(n.tenant_id)
    .bind(n.recipient)
    .bind(super::json_list(n.channels))
    .bind(n.message)
    .bind(to_ms(now))
    .bind(n.addresses.to_string())
    .bind(n.ticket_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}
