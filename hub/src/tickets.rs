//! Tickets (work orders) in the action layer: the API, rules (`create_ticket`), calls and campaigns
//! all come here. Each change is validated, written with its history rows, audit entry and journal
//! entry in one transaction, and then published on the bus (`ticket_changed`). The `Scheduler` raises
//! `ticket_overdue` once per overdue ticket and per due call-back reminder, with what it raised kept in
//! the database so that a restart neither repeats nor loses one. Field workers' visits are booked into
//! free slots of their working hours (`schedule`) and announced to them through the notification outbox.

pub mod demo;
pub mod schedule;

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rules::EventKind;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::AnyConnection;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::names::Channel;
use crate::storage::refs::Refs;
use crate::storage::tickets::{self as store, Priority, Reminder, Ticket, TicketStatus};
use crate::storage::workers::{self as staff, Worker, WorkerRow};
use crate::storage::{StorageError, audit, events};
use crate::types::PhoneNumber;

pub use crate::storage::tickets::{Comment, HistoryEntry, LinkedCall};
pub use schedule::{Schedule, Slot};

/// Longest description, note and comment accepted.
pub const MAX_TEXT: usize = 4000;
/// Longest category name.
pub const MAX_CATEGORY: usize = 40;
/// The categories the hub knows; any other lowercase word (`[a-z][a-z0-9_]*`) is accepted as well.
pub const CATEGORIES: &[&str] = &[
    "heating",
    "hot_water",
    "water",
    "sewage",
    "power",
    "gas",
    "callback",
    "meter",
    "other",
];
/// Tickets and reminders the scheduler handles per round.
const SCHEDULER_BATCH: i64 = 200;

/// `[tickets]`: due times, visit lengths and the overdue check.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TicketsConfig {
    /// Seconds between two runs of the overdue and reminder check.
    #[serde(default = "default_check_interval_seconds")]
    pub check_interval_seconds: u64,
    /// Hours from creation to the due time of an `urgent` ticket given no due time.
    #[serde(default = "default_due_hours_urgent")]
    pub due_hours_urgent: u32,
    /// Hours to the due time of a `high` priority ticket.
    #[serde(default = "default_due_hours_high")]
    pub due_hours_high: u32,
    /// Hours to the due time of a `normal` priority ticket.
    #[serde(default = "default_due_hours_normal")]
    pub due_hours_normal: u32,
    /// Hours to the due time of a `low` priority ticket.
    #[serde(default = "default_due_hours_low")]
    pub due_hours_low: u32,
    /// Length in minutes of a field worker's visit (a slot) for categories not in `slot_minutes`.
    #[serde(default = "default_slot_minutes")]
    pub default_slot_minutes: u32,
    /// Visit length in minutes by ticket category, e.g. `{ heating = 120, meter = 30 }`.
    #[serde(default = "default_category_slots")]
    pub slot_minutes: BTreeMap<String, u32>,
    /// Channels a field worker is told of a booked visit by, in order; the first that reaches one of
    /// the worker's contacts wins (`sms` needs a phone, `email` an e-mail, `telegram` a chat id).
    #[serde(default = "default_worker_channels")]
    pub worker_channels: Vec<Channel>,
}

fn default_check_interval_seconds() -> u64 {
    30
}
fn default_due_hours_urgent() -> u32 {
    4
}
fn default_due_hours_high() -> u32 {
    24
}
fn default_due_hours_normal() -> u32 {
    72
}
fn default_due_hours_low() -> u32 {
    168
}
fn default_slot_minutes() -> u32 {
    60
}
fn default_category_slots() -> BTreeMap<String, u32> {
    BTreeMap::from([("heating".to_owned(), 120), ("meter".to_owned(), 30)])
}
fn default_worker_channels() -> Vec<Channel> {
    vec![Channel::Sms, Channel::Telegram, Channel::Email]
}

impl Default for TicketsConfig {
    fn default() -> Self {
        Self {
            check_interval_seconds: default_check_interval_seconds(),
            due_hours_urgent: default_due_hours_urgent(),
            due_hours_high: default_due_hours_high(),
            due_hours_normal: default_due_hours_normal(),
            due_hours_low: default_due_hours_low(),
            default_slot_minutes: default_slot_minutes(),
            slot_minutes: default_category_slots(),
            worker_channels: default_worker_channels(),
        }
    }
}

impl TicketsConfig {
    /// How long a ticket of this priority may take when nobody says otherwise.
    pub fn due_after(&self, p: Priority) -> Duration {
        let hours = match p {
            Priority::Urgent => self.due_hours_urgent,
            Priority::High => self.due_hours_high,
            Priority::Normal => self.due_hours_normal,
            Priority::Low => self.due_hours_low,
        };
        Duration::hours(i64::from(hours))
    }

    /// The length of a visit for a ticket of this category.
    pub fn slot_length(&self, category: &str) -> Duration {
        let minutes = self
            .slot_minutes
            .get(category)
            .copied()
            .unwrap_or(self.default_slot_minutes);
        Duration::minutes(i64::from(minutes.max(1)))
    }

    /// Checks the values `hub validate` cannot leave to serde.
    pub fn validate(&self) -> Result<(), String> {
        if self.check_interval_seconds == 0 {
            return Err("tickets.check_interval_seconds: must be at least 1".into());
        }
        if self.default_slot_minutes == 0 {
            return Err("tickets.default_slot_minutes: must be at least 1".into());
        }
        for (category, minutes) in &self.slot_minutes {
            check_category(category)
                .map_err(|e| format!("tickets.slot_minutes.{category}: {e}"))?;
            if *minutes == 0 || *minutes > 24 * 60 {
                return Err(format!(
                    "tickets.slot_minutes.{category}: between 1 and 1440"
                ));
            }
        }
        Ok(())
    }
}

/// Why a ticket operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TicketError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A field of the request is wrong (422).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The request is well formed but the ticket's state does not allow it (409): a transition not
    /// allowed, a slot taken, a time outside the worker's hours.
    #[error("{0}")]
    Conflict(String),
    /// The actor may not do this to this ticket (403).
    #[error("{0}")]
    Forbidden(String),
}

impl TicketError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TicketError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<sqlx::Error> for TicketError {
    fn from(e: sqlx::Error) -> Self {
        TicketError::Storage(e.into())
    }
}

/// `Some(None)` for an explicit null, `None` when the field is absent: the shape of a PATCH field that
/// can be cleared.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A ticket to open: the body of `POST /tickets`, of rules' `create_ticket(#{...})` and of the
/// hub's own callers (`hub::tickets::create`).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTicket {
    /// External id of the tenant; may be left out by a tenant-bound user.
    #[serde(default)]
    pub tenant: Option<String>,
    /// External id of the site (apartment, building, basement, parking, yard, ...).
    #[serde(default)]
    pub site: Option<String>,
    /// `heating`, `hot_water`, `water`, `sewage`, `power`, `gas`, `callback`, `meter`, `other`, or
    /// another lowercase word.
    pub category: String,
    #[serde(default)]
    pub description: String,
    /// External id of the consumer who asked.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Whom to call back (E.164); the consumer's first phone when left out.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub contact_phone: Option<PhoneNumber>,
    /// `low`, `normal` (default), `high`, `urgent`.
    #[serde(default)]
    pub priority: Option<Priority>,
    /// Due time; by default creation plus the priority's hours from `[tickets]`.
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    /// User name of the assignee (the ticket starts `assigned`).
    #[serde(default)]
    pub assignee: Option<String>,
    /// External id of a field worker (the ticket starts `assigned`).
    #[serde(default)]
    pub worker: Option<String>,
    /// Ids of calls this ticket came from.
    #[serde(default)]
    pub calls: Vec<i64>,
    /// Where it came from when not a person or a rule: `call`, `campaign`, `import`, ... (`api` by default).
    #[serde(default)]
    pub source: Option<String>,
}

