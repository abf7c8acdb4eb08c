//! `/supply-points`: the supply network, and what a supply point feeds (`/affected`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::Permission;
use crate::names::SupplyPointKind;
use crate::storage::consumers::{self, Consumer};
use crate::storage::network::{self, NewSupplyPoint, SupplyPoint};
use crate::storage::refs::Refs;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
        .routes(routes!(affected))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PointQuery {
    pub tenant: Option<i64>,
    pub kind: Option<SupplyPointKind>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/supply-points", tag = "network", params(PointQuery), responses((status = 200, body = Paged<SupplyPoint>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<PointQuery>,
) -> Result<Json<Paged<SupplyPoint>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let mut conn = s.db.conn().await?;
    let items = network::list(&mut conn, user.scope(q.tenant)?, q.kind, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

/// Creates a supply point or updates it (by tenant and `external_id`); its links are replaced.
#[utoipa::path(post, path = "/supply-points", tag = "network", request_body = NewSupplyPoint, responses((status = 200, body = SupplyPoint)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewSupplyPoint>,
) -> Result<Json<SupplyPoint>, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let p = network::upsert(&mut tx, &mut Refs::scoped(user.0.tenant_id), &new).await?;
    user.check_tenant(p.tenant_id, "tenant")?;
    commit_audited(tx, &user, "upsert", "supply_point", p.id, &p).await?;
    Ok(Json(p))
}

#[utoipa::path(get, path = "/supply-points/{id}", tag = "network", responses((status = 200, body = SupplyPoint), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<SupplyPoint>, ApiError> {
    let mut conn = s.db.conn().await?;
    let p = network::get(&mut conn, id).await?;
    user.check_tenant(p.tenant_id, &format!("supply point {id}"))?;
    Ok(Json(p))
}

#[utoipa::path(delete, path = "/supply-points/{id}", tag = "network", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let p = network::get(&mut tx, id).await?;
    user.check_tenant(p.tenant_id, &format!("supply point {id}"))?;
    network::delete(&mut tx, id).await?;
    commit_audited(tx, &user, "delete", "supply_point", id, &p).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who is affected when a supply point (or an outage) is off.
#[derive(Debug, Serialize, ToSchema)]
pub struct AffectedReport {
    /// The supply point and everything it feeds, directly or not.
    pub supply_points: Vec<i64>,
    /// Number of sites fed (with their sub-sites).
    pub sites_count: usize,
    /// Number of distinct consumers on those sites.
    pub consumers_count: usize,
    /// Ids of the affected consumers on life support: call them first, by a human.
    pub life_support: Vec<i64>,
    /// Ids of the affected social objects (hospitals, schools, kindergartens).
    pub social_objects: Vec<i64>,
    /// Ids of the top-level sites (residential complexes, standalone objects) with anything affected.
    pub complexes: Vec<i64>,
    /// A page of the affected consumers, by ascending id.
    pub consumers: Paged<Consumer>,
}

/// Builds the report from an `affected()` answer, fetching one page of consumer records.
pub async fn report(
    s: &AppState,
    a: rules::network::Affected,
    page: Page,
) -> Result<AffectedReport, ApiError> {
    let page = page.request()?;
    let start = a.consumers.partition_point(|id| *id <= page.after);
    let ids: Vec<i64> = a
        .consumers
        .iter()
        .skip(start)
        .take(page.limit as usize)
        .copied()
        .collect();
    let mut conn = s.db.conn().await?;
    let items = consumers::get_many(&mut conn, &ids).await?;
    Ok(AffectedReport {
        sites_count: a.sites.len(),
        consumers_count: a.consumers.len(),
        consumers: Paged::new(items, page, |c| c.id),
        supply_points: a.supply_points,
        life_support: a.life_support,
        social_objects: a.social_objects,
        complexes: a.roots,
    })
}

/// Everything downstream of a supply point: sites, consumers, life-support residents, social objects.
#[utoipa::path(get, path = "/supply-points/{id}/affected", tag = "network", params(Page), responses((status = 200, body = AffectedReport)))]
async fn affected(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<AffectedReport>, ApiError> {
    {
        let mut conn = s.db.conn().await?;
        let p = network::get(&mut conn, id).await?;
        user.check_tenant(p.tenant_id, &format!("supply point {id}"))?;
    }
    let idx = s.network.get(&s.db).await?;
    Ok(Json(report(&s, idx.affected(id), page).await?))
}
