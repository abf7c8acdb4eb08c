//! `/sites`: the tree of complexes, buildings, entrances, apartments and other objects.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::Permission;
use crate::storage::refs::Refs;
use crate::storage::sites::{self, NewSite, Site, SiteFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SiteQuery {
    /// Tenant id.
    pub tenant: Option<i64>,
    /// Site kind, e.g. `residential_complex`.
    pub kind: Option<String>,
    /// Children of this site.
    pub parent: Option<i64>,
    /// Only top-level sites.
    #[serde(default)]
    pub roots: bool,
    /// Part of the name or address.
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/sites", tag = "sites", params(SiteQuery), responses((status = 200, body = Paged<Site>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<SiteQuery>,
) -> Result<Json<Paged<Site>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = SiteFilter {
        tenant_id: user.scope(q.tenant)?,
        kind: q.kind,
        parent_id: q.parent,
        roots: q.roots,
        q: q.q,
    };
    let mut conn = s.db.conn().await?;
    let items = sites::list(&mut conn, &filter, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

/// Creates a site, or updates the one with the same tenant and `external_id`.
#[utoipa::path(post, path = "/sites", tag = "sites", request_body = NewSite, responses((status = 200, body = Site)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewSite>,
) -> Result<Json<Site>, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let site = sites::upsert(&mut tx, &mut Refs::scoped(user.0.tenant_id), &new).await?;
    user.check_tenant(site.tenant_id, "tenant")?;
    commit_audited(tx, &user, "upsert", "site", site.id, &site).await?;
    Ok(Json(site))
}

#[utoipa::path(get, path = "/sites/{id}", tag = "sites", responses((status = 200, body = Site), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Site>, ApiError> {
    let mut conn = s.db.conn().await?;
    let site = sites::get(&mut conn, id).await?;
    user.check_tenant(site.tenant_id, &format!("site {id}"))?;
    Ok(Json(site))
}

/// Deletes a site with all its sub-sites.
#[utoipa::path(delete, path = "/sites/{id}", tag = "sites", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let site = sites::get(&mut tx, id).await?;
    user.check_tenant(site.tenant_id, &format!("site {id}"))?;
    sites::delete(&mut tx, id).await?;
    commit_audited(tx, &user, "delete", "site", id, &site).await?;
    Ok(StatusCode::NO_CONTENT)
}
