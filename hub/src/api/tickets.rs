//! `/tickets`, `/reminders`, `/workers` and `/reports/tickets`: operators open and work tickets,
//! book field workers' visits and set call-back reminders through `crate::tickets` (the same layer
//! rules and campaigns use); workers report completion; the report and the CSV export summarize a
//! period. Reading needs `Read`; every change needs `HandleTickets`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::storage::tickets::{
    self as store, Comment, HistoryEntry, LinkedCall, Reminder, Ticket, TicketFilter, TicketStatus,
};
use crate::storage::workers::{self as staff, Worker, WorkerDay};
use crate::storage::{PageRequest, StorageError};
use crate::tickets::{
    self, Booking, NewReminder, NewTicket, NewWorker, Slot, TicketError, TicketPatch,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(export_csv))
        .routes(routes!(get_one, update))
        .routes(routes!(add_comment))
        .routes(routes!(history))
        .routes(routes!(book))
        .routes(routes!(complete))
        .routes(routes!(add_reminder))
        .routes(routes!(reminders))
        .routes(routes!(reminder_done))
        .routes(routes!(workers, save_worker))
        .routes(routes!(worker))
        .routes(routes!(set_day))
        .routes(routes!(slots))
        .routes(routes!(report))
}

impl From<TicketError> for ApiError {
    fn from(e: TicketError) -> Self {
        match e {
            TicketError::Storage(e) => e.into(),
            TicketError::Invalid { field, reason } => ApiError::field(field, reason),
            TicketError::Conflict(reason) => ApiError::Conflict(reason),
            TicketError::Forbidden(reason) => ApiError::NotYours(reason),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TicketQuery {
    /// Tenant id.
    pub tenant: Option<i64>,
    /// Site id: tickets of this site and every site under it.
    pub site: Option<i64>,
    pub status: Option<TicketStatus>,
    pub category: Option<String>,
    /// User name of the assignee.
    pub assignee: Option<String>,
    /// Worker id.
    pub worker: Option<i64>,
    /// `true`: only tickets past their due time and not done, closed or cancelled.
    pub overdue: Option<bool>,
    /// Created at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Created before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv` (every matching ticket, with the times taken from the history).
    pub format: Option<Format>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

async fn filter_of(
    s: &AppState,
    user: &CurrentUser,
    q: &TicketQuery,
) -> Result<TicketFilter, ApiError> {
    let tenant_id = user.scope(q.tenant)?;
    let site_ids = match q.site {
        Some(site) => {
            let mut conn = s.db.conn().await?;
            let found = crate::storage::sites::get(&mut conn, site).await;
            let site_row = match found {
                Ok(row) => row,
                Err(StorageError::NotFound { .. }) => {
                    return Err(ApiError::field("site", format!("no site {site}")));
                }
                Err(e) => return Err(e.into()),
            };
            if tenant_id.is_some_and(|t| t != site_row.tenant_id) {
                return Err(ApiError::field("site", format!("no site {site}")));
            }
            Some(store::site_and_descendants(&mut conn, site).await?)
        }
        None => None,
    };
    if let Some(c) = &q.category {
        tickets::check_category(c).map_err(|e| ApiError::field("category", e))?;
    }
    if let (Some(a), Some(b)) = (q.from, q.to)
        && a >= b
    {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    Ok(TicketFilter {
        tenant_id,
        site_ids,
        status: q.status,
        category: q.category.clone(),
        assignee: q.assignee.clone(),
        worker_id: q.worker,
        overdue: q.overdue,
        created_from: q.from,
        created_to: q.to,
    })
}

/// Tickets, oldest first (keyset paging by id); `?format=csv` exports every match.
#[utoipa::path(get, path = "/tickets", tag = "tickets", params(TicketQuery), responses((status = 200, body = Paged<Ticket>), (status = 200, content_type = "text/csv")))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<TicketQuery>,
) -> Result<Response, ApiError> {
    let filter = filter_of(&s, &user, &q).await?;
    if matches!(q.format, Some(Format::Csv)) {
        return csv_response(&s, &filter).await;
    }
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let mut conn = s.db.conn().await?;
    let items = store::list(&mut conn, &filter, page, Utc::now()).await?;
    Ok(Json(Paged::new(items, page, |t| t.id)).into_response())
}

/// Every matching ticket as CSV (the same filters as `GET /tickets`).
#[utoipa::path(get, path = "/tickets.csv", tag = "tickets", params(TicketQuery), responses((status = 200, content_type = "text/csv")))]
async fn export_csv(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<TicketQuery>,
) -> Result<Response, ApiError> {
    let filter = filter_of(&s, &user, &q).await?;
    csv_response(&s, &filter).await
}

/// Opens a ticket.
#[utoipa::path(post, path = "/tickets", tag = "tickets", request_body = NewTicket, responses((status = 200, body = Ticket), (status = 422, body = super::Problem)))]
async fn create(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewTicket>,
) -> Result<Json<Ticket>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::create_scoped(&s, user.name(), user.0.tenant_id, &new).await?,
    ))
}

/// A ticket with its history, comments, linked calls and reminders.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketDetail {
    #[serde(flatten)]
    pub ticket: Ticket,
    pub history: Vec<HistoryEntry>,
    pub comments: Vec<Comment>,
    pub calls: Vec<LinkedCall>,
    pub reminders: Vec<Reminder>,
    /// The statuses it may move to next.
    pub next_statuses: Vec<TicketStatus>,
}

