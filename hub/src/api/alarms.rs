//! `/alarms`, `/notifications` and `/incidents`: dispatchers list, raise, acknowledge, shelve and clear
//! alarms through `crate::alarms` (the same layer rules use), see the staff notification outbox, and
//! export the incident log (every alarm and outage with its acknowledgement and duration).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiJson, ApiQuery, AppState, CurrentUser, Page, Paged};
use crate::alarms::{self, AlarmRef, AlarmSpec, MAX_SHELVE_MINUTES};
use crate::auth::Permission;
use crate::storage::alarms::{
    self as store, Alarm, AlarmFilter, AlarmSeverity, HistoryEntry, Notification, StateFilter,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, raise))
        .routes(routes!(get_one))
        .routes(routes!(acknowledge))
        .routes(routes!(clear))
        .routes(routes!(shelve))
        .routes(routes!(notifications))
        .routes(routes!(incidents))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AlarmQuery {
    /// `active` (not shelved), `acknowledged`, `cleared`, `open` (not cleared) or `shelved`.
    pub state: Option<StateFilter>,
    pub severity: Option<AlarmSeverity>,
    pub tenant: Option<i64>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

/// Alarms, oldest first (keyset paging by id).
#[utoipa::path(get, path = "/alarms", tag = "alarms", params(AlarmQuery), responses((status = 200, body = Paged<Alarm>)))]
async fn list(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<AlarmQuery>,
) -> Result<Json<Paged<Alarm>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let filter = AlarmFilter {
        state: q.state,
        severity: q.severity,
        tenant_id: user.scope(q.tenant)?,
    };
    let mut conn = s.db.conn().await?;
    let items = store::list(&mut conn, &filter, page, Utc::now()).await?;
    Ok(Json(Paged::new(items, page, |a| a.id)))
}

/// A dispatcher raises an alarm by hand; the same key while it is not cleared repeats it.
#[utoipa::path(post, path = "/alarms", tag = "alarms", request_body = AlarmSpec, responses((status = 200, body = Alarm), (status = 422, body = super::Problem)))]
async fn raise(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiJson(spec): ApiJson<AlarmSpec>,
) -> Result<Json<Alarm>, ApiError> {
    user.require(Permission::HandleAlarms)?;
    let (alarm, _) = alarms::raise_scoped(&s, user.name(), user.0.tenant_id, &spec).await?;
    Ok(Json(alarm))
}

/// An alarm with every change it went through.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlarmDetail {
    #[serde(flatten)]
    pub alarm: Alarm,
    pub history: Vec<HistoryEntry>,
    /// Notifications its escalation queued.
    pub notifications: Vec<Notification>,
}

/// A record without a tenant, or of another tenant, is "not found" for a tenant-bound user.
fn check_tenant(user: &CurrentUser, alarm: &Alarm) -> Result<(), ApiError> {
    match (user.0.tenant_id, alarm.tenant_id) {
        (Some(own), t) if t != Some(own) => {
            Err(ApiError::NotFound(format!("alarm {} not found", alarm.id)))
        }
        _ => Ok(()),
    }
}

async fn visible_alarm(s: &AppState, user: &CurrentUser, id: i64) -> Result<Alarm, ApiError> {
    let mut conn = s.db.conn().await?;
    let alarm = store::get(&mut conn, id).await?;
    check_tenant(user, &alarm)?;
    Ok(alarm)
}

