//! `/tenants`: suppliers and management companies.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::Permission;
use crate::storage::tenants::{self, NewTenant, Tenant};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
}

/// Lists tenants (a tenant-bound user sees only their own).
#[utoipa::path(get, path = "/tenants", tag = "tenants", params(Page), responses((status = 200, body = Paged<Tenant>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Paged<Tenant>>, ApiError> {
    let page = page.request()?;
    let mut conn = s.db.conn().await?;
    let items = match user.0.tenant_id {
        // A tenant-bound user's list is their own tenant, on the first page.
        Some(own) if page.after < own => vec![tenants::get(&mut conn, own).await?],
        Some(_) => Vec::new(),
        None => tenants::list(&mut conn, page).await?,
    };
    Ok(Json(Paged::new(items, page, |t| t.id)))
}

/// Creates a tenant, or updates the one with the same `external_id`.
#[utoipa::path(post, path = "/tenants", tag = "tenants", request_body = NewTenant, responses((status = 200, body = Tenant)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<Json<Tenant>, ApiError> {
    user.require(Permission::Administer)?;
    let mut tx = s.db.begin().await?;
    let t = tenants::upsert(&mut tx, &new).await?;
    commit_audited(tx, &user, "upsert", "tenant", t.id, &t).await?;
    Ok(Json(t))
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", responses((status = 200, body = Tenant), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Tenant>, ApiError> {
    let mut conn = s.db.conn().await?;
    let t = tenants::get(&mut conn, id).await?;
    user.check_tenant(t.id, &format!("tenant {id}"))?;
    Ok(Json(t))
}

/// Deletes a tenant and everything that belongs to it.
#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::Administer)?;
    let mut tx = s.db.begin().await?;
    tenants::delete(&mut tx, id).await?;
    commit_audited(tx, &user, "delete", "tenant", id, &()).await?;
    Ok(StatusCode::NO_CONTENT)
}