#[utoipa::path(get, path = "/tickets/{id}", tag = "tickets", responses((status = 200, body = TicketDetail), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<TicketDetail>, ApiError> {
    let mut conn = s.db.conn().await?;
    let ticket = tickets::get_scoped(&mut conn, user.0.tenant_id, id).await?;
    Ok(Json(TicketDetail {
        history: store::history(&mut conn, id).await?,
        comments: store::comments(&mut conn, id).await?,
        calls: store::calls(&mut conn, id).await?,
        reminders: store::reminders(&mut conn, None, Some(id), None, true).await?,
        next_statuses: tickets::next_statuses(ticket.status).to_vec(),
        ticket,
    }))
}

/// Changes status (`new -> assigned -> in_progress -> done -> closed`, or `cancelled`; a transition
/// not allowed is 409 with the reason), priority, category, description, site, consumer, contact,
/// assignee, worker, due time; links calls; records a comment.
#[utoipa::path(patch, path = "/tickets/{id}", tag = "tickets", request_body = TicketPatch, responses((status = 200, body = Ticket), (status = 409, body = super::Problem), (status = 422, body = super::Problem)))]
async fn update(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(patch): ApiJson<TicketPatch>,
) -> Result<Json<Ticket>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::update(&s, user.name(), user.0.tenant_id, id, &patch).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommentBody {
    pub text: String,
}

#[utoipa::path(post, path = "/tickets/{id}/comments", tag = "tickets", request_body = CommentBody, responses((status = 200, body = Comment), (status = 422, body = super::Problem)))]
async fn add_comment(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<CommentBody>,
) -> Result<Json<Comment>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::add_comment(&s, user.name(), user.0.tenant_id, id, &body.text).await?,
    ))
}

/// Every change of the ticket: who, when, which field, old and new value.
#[utoipa::path(get, path = "/tickets/{id}/history", tag = "tickets", responses((status = 200, body = Vec<HistoryEntry>)))]
async fn history(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let mut conn = s.db.conn().await?;
    tickets::get_scoped(&mut conn, user.0.tenant_id, id).await?;
    Ok(Json(store::history(&mut conn, id).await?))
}

/// Books a field worker's visit at the time the resident chose; the worker is assigned and told by
/// SMS, e-mail or Telegram. A time outside the worker's hours or taken by another visit is 409.
#[utoipa::path(post, path = "/tickets/{id}/booking", tag = "tickets", request_body = Booking, responses((status = 200, body = Ticket), (status = 409, body = super::Problem), (status = 422, body = super::Problem)))]
async fn book(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<Booking>,
) -> Result<Json<Ticket>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::book(&s, user.name(), user.0.tenant_id, id, &body).await?,
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// What was done.
    #[serde(default)]
    pub note: String,
}

