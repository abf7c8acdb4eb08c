//! `/ivr/overrides`: the IVR mode of residential complexes (and any site) set by rules or by a
//! dispatcher over the business-hours schedule: emergency with an announcement during an outage,
//! back to the schedule when it is over. Every change is audited by the telephony store.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, AppState, CurrentUser};
use crate::auth::Permission;
use crate::telephony::{IvrMode, store::IvrOverrideRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(set, clear))
}

/// Sites whose IVR mode is overridden now.
#[utoipa::path(get, path = "/ivr/overrides", tag = "ivr", responses((status = 200, body = Vec<IvrOverrideRow>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<IvrOverrideRow>>, ApiError> {
    user.require(Permission::Read)?;
    let mut conn = s.db.conn().await?;
    Ok(Json(
        crate::telephony::store::list_overrides(&mut conn, user.scope(None)?).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetMode {
    /// `day`, `night` or `emergency`.
    pub mode: String,
    /// What callers from the site hear first (emergency mode).
    #[serde(default)]
    pub announcement: Option<String>,
}

async fn site_of(s: &AppState, user: &CurrentUser, id: i64) -> Result<(), ApiError> {
    let mut conn = s.db.conn().await?;
    let site = crate::storage::sites::get(&mut conn, id).await?;
    user.check_tenant(site.tenant_id, &format!("site {id}"))
}

/// A dispatcher sets the mode of a site (by the hub's site id) over its schedule.
#[utoipa::path(put, path = "/ivr/overrides/{site}", tag = "ivr", request_body = SetMode, responses((status = 204)))]
async fn set(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(site): Path<i64>,
    ApiJson(req): ApiJson<SetMode>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageOutages)?;
    let mode = IvrMode::parse(&req.mode)
        .ok_or_else(|| ApiError::field("mode", "day, night or emergency"))?;
    site_of(&s, &user, site).await?;
    crate::telephony::set_ivr_mode(
        &s.db,
        site,
        Some(mode),
        req.announcement.as_deref(),
        user.name(),
    )
    .await
    .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Back to the business-hours schedule.
#[utoipa::path(delete, path = "/ivr/overrides/{site}", tag = "ivr", responses((status = 204)))]
async fn clear(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(site): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageOutages)?;
    site_of(&s, &user, site).await?;
    crate::telephony::set_ivr_mode(&s.db, site, None, None, user.name())
        .await
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(StatusCode::NO_CONTENT)
}
