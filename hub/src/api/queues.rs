//! Call queues through the API: the 5-minute answer report (decree No. 331) by tenant and day.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiError, ApiQuery, AppState, CurrentUser};
use crate::telephony::answer_times::{self, AnswerDay, THRESHOLD_S};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(answer_report))
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    #[default]
    Json,
    Csv,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AnswerQuery {
    /// Start of the period (RFC 3339); 30 days before `to` by default.
    pub from: Option<DateTime<Utc>>,
    /// End of the period (RFC 3339, excluded); now by default.
    pub to: Option<DateTime<Utc>>,
    /// Seconds within which an answer counts as in time; 300 (the 5-minute rule) by default.
    pub threshold_s: Option<i64>,
    /// `json` (default) or `csv`.
    pub format: Option<ReportFormat>,
    pub tenant: Option<i64>,
}

/// How fast operators answered queued callers, per tenant and local day: offered, answered, answered
/// within the threshold (5 minutes by default), abandoned, callbacks, the service level with and
/// without abandoned calls, mean and longest wait.
#[utoipa::path(get, path = "/reports/answer-times", tag = "calls", params(AnswerQuery),
    responses((status = 200, body = Vec<AnswerDay>), (status = 200, content_type = "text/csv")))]
async fn answer_report(
    State(s): State<AppState>,
    user: CurrentUser,
    ApiQuery(q): ApiQuery<AnswerQuery>,
) -> Result<Response, ApiError> {
    let (from, to) = super::report_period(q.from, q.to)?;
    let threshold = q.threshold_s.unwrap_or(THRESHOLD_S);
    if !(1..=86_400).contains(&threshold) {
        return Err(ApiError::field("threshold_s", "must be 1 to 86400 seconds"));
    }
    let tenant = user.scope(q.tenant)?;
    let mut conn = s.db.conn().await?;
    let calls = answer_times::queued_calls(&mut conn, from, to, tenant).await?;
    let days = answer_times::aggregate(&calls, threshold);
    match q.format.unwrap_or_default() {
        ReportFormat::Json => Ok(Json(days).into_response()),
        ReportFormat::Csv => Ok(super::csv_download(
            "answer-times.csv",
            answer_times::to_csv(&days),
        )),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use serde_json::{Value, json};

    use crate::names::Role;

    async fn get(app: &axum::Router, token: &str, uri: &str) -> (StatusCode, String) {
        crate::api::test_call(app, token, "GET", uri, None).await
    }

    #[tokio::test]
    async fn the_answer_report_adds_up_the_queued_calls() {
        let (app, state, token, _dir) = crate::api::test_app(Role::Viewer).await;
        let mut conn = state.db.conn().await.unwrap();
        let t = serde_json::from_value(
            json!({"external_id": "t1", "name": "T", "kind": "supplier", "time_zone": "UTC"}),
        )
        .unwrap();
        crate::storage::tenants::upsert(&mut conn, &t)
            .await
            .unwrap();
        let base = 1_736_931_600_000i64; // 2025-01-15T09:00:00Z
        // Waited 60 s, waited 400 s, gave up with a callback ticket, never queued.
        for (i, (queued, connected, ticket)) in [
            (Some(base), Some(base + 60_000), None),
            (Some(base + 1000), Some(base + 401_000), None),
            (Some(base + 2000), None, Some(5i64)),
            (None, None, None),
        ]
        .into_iter()
        .enumerate()
        {
            sqlx::query(
                "INSERT INTO calls (sip_call_id, direction, from_number, to_number, tenant_id,
                                    started_at, outcome, queued_at, connected_at, callback_ticket)
                 VALUES ($1, 'inbound', '+7', 'ivr', (SELECT id FROM tenants), $2, 'answered', $3, $4, $5)",
            )
            .bind(format!("c{i}"))
            .bind(base)
            .bind(queued)
            .bind(connected)
            .bind(ticket)
            .execute(&mut *conn)
            .await
            .unwrap();
        }
        let (status, body) = get(
            &app,
            &token,
            "/api/v1/reports/answer-times?from=2025-01-15T00:00:00Z&to=2025-01-16T00:00:00Z",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let days: Value = serde_json::from_str(&body).unwrap();
        let d = &days[0];
        assert_eq!(
            (
                &d["tenant"],
                &d["date"],
                &d["offered"],
                &d["answered"],
                &d["answered_within"],
                &d["abandoned"],
                &d["callbacks"]
            ),
            (
                &json!("t1"),
                &json!("2025-01-15"),
                &json!(3),
                &json!(2),
                &json!(1),
                &json!(1),
                &json!(1)
            ),
            "{days:#}"
        );
        assert_eq!(d["service_level"], 0.5);
        let (status, csv) = get(
            &app,
            &token,
            "/api/v1/reports/answer-times?from=2025-01-15T00:00:00Z&to=2025-01-16T00:00:00Z&format=csv",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(csv.starts_with("tenant,date,offered"), "{csv}");
        let (status, body) = get(
            &app,
            &token,
            "/api/v1/reports/answer-times?from=2025-01-16T00:00:00Z&to=2025-01-15T00:00:00Z",
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains("from"), "{body}");
    }
}