/// The worker reports the work done (the ticket becomes `done`). A user linked to a worker may only
/// complete that worker's tickets.
#[utoipa::path(post, path = "/tickets/{id}/complete", tag = "tickets", request_body = CompleteBody, responses((status = 200, body = Ticket), (status = 409, body = super::Problem)))]
async fn complete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<CompleteBody>,
) -> Result<Json<Ticket>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::complete(
            &s,
            user.name(),
            Some(user.0.id),
            user.0.tenant_id,
            id,
            &body.note,
        )
        .await?,
    ))
}

/// Sets a reminder to call the resident back.
#[utoipa::path(post, path = "/tickets/{id}/reminders", tag = "tickets", request_body = NewReminder, responses((status = 200, body = Reminder), (status = 422, body = super::Problem)))]
async fn add_reminder(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<NewReminder>,
) -> Result<Json<Reminder>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::add_reminder(&s, user.name(), user.0.tenant_id, id, &body).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReminderQuery {
    /// `true`: only reminders whose time has come.
    pub due: Option<bool>,
    pub tenant: Option<i64>,
    pub ticket: Option<i64>,
}

/// Call-back reminders not done yet, by time.
#[utoipa::path(get, path = "/reminders", tag = "tickets", params(ReminderQuery), responses((status = 200, body = Vec<Reminder>)))]
async fn reminders(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<ReminderQuery>,
) -> Result<Json<Vec<Reminder>>, ApiError> {
    let tenant = user.scope(q.tenant)?;
    let due_by = q.due.unwrap_or(false).then(Utc::now);
    let mut conn = s.db.conn().await?;
    Ok(Json(
        store::reminders(&mut conn, tenant, q.ticket, due_by, false).await?,
    ))
}

/// The resident was called back.
#[utoipa::path(post, path = "/reminders/{id}/done", tag = "tickets", responses((status = 200, body = Reminder), (status = 409, body = super::Problem)))]
async fn reminder_done(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Reminder>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::finish_reminder(&s, user.name(), user.0.tenant_id, id).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WorkerQuery {
    pub tenant: Option<i64>,
    pub trade: Option<String>,
    /// Only workers with this skill.
    pub skill: Option<String>,
}

/// Field workers.
#[utoipa::path(get, path = "/workers", tag = "tickets", params(WorkerQuery), responses((status = 200, body = Vec<Worker>)))]
async fn workers(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<WorkerQuery>,
) -> Result<Json<Vec<Worker>>, ApiError> {
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    Ok(Json(
        staff::list(&mut conn, tenant, q.trade.as_deref(), q.skill.as_deref()).await?,
    ))
}

/// Creates or updates (by tenant and external id) a field worker.
#[utoipa::path(post, path = "/workers", tag = "tickets", request_body = NewWorker, responses((status = 200, body = Worker), (status = 422, body = super::Problem)))]
async fn save_worker(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<NewWorker>,
) -> Result<Json<Worker>, ApiError> {
    user.require(Permission::HandleTickets)?;
    Ok(Json(
        tickets::save_worker(&s, user.name(), user.0.tenant_id, &body).await?,
    ))
}

async fn visible_worker(s: &AppState, user: &CurrentUser, id: i64) -> Result<Worker, ApiError> {
    let mut conn = s.db.conn().await?;
    let w = staff::get(&mut conn, id).await?;
    user.check_tenant(w.tenant_id, &format!("worker {id}"))?;
    Ok(w)
}

/// A worker with the days that differ from the weekly hours.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerDetail {
    #[serde(flatten)]
    pub worker: Worker,
    pub days: Vec<WorkerDay>,
}