/// A change of a ticket: `PATCH /tickets/{id}`. Absent fields stay; `null` clears a clearable one.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketPatch {
    pub status: Option<TicketStatus>,
    pub priority: Option<Priority>,
    pub category: Option<String>,
    pub description: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub site: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub consumer: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub contact_phone: Option<Option<PhoneNumber>>,
    /// User name; null unassigns.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub assignee: Option<Option<String>>,
    /// External id of a field worker; null unassigns (and drops a booked visit).
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub worker: Option<Option<String>>,
    pub due_at: Option<DateTime<Utc>>,
    /// Calls to link.
    #[serde(default)]
    pub link_calls: Vec<i64>,
    /// A comment recorded with the change (why it was cancelled, what the resident said).
    #[serde(default)]
    pub comment: Option<String>,
}

/// The payload rules and the UI see.
pub fn info(t: &Ticket) -> rules::TicketInfo {
    rules::TicketInfo {
        id: t.id,
        tenant: t.tenant.clone(),
        site: t.site.clone(),
        category: t.category.clone(),
        status: t.status.as_str().to_owned(),
        priority: t.priority.as_str().to_owned(),
        assignee: t.assignee_label(),
        due_at: Some(t.due_at),
    }
}

/// A known category or a lowercase word: `[a-z][a-z0-9_]*`, at most 40 characters.
pub fn check_category(c: &str) -> Result<(), String> {
    if CATEGORIES.contains(&c) {
        return Ok(());
    }
    let mut chars = c.chars();
    let ok = chars.next().is_some_and(|f| f.is_ascii_lowercase())
        && chars.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '_')
        && c.len() <= MAX_CATEGORY;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{c}`: one of {} or a lowercase word (a-z, 0-9, _; at most {MAX_CATEGORY})",
            CATEGORIES.join(", ")
        ))
    }
}

fn check_text(field: &str, text: &str) -> Result<(), TicketError> {
    if text.chars().count() > MAX_TEXT {
        return Err(TicketError::invalid(
            field,
            format!("at most {MAX_TEXT} characters"),
        ));
    }
    Ok(())
}

/// The statuses a ticket may move to from `from`. `closed` and `cancelled` are final; `done` can be
/// reopened (`in_progress`) when the resident says the work is not done.
pub fn next_statuses(from: TicketStatus) -> &'static [TicketStatus] {
    use TicketStatus::*;
    match from {
        New => &[Assigned, InProgress, Cancelled],
        Assigned => &[New, InProgress, Done, Cancelled],
        InProgress => &[Assigned, Done, Cancelled],
        Done => &[Closed, InProgress],
        Closed | Cancelled => &[],
    }
}

/// Whether `from -> to` is allowed for a ticket with or without someone to work it; the reason when not.
pub fn check_transition(
    id: i64,
    from: TicketStatus,
    to: TicketStatus,
    has_assignee: bool,
) -> Result<(), String> {
    if from == to {
        return Ok(());
    }
    let next = next_statuses(from);
    if !next.contains(&to) {
        let allowed = if next.is_empty() {
            format!("{from} is final")
        } else {
            format!(
                "from {from} only to {}",
                next.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(format!(
            "ticket {id} cannot go from {from} to {to}: {allowed}"
        ));
    }
    if matches!(to, TicketStatus::Assigned | TicketStatus::InProgress) && !has_assignee {
        return Err(format!(
            "ticket {id} cannot be {to} without an assignee: set `assignee` or `worker`"
        ));
    }
    Ok(())
}

/// A transaction that holds the write lock from its first statement on SQLite (see `Db::begin`).
async fn begin(state: &AppState) -> Result<sqlx::Transaction<'static, sqlx::Any>, TicketError> {
    Ok(state.db.begin().await?)
}

fn source_of(actor: &str) -> &'static str {
    if actor.starts_with("rule:") {
        "rules"
    } else {
        "api"
    }
}

/// The tenant named, else the caller's own (a tenant-bound user may leave it out).
async fn tenant_of(
    conn: &mut AnyConnection,
    refs: &mut Refs,
    given: Option<&str>,
    scope: Option<i64>,
) -> Result<i64, TicketError> {
    match (given, scope) {
        (Some(t), _) => Ok(refs.tenant(conn, t).await?),
        (None, Some(own)) => Ok(own),
        (None, None) => Err(TicketError::invalid("tenant", "required")),
    }
}

async fn user_id(conn: &mut AnyConnection, name: &str) -> Result<i64, TicketError> {
    let row: Option<(i64, Option<i64>)> =
        sqlx::query_as("SELECT id, tenant_id FROM users WHERE username = $1 AND disabled = 0")
            .bind(name)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|(id, _)| id)
        .ok_or_else(|| TicketError::invalid("assignee", format!("no user `{name}`")))
}

async fn consumer(
    conn: &mut AnyConnection,
    tenant_id: i64,
    ext: &str,
) -> Result<(i64, Option<String>), TicketError> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "SELECT id, phones FROM consumers WHERE tenant_id = $1 AND external_id = $2",
    )
    .bind(tenant_id)
    .bind(ext)
    .fetch_optional(&mut *conn)
    .await?;
    let (id, phones) =
        row.ok_or_else(|| TicketError::invalid("consumer", format!("no consumer `{ext}`")))?;
    Ok((
        id,
        crate::storage::parse_json_list(&phones).into_iter().next(),
    ))
}

async fn worker_of(
    conn: &mut AnyConnection,
    tenant_id: i64,
    ext: &str,
) -> Result<Worker, TicketError> {
    let w = staff::by_external(conn, "worker", tenant_id, ext).await?;
    if !w.active {
        return Err(TicketError::invalid(
            "worker",
            format!("worker `{ext}` is not active"),
        ));
    }
    Ok(w)
}

/// Opens a ticket (any tenant). `actor` is a user name, `rule:NAME` or a component (`campaigns`).
pub async fn create(state: &AppState, actor: &str, new: &NewTicket) -> Result<Ticket, TicketError> {
    create_scoped(state, actor, None, new).await
}

/// `create` for a tenant-bound user: only their tenant may be named.
pub async fn create_scoped(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    new: &NewTicket,
) -> Result<Ticket, TicketError> {
    let category = new.category.trim();
    check_category(category).map_err(|e| TicketError::invalid("category", e))?;
    check_text("description", &new.description)?;
    let source = match (&new.source, source_of(actor)) {
        (_, "rules") => "rules".to_owned(),
        (Some(s), _) => {
            check_category(s).map_err(|_| {
                TicketError::invalid("source", "a lowercase word such as call or campaign")
            })?;
            s.clone()
        }
        (None, s) => s.to_owned(),
    };
    let now = Utc::now();
    let mut tx = begin(state).await?;
    let mut refs = Refs::scoped(scope);
    let tenant_id = tenant_of(&mut tx, &mut refs, new.tenant.as_deref(), scope).await?;
    let site_id = match &new.site {
        Some(s) => Some(refs.site(&mut tx, "site", tenant_id, s).await?),
        None => None,
    };
    let (consumer_id, consumer_phone) = match &new.consumer {
        Some(c) => {
            let (id, phone) = consumer(&mut tx, tenant_id, c).await?;
            (Some(id), phone)
        }
        None => (None, None),
    };
    let contact_phone = new
        .contact_phone
        .as_ref()
        .map(|p| p.as_str().to_owned())
        .or(consumer_phone);
    let assignee_id = match &new.assignee {
        Some(u) => Some(user_id(&mut tx, u).await?),
        None => None,
    };
    let worker_id = match &new.worker {
        Some(w) => Some(worker_of(&mut tx, tenant_id, w).await?.id),
        None => None,
    };
    let priority = new.priority.unwrap_or(Priority::Normal);
    let due_at = new
        .due_at
        .unwrap_or_else(|| now + state.config.tickets.due_after(priority));
    let status = if assignee_id.is_some() || worker_id.is_some() {
        TicketStatus::Assigned
    } else {
        TicketStatus::New
    };
    let id = store::insert(
        &mut tx,
        &store::NewRow {
            tenant_id,
            site_id,
            category,
            description: new.description.trim(),
            consumer_id,
            contact_phone: contact_phone.as_deref(),
            status,
            priority,
            assignee_id,
            worker_id,
            due_at,
            source: &source,
            created_by: actor,
        },
        now,
    )
    .await?;
    store::add_history(
        &mut tx,
        id,
        actor,
        "status",
        None,
        Some(status.as_str()),
        now,
    )
    .await?;
    for call in &new.calls {
        store::link_call(&mut tx, id, tenant_id, *call).await?;
        let call = call.to_string();
        store::add_history(&mut tx, id, actor, "call", None, Some(&call), now).await?;
    }
    let ticket = store::get(&mut tx, id).await?;
    finish(state, tx, actor, "create", &ticket).await?;
    Ok(ticket)
}

/// The audit entry of a change that publishes no event, then the commit.
async fn commit_audited(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    object_type: &str,
    object_id: &str,
    details: serde_json::Value,
) -> Result<(), TicketError> {
    audit::record(&mut tx, actor, action, object_type, object_id, details).await?;
    tx.commit().await?;
    Ok(())
}

/// Audit entry, journal entry, commit, then the `ticket_changed` event.
async fn finish(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    actor: &str,
    action: &str,
    ticket: &Ticket,
) -> Result<(), TicketError> {
    audit::record(
        &mut tx,
        actor,
        action,
        "ticket",
        &ticket.id.to_string(),
        serde_json::to_value(ticket).unwrap_or_default(),
    )
    .await?;
    let event = state
        .bus
        .event(source_of(actor), EventKind::TicketChanged(info(ticket)));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok(())
}

/// Records the changed fields of `after` against `before` as history rows.
async fn log_changes(
    conn: &mut AnyConnection,
    actor: &str,
    before: &Ticket,
    after: &Ticket,
    now: DateTime<Utc>,
) -> Result<usize, TicketError> {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339());
    let pairs: [(&str, Option<String>, Option<String>); 11] = [
        (
            "status",
            Some(before.status.as_str().into()),
            Some(after.status.as_str().into()),
        ),
        (
            "priority",
            Some(before.priority.as_str().into()),
            Some(after.priority.as_str().into()),
        ),
        (
            "category",
            Some(before.category.clone()),
            Some(after.category.clone()),
        ),
        (
            "description",
            Some(before.description.clone()),
            Some(after.description.clone()),
        ),
        ("site", before.site.clone(), after.site.clone()),
        ("consumer", before.consumer.clone(), after.consumer.clone()),
        (
            "contact_phone",
            before.contact_phone.clone(),
            after.contact_phone.clone(),
        ),
        ("assignee", before.assignee.clone(), after.assignee.clone()),
        ("worker", before.worker.clone(), after.worker.clone()),
        (
            "due_at",
            Some(before.due_at.to_rfc3339()),
            Some(after.due_at.to_rfc3339()),
        ),
        ("slot", time(before.slot_start), time(after.slot_start)),
    ];
    let mut n = 0;
    for (field, old, new) in pairs {
        if old != new {
            store::add_history(
                conn,
                after.id,
                actor,
                field,
                old.as_deref(),
                new.as_deref(),
                now,
            )
            .await?;
            n += 1;
        }
    }
    Ok(n)
}

/// The ticket, refused as not found for a tenant-bound caller of another tenant.
pub async fn get_scoped(
    conn: &mut AnyConnection,
    scope: Option<i64>,
    id: i64,
) -> Result<Ticket, TicketError> {
    let t = store::get(conn, id).await?;
    if scope.is_some_and(|s| s != t.tenant_id) {
        return Err(StorageError::not_found(format!("ticket {id}")).into());
    }
    Ok(t)
}

/// Changes a ticket: status (by the transitions of `next_statuses`), priority, category,
/// description, site, consumer, contact, assignee, worker, due time; links calls; adds a comment.
/// Every changed field is a history row; nothing changed publishes nothing.
pub async fn update(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    id: i64,
    patch: &TicketPatch,
) -> Result<Ticket, TicketError> {
    let now = Utc::now();
    let mut tx = begin(state).await?;
    let before = get_scoped(&mut tx, scope, id).await?;
    let mut t = before.clone();
    let mut refs = Refs::scoped(Some(t.tenant_id));
    if let Some(c) = &patch.category {
        check_category(c.trim()).map_err(|e| TicketError::invalid("category", e))?;
        t.category = c.trim().to_owned();
    }
    if let Some(d) = &patch.description {
        check_text("description", d)?;
        t.description = d.trim().to_owned();
    }
    if let Some(p) = patch.priority {
        t.priority = p;
    }
    if let Some(site) = &patch.site {
        t.site_id = match site {
            Some(s) => Some(refs.site(&mut tx, "site", t.tenant_id, s).await?),
            None => None,
        };
    }
    if let Some(c) = &patch.consumer {
        t.consumer_id = match c {
            Some(c) => Some(consumer(&mut tx, t.tenant_id, c).await?.0),
            None => None,
        };
    }
    if let Some(p) = &patch.contact_phone {
        t.contact_phone = p.as_ref().map(|p| p.as_str().to_owned());
    }
    if let Some(a) = &patch.assignee {
        t.assignee_id = match a {
            Some(u) => Some(user_id(&mut tx, u).await?),
            None => None,
        };
    }
    if let Some(w) = &patch.worker {
        let new_worker = match w {
            Some(w) => Some(worker_of(&mut tx, t.tenant_id, w).await?.id),
            None => None,
        };
        if new_worker != t.worker_id {
            // A visit was booked with the previous worker: it is theirs no more.
            t.slot_start = None;
            t.slot_end = None;
        }
        t.worker_id = new_worker;
    }
    if let Some(due) = patch.due_at {
        if due != t.due_at {
            // A new due time can become overdue again.
            t.overdue_at = None;
        }
        t.due_at = due;
    }
    let has_assignee = t.assignee_id.is_some() || t.worker_id.is_some();
    let target = match patch.status {
        Some(s) => s,
        // Giving a new ticket someone to work it assigns it; taking the last one away returns it.
        None if t.status == TicketStatus::New && has_assignee => TicketStatus::Assigned,
        None if t.status == TicketStatus::Assigned && !has_assignee => TicketStatus::New,
        None => t.status,
    };
    check_transition(id, before.status, target, has_assignee).map_err(TicketError::Conflict)?;
    if matches!(target, TicketStatus::Assigned | TicketStatus::InProgress) && !has_assignee {
        return Err(TicketError::Conflict(format!(
            "ticket {id} cannot be {target} without an assignee: set `assignee` or `worker`"
        )));
    }
    if !before.status.is_open() && patch_touches_work(patch) {
        return Err(TicketError::Conflict(format!(
            "ticket {id} is {}: only a comment can be added",
            before.status
        )));
    }
    t.status = target;
    for call in &patch.link_calls {
        if store::link_call(&mut tx, id, t.tenant_id, *call).await? {
            let call = call.to_string();
            store::add_history(&mut tx, id, actor, "call", None, Some(&call), now).await?;
        }
    }
    store::save(&mut tx, &t, now).await?;
    let mut t = store::get(&mut tx, id).await?;
    let changed = log_changes(&mut tx, actor, &before, &t, now).await?;
    // A booked visit that is no longer wanted (another worker, or the ticket cancelled): its worker
    // is told, and the time is theirs again.
    if let (Some(at), Some(wid)) = (before.slot_start, before.worker_id)
        && (t.slot_start != before.slot_start || t.status == TicketStatus::Cancelled)
    {
        let w = staff::get(&mut tx, wid).await?;
        notify_worker(state, &mut tx, &w, &t, Visit::Cancelled(at), now).await?;
    }
    if let Some(c) = patch
        .comment
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        check_text("comment", c)?;
        store::add_comment(&mut tx, id, actor, c, now).await?;
        store::add_history(&mut tx, id, actor, "comment", None, Some(c), now).await?;
    }
    if changed == 0 && patch.comment.is_none() && patch.link_calls.is_empty() {
        // Nothing to do: nothing written, nothing published.
        tx.rollback().await?;
        return Ok(t);
    }
    if changed == 0 {
        // Only calls or a comment: kept, audited, but the ticket itself did not change.
        commit_audited(
            tx,
            actor,
            "comment",
            "ticket",
            &id.to_string(),
            serde_json::json!({"comment": patch.comment, "link_calls": patch.link_calls}),
        )
        .await?;
        return Ok(t);
    }
    t.updated_at = crate::storage::from_ms(crate::storage::to_ms(now));
    finish(state, tx, actor, "update", &t).await?;
    Ok(t)
}

fn patch_touches_work(p: &TicketPatch) -> bool {
    p.priority.is_some()
        || p.category.is_some()
        || p.description.is_some()
        || p.site.is_some()
        || p.consumer.is_some()
        || p.contact_phone.is_some()
        || p.assignee.is_some()
        || p.worker.is_some()
        || p.due_at.is_some()
}

/// Adds a comment (any status, closed ones too): kept with the ticket and in its history.
pub async fn add_comment(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    id: i64,
    text: &str,
) -> Result<Comment, TicketError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(TicketError::invalid("text", "must not be empty"));
    }
    check_text("text", text)?;
    let now = Utc::now();
    let mut tx = begin(state).await?;
    get_scoped(&mut tx, scope, id).await?;
    let c = store::add_comment(&mut tx, id, actor, text, now).await?;
    store::add_history(&mut tx, id, actor, "comment", None, Some(text), now).await?;
    commit_audited(
        tx,
        actor,
        "comment",
        "ticket",
        &id.to_string(),
        serde_json::json!({"comment": text}),
    )
    .await?;
    Ok(c)
}

/// A visit to book: the body of `POST /tickets/{id}/booking`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Booking {
    /// External id of the field worker.
    pub worker: String,
    /// Start of the visit (RFC 3339) the resident chose; its length comes from the ticket's category.
    pub start: DateTime<Utc>,
}

/// A worker's schedule from the database.
pub async fn schedule_of(conn: &mut AnyConnection, w: &Worker) -> Result<Schedule, TicketError> {
    let tz: chrono_tz::Tz = w.time_zone.parse().map_err(|_| {
        TicketError::invalid("time_zone", format!("`{}` is not a time zone", w.time_zone))
    })?;
    let days: Vec<(NaiveDate, Vec<String>)> = staff::days(conn, w.id)
        .await?
        .into_iter()
        .map(|d| (d.day, d.hours))
        .collect();
    Schedule::parse(tz, &w.hours, &days).map_err(|(f, r)| TicketError::invalid(f, r))
}

/// The free slots of a worker in `[from, to)` for visits of `len` (starting no earlier than now).
pub async fn free_slots(
    state: &AppState,
    worker: &Worker,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    len: Duration,
) -> Result<Vec<Slot>, TicketError> {
    if to <= from {
        return Err(TicketError::invalid("to", "must be after `from`"));
    }
    if to - from > Duration::days(schedule::MAX_RANGE_DAYS) {
        return Err(TicketError::invalid(
            "to",
            format!("at most {} days after `from`", schedule::MAX_RANGE_DAYS),
        ));
    }
    let mut conn = state.db.conn().await?;
    let sched = schedule_of(&mut conn, worker).await?;
    let booked = store::booked(&mut conn, worker.id, from, to).await?;
    let from = from.max(Utc::now());
    Ok(schedule::free_slots(&sched, from, to, len, &booked))
}

/// Books a visit of the ticket's worker-to-be at the time the resident chose: the time must lie in
/// the worker's hours and be free. The worker is assigned (the ticket becomes `assigned` if it was
/// `new`) and told through the notification outbox.
pub async fn book(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    id: i64,
    booking: &Booking,
) -> Result<Ticket, TicketError> {
    let now = Utc::now();
    let mut tx = begin(state).await?;
    let before = get_scoped(&mut tx, scope, id).await?;
    if !matches!(
        before.status,
        TicketStatus::New | TicketStatus::Assigned | TicketStatus::InProgress
    ) {
        return Err(TicketError::Conflict(format!(
            "ticket {id} is {}: a visit can only be booked for an open ticket",
            before.status
        )));
    }
    let worker = worker_of(&mut tx, before.tenant_id, &booking.worker).await?;
    // Serializes bookings of one worker: a row lock on PostgreSQL, the write lock on SQLite.
    sqlx::query("UPDATE workers SET active = active WHERE id = $1")
        .bind(worker.id)
        .execute(&mut *tx)
        .await?;
    let start = booking.start;
    if start < now {
        return Err(TicketError::invalid(
            "start",
            format!("{} is in the past", start.to_rfc3339()),
        ));
    }
    let end = start + state.config.tickets.slot_length(&before.category);
    let sched = schedule_of(&mut tx, &worker).await?;
    let tz = sched.tz;
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    if !sched.covers(start, end) {
        return Err(TicketError::Conflict(format!(
            "{} to {} ({}) is outside the working hours of worker `{}`",
            local(start),
            local(end),
            worker.time_zone,
            worker.external_id
        )));
    }
    if let Some(other) = store::slot_taken_by(&mut tx, worker.id, id, start, end).await? {
        return Err(TicketError::Conflict(format!(
            "worker `{}` is booked from {} to {} by ticket {other}",
            worker.external_id,
            local(start),
            local(end)
        )));
    }
    let mut t = before.clone();
    t.worker_id = Some(worker.id);
    t.slot_start = Some(start);
    t.slot_end = Some(end);
    if t.status == TicketStatus::New {
        t.status = TicketStatus::Assigned;
    }
    store::save(&mut tx, &t, now).await?;
    let t = store::get(&mut tx, id).await?;
    log_changes(&mut tx, actor, &before, &t, now).await?;
    notify_worker(state, &mut tx, &worker, &t, Visit::Booked(start), now).await?;
    finish(state, tx, actor, "book", &t).await?;
    Ok(t)
}

/// What a worker is told about a visit.
#[derive(Debug, Clone, Copy)]
enum Visit {
    Booked(DateTime<Utc>),
    Cancelled(DateTime<Utc>),
}

/// The worker's message: ticket, local time, place, what to do, whom to call; Russian and English.
fn visit_message(w: &Worker, t: &Ticket, visit: Visit) -> String {
    let tz: chrono_tz::Tz = w.time_zone.parse().unwrap_or(chrono_tz::Europe::Moscow);
    let (headline, at) = match visit {
        Visit::Booked(at) => ("", at),
        Visit::Cancelled(at) => ("Визит отменён / Visit cancelled\n", at),
    };
    let when = at.with_timezone(&tz).format("%Y-%m-%d %H:%M");
    let place = match (&t.site_name, &t.site_address) {
        (Some(n), Some(a)) if !a.is_empty() => format!("{n}, {a}"),
        (Some(n), _) => n.clone(),
        _ => "-".to_owned(),
    };
    let contact = t.contact_phone.as_deref().unwrap_or("-");
    format!(
        "{headline}Заявка №{id} / Ticket #{id}: {category}, {priority}\n{when} ({tz})\n{place}\n{description}\nТел./Phone: {contact}",
        id = t.id,
        category = t.category,
        priority = t.priority,
        tz = w.time_zone,
        description = t.description,
    )
}

/// Queues the message that tells a worker of a booked or cancelled visit, to the worker's own addresses.
async fn notify_worker(
    state: &AppState,
    conn: &mut AnyConnection,
    w: &Worker,
    t: &Ticket,
    visit: Visit,
    now: DateTime<Utc>,
) -> Result<i64, TicketError> {
    let message = visit_message(w, t, visit);
    let addresses = serde_json::json!({
        "phones": w.phone.iter().collect::<Vec<_>>(),
        "emails": w.email.iter().collect::<Vec<_>>(),
        "telegram": w.telegram.iter().collect::<Vec<_>>(),
    });
    let channels: Vec<String> = state
        .config
        .tickets
        .worker_channels
        .iter()
        .filter(|c| match c {
            Channel::Sms => w.phone.is_some(),
            Channel::Email => w.email.is_some(),
            Channel::Telegram => w.telegram.is_some(),
            Channel::Voice | Channel::Letter => false,
        })
        .map(|c| c.as_str().to_owned())
        .collect();
    let recipient = format!("worker:{}", w.external_id);
    let id = store::queue_personal_notification(
        conn,
        &store::PersonalNotification {
            tenant_id: t.tenant_id,
            ticket_id: t.id,
            recipient: &recipient,
            channels: &channels,
            addresses: &addresses,
            message: &message,
        },
        now,
    )
    .await?;
    crate::storage::alarms::journal(
        conn,
        now,
        "tickets",
        "staff_notification",
        &serde_json::json!({"notification": id, "ticket": t.id, "recipient": recipient}),
    )
    .await?;
    Ok(id)
}

/// The worker (or an operator for them) reports the work done: the ticket becomes `done` with the
/// note. A user who is a worker may only complete their own tickets.
pub async fn complete(
    state: &AppState,
    actor: &str,
    actor_user: Option<i64>,
    scope: Option<i64>,
    id: i64,
    note: &str,
) -> Result<Ticket, TicketError> {
    let note = note.trim();
    check_text("note", note)?;
    let now = Utc::now();
    let mut tx = begin(state).await?;
    let before = get_scoped(&mut tx, scope, id).await?;
    if let Some(uid) = actor_user
        && let Some(w) = staff::by_user(&mut tx, uid).await?
        && before.worker_id != Some(w.id)
    {
        return Err(TicketError::Forbidden(format!(
            "ticket {id} is not assigned to worker `{}`",
            w.external_id
        )));
    }
    let has_assignee = before.assignee_id.is_some() || before.worker_id.is_some();
    check_transition(id, before.status, TicketStatus::Done, has_assignee)
        .map_err(TicketError::Conflict)?;
    if before.status == TicketStatus::Done {
        return Err(TicketError::Conflict(format!(
            "ticket {id} is done already"
        )));
    }
    let mut t = before.clone();
    t.status = TicketStatus::Done;
    t.completion_note = Some(note.to_owned());
    store::save(&mut tx, &t, now).await?;
    let t = store::get(&mut tx, id).await?;
    log_changes(&mut tx, actor, &before, &t, now).await?;
    if !note.is_empty() {
        store::add_comment(&mut tx, id, actor, note, now).await?;
        store::add_history(&mut tx, id, actor, "completion_note", None, Some(note), now).await?;
    }
    finish(state, tx, actor, "complete", &t).await?;
    Ok(t)
}

/// A call-back reminder: the body of `POST /tickets/{id}/reminders`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReminder {
    /// When to call the resident back (RFC 3339).
    pub remind_at: DateTime<Utc>,
    /// What to tell them.
    #[serde(default)]
    pub note: String,
}

/// Sets a reminder to call the resident back; when it falls due the scheduler raises `ticket_overdue`
/// and it shows in `GET /reminders?due=true` until marked done.
pub async fn add_reminder(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    id: i64,
    r: &NewReminder,
) -> Result<Reminder, TicketError> {
    check_text("note", &r.note)?;
    let now = Utc::now();
    let mut tx = begin(state).await?;
    get_scoped(&mut tx, scope, id).await?;
    let reminder = store::add_reminder(&mut tx, id, r.remind_at, r.note.trim(), actor, now).await?;
    let at = r.remind_at.to_rfc3339();
    store::add_history(&mut tx, id, actor, "reminder", None, Some(&at), now).await?;
    commit_audited(
        tx,
        actor,
        "remind",
        "ticket",
        &id.to_string(),
        serde_json::to_value(&reminder).unwrap_or_default(),
    )
    .await?;
    Ok(reminder)
}

/// Marks a reminder done (the resident was called back).
pub async fn finish_reminder(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    reminder_id: i64,
) -> Result<Reminder, TicketError> {
    let now = Utc::now();
    let mut tx = begin(state).await?;
    let r = store::get_reminder(&mut tx, reminder_id).await?;
    if scope.is_some_and(|s| s != r.tenant_id) {
        return Err(StorageError::not_found(format!("reminder {reminder_id}")).into());
    }
    if !store::finish_reminder(&mut tx, reminder_id, actor, now).await? {
        return Err(TicketError::Conflict(format!(
            "reminder {reminder_id} is done already"
        )));
    }
    store::add_history(
        &mut tx,
        r.ticket_id,
        actor,
        "reminder_done",
        None,
        None,
        now,
    )
    .await?;
    let r = store::get_reminder(&mut tx, reminder_id).await?;
    commit_audited(
        tx,
        actor,
        "reminder_done",
        "ticket",
        &r.ticket_id.to_string(),
        serde_json::to_value(&r).unwrap_or_default(),
    )
    .await?;
    Ok(r)
}

/// A field worker to create or update (by tenant and external id): `POST /workers`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWorker {
    /// External id of the tenant; may be left out by a tenant-bound user.
    #[serde(default)]
    pub tenant: Option<String>,
    #[schema(value_type = String)]
    pub external_id: crate::types::ExternalId,
    pub name: String,
    /// `electrician`, `plumber`, `fitter`, `repair_crew`, ...
    pub trade: String,
    /// Categories and other skills.
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub phone: Option<PhoneNumber>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub email: Option<crate::types::Email>,
    /// Telegram chat id (a number, or `@name`).
    #[serde(default)]
    pub telegram: Option<String>,
    /// IANA time zone of the hours; the tenant's by default.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<crate::types::TimeZone>,
    /// Weekly hours, local: `{"mon": ["09:00-13:00", "14:00-18:00"], "sat": []}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub hours: BTreeMap<String, Vec<String>>,
    /// User name of the hub user (role operator) the worker logs in as to report completion.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// Creates or updates a worker.
