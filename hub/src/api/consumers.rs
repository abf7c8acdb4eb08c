//! `/consumers`: residents and organizations.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::Permission;
use crate::storage::consumers::{self, Consumer, ConsumerFilter, NewConsumer};
use crate::storage::refs::Refs;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ConsumerQuery {
    pub tenant: Option<i64>,
    /// Linked to this site (exactly; not its sub-sites).
    pub site: Option<i64>,
    pub life_support: Option<bool>,
    pub social_object: Option<bool>,
    pub account_number: Option<String>,
    /// E.164 phone number.
    pub phone: Option<String>,
    /// Part of the name.
    pub q: Option<String>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/consumers", tag = "consumers", params(ConsumerQuery), responses((status = 200, body = Paged<Consumer>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<ConsumerQuery>,
) -> Result<Json<Paged<Consumer>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = ConsumerFilter {
        tenant_id: user.scope(q.tenant)?,
        site_id: q.site,
        life_support: q.life_support,
        social_object: q.social_object,
        account_number: q.account_number,
        phone: match q.phone {
            // An unescaped `+` in a query string arrives as a space.
            Some(p) => Some(
                crate::types::PhoneNumber::try_from(p.replacen(' ', "+", 1))
                    .map_err(|e| ApiError::field("phone", e))?
                    .as_str()
                    .to_owned(),
            ),
            None => None,
        },
        q: q.q,
    };
    let mut conn = s.db.conn().await?;
    let items = consumers::list(&mut conn, &filter, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

/// Creates a consumer, or updates the one with the same tenant and `external_id`.
#[utoipa::path(post, path = "/consumers", tag = "consumers", request_body = NewConsumer, responses((status = 200, body = Consumer)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewConsumer>,
) -> Result<Json<Consumer>, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let ids = consumers::upsert_many(
        &mut tx,
        &mut Refs::scoped(user.0.tenant_id),
        std::slice::from_ref(&new),
    )
    .await?;
    let c = consumers::get(&mut tx, ids.first().copied().unwrap_or_default()).await?;
    user.check_tenant(c.tenant_id, "tenant")?;
    commit_audited(tx, &user, "upsert", "consumer", c.id, &c).await?;
    Ok(Json(c))
}

#[utoipa::path(get, path = "/consumers/{id}", tag = "consumers", responses((status = 200, body = Consumer), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Consumer>, ApiError> {
    let mut conn = s.db.conn().await?;
    let c = consumers::get(&mut conn, id).await?;
    user.check_tenant(c.tenant_id, &format!("consumer {id}"))?;
    Ok(Json(c))
}

#[utoipa::path(delete, path = "/consumers/{id}", tag = "consumers", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.begin().await?;
    let c = consumers::get(&mut tx, id).await?;
    user.check_tenant(c.tenant_id, &format!("consumer {id}"))?;
    consumers::delete(&mut tx, id).await?;
    commit_audited(tx, &user, "delete", "consumer", id, &c).await?;
    Ok(StatusCode::NO_CONTENT)
}
