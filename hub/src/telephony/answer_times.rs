//! The 5-minute answer figures (RF Government decree No. 331 of 2018): for every call that waited in a
//! queue, how long until an operator answered, by tenant and local day. Computed from the call records
//! (`calls.queued_at`, `connected_at`, `outcome`, `callback_ticket`), so they add up with the CDRs.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use sqlx::AnyConnection;
use utoipa::ToSchema;

use crate::storage::{StorageError, from_ms, to_ms};

/// The legal threshold: an operator answers within 5 minutes.
pub const THRESHOLD_S: i64 = 300;

/// One tenant's day.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AnswerDay {
    pub tenant: String,
    /// The tenant's local date.
    pub date: NaiveDate,
    /// Calls that joined a queue.
    pub offered: u64,
    /// Of those, connected to an operator.
    pub answered: u64,
    /// Connected within `threshold_s` of joining the queue.
    pub answered_within: u64,
    /// Hung up (or timed out) in the queue before an operator answered.
    pub abandoned: u64,
    /// Abandoned callers given a callback ticket.
    pub callbacks: u64,
    /// answered_within / answered (the usual service level), 0..1; absent with no answered call.
    pub service_level: Option<f64>,
    /// answered_within / (answered + abandoned): abandoned callers count as not served in time.
    pub service_level_with_abandoned: Option<f64>,
    /// Mean and longest wait of answered calls, seconds.
    pub mean_wait_s: Option<f64>,
    pub max_wait_s: Option<f64>,
    pub threshold_s: i64,
}

/// A queued call as the report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCall {
    pub tenant: String,
    pub time_zone: String,
    pub queued_at: DateTime<Utc>,
    pub connected_at: Option<DateTime<Utc>>,
    pub callback_ticket: Option<i64>,
}

/// Days of each tenant, in tenant then date order.
pub fn aggregate(calls: &[QueuedCall], threshold_s: i64) -> Vec<AnswerDay> {
    #[derive(Default)]
    struct Acc {
        offered: u64,
        answered: u64,
        within: u64,
        abandoned: u64,
        callbacks: u64,
        wait_sum: f64,
        wait_max: f64,
    }
    let mut days: BTreeMap<(String, NaiveDate), Acc> = BTreeMap::new();
    for c in calls {
        let tz = Tz::from_str(&c.time_zone).unwrap_or(Tz::UTC);
        let date = c.queued_at.with_timezone(&tz).date_naive();
        let a = days.entry((c.tenant.clone(), date)).or_default();
        a.offered += 1;
        match c.connected_at {
            Some(at) => {
                let wait = (at - c.queued_at).num_milliseconds().max(0) as f64 / 1000.0;
                a.answered += 1;
                if wait <= threshold_s as f64 {
                    a.within += 1;
                }
                a.wait_sum += wait;
                a.wait_max = a.wait_max.max(wait);
            }
            None => {
                a.abandoned += 1;
                if c.callback_ticket.is_some() {
                    a.callbacks += 1;
                }
            }
        }
    }
    let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
    days.into_iter()
        .map(|((tenant, date), a)| AnswerDay {
            tenant,
            date,
            offered: a.offered,
            answered: a.answered,
            answered_within: a.within,
            abandoned: a.abandoned,
            callbacks: a.callbacks,
            service_level: ratio(a.within, a.answered),
            service_level_with_abandoned: ratio(a.within, a.answered + a.abandoned),
            mean_wait_s: (a.answered > 0).then(|| a.wait_sum / a.answered as f64),
            max_wait_s: (a.answered > 0).then_some(a.wait_max),
            threshold_s,
        })
        .collect()
}

type Row = (String, String, i64, Option<i64>, Option<i64>);