pub async fn save_worker(
    state: &AppState,
    actor: &str,
    scope: Option<i64>,
    w: &NewWorker,
) -> Result<Worker, TicketError> {
    if w.name.trim().is_empty() {
        return Err(TicketError::invalid("name", "must not be empty"));
    }
    check_category(w.trade.trim()).map_err(|_| {
        TicketError::invalid("trade", "a lowercase word such as electrician or plumber")
    })?;
    for (i, s) in w.skills.iter().enumerate() {
        check_category(s).map_err(|e| TicketError::invalid(format!("skills[{i}]"), e))?;
    }
    if let Some(chat) = &w.telegram {
        connectors::channels::telegram::check_chat_id(chat)
            .map_err(|e| TicketError::invalid("telegram", e.to_string()))?;
    }
    let mut tx = begin(state).await?;
    let mut refs = Refs::scoped(scope);
    let tenant_id = tenant_of(&mut tx, &mut refs, w.tenant.as_deref(), scope).await?;
    let time_zone = match &w.time_zone {
        Some(tz) => tz.as_str().to_owned(),
        None => crate::storage::tenants::get(&mut tx, tenant_id)
            .await?
            .time_zone
            .as_str()
            .to_owned(),
    };
    let tz: chrono_tz::Tz = time_zone
        .parse()
        .map_err(|_| TicketError::invalid("time_zone", "not an IANA time zone"))?;
    Schedule::parse(tz, &w.hours, &[]).map_err(|(f, r)| TicketError::invalid(f, r))?;
    let user_id = match &w.user {
        Some(u) => Some(
            user_id(&mut tx, u)
                .await
                .map_err(|_| TicketError::invalid("user", format!("no user `{u}`")))?,
        ),
        None => None,
    };
    let worker = staff::upsert(
        &mut tx,
        &WorkerRow {
            tenant_id,
            external_id: w.external_id.as_str(),
            name: w.name.trim(),
            trade: w.trade.trim(),
            skills: &w.skills,
            phone: w.phone.as_ref().map(|p| p.as_str()),
            email: w.email.as_ref().map(|e| e.as_str()),
            telegram: w.telegram.as_deref(),
            time_zone: &time_zone,
            hours: &w.hours,
            user_id,
            active: w.active,
        },
        Utc::now(),
    )
    .await?;
    commit_audited(
        tx,
        actor,
        "save",
        "worker",
        &worker.id.to_string(),
        serde_json::to_value(&worker).unwrap_or_default(),
    )
    .await?;
    Ok(worker)
}

