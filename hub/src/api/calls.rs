//! `/calls`: the record of every call the telephony core handled (who, when, how it ended, the digits
//! pressed). Written by the telephony recorder; read here. A tenant-bound user sees the calls of
//! recognized callers of their tenant only. `POST /calls` places an outbound call (admins and
//! dispatchers): it answers with the record's id at once; the outcome shows on the record when the
//! call is over.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::auth::Permission;
use crate::telephony::store::{self, CallRecord};
use crate::telephony::{OutboundCall, Playback, TelephonyError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, place))
        .routes(routes!(get_one))
}

impl From<TelephonyError> for ApiError {
    fn from(e: TelephonyError) -> Self {
        match e {
            TelephonyError::Invalid { field, reason } => ApiError::field(field, reason),
            TelephonyError::Storage(s) => s.into(),
            TelephonyError::LinesBusy { .. } => ApiError::Conflict(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// An outbound call to place.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCall {
    /// A phone number (through a trunk), `sip:user@host[:port]`, or `account:NAME` (a registered phone).
    pub to: String,
    /// What to say (spoken in `language`).
    pub text: String,
    /// Digits that confirm (e.g. `"1"`); the call reports the one pressed. Empty: none.
    #[serde(default)]
    pub confirm_digits: String,
    /// `callback` unless said.
    #[serde(default)]
    pub purpose: Option<String>,
    /// `ru` (default) or `en`.
    #[serde(default)]
    pub language: Option<String>,
    /// Times the text is said, 1-5 (default 2).
    #[serde(default)]
    pub repeat: Option<u32>,
    /// Seconds of ringing before giving up, 5-120 (default 30).
    #[serde(default)]
    pub ring_timeout_s: Option<u64>,
    /// Longest call in seconds, 10-600 (default 120).
    #[serde(default)]
    pub max_duration_s: Option<u64>,
    /// Trunk name (default: `[telephony] default_trunk`, else the first).
    #[serde(default)]
    pub trunk: Option<String>,
    /// Tenant external id the call is made for (a tenant-bound user's own tenant).
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlacedCallId {
    /// The call record: `GET /api/v1/calls/{id}` shows its outcome when it is over.
    pub id: i64,
}

fn within(field: &str, v: Option<u64>, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::field(field, format!("between {min} and {max}")))
    }
}

/// Places an outbound call (admins and dispatchers); 202 with the call record's id.
#[utoipa::path(post, path = "/calls", tag = "calls", request_body = NewCall,
    responses((status = 202, body = PlacedCallId), (status = 409, description = "all lines of the trunk busy", body = super::Problem), (status = 422, body = super::Problem)))]
async fn place(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<NewCall>,
) -> Result<(StatusCode, Json<PlacedCallId>), ApiError> {
    // Both: admins and dispatchers, not engineers or operators.
    user.require(Permission::HandleAlarms)?
        .require(Permission::HandleTickets)?;
    let phone = s.telephony.clone().ok_or_else(|| {
        ApiError::BadRequest("telephony is not enabled ([telephony] enabled)".into())
    })?;
    let tenant = match (user.0.tenant_id, body.tenant) {
        (Some(own), requested) => {
            let mut conn = s.db.conn().await?;
            let t = crate::storage::tenants::get(&mut conn, own).await?;
            if requested.is_some_and(|r| r != t.external_id) {
                return Err(ApiError::field("tenant", "not your tenant"));
            }
            Some(t.external_id)
        }
        (None, requested) => requested,
    };
    let mut call = OutboundCall::new(
        body.to,
        body.purpose.unwrap_or_else(|| "callback".into()),
        Playback::Text(body.text),
    );
    call.tenant = tenant;
    call.trunk = body.trunk;
    call.confirm_digits = body.confirm_digits;
    if let Some(l) = body.language {
        call.language = l;
    }
    call.repeat = within("repeat", body.repeat.map(u64::from), 2, 1, 5)? as u32;
    call.ring_timeout =
        Duration::from_secs(within("ring_timeout_s", body.ring_timeout_s, 30, 5, 120)?);
    call.max_duration =
        Duration::from_secs(within("max_duration_s", body.max_duration_s, 120, 10, 600)?);
    let audit = serde_json::json!({"to": call.to, "purpose": call.purpose, "confirm_digits": call.confirm_digits});
    let placed = phone.place(call).await?;
    let id = placed.id;
    let mut conn = s.db.conn().await?;
    crate::storage::audit::record(
        &mut conn,
        user.name(),
        "place_call",
        "call",
        &id.to_string(),
        audit,
    )
    .await?;
    // The call runs on in the core; its record carries the outcome.
    tokio::spawn(async move {
        let result = placed.finish().await;
        tracing::info!(id = result.id, outcome = ?result.outcome, "api call ended");
    });
    Ok((StatusCode::ACCEPTED, Json(PlacedCallId { id })))
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