/// Queued calls that joined a queue in `[from, to)`, optionally of one tenant (by id).
pub async fn queued_calls(
    conn: &mut AnyConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant: Option<i64>,
) -> Result<Vec<QueuedCall>, StorageError> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.external_id, t.time_zone, c.queued_at, c.connected_at, c.callback_ticket
           FROM calls c JOIN tenants t ON t.id = c.tenant_id
          WHERE c.queued_at IS NOT NULL AND c.queued_at >= $1 AND c.queued_at < $2
            AND ($3 IS NULL OR t.id = $3)
          ORDER BY c.queued_at",
    )
    .bind(to_ms(from))
    .bind(to_ms(to))
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, time_zone, q, c, cb)| QueuedCall {
            tenant,
            time_zone,
            queued_at: from_ms(q),
            connected_at: c.map(from_ms),
            callback_ticket: cb,
        })
        .collect())
}

/// The report as CSV (one line per tenant and day).
pub fn to_csv(days: &[AnswerDay]) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_default();
    let _ = w.write_record([
        "tenant",
        "date",
        "offered",
        "answered",
        "answered_within",
        "abandoned",
        "callbacks",
        "service_level",
        "service_level_with_abandoned",
        "mean_wait_s",
        "max_wait_s",
        "threshold_s",
    ]);
    for d in days {
        let _ = w.write_record([
            d.tenant.clone(),
            d.date.to_string(),
            d.offered.to_string(),
            d.answered.to_string(),
            d.answered_within.to_string(),
            d.abandoned.to_string(),
            d.callbacks.to_string(),
            opt(d.service_level),
            opt(d.service_level_with_abandoned),
            opt(d.mean_wait_s),
            opt(d.max_wait_s),
            d.threshold_s.to_string(),
        ]);
    }
    String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn call(tenant: &str, queued: &str, wait_s: Option<i64>, callback: bool) -> QueuedCall {
        QueuedCall {
            tenant: tenant.into(),
            time_zone: "Europe/Moscow".into(),
            queued_at: t(queued),
            connected_at: wait_s.map(|w| t(queued) + chrono::Duration::seconds(w)),
            callback_ticket: callback.then_some(1),
        }
    }

    #[test]
    fn days_are_local_and_the_figures_add_up() {
        let calls = [
            call("heatco", "2025-01-15T08:00:00Z", Some(30), false),
            call("heatco", "2025-01-15T09:00:00Z", Some(300), false),
            call("heatco", "2025-01-15T10:00:00Z", Some(301), false),
            call("heatco", "2025-01-15T11:00:00Z", None, true),
            call("heatco", "2025-01-15T12:00:00Z", None, false),
            // 22:30 UTC is the next day in Moscow.
            call("heatco", "2025-01-15T22:30:00Z", Some(10), false),
            call("waterco", "2025-01-15T08:00:00Z", None, true),
        ];
        let days = aggregate(&calls, THRESHOLD_S);
        assert_eq!(days.len(), 3);
        let d = &days[0];
        assert_eq!(
            (d.tenant.as_str(), d.date.to_string().as_str()),
            ("heatco", "2025-01-15")
        );
        assert_eq!(
            (
                d.offered,
                d.answered,
                d.answered_within,
                d.abandoned,
                d.callbacks
            ),
            (5, 3, 2, 2, 1)
        );
        assert_eq!(d.service_level, Some(2.0 / 3.0));
        assert_eq!(d.service_level_with_abandoned, Some(2.0 / 5.0));
        assert_eq!(d.mean_wait_s, Some(631.0 / 3.0));
        assert_eq!(d.max_wait_s, Some(301.0));
        assert_eq!(days[1].date.to_string(), "2025-01-16");
        assert_eq!(days[1].service_level, Some(1.0));
        let w = &days[2];
        assert_eq!((w.answered, w.abandoned, w.callbacks), (0, 1, 1));
        assert_eq!(w.service_level, None);
        assert_eq!(w.service_level_with_abandoned, Some(0.0));
        let csv = to_csv(&days);
        assert_eq!(csv.lines().count(), 4);
        assert!(csv.contains("heatco,2025-01-15,5,3,2,2,1,0.667,0.400,210.333,301.000,300"));
    }
}