#[utoipa::path(get, path = "/alarms/{id}", tag = "alarms", responses((status = 200, body = AlarmDetail), (status = 404, body = super::Problem)))]
async fn get_one(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<AlarmDetail>, ApiError> {
    let alarm = visible_alarm(&s, &user, id).await?;
    let mut conn = s.db.conn().await?;
    let history = store::history(&mut conn, id).await?;
    let notifications = store::notifications(
        &mut conn,
        None,
        Some(id),
        crate::storage::PageRequest {
            after: 0,
            limit: 1000,
        },
    )
    .await?;
    Ok(Json(AlarmDetail {
        alarm,
        history,
        notifications,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Comment {
    /// What the dispatcher did or found.
    #[serde(default)]
    pub comment: String,
}

/// Takes the alarm in hand (who, when, comment); its escalation stops.
#[utoipa::path(post, path = "/alarms/{id}/acknowledge", tag = "alarms", request_body = Comment, responses((status = 200, body = Alarm), (status = 422, body = super::Problem)))]
async fn acknowledge(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<Comment>,
) -> Result<Json<Alarm>, ApiError> {
    user.require(Permission::HandleAlarms)?;
    visible_alarm(&s, &user, id).await?;
    Ok(Json(
        alarms::acknowledge(&s, user.name(), id, &body.comment).await?,
    ))
}

/// Clears the alarm; the alarms it inhibited are released.
#[utoipa::path(post, path = "/alarms/{id}/clear", tag = "alarms", request_body = Comment, responses((status = 200, body = Alarm), (status = 422, body = super::Problem)))]
async fn clear(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<Comment>,
) -> Result<Json<Alarm>, ApiError> {
    user.require(Permission::HandleAlarms)?;
    visible_alarm(&s, &user, id).await?;
    let alarm = alarms::clear(&s, user.name(), AlarmRef::Id(id), Some(&body.comment))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("alarm {id} not found")))?;
    Ok(Json(alarm))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Shelve {
    /// How long to shelve, 1 to 10080 minutes (a week).
    pub minutes: u32,
    #[serde(default)]
    pub comment: String,
}

/// Hides the alarm from the active list for a while; it does not escalate meanwhile.
#[utoipa::path(post, path = "/alarms/{id}/shelve", tag = "alarms", request_body = Shelve, responses((status = 200, body = Alarm), (status = 422, body = super::Problem)))]
async fn shelve(
    State(s): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<Shelve>,
) -> Result<Json<Alarm>, ApiError> {
    user.require(Permission::HandleAlarms)?;
    if !(1..=MAX_SHELVE_MINUTES).contains(&body.minutes) {
        return Err(ApiError::field(
            "minutes",
            format!("between 1 and {MAX_SHELVE_MINUTES}"),
        ));
    }
    visible_alarm(&s, &user, id).await?;
    let until = Utc::now() + chrono::Duration::minutes(i64::from(body.minutes));
    Ok(Json(
        alarms::shelve(&s, user.name(), id, until, &body.comment).await?,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct NotificationQuery {
    /// Only the notifications of this alarm.
    pub alarm: Option<i64>,
    pub tenant: Option<i64>,
    pub limit: Option<i64>,
    pub after: Option<i64>,
}

/// The outbox of staff notifications (escalations, rules' `notify_staff`), oldest first.
#[utoipa::path(get, path = "/notifications", tag = "alarms", params(NotificationQuery), responses((status = 200, body = Paged<Notification>)))]
async fn notifications(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<NotificationQuery>,
) -> Result<Json<Paged<Notification>>, ApiError> {
    let page = Page {
        limit: q.limit,
        after: q.after,
    }
    .request()?;
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    let items = store::notifications(&mut conn, tenant, q.alarm, page).await?;
    Ok(Json(Paged::new(items, page, |n| n.id)))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IncidentFormat {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct IncidentQuery {
    /// Start of the period (RFC 3339); 30 days before `to` by default.
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339, excluded); now by default.
    pub to: Option<DateTime<Utc>>,
    /// `json` (default) or `csv`.
    pub format: Option<IncidentFormat>,
    pub tenant: Option<i64>,
}

/// One line of the incident log: an alarm or an outage that was open at some time in the period.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Incident {
    /// `alarm` or `outage`.
    pub kind: String,
    pub id: i64,
    pub tenant: Option<String>,
    /// The alarm's severity, or the outage's kind (`planned`, `emergency`).
    pub severity: String,
    /// The alarm's key, or the outage's external id.
    pub key: Option<String>,
    /// The alarm's message, or the outage's utility and reason.
    pub description: String,
    /// Supply point, sensor or site (external ids).
    pub location: String,
    pub started_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub acknowledgement_comment: Option<String>,
    pub ended_at: Option<DateTime<Utc>>,
    pub ended_by: Option<String>,
    pub end_reason: Option<String>,
    /// From start to end; empty while it is still open.
    pub duration_seconds: Option<i64>,
}

/// The columns of the CSV incident log, in order.
pub const INCIDENT_COLUMNS: [&str; 15] = [
    "kind",
    "id",
    "tenant",
    "severity",
    "key",
    "description",
    "location",
    "started_at",
    "acknowledged_at",
    "acknowledged_by",
    "acknowledgement_comment",
    "ended_at",
    "ended_by",
    "end_reason",
    "duration_seconds",
];

/// The incident log of a period: every alarm and outage open in it, with start, acknowledgement, end
/// and duration, as JSON or CSV (what a supplier shows a regulator).
#[utoipa::path(get, path = "/incidents", tag = "alarms", params(IncidentQuery), responses((status = 200, body = Vec<Incident>), (status = 200, content_type = "text/csv")))]
async fn incidents(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<IncidentQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = super::report_period(q.from, q.to)?;
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    let log = incident_log(&mut conn, from, to, tenant).await?;
    match q.format.unwrap_or_default() {
        IncidentFormat::Json => Ok(Json(log).into_response()),
        IncidentFormat::Csv => {
            let body = to_csv(&log).map_err(|e| ApiError::Internal(format!("csv: {e}")))?;
            Ok(super::csv_download("incidents.csv", body))
        }
    }
}

/// Alarms and outages open at some time in `[from, to)`, by start time.
pub async fn incident_log(
    conn: &mut sqlx::AnyConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant: Option<i64>,
) -> Result<Vec<Incident>, crate::storage::StorageError> {
    let mut out: Vec<Incident> = store::between(conn, from, to, tenant)
        .await?
        .into_iter()
        .map(|a| Incident {
            kind: "alarm".into(),
            id: a.id,
            tenant: a.tenant,
            severity: a.severity.as_str().into(),
            key: Some(a.key),
            description: a.message,
            location: [a.supply_point, a.sensor, a.site]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" "),
            started_at: a.raised_at,
            acknowledged_at: a.acknowledged_at,
            acknowledged_by: a.acknowledged_by,
            acknowledgement_comment: a.ack_comment,
            ended_at: a.cleared_at,
            ended_by: a.cleared_by,
            end_reason: a.clear_reason,
            duration_seconds: a.cleared_at.map(|e| (e - a.raised_at).num_seconds()),
        })
        .collect();
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM outages WHERE starts_at < $1 AND (actual_end IS NULL OR actual_end >= $2)
           AND status <> 'cancelled' AND ($3 IS NULL OR tenant_id = $3) ORDER BY starts_at, id",
    )
    .bind(crate::storage::to_ms(to))
    .bind(crate::storage::to_ms(from))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let mut tenants: HashMap<i64, String> = HashMap::new();
    for (id,) in ids {
        let o = crate::storage::outages::get(conn, id).await?;
        if let std::collections::hash_map::Entry::Vacant(e) = tenants.entry(o.tenant_id) {
            e.insert(
                crate::storage::tenants::get(conn, o.tenant_id)
                    .await?
                    .external_id,
            );
        }
        let location = match o.supply_point_id {
            Some(p) => crate::storage::network::get(conn, p).await?.external_id,
            None => format!("{} sites", o.sites.len()),
        };
        out.push(Incident {
            kind: "outage".into(),
            id: o.id,
            tenant: tenants.get(&o.tenant_id).cloned(),
            severity: o.kind.as_str().into(),
            key: o.external_id.clone(),
            description: format!("{}: {}", o.utility, o.reason),
            location,
            started_at: o.starts_at,
            acknowledged_at: None,
            acknowledged_by: None,
            acknowledgement_comment: None,
            ended_at: o.actual_end,
            ended_by: None,
            end_reason: None,
            duration_seconds: o.actual_end.map(|e| (e - o.starts_at).num_seconds()),
        });
    }
    out.sort_by_key(|i| (i.started_at, i.kind.clone(), i.id));
    Ok(out)
}

fn to_csv(log: &[Incident]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(INCIDENT_COLUMNS)?;
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    for i in log {
        w.write_record([
            i.kind.clone(),
            i.id.to_string(),
            i.tenant.clone().unwrap_or_default(),
            i.severity.clone(),
            i.key.clone().unwrap_or_default(),
            i.description.clone(),
            i.location.clone(),
            i.started_at.to_rfc3339(),
            time(i.acknowledged_at),
            i.acknowledged_by.clone().unwrap_or_default(),
            i.acknowledgement_comment.clone().unwrap_or_default(),
            time(i.ended_at),
            i.ended_by.clone().unwrap_or_default(),
            i.end_reason.clone().unwrap_or_default(),
            i.duration_seconds
                .map(|d| d.to_string())
                .unwrap_or_default(),
        ])?;
    }
    w.into_inner().map_err(|e| e.into_error().into())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use crate::names::Role;

    use crate::api::test_call as call;

    async fn with_tenant(state: &crate::api::AppState) {
        let t =
            serde_json::from_value(json!({"external_id": "t1", "name": "T", "kind": "supplier"}))
                .unwrap();
        crate::storage::tenants::upsert(&mut state.db.conn().await.unwrap(), &t)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_dispatcher_raises_acknowledges_and_the_log_shows_it() {
        let (app, state, token, _d) = crate::api::test_app(Role::Dispatcher).await;
        with_tenant(&state).await;
        let raise = json!({"key": "manual:1", "severity": "major", "message": "smell of gas", "tenant": "t1"});
        let (status, body) = call(&app, &token, "POST", "/api/v1/alarms", Some(raise)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let alarm: Value = serde_json::from_str(&body).unwrap();
        let id = alarm["id"].as_i64().unwrap();
        assert_eq!(
            (alarm["state"].as_str(), alarm["count"].as_i64()),
            (Some("active"), Some(1))
        );

        let (status, body) = call(&app, &token, "GET", "/api/v1/alarms?state=active", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("smell of gas"), "{body}");

        let ack = json!({"comment": "crew 3 sent"});
        let uri = format!("/api/v1/alarms/{id}/acknowledge");
        let (status, body) = call(&app, &token, "POST", &uri, Some(ack.clone())).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&app, &token, "POST", &uri, Some(ack)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("\"field\":\"state\""), "{body}");

        let (_, body) = call(&app, &token, "GET", &format!("/api/v1/alarms/{id}"), None).await;
        let detail: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(detail["acknowledged_by"], "u");
        assert_eq!(detail["ack_comment"], "crew 3 sent");
        assert_eq!(detail["history"][1]["action"], "acknowledged");

        let (status, _) = call(
            &app,
            &token,
            "POST",
            &format!("/api/v1/alarms/{id}/clear"),
            Some(json!({"comment": "aired"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, csv) = call(&app, &token, "GET", "/api/v1/incidents?format=csv", None).await;
        assert_eq!(status, StatusCode::OK);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next(),
            Some(super::INCIDENT_COLUMNS.join(",").as_str())
        );
        let row = lines.next().unwrap();
        assert!(
            row.starts_with(&format!("alarm,{id},t1,major,manual:1,smell of gas,")),
            "{row}"
        );
        assert!(
            row.contains(",u,crew 3 sent,") && row.contains(",u,aired,"),
            "{row}"
        );
    }

    #[tokio::test]
    async fn bad_requests_are_problems_and_viewers_may_only_read() {
        let (app, state, token, _d) = crate::api::test_app(Role::Dispatcher).await;
        with_tenant(&state).await;
        for (body, field) in [
            (
                json!({"key": "", "severity": "major", "message": "x"}),
                "key",
            ),
            (
                json!({"key": "k", "severity": "loud", "message": "x"}),
                "severity",
            ),
            (
                json!({"key": "k", "severity": "major", "message": "x", "tenant": "nope"}),
                "tenant",
            ),
            (
                json!({"key": "k", "severity": "major", "message": "x", "sensor": "nope"}),
                "sensor",
            ),
        ] {
            let (status, text) = call(&app, &token, "POST", "/api/v1/alarms", Some(body)).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
            assert!(text.contains(&format!("\"field\":\"{field}\"")), "{text}");
        }
        let (status, _) = call(
            &app,
            &token,
            "POST",
            "/api/v1/alarms/99/shelve",
            Some(json!({"minutes": 0})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = call(
            &app,
            &token,
            "POST",
            "/api/v1/alarms/99/acknowledge",
            Some(json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(&app, &token, "GET", "/api/v1/alarms?state=loud", None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        let (status, _) = call(
            &app,
            &token,
            "GET",
            "/api/v1/incidents?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            None,
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

        let (viewer_app, vstate, viewer, _d2) = crate::api::test_app(Role::Viewer).await;
        with_tenant(&vstate).await;
        let (status, _) = call(
            &viewer_app,
            &viewer,
            "POST",
            "/api/v1/alarms",
            Some(json!({"key": "k", "severity": "major", "message": "x"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = call(&viewer_app, &viewer, "GET", "/api/v1/notifications", None).await;
        assert_eq!(status, StatusCode::OK);
    }
}
