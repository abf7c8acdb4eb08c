//! `/sensors`: sensors, their last values and reading history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::auth::Permission;
use crate::names::SensorKind;
use crate::storage::refs::Refs;
use crate::storage::sensors::{self, NewSensor, Reading, Sensor, SensorFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
        .routes(routes!(readings))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SensorQuery {
    pub tenant: Option<i64>,
    pub kind: Option<SensorKind>,
    pub site: Option<i64>,
    pub supply_point: Option<i64>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

#[utoipa::path(get, path = "/sensors", tag = "sensors", params(SensorQuery), responses((status = 200, body = Paged<Sensor>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<SensorQuery>,
) -> Result<Json<Paged<Sensor>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = SensorFilter {
        tenant_id: user.scope(q.tenant)?,
        kind: q.kind,
        site_id: q.site,
        supply_point_id: q.supply_point,
    };
    let mut conn = s.db.conn().await?;
    let items = sensors::list(&mut conn, &filter, page).await?;
    Ok(Json(Paged::new(items, page, |x| x.id)))
}

/// Creates a sensor or updates the one with the same `external_id`.
#[utoipa::path(post, path = "/sensors", tag = "sensors", request_body = NewSensor, responses((status = 200, body = Sensor)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewSensor>,
) -> Result<Json<Sensor>, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.pool.begin().await?;
    let sensor = sensors::upsert(&mut tx, &mut Refs::new(), &new).await?;
    user.check_tenant(sensor.tenant_id, "tenant")?;
    commit_audited(tx, &user, "upsert", "sensor", sensor.id, &sensor).await?;
    Ok(Json(sensor))
}

/// A sensor by numeric id or by its external id (`/sensors/hp-1.p_supply`).
#[utoipa::path(get, path = "/sensors/{id}", tag = "sensors", responses((status = 200, body = Sensor), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Sensor>, ApiError> {
    let mut conn = s.db.conn().await?;
    let sensor = find(&mut conn, &id).await?;
    user.check_tenant(sensor.tenant_id, &format!("sensor {id}"))?;
    Ok(Json(sensor))
}

async fn find(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Sensor, ApiError> {
    Ok(match id.parse::<i64>() {
        Ok(n) => sensors::get(conn, n).await?,
        Err(_) => sensors::by_external(conn, id).await?,
    })
}

#[utoipa::path(delete, path = "/sensors/{id}", tag = "sensors", responses((status = 204)))]
async fn delete(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx = s.db.pool.begin().await?;
    let sensor = find(&mut tx, &id).await?;
    user.check_tenant(sensor.tenant_id, &format!("sensor {id}"))?;
    sensors::delete(&mut tx, sensor.id).await?;
    commit_audited(tx, &user, "delete", "sensor", sensor.id, &sensor).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadingsQuery {
    /// Start (RFC 3339); 24 hours before `to` by default.
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339); now by default.
    pub to: Option<DateTime<Utc>>,
    /// At most this many readings (1-10000, 1000 by default).
    pub limit: Option<i64>,
}

/// Reading history of a sensor, oldest first.
#[utoipa::path(get, path = "/sensors/{id}/readings", tag = "sensors", params(ReadingsQuery), responses((status = 200, body = Vec<Reading>)))]
async fn readings(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ReadingsQuery>,
) -> Result<Json<Vec<Reading>>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::field("limit", "between 1 and 10000"));
    }
    let to = q.to.unwrap_or_else(Utc::now);
    let from = q.from.unwrap_or(to - Duration::hours(24));
    if from >= to {
        return Err(ApiError::field("from", "must be before to"));
    }
    let mut conn = s.db.conn().await?;
    let sensor = find(&mut conn, &id).await?;
    user.check_tenant(sensor.tenant_id, &format!("sensor {id}"))?;
    Ok(Json(
        sensors::history(&mut conn, sensor.id, from, to, limit).await?,
    ))
}