/// Sets the hours of one day of a worker (an empty list: a day off), or with `None` removes the
/// exception so the weekly hours apply again.
pub async fn set_worker_day(
    state: &AppState,
    actor: &str,
    worker: &Worker,
    day: NaiveDate,
    hours: Option<&[String]>,
    note: &str,
) -> Result<(), TicketError> {
    check_text("note", note)?;
    let mut tx = begin(state).await?;
    match hours {
        Some(h) => {
            schedule::parse_spans("hours", h).map_err(|(f, r)| TicketError::invalid(f, r))?;
            staff::set_day(&mut tx, worker.id, day, h, note).await?;
        }
        None => {
            staff::clear_day(&mut tx, worker.id, day).await?;
        }
    }
    commit_audited(
        tx,
        actor,
        "set_day",
        "worker",
        &worker.id.to_string(),
        serde_json::json!({"day": day, "hours": hours, "note": note}),
    )
    .await?;
    Ok(())
}

/// What one scheduler round raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Raised {
    /// Tickets that became overdue.
    pub overdue: Vec<i64>,
    /// Reminders that fell due: `(reminder, ticket)`.
    pub reminders: Vec<(i64, i64)>,
}

/// Raises `ticket_overdue` for tickets past their due time and for call-back reminders that fell due.
/// What it raised is marked in the same transaction as the journal entry, so each is raised once,
/// even across a restart, and one missed while the hub was down is raised at the next start.
pub struct Scheduler {
    interval: StdDuration,
}

