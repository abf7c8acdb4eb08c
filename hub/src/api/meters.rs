//! `/meters` and `/meter-readings`: consumers' meters (created here or by the demo data) and the
//! readings the IVR's meter-readings robot took, each linked to its call. A tenant-bound user sees
//! their tenant's only.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::storage::meters::{self, Meter, MeterReading, NewMeter, ReadingFilter};
use crate::storage::{audit, refs::Refs};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, upsert))
        .routes(routes!(readings))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MeterQuery {
    /// The consumer's personal account number.
    pub account: Option<String>,
    pub tenant: Option<i64>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

/// Meters, in id order.
#[utoipa::path(get, path = "/meters", tag = "meters", params(MeterQuery), responses((status = 200, body = Paged<Meter>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<MeterQuery>,
) -> Result<Json<Paged<Meter>>, ApiError> {
    user.require(Permission::Read)?;
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    let items = meters::list(&mut conn, tenant, q.account.as_deref(), page).await?;
    Ok(Json(Paged::new(items, page, |m| m.id)))
}

/// Creates a meter of a consumer, or updates the one with this serial.
#[utoipa::path(post, path = "/meters", tag = "meters", request_body = NewMeter, responses((status = 200, body = Meter)))]
async fn upsert(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(new): ApiJson<NewMeter>,
) -> Result<Json<Meter>, ApiError> {
    user.require(Permission::ManageModel)?;
    let mut tx =
        s.db.pool
            .begin()
            .await
            .map_err(crate::storage::StorageError::from)?;
    let meter = meters::upsert(&mut tx, &mut Refs::scoped(user.0.tenant_id), &new).await?;
    audit::record(
        &mut tx,
        user.name(),
        "upsert",
        "meter",
        &meter.id.to_string(),
        serde_json::json!({"serial": meter.serial, "kind": meter.kind, "consumer": new.consumer.as_str()}),
    )
    .await?;
    tx.commit()
        .await
        .map_err(crate::storage::StorageError::from)?;
    Ok(Json(meter))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadingQuery {
    /// The consumer's personal account number.
    pub account: Option<String>,
    /// The meter's id.
    pub meter: Option<i64>,
    /// Readings taken at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Readings given in this call (its id in `/calls`).
    pub call: Option<i64>,
    pub tenant: Option<i64>,
    pub limit: Option<i64>,
    /// Readings older than this id (the `next_after` of the previous page).
    pub after: Option<i64>,
}

/// Meter readings, newest first.
#[utoipa::path(get, path = "/meter-readings", tag = "meters", params(ReadingQuery), responses((status = 200, body = Paged<MeterReading>)))]
async fn readings(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<ReadingQuery>,
) -> Result<Json<Paged<MeterReading>>, ApiError> {
    user.require(Permission::Read)?;
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = ReadingFilter {
        tenant_id: user.scope(q.tenant)?,
        account: q.account,
        meter_id: q.meter,
        since: q.since,
        call_id: q.call,
    };
    let mut conn = s.db.conn().await?;
    let items = meters::readings(&mut conn, &filter, page).await?;
    Ok(Json(Paged::new(items, page, |r| r.id)))
}

#[cfg(test)]
mod tests {
    use crate::api::test_app;
    use crate::names::Role;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn meters_are_created_by_engineers_and_read_by_viewers() {
        let (app, state, token, _d) = test_app(Role::Engineer).await;
        let mut c = state.db.conn().await.unwrap();
        let t = serde_json::from_value(
            serde_json::json!({"external_id": "t", "name": "T", "kind": "supplier"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut c, &t).await.unwrap();
        let consumer = serde_json::from_value(serde_json::json!({
            "tenant": "t", "external_id": "c1", "kind": "resident", "name": "Ivanova",
            "account_number": "5102"
        }))
        .unwrap();
        crate::storage::consumers::upsert_many(
            &mut c,
            &mut crate::storage::refs::Refs::new(),
            &[consumer],
        )
        .await
        .unwrap();
        let call = |method: &str, path: &str, body: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_owned()))
                .unwrap()
        };
        let res = app
            .clone()
            .oneshot(call(
                "POST",
                "/api/v1/meters",
                r#"{"tenant": "t", "consumer": "c1", "kind": "hot_water", "serial": "HW-1", "last_value": 10}"#,
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app
            .clone()
            .oneshot(call(
                "POST",
                "/api/v1/meters",
                r#"{"tenant": "t", "consumer": "nobody", "kind": "hot_water", "serial": "HW-2"}"#,
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let res = app
            .clone()
            .oneshot(call("GET", "/api/v1/meters?account=5102", ""))
            .await
            .unwrap();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["items"][0]["serial"], "HW-1", "{v}");
        let res = app
            .clone()
            .oneshot(call("GET", "/api/v1/meter-readings?since=yesterday", ""))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let res = app
            .oneshot(call("GET", "/api/v1/meter-readings?account=5102", ""))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
