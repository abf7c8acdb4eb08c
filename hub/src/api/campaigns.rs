//! `/campaigns`: notification campaigns launched by rules or dispatchers; their preview, control
//! (pause, resume, cancel), the operators' call list, contacts in calling order, results and CSV
//! exports (report, contacts, postal letters).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::campaigns::report::{self, Report};
use crate::campaigns::{CampaignRequest, Control, Preview};
use crate::storage::campaigns::{self, CallListEntry, Campaign, Contact};

/// Contacts a preview renders at most.
const MAX_PREVIEW: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, launch))
        .routes(routes!(preview))
        .routes(routes!(get))
        .routes(routes!(contacts))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(cancel))
        .routes(routes!(call_list))
        .routes(routes!(call_list_done))
        .routes(routes!(get_report))
        .routes(routes!(report_csv))
        .routes(routes!(contacts_csv))
        .routes(routes!(letters_csv))
}

#[utoipa::path(get, path = "/campaigns", tag = "campaigns", params(Page), responses((status = 200, body = Paged<Campaign>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Campaign>>, ApiError> {
    user.require(Permission::Read)?;
    let page = page.request()?;
    let mut conn = s.db.conn().await?;
    let items = campaigns::list(&mut conn, user.scope(None)?, page).await?;
    Ok(Json(Paged::new(items, page, |c| c.id)))
}