impl Scheduler {
    pub fn new(config: &TicketsConfig) -> Self {
        Self {
            interval: StdDuration::from_secs(config.check_interval_seconds.max(1)),
        }
    }

    /// Checks at the start and then every `check_interval_seconds` until `shutdown`.
    pub async fn run(self, state: AppState, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(self.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            match Self::step(&state, Utc::now()).await {
                Ok(r) if !r.overdue.is_empty() || !r.reminders.is_empty() => {
                    tracing::info!(
                        overdue = r.overdue.len(),
                        reminders = r.reminders.len(),
                        "tickets overdue or due for a call-back"
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "ticket overdue check failed; retrying next round")
                }
            }
        }
    }

    /// One round at `now`. Public so that tests choose the time.
    pub async fn step(state: &AppState, now: DateTime<Utc>) -> Result<Raised, TicketError> {
        let mut raised = Raised::default();
        let ids = {
            let mut conn = state.db.conn().await?;
            store::newly_overdue(&mut conn, now, SCHEDULER_BATCH).await?
        };
        for id in ids {
            let mut tx = begin(state).await?;
            if !store::mark_overdue(&mut tx, id, now).await? {
                continue;
            }
            let t = store::get(&mut tx, id).await?;
            let due = t.due_at.to_rfc3339();
            store::add_history(&mut tx, id, "system", "overdue", None, Some(&due), now).await?;
            overdue_event(state, tx, &t).await?;
            raised.overdue.push(id);
        }
        let due = {
            let mut conn = state.db.conn().await?;
            store::due_reminders(&mut conn, now, SCHEDULER_BATCH).await?
        };
        for (rid, tid) in due {
            let mut tx = begin(state).await?;
            if !store::mark_reminder_fired(&mut tx, rid, now).await? {
                continue;
            }
            let t = store::get(&mut tx, tid).await?;
            let r = store::get_reminder(&mut tx, rid).await?;
            store::add_history(
                &mut tx,
                tid,
                "system",
                "reminder_due",
                None,
                Some(&r.note),
                now,
            )
            .await?;
            overdue_event(state, tx, &t).await?;
            raised.reminders.push((rid, tid));
        }
        Ok(raised)
    }
}

