//! `/calls`: the record of every call the telephony core handled (who, when, how it ended, the digits
//! pressed). Written by the telephony recorder; read here. A tenant-bound user sees the calls of
//! recognized callers of their tenant only.

use axum::Json;
use axum::extract::{Path, State};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::telephony::store::{self, CallRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(get_one))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CallQuery {
    /// Tenant id (of the recognized caller).
    pub tenant: Option<i64>,
    pub limit: Option<i64>,
    /// Calls older than this id (the `next_after` of the previous page).
    pub after: Option<i64>,
}

/// Calls, newest first.
#[utoipa::path(get, path = "/calls", tag = "calls", params(CallQuery), responses((status = 200, body = Paged<CallRecord>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<CallQuery>,
) -> Result<Json<Paged<CallRecord>>, ApiError> {
    user.require(Permission::Read)?;
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    let items = store::list(&mut conn, tenant, page).await?;
    Ok(Json(Paged::new(items, page, |c| c.id)))
}

#[utoipa::path(get, path = "/calls/{id}", tag = "calls", responses((status = 200, body = CallRecord), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<CallRecord>, ApiError> {
    user.require(Permission::Read)?;
    let mut conn = s.db.conn().await?;
    let call = store::get(&mut conn, id).await?;
    match (call.tenant_id, user.0.tenant_id) {
        (Some(t), _) => user.check_tenant(t, &format!("call {id}"))?,
        // An unrecognized caller belongs to no tenant: only users of all tenants see the call.
        (None, Some(_)) => return Err(ApiError::NotFound(format!("call {id} not found"))),
        (None, None) => {}
    }
    Ok(Json(call))
}

#[cfg(test)]
mod tests {
    use crate::api::test_app;
    use crate::names::Role;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    #[tokio::test]
    async fn calls_are_listed_newest_first_and_scoped() {
        let (app, state, token, _d) = test_app(Role::Operator).await;
        let mut c = state.db.conn().await.unwrap();
        let a = crate::telephony::store::insert(&mut c, "a@x", "+79160000001", "ivr", 1)
            .await
            .unwrap();
        let b = crate::telephony::store::insert(&mut c, "b@x", "+79160000002", "ivr", 2)
            .await
            .unwrap();
        crate::telephony::store::ended(&mut c, b, 3, "cancelled", "", None)
            .await
            .unwrap();
        let get = |path: String| {
            Request::get(path)
                .header("authorization", format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap()
        };
        let res = app
            .clone()
            .oneshot(get("/api/v1/calls".into()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<i64> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![b, a]);
        assert_eq!(v["items"][0]["outcome"], "cancelled");
        let res = app
            .clone()
            .oneshot(get(format!("/api/v1/calls/{a}")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app.oneshot(get("/api/v1/calls/9999".into())).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