#[utoipa::path(get, path = "/workers/{id}", tag = "tickets", responses((status = 200, body = WorkerDetail), (status = 404, body = super::Problem)))]
async fn worker(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<WorkerDetail>, ApiError> {
    let worker = visible_worker(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    Ok(Json(WorkerDetail {
        days: staff::days(&mut conn, id).await?,
        worker,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DayBody {
    /// Hours of the day (`["10:00-14:00"]`); `[]` a day off; `null` back to the weekly hours.
    pub hours: Option<Vec<String>>,
    #[serde(default)]
    pub note: String,
}

/// Sets one day of a worker that differs from the weekly hours (a day off, other hours).
#[utoipa::path(put, path = "/workers/{id}/days/{day}", tag = "tickets", request_body = DayBody, responses((status = 200, body = WorkerDetail), (status = 422, body = super::Problem)))]
async fn set_day(
    State(s): State<AppState>,
    user: CurrentUser,
    Path((id, day)): Path<(i64, String)>,
    ApiJson(body): ApiJson<DayBody>,
) -> Result<Json<WorkerDetail>, ApiError> {
    user.require(Permission::HandleTickets)?;
    let day: NaiveDate = day
        .parse()
        .map_err(|_| ApiError::field("day", "a date YYYY-MM-DD"))?;
    let worker = visible_worker(&s, &user, id).await?;
    tickets::set_worker_day(
        &s,
        user.name(),
        &worker,
        day,
        body.hours.as_deref(),
        &body.note,
    )
    .await?;
    let mut conn = s.db.conn().await?;
    Ok(Json(WorkerDetail {
        days: staff::days(&mut conn, id).await?,
        worker,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SlotQuery {
    /// Start of the range (RFC 3339); now by default.
    pub from: Option<DateTime<Utc>>,
    /// End of the range (RFC 3339); 7 days after `from` by default, at most 62.
    pub to: Option<DateTime<Utc>>,
    /// The slot length of this category (`[tickets] slot_minutes`).
    pub category: Option<String>,
    /// The slot length of this ticket's category.
    pub ticket: Option<i64>,
}

/// Free slots of a worker: the working hours cut into visits of the category's length, without
/// those taken by booked visits or already begun.
#[utoipa::path(get, path = "/workers/{id}/slots", tag = "tickets", params(SlotQuery), responses((status = 200, body = Vec<Slot>), (status = 422, body = super::Problem)))]
async fn slots(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiQuery(q): ApiQuery<SlotQuery>,
) -> Result<Json<Vec<Slot>>, ApiError> {
    let worker = visible_worker(&s, &user, id).await?;
    let category = match (&q.category, q.ticket) {
        (Some(c), _) => {
            tickets::check_category(c).map_err(|e| ApiError::field("category", e))?;
            Some(c.clone())
        }
        (None, Some(t)) => {
            let mut conn = s.db.conn().await?;
            Some(
                tickets::get_scoped(&mut conn, user.0.tenant_id, t)
                    .await?
                    .category,
            )
        }
        (None, None) => None,
    };
    let len = match &category {
        Some(c) => s.config.tickets.slot_length(c),
        None => Duration::minutes(i64::from(s.config.tickets.default_slot_minutes.max(1))),
    };
    let from = q.from.unwrap_or_else(Utc::now);
    let to = q.to.unwrap_or(from + Duration::days(7));
    Ok(Json(tickets::free_slots(&s, &worker, from, to, len).await?))
}

/// The columns of the CSV export, in order.
pub const CSV_COLUMNS: [&str; 25] = [
    "id",
    "tenant",
    "site",
    "site_name",
    "category",
    "priority",
    "status",
    "description",
    "consumer",
    "contact_phone",
    "assignee",
    "worker",
    "source",
    "created_by",
    "created_at",
    "due_at",
    "assigned_at",
    "in_progress_at",
    "done_at",
    "closed_at",
    "cancelled_at",
    "slot_start",
    "hours_to_done",
    "overdue",
    "completion_note",
];

/// Largest export, in tickets.
const MAX_EXPORT: usize = 100_000;

async fn all_tickets(s: &AppState, filter: &TicketFilter) -> Result<Vec<Ticket>, ApiError> {
    let mut conn = s.db.conn().await?;
    let now = Utc::now();
    let mut out = Vec::new();
    let mut page = PageRequest {
        after: 0,
        limit: 1000,
    };
    loop {
        let items = store::list(&mut conn, filter, page, now).await?;
        let Some(last) = items.last().map(|t| t.id) else {
            break;
        };
        let full = items.len() as i64 == page.limit;
        out.extend(items);
        if !full || out.len() >= MAX_EXPORT {
            break;
        }
        page.after = last;
    }
    Ok(out)
}

/// When each ticket first reached each status, from the history.
async fn status_times(
    s: &AppState,
    tickets: &[Ticket],
) -> Result<HashMap<i64, BTreeMap<String, DateTime<Utc>>>, ApiError> {
    let mut out: HashMap<i64, BTreeMap<String, DateTime<Utc>>> = HashMap::new();
    let (Some(first), Some(last)) = (
        tickets.iter().map(|t| t.created_at).min(),
        tickets.iter().map(|t| t.created_at).max(),
    ) else {
        return Ok(out);
    };
    let mut conn = s.db.conn().await?;
    let rows =
        store::status_times(&mut conn, None, first, last + Duration::milliseconds(1)).await?;
    for (id, status, at) in rows {
        out.entry(id).or_default().insert(status, at);
    }
    Ok(out)
}

/// When the work was done: the first `done`, else the first `closed`.
fn resolved_at(times: Option<&BTreeMap<String, DateTime<Utc>>>) -> Option<DateTime<Utc>> {
    let times = times?;
    times.get("done").or_else(|| times.get("closed")).copied()
}

/// Past due at some point: still open after the due time, or resolved after it.
fn was_overdue(t: &Ticket, resolved: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    match t.status {
        TicketStatus::Cancelled => t.overdue_at.is_some(),
        _ => resolved.unwrap_or(now) > t.due_at || t.overdue_at.is_some(),
    }
}

async fn csv_response(s: &AppState, filter: &TicketFilter) -> Result<Response, ApiError> {
    let list = all_tickets(s, filter).await?;
    let times = status_times(s, &list).await?;
    let body =
        to_csv(&list, &times, Utc::now()).map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"tickets.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Free text for a spreadsheet: a cell that would start a formula (`=`, `+`, `-`, `@`) is kept as
/// text by a leading apostrophe, so a resident's words never run in the dispatcher's Excel.
fn text_cell(text: &str) -> String {
    if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    }
}

fn to_csv(
    list: &[Ticket],
    times: &HashMap<i64, BTreeMap<String, DateTime<Utc>>>,
    now: DateTime<Utc>,
) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(CSV_COLUMNS)?;
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    for t in list {
        let ts = times.get(&t.id);
        let at = |s: &str| time(ts.and_then(|m| m.get(s)).copied());
        let resolved = resolved_at(ts);
        let hours = resolved
            .map(|r| format!("{:.2}", (r - t.created_at).num_seconds() as f64 / 3600.0))
            .unwrap_or_default();
        w.write_record([
            t.id.to_string(),
            t.tenant.clone(),
            t.site.clone().unwrap_or_default(),
            text_cell(t.site_name.as_deref().unwrap_or_default()),
            t.category.clone(),
            t.priority.as_str().to_owned(),
            t.status.as_str().to_owned(),
            text_cell(&t.description),
            t.consumer.clone().unwrap_or_default(),
            t.contact_phone.clone().unwrap_or_default(),
            t.assignee.clone().unwrap_or_default(),
            t.worker.clone().unwrap_or_default(),
            t.source.clone(),
            t.created_by.clone(),
            t.created_at.to_rfc3339(),
            t.due_at.to_rfc3339(),
            at("assigned"),
            at("in_progress"),
            at("done"),
            at("closed"),
            at("cancelled"),
            time(t.slot_start),
            hours,
            was_overdue(t, resolved, now).to_string(),
            text_cell(t.completion_note.as_deref().unwrap_or_default()),
        ])?;
    }
    w.into_inner().map_err(|e| csv::Error::from(e.into_error()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// Start of the period (RFC 3339); 30 days before `to` by default.
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339, excluded); now by default.
    pub to: Option<DateTime<Utc>>,
    pub tenant: Option<i64>,
}

/// Counts of one group (a tenant, a site, a category).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ReportGroup {
    /// External id of the tenant or site, or the category.
    pub key: String,
    /// The site's name (for sites).
    pub name: Option<String>,
    pub tickets: i64,
    /// Done or closed.
    pub resolved: i64,
    pub cancelled: i64,
    /// Past due at some point (still open after the due time, or done after it).
    pub overdue: i64,
    /// `overdue / tickets`, 0 to 1.
    pub overdue_share: f64,
    /// Mean hours from creation to done (or closed when never marked done).
    pub avg_hours_to_close: Option<f64>,
    /// Calls in the period (tenants and sites; not categories).
    pub calls: i64,
}

/// Tickets and calls of a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tenant: Option<i64>,
    /// Every ticket created in the period.
    pub total: ReportGroup,
    pub by_tenant: Vec<ReportGroup>,
    pub by_site: Vec<ReportGroup>,
    pub by_category: Vec<ReportGroup>,
    /// The most frequent requests: categories by number of tickets, at most 10.
    pub top_requests: Vec<ReportGroup>,
}

#[derive(Default)]
struct Acc {
    g: ReportGroup,
    hours: Vec<f64>,
}

impl Acc {
    fn add(&mut self, t: &Ticket, resolved: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        self.g.tickets += 1;
        if t.status == TicketStatus::Cancelled {
            self.g.cancelled += 1;
        }
        if let Some(r) = resolved {
            self.g.resolved += 1;
            self.hours
                .push((r - t.created_at).num_seconds() as f64 / 3600.0);
        }
        if was_overdue(t, resolved, now) {
            self.g.overdue += 1;
        }
    }

    fn done(mut self, key: String) -> ReportGroup {
        self.g.key = key;
        if self.g.tickets > 0 {
            self.g.overdue_share = self.g.overdue as f64 / self.g.tickets as f64;
        }
        if !self.hours.is_empty() {
            let mean = self.hours.iter().sum::<f64>() / self.hours.len() as f64;
            self.g.avg_hours_to_close = Some((mean * 100.0).round() / 100.0);
        }
        self.g
    }
}

/// Tenant, site, site name and the number of calls.
type CallCount = (Option<String>, Option<String>, Option<String>, i64);

/// Tickets (and calls) per tenant, site and category for a period: counts, the most frequent
/// requests, mean time to close and the share that went overdue.
#[utoipa::path(get, path = "/reports/tickets", tag = "tickets", params(ReportQuery), responses((status = 200, body = TicketReport), (status = 422, body = super::Problem)))]
async fn report(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<ReportQuery>,
) -> Result<Json<TicketReport>, ApiError> {
    let now = Utc::now();
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - Duration::days(30));
    if from >= to {
        return Err(ApiError::field("from", "must be before `to`"));
    }
    if to - from > Duration::days(366) {
        return Err(ApiError::field("from", "the period is at most 366 days"));
    }
    let tenant = user.scope(q.tenant)?;
    let filter = TicketFilter {
        tenant_id: tenant,
        created_from: Some(from),
        created_to: Some(to),
        ..TicketFilter::default()
    };
    let list = all_tickets(&s, &filter).await?;
    let times = status_times(&s, &list).await?;
    let mut total = Acc::default();
    let mut tenants: BTreeMap<String, Acc> = BTreeMap::new();
    let mut sites: BTreeMap<String, Acc> = BTreeMap::new();
    let mut categories: BTreeMap<String, Acc> = BTreeMap::new();
    for t in &list {
        let resolved = resolved_at(times.get(&t.id));
        total.add(t, resolved, now);
        tenants
            .entry(t.tenant.clone())
            .or_default()
            .add(t, resolved, now);
        categories
            .entry(t.category.clone())
            .or_default()
            .add(t, resolved, now);
        if let Some(site) = &t.site {
            let acc = sites.entry(format!("{}/{site}", t.tenant)).or_default();
            acc.g.name = t.site_name.clone();
            acc.add(t, resolved, now);
        }
    }
    // Calls of the period by tenant and by site.
    let rows: Vec<CallCount> = {
        let mut conn = s.db.conn().await?;
        sqlx::query_as(
            "SELECT t.external_id, si.external_id, si.name, COUNT(*) FROM calls c
               LEFT JOIN tenants t ON t.id = c.tenant_id LEFT JOIN sites si ON si.id = c.site_id
              WHERE c.started_at >= $1 AND c.started_at < $2 AND ($3 IS NULL OR c.tenant_id = $3)
              GROUP BY t.external_id, si.external_id, si.name",
        )
        .bind(crate::storage::to_ms(from))
        .bind(crate::storage::to_ms(to))
        .bind(tenant)
        .fetch_all(&mut *conn)
        .await?
    };
    for (t, site, name, n) in rows {
        total.g.calls += n;
        let t = t.unwrap_or_else(|| "-".to_owned());
        if let Some(site) = site {
            let acc = sites.entry(format!("{t}/{site}")).or_default();
            acc.g.name = name;
            acc.g.calls += n;
        }
        tenants.entry(t).or_default().g.calls += n;
    }
    let by_category: Vec<ReportGroup> = categories.into_iter().map(|(k, a)| a.done(k)).collect();
    let mut top = by_category.clone();
    top.sort_by(|a, b| b.tickets.cmp(&a.tickets).then_with(|| a.key.cmp(&b.key)));
    top.truncate(10);
    Ok(Json(TicketReport {
        from,
        to,
        tenant,
        total: total.done("total".into()),
        by_tenant: tenants.into_iter().map(|(k, a)| a.done(k)).collect(),
        by_site: sites.into_iter().map(|(k, a)| a.done(k)).collect(),
        by_category,
        top_requests: top,
    }))
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use crate::import::{Format, ImportKind, ImportOptions, run};
    use crate::names::Role;

    async fn call(
        app: &axum::Router,
        token: &str,
        method: &str,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, text) = crate::api::test_call(app, token, method, uri, body).await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    #[test]
    fn csv_cells_never_start_a_formula() {
        assert_eq!(super::text_cell("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        assert_eq!(super::text_cell("@cmd"), "'@cmd");
        assert_eq!(super::text_cell("Течёт кран"), "Течёт кран");
    }

    /// A call record of a tenant and site, an hour ago.
    async fn a_call(state: &crate::api::AppState, tenant: i64, site: i64, recorded: bool) -> i64 {
        let at = crate::storage::now_ms() - 3_600_000;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO calls (sip_call_id, direction, from_number, to_number, tenant_id, site_id,
               started_at, ended_at, outcome, recording)
             VALUES ($1, 'inbound', '+79990000001', '100', $2, $3, $4, $5, 'answered', $6) RETURNING id",
        )
        .bind(format!("c-{tenant}-{site}"))
        .bind(tenant)
        .bind(site)
        .bind(at)
        .bind(at + 60_000)
        .bind(recorded.then_some("calls/1.wav"))
        .fetch_one(&state.db.pool)
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn tenant_bound_users_see_their_tenant_and_calls_count_in_the_report() {
        let (app, state, token, _d) = crate::api::test_app(Role::Operator).await;
        let mut c = state.db.conn().await.unwrap();
        for t in ["t1", "t2"] {
            let t =
                serde_json::from_value(json!({"external_id": t, "name": t, "kind": "supplier"}))
                    .unwrap();
            crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        }
        let opts = ImportOptions {
            actor: "test".into(),
            ..Default::default()
        };
        let sites = "tenant,external_id,parent,kind,name\nt1,rc,,residential_complex,RC\nt1,a1,rc,apartment,A1\nt2,x1,,yard,X1\n";
        let r = run(
            &state.db,
            ImportKind::Sites,
            Format::Csv,
            "s.csv",
            sites,
            &opts,
        )
        .await
        .unwrap();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let id_of = |sql: &'static str| {
            let pool = state.db.pool.clone();
            async move {
                let (id,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.unwrap();
                id
            }
        };
        let (t1, t2) = (
            id_of("SELECT id FROM tenants WHERE external_id = 't1'").await,
            id_of("SELECT id FROM tenants WHERE external_id = 't2'").await,
        );
        let a1 = id_of("SELECT id FROM sites WHERE external_id = 'a1'").await;
        let rc = id_of("SELECT id FROM sites WHERE external_id = 'rc'").await;
        let x1 = id_of("SELECT id FROM sites WHERE external_id = 'x1'").await;
        let call1 = a_call(&state, t1, a1, true).await;
        let call2 = a_call(&state, t2, x1, false).await;
        // op2 works for t2 only.
        let op2 = crate::storage::users::create(&mut c, "op2", "x", Role::Operator, Some(t2))
            .await
            .unwrap();
        let token2 = crate::auth::new_token();
        crate::storage::users::create_session(
            &mut c,
            &crate::auth::token_hash(&token2),
            op2.id,
            "session",
            chrono::Utc::now() + chrono::Duration::hours(1),
        )
        .await
        .unwrap();
        drop(c);

        let (s, t) = call(
            &app,
            &token,
            "POST",
            "/api/v1/tickets",
            Some(json!({"tenant": "t1", "site": "a1", "category": "heating", "calls": [call1]})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{t}");
        let tid = t["id"].as_i64().unwrap();
        let (_, detail) = call(&app, &token, "GET", &format!("/api/v1/tickets/{tid}"), None).await;
        assert_eq!(detail["calls"][0]["id"], call1, "{detail}");
        assert_eq!(
            detail["calls"][0]["recording"],
            format!("/api/v1/calls/{call1}/recording")
        );
        assert_eq!(
            detail["next_statuses"],
            json!(["assigned", "in_progress", "cancelled"])
        );
        // Another tenant's call cannot be linked.
        let (s, p) = call(
            &app,
            &token,
            "PATCH",
            &format!("/api/v1/tickets/{tid}"),
            Some(json!({"link_calls": [call2]})),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert_eq!(p["errors"][0]["field"], "calls");

        // The tenant-bound operator: own tenant only.
        let (s, p) = call(
            &app,
            &token2,
            "POST",
            "/api/v1/tickets",
            Some(json!({"tenant": "t1", "category": "water"})),
        )
        .await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{p}");
        assert_eq!(p["errors"][0]["field"], "tenant");
        let (s, own) = call(
            &app,
            &token2,
            "POST",
            "/api/v1/tickets",
            Some(json!({"site": "x1", "category": "power", "priority": "urgent"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{own}");
        assert_eq!(own["tenant"], "t2");
        let (_, list) = call(&app, &token2, "GET", "/api/v1/tickets", None).await;
        assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
        let uri = format!("/api/v1/tickets/{tid}");
        assert_eq!(
            call(&app, &token2, "GET", &uri, None).await.0,
            StatusCode::NOT_FOUND
        );
        let patch = Some(json!({"status": "cancelled"}));
        assert_eq!(
            call(&app, &token2, "PATCH", &uri, patch).await.0,
            StatusCode::NOT_FOUND
        );
        let uri = format!("/api/v1/tickets?tenant={t1}");
        assert_eq!(
            call(&app, &token2, "GET", &uri, None).await.0,
            StatusCode::FORBIDDEN
        );

        // Filters: the complex holds the apartment; bad values name the parameter.
        let (_, list) = call(
            &app,
            &token,
            "GET",
            &format!("/api/v1/tickets?site={rc}"),
            None,
        )
        .await;
        assert_eq!(list["items"][0]["id"], tid, "{list}");
        let (s, p) = call(&app, &token, "GET", "/api/v1/tickets?status=bogus", None).await;
        assert_eq!(
            (s, &p["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("status"))
        );
        let (s, p) = call(&app, &token, "GET", "/api/v1/tickets?site=99999", None).await;
        assert_eq!(
            (s, &p["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("site"))
        );

        // The report: tickets and calls per tenant and site.
        let (s, r) = call(&app, &token, "GET", "/api/v1/reports/tickets", None).await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(
            (r["total"]["tickets"].as_i64(), r["total"]["calls"].as_i64()),
            (Some(2), Some(2)),
            "{r}"
        );
        let site = r["by_site"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["key"] == "t1/a1")
            .unwrap_or_else(|| panic!("{r}"));
        assert_eq!(
            (site["tickets"].as_i64(), site["calls"].as_i64()),
            (Some(1), Some(1)),
            "{r}"
        );
        let (_, r) = call(&app, &token2, "GET", "/api/v1/reports/tickets", None).await;
        assert_eq!(
            (r["total"]["tickets"].as_i64(), r["total"]["calls"].as_i64()),
            (Some(1), Some(1)),
            "{r}"
        );
        assert_eq!(r["top_requests"][0]["key"], "power", "{r}");
        let (s, p) = call(
            &app,
            &token,
            "GET",
            "/api/v1/reports/tickets?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
            None,
        )
        .await;
        assert_eq!(
            (s, &p["errors"][0]["field"]),
            (StatusCode::UNPROCESSABLE_ENTITY, &json!("from"))
        );
        // Every endpoint is in the OpenAPI document.
        let (_, doc) = call(&app, &token, "GET", "/api/v1/openapi.json", None).await;
        for path in [
            "/api/v1/tickets",
            "/api/v1/tickets.csv",
            "/api/v1/tickets/{id}/booking",
            "/api/v1/tickets/{id}/complete",
            "/api/v1/reminders",
            "/api/v1/workers/{id}/slots",
            "/api/v1/workers/{id}/days/{day}",
            "/api/v1/reports/tickets",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
    }
}