/// Launches a campaign: the audience is resolved into contacts at once, the dispatcher sends them
/// from its start time.
#[utoipa::path(post, path = "/campaigns", tag = "campaigns", request_body = CampaignRequest, responses((status = 200, body = Campaign)))]
async fn launch(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(req): ApiJson<CampaignRequest>,
) -> Result<Json<Campaign>, ApiError> {
    user.require(Permission::ManageOutages)?;
    Ok(Json(
        crate::campaigns::launch(&s, user.name(), user.scope(None)?, &req).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct PreviewQuery {
    /// Contacts to render (at most 100; 5 when absent).
    #[serde(default)]
    n: Option<usize>,
}

/// What a launch would do, writing nothing: counts, schedule, deadline estimate and the messages of
/// the first `n` contacts.
#[utoipa::path(post, path = "/campaigns/preview", tag = "campaigns", params(PreviewQuery), request_body = CampaignRequest, responses((status = 200, body = Preview)))]
async fn preview(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<PreviewQuery>,
    ApiJson(req): ApiJson<CampaignRequest>,
) -> Result<Json<Preview>, ApiError> {
    user.require(Permission::ManageOutages)?;
    let n = q.n.unwrap_or(5);
    if n > MAX_PREVIEW {
        return Err(ApiError::field("n", format!("at most {MAX_PREVIEW}")));
    }
    Ok(Json(
        crate::campaigns::preview(&s, user.scope(None)?, &req, n).await?,
    ))
}

async fn visible(s: &AppState, user: &CurrentUser, id: i64) -> Result<Campaign, ApiError> {
    let mut conn = s.db.conn().await?;
    let c = campaigns::get(&mut conn, id).await?;
    user.check_tenant(c.tenant_id, &format!("campaign {id}"))?;
    Ok(c)
}

#[utoipa::path(get, path = "/campaigns/{id}", tag = "campaigns", responses((status = 200, body = Campaign)))]
async fn get(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Campaign>, ApiError> {
    user.require(Permission::Read)?;
    Ok(Json(visible(&s, &user, id).await?))
}

/// Contacts in calling order: priority 0 (life support, social objects) first, with their state.
#[utoipa::path(get, path = "/campaigns/{id}/contacts", tag = "campaigns", params(Page), responses((status = 200, body = Paged<Contact>)))]
async fn contacts(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Contact>>, ApiError> {
    user.require(Permission::Read)?;
    let page = page.request()?;
    visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    let items = campaigns::contacts(&mut conn, id, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

async fn control(
    s: &AppState,
    user: &CurrentUser,
    id: i64,
    what: Control,
) -> Result<Json<Campaign>, ApiError> {
    user.require(Permission::ManageOutages)?;
    visible(s, user, id).await?;
    Ok(Json(
        crate::campaigns::control(s, user.name(), id, what).await?,
    ))
}

/// Pauses a running or scheduled campaign: nothing more is sent until it is resumed (sends in flight
/// finish). Dispatcher and above; audited.
#[utoipa::path(post, path = "/campaigns/{id}/pause", tag = "campaigns", responses((status = 200, body = Campaign)))]
async fn pause(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Campaign>, ApiError> {
    control(&s, &user, id, Control::Pause).await
}

/// Resumes a paused campaign. Dispatcher and above; audited.
#[utoipa::path(post, path = "/campaigns/{id}/resume", tag = "campaigns", responses((status = 200, body = Campaign)))]
async fn resume(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Campaign>, ApiError> {
    control(&s, &user, id, Control::Resume).await
}

/// Cancels a campaign: contacts not yet sent end `cancelled`. Dispatcher and above; audited.
#[utoipa::path(post, path = "/campaigns/{id}/cancel", tag = "campaigns", responses((status = 200, body = Campaign)))]
async fn cancel(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Campaign>, ApiError> {
    control(&s, &user, id, Control::Cancel).await
}

/// The operators' call list: life-support residents and social objects, called by a person before
/// the robot takes them (after the entry is marked done or the hand-over time).
#[utoipa::path(get, path = "/campaigns/{id}/call-list", tag = "campaigns", responses((status = 200, body = Vec<CallListEntry>)))]
async fn call_list(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Vec<CallListEntry>>, ApiError> {
    user.require(Permission::Read)?;
    visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    Ok(Json(campaigns::call_list(&mut conn, id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DoneBody {
    /// `reached` or `not_reached`.
    result: String,
}

/// An operator marks a call-list entry done (operators and above; audited).
#[utoipa::path(post, path = "/campaigns/{id}/call-list/{contact}", tag = "campaigns", request_body = DoneBody, responses((status = 204)))]
async fn call_list_done(
    State(s): State<AppState>,
    user: CurrentUser,
    Path((id, contact)): Path<(i64, i64)>,
    ApiJson(body): ApiJson<DoneBody>,
) -> Result<axum::http::StatusCode, ApiError> {
    user.require(Permission::HandleTickets)?;
    visible(&s, &user, id).await?;
    crate::campaigns::operator_done(&s, user.name(), id, contact, &body.result).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Results: contacts by status and channel, attempts by outcome, time to reach 50/90/100 %.
#[utoipa::path(get, path = "/campaigns/{id}/report", tag = "campaigns", responses((status = 200, body = Report)))]
async fn get_report(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Report>, ApiError> {
    user.require(Permission::Read)?;
    let c = visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    Ok(Json(report::report(&mut conn, &c).await?))
}

fn csv_response(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// The report as CSV.
#[utoipa::path(get, path = "/campaigns/{id}/report.csv", tag = "campaigns", responses((status = 200, content_type = "text/csv")))]
async fn report_csv(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require(Permission::Read)?;
    let c = visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    let r = report::report(&mut conn, &c).await?;
    Ok(csv_response(
        &format!("campaign-{id}-report.csv"),
        report::report_csv(&r)?,
    ))
}

/// Every contact with its state, as CSV.
#[utoipa::path(get, path = "/campaigns/{id}/contacts.csv", tag = "campaigns", responses((status = 200, content_type = "text/csv")))]
async fn contacts_csv(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require(Permission::Read)?;
    visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    Ok(csv_response(
        &format!("campaign-{id}-contacts.csv"),
        report::contacts_csv(&mut conn, id).await?,
    ))
}

/// The postal letter list: consumers no channel reached, with their address, as CSV.
#[utoipa::path(get, path = "/campaigns/{id}/letters.csv", tag = "campaigns", responses((status = 200, content_type = "text/csv")))]
async fn letters_csv(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    user.require(Permission::Read)?;
    visible(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    Ok(csv_response(
        &format!("campaign-{id}-letters.csv"),
        report::letters_csv(&mut conn, id).await?,
    ))
}
