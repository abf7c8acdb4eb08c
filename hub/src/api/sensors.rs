//! `/sensors`: sensors, their last values and reading history.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged, commit_audited};
use crate::actions;
use crate::auth::Permission;
use crate::names::SensorKind;
use crate::storage::refs::Refs;
use crate::storage::sensors::{self, NewSensor, Reading, Sensor, SensorFilter};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(get_one, delete))
        .routes(routes!(readings, add_reading))
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
    let mut tx = s.db.begin().await?;
    let sensor = sensors::upsert(&mut tx, &mut Refs::scoped(user.0.tenant_id), &new).await?;
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
    let mut tx = s.db.begin().await?;
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

/// A reading pushed over HTTP (for sensors and systems that cannot speak MQTT or Modbus).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewReading {
    /// The value in the sensor's unit.
    pub value: f64,
    /// When it was measured; now by default.
    #[serde(default)]
    pub at: Option<DateTime<Utc>>,
}

/// Records a reading: stored, then published on the bus; answered once persisted.
#[utoipa::path(post, path = "/sensors/{id}/readings", tag = "sensors", request_body = NewReading, responses((status = 204)))]
async fn add_reading(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<String>,
    ApiJson(r): ApiJson<NewReading>,
) -> Result<StatusCode, ApiError> {
    user.require(Permission::ManageModel)?;
    if !r.value.is_finite() {
        return Err(ApiError::field("value", "must be a finite number"));
    }
    let at = r.at.unwrap_or_else(Utc::now);
    if at > Utc::now() + Duration::minutes(5) {
        return Err(ApiError::field("at", "is in the future"));
    }
    let sensor = {
        let mut conn = s.db.conn().await?;
        find(&mut conn, &id).await?
    };
    user.check_tenant(sensor.tenant_id, &format!("sensor {id}"))?;
    actions::record_reading(&s, "api", &sensor, at, r.value).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use crate::names::Role;

    fn req(method: &str, uri: &str, token: &str, body: Option<serde_json::Value>) -> Request<Body> {
        let b = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {token}"));
        match body {
            Some(v) => b
                .header("content-type", "application/json")
                .body(Body::from(v.to_string()))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        }
    }

    async fn call(
        app: &axum::Router,
        method: &str,
        uri: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> axum::response::Response {
        app.clone()
            .oneshot(req(method, uri, token, body))
            .await
            .unwrap()
    }

    async fn json(res: axum::response::Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_reading_is_stored_then_published() {
        let (app, state, token, _d) = super::super::test_app(Role::Engineer).await;
        let mut conn = state.db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut conn, &t)
            .await
            .unwrap();
        drop(conn);
        let sensor = serde_json::json!({"tenant": "t", "external_id": "hp1.p", "kind": "pressure", "unit": "bar"});
        let res = call(&app, "POST", "/api/v1/sensors", &token, Some(sensor)).await;
        assert_eq!(res.status(), StatusCode::OK);

        let mut sub = state.bus.subscribe("test");
        let res = call(
            &app,
            "POST",
            "/api/v1/sensors/hp1.p/readings",
            &token,
            Some(serde_json::json!({"value": 4.5})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let event = sub.recv().await.unwrap();
        assert_eq!(
            event.kind,
            rules::EventKind::Reading {
                sensor: "hp1.p".into(),
                value: 4.5
            }
        );

        let res = call(&app, "GET", "/api/v1/sensors/hp1.p", &token, None).await;
        assert_eq!(json(res).await["last_value"], 4.5);
        let res = call(&app, "GET", "/api/v1/sensors/hp1.p/readings", &token, None).await;
        assert_eq!(json(res).await.as_array().unwrap().len(), 1);

        let res = call(
            &app,
            "POST",
            "/api/v1/sensors/hp1.p/readings",
            &token,
            Some(serde_json::json!({"value": "high"})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(json(res).await["errors"][0]["field"], "value");
        let res = call(
            &app,
            "POST",
            "/api/v1/sensors/nope/readings",
            &token,
            Some(serde_json::json!({"value": 1})),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let res = call(&app, "GET", "/api/v1/sensors", "wrong", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}
