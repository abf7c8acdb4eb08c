//! `/outages`: planned and emergency outages, from dispatchers and dispatch systems. Creating with the
//! same `external_id` again updates (idempotent); closing publishes `outage_closed`.

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::network::{AffectedReport, report};
use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::actions;
use crate::auth::Permission;
use crate::names::{OutageKind, OutageStatus};
use crate::storage::outages::{self, NewOutage, Outage, OutageFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one))
        .routes(routes!(close))
        .routes(routes!(affected))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutageQuery {
    pub tenant: Option<i64>,
    pub status: Option<OutageStatus>,
    pub kind: Option<OutageKind>,
    pub supply_point: Option<i64>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/outages", tag = "outages", params(OutageQuery), responses((status = 200, body = Paged<Outage>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<OutageQuery>,
) -> Result<Json<Paged<Outage>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = OutageFilter {
        tenant_id: user.scope(q.tenant)?,
        status: q.status,
        kind: q.kind,
        supply_point_id: q.supply_point,
    };
    let mut conn = s.db.conn().await?;
    let items = outages::list(&mut conn, &filter, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

/// Records an outage; the same `external_id` again updates it (idempotent), with `actual_end` closes it.
#[utoipa::path(post, path = "/outages", tag = "outages", request_body = NewOutage, responses((status = 200, body = Outage)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewOutage>,
) -> Result<Json<Outage>, ApiError> {
    user.require(Permission::ManageOutages)?;
    let (outage, _) =
        actions::record_outage(&s, user.name(), "api", user.0.tenant_id, &new).await?;
    Ok(Json(outage))
}

#[utoipa::path(get, path = "/outages/{id}", tag = "outages", responses((status = 200, body = Outage), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Outage>, ApiError> {
    let mut conn = s.db.conn().await?;
    let o = outages::get(&mut conn, id).await?;
    user.check_tenant(o.tenant_id, &format!("outage {id}"))?;
    Ok(Json(o))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseOutage {
    /// When supply was restored; now by default.
    #[serde(default)]
    pub actual_end: Option<DateTime<Utc>>,
}

/// Marks the outage closed (supply restored).
#[utoipa::path(post, path = "/outages/{id}/close", tag = "outages", request_body = CloseOutage, responses((status = 200, body = Outage)))]
async fn close(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<CloseOutage>,
) -> Result<Json<Outage>, ApiError> {
    user.require(Permission::ManageOutages)?;
    {
        let mut conn = s.db.conn().await?;
        let o = outages::get(&mut conn, id).await?;
        user.check_tenant(o.tenant_id, &format!("outage {id}"))?;
    }
    let (outage, _) = actions::close_outage(&s, user.name(), "api", id, body.actual_end).await?;
    Ok(Json(outage))
}

/// Who the outage affects: through its supply point and the sites it names.
#[utoipa::path(get, path = "/outages/{id}/affected", tag = "outages", params(Page), responses((status = 200, body = AffectedReport)))]
async fn affected(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<AffectedReport>, ApiError> {
    let o = {
        let mut conn = s.db.conn().await?;
        outages::get(&mut conn, id).await?
    };
    user.check_tenant(o.tenant_id, &format!("outage {id}"))?;
    let idx = s.network.get(&s.db).await?;
    Ok(Json(report(&s, affected_by(&idx, &o), page).await?))
}

/// Everything an outage cuts off: downstream of its supply point, plus its named sites.
pub fn affected_by(idx: &rules::network::NetworkIndex, o: &Outage) -> rules::network::Affected {
    let by_sites = idx.affected_sites(&o.sites);
    let Some(point) = o.supply_point_id else {
        return by_sites;
    };
    let mut a = idx.affected(point);
    if !o.sites.is_empty() {
        let merge = |x: &mut Vec<i64>, y: Vec<i64>| {
            x.extend(y);
            x.sort_unstable();
            x.dedup();
        };
        merge(&mut a.sites, by_sites.sites);
        merge(&mut a.roots, by_sites.roots);
        merge(&mut a.consumers, by_sites.consumers);
        merge(&mut a.life_support, by_sites.life_support);
        merge(&mut a.social_objects, by_sites.social_objects);
    }
    a
}
