//! `/campaigns`: notification campaigns launched by rules or dispatchers, and their contacts in
//! calling order (life support and social objects first).

use axum::Json;
use axum::extract::{Path, State};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::campaigns::CampaignRequest;
use crate::storage::campaigns::{self, Campaign, Contact};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, launch))
        .routes(routes!(get))
        .routes(routes!(contacts))
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

/// Launches a campaign: the audience is resolved into contacts at once.
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

#[utoipa::path(get, path = "/campaigns/{id}", tag = "campaigns", responses((status = 200, body = Campaign)))]
async fn get(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Campaign>, ApiError> {
    user.require(Permission::Read)?;
    let mut conn = s.db.conn().await?;
    let c = campaigns::get(&mut conn, id).await?;
    user.check_tenant(c.tenant_id, &format!("campaign {id}"))?;
    Ok(Json(c))
}

/// Contacts in calling order: priority 0 (life support, social objects) first.
#[utoipa::path(get, path = "/campaigns/{id}/contacts", tag = "campaigns", params(Page), responses((status = 200, body = Paged<Contact>)))]
async fn contacts(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Contact>>, ApiError> {
    user.require(Permission::Read)?;
    let page = page.request()?;
    let mut conn = s.db.conn().await?;
    let c = campaigns::get(&mut conn, id).await?;
    user.check_tenant(c.tenant_id, &format!("campaign {id}"))?;
    let items = campaigns::contacts(&mut conn, id, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}