async fn overdue_event(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    t: &Ticket,
) -> Result<(), TicketError> {
    let event = state
        .bus
        .event("tickets", EventKind::TicketOverdue(info(t)));
    events::append(&mut tx, &event).await?;
    tx.commit().await?;
    state.bus.publish(event);
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone};

    use super::*;
    use crate::import::ImportKind;
    use crate::names::Role;

    /// Tenant `t1` with complex `rc` > building `b1` > apartment `a1`, and a consumer `c1` there.
    async fn hub() -> (AppState, tempfile::TempDir) {
        crate::api::test_world(
            Role::Operator,
            &[
            (
                ImportKind::Sites,
                "tenant,external_id,parent,kind,name\nt1,rc,,residential_complex,RC\nt1,b1,rc,building,B1\nt1,a1,b1,apartment,Apt 1\nt1,b2,rc,building,B2\n",
            ),
            (
                ImportKind::Consumers,
                "tenant,external_id,kind,name,phones,life_support,sites\nt1,c1,resident,Ivanova,+79990000001,false,a1\n",
            ),
            ],
        )
        .await
    }

    fn new_ticket(site: &str) -> NewTicket {
        NewTicket {
            tenant: Some("t1".into()),
            site: Some(site.into()),
            category: "heating".into(),
            description: "cold radiators".into(),
            consumer: Some("c1".into()),
            ..NewTicket::default()
        }
    }

    #[test]
    fn transitions_follow_the_life_cycle() {
        use TicketStatus::*;
        assert!(check_transition(1, New, Assigned, true).is_ok());
        assert!(check_transition(1, Assigned, InProgress, true).is_ok());
        assert!(check_transition(1, InProgress, Done, true).is_ok());
        assert!(check_transition(1, Done, Closed, true).is_ok());
        assert!(check_transition(1, Done, InProgress, true).is_ok());
        assert!(check_transition(1, New, Cancelled, false).is_ok());
        let e = check_transition(7, New, Done, true).unwrap_err();
        assert_eq!(
            e,
            "ticket 7 cannot go from new to done: from new only to assigned, in_progress, cancelled"
        );
        let e = check_transition(7, Closed, InProgress, true).unwrap_err();
        assert!(e.ends_with("closed is final"), "{e}");
        assert!(check_transition(7, Cancelled, New, true).is_err());
        let e = check_transition(7, New, Assigned, false).unwrap_err();
        assert!(e.contains("without an assignee"), "{e}");
    }

    #[test]
    fn categories_are_known_or_lowercase_words() {
        assert!(check_category("heating").is_ok());
        assert!(check_category("lift_repair").is_ok());
        assert!(check_category("Heating").is_err());
        assert!(check_category("").is_err());
        assert!(check_category("a b").is_err());
        assert!(check_category(&"x".repeat(41)).is_err());
    }

    #[test]
    fn due_time_and_slot_length_come_from_the_config() {
        let c = TicketsConfig::default();
        assert_eq!(c.due_after(Priority::Urgent), Duration::hours(4));
        assert_eq!(c.due_after(Priority::Low), Duration::hours(168));
        assert_eq!(c.slot_length("heating"), Duration::minutes(120));
        assert_eq!(c.slot_length("water"), Duration::minutes(60));
        assert!(c.validate().is_ok());
        let bad = TicketsConfig {
            slot_minutes: BTreeMap::from([("Bad Name".to_owned(), 10)]),
            ..TicketsConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("slot_minutes"));
    }

    #[tokio::test]
    async fn a_ticket_is_worked_and_every_change_is_kept() {
        let (state, _d) = hub().await;
        let mut sub = state.bus.subscribe("test");
        let t = create(&state, "op", &new_ticket("a1")).await.unwrap();
        assert_eq!(t.status, TicketStatus::New);
        assert_eq!(t.contact_phone.as_deref(), Some("+79990000001"));
        assert_eq!(t.priority, Priority::Normal);
        let expected_due = t.created_at + Duration::hours(72);
        assert!((t.due_at - expected_due).num_seconds().abs() <= 1);
        let ev = sub.recv().await.unwrap();
        assert!(
            matches!(&ev.kind, EventKind::TicketChanged(i) if i.id == t.id && i.status == "new")
        );

        // Straight to done is refused with the reason.
        let patch = TicketPatch {
            status: Some(TicketStatus::Done),
            ..TicketPatch::default()
        };
        match update(&state, "op", None, t.id, &patch).await {
            Err(TicketError::Conflict(r)) => assert!(r.contains("from new only to"), "{r}"),
            other => panic!("{other:?}"),
        }
        // Assigning a user moves it to assigned.
        let patch = TicketPatch {
            assignee: Some(Some("u".into())),
            priority: Some(Priority::High),
            ..TicketPatch::default()
        };
        let t2 = update(&state, "op", None, t.id, &patch).await.unwrap();
        assert_eq!(t2.status, TicketStatus::Assigned);
        assert_eq!(t2.assignee.as_deref(), Some("u"));
        let ev = sub.recv().await.unwrap();
        assert!(
            matches!(&ev.kind, EventKind::TicketChanged(i) if i.status == "assigned" && i.assignee.as_deref() == Some("u"))
        );
        for s in [
            TicketStatus::InProgress,
            TicketStatus::Done,
            TicketStatus::Closed,
        ] {
            let patch = TicketPatch {
                status: Some(s),
                ..TicketPatch::default()
            };
            update(&state, "op", None, t.id, &patch).await.unwrap();
        }
        // A closed ticket takes comments, not changes.
        let patch = TicketPatch {
            priority: Some(Priority::Low),
            ..TicketPatch::default()
        };
        assert!(matches!(
            update(&state, "op", None, t.id, &patch).await,
            Err(TicketError::Conflict(_))
        ));
        add_comment(&state, "op", None, t.id, "resident thanked us")
            .await
            .unwrap();
        let mut conn = state.db.conn().await.unwrap();
        let h = store::history(&mut conn, t.id).await.unwrap();
        let fields: Vec<(&str, Option<&str>, Option<&str>)> = h
            .iter()
            .map(|e| (e.field.as_str(), e.old.as_deref(), e.new.as_deref()))
            .collect();
        assert_eq!(
            fields,
            [
                ("status", None, Some("new")),
                ("status", Some("new"), Some("assigned")),
                ("priority", Some("normal"), Some("high")),
                ("assignee", None, Some("u")),
                ("status", Some("assigned"), Some("in_progress")),
                ("status", Some("in_progress"), Some("done")),
                ("status", Some("done"), Some("closed")),
                ("comment", None, Some("resident thanked us")),
            ]
        );
        let audits: Vec<(String,)> =
            sqlx::query_as("SELECT action FROM audit_log WHERE object_type = 'ticket' ORDER BY id")
                .fetch_all(&state.db.pool)
                .await
                .unwrap();
        assert_eq!(audits.len(), 6, "{audits:?}");
        // Unknown site and tenant scope.
        let mut bad = new_ticket("nowhere");
        match create(&state, "op", &bad).await {
            Err(TicketError::Storage(StorageError::Invalid { field, reason })) => {
                assert_eq!(
                    (field.as_str(), reason.as_str()),
                    ("site", "no site `nowhere`")
                )
            }
            other => panic!("{other:?}"),
        }
        bad.site = None;
        bad.category = "No Such".into();
        assert!(matches!(
            create(&state, "op", &bad).await,
            Err(TicketError::Invalid { field, .. }) if field == "category"
        ));
        assert!(get_scoped(&mut conn, Some(999), t.id).await.is_err());
    }

    #[tokio::test]
    async fn a_change_racing_another_writer_waits_instead_of_failing() {
        let (state, _d) = hub().await;
        let t = create(&state, "op", &new_ticket("a1")).await.unwrap();
        // Another connection commits between this change's read and its write (on SQLite a deferred
        // transaction would fail with SQLITE_BUSY_SNAPSHOT here).
        let mut tx = begin(&state).await.unwrap();
        store::get(&mut tx, t.id).await.unwrap();
        let writer = {
            let db = state.db.clone();
            tokio::spawn(async move {
                sqlx::query(
                    "INSERT INTO events (at, source, kind, payload) VALUES (0, 'x', 'x', '{}')",
                )
                .execute(&db.pool)
                .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        store::add_history(&mut tx, t.id, "op", "note", None, None, Utc::now())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        writer.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn overdue_tickets_and_due_reminders_are_raised_once() {
        let (state, _d) = hub().await;
        let now = Utc::now();
        let mut n = new_ticket("b1");
        n.due_at = Some(now + Duration::hours(1));
        let t = create(&state, "op", &n).await.unwrap();
        let mut sub = state.bus.subscribe("test");
        assert_eq!(
            Scheduler::step(&state, now).await.unwrap(),
            Raised::default()
        );
        let later = now + Duration::hours(2);
        assert_eq!(
            Scheduler::step(&state, later).await.unwrap().overdue,
            [t.id]
        );
        let ev = sub.recv().await.unwrap();
        assert!(matches!(&ev.kind, EventKind::TicketOverdue(i) if i.id == t.id));
        // Once per overdue: later rounds (and a restarted hub, which reads the same row) stay quiet.
        assert_eq!(
            Scheduler::step(&state, later + Duration::hours(1))
                .await
                .unwrap(),
            Raised::default()
        );
        let listed = {
            let mut conn = state.db.conn().await.unwrap();
            let f = store::TicketFilter {
                overdue: Some(true),
                ..Default::default()
            };
            store::list(&mut conn, &f, Default::default(), later)
                .await
                .unwrap()
        };
        assert_eq!(listed.len(), 1);
        // A new due time can go overdue again.
        let patch = TicketPatch {
            due_at: Some(later + Duration::hours(1)),
            ..TicketPatch::default()
        };
        update(&state, "op", None, t.id, &patch).await.unwrap();
        assert_eq!(
            Scheduler::step(&state, later + Duration::hours(2))
                .await
                .unwrap()
                .overdue,
            [t.id]
        );
        // Done tickets never go overdue.
        let mut n2 = new_ticket("b2");
        n2.due_at = Some(now + Duration::minutes(1));
        n2.assignee = Some("u".into());
        let t2 = create(&state, "op", &n2).await.unwrap();
        complete(&state, "op", None, None, t2.id, "fixed")
            .await
            .unwrap();
        let r = Scheduler::step(&state, later + Duration::hours(3))
            .await
            .unwrap();
        assert!(r.overdue.is_empty(), "{r:?}");
        // A reminder falls due once.
        let rem = add_reminder(
            &state,
            "op",
            None,
            t2.id,
            &NewReminder {
                remind_at: now + Duration::minutes(30),
                note: "tell her the pipe is fixed".into(),
            },
        )
        .await
        .unwrap();
        let r = Scheduler::step(&state, now + Duration::minutes(10))
            .await
            .unwrap();
        assert!(r.reminders.is_empty());
        let r = Scheduler::step(&state, now + Duration::minutes(31))
            .await
            .unwrap();
        assert_eq!(r.reminders, [(rem.id, t2.id)]);
        let r = Scheduler::step(&state, now + Duration::minutes(32))
            .await
            .unwrap();
        assert!(r.reminders.is_empty());
        let done = finish_reminder(&state, "op", None, rem.id).await.unwrap();
        assert!(done.done_at.is_some());
        assert!(matches!(
            finish_reminder(&state, "op", None, rem.id).await,
            Err(TicketError::Conflict(_))
        ));
    }

    /// The next Monday at least two days ahead, at midnight UTC.
    fn next_monday() -> DateTime<Utc> {
        let mut d = Utc::now().date_naive() + Duration::days(2);
        while d.weekday() != chrono::Weekday::Mon {
            d += Duration::days(1);
        }
        Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap())
    }

    #[tokio::test]
    async fn a_visit_is_booked_in_a_free_slot_and_the_worker_is_told() {
        let (state, _d) = hub().await;
        let hours: BTreeMap<String, Vec<String>> = schedule::DAYS[..5]
            .iter()
            .map(|d| ((*d).to_owned(), vec!["09:00-13:00".to_owned()]))
            .collect();
        let w = save_worker(
            &state,
            "op",
            None,
            &NewWorker {
                tenant: Some("t1".into()),
                external_id: "plumber-1".to_owned().try_into().unwrap(),
                name: "Sidorov".into(),
                trade: "plumber".into(),
                skills: vec!["water".into()],
                phone: Some("+79990000009".to_owned().try_into().unwrap()),
                email: None,
                telegram: None,
                time_zone: Some("UTC".to_owned().try_into().unwrap()),
                hours,
                user: None,
                active: true,
            },
        )
        .await
        .unwrap();
        let mut n = new_ticket("a1");
        n.category = "water".into();
        let t = create(&state, "op", &n).await.unwrap();
        let monday = next_monday();
        let start = monday + Duration::hours(10);
        let booked = book(
            &state,
            "op",
            None,
            t.id,
            &Booking {
                worker: "plumber-1".into(),
                start,
            },
        )
        .await
        .unwrap();
        assert_eq!(booked.status, TicketStatus::Assigned);
        assert_eq!(booked.worker.as_deref(), Some("plumber-1"));
        assert_eq!(booked.slot_end, Some(start + Duration::hours(1)));
        let rows: Vec<(String, String, String, Option<String>)> =
            sqlx::query_as("SELECT recipient, channels, message, addresses FROM notifications")
                .fetch_all(&state.db.pool)
                .await
                .unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].0, "worker:plumber-1");
        assert_eq!(rows[0].1, r#"["sms"]"#);
        assert!(
            rows[0].2.contains(&format!("Ticket #{}", t.id)),
            "{}",
            rows[0].2
        );
        assert!(rows[0].3.as_deref().unwrap_or("").contains("+79990000009"));

        let slots = free_slots(
            &state,
            &w,
            monday,
            monday + Duration::days(1),
            Duration::hours(1),
        )
        .await
        .unwrap();
        let starts: Vec<u32> = slots
            .iter()
            .map(|s| s.start.format("%H").to_string().parse().unwrap())
            .collect();
        assert_eq!(starts, [9, 11, 12]);

        // Another ticket at an overlapping time, and outside the hours.
        let t2 = create(&state, "op", &n).await.unwrap();
        let at = |start| Booking {
            worker: "plumber-1".into(),
            start,
        };
        match book(
            &state,
            "op",
            None,
            t2.id,
            &at(start + Duration::minutes(30)),
        )
        .await
        {
            Err(TicketError::Conflict(r)) => {
                assert!(r.contains(&format!("by ticket {}", t.id)), "{r}")
            }
            other => panic!("{other:?}"),
        }
        match book(
            &state,
            "op",
            None,
            t2.id,
            &at(monday + Duration::hours(12) + Duration::minutes(30)),
        )
        .await
        {
            Err(TicketError::Conflict(r)) => {
                assert!(r.contains("outside the working hours"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        match book(
            &state,
            "op",
            None,
            t2.id,
            &at(monday - Duration::days(1) + Duration::hours(10)),
        )
        .await
        {
            Err(TicketError::Conflict(r)) => {
                assert!(r.contains("outside the working hours"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        // A day off takes the Monday away.
        set_worker_day(&state, "op", &w, monday.date_naive(), Some(&[]), "sick")
            .await
            .unwrap();
        match book(&state, "op", None, t2.id, &at(monday + Duration::hours(11))).await {
            Err(TicketError::Conflict(r)) => {
                assert!(r.contains("outside the working hours"), "{r}")
            }
            other => panic!("{other:?}"),
        }
        // Cancelling a booked ticket tells the worker and frees the time.
        let t3 = create(&state, "op", &n).await.unwrap();
        book(
            &state,
            "op",
            None,
            t3.id,
            &at(monday + Duration::days(1) + Duration::hours(9)),
        )
        .await
        .unwrap();
        let cancel = TicketPatch {
            status: Some(TicketStatus::Cancelled),
            ..TicketPatch::default()
        };
        update(&state, "op", None, t3.id, &cancel).await.unwrap();
        let (last,): (String,) =
            sqlx::query_as("SELECT message FROM notifications ORDER BY id DESC LIMIT 1")
                .fetch_one(&state.db.pool)
                .await
                .unwrap();
        assert!(
            last.starts_with("Визит отменён / Visit cancelled")
                && last.contains(&format!("#{}", t3.id)),
            "{last}"
        );
        let tuesday = monday + Duration::days(1);
        let free = free_slots(
            &state,
            &w,
            tuesday,
            tuesday + Duration::days(1),
            Duration::hours(1),
        )
        .await
        .unwrap();
        assert_eq!(free.len(), 4, "{free:?}");

        // The worker (as a user) completes only their own ticket.
        let mut conn = state.db.conn().await.unwrap();
        let other = crate::storage::users::create(&mut conn, "w1", "x", Role::Operator, None)
            .await
            .unwrap();
        sqlx::query("UPDATE workers SET user_id = $1")
            .bind(other.id)
            .execute(&mut *conn)
            .await
            .unwrap();
        drop(conn);
        assert!(matches!(
            complete(&state, "w1", Some(other.id), None, t2.id, "").await,
            Err(TicketError::Forbidden(_)) | Err(TicketError::Conflict(_))
        ));
        let done = complete(&state, "w1", Some(other.id), None, t.id, "valve replaced")
            .await
            .unwrap();
        assert_eq!(done.status, TicketStatus::Done);
        assert_eq!(done.completion_note.as_deref(), Some("valve replaced"));
    }
}
